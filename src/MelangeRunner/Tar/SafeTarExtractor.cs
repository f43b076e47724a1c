using System.Formats.Tar;
using System.Security.Cryptography;
using System.Text;
using MelangeRunner.Native;

namespace MelangeRunner.Tar;

/// <summary>How <see cref="SafeTarExtractor"/> treats what a tar entry carries besides its content.</summary>
internal sealed class TarExtractOptions
{
    /// <summary>Apply entry owners (lchown). Only effective when running as root.</summary>
    public bool PreserveOwners { get; init; } = true;

    /// <summary>Treat OCI whiteouts (".wh.NAME", ".wh..wh..opq") as deletions of lower-layer content instead of files.</summary>
    public bool ApplyWhiteouts { get; init; } = false;

    /// <summary>Apply SCHILY.xattr.* PAX attributes with lsetxattr.</summary>
    public bool PreserveXattrs { get; init; } = true;

    /// <summary>
    /// Register each file being written with the reaper until it is renamed into place, so that a
    /// process killed mid-file leaves no partial file (an export into a user's directory; an
    /// import needs none: its whole private directory is registered).
    /// </summary>
    public bool ReapPartialFiles { get; init; } = false;
}

/// <summary>
/// Extracts untrusted tar streams without ever changing anything outside the destination, nor
/// the destination directory itself: names and link targets that break <see cref="TarPath"/>'s
/// rule (absolute, with NUL, ".", ".." or empty components, too long, not valid UTF-8), paths
/// whose parent goes through a symlink (including one the same tar made), hard links through a
/// symlink, and device nodes when not root are skipped with a warning naming the entry. GNU
/// sparse entries are refused (SparseTarEntry). Regular files appear only when complete.
/// </summary>
internal static class SafeTarExtractor
{
    public static Task<long> ExtractAsync(Stream tar, string destination, TarExtractOptions options, IEventSink events, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(tar);
        ArgumentNullException.ThrowIfNull(options);
        return Task.Run(() =>
        {
            var x = new TarExtractor(destination, options, events ?? NullEventSink.Instance);
            x.ExtractLayer(tar, ct);
            x.Finish(ct);
            return x.EntriesWritten;
        }, ct);
    }
}

/// <summary>
/// Answers a zero-length read itself: System.Formats.Tar issues them (at the end of an entry's
/// data, for zero padding), and a source that takes a 0 from its own pipe for the end of the
/// stream (the bubblewrap export's reader waits for its writer then) would block on a writer
/// that is blocked on us.
/// </summary>
internal sealed class NoEmptyReads : ReadOnlyWrapper
{
    private readonly Stream _inner;
    public NoEmptyReads(Stream inner) => _inner = inner;
    protected override int ReadCore(Span<byte> buffer) => buffer.Length == 0 ? 0 : _inner.Read(buffer);
}

/// <summary>Reads the entries of one tar with their raw headers recorded; refuses GNU sparse files.</summary>
internal static class TarEntries
{
    /// <summary>
    /// The next entry, after draining the previous one's data (so that the recorder holds only
    /// headers). A GNU sparse file is refused: System.Formats.Tar throws on type 'S', and hands
    /// PAX sparse files (GNU.sparse.*) over as a regular file named "GNUSparseFile.N/x" holding
    /// the sparse map and the packed data, which would silently be a wrong file.
    /// </summary>
    public static TarEntry? Next(TarReader reader, RecordingStream recorder, TarEntry? previous, CancellationToken ct)
    {
        if (previous?.DataStream is { } data) StreamUtil.Drain(data, ct);
        recorder.StartRecording();
        TarEntry? entry;
        try { entry = reader.GetNextEntry(copyData: false); }
        catch (Exception e) when (e is InvalidDataException or NotSupportedException or FormatException && RawHeader.HasSparseMarker(recorder))
        {
            var raw = recorder.Overflowed ? null : RawHeader.Read(recorder, RawHeader.Field.Path);
            throw Sparse(raw != null ? Encoding.UTF8.GetString(raw) : "?", e);
        }
        finally { recorder.StopRecording(); }
        if (entry is PaxTarEntry pax)
            foreach (var key in pax.ExtendedAttributes.Keys)
                if (key.StartsWith("GNU.sparse.", StringComparison.Ordinal))
                    throw Sparse(pax.ExtendedAttributes.TryGetValue("GNU.sparse.name", out var n) ? n : entry.Name, null);
        return entry;
    }

