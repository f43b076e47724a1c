namespace MelangeRunner.Qemu.Initramfs;

/// <summary>
/// Finds the shared libraries a program needs the way the dynamic linker does, by reading
/// ELF files (PT_INTERP, DT_NEEDED, DT_RPATH, DT_RUNPATH with $ORIGIN) and searching
/// /etc/ld.so.conf (with its includes) and the default directories; never runs ldd.
/// </summary>
internal sealed class LibraryResolver
{
    private readonly string _root;
    private readonly List<string> _configDirs;
    private readonly Dictionary<string, ElfInfo?> _elfCache = new(StringComparer.Ordinal);

    /// <param name="root">The file system root to resolve in ("/" on the host; a directory in tests).</param>
    public LibraryResolver(string root = "/")
    {
        _root = root == "/" ? "" : root.TrimEnd('/');
        _configDirs = ReadLdSoConf("/etc/ld.so.conf", new HashSet<string>(StringComparer.Ordinal)).Distinct(StringComparer.Ordinal).ToList();
    }

    /// <summary>The directories from /etc/ld.so.conf and its include files, in order.</summary>
    public IReadOnlyList<string> ConfigDirectories => _configDirs;

    /// <summary>The default directories for a machine: the Debian multiarch ones, then lib64, lib.</summary>
    public static IReadOnlyList<string> DefaultDirectories(ElfInfo elf)
    {
        var triplet = MultiarchTriplet(elf);
        var dirs = new List<string>();
        if (triplet != null) { dirs.Add("/lib/" + triplet); dirs.Add("/usr/lib/" + triplet); }
        if (elf.Is64) { dirs.Add("/lib64"); dirs.Add("/usr/lib64"); }
        else { dirs.Add("/lib32"); dirs.Add("/usr/lib32"); }
        dirs.Add("/lib");
        dirs.Add("/usr/lib");
        return dirs;
    }

    public static string? MultiarchTriplet(ElfInfo elf) => elf.Machine switch
    {
        ElfInfo.EM_X86_64 when elf.Is64 => "x86_64-linux-gnu",
        ElfInfo.EM_AARCH64 => "aarch64-linux-gnu",
        ElfInfo.EM_386 => "i386-linux-gnu",
        ElfInfo.EM_ARM => "arm-linux-gnueabihf",
        ElfInfo.EM_RISCV when elf.Is64 => "riscv64-linux-gnu",
        _ => null,
    };

    /// <summary>The ELF information of a file (cached); null when it is not ELF.</summary>
    public ElfInfo? GetElf(string path)
    {
        if (_elfCache.TryGetValue(path, out var cached)) return cached;
        var host = _root + path;
        var info = ElfReader.IsElf(host) ? ElfReader.Read(host) : null;
        _elfCache[path] = info;
        return info;
    }

    /// <summary>
    /// The closure of the programs: each program, its interpreter and every library it needs,
    /// recursively, as paths the way they were found (symbolic links are not resolved here).
    /// </summary>
    public IReadOnlyList<string> Resolve(IEnumerable<string> programs)
    {
        var result = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var queue = new Queue<(string Path, string Who)>();
        foreach (var p in programs) queue.Enqueue((p, p));
        while (queue.Count > 0)
        {
            var (path, who) = queue.Dequeue();
            if (!seen.Add(path)) continue;
            result.Add(path);
            var elf = GetElf(path);
            if (elf == null) continue;
            if (elf.Interpreter is { Length: > 0 } interp) queue.Enqueue((interp, path));
            foreach (var needed in elf.Needed)
            {
                var found = FindLibrary(needed, path, elf)
                    ?? throw new MelangeException(ErrorKind.NotInstalled, "MissingLibrary",
                        $"'{path}' needs the shared library {needed}, which was not found in its run path, /etc/ld.so.conf or the default library directories{(who != path ? $" (needed through {who})" : "")}.",
                        "Reinstall the package that provides the program, for example: sudo apt-get install --reinstall <package>.", path);
                queue.Enqueue((found, path));
            }
        }
        return result;
    }

