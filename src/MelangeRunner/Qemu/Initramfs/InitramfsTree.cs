using MelangeRunner.Native;

namespace MelangeRunner.Qemu.Initramfs;

/// <summary>
/// The file tree of an initramfs being assembled: directories, files (from the host or from
/// memory), symbolic links and device nodes, all owned by root. Paths are resolved through the
/// tree's own symbolic links (so lib/x lands in usr/lib/x when lib → usr/lib, as on the host).
/// Written in sorted order, so that identical inputs give identical archives.
/// </summary>
internal sealed class InitramfsTree
{
    internal abstract record Node(uint Mode, long MTime);
    internal sealed record DirNode(uint Mode, long MTime) : Node(Mode, MTime);
    internal sealed record LinkNode(string Target, long MTime) : Node(0x1FF, MTime);
    internal sealed record FileNode(uint Mode, long MTime, string? HostPath, byte[]? Data) : Node(Mode, MTime);
    internal sealed record DevNode(uint Mode, bool Character, uint Major, uint Minor) : Node(Mode, 0);

    private readonly SortedDictionary<string, Node> _nodes = new(StringComparer.Ordinal);

    /// <summary>The mode of the archive's root (the initramfs's /): sshd's ChrootDirectory wants 0755, root-owned.</summary>
    public uint RootMode { get; set; } = 0x1ED;

    public int Count => _nodes.Count;

    public bool Contains(string path) => _nodes.ContainsKey(Key(path));

    internal IReadOnlyDictionary<string, Node> Nodes => _nodes;

    /// <summary>The tree path of <paramref name="path"/> with its directories resolved through the tree's symlinks.</summary>
    public string Resolve(string path)
    {
        var parts = Key(path).Split('/', StringSplitOptions.RemoveEmptyEntries).ToList();
        var cur = new List<string>();
        int hops = 0;
        for (int i = 0; i < parts.Count; i++)
        {
            var c = parts[i];
            if (c == ".") continue;
            if (c == "..") { if (cur.Count > 0) cur.RemoveAt(cur.Count - 1); continue; }
            var next = string.Join('/', cur.Append(c));
            bool last = i == parts.Count - 1;
            if (!last && _nodes.TryGetValue(next, out var n) && n is LinkNode link && ++hops < 40)
            {
                var rest = parts.Skip(i + 1);
                if (link.Target.StartsWith('/')) cur.Clear();
                parts = link.Target.Split('/', StringSplitOptions.RemoveEmptyEntries).Concat(rest).ToList();
                i = -1;
                continue;
            }
            cur.Add(c);
        }
        return string.Join('/', cur);
    }

    public void AddDirectory(string path, uint mode = 0x1ED, long mtime = 0)
    {
        var key = Resolve(path);
        if (key.Length == 0) return;
        EnsureParents(key);
        if (_nodes.TryGetValue(key, out var existing))
        {
            if (existing is DirNode or LinkNode) return;
            throw Conflict(key, "a directory");
        }
        _nodes[key] = new DirNode(mode & 0xFFF, mtime);
    }

    public void AddSymlink(string path, string target, long mtime = 0)
    {
        var key = Resolve(path);
        EnsureParents(key);
        if (_nodes.TryGetValue(key, out var existing))
        {
            if (existing is LinkNode l && l.Target == target) return;
            if (existing is DirNode or FileNode or LinkNode) return; // the first one wins (e.g. GNU tar over busybox's tar applet)
        }
        _nodes[key] = new LinkNode(target, mtime);
    }

    /// <summary>A file whose content is read from the host when the archive is written.</summary>
    public void AddHostFile(string path, string hostPath, uint mode, long mtime = 0, bool replace = false)
    {
        var key = Resolve(path);
        EnsureParents(key);
        if (!replace && _nodes.TryGetValue(key, out var existing))
        {
            if (existing is FileNode f && f.HostPath == hostPath) return;
            throw Conflict(key, "the file " + hostPath);
        }
        _nodes[key] = new FileNode(mode & 0xFFF, mtime, hostPath, null);
    }