    private static MelangeException Sparse(string name, Exception? inner) =>
        new(ErrorKind.InvalidData, "SparseTarEntry",
            $"The tar entry '{name}' is a GNU sparse file (made with tar --sparse / -S), which is not supported.",
            "Re-create the tar without --sparse (-S); files with holes are written with holes anyway.", name, inner);
}

/// <summary>
/// The extraction engine. One instance can apply several layers in order (then call
/// <see cref="Finish"/> once: directory modes and times are applied last, deepest first,
/// so that a 0555 directory still receives its content and its mtime is not disturbed).
/// </summary>
/// <remarks>
/// Safety rests on two rules. Lexical: every name, link target and whiteout goes through
/// <see cref="TarPath"/> before any system call, so no path string holds NUL, ".", ".." or an
/// empty component, and none is longer than PATH_MAX (every walk below is a loop over at most
/// 2048 components). File system: before creating anything at "root/a/b/c", every parent
/// ("a", "a/b") is checked with lstat to be a real directory, never a symlink, and the final
/// component is never followed (existing non-directories are unlinked or renamed over; files
/// are created O_EXCL|O_NOFOLLOW; owner/time changes use lchown/AT_SYMLINK_NOFOLLOW; chmod is
/// only applied to paths just verified not to be symlinks). The destination directory itself
/// is never changed (a "./" entry's owner, mode, xattrs and times are ignored): it belongs to
/// the caller. Verified directories are cached, and the cache is dropped whenever a directory
/// is removed or replaced. The tar is the adversary here, not a concurrent process: nothing
/// else is expected to modify the destination while it is extracted.
/// </remarks>
internal sealed class TarExtractor
{
    private const string PartialPrefix = ".melange-partial-";
    // Room kept below PATH_MAX for the temporary name a file is written under.
    private const int PartialReserve = 32;
    private const int HoleBlock = 4096;

    private readonly string _root;
    private readonly int _rootBytes;
    private readonly TarExtractOptions _options;
    private readonly IEventSink _events;
    private readonly bool _chown;
    private readonly HashSet<string> _verifiedDirs = new(StringComparer.Ordinal) { "" };
    private readonly List<DirMeta> _dirs = new();
    private readonly Dictionary<string, int> _dirIndex = new(StringComparer.Ordinal);
    // Paths (and their ancestors) written by the current layer: whiteouts only hide lower layers.
    private readonly HashSet<string> _layerPaths = new(StringComparer.Ordinal);
    private int _xattrWarnings;
    private readonly byte[] _buffer = new byte[StreamUtil.CopyBufferSize];

    private record struct DirMeta(string Rel, uint Mode, long MTime, long MTimeNs);