    /// <summary>Where the dynamic linker would find a DT_NEEDED name for an object; null when nowhere.</summary>
    public string? FindLibrary(string needed, string requester, ElfInfo requesterElf)
    {
        if (needed.Contains('/'))
            return Exists(needed) ? needed : null;
        var origin = Path.GetDirectoryName(RealPath(requester)) ?? "/";
        var dirs = new List<string>();
        if (requesterElf.RunPath.Count == 0) dirs.AddRange(requesterElf.RPath.Select(d => ExpandOrigin(d, origin)).OfType<string>());
        dirs.AddRange(requesterElf.RunPath.Select(d => ExpandOrigin(d, origin)).OfType<string>());
        dirs.AddRange(_configDirs);
        dirs.AddRange(DefaultDirectories(requesterElf));
        foreach (var dir in dirs.Distinct(StringComparer.Ordinal))
        {
            var candidate = Path.Combine(dir, needed);
            if (!Exists(candidate)) continue;
            var elf = GetElf(candidate);
            if (elf != null && elf.IsCompatible(requesterElf)) return candidate;
        }
        return null;
    }

    /// <summary>The path with every symbolic link resolved (in the resolver's root).</summary>
    public string RealPath(string path) => HostPath.Walk(_root, path, null);

    private static string? ExpandOrigin(string dir, string origin)
    {
        dir = dir.Replace("${ORIGIN}", origin, StringComparison.Ordinal).Replace("$ORIGIN", origin, StringComparison.Ordinal);
        if (dir.Contains('$')) return null; // $LIB, $PLATFORM: not used by the programs we take
        return dir.StartsWith('/') ? Path.GetFullPath(dir) : null;
    }

    private bool Exists(string path) => File.Exists(_root + path);

    private List<string> ReadLdSoConf(string file, HashSet<string> visited)
    {
        var dirs = new List<string>();
        file = Path.GetFullPath(file);
        if (!visited.Add(file) || !File.Exists(_root + file)) return dirs;
        string[] lines;
        try { lines = File.ReadAllLines(_root + file); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return dirs; }
        foreach (var raw in lines)
        {
            var line = raw;
            int hash = line.IndexOf('#');
            if (hash >= 0) line = line[..hash];
            line = line.Trim();
            if (line.Length == 0) continue;
            if (line.StartsWith("include", StringComparison.Ordinal) && line.Length > 7 && char.IsWhiteSpace(line[7]))
            {
                foreach (var pattern in line[8..].Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries))
                {
                    var abs = pattern.StartsWith('/') ? pattern : Path.Combine(Path.GetDirectoryName(file) ?? "/", pattern);
                    foreach (var inc in Glob(abs)) dirs.AddRange(ReadLdSoConf(inc, visited));
                }
                continue;
            }
            if (line.StartsWith("hwcap", StringComparison.Ordinal)) continue;
            foreach (var d in line.Split(new[] { ' ', '\t', ',', ':', '=' }, StringSplitOptions.RemoveEmptyEntries))
                if (d.StartsWith('/')) dirs.Add(d.TrimEnd('/') is { Length: > 0 } t ? t : "/");
        }
        return dirs;
    }

    /// <summary>A glob whose wildcards are in the last component only (as ld.so.conf includes are written), sorted.</summary>
    private IEnumerable<string> Glob(string pattern)
    {
        var dir = Path.GetDirectoryName(pattern) ?? "/";
        var name = Path.GetFileName(pattern);
        if (name.IndexOfAny(new[] { '*', '?', '[' }) < 0) return File.Exists(_root + pattern) ? new[] { pattern } : Array.Empty<string>();
        if (!Directory.Exists(_root + dir)) return Array.Empty<string>();
        return Directory.GetFiles(_root + dir, name).Select(f => dir.TrimEnd('/') + "/" + Path.GetFileName(f)).Order(StringComparer.Ordinal);
    }
}
