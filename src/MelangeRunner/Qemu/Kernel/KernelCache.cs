namespace MelangeRunner.Qemu.Kernel;

/// <summary>
/// Where tools/Get-MelangeKernel.ps1 puts kernels and where the extracted ELF kernels go:
/// <c>${XDG_CACHE_HOME:-~/.cache}/melange-runner/kernel/&lt;arch&gt;/&lt;version&gt;/</c> holding
/// <c>boot/vmlinuz-&lt;version&gt;</c>, <c>lib/modules/&lt;version&gt;</c> and the marker
/// <see cref="MarkerName"/>; the ELF kernel extracted from a cached kernel lands beside it as
/// <c>boot/vmlinux-&lt;version&gt;</c>, one extracted from any other kernel in
/// <c>melange-runner/vmlinux/&lt;sha256 of the bzImage&gt;.elf</c>.
/// </summary>
internal static class KernelCache
{
    /// <summary>The metadata file the fetch script writes last: an entry without it is incomplete.</summary>
    public const string MarkerName = "melange-kernel.json";

    /// <summary><c>${XDG_CACHE_HOME:-~/.cache}/melange-runner</c>: <see cref="HostCache.Root"/>.</summary>
    public static string Root => HostCache.Root;

    /// <summary>The directory holding the fetched kernels of one architecture (apko name: x86_64, aarch64).</summary>
    public static string KernelDirectory(string arch) => HostCache.Kernels(arch);

    /// <summary>The directory for ELF kernels extracted from kernels outside the cache.</summary>
    public static string VmlinuxDirectory => HostCache.Vmlinux;

    /// <summary>
    /// The cache entry (the directory holding <see cref="MarkerName"/>) that a kernel image
    /// belongs to, when it is <c>&lt;entry&gt;/boot/&lt;image&gt;</c>; else null.
    /// </summary>
    internal static string? EntryOf(string imagePath)
    {
        string? dir = Path.GetDirectoryName(imagePath);
        if (dir == null || Path.GetFileName(dir) != "boot") return null;
        string? entry = Path.GetDirectoryName(dir);
        return entry != null && File.Exists(Path.Combine(entry, MarkerName)) ? entry : null;
    }
}
