using MelangeRunner.HostProcess;
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using MelangeRunner.Images;

using MelangeRunner.Qemu.Kernel;

namespace MelangeRunner.Qemu.Initramfs;

/// <summary>
/// Builds the qemu runner's guest: a cpio newc initramfs assembled from the host (busybox,
/// OpenSSH's sshd, mke2fs, GNU tar, their libraries, the kernel modules the guest needs) with
/// MelangeRunner's own init; caches it; and makes the per-pod copy with the SSH host key.
/// </summary>
public static partial class InitramfsBuilder
{
    /// <summary>Bumped whenever what the builder writes changes, so cached bases are rebuilt.</summary>
    internal const string FormatVersion = "melange-runner-initramfs-2"; // 2: modules without signatures, in boot groups

    public const string BaseInitramfsVariable = "QEMU_BASE_INITRAMFS";
    public const string AdditionalPackagesVariable = "QEMU_ADDITIONAL_PACKAGES";
    public static readonly TimeSpan CacheLifetime = TimeSpan.FromHours(24);

    private const string Activity = "Building the microVM initramfs";
    private const uint InjectedInodeBase = 0x40000000;

    /// <summary>A program the guest needs: where the init calls it, where the host may have it, the Debian package.</summary>
    internal sealed record HostTool(string GuestPath, string[] HostPaths, string Package, string Why);

    internal static readonly HostTool[] Tools =
    {
        new("/bin/busybox", new[] { "/bin/busybox", "/usr/bin/busybox" }, "busybox-static", "the guest's shell and utilities"),
        new("/usr/sbin/sshd", new[] { "/usr/sbin/sshd" }, "openssh-server", "the guest's SSH server"),
        new("/sbin/mke2fs", new[] { "/sbin/mke2fs", "/usr/sbin/mke2fs" }, "e2fsprogs", "formatting the scratch disk"),
        new("/bin/tar", new[] { "/bin/tar", "/usr/bin/tar" }, "tar", "unpacking the rootfs with its xattrs and capabilities"),
    };

    [GeneratedRegex("^[a-zA-Z0-9_,.-]+$")]
    private static partial Regex AdditionalPackagesPattern();

    // ---------------------------------------------------------------------------------------
    // Public API

    /// <summary>melange's GenerateBaseInitramfs: the base initramfs (no host keys) for <paramref name="arch"/>.</summary>
    public static Task GenerateBaseAsync(string arch, MicrovmConfig config, string? modulesDir, string outputPath, IEventSink events, CancellationToken ct) =>
        Task.Run(() => GenerateBase(arch, config, modulesDir, outputPath, events, ct), ct);

    /// <summary>
    /// The base initramfs to boot: QEMU_BASE_INITRAMFS when set, else a cached one (24 hours,
    /// keyed by its inputs) under $XDG_CACHE_HOME/melange-runner/initramfs/&lt;arch&gt;/, built when missing.
    /// </summary>
    /// <param name="env">The QEMU_* variables as the start read them (default: read now).</param>
    public static Task<string> GetBaseAsync(string arch, string? modulesDir, IEventSink events, CancellationToken ct, QemuEnvironment? env = null) =>
        Task.Run(() => GetBase(arch, modulesDir, env ?? QemuEnvironment.ReadPaths(), events, ct), ct);

    /// <summary>
    /// A new temporary copy of the base with the pod's SSH host key (and QEMU_KERNEL_MODULES'
    /// modules) appended as a second cpio archive; mode 0400. Nothing is left behind on failure.
    /// </summary>
    public static Task<string> InjectRuntimeDataAsync(string baseInitramfs, byte[] hostPrivateKey, string hostPublicKeyLine, string? extraModulesDir, IEventSink events, CancellationToken ct) =>
        InjectRuntimeDataAsync(baseInitramfs, hostPrivateKey, hostPublicKeyLine, extraModulesDir, null, events, ct);

    /// <summary>
    /// As above; <paramref name="baseModulesDir"/> is the modules tree the base was built with
    /// (null for a base of the user's): QEMU_KERNEL_MODULES naming that same tree adds nothing,
    /// since the base already holds its modules and their load list.
    /// </summary>
    public static Task<string> InjectRuntimeDataAsync(string baseInitramfs, byte[] hostPrivateKey, string hostPublicKeyLine, string? extraModulesDir, string? baseModulesDir, IEventSink events, CancellationToken ct) =>
        Task.Run(() => InjectRuntimeData(baseInitramfs, hostPrivateKey, hostPublicKeyLine, extraModulesDir, baseModulesDir, events, ct), ct);

