using System.Text;
using System.Text.Json;
using MelangeRunner.Images;

namespace MelangeRunner.Qemu.Kernel;

/// <summary>The kernel a qemu pod boots, and what was found about it.</summary>
/// <param name="BootPath">What to pass to <c>-kernel</c>: the cached ELF vmlinux when extraction worked, else <see cref="ImagePath"/>.</param>
/// <param name="ImagePath">The kernel image found (bzImage/vmlinuz, or an arm64 Image).</param>
/// <param name="Version">The kernel release (e.g. 6.1.0-57-amd64): from the bzImage header, else the file name or the cache metadata.</param>
/// <param name="ModulesDir">The <c>lib/modules/&lt;Version&gt;</c> tree that matches, if found.</param>
/// <param name="IsElf">Whether <see cref="BootPath"/> is an ELF kernel (booted through its PVH note).</param>
/// <param name="Source">"QEMU_KERNEL_IMAGE", "/boot/vmlinuz" or "cache".</param>
internal sealed record KernelInfo(string BootPath, string ImagePath, string? Version, string? ModulesDir, bool IsElf, string Source);

/// <summary>
/// melange's getKernelPath, extended: <c>QEMU_KERNEL_IMAGE</c>, else <c>/boot/vmlinuz</c>, else the
/// newest kernel that <c>tools/Get-MelangeKernel.ps1</c> put in the cache (<see cref="KernelCache"/>).
/// </summary>
internal static class KernelLocator
{
    public const string KernelImageVariable = "QEMU_KERNEL_IMAGE";
    public const string BootKernel = "/boot/vmlinuz";
    public const string FetchCommand = "dotnet pwsh ./tools/Get-MelangeKernel.ps1";

    /// <summary>The host's /boot/vmlinuz (a seam for tests).</summary>
    internal static string BootKernelPath { get; set; } = BootKernel;

    /// <summary>The host's module trees (a seam for tests).</summary>
    internal static string[] HostModuleRoots { get; set; } = { "/lib/modules", "/usr/lib/modules" };

    public const string KernelModulesVariable = "QEMU_KERNEL_MODULES";

