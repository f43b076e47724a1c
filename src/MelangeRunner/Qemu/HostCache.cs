namespace MelangeRunner.Qemu;

/// <summary>
/// The one rule for where the qemu runner keeps what it derives from the host between runs:
/// <c>${XDG_CACHE_HOME:-~/.cache}/melange-runner/</c> (XDG_CACHE_HOME counts only when absolute, as
/// the XDG spec says; ~ is $HOME, else the user's home), with <c>kernel/&lt;arch&gt;/</c> (the fetch
/// script's kernels), <c>vmlinux/</c> (ELF kernels extracted from others), <c>initramfs/&lt;arch&gt;/</c>
/// (base initramfs files) and <c>kvm/</c> (KVM decisions). tools/Get-MelangeKernel.ps1 applies the same rule.
/// </summary>
internal static class HostCache
{
    public static string Root
    {
        get
        {
            var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            var baseDir = !string.IsNullOrEmpty(xdg) && Path.IsPathRooted(xdg)
                ? xdg
                : Path.Combine(Environment.GetEnvironmentVariable("HOME") is { Length: > 0 } h ? h : Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
            return Path.Combine(baseDir, "melange-runner");
        }
    }

    public static string Kernels(string arch) => Path.Combine(Root, "kernel", arch);
    public static string Vmlinux => Path.Combine(Root, "vmlinux");
    public static string Initramfs(string arch) => Path.Combine(Root, "initramfs", arch);
    public static string KvmDecisions => Path.Combine(Root, "kvm");
}