    /// <summary>
    /// The smallest guest memory, in bytes, that holds an initramfs of <paramref name="fileBytes"/>
    /// (<paramref name="unpackedBytes"/> once unpacked). Without root= the kernel unpacks the archive
    /// into a tmpfs sized half the memory it manages when it mounts it, and that excludes the archive
    /// itself, still held until unpacked; the kernel keeps ~44 MiB plus 2% of the memory (its image,
    /// its page tables: 50 MiB of 256 MiB, 73 MiB of 1.5 GiB measured). The files take whole pages,
    /// and the init writes a few files of its own: 2% and 4 MiB more. Measured under TCG with
    /// Debian's 6.1 kernel: a 22.1 MiB initramfs boots in 128 MiB, not in 112 MiB; a 402 MiB one
    /// boots in 1536 MiB, and in 1280 MiB its init fails with "No space left on device".
    /// </summary>
    internal static long MinimumGuestMemory(long fileBytes, long unpackedBytes)
    {
        long files = unpackedBytes + unpackedBytes / 50 + (4L << 20);
        // memory - (44 MiB + memory/50) - file >= 2 * files
        return (long)Math.Ceiling((fileBytes + 2.0 * files + (44L << 20)) / 0.98);
    }

    /// <summary>
    /// The initramfs's size in bytes, once it is known to fit a guest of <paramref name="memoryKiB"/>
    /// (<see cref="MinimumGuestMemory"/>): a guest short of it dies early, often before its console
    /// says anything. For a compressed archive (a QEMU_BASE_INITRAMFS) the file's size stands for the
    /// unpacked size too, which makes the check a lenient one.
    /// </summary>
    /// <exception cref="MelangeException">InitramfsTooLarge, before anything boots.</exception>
    public static long CheckFitsInMemory(string initramfsPath, long memoryKiB)
    {
        var size = new FileInfo(initramfsPath).Length;
        var needed = MinimumGuestMemory(size, size);
        if (needed <= memoryKiB * 1024) return size;
        var compressed = !IsPlainCpio(initramfsPath);
        var suggestMiB = ((needed >> 20) / 64 + 1) * 64; // the next 64 MiB up
        throw new MelangeException(ErrorKind.ResourceUnavailable, "InitramfsTooLarge",
            $"The initramfs {initramfsPath} is {MiB(size)}{(compressed ? " compressed (more unpacked)" : "")}, too large for the guest's {MiB(memoryKiB * 1024)} of memory: " +
            $"the kernel unpacks it into a RAM file system of half the memory that the archive itself leaves free, so the guest needs at least {MiB(needed)}.",
            $"Give the pod more memory (-Memory {suggestMiB}Mi or more), or make the initramfs smaller: check QEMU_BASE_INITRAMFS and QEMU_ADDITIONAL_PACKAGES " +
            "(the modules of QEMU_KERNEL_MODULES are reduced to those the guest needs).", initramfsPath);
    }

    /// <summary>"The initramfs was N MiB for M MiB of guest memory": for messages about a VM that died early.</summary>
    public static string DescribeFit(long initramfsBytes, long memoryKiB) =>
        $"The initramfs was {MiB(initramfsBytes)} for {MiB(memoryKiB * 1024)} of guest memory (it needs about {MiB(MinimumGuestMemory(initramfsBytes, initramfsBytes))}).";

