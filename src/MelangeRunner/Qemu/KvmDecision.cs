namespace MelangeRunner.Qemu;

/// <summary>What the host shows about KVM, read once; the decision itself is <see cref="KvmDecision.Decide"/>.</summary>
/// <param name="DeviceOpens">/dev/kvm opens read-write.</param>
/// <param name="X86">The host is x86 (where hardware virtualization shows as a CPU flag).</param>
/// <param name="CpuHasVirtualization">/proc/cpuinfo lists vmx or svm.</param>
/// <param name="SoftwareHypervisorModule">The name of a loaded software KVM module (kvm_pvm), or null.</param>
public sealed record KvmHostFacts(bool DeviceOpens, bool X86, bool CpuHasVirtualization, string? SoftwareHypervisorModule)
{
    /// <summary>Modules that provide /dev/kvm without hardware virtualization: guests then run in an instruction emulator.</summary>
    internal static readonly string[] SoftwareModules = { "kvm_pvm" };

    /// <summary>The facts of this host.</summary>
    public static KvmHostFacts Read()
    {
        var arch = System.Runtime.InteropServices.RuntimeInformation.OSArchitecture;
        string cpuinfo;
        try { cpuinfo = File.ReadAllText("/proc/cpuinfo"); }
        catch (IOException) { cpuinfo = ""; }
        return new KvmHostFacts(HostResources.DeviceOpens(),
            arch is System.Runtime.InteropServices.Architecture.X64 or System.Runtime.InteropServices.Architecture.X86,
            CpuInfoShowsVirtualization(cpuinfo),
            SoftwareModules.FirstOrDefault(m => Directory.Exists("/sys/module/" + m)));
    }

    /// <summary>Whether the first "flags" line of /proc/cpuinfo has vmx (Intel VT-x) or svm (AMD-V).</summary>
    public static bool CpuInfoShowsVirtualization(string cpuinfo)
    {
        foreach (var line in cpuinfo.Split('\n'))
        {
            if (!line.StartsWith("flags", StringComparison.Ordinal)) continue;
            var words = line[(line.IndexOf(':') + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return words.Contains("vmx") || words.Contains("svm");
        }
        return false;
    }
}

/// <summary>Whether pods use KVM, and the reason shown by Get-MelangeRunner and -Verbose.</summary>
public sealed record KvmDecision(bool Usable, string Reason)
{
    /// <summary>
    /// KVM only where it really runs guests. A /dev/kvm that opens is not enough: a software
    /// hypervisor (kvm_pvm) serves it without VT-x/AMD-V, and an ordinary guest kernel is then
    /// interpreted instruction by instruction (minutes to boot, or a KVM internal error); on some
    /// nested hosts qemu aborts setting up the vCPU. So: the device must open, an x86 CPU must
    /// show vmx or svm, no software KVM module may be loaded, and qemu must start a paused KVM
    /// vCPU (<paramref name="qemuStarted"/>; null when not probed yet).
    /// </summary>
    public static KvmDecision Decide(KvmHostFacts facts, bool? qemuStarted)
    {
        if (!facts.DeviceOpens) return new(false, "/dev/kvm is missing or cannot be opened read-write");
        if (facts.SoftwareHypervisorModule is { } module)
            return new(false, $"/dev/kvm is served by the software hypervisor module {module} (no hardware virtualization): guests would be emulated instruction by instruction");
        if (facts.X86 && !facts.CpuHasVirtualization)
            return new(false, "the CPU shows no hardware virtualization (no vmx or svm flag in /proc/cpuinfo)");
        if (qemuStarted == false) return new(false, "qemu could not start a KVM vCPU here");
        return new(true, qemuStarted == true ? "/dev/kvm works and qemu starts a KVM vCPU" : "/dev/kvm opens and the CPU has hardware virtualization");
    }
}
