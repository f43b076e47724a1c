using MelangeRunner.HostProcess;
using MelangeRunner.Images;
using MelangeRunner.Qemu.Kernel;

namespace MelangeRunner.Qemu;

/// <summary>
/// melange's qemu runner: a microVM booted from a kernel and a generated initramfs, driven
/// over SSH, the workspace copied in over 9p and streamed back as tar. This is the factory:
/// the launch is planned by <see cref="QemuLaunchPlanner"/>, booted by <see cref="QemuBoot"/>
/// into a <see cref="QemuPodRuntime"/>, which runs the pod from then on.
/// </summary>
public sealed class QemuRunner : IRunner
{
    /// <summary>melange's default scratch disk.</summary>
    public const string DefaultDiskSize = "50Gi";

    /// <summary>How long a boot may take before the SSH banner (generous: TCG on a busy 2-core host).</summary>
    public static readonly TimeSpan DefaultBootTimeout = TimeSpan.FromMinutes(3);


    private readonly QemuImageLoader _loader = new();

    public string Name => Runners.Qemu;

    public IImageLoader ImageLoader => _loader;

    public RunnerInfo Probe()
    {
        var program = QemuCommand.Program(Architecture.Host);
        if (HostCommand.FindOnPath(program) is null)
            return new RunnerInfo(Name, false,
                $"{program} was not found on PATH. Install qemu (Debian/Ubuntu: sudo apt-get install qemu-system-{(Architecture.Host == "aarch64" ? "arm" : "x86")}).", null);
        try
        {
            KernelLocator.Locate(Architecture.Host, NullEventSink.Instance, QemuEnvironment.ReadPaths());
        }
        catch (MelangeException e)
        {
            return new RunnerInfo(Name, false, e.Message + " " + e.Fix, null);
        }
        AcceleratorChoice accel;
        try
        {
            accel = ChooseAccelerator(null, QemuEnvironment.Read(), Architecture.Host);
        }
        catch (MelangeException e)
        {
            // MELANGE_QEMU_ACCELERATOR asks for what cannot be had: pods would fail at once.
            return new RunnerInfo(Name, false, e.Message + " " + e.Fix, null) { Accelerator = AcceleratorChoice.Kvm };
        }
        return new RunnerInfo(Name, true, accel.Accelerator == AcceleratorChoice.Kvm ? null : $"VMs run under TCG, which is slower than KVM: {accel.Reason}.", null)
        {
            Accelerator = accel.Accelerator,
        };
    }

    /// <summary>The accelerator for a pod of <paramref name="arch"/>: -Accelerator, else MELANGE_QEMU_ACCELERATOR, else the host's evidence.</summary>
    private static AcceleratorChoice ChooseAccelerator(string? configValue, QemuEnvironment env, string arch) =>
        AcceleratorChoice.Decide(configValue, env.Accelerator, arch, Architecture.Host, () =>
            HostCommand.FindOnPath(QemuCommand.Program(Architecture.Host)) is { } qemu
                ? HostResources.Kvm(qemu, QemuLaunchPlanner.MachineForProbe(Architecture.Host))
                : new KvmDecision(false, "qemu is not installed"));

    /// <summary>The launch of <paramref name="spec"/>, with the per-pod files named but not made.</summary>
    public PodPlan Plan(PodSpec spec, ImageInfo image)
    {
        var env = QemuEnvironment.Read();
        var arch = QemuLaunchPlanner.GuestArch(spec, image);
        var kernel = KernelLocator.Locate(arch, NullEventSink.Instance, env);
        var virtiofs = env.UseVirtiofs && !string.IsNullOrEmpty(spec.CacheDir) ? Path.Combine(Path.GetTempPath(), "melange-virtiofsd-<new>.sock") : null;
        var accel = ChooseAccelerator(spec.Accelerator, env, arch);
        var files = new LaunchFiles(kernel.BootPath, Path.Combine(Path.GetTempPath(), "melange-initramfs-<new>.cpio"),
            Path.Combine(QemuLaunchPlanner.DisksDirectory(env), "melange-disk-<new>.img"), QemuLaunchPlanner.FreePort(), QemuLaunchPlanner.FreePort(),
            "<client public key>", virtiofs, ScratchDisk.HostFormatter() is not null);
        return QemuLaunchPlanner.ToPlan(QemuLaunchPlanner.Plan(spec, image, env, accel, HostCapacity.Read(), files), accel,
            TemplatePath.Describe(spec, image, env, accel, kernel, virtiofs, arch));
    }

    public async Task<IPodRuntime> StartAsync(PodStartRequest request, IEventSink events, CancellationToken cancellationToken)
    {
        var env = QemuEnvironment.Read(events: events);
        var arch = QemuLaunchPlanner.GuestArch(request.Spec, request.Image);
        var program = HostCommand.FindOnPath(QemuCommand.Program(arch)) ?? throw new MelangeException(ErrorKind.NotInstalled, "QemuNotFound",
            $"{QemuCommand.Program(arch)} was not found on PATH.", "Install qemu: sudo apt-get install qemu-system-x86 (or qemu-system-arm).", arch);
        var accel = ChooseAccelerator(request.Spec.Accelerator, env, arch);
        while (true)
        {
            var runtime = new QemuPodRuntime(request, env);
            try
            {
                await QemuBoot.BootAsync(runtime, program, accel, events, cancellationToken).ConfigureAwait(false);
                return runtime;
            }
            catch (KvmBootFailed e) when (!accel.Pinned)
            {
                // The evidence said KVM, the boot said otherwise: once more under TCG, and this
                // process (and the decision cache) remembers so that later pods go straight to TCG.
                await runtime.CleanUpAsync(events).ConfigureAwait(false);
                HostResources.RecordKvmFailure(program, QemuLaunchPlanner.MachineForProbe(Architecture.Host), e.Message);
                events.Warning($"KVM did not boot the VM ({e.Message}); starting it again under TCG. " +
                               $"To skip KVM on this host, use -Accelerator tcg or set {AcceleratorChoice.EnvironmentVariable}=tcg.");
                accel = new AcceleratorChoice(AcceleratorChoice.Tcg, "KVM did not boot the VM here (" + e.Message + ")", Pinned: false);
            }
            catch (KvmBootFailed e)
            {
                await runtime.CleanUpAsync(events).ConfigureAwait(false);
                throw new MelangeException(ErrorKind.ResourceUnavailable, "KvmBootFailed",
                    $"The VM did not boot under KVM ({accel.Reason}): {e.Message}. The last lines of the guest console:{Environment.NewLine}{runtime.ConsoleTail()}",
                    $"Use -Accelerator auto or tcg, or unset {AcceleratorChoice.EnvironmentVariable}: this host's KVM does not run guests.", request.PodId);
            }
            catch
            {
                await runtime.CleanUpAsync(events).ConfigureAwait(false);
                throw;
            }
            finally
            {
                // The console keeps talking after this cmdlet ends; later lines are kept for errors only.
                runtime.Qemu?.DetachConsole();
            }
        }
    }
}