    private static string MiB(long bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1048576.0:0.#} MiB");

    /// <summary>Whether a file starts as an uncompressed cpio newc archive (what this builder writes).</summary>
    private static bool IsPlainCpio(string path)
    {
        Span<byte> magic = stackalloc byte[6];
        using var f = File.OpenRead(path);
        return f.ReadAtLeast(magic, 6, throwOnEndOfStream: false) == 6 && (magic.SequenceEqual("070701"u8) || magic.SequenceEqual("070702"u8));
    }

    // ---------------------------------------------------------------------------------------
    // Base

    /// <summary>
    /// The modules of the kernel that qemu pods of <paramref name="arch"/> boot (what a pod's own
    /// base initramfs holds), or null, with a Verbose note, when no kernel or no modules are found.
    /// </summary>
    public static string? ModulesOfBootedKernel(string arch, IEventSink events)
    {
        try
        {
            var kernel = KernelLocator.Locate(arch, events);
            if (kernel.ModulesDir is null) events.Verbose($"The kernel {kernel.BootPath} has no lib/modules tree beside it: the initramfs holds no modules.");
            return kernel.ModulesDir;
        }
        catch (MelangeException e)
        {
            events.Verbose($"No kernel for {arch} found ({e.Message}): the initramfs holds no modules.");
            return null;
        }
    }

    internal static void GenerateBase(string arch, MicrovmConfig config, string? modulesDir, string outputPath, IEventSink events, CancellationToken ct)
    {
        var outDir = Path.GetDirectoryName(Path.GetFullPath(outputPath)) ?? "/";
        if (!Directory.Exists(outDir))
            throw new MelangeException(ErrorKind.ObjectNotFound, "OutputDirectoryNotFound", $"The directory '{outDir}' of the output path does not exist.",
                "Create it first (New-Item -ItemType Directory), or choose another -OutputPath.", outputPath);
        if (Directory.Exists(outputPath))
            throw new MelangeException(ErrorKind.InvalidArgument, "OutputIsDirectory", $"'{outputPath}' is a directory.",
                "Give the path of the initramfs file to write, for example ./initramfs.cpio.", outputPath);
        CheckConfig(config, events);
        var packages = AdditionalPackages(config, events);
        var plan = Plan(CheckArch(arch), modulesDir, packages, events, ct);
        WriteAtomically(outputPath, plan.Tree, events, ct);
    }

    internal static string GetBase(string arch, string? modulesDir, QemuEnvironment env, IEventSink events, CancellationToken ct)
    {
        if (env.BaseInitramfs is { } overridePath)
        {
            if (!File.Exists(overridePath))
                throw new MelangeException(ErrorKind.ObjectNotFound, "BaseInitramfsNotFound",
                    $"{BaseInitramfsVariable} is set to '{overridePath}', which does not exist.",
                    $"Unset {BaseInitramfsVariable}, or point it at an initramfs made with New-MelangeInitramfs.", overridePath);
            events.Verbose($"Using the base initramfs from {BaseInitramfsVariable}: {overridePath}");
            return overridePath;
        }
        arch = CheckArch(arch);
        var config = MicrovmConfig.Default();
        var packages = AdditionalPackages(config, events, env);
        var inputs = CacheInputsFor(arch, modulesDir, packages, events);
        var key = ComputeCacheKey(inputs);
        var dir = HostCache.Initramfs(arch);
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, $"base-{key}.cpio");
        var info = new FileInfo(path);
        if (info.Exists && DateTime.UtcNow - info.LastWriteTimeUtc < CacheLifetime)
        {
            events.Verbose($"Using the cached base initramfs {path}");
            return path;
        }
        events.Verbose($"Building the base initramfs {path}");
        var plan = Plan(arch, modulesDir, packages, events, ct);
        WriteAtomically(path, plan.Tree, events, ct);
        PruneCache(dir, path, events);
        return path;
    }

