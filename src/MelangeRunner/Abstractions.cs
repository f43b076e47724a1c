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

    /// <summary>qemu: how a start would get a running guest: "restore from template …" or "cold boot (why)".</summary>
    public string? StartPath { get; init; }

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

    /// <summary>
    /// Whether the image is still there, checked before a start (ImageRemoved otherwise). Images
    /// on the host's disk by default; a runner whose images live in an engine answers at start.
    /// </summary>
    bool IsPresent(ImageInfo image) => File.Exists(image.Ref) || Directory.Exists(image.Ref);
}

/// <summary>What a runner needs to start one pod.</summary>
/// <param name="PodId">The pod's id, for messages and names on the host.</param>
/// <param name="Spec">The checked config, its workspace directory made and absolute.</param>
/// <param name="Image">An image imported for this runner that still exists.</param>
public sealed record PodStartRequest(string PodId, PodSpec Spec, ImageInfo Image);

/// <summary>
/// melange's Runner, as a factory: one way of running build steps in a throwaway environment.
/// <see cref="Pod"/> checks what every runner would check (the image's runner, that it still
/// exists, the spec) before it calls <see cref="StartAsync"/>, and the pod's state before every
/// call into the <see cref="IPodRuntime"/> it returns.
/// </summary>
public interface IRunner
{
    string Name { get; }

    /// <summary>melange's TestUsability, with the reason when it is not usable, and TempDir.</summary>
    RunnerInfo Probe();

    IImageLoader ImageLoader { get; }

    /// <summary>What <see cref="StartAsync"/> would run, computed without running anything (Get-MelangePodPlan).</summary>
    PodPlan Plan(PodSpec spec, ImageInfo image);

    /// <summary>melange's StartPod: the pod is running when the returned runtime is.</summary>
    Task<IPodRuntime> StartAsync(PodStartRequest request, IEventSink events, CancellationToken cancellationToken);
}

/// <summary>
/// One running pod of one runner: it owns everything the pod holds on the host (processes,
/// connections, files, keys) and gives it back in <see cref="StopAsync"/>. Only
/// <see cref="Pod"/> calls it, and only while the pod is running (StopAsync aside).
/// </summary>
public interface IPodRuntime
{
    /// <summary>The spec the pod runs with (the runner may have resolved RunAs to ids).</summary>
    PodSpec Spec { get; }

    /// <summary>What users may see of the runtime (endpoints, process ids); never keys or connections.</summary>
    PodRuntimeView View { get; }

    /// <summary>Why the pod stopped working on its own (a VM that died), or null while it works.</summary>
    string? FailureReason { get; }

    /// <summary>melange's Run: streams the command's output to <paramref name="events"/>; returns its exit status.</summary>
    Task<int> RunAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken);

    /// <summary>melange's WorkspaceTar: melange-out, the extra files and the license files (<see cref="Workspace.IsLicenseFile"/>).</summary>
    Task<Stream> WorkspaceTarAsync(IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken cancellationToken);

    /// <summary>melange's GetReleaseData: the build environment's os-release, or null when it has none.</summary>
    Task<ReleaseData?> GetReleaseDataAsync(IEventSink events, CancellationToken cancellationToken);

    /// <summary>melange's TerminatePod and Close; called once, also after a failure.</summary>
    Task StopAsync(IEventSink events, CancellationToken cancellationToken);
}

/// <summary>melange's Debugger: a runtime that has interactive sessions on the caller's terminal.</summary>
public interface IInteractivePodRuntime : IPodRuntime
{
    Task<int> DebugAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken);
}

/// <summary>The user-facing part of a runtime, shown on <see cref="Pod"/>; everything is optional.</summary>
public sealed record PodRuntimeView
{
    public static PodRuntimeView None { get; } = new();

    public string? SshAddress { get; init; }
    public string? SshControlAddress { get; init; }
    public PodSshClient? BuildClient { get; init; }
    public PodSshClient? ControlClient { get; init; }
    public PodSshClient? ControlBuildClient { get; init; }
    public int? QemuPid { get; init; }
    public int? VirtiofsdPid { get; init; }
}
