using System.IO.Compression;
using System.Text;
using MelangeRunner.Tar;
using SharpCompress.Compressors.Xz;

namespace MelangeRunner.Qemu.Kernel;

/// <summary>
/// Writes <c>modules.dep</c> for a kernel's module tree when it is missing. Debian's kernel
/// packages do not ship it (the package's postinst runs depmod), so a kernel unpacked with
/// <c>dpkg -x</c> has none, and hosts without kmod have no depmod. Each module's direct
/// dependencies are read from the <c>depends=</c> entry of its <c>.modinfo</c> section
/// (plain, .xz, .zst or .gz modules), and each line lists the transitive dependencies in
/// depmod's order: a module before the modules it needs, so loading goes right to left.
/// </summary>
public static class ModulesDep
{
    /// <summary>
    /// Makes sure <paramref name="modulesDir"/> (a <c>lib/modules/&lt;version&gt;</c> tree) has a
    /// modules.dep: true when it has one afterwards. Never throws for an unwritable or odd tree.
    /// </summary>
    public static bool Ensure(string modulesDir, IEventSink events)
    {
        events ??= NullEventSink.Instance;
        string depFile = Path.Combine(modulesDir, "modules.dep");
        if (File.Exists(depFile)) return true;
        if (!Directory.Exists(modulesDir)) return false;
        try
        {
            string text = Generate(modulesDir, out int count);
            string temp = depFile + $".tmp-{Environment.ProcessId}-{Guid.NewGuid():N}";
            File.WriteAllText(temp, text, new UTF8Encoding(false));
            File.Move(temp, depFile, overwrite: true);
            events.Verbose($"Kernel: wrote {depFile} ({count} modules; the tree had none, as after 'dpkg -x').");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
        {
            events.Verbose($"Kernel: {modulesDir} has no modules.dep and it could not be written: {e.Message}");
            return false;
        }
    }

    /// <summary>The text of modules.dep for a module tree, and how many modules it names.</summary>
    public static string Generate(string modulesDir, out int count)
    {
        string root = Path.GetFullPath(modulesDir);
        var byName = new Dictionary<string, string>(StringComparer.Ordinal);   // module name → relative path
        var depends = new Dictionary<string, string[]>(StringComparer.Ordinal); // relative path → direct dependency names
        var files = Directory.EnumerateFiles(root, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 })
            .Where(IsModuleFile)
            .Select(f => Path.GetRelativePath(root, f).Replace('\\', '/'))
            .OrderBy(f => f, StringComparer.Ordinal)
            .ToList();
        foreach (var rel in files)
        {
            var info = ReadModinfo(Path.Combine(root, rel));
            string name = info.TryGetValue("name", out var n) && n.Length > 0 ? n : NameFromFile(rel);
            byName.TryAdd(name, rel);
            depends[rel] = info.TryGetValue("depends", out var d)
                ? d.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(x => x.Replace('-', '_')).ToArray()
                : Array.Empty<string>();
        }

        // modules.order gives depmod's line order; modules not in it follow, sorted.
        var order = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        string orderFile = Path.Combine(root, "modules.order");
        if (File.Exists(orderFile))
        {
            foreach (var line in File.ReadLines(orderFile))
            {
                string l = line.Trim();
                if (l.Length == 0) continue;
                // modules.order names "kernel/x.ko" even when the files are compressed.
                string? rel = depends.ContainsKey(l) ? l : files.FirstOrDefault(f => f.StartsWith(l + ".", StringComparison.Ordinal));
                if (rel != null && seen.Add(rel)) order.Add(rel);
            }
        }
        order.AddRange(files.Where(seen.Add));

        var sb = new StringBuilder();
        foreach (var rel in order)
        {
            sb.Append(rel).Append(':');
            foreach (var d in DepmodOrder(rel, r => depends[r], byName)) sb.Append(' ').Append(d);
            sb.Append('\n');
        }
        count = order.Count;
        return sb.ToString();
    }

    /// <summary>
    /// The modules.dep lines of some modules of a tree that has no modules.dep: only
    /// <paramref name="roots"/> and what they need, read from those modules' own .modinfo
    /// (<c>depends=</c>), so that a package's tree of thousands of modules costs a walk of its
    /// names and a few dozen small reads (the whole tree's .modinfo takes over a second).
    /// A root without a file is left out (the caller decides whether it mattered); a dependency
    /// without a file, unless built in, is reported in <see cref="DerivedModulesDep.Missing"/>.
    /// </summary>
    public static DerivedModulesDep Derive(string modulesDir, IEnumerable<string> roots, IReadOnlySet<string> builtin)
    {
        string root = Path.GetFullPath(modulesDir);
        var byName = IndexByName(root, out int files);
        var direct = new Dictionary<string, string[]>(StringComparer.Ordinal); // module name → direct dependency names
        var missing = new List<(string Module, string NeededBy)>();

        string[] DirectOf(string name)
        {
            if (direct.TryGetValue(name, out var d)) return d;
            var path = Path.Combine(root, byName[name]);
            Dictionary<string, string> info;
            try { info = ReadModinfo(path); }
            // Decompressors throw their own types for a damaged stream.
            catch (Exception e) when (e is not (OperationCanceledException or OutOfMemoryException))
            {
                throw new MelangeException(ErrorKind.InvalidData, "CorruptKernelModule", $"Cannot read the kernel module '{path}': {e.Message}",
                    "Reinstall or unpack the kernel's modules again.", path, e);
            }
            d = info.TryGetValue("depends", out var dep)
                ? dep.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(x => x.Replace('-', '_')).Distinct().ToArray()
                : Array.Empty<string>();
            return direct[name] = d;
        }

        // The closure of the roots, each module's .modinfo read once.
        var closure = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var stack = new Stack<string>();
        foreach (var r in roots.Select(n => n.Replace('-', '_')))
            if (byName.ContainsKey(r) && seen.Add(r)) stack.Push(r);
        while (stack.Count > 0)
        {
            var name = stack.Pop();
            closure.Add(name);
            foreach (var dep in DirectOf(name))
            {
                if (builtin.Contains(dep)) continue;
                if (!byName.ContainsKey(dep)) { missing.Add((dep, name)); continue; }
                if (seen.Add(dep)) stack.Push(dep);
            }
        }

        var result = new Dictionary<string, (string Path, IReadOnlyList<string> Deps)>(StringComparer.Ordinal);
        foreach (var name in closure)
            result[name] = (byName[name], DepmodOrder(byName[name], rel => DirectOf(NameFromFile(rel)), byName));
        return new DerivedModulesDep(result, missing, files, direct.Count);
    }

