using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using MelangeRunner.HostProcess;
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
    internal static Task<string> GetBaseAsync(string arch, string? modulesDir, IEventSink events, CancellationToken ct, QemuEnvironment? env = null) =>
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
        var packages = AdditionalPackages(MicrovmConfig.Default(), events, env);
        var path = BaseCachePath(arch, modulesDir, packages, events);
        var dir = HostCache.Initramfs(arch);
        Directory.CreateDirectory(dir);
        if (IsFresh(path))
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

    /// <summary>The cached base initramfs that a start would use, without building it: null when there is none yet (or QEMU_BASE_INITRAMFS names one).</summary>
    internal static string? CachedBasePath(string arch, string? modulesDir, QemuEnvironment env, IEventSink events)
    {
        if (env.BaseInitramfs is not null) return null;
        arch = CheckArch(arch);
        var path = BaseCachePath(arch, modulesDir, AdditionalPackages(MicrovmConfig.Default(), events, env), events);
        return IsFresh(path) ? path : null;
    }

    /// <summary>The cache file of the base initramfs for these inputs (<paramref name="arch"/> already checked).</summary>
    private static string BaseCachePath(string arch, string? modulesDir, IReadOnlyList<string> packages, IEventSink events) =>
        Path.Combine(HostCache.Initramfs(arch), $"base-{ComputeCacheKey(CacheInputsFor(arch, modulesDir, packages, events))}.cpio");

    /// <summary>A cached base that exists and is younger than <see cref="CacheLifetime"/>.</summary>
    private static bool IsFresh(string path)
    {
        var info = new FileInfo(path);
        return info.Exists && DateTime.UtcNow - info.LastWriteTimeUtc < CacheLifetime;
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
}
