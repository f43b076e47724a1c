using MelangeRunner.HostProcess;
using MelangeRunner.Qemu.Initramfs;
using MelangeRunner.Ssh;

namespace MelangeRunner.Qemu;

/// <summary>
/// A qemu pod while it lives: it owns the VM's processes (<see cref="QemuProcess"/>,
/// <see cref="VirtiofsdProcess"/>), the three SSH connections, the client key and the files it
/// made on the host, with the reaper's registration of each. <see cref="QemuBoot"/> fills it in;
/// <see cref="StopAsync"/> (or <see cref="CleanUpAsync"/> after a failed boot) gives it all back.
/// None of it is shown: <see cref="View"/> has the endpoints, the process ids and the clients'
/// public faces.
/// </summary>
internal sealed class QemuPodRuntime : IInteractivePodRuntime
{
    // What the reaper removes if the module's process dies before CleanUpAsync: by path, or "qemu"/"virtiofsd".
    private readonly Dictionary<string, Reaper.Registration> _watches = new(StringComparer.Ordinal);
    private volatile string? _failureReason;
    private volatile bool _stopping;

    public QemuPodRuntime(PodStartRequest request, QemuEnvironment environment)
    {
        PodId = request.PodId;
        Spec = request.Spec;
        Image = request.Image;
        Environment = environment;
    }

    public string PodId { get; }
    public PodSpec Spec { get; }
    public ImageInfo Image { get; }

    /// <summary>The QEMU_* variables as they were read for this start.</summary>
    public QemuEnvironment Environment { get; }

    public QemuProcess? Qemu { get; set; }
    public VirtiofsdProcess? Virtiofsd { get; set; }
    public string? VirtiofsSocket { get; set; }
    public string? InitramfsPath { get; set; }
    public string? DiskPath { get; set; }

    /// <summary>A restored pod's QMP and control sockets (a private directory), or null.</summary>
    public string? RunDir { get; set; }
    public SshKeyPair? ClientKey { get; set; }
    public byte[]? HostKeyBlob { get; set; }
    public int SshPort { get; set; }
    public int ControlPort { get; set; }
    public SshConnection? Build { get; set; }
    public SshConnection? Control { get; set; }
    public SshConnection? ControlBuild { get; set; }

    public string? FailureReason => _failureReason;

    /// <summary>Made once, when the pod is running (Pod reaches the runtime only then), so that the clients keep their identity.</summary>
    public PodRuntimeView View => _view ??= new()
    {
        SshAddress = SshPort == 0 ? null : $"{QemuLaunchPlanner.Loopback}:{SshPort}",
        SshControlAddress = ControlPort == 0 ? null : $"{QemuLaunchPlanner.Loopback}:{ControlPort}",
        BuildClient = Build is null ? null : new PodSshClient(Build),
        ControlClient = Control is null ? null : new PodSshClient(Control),
        ControlBuildClient = ControlBuild is null ? null : new PodSshClient(ControlBuild),
        QemuPid = _qemuPid,
        VirtiofsdPid = _virtiofsdPid,
    };

    private PodRuntimeView? _view;

    // Kept after the processes are gone, as the Pod showed them.
    private int? _qemuPid;
    private int? _virtiofsdPid;
    private QemuProcess? _lastQemu;

    public void Started(QemuProcess qemu)
    {
        Qemu = _lastQemu = qemu;
        _qemuPid = qemu.Id;
        Watch("qemu", Reaper.Watch(qemu.Process));
    }

    public void Started(VirtiofsdProcess virtiofsd)
    {
        Virtiofsd = virtiofsd;
        VirtiofsSocket = virtiofsd.Socket;
        _virtiofsdPid = virtiofsd.Id;
        Watch("virtiofsd", Reaper.Watch(virtiofsd.Process));
        Watch(virtiofsd.Socket, Reaper.WatchPath(virtiofsd.Socket));
    }