    public void AddData(string path, byte[] content, uint mode = 0x1A4, long mtime = 0)
    {
        var key = Resolve(path);
        EnsureParents(key);
        _nodes[key] = new FileNode(mode & 0xFFF, mtime, null, content);
    }

    public void AddCharDevice(string path, uint major, uint minor, uint mode = 0x1B6)
    {
        var key = Resolve(path);
        EnsureParents(key);
        _nodes[key] = new DevNode(mode & 0xFFF, true, major, minor);
    }

    /// <summary>
    /// Adds a host path as it is on the host: every symbolic link met on the way (lib → usr/lib,
    /// ld-linux-x86-64.so.2 → …) as a link, then the file or directory it ends at, with its mode
    /// and mtime. Returns the resolved path.
    /// </summary>
    public string AddHostPath(string hostPath)
    {
        var resolved = HostPath.Walk("", hostPath, (link, target) => AddSymlink(link, target, LinkMTime(link)));
        var st = Libc.LStat(resolved)
            ?? throw new MelangeException(ErrorKind.NotInstalled, "MissingHostFile", $"'{hostPath}' does not exist on this host.",
                "Install the package that provides it.", hostPath);
        if (st.IsDirectory) AddDirectory(resolved, st.Permissions, st.MTimeSeconds);
        else if (st.IsRegular) AddHostFile(resolved, resolved, st.Permissions, st.MTimeSeconds);
        else
            throw new MelangeException(ErrorKind.InvalidData, "UnsupportedHostFile", $"'{hostPath}' is neither a regular file nor a directory.",
                "Leave it out of QEMU_ADDITIONAL_PACKAGES.", hostPath);
        return resolved;
    }

    /// <summary>Writes the tree as one cpio newc archive (with its trailer).</summary>
    public void WriteTo(CpioWriter cpio, CancellationToken ct, Action<long>? progress = null)
    {
        cpio.WriteDirectory(".", RootMode);
        foreach (var (key, node) in _nodes)
        {
            ct.ThrowIfCancellationRequested();
            switch (node)
            {
                case DirNode d: cpio.WriteDirectory(key, d.Mode, d.MTime); break;
                case LinkNode l: cpio.WriteSymlink(key, l.Target, l.MTime); break;
                case DevNode dev: cpio.WriteDevice(key, dev.Character, dev.Mode, dev.Major, dev.Minor); break;
                case FileNode { Data: { } data } f: cpio.WriteFile(key, f.Mode, data, f.MTime); break;
                case FileNode f:
                    using (var s = new FileStream(f.HostPath!, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan))
                        cpio.WriteFile(key, f.Mode, s, s.Length, f.MTime);
                    break;
            }
            progress?.Invoke(cpio.Position);
        }
        cpio.Finish();
    }

    /// <summary>The total size of the file contents (for progress).</summary>
    public long ContentLength() => _nodes.Values.OfType<FileNode>().Sum(f => f.Data?.LongLength ?? new FileInfo(f.HostPath!).Length);

    private static long LinkMTime(string path) => Libc.LStat(path)?.MTimeSeconds ?? 0;

    private void EnsureParents(string key)
    {
        int slash = key.LastIndexOf('/');
        if (slash <= 0) return;
        var parent = key[..slash];
        if (_nodes.TryGetValue(parent, out var n))
        {
            if (n is DirNode) return;
            throw Conflict(parent, "a parent directory");
        }
        EnsureParents(parent);
        _nodes[parent] = new DirNode(0x1ED, 0);
    }

    private static string Key(string path)
    {
        var k = path.Trim('/');
        while (k.StartsWith("./", StringComparison.Ordinal)) k = k[2..];
        return k == "." ? "" : k;
    }

    private static MelangeException Conflict(string key, string what) =>
        new(ErrorKind.InvalidData, "InitramfsConflict", $"The initramfs already has '/{key}' as something else; cannot add {what} there.",
            "Remove the conflicting package from QEMU_ADDITIONAL_PACKAGES.", key);
}
