using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using MelangeRunner.HostProcess;
using MelangeRunner.Images;
using MelangeRunner.Qemu.Initramfs;
using MelangeRunner.Qemu.Kernel;
using MelangeRunner.Ssh;
using Renci.SshNet;

namespace MelangeRunner.Qemu;

/// <summary>
/// melange's qemu runner: a microVM booted from a kernel and a generated initramfs, driven
/// over SSH, the workspace copied in over 9p and streamed back as tar.
/// </summary>
public sealed class QemuRunner : IRunner, IDebugger
{
    /// <summary>melange's default scratch disk.</summary>
    public const string DefaultDiskSize = "50Gi";

    /// <summary>How long a boot may take before the SSH banner (generous: TCG on a busy 2-core host).</summary>
    public static readonly TimeSpan DefaultBootTimeout = TimeSpan.FromMinutes(3);

    private const string Loopback = "127.0.0.1";
    private const string GuestWorkspace = "/mount" + Defaults.WorkspaceDir;
    private static readonly TimeSpan SshConnectTimeout = TimeSpan.FromSeconds(30);

    private readonly QemuImageLoader _loader = new();

    public string Name => Runners.Qemu;

    public IImageLoader ImageLoader => _loader;

    public RunnerInfo Probe()
    {
        var program = QemuCommand.Program(Architecture.Host);
        if (PodProcess.FindOnPath(program) is null)
            return new RunnerInfo(Name, false,
                $"{program} was not found on PATH. Install qemu (Debian/Ubuntu: sudo apt-get install qemu-system-{(Architecture.Host == "aarch64" ? "arm" : "x86")}).", null);
        try
        {
            KernelLocator.Locate(Architecture.Host, NullEventSink.Instance);
        }
        catch (MelangeException e)
        {
            return new RunnerInfo(Name, false, e.Message + " " + e.Fix, null);
        }
        AcceleratorChoice accel;
        try
        {
            accel = ChooseAccelerator(new PodConfig(), QemuEnvironment.Read(), Architecture.Host);
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
    private static AcceleratorChoice ChooseAccelerator(PodConfig config, QemuEnvironment env, string arch) =>
        AcceleratorChoice.Decide(config.Accelerator, env.Accelerator, arch, Architecture.Host, () =>
            PodProcess.FindOnPath(QemuCommand.Program(Architecture.Host)) is { } qemu
                ? HostResources.Kvm(qemu, MachineForProbe(Architecture.Host))
                : new KvmDecision(false, "qemu is not installed"));

    /// <summary>The launch of <paramref name="config"/>, with the per-pod files named but not made.</summary>
    public PodPlan Plan(PodConfig config, ImageInfo image)
    {
        var env = QemuEnvironment.Read();
        var kernel = KernelLocator.Locate(Architecture.Normalize(config.Arch ?? image.Arch), NullEventSink.Instance);
        if (string.IsNullOrEmpty(config.WorkspaceDir))
        {
            config = config.Clone();
            config.WorkspaceDir = Path.Combine(Path.GetTempPath(), "melange-workspace-<new>");
        }
        var virtiofs = env.UseVirtiofs && !string.IsNullOrEmpty(config.CacheDir) ? Path.Combine(Path.GetTempPath(), "melange-virtiofsd-<new>.sock") : null;
        var accel = ChooseAccelerator(config, env, Architecture.Normalize(config.Arch ?? image.Arch));
        var launch = Launch(config, image, env, accel, kernel.BootPath, Path.Combine(Path.GetTempPath(), "melange-initramfs-<new>.cpio"),
            Path.Combine(DisksDirectory(env), "melange-disk-<new>.img"), FreePort(), FreePort(), "<client public key>", virtiofs, env.Testing is not null, ScratchDisk.HostFormatter() is not null);
        return ToPlan(launch, accel);
    }

    private PodPlan ToPlan(QemuLaunch launch, AcceleratorChoice accel) => new()
    {
        Accelerator = accel.Accelerator,
        AcceleratorReason = accel.Reason,
        Runner = Name,
        FileName = QemuCommand.Program(launch.Arch),
        Arguments = QemuCommand.Build(launch),
        KernelCommandLine = QemuCommand.KernelCommandLine(launch),
        Cpus = launch.Cpus,
        MemoryKiB = launch.MemoryKiB,
    };

    private static QemuLaunch Launch(PodConfig config, ImageInfo image, QemuEnvironment env, AcceleratorChoice accel, string kernel, string initrd,
        string disk, int sshPort, int controlPort, string publicKeyBase64, string? virtiofsSocket, bool kernelDebug, bool scratchFormatted)
    {
        var hostCpu = Environment.ProcessorCount;
        var configCpu = int.TryParse(config.CPU, out var c) && c > 0 ? c : 0;
        var hostScaled = (long)(HostResources.AvailableMemoryKiB() * 0.85);
        var configMemory = string.IsNullOrEmpty(config.Memory) ? 0 : SizeParser.ParseToKiB(config.Memory, "memory size");
        return new QemuLaunch
        {
            Arch = Architecture.Normalize(config.Arch ?? image.Arch),
            HostArch = Architecture.Host,
            KvmUsable = accel.Accelerator == AcceleratorChoice.Kvm,
            Cpus = HostResources.EffectiveCpu(configCpu, HostResources.CgroupCpuLimit(), hostCpu),
            MemoryKiB = HostResources.EffectiveMemoryKiB(configMemory, hostScaled, HostResources.CgroupMemoryLimitKiB()),
            CpuModel = config.CPUModel,
            SshPort = sshPort,
            ControlPort = controlPort,
            KernelPath = kernel,
            InitrdPath = initrd,
            DiskPath = disk,
            RootfsTar = image.Ref,
            WorkspaceDir = config.WorkspaceDir ?? "",
            CacheDir = config.CacheDir,
            VirtiofsSocket = virtiofsSocket,
            ClientPublicKeyBase64 = publicKeyBase64,
            Environment = env,
            KernelDebug = kernelDebug,
            ScratchFormatted = scratchFormatted,
        };
    }

    private static string MachineForProbe(string arch) => arch == "aarch64" ? "virt" : "q35";

    private static string DisksDirectory(QemuEnvironment env) => env.DisksPath ?? Path.GetTempPath();

    /// <summary>A loopback port free right now (qemu binds it moments later, as in melange).</summary>
    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    public async Task<Pod> StartPodAsync(PodConfig config, ImageInfo image, IEventSink events, CancellationToken cancellationToken)
    {
        if (image.Runner != Name)
            throw new MelangeException(ErrorKind.InvalidArgument, "WrongImageRunner",
                $"The image {image.Ref} was imported for the {image.Runner} runner, not for {Name}.", $"Import it again with -Runner {Name}.", image);
        if (!File.Exists(image.Ref))
            throw new MelangeException(ErrorKind.ObjectNotFound, "ImageRemoved",
                $"The rootfs tar {image.Ref} no longer exists.", "Import the image again with Import-MelangeImage.", image);

        var env = QemuEnvironment.Read(events: events);
        var arch = Architecture.Normalize(config.Arch ?? image.Arch);
        var program = PodProcess.FindOnPath(QemuCommand.Program(arch)) ?? throw new MelangeException(ErrorKind.NotInstalled, "QemuNotFound",
            $"{QemuCommand.Program(arch)} was not found on PATH.", "Install qemu: sudo apt-get install qemu-system-x86 (or qemu-system-arm).", arch);
        var accel = ChooseAccelerator(config, env, arch);
        var pod = new Pod(this, config, image);
        while (true)
        {
            var state = new QemuPodState();
            pod.RunnerState = state;
            try
            {
                await BootAsync(pod, state, env, arch, program, accel, events, cancellationToken).ConfigureAwait(false);
                pod.State = PodState.Running;
                pod.StartedAt = DateTimeOffset.Now;
                return pod;
            }
            catch (KvmBootFailed e) when (!accel.Pinned)
            {
                // The evidence said KVM, the boot said otherwise: once more under TCG, and this
                // process (and the decision cache) remembers so that later pods go straight to TCG.
                await CleanUpAsync(pod, state, events).ConfigureAwait(false);
                HostResources.RecordKvmFailure(program, MachineForProbe(Architecture.Host), e.Message);
                events.Warning($"KVM did not boot the VM ({e.Message}); starting it again under TCG. " +
                               $"To skip KVM on this host, use -Accelerator tcg or set {AcceleratorChoice.EnvironmentVariable}=tcg.");
                accel = new AcceleratorChoice(AcceleratorChoice.Tcg, "KVM did not boot the VM here (" + e.Message + ")", Pinned: false);
            }
            catch (KvmBootFailed e)
            {
                pod.State = PodState.Failed;
                await CleanUpAsync(pod, state, events).ConfigureAwait(false);
                throw new MelangeException(ErrorKind.ResourceUnavailable, "KvmBootFailed",
                    $"The VM did not boot under KVM ({accel.Reason}): {e.Message}. The last lines of the guest console:{Environment.NewLine}{state.ConsoleTail()}",
                    $"Use -Accelerator auto or tcg, or unset {AcceleratorChoice.EnvironmentVariable}: this host's KVM does not run guests.", pod.Id);
            }
            catch
            {
                pod.State = PodState.Failed;
                await CleanUpAsync(pod, state, events).ConfigureAwait(false);
                throw;
            }
            finally
            {
                // The console keeps talking after this cmdlet ends; later lines are kept for errors only.
                state.ConsoleSink = null;
            }
        }
    }

    /// <summary>How long a KVM boot may show nothing on the console: a guest that KVM really runs speaks within a second or two.</summary>
    internal static readonly TimeSpan KvmProgressBound = TimeSpan.FromSeconds(20);

    /// <summary>
    /// How long the guest console may stay silent before the SSH banner, under any accelerator: our
    /// init prints each phase, and the longest quiet stretch of a TCG boot on a loaded host (the
    /// kernel before its console driver loads) is well under this.
    /// </summary>
    internal static readonly TimeSpan StallBound = TimeSpan.FromSeconds(30);

    /// <summary>A boot under KVM that KVM cannot run: an internal error, an early exit, or no console output in time.</summary>
    private sealed class KvmBootFailed(string message) : Exception(message);

    private async Task BootAsync(Pod pod, QemuPodState state, QemuEnvironment env, string arch, string program, AcceleratorChoice accel, IEventSink events, CancellationToken ct)
    {
        var config = pod.Config;
        void Step(string status, int step) => events.Progress(new ProgressReport("Starting qemu pod", status, step, 6));

        Step("Locating the kernel", 0);
        var kernel = KernelLocator.Locate(arch, events);
        events.Verbose($"qemu: kernel {kernel.BootPath} ({kernel.Source}{(kernel.IsElf ? ", uncompressed ELF" : "")}), version {kernel.Version ?? "unknown"}");

        // Keys: an ephemeral client key, and the VM's host key made here so that it can be pinned.
        state.ClientKey = SshKeyPair.GenerateEcdsaP256();
        using var hostKey = SshKeyPair.GenerateEd25519();
        state.HostKeyBlob = hostKey.PublicKeyBlob;

        Step("Preparing the initramfs", 1);
        var baseInitramfs = await InitramfsBuilder.GetBaseAsync(arch, kernel.ModulesDir, events, ct).ConfigureAwait(false);
        state.InitramfsPath = await InitramfsBuilder.InjectRuntimeDataAsync(baseInitramfs, hostKey.OpenSshPrivateKey,
            hostKey.AuthorizedKeysLine, env.KernelModules, env.BaseInitramfs is null ? kernel.ModulesDir : null, events, ct).ConfigureAwait(false);
        state.Watch(state.InitramfsPath, Reaper.WatchPath(state.InitramfsPath, secret: true));

        (state.DiskPath, var scratchFormatted) = ScratchDisk.Create(DisksDirectory(env), config.Disk is { Length: > 0 } d ? d : DefaultDiskSize, events);
        state.Watch(state.DiskPath, Reaper.WatchPath(state.DiskPath));

        if (!string.IsNullOrEmpty(config.CacheDir))
        {
            Directory.CreateDirectory(config.CacheDir);
            if (env.UseVirtiofs) await StartVirtiofsdAsync(pod, state, env, events, ct).ConfigureAwait(false);
        }

        var launch = Launch(config, pod.Image, env, accel, kernel.BootPath, state.InitramfsPath, state.DiskPath, FreePort(), FreePort(),
            Convert.ToBase64String(Encoding.ASCII.GetBytes(state.ClientKey.AuthorizedKeysLine + "\n")), state.VirtiofsSocket, env.Testing is not null, scratchFormatted);
        pod.SshAddress = $"{Loopback}:{launch.SshPort}";
        pod.SshControlAddress = $"{Loopback}:{launch.ControlPort}";
        events.Verbose($"qemu: VM resources: arch={launch.Arch} cpus={launch.Cpus} memory={launch.MemoryKiB / 1024}MiB accel={QemuCommand.Accelerator(launch)} ({accel.Reason})");
        // Refused here rather than booted into an empty console: the guest unpacks its initramfs into a tmpfs of half its RAM.
        var initramfsBytes = InitramfsBuilder.CheckFitsInMemory(state.InitramfsPath, launch.MemoryKiB);

        Step("Booting the VM", 2);
        state.Qemu = StartQemu(program, QemuCommand.Build(launch), state, events);
        state.Watch("qemu", Reaper.Watch(state.Qemu));
        pod.QemuPid = state.Qemu.Id;

        var kernelVersionHint = kernel.Version ?? Path.GetFileName(kernel.BootPath);
        var deadline = config.Timeout > TimeSpan.Zero && config.Timeout < DefaultBootTimeout ? config.Timeout : DefaultBootTimeout;
        var watch = Stopwatch.StartNew();
        string? stalled = null;
        try
        {
            // The banner wait gives up as soon as qemu exits or the boot stops making progress.
            await SshBanner.WaitAsync(Loopback, launch.SshPort, () => state.Qemu.HasExited || (stalled = Stall()) is not null, deadline, ct).ConfigureAwait(false);
        }
        catch (MelangeException e) when (e.ErrorId == "VmExited")
        {
            if (!state.Qemu.HasExited)
            {
                try { state.Qemu.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            }
            if (launch.KvmUsable && (state.GuestSaidNothing || state.KvmError.Task.IsCompleted))
                throw new KvmBootFailed(stalled ?? $"qemu exited with status {state.Qemu.ExitCode} before the guest said anything{QemuErrorSuffix()}");
            if (stalled is not null)
                throw BootFailure(new MelangeException(ErrorKind.OperationTimeout, "VmStalled",
                    $"The VM stopped making progress before its SSH server answered: {stalled}.", null, pod.Id, e));
            throw BootFailure(e);
        }
        catch (MelangeException e)
        {
            throw BootFailure(e);
        }
        events.Verbose($"qemu: SSH banner after {watch.Elapsed.TotalSeconds:F1} s");
        // qemu holds the scratch disk open: unlinking it now means that even a host process killed
        // outright leaves no 50 GiB file behind; the space is freed when qemu exits.
        File.Delete(state.DiskPath);
        state.Unwatch(state.DiskPath);
        state.DiskPath = null;

        // Our init starts sshd before it unpacks the rootfs, so the root clients log in while the
        // guest works: sshd chroots a root session only when it starts a command. A non-root build
        // user waits for /run/melange-ready: sshd resolves that user and chroots it into /mount at
        // log-in. An init that does not announce itself in /run/melange-init (another
        // QEMU_BASE_INITRAMFS) is taken as ready at the banner.
        Step("Connecting over SSH", 3);
        var user = string.IsNullOrEmpty(config.RunAs) ? "root" : config.RunAs!;
        SshClient[] early;
        try
        {
            early = await LogInAll(user == "root"
                ? new[] { Connect(launch.ControlPort, "root"), Connect(launch.SshPort, "root"), Connect(launch.SshPort, "root") }
                : new[] { Connect(launch.ControlPort, "root"), Connect(launch.SshPort, "root") }).ConfigureAwait(false);
        }
        catch (MelangeException e) when (e.ErrorId == "SshLoginFailed" && state.Qemu.WaitForExit(5000))
        {
            // The init failed (and powered off) while the clients were logging in.
            throw BootFailure(ExitedBeforeReady(e));
        }
        var control = early[0];
        pod.ControlClient = new PodSshClient("control", control);
        pod.ControlBuildClient = new PodSshClient("control-build", early[1]);
        if (user == "root") pod.BuildClient = new PodSshClient("build", early[2]);
        // The VM has read its initramfs: the host key's only copy on disk goes now.
        InitramfsBuilder.SecureDelete(state.InitramfsPath);
        state.Unwatch(state.InitramfsPath);
        state.InitramfsPath = null;
        await WaitUntilGuestReadyAsync().ConfigureAwait(false);

        // Side by side: the build user's log-in, and over control the copy-in (one command: each is
        // a round trip through an emulated network stack) and the kernel version.
        Step("Mounting the cache and copying the workspace in", 4);
        var build = pod.BuildClient is null ? Connect(launch.SshPort, user) : null;
        var copyIn = ControlAsync(pod, CopyInCommand(config, state, user), events, ct);
        var kernelVersion = CaptureAsync(control, "uname -rv", events, ct);
        if (build is not null)
        {
            try
            {
                pod.BuildClient = new PodSshClient("build", await build.ConfigureAwait(false));
            }
            catch
            {
                // The VM is torn down next; what the other commands say then is of no interest.
                _ = Task.WhenAll(copyIn, kernelVersion).ContinueWith(t => t.Exception, TaskScheduler.Default);
                throw;
            }
        }
        foreach (var client in new[] { pod.BuildClient!, pod.ControlClient, pod.ControlBuildClient })
            state.Keepalives.Add(new SshKeepalive(client.Client, client.Role, reason => OnVmDead(pod, state, reason)));
        await copyIn.ConfigureAwait(false);
        events.Verbose($"qemu: running kernel version: {(await kernelVersion.ConfigureAwait(false)).Trim()}");
        Step("Ready", 6);

        // Why the boot is not going anywhere, or null: under KVM, a KVM error from qemu or no console
        // line within KvmProgressBound; under any accelerator, a console silent for StallBound.
        string? Stall()
        {
            if (launch.KvmUsable && state.KvmError.Task.IsCompleted) return $"qemu reported \"{state.KvmError.Task.Result}\"";
            var quiet = state.GuestQuietFor;
            if (launch.KvmUsable && state.GuestSaidNothing && quiet > KvmProgressBound) return $"the guest printed nothing in {KvmProgressBound.TotalSeconds:0} s";
            if (quiet > StallBound) return $"the guest console was silent for {StallBound.TotalSeconds:0} s";
            return null;
        }

        string QemuErrorSuffix() => state.QemuErrorTail() is { Length: > 0 } tail ? ": " + tail : "";

        MelangeException BootFailure(MelangeException e)
        {
            // Let the console pump drain what the guest said before it died.
            if (state.Qemu.HasExited) state.Qemu.WaitForExit();
            // The console is a virtio port: a guest that cannot load virtio_console says nothing at all.
            var fix = state.GuestSaidNothing
                ? "The guest printed nothing, which happens when it cannot load its console driver (virtio_console): the initramfs lacks the booted kernel's modules. " +
                  $"Check QEMU_BASE_INITRAMFS (build it with New-MelangeInitramfs for this kernel) and that QEMU_KERNEL_MODULES matches the kernel {kernelVersionHint}."
                : "Read the console lines above; -Verbose shows the whole boot. Check the kernel (QEMU_KERNEL_IMAGE) and that the image has /bin/sh.";
            var qemu = state.Qemu.HasExited ? $"qemu exited with status {state.Qemu.ExitCode}" : "qemu was running";
            return new MelangeException(e.Kind, e.ErrorId,
                $"{e.Message} ({qemu}, accelerator {(launch.KvmUsable ? "kvm" : "tcg")}: {accel.Reason}.) {InitramfsBuilder.DescribeFit(initramfsBytes, launch.MemoryKiB)} " +
                $"The last lines of the guest console:{Environment.NewLine}{state.ConsoleTail()}",
                fix, pod.Id, e);
        }

        async Task WaitUntilGuestReadyAsync()
        {
            using var bounded = CancellationTokenSource.CreateLinkedTokenSource(ct);
            bounded.CancelAfter(deadline - watch.Elapsed is { Ticks: > 0 } left ? left : TimeSpan.Zero);
            int code;
            try
            {
                code = await GuestSsh.RunAsync(control, "if [ -e /run/melange-init ]; then while [ ! -e /run/melange-ready ]; do usleep 20000; done; fi",
                    events.Verbose, events.Verbose, bounded.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw BootFailure(new MelangeException(ErrorKind.OperationTimeout, "SshNotReady",
                    $"The VM's SSH server answered, but its init did not finish within {deadline.TotalSeconds:0.#} s.", null, pod.Id));
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                throw BootFailure(NotReady(e.Message, e));
            }
            if (code != 0) throw BootFailure(NotReady($"status {code}", null));
            events.Verbose($"qemu: guest ready after {watch.Elapsed.TotalSeconds:F1} s");
        }

        static async Task<SshClient[]> LogInAll(Task<SshClient>[] logins)
        {
            try
            {
                return await Task.WhenAll(logins).ConfigureAwait(false);
            }
            catch
            {
                foreach (var login in logins)
                    if (login.IsCompletedSuccessfully) login.Result.Dispose();
                throw;
            }
        }

        MelangeException ExitedBeforeReady(Exception? inner) =>
            new(ErrorKind.InvalidOperation, "VmExited", "The VM exited before its init finished.", null, pod.Id, inner);

        MelangeException NotReady(string why, Exception? inner) =>
            // A failing init powers the VM off: give qemu a moment to exit before telling the two apart.
            state.Qemu.WaitForExit(5000)
                ? ExitedBeforeReady(inner)
                : new MelangeException(ErrorKind.ConnectionError, "GuestNotReady", $"Waiting for the VM's init to finish failed ({why}).", null, pod.Id, inner);

        async Task<SshClient> Connect(int port, string login)
        {
            try
            {
                return await GuestSsh.ConnectAsync(Loopback, port, login, state.ClientKey!, state.HostKeyBlob!, SshConnectTimeout, ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not MelangeException { ErrorId: "HostKeyMismatch" } and not OperationCanceledException)
            {
                throw new MelangeException(ErrorKind.ConnectionError, "SshLoginFailed",
                    $"Could not log in to the VM as '{login}' on port {port}: {e.Message}",
                    login == "root" ? "Read the guest console with -Verbose." : $"Check that the image has a user '{login}' whose shell is /bin/sh, or start the pod without -RunAs.", pod.Id, e);
            }
        }
    }

    private static void OnVmDead(Pod pod, QemuPodState state, string reason)
    {
        if (pod.State is PodState.Stopping or PodState.Stopped) return;
        state.DeadReason ??= reason;
        pod.State = PodState.Failed;
    }

    /// <summary>The cache mount, the workspace copy (as root in the chroot, then owned by <paramref name="user"/>) and the share's unmount, as one control command.</summary>
    private static string CopyInCommand(PodConfig config, QemuPodState state, string user)
    {
        var steps = new List<string>();
        if (!string.IsNullOrEmpty(config.CacheDir))
            steps.Add(state.VirtiofsSocket is not null
                ? $"melange-load-modules virtiofs && mkdir -p /mount{Defaults.CacheDir} && mount -t virtiofs melange_cache /mount{Defaults.CacheDir}"
                : $"melange-load-modules overlay && mkdir -p {Defaults.CacheDir} /mount{Defaults.CacheDir} /mount/upper /mount/work && chmod 1777 /mount/upper && " +
                  $"mount -t 9p -o ro,trans=virtio melange_cache {Defaults.CacheDir} && " +
                  $"mount -t overlay overlay -o lowerdir={Defaults.CacheDir},upperdir=/mount/upper,workdir=/mount/work /mount{Defaults.CacheDir}");
        // Our init mounted the workspace read-only at /mount/mnt.
        steps.Add("grep -q '^defaultshare ' /proc/mounts || { mkdir -p /mount/mnt && mount -t 9p -o ro,trans=virtio defaultshare /mount/mnt; }");
        steps.Add("chroot /mount /bin/sh -c " + ShellQuote.Quote(
            $"mkdir -p {Defaults.WorkspaceDir} && find /mnt/ -mindepth 1 -maxdepth 1 -exec cp -a {{}} {Defaults.WorkspaceDir}/ \\; && chown -R {ShellQuote.Quote(user)} {Defaults.WorkspaceDir}"));
        steps.Add("umount /mount/mnt");
        return string.Join(" && ", steps.Select(step => "{ " + step + "; }"));
    }

    private static Process StartQemu(string program, string[] args, QemuPodState state, IEventSink events)
    {
        var start = new ProcessStartInfo(program)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args) start.ArgumentList.Add(a);
        OwnSession.Apply(start);
        events.Verbose("Running: " + PodProcess.CommandLine(start));
        var process = Process.Start(start)!;
        // The console must be drained or the guest blocks on a full pipe; keep the tail for errors.
        process.OutputDataReceived += (_, e) => { if (e.Data is { } line) state.AddConsoleLine(line); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is { } line) state.AddQemuErrorLine(line); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        state.ConsoleSink = events;
        state.RestartQuietClock();
        return process;
    }

    private static async Task StartVirtiofsdAsync(Pod pod, QemuPodState state, QemuEnvironment env, IEventSink events, CancellationToken ct)
    {
        var candidates = new List<string>();
        if (env.VirtiofsPath is { } dir) candidates.Add(Path.Combine(dir, "virtiofsd"));
        candidates.AddRange(new[] { "/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd" });
        var virtiofsd = candidates.FirstOrDefault(File.Exists) ?? PodProcess.FindOnPath("virtiofsd") ?? throw new MelangeException(
            ErrorKind.NotInstalled, "VirtiofsdNotFound",
            $"QEMU_USE_VIRTIOFS is set but virtiofsd was not found (looked in {string.Join(", ", candidates)} and PATH).",
            "Install virtiofsd (Debian 12: sudo apt-get install qemu-system-common; later: virtiofsd), set QEMU_VIRTIOFS_PATH to its directory, or unset QEMU_USE_VIRTIOFS.");
        state.VirtiofsSocket = Path.Combine(Path.GetTempPath(), $"melange-virtiofsd-{Guid.NewGuid():N}.sock");
        var start = new ProcessStartInfo(virtiofsd) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[] { "--socket-path=" + state.VirtiofsSocket, $"--thread-pool-size={Environment.ProcessorCount * 2}",
                     "-o", "source=" + pod.Config.CacheDir, "-o", "cache=always", "-o", "sandbox=namespace", "-o", "xattr", "-o", "writeback", "-o", "no_posix_lock" })
            start.ArgumentList.Add(a);
        OwnSession.Apply(start);
        events.Verbose("Running: " + PodProcess.CommandLine(start));
        state.Virtiofsd = Process.Start(start)!;
        state.Watch("virtiofsd", Reaper.Watch(state.Virtiofsd));
        state.Watch(state.VirtiofsSocket, Reaper.WatchPath(state.VirtiofsSocket));
        state.Virtiofsd.OutputDataReceived += (_, e) => { if (e.Data is { } l) events.Verbose("virtiofsd: " + l); };
        state.Virtiofsd.ErrorDataReceived += (_, e) => { if (e.Data is { } l) events.Verbose("virtiofsd: " + l); };
        state.Virtiofsd.BeginOutputReadLine();
        state.Virtiofsd.BeginErrorReadLine();
        pod.VirtiofsdPid = state.Virtiofsd.Id;

        // The socket appears when virtiofsd listens; watch the directory instead of polling blindly.
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        while (!File.Exists(state.VirtiofsSocket))
        {
            if (state.Virtiofsd.HasExited)
                throw new MelangeException(ErrorKind.InvalidOperation, "VirtiofsdFailed", $"virtiofsd exited with status {state.Virtiofsd.ExitCode} before listening.", "Run with -Verbose to see its messages.");
            try { await Task.Delay(50, timeout.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw new MelangeException(ErrorKind.OperationTimeout, "VirtiofsdTimeout", "virtiofsd did not create its socket within 10 s.", "Run with -Verbose to see its messages.");
            }
        }
    }

    public Task<int> RunAsync(Pod pod, IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken)
    {
        var state = RequireRunning(pod);
        var line = BuildCommandLine(pod.Config, pod.Image.Env, environment, command);
        events.Verbose($"Running over SSH as {pod.BuildClient!.User}@{pod.SshAddress}: {line}");
        return WithDeadVmCheck(pod, state, () => GuestSsh.RunAsync(pod.BuildClient!.Client, line, events.StandardOutput, events.StandardError, cancellationToken));
    }

    /// <summary>cd to the workspace, then the step's environment (<see cref="PodConfig.StepEnvironment"/>) and melange's CAP_ADD/CAP_DROP.</summary>
    internal static string BuildCommandLine(PodConfig config, IEnumerable<string>? imageEnv, IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command)
    {
        var env = config.StepEnvironment(imageEnv, environment);
        env["CAP_ADD"] = string.Join(',', config.Capabilities.Add);
        env["CAP_DROP"] = string.Join(',', config.Capabilities.Drop);
        return $"cd {Defaults.WorkspaceDir} && exec {GuestSsh.BuildCommandLine(env, command)}";
    }

    public async Task<int> DebugAsync(Pod pod, IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken)
    {
        var state = RequireRunning(pod);
        // ssh -tt always gives the session a PTY in the guest (sshd sets TERM from the client's
        // pty request); the host's TERM also goes in the command line, so that it wins over a
        // TERM of the image or the pod, which the command line's env would otherwise put back.
        var port = int.Parse(pod.SshAddress!.Split(':')[1]);
        var user = pod.BuildClient!.User;
        using var session = OpenSshClient.Prepare(Loopback, port, user, state.ClientKey!, state.HostKeyBlob!,
            BuildCommandLine(pod.Config, pod.Image.Env, HostTerminal.WithHostTerm(environment), command));
        return await PodProcess.RunInteractiveAsync(session.FileName, session.Arguments, events, cancellationToken).ConfigureAwait(false);
    }

    public async Task TerminatePodAsync(Pod pod, IEventSink events, CancellationToken cancellationToken)
    {
        if (pod.RunnerState is not QemuPodState state) return;
        if (state.Qemu is { HasExited: false } qemu && pod.ControlClient is { IsConnected: true } controlClient)
        {
            events.Verbose("qemu: sending shutdown signal (sysrq sync, poweroff)");
            try
            {
                // The VM powers off under the command: its end (or a lost connection) is expected.
                using var shutdown = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                await GuestSsh.RunAsync(controlClient.Client, "sh -c 'echo s > /proc/sysrq-trigger && echo o > /proc/sysrq-trigger &'", _ => { }, _ => { }, shutdown.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is MelangeException or OperationCanceledException)
            {
                events.Verbose("qemu: shutdown command ended with: " + e.Message);
            }
        }
        await CleanUpAsync(pod, state, events).ConfigureAwait(false);
    }

    /// <summary>Stops qemu (poweroff, then SIGTERM, then SIGKILL) and virtiofsd, and removes every file the pod made.</summary>
    private static async Task CleanUpAsync(Pod pod, QemuPodState state, IEventSink events)
    {
        foreach (var k in state.Keepalives) k.Dispose();
        state.Keepalives.Clear();
        foreach (var client in new[] { pod.BuildClient, pod.ControlClient, pod.ControlBuildClient })
        {
            try { client?.Client.Dispose(); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or InvalidOperationException) { }
        }
        if (state.Qemu is { } qemu)
        {
            if (!await ExitsWithin(qemu, TimeSpan.FromSeconds(5)).ConfigureAwait(false))
            {
                events.Verbose("qemu: VM did not exit after the shutdown signal, sending SIGTERM");
                Native.Libc.Kill(qemu.Id, Native.Libc.SIGTERM);
                if (!await ExitsWithin(qemu, TimeSpan.FromSeconds(5)).ConfigureAwait(false))
                {
                    events.Warning("qemu did not exit after SIGTERM; killing it.");
                    qemu.Kill(entireProcessTree: true);
                    await qemu.WaitForExitAsync().ConfigureAwait(false);
                }
            }
            qemu.Dispose();
            state.Qemu = null;
        }
        if (state.Virtiofsd is { } virtiofsd)
        {
            if (!virtiofsd.HasExited)
            {
                Native.Libc.Kill(virtiofsd.Id, Native.Libc.SIGTERM);
                if (!await ExitsWithin(virtiofsd, TimeSpan.FromSeconds(5)).ConfigureAwait(false)) virtiofsd.Kill(entireProcessTree: true);
                await virtiofsd.WaitForExitAsync().ConfigureAwait(false);
            }
            virtiofsd.Dispose();
            state.Virtiofsd = null;
        }
        if (state.InitramfsPath is { } initramfs) InitramfsBuilder.SecureDelete(initramfs);
        state.InitramfsPath = null;
        foreach (var path in new[] { state.DiskPath, state.VirtiofsSocket })
            if (path is not null && File.Exists(path)) File.Delete(path);
        state.DiskPath = null;
        state.VirtiofsSocket = null;
        state.ClientKey?.Dispose();
        state.ClientKey = null;
        state.UnwatchAll(); // everything above is gone: the reaper has nothing left to do for this pod
    }

    private static async Task<bool> ExitsWithin(Process process, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token).ConfigureAwait(false);
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    public async Task<Stream> WorkspaceTarAsync(Pod pod, IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken cancellationToken)
    {
        var state = RequireRunning(pod);
        var control = pod.ControlClient!.Client;
        // License files, found in the guest (melange: single-link regular files outside melange-out).
        var listing = await CaptureAsync(control, $"cd {GuestWorkspace} && find . -type f -links 1 -print", events, cancellationToken).ConfigureAwait(false);
        var files = new List<string>(extraFiles);
        foreach (var raw in listing.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var rel = raw.StartsWith("./", StringComparison.Ordinal) ? raw[2..] : raw;
            if (rel.StartsWith(Workspace.OutputDir + "/", StringComparison.Ordinal) || files.Contains(rel)) continue;
            if (Workspace.IsLicenseFileName(Path.GetFileName(rel))) files.Add(rel);
        }
        // The list goes in a file in the guest (tar -T), not on the command line, which has a length limit.
        var listFile = $"/tmp/melange-extrafiles-{Guid.NewGuid():N}.txt";
        await ControlAsync(pod, $": > {listFile}", events, cancellationToken).ConfigureAwait(false);
        foreach (var chunk in files.Chunk(100))
            await ControlAsync(pod, $"printf '%s\\n' {ShellQuote.Join(chunk)} >> {listFile}", events, cancellationToken).ConfigureAwait(false);

        var command = $"cd {GuestWorkspace} && {{ find {Workspace.OutputDir} -type p -delete >/dev/null 2>&1 || true; }} && " +
                      // GNU tar by full path: the control shell is busybox, whose own tar would win (pitfall 3).
                      $"/bin/tar cpf - --xattrs --xattrs-include='*' --acls --ignore-failed-read {Workspace.OutputDir} -T {listFile}; status=$?; rm -f {listFile}; exit $status";
        events.Verbose($"Running over SSH as root@{pod.SshControlAddress}: {command}");
        return await WithDeadVmCheck(pod, state, () => GuestSsh.OpenOutputStreamAsync(control, command, line => events.Verbose("tar: " + line), cancellationToken)).ConfigureAwait(false);
    }

    public async Task<ReleaseData> GetReleaseDataAsync(Pod pod, IEventSink events, CancellationToken cancellationToken)
    {
        RequireRunning(pod);
        // The build environment's os-release (the rootfs at /mount), not the initramfs's.
        var (code, text) = await TryCaptureAsync(pod.ControlClient!.Client, "chroot /mount cat /etc/os-release 2>/dev/null || chroot /mount cat /usr/lib/os-release",
            events, cancellationToken).ConfigureAwait(false);
        if (code != 0)
            throw new MelangeException(ErrorKind.ObjectNotFound, "NoOsRelease",
                "The image has no /etc/os-release or /usr/lib/os-release.", "Add an os-release file to the image.", pod.ImageRef);
        return ReleaseData.Parse(text);
    }

    /// <summary>A command's exit status and standard output (stderr goes to Verbose).</summary>
    private static async Task<(int Code, string Output)> TryCaptureAsync(SshClient client, string command, IEventSink events, CancellationToken ct)
    {
        var output = new StringBuilder();
        var code = await GuestSsh.RunAsync(client, command, line => output.Append(line).Append('\n'), events.Verbose, ct).ConfigureAwait(false);
        return (code, output.ToString());
    }

    private static async Task<string> CaptureAsync(SshClient client, string command, IEventSink events, CancellationToken ct)
    {
        var (code, output) = await TryCaptureAsync(client, command, events, ct).ConfigureAwait(false);
        if (code != 0)
            throw new MelangeException(ErrorKind.InvalidOperation, "GuestCommandFailed", $"The VM command '{command}' failed with status {code}.", "Run with -Verbose to see its messages.", command);
        return output;
    }

    private static Task ControlAsync(Pod pod, string command, IEventSink events, CancellationToken ct) =>
        RequireSuccess(pod, pod.ControlClient!.Client, command, events, ct);

    private static async Task RequireSuccess(Pod pod, SshClient client, string command, IEventSink events, CancellationToken ct)
    {
        events.Verbose($"Running over SSH as {client.ConnectionInfo.Username}@{client.ConnectionInfo.Host}:{client.ConnectionInfo.Port}: {command}");
        var code = await GuestSsh.RunAsync(client, command, events.Verbose, events.Verbose, ct).ConfigureAwait(false);
        if (code != 0)
            throw new MelangeException(ErrorKind.InvalidOperation, "GuestCommandFailed", $"The VM command '{command}' failed with status {code}.", "Run with -Verbose to see its messages.", pod.Id);
    }

    /// <summary>A command that failed because the VM died says so, with the console's last lines.</summary>
    private static async Task<T> WithDeadVmCheck<T>(Pod pod, QemuPodState state, Func<Task<T>> run)
    {
        try
        {
            return await run().ConfigureAwait(false);
        }
        catch (MelangeException e) when (e.Kind == ErrorKind.ConnectionError || state.Qemu is { HasExited: true })
        {
            pod.State = PodState.Failed;
            var why = state.Qemu is { HasExited: true } q ? $"the VM exited (qemu status {q.ExitCode})" : state.DeadReason ?? e.Message;
            throw new MelangeException(ErrorKind.ConnectionError, "VmLost",
                $"The pod {pod.Id} stopped answering: {why}. The last lines of the guest console:{Environment.NewLine}{state.ConsoleTail()}",
                "Stop the pod with Stop-MelangePod and start a new one.", pod.Id, e);
        }
    }

    private static QemuPodState RequireRunning(Pod pod)
    {
        if (pod.State != PodState.Running || pod.RunnerState is not QemuPodState state)
            throw new MelangeException(ErrorKind.InvalidOperation, "PodNotRunning",
                $"The pod {pod.Id} is {pod.State.ToString().ToLowerInvariant()}.", "Start a new pod with Start-MelangePod.", pod);
        if (state.Qemu is { HasExited: true } q)
        {
            pod.State = PodState.Failed;
            throw new MelangeException(ErrorKind.ConnectionError, "VmLost",
                $"The VM of pod {pod.Id} has exited (qemu status {q.ExitCode}). The last lines of the guest console:{Environment.NewLine}{state.ConsoleTail()}",
                "Stop the pod with Stop-MelangePod and start a new one.", pod.Id);
        }
        return state;
    }

    /// <summary>What a qemu pod holds on the host; none of it is shown on the Pod object.</summary>
    private sealed class QemuPodState
    {
        private const int ConsoleLinesKept = 40;
        private readonly ConcurrentQueue<string> _console = new();

        public Process? Qemu { get; set; }
        public Process? Virtiofsd { get; set; }
        public string? VirtiofsSocket { get; set; }
        public string? InitramfsPath { get; set; }
        public string? DiskPath { get; set; }
        public SshKeyPair? ClientKey { get; set; }
        public byte[]? HostKeyBlob { get; set; }
        public List<SshKeepalive> Keepalives { get; } = new();
        public string? DeadReason { get; set; }
        public IEventSink? ConsoleSink { get; set; }

        // What the reaper removes if the module's process dies before CleanUpAsync: by path, or "qemu"/"virtiofsd".
        private readonly Dictionary<string, Reaper.Registration> _watches = new(StringComparer.Ordinal);

        public void Watch(string key, Reaper.Registration registration)
        {
            lock (_watches) _watches[key] = registration;
        }

        public void Unwatch(string key)
        {
            lock (_watches)
                if (_watches.Remove(key, out var registration)) registration.Dispose();
        }

        public void UnwatchAll()
        {
            lock (_watches)
            {
                foreach (var registration in _watches.Values) registration.Dispose();
                _watches.Clear();
            }
        }

        /// <summary>Set by qemu's first report of a KVM failure on its standard error.</summary>
        public TaskCompletionSource<string> KvmError { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        private readonly ConcurrentQueue<string> _qemuErrors = new();

        public void AddQemuErrorLine(string line)
        {
            _qemuErrors.Enqueue(line);
            while (_qemuErrors.Count > 5) _qemuErrors.TryDequeue(out _);
            // "KVM internal error. Suberror: 1", "emulation failure", "failed to set MSR", "Could not access KVM kernel module".
            if (line.Contains("kvm", StringComparison.OrdinalIgnoreCase) || line.Contains("emulation failure", StringComparison.OrdinalIgnoreCase))
                KvmError.TrySetResult(line.Trim());
            AddConsoleLine("qemu: " + line, fromGuest: false);
        }

        public string QemuErrorTail() => string.Join(" | ", _qemuErrors);

        private readonly Stopwatch _sinceGuestOutput = Stopwatch.StartNew();

        /// <summary>Called when qemu starts and at each guest console line.</summary>
        public void RestartQuietClock()
        {
            lock (_sinceGuestOutput) _sinceGuestOutput.Restart();
        }

        /// <summary>Time since the guest's last console line (or since qemu started).</summary>
        public TimeSpan GuestQuietFor { get { lock (_sinceGuestOutput) return _sinceGuestOutput.Elapsed; } }

        /// <summary>No console line came from the guest (qemu's own messages aside).</summary>
        public bool GuestSaidNothing { get; private set; } = true;

        public void AddConsoleLine(string line, bool fromGuest = true)
        {
            if (fromGuest)
            {
                GuestSaidNothing = false;
                RestartQuietClock();
            }
            _console.Enqueue(line);
            while (_console.Count > ConsoleLinesKept) _console.TryDequeue(out _);
            ConsoleSink?.Verbose("console: " + line);
        }


        public string ConsoleTail() => _console.IsEmpty ? "  (nothing)" : string.Join(Environment.NewLine, _console.Select(l => "  " + l));
    }
}
