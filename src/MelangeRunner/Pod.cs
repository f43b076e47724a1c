using System.Security.Cryptography;

namespace MelangeRunner;

public enum PodState
{
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

/// <summary>
/// A started pod: its config and the runtime state melange keeps on container.Config
/// (pod id, image ref, and for qemu the SSH endpoints, clients and process ids).
/// Disposing it stops it.
/// </summary>
/// <remarks>
/// The checks every runner needs (the image's runner, that the image still exists, that the
/// pod is running, an os-release to report) are made here, once; the runner's
/// <see cref="IPodRuntime"/> does the work.
/// </remarks>
public sealed class Pod : IDisposable
{
    private const string NewWorkspacePlaceholder = "melange-workspace-<new>";
    private readonly object _stopLock = new();
    private readonly IRunner _runner;
    private IPodRuntime? _runtime;
    private PodSpec _spec;
    private PodState _state = PodState.Starting;

    // The reaper's registration of a workspace the engine created (removed if the process dies).
    private HostProcess.Reaper.Registration? _workspaceWatch;

    private Pod(IRunner runner, PodSpec spec, ImageInfo image)
    {
        _runner = runner;
        _spec = spec;
        Image = image;
        Id = "melange-" + Convert.ToHexString(RandomNumberGenerator.GetBytes(6)).ToLowerInvariant();
    }

    public string Id { get; }
    public string Runner => _runner.Name;

    /// <summary>Running becomes Failed as soon as the runtime reports that the pod died on its own.</summary>
    public PodState State => _state == PodState.Running && _runtime?.FailureReason is not null ? PodState.Failed : _state;

    public string ImageRef => Image.Ref;
    public ImageInfo Image { get; }

    /// <summary>A copy of the normalised config the pod runs with: changing it changes nothing.</summary>
    public PodConfig Config => _spec.ToConfig();

    public DateTimeOffset? StartedAt { get; private set; }

    /// <summary>The host workspace directory (created for the pod when the config named none).</summary>
    public string WorkspaceDir => _spec.WorkspaceDir ?? "";

    /// <summary>The uid and gid that build steps run as, after RunAs was resolved against the image.</summary>
    public string? RunAsUID => _spec.RunAsUID;
    public string? RunAsGID => _spec.RunAsGID;

    private PodRuntimeView View => _runtime?.View ?? PodRuntimeView.None;

    // qemu runtime state (null for bubblewrap).
    public string? SshAddress => View.SshAddress;
    public string? SshControlAddress => View.SshControlAddress;
    public PodSshClient? BuildClient => View.BuildClient;
    public PodSshClient? ControlClient => View.ControlClient;
    public PodSshClient? ControlBuildClient => View.ControlBuildClient;
    public int? QemuPid => View.QemuPid;
    public int? VirtiofsdPid => View.VirtiofsdPid;

    /// <summary>Set when the engine created the workspace, so that stopping removes it.</summary>
    internal bool OwnsWorkspace => _workspaceWatch is not null;

    /// <summary>
    /// What starting <paramref name="config"/> on <paramref name="runnerName"/> (default: the
    /// image's runner) would run. Without a workspace in the config, a placeholder path stands
    /// for the one Start-MelangePod would make.
    /// </summary>
    public static PodPlan Plan(string? runnerName, PodConfig config, ImageInfo image)
    {
        var runner = RunnerRegistry.Get(runnerName ?? image.Runner);
        var spec = PodSpec.From(config);
        if (string.IsNullOrEmpty(spec.WorkspaceDir))
            spec = spec with { WorkspaceDir = Path.Combine(Path.GetTempPath(), NewWorkspacePlaceholder) };
        return runner.Plan(spec, image);
    }

    /// <summary>
    /// Starts a pod of <paramref name="runnerName"/> (default: the runner the image was imported
    /// for). Without a workspace in the config, the pod gets a fresh one that it removes when stopped.
    /// </summary>
    public static Task<Pod> StartAsync(string? runnerName, PodConfig config, ImageInfo image, IEventSink events, CancellationToken cancellationToken) =>
        StartAsync(RunnerRegistry.Get(runnerName ?? image.Runner), config, image, events, cancellationToken);

    /// <summary><see cref="StartAsync(string?, PodConfig, ImageInfo, IEventSink, CancellationToken)"/> on a given runner (tests use a fake one).</summary>
    internal static async Task<Pod> StartAsync(IRunner runner, PodConfig config, ImageInfo image, IEventSink events, CancellationToken cancellationToken)
    {
        var spec = PodSpec.From(config);
        if (image.Runner != runner.Name)
            throw new MelangeException(ErrorKind.InvalidArgument, "WrongImageRunner",
                $"The image {image.Ref} was imported for the {image.Runner} runner, not for {runner.Name}.",
                $"Import it again with -Runner {runner.Name}.", image);
        if (!runner.ImageLoader.IsPresent(image))
            throw new MelangeException(ErrorKind.ObjectNotFound, "ImageRemoved",
                $"The image {image.Ref} no longer exists.", "Import the image again with Import-MelangeImage.", image);

        var ownsWorkspace = string.IsNullOrEmpty(spec.WorkspaceDir);
        spec = spec with
        {
            WorkspaceDir = ownsWorkspace
                ? Directory.CreateTempSubdirectory("melange-workspace-").FullName
                : Directory.CreateDirectory(spec.WorkspaceDir!).FullName,
        };
        var pod = new Pod(runner, spec, image);
        pod._workspaceWatch = ownsWorkspace ? HostProcess.Reaper.WatchPath(spec.WorkspaceDir) : null;
        try
        {
            pod._runtime = await runner.StartAsync(new PodStartRequest(pod.Id, spec, image), events, cancellationToken).ConfigureAwait(false);
            pod._spec = pod._runtime.Spec;
            pod._state = PodState.Running;
            pod.StartedAt = DateTimeOffset.Now;
            return pod;
        }
        catch
        {
            pod._state = PodState.Failed;
            pod.RemoveOwnWorkspace(events);
            throw;
        }
    }