    /// <summary>
    /// Every module file of a tree by module name (kernel/fs/9p/9p.ko.xz → 9p). A name found twice
    /// goes to updates/ first, as depmod's default search order has it, then to the first path.
    /// </summary>
    internal static Dictionary<string, string> IndexByName(string root, out int count)
    {
        var byName = new Dictionary<string, string>(StringComparer.Ordinal);
        var files = Directory.EnumerateFiles(root, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 })
            .Where(IsModuleFile)
            .Select(f => Path.GetRelativePath(root, f).Replace('\\', '/'))
            .OrderBy(f => f.StartsWith("updates/", StringComparison.Ordinal) ? 0 : 1)
            .ThenBy(f => f, StringComparer.Ordinal)
            .ToList();
        foreach (var rel in files) byName.TryAdd(NameFromFile(rel), rel);
        count = files.Count;
        return byName;
    }

    /// <summary>
    /// A modules.dep line's dependencies for <paramref name="rel"/>: all it needs, transitively, a
    /// module before the modules it needs (depmod's order: loading goes right to left).
    /// </summary>
    private static List<string> DepmodOrder(string rel, Func<string, IEnumerable<string>> directOf, IReadOnlyDictionary<string, string> byName)
    {
        // Post-order DFS: dependencies before dependents; depmod lists the reverse.
        var post = new List<string>();
        var visiting = new HashSet<string>(StringComparer.Ordinal) { rel };
        void Visit(string r)
        {
            foreach (var dep in directOf(r))
            {
                if (!byName.TryGetValue(dep, out var dr) || !visiting.Add(dr)) continue;
                Visit(dr);
                post.Add(dr);
            }
        }
        Visit(rel);
        post.Reverse();
        return post;
    }

    private static bool IsModuleFile(string path) =>
        path.EndsWith(".ko", StringComparison.Ordinal) || path.EndsWith(".ko.xz", StringComparison.Ordinal) ||
        path.EndsWith(".ko.zst", StringComparison.Ordinal) || path.EndsWith(".ko.gz", StringComparison.Ordinal);

    private static string NameFromFile(string rel)
    {
        string f = Path.GetFileName(rel);
        f = f[..f.IndexOf(".ko", StringComparison.Ordinal)];
        return f.Replace('-', '_');
    }

    /// <summary>The key=value pairs of a module's .modinfo section (first value of each key).</summary>
    internal static Dictionary<string, string> ReadModinfo(string path)
    {
        byte[] bytes;
        using (var fs = File.OpenRead(path))
        {
            Stream s = path.EndsWith(".xz", StringComparison.Ordinal) ? new XZStream(fs)
                : path.EndsWith(".zst", StringComparison.Ordinal) ? (ZstdNativeStream.IsAvailable ? new ZstdNativeStream(fs) : new SharpCompress.Compressors.ZStandard.DecompressionStream(fs, 1 << 17, true, false))
                : path.EndsWith(".gz", StringComparison.Ordinal) ? new GZipStream(fs, CompressionMode.Decompress)
                : fs;
            using var ms = new MemoryStream();
            s.CopyTo(ms);
            if (!ReferenceEquals(s, fs)) s.Dispose();
            bytes = ms.ToArray();
        }
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        var section = Elf.ReadSection(bytes, ".modinfo");
        if (section == null) return result;
        foreach (var entry in Encoding.UTF8.GetString(section).Split('\0'))
        {
            int eq = entry.IndexOf('=');
            if (eq > 0) result.TryAdd(entry[..eq], entry[(eq + 1)..]);
        }
        return result;
    }
}

/// <summary>
/// modules.dep lines derived for some modules (name → path, transitive dependencies in depmod's
/// order, as <see cref="MelangeRunner.Qemu.Initramfs.KernelModules.ParseModulesDep"/> gives them),
/// the dependencies that have no file (and which module needs each), how many module files the
/// tree holds and how many were read.
/// </summary>
public sealed record DerivedModulesDep(
    Dictionary<string, (string Path, IReadOnlyList<string> Deps)> Dep,
    IReadOnlyList<(string Module, string NeededBy)> Missing,
    int FilesIndexed,
    int ModulesRead);
