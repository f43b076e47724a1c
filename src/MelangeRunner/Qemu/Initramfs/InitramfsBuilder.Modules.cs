using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using MelangeRunner.HostProcess;
using MelangeRunner.Images;
using MelangeRunner.Qemu.Kernel;

namespace MelangeRunner.Qemu.Initramfs;

/// <summary>The guest's kernel modules in the initramfs: which, in what order, from which tree.</summary>
public static partial class InitramfsBuilder
{
    /// <summary>The modules the guest needs from a lib/modules/&lt;version&gt; tree, with their load list.</summary>
    internal static void AddModules(InitramfsTree tree, string modulesDir, IEventSink events, CancellationToken ct)
    {
        modulesDir = Path.GetFullPath(modulesDir).TrimEnd('/');
        var version = Path.GetFileName(modulesDir);
        var (dep, builtin) = GuestModulesDep(modulesDir, version, events);
        var keepSignatures = KernelConfigForcesSignatures(modulesDir, version, events);
        var contents = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        byte[] Contents(ModuleToLoad m)
        {
            if (contents.TryGetValue(m.Name, out var data)) return data;
            ct.ThrowIfCancellationRequested();
            var src = Path.Combine(modulesDir, m.RelativePath);
            if (!File.Exists(src))
                throw new MelangeException(ErrorKind.ObjectNotFound, "KernelModuleMissing", $"modules.dep lists '{m.RelativePath}', but '{src}' does not exist.",
                    "Reinstall the kernel's modules (the lib/modules/<version> tree is incomplete).", src);
            data = src.EndsWith(".ko", StringComparison.Ordinal) ? File.ReadAllBytes(src) : Decompress(src);
            return contents[m.Name] = keepSignatures ? data : KernelModules.StripSignature(data);
        }
        var list = KernelModules.GuestLoadList(dep, builtin, modulesDir, m => Contents(m).Length, events);
        events.Verbose($"Kernel modules {version}, by group in load order: {string.Join("; ", list.GroupBy(m => m.Group).Select(g => g.Key + ": " + string.Join(' ', g.Select(m => m.Name))))}");
        var prefix = "lib/modules/" + version + "/";
        tree.AddDirectory(prefix);
        foreach (var m in list)
            tree.AddData(prefix + KernelModules.DecompressedPath(m.RelativePath), Contents(m), 0x1A4);
        // The guest needs only this list (it has no modprobe); modules.dep would add half a megabyte to every boot.
        tree.AddData(prefix + KernelModules.LoadListName, Encoding.UTF8.GetBytes(KernelModules.FormatLoadList(list, version)), 0x1A4);
    }

    /// <summary>Every module the guest may load: the boot modules (required), then the on-demand ones (optional).</summary>
    private static IEnumerable<(string Name, bool Optional)> AllGuestModules =>
        KernelModules.GuestModules.Concat(KernelModules.OnDemandModules.Select(m => (m.Name, true)));

    /// <summary>
    /// The dependency data of the modules the guest needs, and the modules built into the kernel.
    /// From modules.dep when the tree has one; otherwise (a package unpacked with dpkg -x, whose
    /// postinst would have run depmod) derived from the needed modules' own .modinfo, never
    /// written into the tree. A dependency of a required module that has no file is an error
    /// naming it; a required module itself that is missing fails later, in the load order.
    /// </summary>
    internal static (Dictionary<string, (string Path, IReadOnlyList<string> Deps)> Dep, HashSet<string> Builtin) GuestModulesDep(string modulesDir, string version, IEventSink events)
    {
        var builtin = BuiltinModules(modulesDir, version, events);
        var depFile = Path.Combine(modulesDir, "modules.dep");
        if (File.Exists(depFile))
        {
            using var r = new StreamReader(depFile);
            return (KernelModules.ParseModulesDep(r), builtin);
        }
        var watch = Stopwatch.StartNew();
        var wanted = AllGuestModules.Select(m => (Name: KernelModules.NormalizeName(m.Name), m.Optional)).Where(m => !builtin.Contains(m.Name)).ToList();
        var derived = ModulesDep.Derive(modulesDir, wanted.Select(m => m.Name), builtin);
        if (derived.FilesIndexed == 0)
            throw new MelangeException(ErrorKind.ObjectNotFound, "ModulesDepNotFound",
                $"'{modulesDir}' has neither a modules.dep nor any kernel module (*.ko, *.ko.xz, *.ko.zst, *.ko.gz): it is not a lib/modules/<version> tree.",
                "Give the lib/modules/<version> directory that matches the kernel (in an unpacked linux-image package: <tree>/lib/modules/<version>).", modulesDir);
        var dep = derived.Dep;
        foreach (var (name, optional) in wanted)
        {
            if (!dep.TryGetValue(name, out var entry)) continue; // a missing root: the load order says whether it mattered
            var needs = entry.Deps.Select(KernelModules.NameFromPath).Append(name).ToHashSet(StringComparer.Ordinal);
            foreach (var (module, neededBy) in derived.Missing.Where(m => needs.Contains(m.NeededBy)))
            {
                if (optional)
                {
                    events.Verbose($"Kernel module {name} needs {module}, which '{modulesDir}' does not have (optional; skipped).");
                    dep.Remove(name);
                    break;
                }
                throw new MelangeException(ErrorKind.NotInstalled, "KernelModuleMissing",
                    $"The guest needs the kernel module {module} ({neededBy} depends on it{(neededBy == name ? "" : ", for " + name)}), but '{modulesDir}' has no {module}.ko and the kernel does not have it built in.",
                    $"Unpack the kernel's package again (the tree lacks {module}), or point QEMU_KERNEL_MODULES at the complete lib/modules/{version} tree of the kernel that boots.", modulesDir);
            }
        }
        events.Verbose($"Kernel: '{modulesDir}' has no modules.dep: the guest's {dep.Count} modules and their dependencies came from their .modinfo " +
            $"({derived.ModulesRead} of {derived.FilesIndexed} module files read, {watch.ElapsedMilliseconds} ms); the tree was not changed.");
        return (dep, builtin);
    }