    /// <summary>A restore that failed: its qemu goes (the pod cold-boots next, in this runtime).</summary>
    public async Task DropQemuAsync(IEventSink events)
    {
        if (Qemu is { } qemu)
        {
            qemu.Kill();
            await qemu.StopAsync(events).ConfigureAwait(false);
            qemu.Dispose();
            Qemu = null;
            Unwatch("qemu");
        }
        if (RunDir is { } runDir)
        {
            if (Directory.Exists(runDir)) Directory.Delete(runDir, recursive: true);
            Unwatch(runDir);
            RunDir = null;
        }
    }

    /// <summary>The guest console's last lines (of the last qemu this runtime started).</summary>
    public string ConsoleTail() => _lastQemu?.ConsoleTail() ?? "  (nothing)";

    /// <summary>A keepalive declared a connection dead: the pod is Failed (unless it is being stopped).</summary>
    public void OnConnectionDead(string reason)
    {
        if (_stopping) return;
        MarkFailed(reason);
    }

    private void MarkFailed(string reason) => Interlocked.CompareExchange(ref _failureReason, reason, null);

    public void Watch(string key, Reaper.Registration registration)
    {
        lock (_watches) _watches[key] = registration;
    }

    public void Unwatch(string key)
    {
        lock (_watches)
            if (_watches.Remove(key, out var registration)) registration.Dispose();
    }

    private void UnwatchAll()
    {
        lock (_watches)
        {
            foreach (var registration in _watches.Values) registration.Dispose();
            _watches.Clear();
        }
    }

    /// <summary>The VM has read its initramfs: the host key's only copy on disk goes now.</summary>
    public void DeleteInitramfs()
    {
        if (InitramfsPath is not { } path) return;
        IO.SecureFile.Delete(path);
        Unwatch(path);
        InitramfsPath = null;
    }

