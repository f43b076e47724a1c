namespace MelangeRunner.Qemu.Initramfs;

/// <summary>Path resolution on the host, one component at a time, reporting each symbolic link met.</summary>
internal static class HostPath
{
    /// <summary>
    /// Resolves <paramref name="path"/> (absolute, inside <paramref name="root"/>) like the kernel
    /// does, calling <paramref name="onLink"/> with each symbolic link crossed and its target;
    /// returns the resolved path (relative to the root, starting with /).
    /// </summary>
    public static string Walk(string root, string path, Action<string, string>? onLink)
    {
        var pending = new List<string>(Split(path));
        var cur = new List<string>();
        int hops = 0;
        for (int i = 0; i < pending.Count; i++)
        {
            var c = pending[i];
            if (c == ".") continue;
            if (c == "..") { if (cur.Count > 0) cur.RemoveAt(cur.Count - 1); continue; }
            var next = "/" + string.Join('/', cur.Append(c));
            string? target = null;
            try { target = new FileInfo(root + next).LinkTarget; }
            catch (IOException) { }
            if (target == null) { cur.Add(c); continue; }
            if (++hops > 40)
                throw new MelangeException(ErrorKind.InvalidData, "SymlinkLoop", $"Too many levels of symbolic links resolving '{path}'.", "Fix the symbolic links on the host.", path);
            onLink?.Invoke(next, target);
            var rest = pending.Skip(i + 1).ToList();
            if (target.StartsWith('/')) cur.Clear();
            pending = Split(target).Concat(rest).ToList();
            i = -1;
        }
        return "/" + string.Join('/', cur);
    }

    private static string[] Split(string p) => p.Split('/', StringSplitOptions.RemoveEmptyEntries);
}