    /// <summary>
    /// Finds the kernel for <paramref name="arch"/> (apko or OCI name; null for the host's).
    /// Its modules are QEMU_KERNEL_MODULES when that names a directory (then the base initramfs
    /// holds the guest's modules from it; a missing one is reported where the initramfs injects it),
    /// else the tree beside the kernel or the host's.
    /// </summary>
    /// <exception cref="MelangeException">QEMU_KERNEL_IMAGE names a missing or unreadable file; /boot/vmlinuz is unreadable and the cache is empty; or no kernel at all (NotInstalled, "KernelNotFound").</exception>
    /// <param name="environment">The QEMU_* variables as the start read them (default: read now).</param>
    public static KernelInfo Locate(string arch, IEventSink events, QemuEnvironment? environment = null)
    {
        events ??= NullEventSink.Instance;
        environment ??= QemuEnvironment.ReadPaths();
        arch = Architecture.Normalize(arch);

        // 1. QEMU_KERNEL_IMAGE: if set, it must exist.
        string? env = environment.KernelImage;
        if (!string.IsNullOrEmpty(env))
        {
            events.Verbose($"Kernel: {KernelImageVariable} is set: {env}");
            string full = Path.GetFullPath(env);
            if (Directory.Exists(full))
                throw new MelangeException(ErrorKind.InvalidArgument, "KernelImageIsDirectory",
                    $"{KernelImageVariable} is set to '{env}', which is a directory, not a kernel image.",
                    $"Set {KernelImageVariable} to the kernel image file itself (e.g. .../boot/vmlinuz-<version>), or unset it to use {BootKernel} or the kernel fetched by {FetchCommand}.", env);
            if (!File.Exists(full))
                throw new MelangeException(ErrorKind.ObjectNotFound, "KernelImageNotFound",
                    $"{KernelImageVariable} is set to '{env}', which does not exist.",
                    $"Set {KernelImageVariable} to an existing kernel image, or unset it to use {BootKernel} or the kernel fetched by {FetchCommand}.", env);
            if (!IsReadable(full, out string err))
                throw new MelangeException(ErrorKind.PermissionDenied, "KernelImageNotReadable",
                    $"{KernelImageVariable} is set to '{env}', which this user cannot read ({err}).",
                    $"Make it readable (chmod 0644 '{full}'), run as a user who can read it, or unset {KernelImageVariable} to use the kernel fetched by {FetchCommand}.", env);
            return Describe(full, arch, "QEMU_KERNEL_IMAGE", cacheVersion: null, cacheEntry: null, environment, events);
        }

        // 2. /boot/vmlinuz, when it exists (a dangling link does not) — it is the host's kernel, so only for the host's architecture.
        string boot = BootKernelPath;
        bool bootExists = File.Exists(boot) && (File.ResolveLinkTarget(boot, returnFinalTarget: true) is null or { Exists: true });
        if (bootExists && arch != Architecture.Host)
        {
            events.Verbose($"Kernel: {boot} is the host's ({Architecture.Host}) kernel, not one for {arch}; looking in the cache.");
            bootExists = false;
        }
        if (bootExists)
        {
            if (IsReadable(boot, out string err))
                return Describe(Path.GetFullPath(boot), arch, "/boot/vmlinuz", cacheVersion: null, cacheEntry: null, environment, events);
            // Ubuntu installs /boot/vmlinuz-* mode 0600: fine for root only. A fetched kernel, if any, does instead.
            var cached = FindCached(arch, events);
            if (cached != null)
            {
                events.Verbose($"Kernel: {boot} exists but is not readable by this user ({err}); using the fetched kernel {cached.Value.Image}.");
                return Describe(cached.Value.Image, arch, "cache", cached.Value.Version, cached.Value.Entry, environment, events);
            }
            string target = ResolveFinal(boot);
            throw new MelangeException(ErrorKind.PermissionDenied, "KernelNotReadable",
                $"The kernel {boot}{(target != boot ? $" (→ {target})" : "")} exists but this user cannot read it ({err}). Ubuntu installs /boot/vmlinuz-* readable by root only.",
                $"Run as root; or make the kernels readable: sudo chmod 0644 /boot/vmlinuz-*; or fetch a kernel into the cache: {FetchCommand}; or set {KernelImageVariable} to a readable kernel image.", boot);
        }

        // 3. The cache of tools/Get-MelangeKernel.ps1.
        var found = FindCached(arch, events);
        if (found != null) return Describe(found.Value.Image, arch, "cache", found.Value.Version, found.Value.Entry, environment, events);

        throw new MelangeException(ErrorKind.NotInstalled, "KernelNotFound",
            $"No kernel to boot the {arch} VM: {KernelImageVariable} is not set, {boot} does not exist{(arch != Architecture.Host && File.Exists(boot) ? " (or is the host's, not " + arch + ")" : "")}, and no kernel was fetched into {KernelCache.KernelDirectory(arch)}.",
            $"Run: {FetchCommand}, or set {KernelImageVariable} to a kernel image", arch);
    }

    private static KernelInfo Describe(string image, string arch, string source, string? cacheVersion, string? cacheEntry, QemuEnvironment environment, IEventSink events)
    {
        bool x86 = arch is "x86_64" or "x86";
        string? version = VmlinuxExtractor.ReadVersion(image) ?? cacheVersion ?? VersionFromFileName(image) ?? VersionFromElf(image);
        events.Verbose($"Kernel: {image} ({source}), version {version ?? "unknown"}.");

        string bootPath = image;
        bool isElf = IsElfFile(image);
        if (x86)
        {
            string? elf = VmlinuxExtractor.GetOrExtract(image, events);
            if (elf != null) { bootPath = elf; isElf = true; }
        }

        string? modules = FindModules(image, version, cacheEntry, environment.KernelModules, events);
        return new KernelInfo(bootPath, image, version, modules, isElf, source);
    }

    private static string? FindModules(string image, string? version, string? cacheEntry, string? given, IEventSink events)
    {
        if (given is { Length: > 0 } && Directory.Exists(given))
        {
            string full = Path.GetFullPath(given).TrimEnd('/');
            // The guest looks for its load list under lib/modules/$(uname -r).
            if (version != null && Path.GetFileName(full) != version)
                events.Warning($"{KernelModulesVariable} is '{given}', but the kernel is {version}: the guest looks for its modules in lib/modules/{version} and will not find these.");
            events.Verbose($"Kernel: modules from {KernelModulesVariable}: {full}");
            return full;
        }
        if (version == null)
        {
            events.Verbose("Kernel: the kernel's version is unknown, so no matching lib/modules tree; set QEMU_KERNEL_MODULES if the guest needs modules.");
            return null;
        }
        var candidates = new List<string>();
        string? entry = cacheEntry ?? KernelCache.EntryOf(image);
        string? imageDir = Path.GetDirectoryName(image);
        if (entry != null)
        {
            candidates.Add(Path.Combine(entry, "lib", "modules", version));
            candidates.Add(Path.Combine(entry, "usr", "lib", "modules", version));
        }
        else if (imageDir != null && Path.GetFileName(imageDir) == "boot" && Path.GetDirectoryName(imageDir) is { } tree && tree != "/")
        {
            // A tree unpacked with dpkg -x: <tree>/boot/vmlinuz-V and <tree>/lib/modules/V.
            candidates.Add(Path.Combine(tree, "lib", "modules", version));
            candidates.Add(Path.Combine(tree, "usr", "lib", "modules", version));
        }
        foreach (var root in HostModuleRoots) candidates.Add(Path.Combine(root, version));

        foreach (var c in candidates)
        {
            if (!Directory.Exists(c)) continue;
            string full = Path.GetFullPath(c);
            // Our own fetched tree gets a full modules.dep once; another tree (an unpacked package
            // of the user's) is never written to: the initramfs derives what it needs from it.
            if (entry != null && full.StartsWith(Path.GetFullPath(entry).TrimEnd('/') + "/", StringComparison.Ordinal) && !File.Exists(Path.Combine(full, "modules.dep")))
                ModulesDep.Ensure(full, events);
            events.Verbose($"Kernel: modules for {version}: {full}");
            return full;
        }
        events.Verbose($"Kernel: no lib/modules/{version} found (looked in: {string.Join(", ", candidates)}); set QEMU_KERNEL_MODULES if the guest needs modules.");
        return null;
    }

    /// <summary>The fetched kernels for an architecture, newest version first, then most recently fetched.</summary>
    internal static (string Image, string Version, string Entry)? FindCached(string arch, IEventSink events)
    {
        string dir = KernelCache.KernelDirectory(arch);
        if (!Directory.Exists(dir))
        {
            events.Verbose($"Kernel: no fetched kernels in {dir}.");
            return null;
        }
        var found = new List<(string Image, string Version, string Entry, DateTime When)>();
        foreach (var entry in Directory.EnumerateDirectories(dir))
        {
            if (Path.GetFileName(entry).StartsWith('.')) continue; // a fetch in progress
            string marker = Path.Combine(entry, KernelCache.MarkerName);
            if (!File.Exists(marker)) { events.Verbose($"Kernel: skipping {entry}: no {KernelCache.MarkerName} (an incomplete fetch)."); continue; }
            string version = Path.GetFileName(entry);
            string? imageRel = null;
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllBytes(marker));
                if (doc.RootElement.TryGetProperty("version", out var v) && v.ValueKind == JsonValueKind.String && v.GetString() is { Length: > 0 } vs) version = vs;
                if (doc.RootElement.TryGetProperty("image", out var i) && i.ValueKind == JsonValueKind.String) imageRel = i.GetString();
            }
            catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException)
            {
                events.Verbose($"Kernel: {marker} is unreadable ({e.Message}); taking the version from the directory name.");
            }
            string image = Path.Combine(entry, imageRel is { Length: > 0 } && !Path.IsPathRooted(imageRel) && !imageRel.Contains("..") ? imageRel : Path.Combine("boot", "vmlinuz-" + version));
            if (!File.Exists(image)) { events.Verbose($"Kernel: skipping {entry}: {image} is missing."); continue; }
            found.Add((image, version, entry, File.GetLastWriteTimeUtc(marker)));
        }
        if (found.Count == 0) return null;
        var best = found.OrderByDescending(f => f.Version, VersionComparer.Instance).ThenByDescending(f => f.When).First();
        if (found.Count > 1) events.Verbose($"Kernel: {found.Count} fetched kernels; using the newest, {best.Version}.");
        return (best.Image, best.Version, best.Entry);
    }

    internal static string? VersionFromFileName(string image)
    {
        foreach (var name in new[] { Path.GetFileName(image), Path.GetFileName(ResolveFinal(image)) })
        {
            foreach (var prefix in new[] { "vmlinuz-", "vmlinux-", "Image-", "bzImage-" })
                if (name.StartsWith(prefix, StringComparison.Ordinal) && name.Length > prefix.Length && char.IsAsciiDigit(name[prefix.Length]))
                    return name[prefix.Length..];
        }
        return null;
    }

    /// <summary>"Linux version X " in an uncompressed kernel (ELF vmlinux, arm64 Image) of at most 256 MiB.</summary>
    private static string? VersionFromElf(string image)
    {
        try
        {
            var info = new FileInfo(image);
            if (info.Length > 256L << 20) return null;
            byte[] needle = "Linux version "u8.ToArray();
            using var fs = info.OpenRead();
            var buf = new byte[(1 << 20) + 128];
            int carry = 0, n;
            while ((n = fs.Read(buf, carry, buf.Length - carry)) > 0)
            {
                int len = carry + n;
                int at = buf.AsSpan(0, len).IndexOf(needle);
                if (at >= 0 && at + needle.Length + 64 <= len)
                {
                    var rest = buf.AsSpan(at + needle.Length, 64);
                    int end = rest.IndexOfAny((byte)' ', (byte)0);
                    if (end > 0 && char.IsAsciiDigit((char)rest[0])) return Encoding.ASCII.GetString(rest[..end]);
                }
                carry = Math.Min(len, 128);
                Buffer.BlockCopy(buf, len - carry, buf, 0, carry);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return null;
    }

    private static bool IsElfFile(string path)
    {
        try
        {
            using var fs = File.OpenRead(path);
            Span<byte> b = stackalloc byte[4];
            return fs.ReadAtLeast(b, 4, throwOnEndOfStream: false) == 4 && Elf.HasMagic(b);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
    }

    private static bool IsReadable(string path, out string error)
    {
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1);
            error = "";
            return true;
        }
        catch (UnauthorizedAccessException) { error = "permission denied"; return false; }
        catch (IOException e) { error = e.Message; return false; }
    }

    private static string ResolveFinal(string path)
    {
        try { return File.ResolveLinkTarget(path, returnFinalTarget: true)?.FullName ?? path; }
        catch (IOException) { return path; }
    }

    /// <summary>Orders kernel versions numerically where they are numbers ("6.10.0" &gt; "6.9.12").</summary>
    internal sealed class VersionComparer : IComparer<string>
    {
        public static readonly VersionComparer Instance = new();
        public int Compare(string? x, string? y)
        {
            if (x == null || y == null) return string.CompareOrdinal(x, y);
            int i = 0, j = 0;
            while (i < x.Length && j < y.Length)
            {
                if (char.IsAsciiDigit(x[i]) && char.IsAsciiDigit(y[j]))
                {
                    int si = i, sj = j;
                    while (i < x.Length && char.IsAsciiDigit(x[i])) i++;
                    while (j < y.Length && char.IsAsciiDigit(y[j])) j++;
                    var a = x.AsSpan(si, i - si).TrimStart('0');
                    var b = y.AsSpan(sj, j - sj).TrimStart('0');
                    if (a.Length != b.Length) return a.Length.CompareTo(b.Length);
                    int c = a.SequenceCompareTo(b);
                    if (c != 0) return c;
                }
                else
                {
                    if (x[i] != y[j]) return x[i].CompareTo(y[j]);
                    i++; j++;
                }
            }
            return (x.Length - i).CompareTo(y.Length - j);
        }
    }
}