    /// <summary>
    /// The modules compiled into the kernel: modules.builtin, else modules.builtin.modinfo (both
    /// made by the kernel's build and shipped in its package), else, for the modules the guest
    /// needs, the kernel's build configuration (CONFIG_…=y). Without any of these, none.
    /// </summary>
    internal static HashSet<string> BuiltinModules(string modulesDir, string version, IEventSink events)
    {
        var builtinFile = Path.Combine(modulesDir, "modules.builtin");
        if (File.Exists(builtinFile)) using (var r = new StreamReader(builtinFile)) return KernelModules.ParseBuiltin(r);
        var modinfoFile = Path.Combine(modulesDir, "modules.builtin.modinfo");
        if (File.Exists(modinfoFile))
            return Encoding.UTF8.GetString(File.ReadAllBytes(modinfoFile)).Split('\0')
                .Select(e => e.IndexOf('.') is > 0 and var dot ? KernelModules.NormalizeName(e[..dot]) : null)
                .OfType<string>().ToHashSet(StringComparer.Ordinal);
        if (FindKernelConfig(modulesDir, version) is { } config)
        {
            using var r = new StreamReader(config);
            var fromConfig = KernelModules.BuiltinFromConfig(r);
            events.Verbose($"Kernel: '{modulesDir}' has no modules.builtin; from {config}, built in among the guest's modules: {(fromConfig.Count == 0 ? "none" : string.Join(' ', fromConfig.Order(StringComparer.Ordinal)))}.");
            return fromConfig;
        }
        events.Verbose($"Kernel: '{modulesDir}' has no modules.builtin and no kernel configuration was found: every module the guest needs must be a file.");
        return new HashSet<string>(StringComparer.Ordinal);
    }

    /// <summary>The kernel's build configuration beside its modules (as Debian installs and packages it), if any.</summary>
    internal static string? FindKernelConfig(string modulesDir, string version) => new[]
    {
        Path.Combine(modulesDir, "config"),
        Path.GetFullPath(Path.Combine(modulesDir, "../../../boot/config-" + version)),
        Path.GetFullPath(Path.Combine(modulesDir, "../../../../boot/config-" + version)),
        "/boot/config-" + version,
    }.FirstOrDefault(File.Exists);

    /// <summary>
    /// Whether the guest kernel enforces module signatures, from its build configuration beside the
    /// modules (/boot/config-VERSION, as Debian installs and fetches it). Without one, signatures are
    /// stripped: no distribution kernel sets CONFIG_MODULE_SIG_FORCE, and an unsigned module only taints.
    /// </summary>
    private static bool KernelConfigForcesSignatures(string modulesDir, string version, IEventSink events)
    {
        if (FindKernelConfig(modulesDir, version) is { } config)
        {
            using var reader = new StreamReader(config);
            var forced = KernelModules.ConfigForcesSignatures(reader);
            events.Verbose(forced
                ? $"{config} enforces module signatures: the guest's modules keep theirs."
                : $"{config} does not enforce module signatures: the guest's modules go without theirs (the kernel would hash each on load).");
            return forced;
        }
        events.Verbose($"No kernel configuration found for {version}: the guest's modules go without their signatures.");
        return false;
    }

    private static byte[] Decompress(string path)
    {
        using var raw = File.OpenRead(path);
        using Stream s = path.EndsWith(".xz", StringComparison.Ordinal) ? new SharpCompress.Compressors.Xz.XZStream(raw)
            : path.EndsWith(".zst", StringComparison.Ordinal) ? new SharpCompress.Compressors.ZStandard.DecompressionStream(raw, 1 << 20, true, false)
            : new System.IO.Compression.GZipStream(raw, System.IO.Compression.CompressionMode.Decompress);
        using var ms = new MemoryStream();
        try { s.CopyTo(ms); }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            throw new MelangeException(ErrorKind.InvalidData, "CorruptKernelModule", $"Cannot decompress the kernel module '{path}': {e.Message}",
                "Reinstall the kernel's modules.", path, e);
        }
        return ms.ToArray();
    }
}
