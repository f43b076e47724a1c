namespace MelangeRunner.Docker;

/// <summary>
/// melange's docker runner (pkg/container/docker), as a thin factory: the pod's state and
/// every operation live in the <see cref="DockerPodRuntime"/> it starts.
/// </summary>
public sealed class DockerRunner : IRunner
{
    private readonly DockerImageLoader _loader = new();

    public string Name => Runners.Docker;

    public IImageLoader ImageLoader => _loader;

    /// <summary>Usable when an engine answers a ping (DOCKER_HOST, else the default socket); the reason says what to start otherwise.</summary>
    public RunnerInfo Probe() => DockerEngine.PingError() is { } why
        ? new RunnerInfo(Name, false, why, null)
        : new RunnerInfo(Name, true, null, null);

    public PodPlan Plan(PodSpec spec, ImageInfo image)
    {
        RequireImage(image);
        return DockerPodPlanner.Plan(spec, image);
    }

    public async Task<IPodRuntime> StartAsync(PodStartRequest request, IEventSink events, CancellationToken cancellationToken) =>
        await DockerPodRuntime.StartAsync(request.PodId, request.Spec, request.Image, events, cancellationToken).ConfigureAwait(false);

    private void RequireImage(ImageInfo image)
    {
        if (image.Runner != Name)
            throw new MelangeException(ErrorKind.InvalidArgument, "WrongImageRunner",
                $"The image {image.Ref} was imported for the {image.Runner} runner, not for {Name}.",
                $"Import it again with -Runner {Name}.", image);
    }
}
