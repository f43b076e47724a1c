namespace MelangeRunner.Qemu.Initramfs;

/// <summary>A module the guest loads, in order: its name, its path relative to lib/modules/&lt;version&gt;.</summary>
public sealed record ModuleToLoad(string Name, string RelativePath, bool Optional)
{
    /// <summary>
    /// When the guest loads it: the boot chains (boot1, boot2: loaded side by side at boot, no
    /// module in one depends on a module in another), or a named group loaded on demand (the cache's file systems).
    /// </summary>
    public string Group { get; init; } = KernelModules.BootGroupPrefix + "1";
}

/// <summary>
/// The kernel modules the guest needs, and the order to load them in, computed on the host from
/// modules.dep (the guest has no modprobe: it runs busybox insmod down the list).
/// </summary>
public static class KernelModules
{
    /// <summary>The name of the load list written into lib/modules/&lt;version&gt;/ (lines "name path required|optional group").</summary>
    public const string LoadListName = "melange-modules.load";

    /// <summary>Boot groups are named boot1, boot2…; the guest loads every group with this prefix at boot.</summary>
    public const string BootGroupPrefix = "boot";

    /// <summary>How many chains the boot modules are split into: the guest's default is 2 vCPUs.</summary>
    public const int BootChains = 2;

    /// <summary>
    /// A module's load cost that does not depend on its size (an insmod process, the kernel's
    /// bookkeeping), in bytes of module that cost as much: ~30 ms against ~0.15 s per MB under TCG.
    /// </summary>
    internal const long FixedLoadCostBytes = 192 * 1024;

    /// <summary>What every guest loads at boot: the console and entropy first, then disks, network, ext4, 9p.</summary>
    public static readonly IReadOnlyList<(string Name, bool Optional)> GuestModules = new[]
    {
        ("virtio_pci", false), ("virtio_console", false), ("virtio_rng", false),
        ("virtio_blk", false), ("virtio_net", false),
        ("crc32c_generic", false), ("ext4", false),
        ("9pnet_virtio", false), ("9p", false),
    };

    /// <summary>
    /// Modules only a cache mount needs, loaded by the host's mount command (melange-load-modules
    /// GROUP) instead of at boot: each costs boot time under TCG, and most pods have no cache.
    /// </summary>
    public static readonly IReadOnlyList<(string Group, string Name)> OnDemandModules = new[]
    {
        ("overlay", "overlay"), ("virtiofs", "virtiofs"),
    };

    /// <summary>
    /// The guest's whole load list: the boot modules split into <see cref="BootChains"/> chains
    /// balanced by <paramref name="sizeOf"/> (a module's bytes), then the on-demand groups (optional).
    /// </summary>
    public static List<ModuleToLoad> GuestLoadList(IReadOnlyDictionary<string, (string Path, IReadOnlyList<string> Deps)> modulesDep,
        IReadOnlySet<string> builtin, string modulesDir, Func<ModuleToLoad, long> sizeOf, IEventSink events)
    {
        var list = SplitIntoChains(LoadOrder(modulesDep, builtin, GuestModules, modulesDir, events), modulesDep, sizeOf, BootChains);
        var placed = list.Select(m => m.Name).ToHashSet(StringComparer.Ordinal);
        foreach (var (group, name) in OnDemandModules)
            foreach (var m in LoadOrder(modulesDep, builtin, new[] { (name, true) }, modulesDir, events))
                if (placed.Add(m.Name)) list.Add(m with { Optional = true, Group = group });
        return list;
    }

    /// <summary>
    /// Splits modules (in load order) into at most <paramref name="chains"/> groups that share no
    /// dependency (connected parts of the dependency graph stay together, in their order), the
    /// heaviest part first into the lightest chain. Returned chain by chain, groups boot1, boot2….
    /// </summary>
    public static List<ModuleToLoad> SplitIntoChains(IReadOnlyList<ModuleToLoad> order,
        IReadOnlyDictionary<string, (string Path, IReadOnlyList<string> Deps)> modulesDep, Func<ModuleToLoad, long> sizeOf, int chains)
    {
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < order.Count; i++) index[order[i].Name] = i;
        var parent = Enumerable.Range(0, order.Count).ToArray();
        int Find(int i) { while (parent[i] != i) i = parent[i] = parent[parent[i]]; return i; }
        for (int i = 0; i < order.Count; i++)
            foreach (var dep in modulesDep.TryGetValue(order[i].Name, out var e) ? e.Deps : Array.Empty<string>())
                if (index.TryGetValue(NameFromPath(dep), out var j)) parent[Find(i)] = Find(j);

