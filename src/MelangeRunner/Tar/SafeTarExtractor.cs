using System.Formats.Tar;
using MelangeRunner.Native;

namespace MelangeRunner.Tar;

/// <summary>How <see cref="SafeTarExtractor"/> treats what a tar entry carries besides its content.</summary>
public sealed class TarExtractOptions
{
    /// <summary>Apply entry owners (lchown). Only effective when running as root.</summary>
    public bool PreserveOwners { get; init; } = true;

    /// <summary>Treat OCI whiteouts (".wh.NAME", ".wh..wh..opq") as deletions of lower-layer content instead of files.</summary>
    public bool ApplyWhiteouts { get; init; } = false;

    /// <summary>Apply SCHILY.xattr.* PAX attributes with lsetxattr.</summary>
    public bool PreserveXattrs { get; init; } = true;
}

/// <summary>
/// Extracts untrusted tar streams without ever writing outside the destination:
/// absolute names, names climbing out with "..", paths whose parent goes through a symlink
/// (including one the same tar made), hard links to outside or through a symlink, and
/// device nodes when not root are skipped with a warning naming the entry.
/// </summary>
public static class SafeTarExtractor
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
/// The extraction engine. One instance can apply several layers in order (then call
/// <see cref="Finish"/> once: directory modes and times are applied last, deepest first,
/// so that a 0555 directory still receives its content and its mtime is not disturbed).
/// </summary>
/// <remarks>
/// Safety rests on one rule: before creating anything at "root/a/b/c", every parent
/// ("a", "a/b") is checked with lstat to be a real directory, never a symlink, and the final
/// component is never followed (existing non-directories are unlinked first; files are
/// created with O_EXCL; owner/time changes use lchown/AT_SYMLINK_NOFOLLOW; chmod is only
/// applied to paths just verified not to be symlinks). Verified directories are cached, and
/// the cache is dropped whenever a directory is removed or replaced. The tar is the
/// adversary here, not a concurrent process: nothing else is expected to modify the
/// destination while it is extracted.
/// </remarks>
internal sealed class TarExtractor
{
    readonly string _root;
    readonly TarExtractOptions _options;
    readonly IEventSink _events;
    readonly bool _chown;
    readonly HashSet<string> _verifiedDirs = new(StringComparer.Ordinal) { "" };
    readonly List<DirMeta> _dirs = new();
    readonly Dictionary<string, int> _dirIndex = new(StringComparer.Ordinal);
    // Paths (and their ancestors) written by the current layer: whiteouts only hide lower layers.
    readonly HashSet<string> _layerPaths = new(StringComparer.Ordinal);
    int _xattrWarnings;
    readonly byte[] _buffer = new byte[StreamUtil.CopyBufferSize];

    record struct DirMeta(string Rel, uint Mode, long MTime, long MTimeNs);

