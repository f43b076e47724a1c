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
public sealed class Pod : IDisposable
{
    private readonly object _stopLock = new();

    internal Pod(IRunner runner, PodConfig config, ImageInfo image)
    {
        RunnerImplementation = runner;
        Config = config;
        Image = image;
        Id = "melange-" + Convert.ToHexString(RandomNumberGenerator.GetBytes(6)).ToLowerInvariant();
    }

    public string Id { get; }
    public string Runner => RunnerImplementation.Name;
    public PodState State { get; internal set; } = PodState.Starting;
    public string ImageRef => Image.Ref;
    public ImageInfo Image { get; }
    public PodConfig Config { get; }
    public DateTimeOffset? StartedAt { get; internal set; }

    /// <summary>The host workspace directory (created for the pod when the config named none).</summary>
    public string WorkspaceDir => Config.WorkspaceDir ?? "";

    /// <summary>The uid and gid that build steps run as, after RunAs was resolved against the image.</summary>
    public string? RunAsUID => Config.RunAsUID;
    public string? RunAsGID => Config.RunAsGID;

    // qemu runtime state (null for bubblewrap).
    public string? SshAddress { get; internal set; }
    public string? SshControlAddress { get; internal set; }
    public PodSshClient? BuildClient { get; internal set; }
    public PodSshClient? ControlClient { get; internal set; }
    public PodSshClient? ControlBuildClient { get; internal set; }
    public int? QemuPid { get; internal set; }
    public int? VirtiofsdPid { get; internal set; }

    internal IRunner RunnerImplementation { get; }

    /// <summary>Set when the engine created the workspace, so that stopping removes it.</summary>
    internal bool OwnsWorkspace => _workspaceWatch is not null;

    // The reaper's registration of a workspace the engine created (removed if the process dies).
    private HostProcess.Reaper.Registration? _workspaceWatch;

    /// <summary>Runner-specific state that must not be shown (temp paths, keys).</summary>
    internal object? RunnerState { get; set; }

    /// <summary>
    /// Starts a pod of <paramref name="runnerName"/> (default: the runner the image was imported
    /// for). Without a workspace in the config, the pod gets a fresh one that it removes when stopped.
    /// </summary>
    public static async Task<Pod> StartAsync(string? runnerName, PodConfig config, ImageInfo image, IEventSink events, CancellationToken cancellationToken)
    {
        var runner = RunnerRegistry.Get(runnerName ?? image.Runner);
        config = config.Clone();
        config.Validate();
        var ownsWorkspace = string.IsNullOrEmpty(config.WorkspaceDir);
        config.WorkspaceDir = ownsWorkspace
            ? Directory.CreateTempSubdirectory("melange-workspace-").FullName
            : Directory.CreateDirectory(config.WorkspaceDir!).FullName;
        var workspaceWatch = ownsWorkspace ? HostProcess.Reaper.WatchPath(config.WorkspaceDir) : null;
        try
        {
            var pod = await runner.StartPodAsync(config, image, events, cancellationToken).ConfigureAwait(false);
            pod._workspaceWatch = workspaceWatch;
            return pod;
        }
        catch
        {
            if (ownsWorkspace) Workspace.DeleteTree(config.WorkspaceDir);
            workspaceWatch?.Dispose();
            throw;
        }
    }

    /// <summary>melange's Run: the command's output goes to <paramref name="events"/>; returns its exit status.</summary>
    public Task<int> RunAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken) =>
        RunnerImplementation.RunAsync(this, environment, command, events, cancellationToken);

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
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(timeout);
        try
        {
            return await RunnerImplementation.RunAsync(this, environment, command, events, limit.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException e) when (limit.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            throw new MelangeException(ErrorKind.OperationTimeout, "CommandTimedOut",
                $"The command '{string.Join(' ', command)}' ran past its time limit of {timeout} and was ended.",
                "Raise -Timeout, or make the step do less.", Id, e);
        }
    }

    /// <summary>melange's Debug: an interactive command on the caller's terminal.</summary>
    public Task<int> DebugAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken) =>
        RunnerImplementation is IDebugger debugger
            ? debugger.DebugAsync(this, environment, command, events, cancellationToken)
            : throw new MelangeException(ErrorKind.InvalidOperation, "NoInteractiveSession",
                $"The {Runner} runner has no interactive sessions.", "Use Invoke-MelangePod instead.", this);

    /// <summary>melange's WorkspaceTar.</summary>
    public Task<Stream> WorkspaceTarAsync(IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken cancellationToken) =>
        RunnerImplementation.WorkspaceTarAsync(this, extraFiles, events, cancellationToken);

    /// <summary>melange's GetReleaseData.</summary>
    public Task<ReleaseData> GetReleaseDataAsync(IEventSink events, CancellationToken cancellationToken) =>
        RunnerImplementation.GetReleaseDataAsync(this, events, cancellationToken);

    /// <summary>Stops the pod; harmless when it is already stopped.</summary>
    public Task StopAsync(IEventSink? events = null, CancellationToken cancellationToken = default)
    {
        lock (_stopLock)
        {
            if (State is PodState.Stopped or PodState.Stopping) return Task.CompletedTask;
            State = PodState.Stopping;
        }
        return StopCoreAsync(events ?? NullEventSink.Instance, cancellationToken);
    }

    private async Task StopCoreAsync(IEventSink events, CancellationToken cancellationToken)
    {
        try
        {
            await RunnerImplementation.TerminatePodAsync(this, events, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            if (OwnsWorkspace && Config.WorkspaceDir is { } ws)
            {
                try
                {
                    Workspace.DeleteTree(ws);
                    _workspaceWatch!.Dispose();
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    events.Warning($"Could not remove the pod's workspace {ws}: {e.Message}");
                }
            }
            State = PodState.Stopped;
        }
    }

    public void Dispose() => StopAsync().GetAwaiter().GetResult();

    public override string ToString() => $"{Id} ({Runner}, {State})";
}
