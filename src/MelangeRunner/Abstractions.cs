namespace MelangeRunner;

/// <summary>Progress of a long operation (image import, VM boot, export).</summary>
public sealed record ProgressReport(string Activity, string Status, long Done, long? Total);

/// <summary>
/// Where the engine reports what happens while it works. Calls may come from any thread;
/// the PowerShell layer queues them and writes them on the pipeline thread.
/// </summary>
public interface IEventSink
{
    /// <summary>Detail for -Verbose: exact command lines, decisions taken.</summary>
    void Verbose(string message);

    /// <summary>Something the user should know that does not stop the work (a skipped tar entry).</summary>
    void Warning(string message);

    void Progress(ProgressReport report);

    /// <summary>One line that the command in the pod wrote to standard output.</summary>
    void StandardOutput(string line);

    /// <summary>One line that the command in the pod wrote to standard error.</summary>
    void StandardError(string line);
}

/// <summary>An event sink that drops everything (for callers that do not listen).</summary>
public sealed class NullEventSink : IEventSink
{
    public static NullEventSink Instance { get; } = new();
    public void Verbose(string message) { }
    public void Warning(string message) { }
    public void Progress(ProgressReport report) { }
    public void StandardOutput(string line) { }
    public void StandardError(string line) { }
}

/// <summary>Whether a runner can be used on this host, and why not.</summary>
public sealed record RunnerInfo(string Name, bool IsUsable, string? Reason, string? TempDir)
{
    /// <summary>qemu: the accelerator pods would boot with ("kvm" or "tcg"), as the environment stands.</summary>
    public string? Accelerator { get; init; }
}

/// <summary>An image loaded for one runner (melange's image ref plus what it came from).</summary>
public sealed class ImageInfo
{
    public required string Runner { get; init; }

    /// <summary>What the runner starts pods from: a guest directory (bubblewrap) or a rootfs tar (qemu).</summary>
    public required string Ref { get; init; }

    public required string Arch { get; init; }

    /// <summary>The path the image was imported from.</summary>
    public required string Source { get; init; }

    /// <summary>What the source was found to be (layer tar, OCI layout, docker save archive…).</summary>
    public string? SourceKind { get; init; }

    /// <summary>The image config's Env ("K=V", in order) from an OCI layout or archive or a docker save archive; every step gets it under the pod's own environment.</summary>
    public string[] Env { get; init; } = Array.Empty<string>();

    public override string ToString() => Ref;
}

/// <summary>The process that starting a pod (or running a command in it) amounts to, without running it.</summary>
public sealed class PodPlan
{
    public required string Runner { get; init; }
    public required string FileName { get; init; }
    public required string[] Arguments { get; init; }
    public string? KernelCommandLine { get; init; }
    public int? Cpus { get; init; }
    public long? MemoryKiB { get; init; }

    /// <summary>qemu: "kvm" or "tcg", and why (the host's evidence, or what the user pinned).</summary>
    public string? Accelerator { get; init; }
    public string? AcceleratorReason { get; init; }

    /// <summary>docker: the container create request as the engine receives it (JSON), and the engine's address.</summary>
    public string? CreateRequest { get; init; }
    public string? Endpoint { get; init; }

    /// <summary>The command line, shell-quoted, as -Verbose shows it.</summary>
    public string CommandLine => ShellQuote.Join(new[] { FileName }.Concat(Arguments));

    public override string ToString() => CommandLine;
}

/// <summary>melange's Loader: turns an image on disk into something a runner starts pods from.</summary>
public interface IImageLoader
{
    Task<ImageInfo> LoadImageAsync(string path, string? arch, IEventSink events, CancellationToken cancellationToken);
    Task RemoveImageAsync(ImageInfo image, CancellationToken cancellationToken);
}

/// <summary>melange's Runner: one way of running build steps in a throwaway environment.</summary>
public interface IRunner
{
    string Name { get; }

    /// <summary>melange's TestUsability, with the reason when it is not usable, and TempDir.</summary>
    RunnerInfo Probe();

    IImageLoader ImageLoader { get; }

    /// <summary>What <see cref="StartPodAsync"/> would run, computed without running anything.</summary>
    PodPlan Plan(PodConfig config, ImageInfo image);

    Task<Pod> StartPodAsync(PodConfig config, ImageInfo image, IEventSink events, CancellationToken cancellationToken);

    /// <summary>Runs a command in the pod, streaming its output to <paramref name="events"/>; returns its exit status.</summary>
    Task<int> RunAsync(Pod pod, IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken);

    Task TerminatePodAsync(Pod pod, IEventSink events, CancellationToken cancellationToken);

    /// <summary>A tar stream of melange-out, the extra files and the license files of the workspace.</summary>
    Task<Stream> WorkspaceTarAsync(Pod pod, IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken cancellationToken);

    Task<ReleaseData> GetReleaseDataAsync(Pod pod, IEventSink events, CancellationToken cancellationToken);
}

/// <summary>melange's Debugger: an interactive session on the caller's terminal.</summary>
public interface IDebugger
{
    Task<int> DebugAsync(Pod pod, IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken);
}
