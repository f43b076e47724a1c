namespace MelangeRunner.Qemu.Initramfs;

/// <summary>A module the guest loads, in order: its name, its path relative to lib/modules/&lt;version&gt;.</summary>
public sealed record ModuleToLoad(string Name, string RelativePath, bool Optional);

/// <summary>
/// The kernel modules the guest needs, and the order to load them in, computed on the host from
/// modules.dep (the guest has no modprobe: it runs busybox insmod down the list).
/// </summary>
public static class KernelModules
{
    /// <summary>The name of the load list written into lib/modules/&lt;version&gt;/ (lines "name path required|optional").</summary>
    public const string LoadListName = "melange-modules.load";

    /// <summary>What the guest needs: the console and entropy first, then disks, network, ext4, 9p; the optional ones after.</summary>
    public static readonly IReadOnlyList<(string Name, bool Optional)> GuestModules = new[]
    {
        ("virtio_pci", false), ("virtio_console", false), ("virtio_rng", false),
        ("virtio_blk", false), ("virtio_net", false),
        ("crc32c_generic", false), ("ext4", false),
        ("9pnet_virtio", false), ("9p", false),
        ("virtio_mmio", true), ("overlay", true), ("virtiofs", true), ("af_packet", true),
    };

    /// <summary>Module names treat - and _ alike; the kernel uses _.</summary>
    public static string NormalizeName(string name) => name.Replace('-', '_');

    /// <summary>The module name of a path in modules.dep (kernel/fs/9p/9p.ko.xz → 9p).</summary>
    public static string NameFromPath(string path)
    {
        var name = path[(path.LastIndexOf('/') + 1)..];
        foreach (var ext in new[] { ".ko.xz", ".ko.zst", ".ko.gz", ".ko" })
            if (name.EndsWith(ext, StringComparison.Ordinal)) { name = name[..^ext.Length]; break; }
        return NormalizeName(name);
    }

    /// <summary>modules.dep: module name → (its path, the paths of its dependencies in listed order).</summary>
    public static Dictionary<string, (string Path, IReadOnlyList<string> Deps)> ParseModulesDep(TextReader reader)
    {
        var result = new Dictionary<string, (string, IReadOnlyList<string>)>(StringComparer.Ordinal);
        string? line;
        while ((line = reader.ReadLine()) != null)
        {
            int colon = line.IndexOf(':');
            if (colon <= 0) continue;
            var path = line[..colon].Trim();
            var deps = line[(colon + 1)..].Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            result.TryAdd(NameFromPath(path), (path, deps));
        }
        return result;
    }

    /// <summary>modules.builtin: the names of the modules compiled into the kernel.</summary>
    public static HashSet<string> ParseBuiltin(TextReader reader)
    {
        var result = new HashSet<string>(StringComparer.Ordinal);
        string? line;
        while ((line = reader.ReadLine()) != null)
            if (line.Trim() is { Length: > 0 } l) result.Add(NameFromPath(l));
        return result;
    }

    /// <summary>
    /// The modules to load, dependencies before dependents, each once (a cycle in modules.dep
    /// does not loop). Built-in modules are skipped; a missing optional module is skipped with a
    /// Verbose note; a missing required one is an error.
    /// </summary>
    public static List<ModuleToLoad> LoadOrder(IReadOnlyDictionary<string, (string Path, IReadOnlyList<string> Deps)> modulesDep,
        IReadOnlySet<string> builtin, IEnumerable<(string Name, bool Optional)> wanted, string modulesDir, IEventSink events)
    {
        var order = new List<ModuleToLoad>();
        var done = new HashSet<string>(StringComparer.Ordinal);
        var visiting = new HashSet<string>(StringComparer.Ordinal);

        void Visit(string name, bool optional)
        {
            if (done.Contains(name) || !visiting.Add(name)) return; // already placed, or a cycle
            var (path, deps) = modulesDep[name];
            // modprobe loads the dependencies listed last first.
            for (int i = deps.Count - 1; i >= 0; i--)
            {
                var dep = NameFromPath(deps[i]);
                if (modulesDep.ContainsKey(dep)) Visit(dep, optional);
            }
            visiting.Remove(name);
            if (done.Add(name)) order.Add(new ModuleToLoad(name, path, optional));
        }

        foreach (var (raw, optional) in wanted)
        {
            var name = NormalizeName(raw);
            if (builtin.Contains(name)) { events.Verbose($"Kernel module {name} is built into the kernel."); continue; }
            if (!modulesDep.ContainsKey(name))
            {
                if (optional) { events.Verbose($"Kernel module {name} is not in {modulesDir} (optional; skipped)."); continue; }
                throw new MelangeException(ErrorKind.NotInstalled, "KernelModuleMissing",
                    $"The kernel modules in '{modulesDir}' have no {name} module and the kernel does not have it built in; the guest needs it.",
                    "Use Debian's standard kernel (linux-image-<version>-amd64; the 'cloud' flavour lacks 9p) and its matching lib/modules/<version> tree.", modulesDir);
            }
            // A required module pulled in by an optional one stays as required as its first user.
            Visit(name, optional);
        }
        // A dependency shared by a required module is required.
        var requiredNames = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (raw, optional) in wanted)
        {
            var name = NormalizeName(raw);
            if (optional || !modulesDep.TryGetValue(name, out var entry)) continue;
            requiredNames.Add(name);
            foreach (var d in entry.Deps) requiredNames.Add(NameFromPath(d));
        }
        return order.Select(m => requiredNames.Contains(m.Name) ? m with { Optional = false } : m).ToList();
    }

    /// <summary>The load list file's text ("name path required|optional" per line).</summary>
    public static string FormatLoadList(IEnumerable<ModuleToLoad> modules, string version) =>
        $"# kernel modules for {version}, dependencies first (computed from modules.dep by MelangeRunner)\n" +
        string.Concat(modules.Select(m => $"{m.Name} {DecompressedPath(m.RelativePath)} {(m.Optional ? "optional" : "required")}\n"));

    /// <summary>Where a module lands in the initramfs: compressed modules are stored decompressed as .ko.</summary>
    public static string DecompressedPath(string relativePath)
    {
        foreach (var ext in new[] { ".ko.xz", ".ko.zst", ".ko.gz" })
            if (relativePath.EndsWith(ext, StringComparison.Ordinal)) return relativePath[..^ext.Length] + ".ko";
        return relativePath;
    }
}
