using System.Net;
using System.Net.Sockets;
using MelangeRunner.Images;

namespace MelangeRunner.Qemu;

/// <summary>What the host offers a VM, read once per start or plan (CPU count, cgroup limits, available memory).</summary>
internal sealed record HostCapacity(int Cpus, int CgroupCpuLimit, long AvailableMemoryKiB, long CgroupMemoryLimitKiB)
{
    public static HostCapacity Read() => new(Environment.ProcessorCount, HostResources.CgroupCpuLimit(),
        HostResources.AvailableMemoryKiB(), HostResources.CgroupMemoryLimitKiB());
}

/// <summary>The host-side files and ports of one launch: real ones for a start, placeholders for a plan.</summary>
internal sealed record LaunchFiles(string Kernel, string Initrd, string Disk, int SshPort, int ControlPort,
    string ClientPublicKeyBase64, string? VirtiofsSocket, bool ScratchFormatted);

/// <summary>
/// Launch planning, without side effects: the spec, the environment, the accelerator and the
/// host's capacity in, the <see cref="QemuLaunch"/> (and so the qemu vector) out.
/// </summary>
internal static class QemuLaunchPlanner
{
    public const string Loopback = "127.0.0.1";

    /// <summary>The guest's architecture: the spec's, else the image's.</summary>
    public static string GuestArch(PodSpec spec, ImageInfo image) => Architecture.Normalize(spec.Arch ?? image.Arch);

    /// <summary>The machine type the KVM probe starts (the one pods boot).</summary>
    public static string MachineForProbe(string arch) => arch == "aarch64" ? "virt" : "q35";

    /// <summary>Where the scratch disk goes: QEMU_DISKS_PATH, else the temporary directory.</summary>
    public static string DisksDirectory(QemuEnvironment env) => env.DisksPath ?? Path.GetTempPath();

    public static QemuLaunch Plan(PodSpec spec, ImageInfo image, QemuEnvironment env, AcceleratorChoice accel, HostCapacity host, LaunchFiles files) => new()
    {
        Arch = GuestArch(spec, image),
        HostArch = Architecture.Host,
        KvmUsable = accel.Accelerator == AcceleratorChoice.Kvm,
        Cpus = HostResources.EffectiveCpu(spec.CpuCount, host.CgroupCpuLimit, host.Cpus),
        MemoryKiB = HostResources.EffectiveMemoryKiB(spec.MemoryKiB, (long)(host.AvailableMemoryKiB * 0.85), host.CgroupMemoryLimitKiB),
        CpuModel = spec.CPUModel,
        SshPort = files.SshPort,
        ControlPort = files.ControlPort,
        KernelPath = files.Kernel,
        InitrdPath = files.Initrd,
        DiskPath = files.Disk,
        RootfsTar = image.Ref,
        WorkspaceDir = spec.WorkspaceDir ?? "",
        CacheDir = spec.CacheDir,
        VirtiofsSocket = files.VirtiofsSocket,
        ClientPublicKeyBase64 = files.ClientPublicKeyBase64,
        Environment = env,
        KernelDebug = env.Testing is not null,
        ScratchFormatted = files.ScratchFormatted,
        TscKhz = accel.Accelerator == AcceleratorChoice.Kvm ? 0 : HostResources.TscKhz(),
    };

    public static PodPlan ToPlan(QemuLaunch launch, AcceleratorChoice accel, string startPath) => new()
    {
        Accelerator = accel.Accelerator,
        AcceleratorReason = accel.Reason,
        Runner = Runners.Qemu,
        FileName = QemuCommand.Program(launch.Arch),
        Arguments = QemuCommand.Build(launch),
        KernelCommandLine = QemuCommand.KernelCommandLine(launch),
        Cpus = launch.Cpus,
        MemoryKiB = launch.MemoryKiB,
        StartPath = startPath,
    };

    /// <summary>A loopback port free right now (qemu binds it moments later, as in melange).</summary>
    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
