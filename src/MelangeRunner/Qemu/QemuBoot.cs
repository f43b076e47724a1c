using System.Diagnostics;
using System.Text;
using MelangeRunner.HostProcess;
using MelangeRunner.Qemu.Initramfs;
using MelangeRunner.Qemu.Kernel;
using MelangeRunner.Ssh;

namespace MelangeRunner.Qemu;

/// <summary>A boot under KVM that KVM cannot run: an internal error, an early exit, or no console output in time.</summary>
internal sealed class KvmBootFailed(string message) : Exception(message);

/// <summary>
/// The boot sequence of a qemu pod, into a <see cref="QemuPodRuntime"/>: kernel, keys, initramfs,
/// scratch disk, virtiofsd, qemu, the SSH banner, the log-ins, the guest's init, the copy-in.
/// A failure leaves what was made in the runtime, for <see cref="QemuPodRuntime.CleanUpAsync"/>.
/// </summary>
internal static partial class QemuBoot
{
    private static readonly TimeSpan SshConnectTimeout = TimeSpan.FromSeconds(30);

    /// <summary>How long a KVM boot may show nothing on the console: a guest that KVM really runs speaks within a second or two.</summary>
    internal static readonly TimeSpan KvmProgressBound = TimeSpan.FromSeconds(20);

    /// <summary>
    /// How long the guest console may stay silent before the SSH banner, under any accelerator: our
    /// init prints each phase, and the longest quiet stretch of a TCG boot on a loaded host (the
    /// kernel before its console driver loads) is well under this.
    /// </summary>
    internal static readonly TimeSpan StallBound = TimeSpan.FromSeconds(30);

