using MelangeRunner.Native;

namespace MelangeRunner.Tar;

/// <summary>Writes a PAX tar of files and trees under a root, keeping what a rootfs needs.</summary>
internal static class DirectoryTarWriter
{
    /// <summary>
    /// Writes the given paths (relative to <paramref name="root"/>; directories are walked
    /// recursively, in name order, without following symlinks) as a PAX tar: modes, owners,
    /// mtimes, symlinks, hard links (same device and inode), fifos, devices and SCHILY.xattr.*.
    /// Missing paths are skipped with a warning. The output stream is flushed, not closed.
    /// </summary>
    public static Task WriteAsync(Stream output, string root, IReadOnlyList<string> relativePaths, IEventSink events, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(relativePaths);
        events ??= NullEventSink.Instance;
        return Task.Run(() => new Walker(output, root, events, ct).Run(relativePaths), ct);
    }

    private sealed class Walker
    {
        private readonly PaxWriter _writer;
        private readonly string _root;
        private readonly IEventSink _events;
        private readonly CancellationToken _ct;
        private readonly Dictionary<(ulong Dev, ulong Ino), string> _links = new();
        private readonly HashSet<string> _written = new(StringComparer.Ordinal);

        public Walker(Stream output, string root, IEventSink events, CancellationToken ct)
        {
            _writer = new PaxWriter(output);
            _root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
            _events = events;
            _ct = ct;
        }

        public void Run(IReadOnlyList<string> paths)
        {
            foreach (var p in paths)
            {
                string? rel = TarPath.Normalize(p.Replace('\\', '/'), out string? reason);
                if (rel == null) { _events.Warning($"Skipped '{p}': {reason}."); continue; }
                string full = rel.Length == 0 ? _root : _root + "/" + rel;
                // Parents are walked with lstat too, so a symlinked parent cannot lead outside the root.
                if (rel.Length > 0 && ParentGoesThroughSymlink(rel)) { _events.Warning($"Skipped '{p}': a parent directory is a symlink."); continue; }
                var st = Libc.LStat(full);
                if (st == null) { _events.Warning($"Skipped '{p}': it does not exist under '{_root}'."); continue; }
                Walk(rel, full, st.Value);
            }
            _writer.Finish();
        }

        private bool ParentGoesThroughSymlink(string rel)
        {
            string parent = TarPath.Parent(rel);
            while (parent.Length > 0)
            {
                var st = Libc.LStat(_root + "/" + parent);
                if (st is { IsSymlink: true }) return true;
                parent = TarPath.Parent(parent);
            }
            return false;
        }

        /// <summary>
        /// Writes a path and, for a directory, its tree in name order (pre-order), with an explicit
        /// stack: a deep workspace cannot overflow the thread's stack. A name the reading side
        /// would refuse (TarPath's rule: over 4095 bytes, a component over 255, not UTF-8) is
        /// skipped here with a warning instead.
        /// </summary>
        private void Walk(string rel, string full, FileStatus st)
        {
            var stack = new Stack<(string Rel, string Full, FileStatus St)>();
            stack.Push((rel, full, st));
            while (stack.Count > 0)
            {
                _ct.ThrowIfCancellationRequested();
                var (r, f, s) = stack.Pop();
                if (r.Length > 0 && !_written.Add(r)) continue; // already written (a path given twice or nested in another)
                if (!s.IsDirectory) { Write(r, f, s); continue; }
                if (r.Length > 0) Write(r, f, s);
                var children = System.IO.Directory.GetFileSystemEntries(f);
                Array.Sort(children, StringComparer.Ordinal);
                for (int i = children.Length - 1; i >= 0; i--)
                {
                    string child = children[i];
                    string childRel = TarPath.Join(r, Path.GetFileName(child));
                    // .NET decodes file names as UTF-8 with U+FFFD for invalid bytes: such a name cannot be opened again, nor stored exactly.
                    if (childRel.Contains('\uFFFD') && Libc.LStat(child) == null) { _events.Warning($"Skipped '{childRel}': its name is not valid UTF-8."); continue; }
                    if (TarPath.Normalize(childRel, out string? reason) == null) { _events.Warning($"Skipped '{TarExtractor.Printable(childRel)}': {reason}."); continue; }
                    var cs = Libc.LStat(child);
                    if (cs == null) continue; // removed meanwhile
                    stack.Push((childRel, child, cs.Value));
                }
            }
        }

        private void Write(string rel, string full, FileStatus st)
        {
            var h = new TarHeaderInfo
            {
                Name = rel,
                TypeFlag = PaxWriter.File,
                Mode = st.Permissions,
                Uid = st.Uid,
                Gid = st.Gid,
                MTimeSeconds = st.MTimeSeconds,
                MTimeNanoseconds = st.MTimeNanoseconds,
            };
            if (!st.IsDirectory && st.LinkCount > 1)
            {
                if (_links.TryGetValue((st.Device, st.Inode), out var first))
                {
                    h.TypeFlag = PaxWriter.HardLink;
                    h.LinkName = first;
                    _writer.WriteEntry(h, null, _ct);
                    return;
                }
                _links[(st.Device, st.Inode)] = rel;
            }
            switch (st.FileType)
            {
                case Libc.S_IFDIR: h.TypeFlag = PaxWriter.Directory; break;
                case Libc.S_IFREG: h.Size = st.Size; break;
                case Libc.S_IFLNK: h.TypeFlag = PaxWriter.Symlink; h.LinkName = Libc.ReadLink(full); break;
                case Libc.S_IFIFO: h.TypeFlag = PaxWriter.Fifo; break;
                case Libc.S_IFCHR: h.TypeFlag = PaxWriter.CharDevice; h.DevMajor = st.RDevMajor; h.DevMinor = st.RDevMinor; break;
                case Libc.S_IFBLK: h.TypeFlag = PaxWriter.BlockDevice; h.DevMajor = st.RDevMajor; h.DevMinor = st.RDevMinor; break;
                default: _events.Warning($"Skipped '{rel}': sockets cannot be stored in a tar."); return;
            }
            foreach (var xname in Libc.LListXattr(full))
            {
                var value = Libc.LGetXattr(full, xname);
                if (value != null) (h.Xattrs ??= new()).Add(new(xname, value));
            }
            if (h.TypeFlag == PaxWriter.File)
            {
                // lstat said "regular file" just above; a concurrent swap for a symlink in between would be
                // followed by this open. The trees written here (a finished workspace) are not being modified.
                using var fs = new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 0, FileOptions.SequentialScan);
                _writer.WriteEntry(h, fs, _ct);
            }
            else _writer.WriteEntry(h, null, _ct);
        }
    }
}