        var parts = Enumerable.Range(0, order.Count).GroupBy(Find)
            .Select(g => (Members: g.ToList(), Weight: g.Sum(i => FixedLoadCostBytes + sizeOf(order[i]))))
            .OrderByDescending(p => p.Weight).ThenBy(p => p.Members[0]).ToList();
        var load = new long[Math.Max(1, chains)];
        var chainOf = new int[order.Count];
        foreach (var (members, weight) in parts)
        {
            var lightest = Array.IndexOf(load, load.Min());
            load[lightest] += weight;
            foreach (var i in members) chainOf[i] = lightest;
        }
        return Enumerable.Range(0, order.Count).OrderBy(i => chainOf[i]).ThenBy(i => i)
            .Select(i => order[i] with { Group = BootGroupPrefix + (chainOf[i] + 1).ToString(System.Globalization.CultureInfo.InvariantCulture) }).ToList();
    }

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

    /// <summary>The load list file's text ("name path required|optional group" per line).</summary>
    public static string FormatLoadList(IEnumerable<ModuleToLoad> modules, string version) =>
        $"# kernel modules for {version}, dependencies first within each group (computed from modules.dep by MelangeRunner)\n" +
        string.Concat(modules.Select(m => $"{m.Name} {DecompressedPath(m.RelativePath)} {(m.Optional ? "optional" : "required")} {m.Group}\n"));

    private static readonly byte[] SignatureMagic = "~Module signature appended~\n"u8.ToArray();

    /// <summary>
    /// The module without its appended signature (struct module_signature, then the magic string),
    /// or unchanged when it has none. The kernel hashes a signed module on every load (generic
    /// SHA-256, slow under TCG) and skips the check for an unsigned one unless signatures are enforced.
    /// </summary>
    public static byte[] StripSignature(byte[] module)
    {
        const int InfoSize = 12; // algo, hash, id_type, signer_len, key_id_len, pad[3], sig_len (big-endian)
        if (module.Length < SignatureMagic.Length + InfoSize || !module.AsSpan(module.Length - SignatureMagic.Length).SequenceEqual(SignatureMagic))
            return module;
        var info = module.AsSpan(module.Length - SignatureMagic.Length - InfoSize, InfoSize);
        long signed = (long)module.Length - SignatureMagic.Length - InfoSize
            - System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(info[8..]) - info[3] - info[4];
        return signed > 0 ? module[..(int)signed] : module;
    }

    /// <summary>
    /// The configuration symbol that builds each module the guest needs: a tree without
    /// modules.builtin (a package with its modules.* files gone) still has the kernel's config.
    /// </summary>
    public static readonly IReadOnlyDictionary<string, string> ConfigSymbols = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["virtio_pci"] = "CONFIG_VIRTIO_PCI",
        ["virtio_console"] = "CONFIG_VIRTIO_CONSOLE",
        ["virtio_rng"] = "CONFIG_HW_RANDOM_VIRTIO",
        ["virtio_blk"] = "CONFIG_VIRTIO_BLK",
        ["virtio_net"] = "CONFIG_VIRTIO_NET",
        ["crc32c_generic"] = "CONFIG_CRYPTO_CRC32C",
        ["ext4"] = "CONFIG_EXT4_FS",
        ["9pnet_virtio"] = "CONFIG_NET_9P_VIRTIO",
        ["9p"] = "CONFIG_9P_FS",
        ["overlay"] = "CONFIG_OVERLAY_FS",
        ["virtiofs"] = "CONFIG_VIRTIO_FS",
    };

    /// <summary>The guest's modules (of <see cref="ConfigSymbols"/>) that a kernel configuration builds in (=y).</summary>
    public static HashSet<string> BuiltinFromConfig(TextReader config)
    {
        var builtIn = ConfigSymbols.Values.Select(v => v + "=y").ToHashSet(StringComparer.Ordinal);
        var found = new HashSet<string>(StringComparer.Ordinal);
        string? line;
        while ((line = config.ReadLine()) != null)
            if (builtIn.Contains(line.Trim())) found.Add(line.Trim()[..^2]);
        return ConfigSymbols.Where(kv => found.Contains(kv.Value)).Select(kv => kv.Key).ToHashSet(StringComparer.Ordinal);
    }

    /// <summary>Whether the kernel's build configuration enforces module signatures (CONFIG_MODULE_SIG_FORCE=y).</summary>
    public static bool ConfigForcesSignatures(TextReader config)
    {
        string? line;
        while ((line = config.ReadLine()) != null)
            if (line.Trim() == "CONFIG_MODULE_SIG_FORCE=y") return true;
        return false;
    }

    /// <summary>Where a module lands in the initramfs: compressed modules are stored decompressed as .ko.</summary>
    public static string DecompressedPath(string relativePath)
    {
        foreach (var ext in new[] { ".ko.xz", ".ko.zst", ".ko.gz" })
            if (relativePath.EndsWith(ext, StringComparison.Ordinal)) return relativePath[..^ext.Length] + ".ko";
        return relativePath;
    }
}