    public static async Task BootAsync(QemuPodRuntime state, string program, AcceleratorChoice accel, IEventSink events, CancellationToken ct)
    {
        var config = state.Spec;
        var env = state.Environment;
        var arch = QemuLaunchPlanner.GuestArch(config, state.Image);
        var podId = state.PodId;
        void Step(string status, int step) => events.Progress(new ProgressReport("Starting qemu pod", status, step, 6));

        Step("Locating the kernel", 0);
        var kernel = KernelLocator.Locate(arch, events, env);
        events.Verbose($"qemu: kernel {kernel.BootPath} ({kernel.Source}{(kernel.IsElf ? ", uncompressed ELF" : "")}), version {kernel.Version ?? "unknown"}");

        // Keys: an ephemeral client key, and the VM's host key made here so that it can be pinned.
        state.ClientKey = SshKeyPair.GenerateEcdsaP256();
        using var hostKey = SshKeyPair.GenerateEd25519();
        state.HostKeyBlob = hostKey.PublicKeyBlob;

        Step("Preparing the initramfs", 1);
        var baseInitramfs = await InitramfsBuilder.GetBaseAsync(arch, kernel.ModulesDir, events, ct, env).ConfigureAwait(false);

        (state.DiskPath, var scratchFormatted) = ScratchDisk.Create(QemuLaunchPlanner.DisksDirectory(env), config.Disk is { Length: > 0 } d ? d : QemuRunner.DefaultDiskSize, events);
        state.Watch(state.DiskPath, Reaper.WatchPath(state.DiskPath));

        if (!string.IsNullOrEmpty(config.CacheDir))
        {
            Directory.CreateDirectory(config.CacheDir);
            if (env.UseVirtiofs)
                await VirtiofsdProcess.StartAsync(VirtiofsdProcess.Find(env), config.CacheDir, state.Started, events, ct).ConfigureAwait(false);
        }

        // Two ways to a running guest: restored from a template (when one fits), else a cold boot.
        QemuLaunch launch;
        QemuProcess qemu;
        long initramfsBytes;
        var restored = TemplatePath.WhyCold(env, config, state.VirtiofsSocket, arch) is { } whyCold
            ? Cold(whyCold)
            : await TryRestoreAsync(state, program, accel, kernel, baseInitramfs, scratchFormatted, hostKey, events, ct).ConfigureAwait(false);
        if (restored is { } r)
        {
            (launch, qemu) = r;
            state.SshPort = launch.SshPort;
            state.ControlPort = launch.ControlPort;
            initramfsBytes = new FileInfo(launch.InitrdPath).Length;
            Step("Booting the VM", 2);
        }
        else
        {
            state.InitramfsPath = await InitramfsBuilder.InjectRuntimeDataAsync(baseInitramfs, hostKey.OpenSshPrivateKey,
                hostKey.AuthorizedKeysLine, env.KernelModules, env.BaseInitramfs is null ? kernel.ModulesDir : null, events, ct).ConfigureAwait(false);
            state.Watch(state.InitramfsPath, Reaper.WatchPath(state.InitramfsPath, secret: true));

            launch = QemuLaunchPlanner.Plan(config, state.Image, env, accel, HostCapacity.Read(), new LaunchFiles(kernel.BootPath, state.InitramfsPath, state.DiskPath,
                QemuLaunchPlanner.FreePort(), QemuLaunchPlanner.FreePort(), Convert.ToBase64String(Encoding.ASCII.GetBytes(state.ClientKey.AuthorizedKeysLine + "\n")),
                state.VirtiofsSocket, scratchFormatted));
            state.SshPort = launch.SshPort;
            state.ControlPort = launch.ControlPort;
            events.Verbose($"qemu: VM resources: arch={launch.Arch} cpus={launch.Cpus} memory={launch.MemoryKiB / 1024}MiB accel={QemuCommand.Accelerator(launch)} ({accel.Reason})");
            // Refused here rather than booted into an empty console: the guest unpacks its initramfs into a tmpfs of half its RAM.
            initramfsBytes = InitramfsBuilder.CheckFitsInMemory(state.InitramfsPath, launch.MemoryKiB);

            Step("Booting the VM", 2);
            qemu = QemuProcess.Start(program, QemuCommand.Build(launch), events);
            state.Started(qemu);
        }

        (QemuLaunch, QemuProcess)? Cold(string why)
        {
            events.Verbose($"qemu: start path: cold boot ({why})");
            return null;
        }

        var kernelVersionHint = kernel.Version ?? Path.GetFileName(kernel.BootPath);
        var deadline = config.Timeout > TimeSpan.Zero && config.Timeout < QemuRunner.DefaultBootTimeout ? config.Timeout : QemuRunner.DefaultBootTimeout;
        var watch = Stopwatch.StartNew();
        string? stalled = null;
        try
        {
            // The banner wait gives up as soon as qemu exits or the boot stops making progress.
            await SshBanner.WaitAsync(QemuLaunchPlanner.Loopback, launch.SshPort, () => qemu.HasExited || (stalled = Stall()) is not null, deadline, ct).ConfigureAwait(false);
        }
        catch (MelangeException e) when (e.ErrorId == "VmExited")
        {
            if (!qemu.HasExited) qemu.Kill();
            if (launch.KvmUsable && (qemu.GuestSaidNothing || qemu.KvmError.Task.IsCompleted))
                throw new KvmBootFailed(stalled ?? $"qemu exited with status {qemu.ExitCode} before the guest said anything{QemuErrorSuffix()}");
            if (stalled is not null)
                throw BootFailure(new MelangeException(ErrorKind.OperationTimeout, "VmStalled",
                    $"The VM stopped making progress before its SSH server answered: {stalled}.", null, podId, e));
            throw BootFailure(e);
        }
        catch (MelangeException e)
        {
            throw BootFailure(e);
        }
        events.Verbose($"qemu: SSH banner after {watch.Elapsed.TotalSeconds:F1} s");
        // qemu holds the scratch disk open: unlinking it now means that even a host process killed
        // outright leaves no 50 GiB file behind; the space is freed when qemu exits.
        File.Delete(state.DiskPath!);
        state.Unwatch(state.DiskPath!);
        state.DiskPath = null;

        // Our init starts sshd before it unpacks the rootfs, so the root clients log in while the
        // guest works: sshd chroots a root session only when it starts a command. A non-root build
        // user waits for /run/melange-ready: sshd resolves that user and chroots it into /mount at
        // log-in. An init that does not announce itself in /run/melange-init (another
        // QEMU_BASE_INITRAMFS) is taken as ready at the banner.
        Step("Connecting over SSH", 3);
        var user = string.IsNullOrEmpty(config.RunAs) ? "root" : config.RunAs!;
        SshConnection[] early;
        try
        {
            early = await LogInAll(user == "root"
                ? new[] { Connect(launch.ControlPort, "root", "control"), Connect(launch.SshPort, "root", "control-build"), Connect(launch.SshPort, "root", "build") }
                : new[] { Connect(launch.ControlPort, "root", "control"), Connect(launch.SshPort, "root", "control-build") }).ConfigureAwait(false);
        }
        catch (MelangeException e) when (e.ErrorId == "SshLoginFailed" && qemu.WaitForExit(5000))
        {
            // The init failed (and powered off) while the clients were logging in.
            throw BootFailure(ExitedBeforeReady(e));
        }
        var control = state.Control = early[0];
        state.ControlBuild = early[1];
        if (user == "root") state.Build = early[2];
        state.DeleteInitramfs();
        await WaitUntilGuestReadyAsync().ConfigureAwait(false);

        // Side by side: the build user's log-in, and over control the copy-in (one command: each is
        // a round trip through an emulated network stack) and the kernel version.
        Step("Mounting the cache and copying the workspace in", 4);
        var build = state.Build is null ? Connect(launch.SshPort, user, "build") : null;
        var copyIn = control.RunCheckedAsync(GuestCommands.CopyIn(config.CacheDir, state.VirtiofsSocket is not null, user), events, ct, podId);
        var kernelVersion = control.CaptureAsync(GuestCommands.KernelVersion, events, ct);
        if (build is not null)
        {
            try
            {
                state.Build = await build.ConfigureAwait(false);
            }
            catch
            {
                // The VM is torn down next; what the other commands say then is of no interest.
                _ = Task.WhenAll(copyIn, kernelVersion).ContinueWith(t => t.Exception, TaskScheduler.Default);
                throw;
            }
        }
        foreach (var connection in new[] { state.Build!, state.Control, state.ControlBuild })
            connection.StartKeepalive(state.OnConnectionDead);
        await copyIn.ConfigureAwait(false);
        events.Verbose($"qemu: running kernel version: {(await kernelVersion.ConfigureAwait(false)).Trim()}");
        Step("Ready", 6);

        // Why the boot is not going anywhere, or null: under KVM, a KVM error from qemu or no console
        // line within KvmProgressBound; under any accelerator, a console silent for StallBound.
        string? Stall()
        {
            if (launch.KvmUsable && qemu.KvmError.Task.IsCompleted) return $"qemu reported \"{qemu.KvmError.Task.Result}\"";
            var quiet = qemu.GuestQuietFor;
            if (launch.KvmUsable && qemu.GuestSaidNothing && quiet > KvmProgressBound) return $"the guest printed nothing in {KvmProgressBound.TotalSeconds:0} s";
            if (quiet > StallBound) return $"the guest console was silent for {StallBound.TotalSeconds:0} s";
            return null;
        }

        string QemuErrorSuffix() => qemu.QemuErrorTail() is { Length: > 0 } tail ? ": " + tail : "";

        MelangeException BootFailure(MelangeException e)
        {
            // Let the console pump drain what the guest said before it died.
            if (qemu.HasExited) qemu.WaitForExit();
            // The console is a virtio port: a guest that cannot load virtio_console says nothing at all.
            var fix = qemu.GuestSaidNothing
                ? "The guest printed nothing, which happens when it cannot load its console driver (virtio_console): the initramfs lacks the booted kernel's modules. " +
                  $"Check QEMU_BASE_INITRAMFS (build it with New-MelangeInitramfs for this kernel) and that QEMU_KERNEL_MODULES matches the kernel {kernelVersionHint}."
                : "Read the console lines above; -Verbose shows the whole boot. Check the kernel (QEMU_KERNEL_IMAGE) and that the image has /bin/sh.";
            var status = qemu.HasExited ? $"qemu exited with status {qemu.ExitCode}" : "qemu was running";
            return new MelangeException(e.Kind, e.ErrorId,
                $"{e.Message} ({status}, accelerator {(launch.KvmUsable ? "kvm" : "tcg")}: {accel.Reason}.) {InitramfsBuilder.DescribeFit(initramfsBytes, launch.MemoryKiB)} " +
                $"The last lines of the guest console:{Environment.NewLine}{state.ConsoleTail()}",
                fix, podId, e);
        }

        async Task WaitUntilGuestReadyAsync()
        {
            using var bounded = CancellationTokenSource.CreateLinkedTokenSource(ct);
            bounded.CancelAfter(deadline - watch.Elapsed is { Ticks: > 0 } left ? left : TimeSpan.Zero);
            int code;
            try
            {
                code = await control.RunAsync(GuestCommands.WaitUntilReady, events.Verbose, events.Verbose, bounded.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw BootFailure(new MelangeException(ErrorKind.OperationTimeout, "SshNotReady",
                    $"The VM's SSH server answered, but its init did not finish within {deadline.TotalSeconds:0.#} s.", null, podId));
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                throw BootFailure(NotReady(e.Message, e));
            }
            if (code != 0) throw BootFailure(NotReady($"status {code}", null));
            events.Verbose($"qemu: guest ready after {watch.Elapsed.TotalSeconds:F1} s");
        }

        static async Task<SshConnection[]> LogInAll(Task<SshConnection>[] logins)
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
            new(ErrorKind.InvalidOperation, "VmExited", "The VM exited before its init finished.", null, podId, inner);

        MelangeException NotReady(string why, Exception? inner) =>
            // A failing init powers the VM off: give qemu a moment to exit before telling the two apart.
            qemu.WaitForExit(5000)
                ? ExitedBeforeReady(inner)
                : new MelangeException(ErrorKind.ConnectionError, "GuestNotReady", $"Waiting for the VM's init to finish failed ({why}).", null, podId, inner);

        async Task<SshConnection> Connect(int port, string login, string role)
        {
            try
            {
                return await GuestSsh.ConnectAsync(QemuLaunchPlanner.Loopback, port, login, state.ClientKey!, state.HostKeyBlob!, SshConnectTimeout, ct, role).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not MelangeException { ErrorId: "HostKeyMismatch" } and not OperationCanceledException)
            {
                throw new MelangeException(ErrorKind.ConnectionError, "SshLoginFailed",
                    $"Could not log in to the VM as '{login}' on port {port}: {e.Message}",
                    login == "root" ? "Read the guest console with -Verbose." : $"Check that the image has a user '{login}' whose shell is /bin/sh, or start the pod without -RunAs.", podId, e);
            }
        }
    }
}
