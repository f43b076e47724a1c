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
            // Post-order DFS: dependencies before dependents; depmod lists the reverse.
            var post = new List<string>();
            var visiting = new HashSet<string>(StringComparer.Ordinal) { rel };
            void Visit(string r)
            {
                foreach (var dep in depends[r])
                {
                    if (!byName.TryGetValue(dep, out var dr) || !visiting.Add(dr)) continue;
                    Visit(dr);
                    post.Add(dr);
                }
            }
            Visit(rel);
            post.Reverse();
            sb.Append(rel).Append(':');
            foreach (var d in post) sb.Append(' ').Append(d);
            sb.Append('\n');
        }
        count = order.Count;
        return sb.ToString();
    }

    static bool IsModuleFile(string path) =>
        path.EndsWith(".ko", StringComparison.Ordinal) || path.EndsWith(".ko.xz", StringComparison.Ordinal) ||
        path.EndsWith(".ko.zst", StringComparison.Ordinal) || path.EndsWith(".ko.gz", StringComparison.Ordinal);

    static string NameFromFile(string rel)
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