    private static void PruneCache(string dir, string keep, IEventSink events)
    {
        foreach (var f in Directory.EnumerateFiles(dir, "base-*"))
        {
            if (f == keep) continue;
            try
            {
                var age = DateTime.UtcNow - File.GetLastWriteTimeUtc(f);
                if (age > CacheLifetime || (f.EndsWith(".tmp", StringComparison.Ordinal) && age > TimeSpan.FromHours(1)))
                {
                    File.Delete(f);
                    events.Verbose($"Removed the stale cached initramfs {f}");
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
    }

    internal static string CheckArch(string? arch)
    {
        var a = Architecture.Normalize(arch);
        if (a is not ("x86_64" or "aarch64"))
            throw new MelangeException(ErrorKind.InvalidArgument, "UnsupportedArchitecture",
                $"The qemu runner's initramfs can be built for x86_64 or aarch64, not '{arch}'.", "Use -Arch x86_64 or -Arch aarch64.", arch);
        if (a != Architecture.Host)
            throw new MelangeException(ErrorKind.InvalidArgument, "ArchitectureMismatch",
                $"The initramfs is assembled from this host's programs, which are {Architecture.Host}; it cannot be built for {a}.",
                $"Build it on an {a} host, or omit -Arch (the default is the host's architecture).", arch);
        return a;
    }

    private static void CheckConfig(MicrovmConfig config, IEventSink events)
    {
        if (!string.IsNullOrEmpty(config.Package) && config.Package != MicrovmConfig.BuiltInInit)
            events.Warning($"The init package '{config.Package}' is not available: MelangeRunner fetches no APK packages and always uses its built-in init ({MicrovmConfig.BuiltInInit}).");
        if (config.Repositories.Count > 0)
            events.Warning($"Repositories ({string.Join(", ", config.Repositories)}) are ignored: the initramfs is built from the host's programs, nothing is fetched.");
        if (config.ExtraKeys.Count > 0)
            events.Warning("ExtraKeys are ignored: the initramfs is built from the host's programs, nothing is fetched or verified.");
    }

    /// <summary>QEMU_ADDITIONAL_PACKAGES (validated as melange does) plus the config's additional packages.</summary>
    internal static List<string> AdditionalPackages(MicrovmConfig config, IEventSink events, QemuEnvironment? environment = null)
    {
        var result = new List<string>();
        if ((environment ?? QemuEnvironment.ReadPaths()).AdditionalPackages is { } env)
        {
            if (!AdditionalPackagesPattern().IsMatch(env))
                events.Warning($"{AdditionalPackagesVariable} contains characters other than letters, digits, '_', ',', '.' and '-'; ignoring it: {env}");
            else
            {
                events.Verbose($"{AdditionalPackagesVariable} is set to {env}: adding to the initramfs");
                result.AddRange(env.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
            }
        }
        foreach (var p in config.AdditionalPackages)
        {
            if (string.IsNullOrWhiteSpace(p)) continue;
            if (!AdditionalPackagesPattern().IsMatch(p) || p.Contains(','))
                throw new MelangeException(ErrorKind.InvalidArgument, "InvalidPackageName", $"'{p}' is not a valid package name.",
                    "Use a Debian package name or a program name (letters, digits, '_', '.' and '-').", p);
            result.Add(p.Trim());
        }
        return result.Distinct(StringComparer.Ordinal).ToList();
    }

    // ---------------------------------------------------------------------------------------
    // Planning the tree

    internal sealed record BuildPlan(InitramfsTree Tree, IReadOnlyList<string> HostFiles);

    /// <summary>The host programs (full paths) the guest needs; a clear error naming the Debian packages of those missing.</summary>
    internal static List<(HostTool Tool, string HostPath)> FindTools()
    {
        var found = new List<(HostTool, string)>();
        var missing = new List<HostTool>();
        foreach (var t in Tools)
        {
            var p = t.HostPaths.FirstOrDefault(File.Exists);
            if (p == null) missing.Add(t);
            else found.Add((t, p));
        }
        if (missing.Count > 0)
            throw new MelangeException(ErrorKind.NotInstalled, "MissingHostTool",
                "The qemu runner's initramfs is built from this host's programs and needs " +
                string.Join("; ", missing.Select(m => $"{m.HostPaths[0]} ({m.Why}, Debian package {m.Package})")) + ", which is not installed.",
                "Install it: sudo apt-get install -y " + string.Join(' ', missing.Select(m => m.Package).Distinct()),
                missing[0].HostPaths[0]);
        return found;
    }

    internal static IEnumerable<string> OpenSshHelpers() =>
        new[] { "/usr/lib/openssh", "/usr/libexec/openssh", "/usr/libexec" }
            .SelectMany(d => new[] { d + "/sshd-session", d + "/sshd-auth" }).Where(File.Exists);

    internal static BuildPlan Plan(string arch, string? modulesDir, IReadOnlyList<string> packages, IEventSink events, CancellationToken ct)
    {
        events.Progress(new ProgressReport(Activity, "Finding the host's programs and libraries", 0, null));
        var tools = FindTools();
        var resolver = new LibraryResolver();
        var tree = new InitramfsTree();

        // Reproduce the host's top-level links first (merged /usr: bin → usr/bin, lib → usr/lib…).
        foreach (var top in new[] { "bin", "sbin", "lib", "lib32", "lib64", "libx32" })
        {
            var target = new FileInfo("/" + top).LinkTarget;
            if (target != null) tree.AddSymlink(top, target);
        }

        var programs = tools.Select(t => t.HostPath).ToList();
        // OpenSSH 9.8 and later split the server: sshd runs sshd-session (and 10.0 sshd-auth) per connection.
        foreach (var helper in OpenSshHelpers()) programs.Add(helper);
        var extraFiles = new List<string>();
        foreach (var pkg in packages)
        {
            ct.ThrowIfCancellationRequested();
            var files = PackageFiles(pkg, events);
            foreach (var f in files)
            {
                var st = Native.Libc.LStat(f);
                if (st is { IsRegular: true } && resolver.GetElf(f) != null) programs.Add(f);
                else extraFiles.Add(f);
            }
        }

        // Every program must be for the target machine.
        foreach (var (tool, hostPath) in tools)
        {
            var elf = resolver.GetElf(hostPath);
            if (elf == null && tool.GuestPath == "/bin/busybox")
                throw new MelangeException(ErrorKind.InvalidData, "NotAnElfProgram", $"'{hostPath}' is not an ELF program.", "Reinstall busybox-static.", hostPath);
            if (elf?.Arch is { } a && a != arch)
                throw new MelangeException(ErrorKind.InvalidData, "ArchitectureMismatch", $"'{hostPath}' is a {a} program, not {arch}.", "Install the host's native package.", hostPath);
        }

        var closure = resolver.Resolve(programs);
        events.Verbose($"The initramfs takes {closure.Count} programs and libraries: {string.Join(' ', closure)}");
        var libcDir = closure.Select(resolver.RealPath).FirstOrDefault(p => Path.GetFileName(p).StartsWith("libc.so", StringComparison.Ordinal)) is { } libc
            ? Path.GetDirectoryName(libc) : null;
        foreach (var path in closure)
        {
            ct.ThrowIfCancellationRequested();
            var resolved = tree.AddHostPath(path);
            // A library found only through /etc/ld.so.conf: the guest has no ld.so.cache, so link it
            // into the directory the loader searches by default.
            var dir = Path.GetDirectoryName(path) ?? "/";
            if (libcDir != null && path != closure[0] && resolver.GetElf(path) is { Interpreter: null } e
                && Path.GetFileName(path).Contains(".so", StringComparison.Ordinal) && !LibraryResolver.DefaultDirectories(e).Contains(dir))
                tree.AddSymlink(libcDir + "/" + Path.GetFileName(path), resolved);
        }
        foreach (var f in extraFiles)
        {
            try { tree.AddHostPath(f); }
            catch (MelangeException e) when (e.ErrorId is "MissingHostFile" or "UnsupportedHostFile") { events.Verbose($"Skipped {f}: {e.Message}"); }
        }
        foreach (var (tool, hostPath) in tools)
            if (!tree.Contains(tree.Resolve(tool.GuestPath)))
                tree.AddSymlink(tool.GuestPath, HostPath.Walk("", hostPath, null));

        // busybox's applets, where busybox says they belong, unless a real program is there (GNU tar).
        foreach (var applet in BusyboxApplets(tools.First(t => t.Tool.GuestPath == "/bin/busybox").HostPath))
            tree.AddSymlink(applet, "/bin/busybox");

        // The guest's own files.
        foreach (var d in new[] { "dev", "proc", "sys", "run", "run/sshd", "mount", "etc", "etc/ssh", "etc/ssh/authorized_keys", "var", "var/empty", "home", "lib/modules" })
            tree.AddDirectory(d);
        tree.AddDirectory("tmp", 0x3FF); // 1777
        tree.AddDirectory("root", 0x1C0); // 0700
        tree.AddCharDevice("dev/console", 5, 1, 0x180);
        tree.AddCharDevice("dev/null", 1, 3, 0x1B6);
        tree.AddData("init", GuestFile("init"), 0x1ED);
        tree.AddData("usr/sbin/melange-load-modules", GuestFile("load-modules"), 0x1ED);
        tree.AddData("etc/ssh/sshd_config", GuestFile("sshd_config"), 0x1A4);
        tree.AddData("etc/passwd", Encoding.ASCII.GetBytes(
            "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534:sshd privilege separation:/run/sshd:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"));
        tree.AddData("etc/group", Encoding.ASCII.GetBytes("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"));
        tree.AddData("etc/nsswitch.conf", Encoding.ASCII.GetBytes("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"));
        tree.AddData("etc/hostname", Encoding.ASCII.GetBytes("melange\n"));
        if (File.Exists("/etc/mke2fs.conf")) tree.AddHostFile("etc/mke2fs.conf", "/etc/mke2fs.conf", 0x1A4);

        if (modulesDir != null) AddModules(tree, modulesDir, events, ct);
        else events.Verbose("No kernel modules directory: the guest kernel must have what it needs built in.");
        return new BuildPlan(tree, closure);
    }

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

    /// <summary>The files of an additional package: a Debian package installed on the host (dpkg -L), else a program on PATH.</summary>
    internal static List<string> PackageFiles(string name, IEventSink events)
    {
        var dpkg = new[] { "/usr/bin/dpkg", "/bin/dpkg" }.FirstOrDefault(File.Exists);
        if (dpkg != null)
        {
            var (rc, output) = RunCapture(dpkg, "-L", name);
            if (rc == 0)
            {
                var files = output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                    .Where(l => l.StartsWith('/'))
                    .Where(l => !(l.StartsWith("/usr/share/doc/", StringComparison.Ordinal) || l.StartsWith("/usr/share/man/", StringComparison.Ordinal)
                        || l.StartsWith("/usr/share/info/", StringComparison.Ordinal) || l.StartsWith("/usr/share/lintian/", StringComparison.Ordinal)))
                    .Where(l => Native.Libc.LStat(l) is { IsDirectory: false })
                    .Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
                events.Verbose($"Additional package {name}: {files.Count} files from dpkg -L");
                return files;
            }
        }
        if (HostCommand.FindOnPath(name) is { } program)
        {
            events.Verbose($"Additional package {name}: the program {program}");
            return new List<string> { program };
        }
        throw new MelangeException(ErrorKind.NotInstalled, "AdditionalPackageNotFound",
            $"'{name}' (from {AdditionalPackagesVariable} or -AdditionalPackage) is neither a Debian package installed on this host nor a program on PATH.",
            $"Install it (sudo apt-get install -y {name}) or remove it from the list.", name);
    }

    /// <summary>busybox's applets with their install paths (bin/sh, usr/bin/awk, sbin/insmod…).</summary>
    internal static List<string> BusyboxApplets(string busybox)
    {
        var (rc, output) = RunCapture(busybox, "--list-full");
        var list = rc == 0 ? output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList() : new List<string>();
        if (list.Count == 0)
        {
            var (rc2, plain) = RunCapture(busybox, "--list");
            if (rc2 != 0)
                throw new MelangeException(ErrorKind.InvalidData, "BusyboxBroken", $"'{busybox} --list' failed.", "Reinstall busybox-static.", busybox);
            list = plain.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(a => "bin/" + a).ToList();
        }
        // The init needs these whatever busybox's build says.
        foreach (var needed in new[] { "bin/sh", "bin/mount", "sbin/insmod", "sbin/poweroff" })
            if (!list.Any(l => Path.GetFileName(l) == Path.GetFileName(needed))) list.Add(needed);
        return list.Where(l => !l.Contains("..", StringComparison.Ordinal) && Path.GetFileName(l) != "busybox").Order(StringComparer.Ordinal).ToList();
    }

    // Standard output only, in the C locale: the lists are parsed.
    private static (int ExitCode, string Output) RunCapture(string file, params string[] args) =>
        HostCommand.Capture(file, args, includeStandardError: false, new Dictionary<string, string> { ["LC_ALL"] = "C" });

    internal static byte[] GuestFile(string name)
    {
        var asm = typeof(InitramfsBuilder).Assembly;
        var resource = asm.GetManifestResourceNames().FirstOrDefault(n => n.EndsWith(".Qemu.Guest." + name, StringComparison.Ordinal))
            ?? throw new InvalidOperationException($"The guest file '{name}' is not embedded in {asm.GetName().Name}.");
        using var s = asm.GetManifestResourceStream(resource)!;
        using var ms = new MemoryStream();
        s.CopyTo(ms);
        return ms.ToArray();
    }

    private static void WriteAtomically(string outputPath, InitramfsTree tree, IEventSink events, CancellationToken ct)
    {
        var full = Path.GetFullPath(outputPath);
        var tmp = full + "." + Convert.ToHexString(RandomNumberGenerator.GetBytes(6)).ToLowerInvariant() + ".tmp";
        long total = tree.ContentLength();
        try
        {
            using (var f = new FileStream(tmp, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, BufferSize = 1 << 16, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead }))
            using (var cpio = new CpioWriter(f, leaveOpen: true))
            {
                long last = 0;
                tree.WriteTo(cpio, ct, pos =>
                {
                    if (pos - last < 1 << 20) return;
                    last = pos;
                    events.Progress(new ProgressReport(Activity, $"Writing {Path.GetFileName(full)}", Math.Min(pos, total), total));
                });
                f.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
            events.Progress(new ProgressReport(Activity, "Done", total, total));
            events.Verbose($"Wrote the initramfs {full} ({new FileInfo(full).Length} bytes, {tree.Count} entries)");
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }

    // ---------------------------------------------------------------------------------------
    // Cache key

    /// <summary>What a cached base initramfs depends on.</summary>
    internal sealed record CacheInputs(string Arch, string? ModulesDir, string? ModulesStamp, IReadOnlyList<string> AdditionalPackages,
        IReadOnlyList<byte[]> GuestFiles, IReadOnlyList<string> HostFileStamps);

    /// <summary>The project's own files in the guest (embedded resources).</summary>
    internal static readonly string[] GuestFileNames = { "init", "load-modules", "sshd_config" };

    internal static CacheInputs CacheInputsFor(string arch, string? modulesDir, IReadOnlyList<string> packages, IEventSink events)
    {
        var tools = FindTools();
        var resolver = new LibraryResolver();
        var closure = resolver.Resolve(tools.Select(t => t.HostPath).Concat(OpenSshHelpers()));
        var stamps = closure.Append("/etc/mke2fs.conf").Select(Stamp).ToList();
        string? modulesStamp = null;
        if (modulesDir != null)
        {
            modulesDir = Path.GetFullPath(modulesDir).TrimEnd('/');
            modulesStamp = Stamp(Path.Combine(modulesDir, "modules.dep")) + "|" + Stamp(Path.Combine(modulesDir, "modules.builtin"));
            if (!File.Exists(Path.Combine(modulesDir, "modules.dep")))
            {
                // No modules.dep to stand for the tree: the files the guest's modules come from do
                // (deriving them reads a few dozen small files, and fails now on a missing one).
                var version = Path.GetFileName(modulesDir);
                var (dep, _) = GuestModulesDep(modulesDir, version, events);
                modulesStamp += "|derived|" + Stamp(Path.Combine(modulesDir, "modules.builtin.modinfo")) + "|" + (FindKernelConfig(modulesDir, version) is { } c ? Stamp(c) : "no-config") +
                    "|" + string.Join("|", dep.Values.Select(e => e.Path).Order(StringComparer.Ordinal).Select(p => Stamp(Path.Combine(modulesDir, p))));
            }
        }
        return new CacheInputs(arch, modulesDir, modulesStamp, packages, GuestFileNames.Select(GuestFile).ToList(), stamps);
    }

    private static string Stamp(string path)
    {
        var st = Native.Libc.LStat(path);
        if (st == null) return path + ":missing";
        var real = HostPath.Walk("", path, null);
        var r = Native.Libc.LStat(real) ?? st.Value;
        return string.Create(CultureInfo.InvariantCulture, $"{path}:{real}:{r.Size}:{r.MTimeSeconds}.{r.MTimeNanoseconds}");
    }

    /// <summary>A short hex digest of everything a base initramfs is built from.</summary>
    internal static string ComputeCacheKey(CacheInputs inputs)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        void Add(string? s) { h.AppendData(Encoding.UTF8.GetBytes(s ?? "\u0001null")); h.AppendData(new byte[] { 0 }); }
        Add(FormatVersion);
        Add(inputs.Arch);
        Add(inputs.ModulesDir);
        Add(inputs.ModulesDir == null ? null : Path.GetFileName(inputs.ModulesDir));
        Add(inputs.ModulesStamp);
        Add(string.Join(",", inputs.AdditionalPackages));
        foreach (var file in inputs.GuestFiles) h.AppendData(SHA256.HashData(file));
        foreach (var s in inputs.HostFileStamps) Add(s);
        return Convert.ToHexString(h.GetHashAndReset()).ToLowerInvariant()[..16];
    }

    // ---------------------------------------------------------------------------------------
    // Per pod

    internal static string InjectRuntimeData(string baseInitramfs, byte[] hostPrivateKey, string hostPublicKeyLine, string? extraModulesDir, IEventSink events, CancellationToken ct) =>
        InjectRuntimeData(baseInitramfs, hostPrivateKey, hostPublicKeyLine, extraModulesDir, null, events, ct);

    internal static string InjectRuntimeData(string baseInitramfs, byte[] hostPrivateKey, string hostPublicKeyLine, string? extraModulesDir, string? baseModulesDir, IEventSink events, CancellationToken ct)
    {
        if (!File.Exists(baseInitramfs))
            throw new MelangeException(ErrorKind.ObjectNotFound, "BaseInitramfsNotFound", $"The base initramfs '{baseInitramfs}' does not exist.",
                $"Check {BaseInitramfsVariable}, or let MelangeRunner build the base (unset it).", baseInitramfs);
        InitramfsTree? modules = null;
        if (!string.IsNullOrEmpty(extraModulesDir))
        {
            if (!Directory.Exists(extraModulesDir))
                throw new MelangeException(ErrorKind.ObjectNotFound, "KernelModulesNotFound", $"QEMU_KERNEL_MODULES is set to '{extraModulesDir}', which is not a directory.",
                    "Point QEMU_KERNEL_MODULES at the kernel's lib/modules/<version> directory, or unset it.", extraModulesDir);
            var dir = Path.GetFullPath(extraModulesDir).TrimEnd('/');
            if (baseModulesDir != null && dir == Path.GetFullPath(baseModulesDir).TrimEnd('/'))
                events.Verbose($"QEMU_KERNEL_MODULES is the tree the base initramfs was built with ({dir}): its modules are there already.");
            else
            {
                // Only the modules the guest needs and their load list, never the tree whole: a
                // package's tree is ~400 MB, which the guest would have to hold in RAM.
                modules = new InitramfsTree();
                AddModules(modules, dir, events, ct);
            }
        }

        var path = Path.Combine(Path.GetTempPath(), "melange-initramfs-" + Convert.ToHexString(RandomNumberGenerator.GetBytes(8)).ToLowerInvariant() + ".cpio");
        try
        {
            using (var f = new FileStream(path, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, BufferSize = 1 << 16, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
            {
                using (var b = new FileStream(baseInitramfs, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan))
                    b.CopyTo(f);
                // The kernel unpacks each concatenated archive in turn; the next one must start 4-byte aligned.
                long pad = (4 - f.Length % 4) % 4;
                if (pad > 0) f.Write(new byte[pad]);
                using (var cpio = new CpioWriter(f, InjectedInodeBase, leaveOpen: true))
                {
                    cpio.WriteFile("etc/ssh/ssh_host_ed25519_key", 0x100, hostPrivateKey); // 0400
                    var pub = hostPublicKeyLine.EndsWith('\n') ? hostPublicKeyLine : hostPublicKeyLine + "\n";
                    cpio.WriteFile("etc/ssh/ssh_host_ed25519_key.pub", 0x1A4, Encoding.ASCII.GetBytes(pub));
                    if (modules != null)
                    {
                        // Only lib/modules/<version> and below: lib and lib/modules are in the base (lib may be a link).
                        foreach (var (key, node) in modules.Nodes)
                        {
                            ct.ThrowIfCancellationRequested();
                            var k = key.StartsWith("usr/lib/modules/", StringComparison.Ordinal) ? key[4..] : key;
                            if (!k.StartsWith("lib/modules/", StringComparison.Ordinal)) continue;
                            switch (node)
                            {
                                case InitramfsTree.DirNode d: cpio.WriteDirectory(k, d.Mode, d.MTime); break;
                                case InitramfsTree.LinkNode l: cpio.WriteSymlink(k, l.Target, l.MTime); break;
                                case InitramfsTree.FileNode { Data: { } data } fd: cpio.WriteFile(k, fd.Mode, data, fd.MTime); break;
                                case InitramfsTree.FileNode fh:
                                    using (var s = new FileStream(fh.HostPath!, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan))
                                        cpio.WriteFile(k, fh.Mode, s, s.Length, fh.MTime);
                                    break;
                            }
                        }
                    }
                    cpio.Finish();
                }
                f.Flush(flushToDisk: true);
            }
            File.SetUnixFileMode(path, UnixFileMode.UserRead);
            events.Verbose($"Per-pod initramfs {path} ({new FileInfo(path).Length} bytes): the base plus the SSH host key{(modules != null ? " and the modules of " + extraModulesDir : "")}");
            return path;
        }
        catch
        {
            IO.SecureFile.TryDelete(path);
            throw;
        }
    }
}