    public TarExtractor(string destination, TarExtractOptions options, IEventSink events)
    {
        _root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(destination));
        if (!Directory.Exists(_root))
            throw new MelangeException(ErrorKind.ObjectNotFound, "DestinationNotFound", $"The extraction destination '{destination}' does not exist.",
                "Create the directory first.", destination);
        _rootBytes = Encoding.UTF8.GetByteCount(_root);
        _options = options;
        _events = events;
        _chown = options.PreserveOwners && Libc.IsRoot;
    }

    public long EntriesWritten { get; private set; }

    private string Full(string rel) => rel.Length == 0 ? _root : _root + "/" + rel;

    /// <summary>Why the destination path of <paramref name="rel"/> cannot be used, or null.</summary>
    private string? TooLong(string rel) =>
        _rootBytes + 1 + Encoding.UTF8.GetByteCount(rel) + PartialReserve > TarPath.MaxNameBytes
            ? $"its path in the destination would be longer than {TarPath.MaxNameBytes - PartialReserve} bytes" : null;

    /// <summary>Extracts one tar stream; corrupt or truncated data becomes a MelangeException (InvalidData).</summary>
    public void ExtractLayer(Stream tar, CancellationToken ct)
    {
        _layerPaths.Clear();
        var recorder = new RecordingStream(new NoEmptyReads(tar));
        using var reader = new TarReader(recorder, leaveOpen: true);
        long index = 0;
        TarEntry? entry = null;
        try
        {
            while (true)
            {
                ct.ThrowIfCancellationRequested();
                entry = TarEntries.Next(reader, recorder, entry, ct);
                if (entry == null) break;
                index++;
                Apply(entry, recorder, ct);
            }
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or FormatException or ArgumentException or NotSupportedException)
        {
            throw new MelangeException(ErrorKind.InvalidData, "CorruptTar",
                $"The tar data is corrupt or truncated (after {index} entries{(entry != null ? $", at '{entry.Name}'" : "")}): {e.Message}",
                "Check that the file is complete (re-download or re-create it).", null, e);
        }
    }

    private void Apply(TarEntry entry, RecordingStream recorder, CancellationToken ct)
    {
        var type = entry.EntryType;
        if (type == TarEntryType.GlobalExtendedAttributes) return; // global PAX headers carry nothing to extract
        string name = entry.Name;
        string? rel = TarPath.EntryName(entry, recorder, out string? reason);
        if (rel == null) { Skip(name, reason!); return; }

        if (_options.ApplyWhiteouts)
        {
            var kind = TarPath.Whiteout(rel, out string hidden, out string? whiteoutWhy);
            if (whiteoutWhy != null) { Skip(name, whiteoutWhy); return; }
            if (kind == TarPath.WhiteoutKind.Meta) return; // aufs metadata: nothing to apply
            if (kind != TarPath.WhiteoutKind.None) { ApplyWhiteout(kind, hidden); return; }
        }

        if (rel.Length == 0)
        {
            // "./": the destination directory itself. Its owner, mode, xattrs and times are the
            // caller's (an image's root is made 0755 by the importer), never the tar's.
            if (type != TarEntryType.Directory) Skip(name, "it would replace the destination directory itself");
            return;
        }
        if (TooLong(rel) is { } tooLong) { Skip(name, tooLong); return; }

        string parent = TarPath.Parent(rel);
        string? why = EnsureDirectory(parent, create: true);
        if (why != null) { Skip(name, why); return; }
        string full = Full(rel);

        switch (type)
        {
            case TarEntryType.Directory:
                {
                    var st = Libc.LStat(full);
                    if (st is { IsDirectory: true }) { }
                    else
                    {
                        if (st != null) RemoveExisting(full, st.Value);
                        Check(Libc.Mkdir(full, 0x1C0), "mkdir", full); // 0700 until Finish applies the real mode
                    }
                    _verifiedDirs.Add(rel);
                    ApplyOwnerModeXattrs(entry, full, name, recorder, chmod: false);
                    Defer(rel, entry);
                    break;
                }
            case TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile:
                WriteFile(entry, full, name, recorder, ct);
                break;
            case TarEntryType.SymbolicLink:
                {
                    string? linkTarget = TarPath.SymlinkTarget(entry, recorder, out string? linkWhy);
                    if (linkTarget == null) { Skip(name, linkWhy!); return; }
                    CreateOrReplace(full, () => Libc.Symlink(linkTarget, full), "symlink"); // created as-is: never followed while extracting
                    ApplyMeta(entry, full, name, recorder, chmod: false);
                    break;
                }
            case TarEntryType.HardLink:
                {
                    string? target = TarPath.HardLinkTarget(entry, recorder, out string? linkReason);
                    if (target == null) { Skip(name, linkReason!); return; }
                    if (TooLong(target) != null) { Skip(name, $"it is a hard link to '{entry.LinkName}', which does not exist"); return; }
                    string? linkWhy = EnsureDirectory(TarPath.Parent(target), create: false);
                    if (linkWhy != null) { Skip(name, $"it is a hard link to '{entry.LinkName}', and {linkWhy}"); return; }
                    var ts = Libc.LStat(Full(target));
                    if (ts == null) { Skip(name, $"it is a hard link to '{entry.LinkName}', which does not exist"); return; }
                    if (ts.Value.IsDirectory) { Skip(name, $"it is a hard link to the directory '{entry.LinkName}'"); return; }
                    if (target == rel) return; // a link to itself: nothing to do
                    string targetFull = Full(target);
                    CreateOrReplace(full, () => Libc.Link(targetFull, full), "link");
                    break;
                }
            case TarEntryType.Fifo:
                CreateOrReplace(full, () => Libc.Mkfifo(full, 0x180), "mkfifo");
                ApplyMeta(entry, full, name, recorder, chmod: true);
                break;
            case TarEntryType.CharacterDevice or TarEntryType.BlockDevice:
                if (!Libc.IsRoot) { Skip(name, "it is a device node, which only root can create"); return; }
                uint kind = type == TarEntryType.CharacterDevice ? Libc.S_IFCHR : Libc.S_IFBLK;
                uint major = (uint)DevMajor(entry), minor = (uint)DevMinor(entry);
                CreateOrReplace(full, () => Libc.Mknod(full, kind | 0x180, major, minor), "mknod");
                ApplyMeta(entry, full, name, recorder, chmod: true);
                break;
            default:
                Skip(name, $"its type ({type}) is not supported");
                return;
        }
        MarkWritten(rel);
        EntriesWritten++;
    }

    private static int DevMajor(TarEntry e) => e is PosixTarEntry p ? p.DeviceMajor : 0;
    private static int DevMinor(TarEntry e) => e is PosixTarEntry p ? p.DeviceMinor : 0;

    private void Skip(string name, string reason) => _events.Warning($"Skipped tar entry '{Printable(name)}': {reason}.");

    /// <summary>A name as a warning shows it: NUL and other control characters escaped, at most 200 characters.</summary>
    internal static string Printable(string name)
    {
        var sb = new StringBuilder(Math.Min(name.Length, 200) + 8);
        foreach (char c in name)
        {
            if (sb.Length >= 200) { sb.Append("…"); break; }
            if (c < 0x20 || c == 0x7F) sb.Append(c == 0 ? "\\0" : $"\\x{(int)c:x2}");
            else sb.Append(c);
        }
        return sb.ToString();
    }

    private static void Check(int errno, string call, string path)
    {
        if (errno != 0) throw Libc.Error(call, path, errno);
    }

    /// <summary>
    /// Checks (and, when <paramref name="create"/>, makes) every component of <paramref name="rel"/>
    /// as a real directory, from the deepest one already verified down, in a loop (a name has at
    /// most 2048 components). Returns why not, or null when it is safe to use.
    /// </summary>
    private string? EnsureDirectory(string rel, bool create)
    {
        if (_verifiedDirs.Contains(rel)) return null;
        // Find the deepest verified ancestor (the root always is).
        int done = rel.Length;
        while (true)
        {
            done = done <= 0 ? -1 : rel.LastIndexOf('/', done - 1);
            if (done < 0) { done = 0; break; }
            if (_verifiedDirs.Contains(rel[..done])) { done++; break; }
        }
        while (done <= rel.Length)
        {
            int slash = rel.IndexOf('/', done);
            int end = slash < 0 ? rel.Length : slash;
            string sub = rel[..end];
            string full = Full(sub);
            var st = Libc.LStat(full);
            if (st == null)
            {
                if (!create) return $"'{sub}' does not exist";
                int e = Libc.Mkdir(full, 0x1ED); // 0755, as tar makes missing parents
                if (e != 0 && e != Libc.EEXIST) throw Libc.Error("mkdir", full, e);
                st = Libc.LStat(full);
                if (st == null) return $"'{sub}' could not be created";
                MarkWritten(sub);
            }
            if (st.Value.IsSymlink) return $"its parent '{sub}' is a symlink";
            if (!st.Value.IsDirectory) return $"its parent '{sub}' is not a directory";
            _verifiedDirs.Add(sub);
            done = end + 1;
        }
        return null;
    }

    /// <summary>Like tar --unlink-first: whatever is at the path goes (a directory with its content).</summary>
    private void ReplaceExisting(string full)
    {
        var st = Libc.LStat(full);
        if (st != null) RemoveExisting(full, st.Value);
    }

    private void RemoveExisting(string full, FileStatus st)
    {
        if (st.IsDirectory)
        {
            RemoveTree(full, st);
            _verifiedDirs.Clear(); // the cache may name the removed directory or its descendants
            _verifiedDirs.Add("");
        }
        else
        {
            int e = Libc.Unlink(full);
            if (e != 0 && e != Libc.ENOENT) throw Libc.Error("unlink", full, e);
        }
    }

    /// <summary>
    /// Deletes a tree without following symlinks (each child is lstat'ed), with an explicit
    /// stack instead of recursion: a deep tree cannot overflow the thread's stack.
    /// </summary>
    internal static void RemoveTree(string full, FileStatus st)
    {
        if (!st.IsDirectory)
        {
            int e = Libc.Unlink(full);
            if (e != 0 && e != Libc.ENOENT) throw Libc.Error("unlink", full, e);
            return;
        }
        var stack = new Stack<(string Path, bool Emptied)>();
        stack.Push((full, false));
        while (stack.Count > 0)
        {
            var (dir, emptied) = stack.Pop();
            if (emptied)
            {
                int e = Libc.Rmdir(dir);
                if (e != 0 && e != Libc.ENOENT) throw Libc.Error("rmdir", dir, e);
                continue;
            }
            Libc.Chmod(dir, 0x1C0); // a read-only directory must become writable to be emptied
            stack.Push((dir, true));
            foreach (var child in Directory.EnumerateFileSystemEntries(dir))
            {
                var cs = Libc.LStat(child);
                if (cs == null) continue;
                if (cs.Value.IsDirectory) stack.Push((child, false));
                else
                {
                    int e = Libc.Unlink(child);
                    if (e != 0 && e != Libc.ENOENT) throw Libc.Error("unlink", child, e);
                }
            }
        }
    }

    /// <summary>Like tar --unlink-first, but only when needed: create; if something is there, remove it and create again.</summary>
    private void CreateOrReplace(string full, Func<int> create, string call)
    {
        int e = create();
        if (e == Libc.EEXIST)
        {
            ReplaceExisting(full);
            e = create();
        }
        Check(e, call, full);
    }

    /// <summary>
    /// Writes a regular file under a temporary name in its directory (O_CREAT|O_EXCL|O_NOFOLLOW),
    /// sets owner, mode, xattrs and times on the descriptor, and renames it into place only when
    /// complete: an interrupted extraction never leaves a file that looks whole, and a failure or
    /// cancellation removes the partial one. Runs of zero blocks are skipped with lseek, so holes
    /// stay holes (nothing is preallocated).
    /// </summary>
    private void WriteFile(TarEntry entry, string full, string name, RecordingStream recorder, CancellationToken ct)
    {
        string dir = full[..full.LastIndexOf('/')];
        string temp = "";
        int fd = -Libc.EEXIST;
        for (int attempt = 0; attempt < 8 && fd == -Libc.EEXIST; attempt++)
        {
            // Not a secret: O_EXCL|O_NOFOLLOW makes the name safe whoever guesses it, and Random.Shared
            // spares an import loading the crypto library (~4 MiB resident) for a file name.
            temp = dir + "/" + PartialPrefix + Random.Shared.NextInt64(1L << 47).ToString("x12", System.Globalization.CultureInfo.InvariantCulture);
            fd = Libc.CreateExclusive(temp, 0x180);
        }
        if (fd < 0) throw Libc.Error("open", temp, -fd);
        bool placed = false;
        using var watch = _options.ReapPartialFiles ? HostProcess.Reaper.WatchPath(temp) : null;
        try
        {
            try
            {
                long length = entry.Length;
                if (length > 0 && entry.DataStream is { } data)
                {
                    long copied = 0;
                    bool holes = false;
                    // Never more than what is left of the entry: a zero-length read at its end would reach
                    // the stream below, and some streams (the export's pipe reader) take 0 for the end.
                    while (copied < length)
                    {
                        int n = StreamUtil.ReadFull(data, _buffer.AsSpan(0, (int)Math.Min(_buffer.Length, length - copied)));
                        if (n == 0) break;
                        holes |= WriteSparse(fd, _buffer.AsSpan(0, n), temp);
                        copied += n;
                        ct.ThrowIfCancellationRequested();
                    }
                    if (copied != length) throw new EndOfStreamException($"'{entry.Name}' ends after {copied} of {length} bytes.");
                    if (holes) Check(Libc.FTruncate(fd, length), "ftruncate", temp); // a file that ends in a hole gets its size
                }
                // chown clears setuid/setgid and capabilities, so: owner, then mode, then xattrs, then times.
                if (_chown)
                {
                    int e = Libc.FChown(fd, (uint)entry.Uid, (uint)entry.Gid);
                    if (e != 0 && e != Libc.EPERM && e != 22) throw Libc.Error("fchown", temp, e);
                }
                Check(Libc.FChmod(fd, (uint)entry.Mode), "fchmod", temp);
                SetXattrs(entry, temp, name, recorder);
                var (sec, ns) = UnixTime(entry.ModificationTime);
                Libc.FSetTimes(fd, sec, ns);
            }
            finally
            {
                Libc.Close(fd);
            }
            // rename replaces a file or symlink at the target atomically (without following it); a directory must go first.
            int r = Libc.Rename(temp, full);
            if (r is Libc.EISDIR or Libc.ENOTEMPTY or Libc.EEXIST)
            {
                ReplaceExisting(full);
                r = Libc.Rename(temp, full);
            }
            Check(r, "rename", full);
            placed = true;
        }
        finally
        {
            if (!placed) Libc.Unlink(temp);
        }
    }

    /// <summary>Writes a chunk, seeking over whole zero blocks instead of writing them; true when it ends in a hole.</summary>
    private static bool WriteSparse(int fd, ReadOnlySpan<byte> chunk, string path)
    {
        bool endsInHole = false;
        int i = 0;
        while (i < chunk.Length)
        {
            bool zero = IsZeroBlock(chunk, i);
            int j = i + Math.Min(HoleBlock, chunk.Length - i);
            while (j < chunk.Length && IsZeroBlock(chunk, j) == zero) j += Math.Min(HoleBlock, chunk.Length - j);
            int e = zero ? Libc.SkipForward(fd, j - i) : Libc.WriteAll(fd, chunk[i..j]);
            if (e != 0) throw Libc.Error(zero ? "lseek" : "write", path, e);
            endsInHole = zero;
            i = j;
        }
        return endsInHole;
    }

    private static bool IsZeroBlock(ReadOnlySpan<byte> chunk, int at) =>
        chunk.Slice(at, Math.Min(HoleBlock, chunk.Length - at)).IndexOfAnyExcept((byte)0) < 0;

    private void WarnXattr(string message)
    {
        _xattrWarnings++;
        if (_xattrWarnings <= 10) _events.Warning(message + ".");
        else if (_xattrWarnings == 11) _events.Warning("Further extended attribute warnings are not shown.");
    }

    private void ApplyMeta(TarEntry entry, string full, string name, RecordingStream recorder, bool chmod)
    {
        // Order matters: chown clears setuid/setgid and file capabilities, so it comes first.
        ApplyOwnerModeXattrs(entry, full, name, recorder, chmod);
        var (sec, ns) = UnixTime(entry.ModificationTime);
        Libc.SetTimes(full, sec, ns);
    }

    private void ApplyOwnerModeXattrs(TarEntry entry, string full, string name, RecordingStream recorder, bool chmod)
    {
        if (_chown)
        {
            int e = Libc.LChown(full, (uint)entry.Uid, (uint)entry.Gid);
            if (e != 0 && e != Libc.EPERM && e != 22) throw Libc.Error("lchown", full, e);
        }
        if (chmod) Check(Libc.Chmod(full, (uint)entry.Mode), "chmod", full);
        SetXattrs(entry, full, name, recorder);
    }

    internal static (long Seconds, long Nanoseconds) UnixTime(DateTimeOffset t)
    {
        long ticks = t.UtcTicks - DateTime.UnixEpoch.Ticks;
        long sec = Math.DivRem(ticks, TimeSpan.TicksPerSecond, out long rem);
        if (rem < 0) { sec--; rem += TimeSpan.TicksPerSecond; }
        return (sec, rem * 100);
    }

    private void SetXattrs(TarEntry entry, string full, string name, RecordingStream recorder)
    {
        if (!_options.PreserveXattrs || !Xattrs.HasAny(entry)) return;
        var list = Xattrs.Get(entry, recorder, out bool lossy);
        if (lossy) WarnXattr($"Tar entry '{Printable(name)}': a binary extended attribute value could not be recovered exactly");
        if (list == null) return;
        foreach (var (xname, value) in list)
        {
            // The C call would cut the name at a NUL and set another attribute than the one named.
            if (xname.Length == 0 || xname.Contains('\0')) { WarnXattr($"Tar entry '{Printable(name)}': skipped the extended attribute '{Printable(xname)}': its name is empty or contains a NUL byte"); continue; }
            int e = Libc.LSetXattr(full, xname, value);
            if (e != 0) WarnXattr($"Tar entry '{Printable(name)}': could not set extended attribute '{xname}': {Libc.StrError(e)}");
        }
    }

    private void Defer(string rel, TarEntry entry)
    {
        var (sec, ns) = UnixTime(entry.ModificationTime);
        var meta = new DirMeta(rel, (uint)entry.Mode, sec, ns);
        if (_dirIndex.TryGetValue(rel, out int i)) _dirs[i] = meta;
        else { _dirIndex[rel] = _dirs.Count; _dirs.Add(meta); }
    }

    private void MarkWritten(string rel)
    {
        if (!_options.ApplyWhiteouts) return;
        // The path and its ancestors: an opaque marker must keep this layer's own directories.
        while (rel.Length > 0 && _layerPaths.Add(rel)) rel = TarPath.Parent(rel);
    }

    /// <summary>
    /// A whiteout deletes <paramref name="target"/> (a path that passed <see cref="TarPath.Whiteout"/>,
    /// so never the directory itself nor its parent), an opaque marker clears the lower content
    /// of the directory <paramref name="target"/>; both only through real directories.
    /// </summary>
    private void ApplyWhiteout(TarPath.WhiteoutKind kind, string target)
    {
        if (TooLong(target) != null) return; // nothing that long can exist below the root
        string dir = kind == TarPath.WhiteoutKind.Opaque ? target : TarPath.Parent(target);
        if (EnsureDirectory(dir, create: false) != null) return; // nothing below a missing (or unsafe) directory to hide
        if (kind == TarPath.WhiteoutKind.Opaque)
        {
            ClearLowerContent(dir);
            return;
        }
        if (_layerPaths.Contains(target)) return; // same-layer content is not hidden
        string full = Full(target);
        var st = Libc.LStat(full);
        if (st != null) RemoveExisting(full, st.Value);
    }

    /// <summary>Opaque directory: removes what lower layers put in it, keeping this layer's entries (a loop over this layer's directories, not recursion).</summary>
    private void ClearLowerContent(string top)
    {
        bool removedDir = false;
        var pending = new Stack<string>();
        pending.Push(top);
        while (pending.Count > 0)
        {
            string dir = pending.Pop();
            foreach (var child in Directory.EnumerateFileSystemEntries(Full(dir)))
            {
                string childRel = TarPath.Join(dir, Path.GetFileName(child));
                var st = Libc.LStat(child);
                if (st == null) continue;
                if (_layerPaths.Contains(childRel))
                {
                    if (st.Value.IsDirectory) pending.Push(childRel);
                    continue;
                }
                RemoveTree(child, st.Value);
                removedDir |= st.Value.IsDirectory;
            }
        }
        if (removedDir) { _verifiedDirs.Clear(); _verifiedDirs.Add(""); }
    }

    /// <summary>
    /// Applies directory modes and times in reverse tar order (children before their parents in
    /// conventional archives), re-checking each path is still a real directory
    /// reached through real directories (a later entry may have replaced it or a parent). Removed ones are skipped.
    /// </summary>
    public void Finish(CancellationToken ct)
    {
        for (int i = _dirs.Count - 1; i >= 0; i--)
        {
            ct.ThrowIfCancellationRequested();
            var d = _dirs[i];
            if (EnsureDirectory(TarPath.Parent(d.Rel), create: false) != null) continue;
            string full = Full(d.Rel);
            var st = Libc.LStat(full);
            if (st is not { IsDirectory: true }) continue; // replaced or removed by a later entry
            Check(Libc.Chmod(full, d.Mode), "chmod", full);
            Libc.SetTimes(full, d.MTime, d.MTimeNs);
        }
        _dirs.Clear();
        _dirIndex.Clear();
    }
}
