using MelangeRunner.Bubblewrap;

namespace MelangeRunner;

/// <summary>The runners this engine has, by name.</summary>
public static class RunnerRegistry
{
    private static readonly Dictionary<string, Lazy<IRunner>> ByName = new(StringComparer.OrdinalIgnoreCase)
    {
        [Runners.Bubblewrap] = new(() => new BubblewrapRunner()),
        // Images for qemu can already be prepared; starting VMs comes with the qemu runner.
        [Runners.Qemu] = new(() => new UnavailableRunner(Runners.Qemu,
            "The qemu runner cannot start pods in this version of MelangeRunner.", new Qemu.QemuImageLoader())),
    };

    /// <summary>The runner called <paramref name="name"/>; an unknown name is an error listing the known ones.</summary>
    public static IRunner Get(string name)
    {
        if (ByName.TryGetValue(name ?? "", out var runner)) return runner.Value;
        throw new MelangeException(ErrorKind.InvalidArgument, "UnknownRunner",
            $"'{name}' is not a runner.", $"Use one of: {string.Join(", ", Runners.All)}.", name);
    }

    public static IEnumerable<IRunner> All => Runners.All.Select(Get);
}

/// <summary>A runner that this build cannot offer; every operation says why.</summary>
internal sealed class UnavailableRunner : IRunner
{
    private readonly string _reason;

    public UnavailableRunner(string name, string reason, IImageLoader imageLoader)
    {
        Name = name;
        _reason = reason;
        ImageLoader = imageLoader;
    }

    public string Name { get; }
    public IImageLoader ImageLoader { get; }
    public RunnerInfo Probe() => new(Name, false, _reason, null);

    private MelangeException Unavailable() =>
        new(ErrorKind.NotInstalled, "RunnerUnavailable", _reason, $"Use -Runner {Runners.Bubblewrap}.", Name);

    public PodPlan Plan(PodConfig config, ImageInfo image) => throw Unavailable();
    public Task<Pod> StartPodAsync(PodConfig config, ImageInfo image, IEventSink events, CancellationToken cancellationToken) => throw Unavailable();
    public Task<int> RunAsync(Pod pod, IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken) => throw Unavailable();
    public Task TerminatePodAsync(Pod pod, IEventSink events, CancellationToken cancellationToken) => Task.CompletedTask;
    public Task<Stream> WorkspaceTarAsync(Pod pod, IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken cancellationToken) => throw Unavailable();
    public Task<ReleaseData> GetReleaseDataAsync(Pod pod, IEventSink events, CancellationToken cancellationToken) => throw Unavailable();
}
