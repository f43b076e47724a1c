using System.Globalization;
using System.Runtime.InteropServices;

namespace MelangeRunner.Qemu;

/// <summary>
/// What the host can give a VM: CPUs and memory as the cgroup narrows them, whether KVM is
/// usable, and the TSC rate a TCG guest is told. The precedence rules are melange's
/// (effectiveCPU / effectiveMemoryKB).
/// </summary>
public static class HostResources
{
    private static readonly Lazy<long> CachedTscKhz = new(ReadTscKhz);

    /// <summary>The host's TSC rate in kHz (the guest's under TCG), or 0 when unknown: /proc/cpuinfo on a host with a constant, known-frequency TSC.</summary>
    internal static long TscKhz() => CachedTscKhz.Value;

    private static long ReadTscKhz()
    {
        try
        {
            var cpuinfo = File.ReadAllText("/proc/cpuinfo").Split('\n');
            var flags = cpuinfo.FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal)) ?? "";
            if (!flags.Contains(" constant_tsc", StringComparison.Ordinal)) return 0;
            var mhz = cpuinfo.FirstOrDefault(l => l.StartsWith("cpu MHz", StringComparison.Ordinal));
            if (mhz is null || !double.TryParse(mhz[(mhz.IndexOf(':') + 1)..].Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var v)) return 0;
            // Frequency scaling moves "cpu MHz" on hosts without tsc_known_freq: those get no fixed rate.
            return flags.Contains(" tsc_known_freq", StringComparison.Ordinal) ? (long)Math.Round(v * 1000) : 0;
        }
        catch (IOException) { return 0; }
    }

    /// <summary>vCPUs when neither the user nor a cgroup sets a number (a shared runner must not hand out every core).</summary>
    public const int CpuFallbackCap = 2;

    /// <summary>Memory (KiB) when neither the user nor a cgroup sets it: 4 GiB.</summary>
    public const long MemoryFallbackCapKiB = 4L * 1024 * 1024;

    /// <summary>
    /// The user's vCPUs capped by the cgroup-narrowed host; else the cgroup limit; else
    /// min(host, 2).
    /// </summary>
    public static int EffectiveCpu(int configCpu, int cgroupCpu, int hostCpu)
    {
        var cgroupNarrows = cgroupCpu > 0 && cgroupCpu < hostCpu;
        var effectiveHost = cgroupNarrows ? cgroupCpu : hostCpu;
        if (configCpu > 0) return effectiveHost > 0 && effectiveHost < configCpu ? effectiveHost : configCpu;
        if (cgroupNarrows) return cgroupCpu;
        return Math.Min(hostCpu, CpuFallbackCap);
    }

    /// <summary>
    /// The user's memory capped by the host budget (85% of what is available, cgroup-aware);
    /// else that budget when a cgroup drives it; else min(budget, 4 GiB).
    /// </summary>
    public static long EffectiveMemoryKiB(long configKiB, long hostScaledKiB, long cgroupKiB)
    {
        if (configKiB > 0) return hostScaledKiB > 0 && hostScaledKiB < configKiB ? hostScaledKiB : configKiB;
        if (cgroupKiB > 0) return hostScaledKiB;
        return Math.Min(hostScaledKiB, MemoryFallbackCapKiB);
    }

    /// <summary>Whole CPUs of the cgroup quota (v2 cpu.max, else v1 cfs quota/period); 0 when unlimited.</summary>
    public static int CgroupCpuLimit(string cgroupRoot = "/sys/fs/cgroup")
    {
        var v2 = ReadTrimmed(Path.Combine(cgroupRoot, "cpu.max"));
        if (v2 is not null && !v2.StartsWith("max", StringComparison.Ordinal))
        {
            var parts = v2.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 2 && long.TryParse(parts[0], out var quota) && long.TryParse(parts[1], out var period) && quota > 0 && period > 0)
                return (int)Math.Max(quota / period, 1);
        }
        if (long.TryParse(ReadTrimmed(Path.Combine(cgroupRoot, "cpu/cpu.cfs_quota_us")), out var q1) &&
            long.TryParse(ReadTrimmed(Path.Combine(cgroupRoot, "cpu/cpu.cfs_period_us")), out var p1) && q1 > 0 && p1 > 0)
            return (int)Math.Max(q1 / p1, 1);
        return 0;
    }

    /// <summary>The cgroup memory limit in KiB (v2 memory.max, else v1 limit_in_bytes); 0 when unlimited.</summary>
    public static long CgroupMemoryLimitKiB(string cgroupRoot = "/sys/fs/cgroup")
    {
        var v2 = ReadTrimmed(Path.Combine(cgroupRoot, "memory.max"));
        if (v2 is not null && v2 != "max" && long.TryParse(v2, out var bytes) && bytes > 0) return bytes / 1024;
        // cgroup v1 reports a huge number when unlimited.
        if (long.TryParse(ReadTrimmed(Path.Combine(cgroupRoot, "memory/memory.limit_in_bytes")), out var v1) && v1 > 0 && v1 < (1L << 50))
            return v1 / 1024;
        return 0;
    }

    /// <summary>Memory available to this process in KiB: the cgroup limit, else MemAvailable, else free+buffers+cached.</summary>
    public static long AvailableMemoryKiB(string cgroupRoot = "/sys/fs/cgroup", string meminfo = "/proc/meminfo")
    {
        var cgroup = CgroupMemoryLimitKiB(cgroupRoot);
        if (cgroup > 0) return cgroup;
        var fields = new Dictionary<string, long>();
        try
        {
            foreach (var line in File.ReadLines(meminfo))
            {
                var parts = line.Split(':', 2);
                if (parts.Length == 2 && long.TryParse(parts[1].Trim().Split(' ')[0], out var kib)) fields[parts[0]] = kib;
            }
        }
        catch (IOException)
        {
            return 16_000_000;
        }
        if (fields.TryGetValue("MemAvailable", out var available)) return available;
        var free = fields.GetValueOrDefault("MemFree") + fields.GetValueOrDefault("Buffers") + fields.GetValueOrDefault("Cached");
        return free > 0 ? free : 16_000_000;
    }

    private static readonly Dictionary<string, KvmDecision> KvmProbes = new();

    /// <summary>Whether KVM can run this qemu's VMs here (see <see cref="Kvm"/>).</summary>
    public static bool KvmUsable(string qemuProgram, string machine) => Kvm(qemuProgram, machine).Usable;

    /// <summary>
    /// Whether KVM can run this qemu's VMs here, and why, decided from host facts
    /// (<see cref="KvmDecision.Decide"/>); qemu itself is started paused with KVM only when the
    /// cheaper facts do not already say no. Kept in memory and in <see cref="KvmDecisionCache"/>
    /// (per qemu binary and host boot), so that only a host's first pod start pays for it.
    /// </summary>
    public static KvmDecision Kvm(string qemuProgram, string machine)
    {
        // For tests of the fallback: a host whose evidence wrongly says yes.
        if (Environment.GetEnvironmentVariable(KvmDecision.AssumeUsableVariable) == "1")
            return new KvmDecision(true, $"assumed usable ({KvmDecision.AssumeUsableVariable}=1)");
        lock (KvmProbes)
        {
            var key = qemuProgram + " " + machine;
            if (!KvmProbes.TryGetValue(key, out var decision))
            {
                decision = KvmDecisionCache.Load(qemuProgram, machine);
                if (decision is null)
                {
                    var facts = KvmHostFacts.Read();
                    decision = KvmDecision.Decide(facts, null);
                    if (decision.Usable) decision = KvmDecision.Decide(facts, QemuStartsWithKvm(qemuProgram, machine));
                    KvmDecisionCache.Save(qemuProgram, machine, decision);
                }
                KvmProbes[key] = decision;
            }
            return decision;
        }
    }

    /// <summary>A VM did not boot under KVM although the evidence said it would: later pods go straight to TCG.</summary>
    public static void RecordKvmFailure(string qemuProgram, string machine, string why)
    {
        var decision = new KvmDecision(false, "a VM did not boot under KVM on this host: " + why);
        lock (KvmProbes) KvmProbes[qemuProgram + " " + machine] = decision;
        if (Environment.GetEnvironmentVariable(KvmDecision.AssumeUsableVariable) != "1")
            KvmDecisionCache.Save(qemuProgram, machine, decision);
    }

    /// <summary>/dev/kvm opens read-write and answers KVM_GET_API_VERSION (a bind of /dev/null opens too).</summary>
    internal static bool DeviceOpens()
    {
        var fd = Native.Libc.OpenExisting("/dev/kvm", O_RDWR | O_CLOEXEC);
        if (fd < 0) return false;
        try { return Native.Libc.Ioctl(fd, KVM_GET_API_VERSION, 0) == KVM_API_VERSION; }
        finally { Native.Libc.Close(fd); }
    }

    private const nuint KVM_GET_API_VERSION = 0xAE00; // _IO(KVMIO, 0x00)
    private const int KVM_API_VERSION = 12; // stable since Linux 2.6.22


    private static bool QemuStartsWithKvm(string qemuProgram, string machine)
    {
        try
        {
            using var process = HostProcess.HostCommand.Start(qemuProgram, new[] { "-accel", "kvm", "-cpu", "host", "-machine", machine, "-nodefaults",
                "-display", "none", "-no-user-config", "-S", "-qmp", "stdio" }, redirectInput: true);
            process.StandardInput.WriteLine("{\"execute\":\"qmp_capabilities\"}");
            process.StandardInput.WriteLine("{\"execute\":\"quit\"}");
            process.StandardInput.Close();
            _ = process.StandardOutput.ReadToEndAsync();
            _ = process.StandardError.ReadToEndAsync();
            if (!process.WaitForExit(10_000))
            {
                process.Kill(entireProcessTree: true);
                return false;
            }
            return process.ExitCode == 0;
        }
        catch (MelangeException)
        {
            return false; // not startable
        }
    }

    private static string? ReadTrimmed(string path)
    {
        try { return File.ReadAllText(path).Trim(); }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    private const int O_RDWR = 2;
    private const int O_CLOEXEC = 0x80000;

}