    /// <summary>melange's Run: the command's output goes to <paramref name="events"/>; returns its exit status.</summary>
    public Task<int> RunAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken) =>
        RequireRunning().RunAsync(environment, command, events, cancellationToken);

    /// <summary>
    /// <see cref="RunAsync(IReadOnlyDictionary{string, string}?, IReadOnlyList{string}, IEventSink, CancellationToken)"/>
    /// bounded by <paramref name="timeout"/> (zero or less: none). Past it the step is cancelled as
    /// Ctrl+C cancels it (bubblewrap: the sandbox's process tree is killed; qemu: the remote
    /// process group gets SIGTERM, then SIGKILL), so the pod stays usable, and the call fails
    /// with CommandTimedOut. This is per call; <see cref="PodConfig.Timeout"/> bounds the pod.
    /// </summary>
    public async Task<int> RunAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, TimeSpan timeout, IEventSink events, CancellationToken cancellationToken)
    {
        if (timeout <= TimeSpan.Zero) return await RunAsync(environment, command, events, cancellationToken).ConfigureAwait(false);
        var runtime = RequireRunning();
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(timeout);
        try
        {
            return await runtime.RunAsync(environment, command, events, limit.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException e) when (limit.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            throw new MelangeException(ErrorKind.OperationTimeout, "CommandTimedOut",
                $"The command '{string.Join(' ', command)}' ran past its time limit of {timeout} and was ended.",
                "Raise -Timeout, or make the step do less.", Id, e);
        }
    }

    /// <summary>melange's Debug: an interactive command on the caller's terminal.</summary>
    public Task<int> DebugAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken)
    {
        if (_runtime is not null and not IInteractivePodRuntime)
            throw new MelangeException(ErrorKind.InvalidOperation, "NoInteractiveSession",
                $"The {Runner} runner has no interactive sessions.", "Use Invoke-MelangePod instead.", this);
        return ((IInteractivePodRuntime)RequireRunning()).DebugAsync(environment, command, events, cancellationToken);
    }

    /// <summary>melange's WorkspaceTar.</summary>
    public Task<Stream> WorkspaceTarAsync(IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken cancellationToken) =>
        RequireRunning().WorkspaceTarAsync(extraFiles, events, cancellationToken);

    /// <summary>melange's GetReleaseData.</summary>
    public async Task<ReleaseData> GetReleaseDataAsync(IEventSink events, CancellationToken cancellationToken) =>
        await RequireRunning().GetReleaseDataAsync(events, cancellationToken).ConfigureAwait(false)
        ?? throw new MelangeException(ErrorKind.ObjectNotFound, "NoOsRelease",
            "The image has no /etc/os-release or /usr/lib/os-release.", "Add an os-release file to the image.", ImageRef);

    /// <summary>Stops the pod; harmless when it is already stopped.</summary>
    public Task StopAsync(IEventSink? events = null, CancellationToken cancellationToken = default)
    {
        lock (_stopLock)
        {
            if (_state is PodState.Stopped or PodState.Stopping) return Task.CompletedTask;
            _state = PodState.Stopping;
        }
        return StopCoreAsync(events ?? NullEventSink.Instance, cancellationToken);
    }

    private async Task StopCoreAsync(IEventSink events, CancellationToken cancellationToken)
    {
        try
        {
            if (_runtime is { } runtime) await runtime.StopAsync(events, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            RemoveOwnWorkspace(events);
            _state = PodState.Stopped;
        }
    }

    private void RemoveOwnWorkspace(IEventSink events)
    {
        if (!OwnsWorkspace || _spec.WorkspaceDir is not { } ws) return;
        try
        {
            Workspace.DeleteTree(ws);
            _workspaceWatch!.Dispose();
            _workspaceWatch = null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            events.Warning($"Could not remove the pod's workspace {ws}: {e.Message}");
        }
    }

    /// <summary>The runtime of a running pod; PodNotRunning otherwise (a pod whose runtime reports a failure is Failed).</summary>
    private IPodRuntime RequireRunning()
    {
        var state = State;
        if (state != PodState.Running || _runtime is null)
            throw new MelangeException(ErrorKind.InvalidOperation, "PodNotRunning",
                $"The pod {Id} is {state.ToString().ToLowerInvariant()}.", "Start a new pod with Start-MelangePod.", this);
        return _runtime;
    }

    public void Dispose() => StopAsync().GetAwaiter().GetResult();

    public override string ToString() => $"{Id} ({Runner}, {State})";
}
