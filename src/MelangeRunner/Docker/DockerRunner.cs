namespace MelangeRunner.Docker;

/// <summary>
/// melange's docker runner (pkg/container/docker), as a thin adapter: the pod's state and
/// every operation live in <see cref="DockerPodRuntime"/>, kept in <c>Pod.RunnerState</c>.
/// </summary>
public sealed class DockerRunner : IRunner, IDebugger
{
    private readonly DockerImageLoader _loader = new();

    public string Name => Runners.Docker;

    public IImageLoader ImageLoader => _loader;

    /// <summary>Usable when an engine answers a ping (DOCKER_HOST, else the default socket); the reason says what to start otherwise.</summary>
    public RunnerInfo Probe() => DockerEngine.PingError() is { } why
        ? new RunnerInfo(Name, false, why, null)
        : new RunnerInfo(Name, true, null, null);

    public PodPlan Plan(PodConfig config, ImageInfo image)
    {
        RequireImage(image);
        return DockerPodPlanner.Plan(config, image);
    }

    public async Task<Pod> StartPodAsync(PodConfig config, ImageInfo image, IEventSink events, CancellationToken cancellationToken)
    {
        RequireImage(image);
        var pod = new Pod(this, config, image);
        try
        {
            var runtime = await DockerPodRuntime.StartAsync(pod.Id, config, image, events, cancellationToken).ConfigureAwait(false);
            pod.RunnerState = runtime;
            pod.State = PodState.Running;
            pod.StartedAt = DateTimeOffset.Now;
            return pod;
        }
        catch
        {
            pod.State = PodState.Failed;
            throw;
        }
    }

    public Task<int> RunAsync(Pod pod, IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken) =>
        Runtime(pod).RunAsync(environment, command, events, cancellationToken);

    public Task<int> DebugAsync(Pod pod, IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken) =>
        Runtime(pod).DebugAsync(environment, command, events, cancellationToken);

    public Task<Stream> WorkspaceTarAsync(Pod pod, IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken cancellationToken) =>
        Runtime(pod).WorkspaceTarAsync(extraFiles, events, cancellationToken);

    public Task<ReleaseData> GetReleaseDataAsync(Pod pod, IEventSink events, CancellationToken cancellationToken) =>
        Runtime(pod).GetReleaseDataAsync(cancellationToken);

    public Task TerminatePodAsync(Pod pod, IEventSink events, CancellationToken cancellationToken) =>
        pod.RunnerState is DockerPodRuntime runtime ? runtime.TerminateAsync(events, cancellationToken) : Task.CompletedTask;

    private static DockerPodRuntime Runtime(Pod pod) =>
        pod.State == PodState.Running && pod.RunnerState is DockerPodRuntime runtime
            ? runtime
            : throw new MelangeException(ErrorKind.InvalidOperation, "PodNotRunning",
                $"The pod {pod.Id} is {pod.State.ToString().ToLowerInvariant()}.", "Start a new pod with Start-MelangePod.", pod);

    private void RequireImage(ImageInfo image)
    {
        if (image.Runner != Name)
            throw new MelangeException(ErrorKind.InvalidArgument, "WrongImageRunner",
                $"The image {image.Ref} was imported for the {image.Runner} runner, not for {Name}.",
                $"Import it again with -Runner {Name}.", image);
    }
}