    public TarExtractor(string destination, TarExtractOptions options, IEventSink events)
    {
        _root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(destination));
        if (!Directory.Exists(_root))
            throw new MelangeException(ErrorKind.ObjectNotFound, "DestinationNotFound", $"The extraction destination '{destination}' does not exist.",
                "Create the directory first.", destination);
        _options = options;
        _events = events;
        _chown = options.PreserveOwners && Libc.IsRoot;
    }

    public long EntriesWritten { get; private set; }

    string Full(string rel) => rel.Length == 0 ? _root : _root + "/" + rel;

    /// <summary>Extracts one tar stream; corrupt or truncated data becomes a MelangeException (InvalidData).</summary>
    public void ExtractLayer(Stream tar, CancellationToken ct)
    {
        _layerPaths.Clear();
        var recorder = new RecordingStream(tar);
        using var reader = new TarReader(recorder, leaveOpen: true);
        long index = 0;
        TarEntry? entry = null;
        try
        {
            while (true)
            {
                ct.ThrowIfCancellationRequested();
                if (entry?.DataStream is { } previous) StreamUtil.Drain(previous, ct); // so that the recorder only sees headers
                recorder.StartRecording();
                entry = reader.GetNextEntry(copyData: false);
                recorder.StopRecording();
                if (entry == null) break;
                index++;
                Apply(entry, recorder, ct);
            }
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or FormatException or ArgumentException)
        {
            throw new MelangeException(ErrorKind.InvalidData, "CorruptTar",
                $"The tar data is corrupt or truncated (after {index} entries{(entry != null ? $", at '{entry.Name}'" : "")}): {e.Message}",
                "Check that the file is complete (re-download or re-create it).", null, e);
        }
    }

    void Apply(TarEntry entry, RecordingStream recorder, CancellationToken ct)
    {
        var type = entry.EntryType;
        if (type == TarEntryType.GlobalExtendedAttributes) return; // global PAX headers carry nothing to extract
        string name = entry.Name;
        string? rel = TarPath.Normalize(name, out string? reason);
        if (rel == null) { Skip(name, reason!); return; }

        string baseName = TarPath.BaseName(rel);
        if (_options.ApplyWhiteouts && baseName.StartsWith(TarPath.WhiteoutPrefix, StringComparison.Ordinal))
        {
            ApplyWhiteout(name, rel, baseName);
            return;
        }

        if (rel.Length == 0)
        {
            // "./": the root directory's own metadata.
            if (type != TarEntryType.Directory) { Skip(name, "it would replace the destination directory itself"); return; }
            ApplyOwnerModeXattrs(entry, _root, name, recorder, chmod: false);
            Defer("", entry);
            EntriesWritten++;
            return;
        }

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
                string linkTarget = entry.LinkName;
                CreateOrReplace(full, () => Libc.Symlink(linkTarget, full), "symlink"); // created as-is: never followed while extracting
                ApplyMeta(entry, full, name, recorder, chmod: false);
                break;
            case TarEntryType.HardLink:
            {
                string? target = TarPath.Normalize(entry.LinkName, out string? linkReason);
                if (target == null) { Skip(name, $"it is a hard link to '{entry.LinkName}' and {linkReason!.Replace("its name", "that name")}"); return; }
                if (target.Length == 0) { Skip(name, "it is a hard link to the destination directory"); return; }
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

    static int DevMajor(TarEntry e) => e is PosixTarEntry p ? p.DeviceMajor : 0;
    static int DevMinor(TarEntry e) => e is PosixTarEntry p ? p.DeviceMinor : 0;

    void Skip(string name, string reason) => _events.Warning($"Skipped tar entry '{name}': {reason}.");

    static void Check(int errno, string call, string path)
    {
        if (errno != 0) throw Libc.Error(call, path, errno);
    }

    /// <summary>
    /// Checks (and, when <paramref name="create"/>, makes) every component of <paramref name="rel"/>
    /// as a real directory. Returns why not, or null when it is safe to use.
    /// </summary>
    string? EnsureDirectory(string rel, bool create)
    {
        if (_verifiedDirs.Contains(rel)) return null;
        string parent = TarPath.Parent(rel);
        string? why = EnsureDirectory(parent, create);
        if (why != null) return why;
        string full = Full(rel);
        var st = Libc.LStat(full);
        if (st == null)
        {
            if (!create) return $"'{rel}' does not exist";
            int e = Libc.Mkdir(full, 0x1ED); // 0755, as tar makes missing parents
            if (e != 0 && e != Libc.EEXIST) throw Libc.Error("mkdir", full, e);
            st = Libc.LStat(full);
            if (st == null) return $"'{rel}' could not be created";
            MarkWritten(rel);
        }
        if (st.Value.IsSymlink) return $"its parent '{rel}' is a symlink";
        if (!st.Value.IsDirectory) return $"its parent '{rel}' is not a directory";
        _verifiedDirs.Add(rel);
        return null;
    }

    /// <summary>Like tar --unlink-first: whatever is at the path goes (a directory with its content).</summary>
    void ReplaceExisting(string full)
    {
        var st = Libc.LStat(full);
        if (st != null) RemoveExisting(full, st.Value);
    }

    void RemoveExisting(string full, FileStatus st)
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

    /// <summary>Deletes a tree without following symlinks (each child is lstat'ed).</summary>
    static void RemoveTree(string full, FileStatus st)
    {
        if (!st.IsDirectory)
        {
            int e = Libc.Unlink(full);
            if (e != 0 && e != Libc.ENOENT) throw Libc.Error("unlink", full, e);
            return;
        }
        Libc.Chmod(full, 0x1C0); // a read-only directory must become writable to be emptied
        foreach (var child in Directory.EnumerateFileSystemEntries(full))
        {
            var cs = Libc.LStat(child);
            if (cs != null) RemoveTree(child, cs.Value);
        }
        Directory.Delete(full, recursive: false);
    }

    /// <summary>Like tar --unlink-first, but only when needed: create; if something is there, remove it and create again.</summary>
    void CreateOrReplace(string full, Func<int> create, string call)
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
    /// Writes a regular file through a descriptor opened with O_CREAT|O_EXCL|O_NOFOLLOW, then sets
    /// owner, mode, xattrs and times on that descriptor (fewer system calls than FileStream + paths).
    /// </summary>
    void WriteFile(TarEntry entry, string full, string name, RecordingStream recorder, CancellationToken ct)
    {
        int fd = Libc.CreateExclusive(full, 0x180);
        if (fd == -Libc.EEXIST)
        {
            ReplaceExisting(full);
            fd = Libc.CreateExclusive(full, 0x180);
        }
        if (fd < 0) throw Libc.Error("open", full, -fd);
        try
        {
            long length = entry.Length;
            if (length > 0 && entry.DataStream is { } data)
            {
                if (length > 1 << 20) Libc.Fallocate(fd, length); // best effort: less fragmentation
                long copied = 0;
                int n;
                while ((n = data.Read(_buffer, 0, _buffer.Length)) > 0)
                {
                    int e = Libc.WriteAll(fd, _buffer.AsSpan(0, n));
                    if (e != 0) throw Libc.Error("write", full, e);
                    copied += n;
                    if (n == _buffer.Length) ct.ThrowIfCancellationRequested();
                }
                if (copied != length) throw new EndOfStreamException($"'{entry.Name}' ends after {copied} of {length} bytes.");
            }
            // chown clears setuid/setgid and capabilities, so: owner, then mode, then xattrs, then times.
            if (_chown)
            {
                int e = Libc.FChown(fd, (uint)entry.Uid, (uint)entry.Gid);
                if (e != 0 && e != Libc.EPERM && e != 22) throw Libc.Error("fchown", full, e);
            }
            Check(Libc.FChmod(fd, (uint)entry.Mode), "fchmod", full);
            SetXattrs(entry, full, name, recorder);
            var (sec, ns) = UnixTime(entry.ModificationTime);
            Libc.FSetTimes(fd, sec, ns);
        }
        finally
        {
            Libc.Close(fd);
        }
    }

    void WarnXattr(string message)
    {
        _xattrWarnings++;
        if (_xattrWarnings <= 10) _events.Warning(message + ".");
        else if (_xattrWarnings == 11) _events.Warning("Further extended attribute warnings are not shown.");
    }

    void ApplyMeta(TarEntry entry, string full, string name, RecordingStream recorder, bool chmod)
    {
        // Order matters: chown clears setuid/setgid and file capabilities, so it comes first.
        ApplyOwnerModeXattrs(entry, full, name, recorder, chmod);
        var (sec, ns) = UnixTime(entry.ModificationTime);
        Libc.SetTimes(full, sec, ns);
    }

    void ApplyOwnerModeXattrs(TarEntry entry, string full, string name, RecordingStream recorder, bool chmod)
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

    void SetXattrs(TarEntry entry, string full, string name, RecordingStream recorder)
    {
        if (!_options.PreserveXattrs || !Xattrs.HasAny(entry)) return;
        var list = Xattrs.Get(entry, recorder, out bool lossy);
        if (lossy) WarnXattr($"Tar entry '{name}': a binary extended attribute value could not be recovered exactly");
        if (list == null) return;
        foreach (var (xname, value) in list)
        {
            int e = Libc.LSetXattr(full, xname, value);
            if (e != 0) WarnXattr($"Tar entry '{name}': could not set extended attribute '{xname}': {Libc.StrError(e)}");
        }
    }

    void Defer(string rel, TarEntry entry)
    {
        var (sec, ns) = UnixTime(entry.ModificationTime);
        var meta = new DirMeta(rel, (uint)entry.Mode, sec, ns);
        if (_dirIndex.TryGetValue(rel, out int i)) _dirs[i] = meta;
        else { _dirIndex[rel] = _dirs.Count; _dirs.Add(meta); }
    }

    void MarkWritten(string rel)
    {
        if (!_options.ApplyWhiteouts) return;
        // The path and its ancestors: an opaque marker must keep this layer's own directories.
        while (rel.Length > 0 && _layerPaths.Add(rel)) rel = TarPath.Parent(rel);
    }

    void ApplyWhiteout(string name, string rel, string baseName)
    {
        string dir = TarPath.Parent(rel);
        if (EnsureDirectory(dir, create: false) != null) return; // nothing below a missing (or unsafe) directory to hide
        if (baseName == TarPath.OpaqueMarker)
        {
            ClearLowerContent(dir);
            return;
        }
        string target = TarPath.Join(dir, baseName[TarPath.WhiteoutPrefix.Length..]);
        if (target == dir || _layerPaths.Contains(target)) return; // same-layer content is not hidden
        string full = Full(target);
        var st = Libc.LStat(full);
        if (st != null)
        {
            RemoveExisting(full, st.Value);
        }
    }

    /// <summary>Opaque directory: removes what lower layers put in it, keeping this layer's entries.</summary>
    void ClearLowerContent(string dir)
    {
        bool removedDir = false;
        foreach (var child in Directory.EnumerateFileSystemEntries(Full(dir)))
        {
            string childRel = TarPath.Join(dir, Path.GetFileName(child));
            var st = Libc.LStat(child);
            if (st == null) continue;
            if (_layerPaths.Contains(childRel))
            {
                if (st.Value.IsDirectory) ClearLowerContent(childRel);
                continue;
            }
            RemoveTree(child, st.Value);
            removedDir |= st.Value.IsDirectory;
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
            if (d.Rel.Length > 0 && EnsureDirectory(TarPath.Parent(d.Rel), create: false) != null) continue;
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
