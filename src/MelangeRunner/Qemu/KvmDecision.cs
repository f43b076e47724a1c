namespace MelangeRunner.Qemu;

/// <summary>What the host shows about KVM, read once; the decision itself is <see cref="KvmDecision.Decide"/>.</summary>
/// <param name="DeviceOpens">/dev/kvm opens read-write and answers KVM_GET_API_VERSION.</param>
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
    /// <summary>Tests only: "1" makes the evidence say KVM works, to exercise the fallback to TCG on a host where it does not.</summary>
    public const string AssumeUsableVariable = "MELANGE_TEST_ASSUME_KVM";

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
        if (!facts.DeviceOpens) return new(false, "/dev/kvm is missing, cannot be opened read-write, or is not a KVM device");
        if (facts.SoftwareHypervisorModule is { } module)
            return new(false, $"/dev/kvm is served by the software hypervisor module {module} (no hardware virtualization): guests would be emulated instruction by instruction");
        if (facts.X86 && !facts.CpuHasVirtualization)
            return new(false, "the CPU shows no hardware virtualization (no vmx or svm flag in /proc/cpuinfo)");
        if (qemuStarted == false) return new(false, "qemu could not start a KVM vCPU here");
        return new(true, qemuStarted == true ? "/dev/kvm works and qemu starts a KVM vCPU" : "/dev/kvm opens and the CPU has hardware virtualization");
    }
}

/// <summary>
/// The decision on disk, one file per qemu binary (path, size, mtime), machine type, host boot
/// (/proc/sys/kernel/random/boot_id), /dev/kvm's device number and the loaded KVM modules: a
/// reboot, a qemu upgrade, a module change or a hidden /dev/kvm decides again. A file that cannot be read or written only costs a new probe.
/// </summary>
internal static class KvmDecisionCache
{
    private static string? PathFor(string qemuProgram, string machine)
    {
        try
        {
            var qemu = new FileInfo(qemuProgram);
            var target = qemu.ResolveLinkTarget(returnFinalTarget: true) as FileInfo ?? qemu;
            var bootId = File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim();
            // What /dev/kvm is (a bind of /dev/null hides it in a mount namespace) and which KVM modules are loaded.
            var device = Native.Libc.LStat("/dev/kvm") is { } st ? $"{st.RDevMajor}:{st.RDevMinor}" : "none";
            var modules = string.Join(',', new[] { "kvm_intel", "kvm_amd", "kvm_pvm" }.Where(m => Directory.Exists("/sys/module/" + m)));
            var key = $"{target.FullName}|{target.Length}|{target.LastWriteTimeUtc.Ticks}|{machine}|{bootId}|{device}|{modules}";
            var hash = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(key)))[..16].ToLowerInvariant();
            return Path.Combine(HostCache.KvmDecisions, hash);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    public static KvmDecision? Load(string qemuProgram, string machine)
    {
        if (PathFor(qemuProgram, machine) is not { } path) return null;
        try
        {
            var text = File.ReadAllText(path);
            var tab = text.IndexOf('\t');
            if (tab < 0) return null;
            return new KvmDecision(text[..tab] == "usable", text[(tab + 1)..].TrimEnd('\n'));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    public static void Save(string qemuProgram, string machine, KvmDecision decision)
    {
        if (PathFor(qemuProgram, machine) is not { } path) return;
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            var temp = path + "." + Environment.ProcessId + ".tmp";
            File.WriteAllText(temp, (decision.Usable ? "usable" : "unusable") + "\t" + decision.Reason + "\n");
            File.Move(temp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }
}