    public Task<int> RunAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken)
    {
        RequireAlive();
        var line = GuestCommands.Step(Spec, Image.Env, environment, command);
        Build!.Announce(events, line);
        return WithDeadVmCheck(() => Build.RunAsync(line, events.StandardOutput, events.StandardError, cancellationToken));
    }

    public async Task<int> DebugAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken)
    {
        RequireAlive();
        // ssh -tt always gives the session a PTY in the guest (sshd sets TERM from the client's
        // pty request); the host's TERM also goes in the command line, so that it wins over a
        // TERM of the image or the pod, which the command line's env would otherwise put back.
        using var session = OpenSshClient.Prepare(QemuLaunchPlanner.Loopback, SshPort, Build!.User, ClientKey!, HostKeyBlob!,
            GuestCommands.Step(Spec, Image.Env, HostTerminal.WithHostTerm(environment), command));
        return await HostCommand.RunInteractiveAsync(session.FileName, session.Arguments, events, cancellationToken).ConfigureAwait(false);
    }

    public async Task<Stream> WorkspaceTarAsync(IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken cancellationToken)
    {
        RequireAlive();
        var control = Control!;
        // License files, found in the guest by the rule the bubblewrap runner applies on the host.
        var listing = await control.CaptureAsync(GuestCommands.ListWorkspaceFiles, events, cancellationToken).ConfigureAwait(false);
        var files = new List<string>(extraFiles);
        foreach (var raw in listing.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var rel = raw.StartsWith("./", StringComparison.Ordinal) ? raw[2..] : raw;
            if (!files.Contains(rel) && MelangeRunner.Workspace.IsLicenseFile(rel)) files.Add(rel);
        }
        // The list goes in a file in the guest (tar -T), not on the command line, which has a length limit.
        var listFile = GuestCommands.NewListFile();
        await control.RunCheckedAsync(GuestCommands.TruncateFile(listFile), events, cancellationToken, PodId).ConfigureAwait(false);
        foreach (var chunk in files.Chunk(100))
            await control.RunCheckedAsync(GuestCommands.AppendLines(listFile, chunk), events, cancellationToken, PodId).ConfigureAwait(false);

        var command = GuestCommands.WorkspaceTar(listFile);
        control.Announce(events, command);
        return await WithDeadVmCheck(() => Task.FromResult(control.OpenOutputStream(command, line => events.Verbose("tar: " + line), cancellationToken))).ConfigureAwait(false);
    }

    public async Task<ReleaseData?> GetReleaseDataAsync(IEventSink events, CancellationToken cancellationToken)
    {
        RequireAlive();
        var (code, text) = await Control!.TryCaptureAsync(GuestCommands.OsRelease, events, cancellationToken).ConfigureAwait(false);
        return code == 0 ? ReleaseData.Parse(text) : null;
    }

    public async Task StopAsync(IEventSink events, CancellationToken cancellationToken)
    {
        _stopping = true;
        if (Qemu is { HasExited: false } && Control is { IsConnected: true } control)
        {
            events.Verbose("qemu: sending shutdown signal (sysrq sync, poweroff)");
            try
            {
                // The VM powers off under the command: its end (or a lost connection) is expected.
                using var shutdown = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                await control.RunAsync(GuestCommands.PowerOff, _ => { }, _ => { }, shutdown.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is MelangeException or OperationCanceledException)
            {
                events.Verbose("qemu: shutdown command ended with: " + e.Message);
            }
        }
        await CleanUpAsync(events).ConfigureAwait(false);
    }

    /// <summary>Closes the connections, stops qemu and virtiofsd, and removes every file the pod made.</summary>
    public async Task CleanUpAsync(IEventSink events)
    {
        foreach (var connection in new[] { Build, Control, ControlBuild }) connection?.Dispose();
        if (Qemu is { } qemu)
        {
            await qemu.StopAsync(events).ConfigureAwait(false);
            qemu.Dispose();
            Qemu = null;
        }
        if (Virtiofsd is { } virtiofsd)
        {
            await virtiofsd.StopAsync().ConfigureAwait(false);
            virtiofsd.Dispose();
            Virtiofsd = null;
        }
        if (InitramfsPath is { } initramfs) IO.SecureFile.Delete(initramfs);
        InitramfsPath = null;
        foreach (var path in new[] { DiskPath, VirtiofsSocket })
            if (path is not null && File.Exists(path)) File.Delete(path);
        if (RunDir is { } runDir && Directory.Exists(runDir)) Directory.Delete(runDir, recursive: true);
        RunDir = null;
        DiskPath = null;
        VirtiofsSocket = null;
        ClientKey?.Dispose();
        ClientKey = null;
        UnwatchAll(); // everything above is gone: the reaper has nothing left to do for this pod
    }

    /// <summary>A command that failed because the VM died says so, with the console's last lines.</summary>
    private async Task<T> WithDeadVmCheck<T>(Func<Task<T>> run)
    {
        try
        {
            return await run().ConfigureAwait(false);
        }
        catch (MelangeException e) when (e.Kind == ErrorKind.ConnectionError || Qemu is { HasExited: true })
        {
            var why = Qemu is { HasExited: true } q ? $"the VM exited (qemu status {q.ExitCode})" : FailureReason ?? e.Message;
            MarkFailed(why);
            throw new MelangeException(ErrorKind.ConnectionError, "VmLost",
                $"The pod {PodId} stopped answering: {why}. The last lines of the guest console:{System.Environment.NewLine}{ConsoleTail()}",
                "Stop the pod with Stop-MelangePod and start a new one.", PodId, e);
        }
    }

    /// <summary>The VM of a running pod can still have exited under it: that is VmLost, and the pod is Failed.</summary>
    private void RequireAlive()
    {
        if (Qemu is { HasExited: true } q)
        {
            MarkFailed($"the VM exited (qemu status {q.ExitCode})");
            throw new MelangeException(ErrorKind.ConnectionError, "VmLost",
                $"The VM of pod {PodId} has exited (qemu status {q.ExitCode}). The last lines of the guest console:{System.Environment.NewLine}{ConsoleTail()}",
                "Stop the pod with Stop-MelangePod and start a new one.", PodId);
        }
    }
}
