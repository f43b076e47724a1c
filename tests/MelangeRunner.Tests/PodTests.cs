using Xunit;

namespace MelangeRunner.Tests;

/// <summary>The checks Pod makes once for every runner, against a runner that records what reaches it.</summary>
public sealed class PodTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("melange-podtests-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private ImageInfo Image(string runner = "fake") => new() { Runner = runner, Ref = _dir, Arch = "x86_64", Source = _dir };

    private sealed class FakeRuntime(PodSpec spec) : IPodRuntime
    {
        public PodSpec Spec { get; } = spec;
        public PodRuntimeView View { get; } = new() { SshAddress = "127.0.0.1:1" };
        public string? FailureReason { get; set; }
        public ReleaseData? Release { get; set; }
        public int Runs { get; private set; }
        public int Stops { get; private set; }

        public Task<int> RunAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken ct)
        {
            Runs++;
            return command[0] == "sleep" ? Task.Delay(Timeout.Infinite, ct).ContinueWith(_ => 0, ct) : Task.FromResult(7);
        }

        public Task<Stream> WorkspaceTarAsync(IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken ct) => Task.FromResult<Stream>(new MemoryStream());
        public Task<ReleaseData?> GetReleaseDataAsync(IEventSink events, CancellationToken ct) => Task.FromResult(Release);

        public Task StopAsync(IEventSink events, CancellationToken ct)
        {
            Stops++;
            return Task.CompletedTask;
        }
    }

    // Images on disk, as the default IImageLoader.IsPresent checks them.
    private sealed class FakeImageLoader : IImageLoader
    {
        public Task<ImageInfo> LoadImageAsync(string path, string? arch, IEventSink events, CancellationToken ct) => throw new NotSupportedException();
        public Task RemoveImageAsync(ImageInfo image, CancellationToken ct) => throw new NotSupportedException();
    }

    private sealed class FakeRunner : IRunner
    {
        public FakeRuntime? Runtime { get; private set; }
        public PodStartRequest? Request { get; private set; }
        public bool Fail { get; init; }
        public string Name => "fake";
        public RunnerInfo Probe() => new(Name, true, null, null);
        public IImageLoader ImageLoader { get; } = new FakeImageLoader();
        public PodPlan Plan(PodSpec spec, ImageInfo image) => throw new NotSupportedException();

        public Task<IPodRuntime> StartAsync(PodStartRequest request, IEventSink events, CancellationToken ct)
        {
            Request = request;
            if (Fail) throw new MelangeException(ErrorKind.InvalidOperation, "PodStartFailed", "no");
            return Task.FromResult<IPodRuntime>(Runtime = new FakeRuntime(request.Spec with { RunAsUID = "42" }));
        }
    }

    [Fact]
    public async Task ARunnerGetsACheckedSpecWithAWorkspaceAndThePodShowsWhatTheRuntimeResolved()
    {
        var runner = new FakeRunner();
        var config = new PodConfig { Capabilities = new Capabilities { Add = new[] { "net_admin" } } };
        using var pod = await Pod.StartAsync(runner, config, Image(), NullEventSink.Instance, default);
        Assert.Equal(PodState.Running, pod.State);
        Assert.Equal(pod.Id, runner.Request!.PodId);
        Assert.True(Directory.Exists(runner.Request.Spec.WorkspaceDir));
        Assert.Equal(new[] { "CAP_NET_ADMIN" }, runner.Request.Spec.Capabilities.Add);
        Assert.Equal(new[] { "net_admin" }, config.Capabilities.Add); // the caller's config is not changed
        Assert.Null(config.WorkspaceDir);
        Assert.Equal("42", pod.RunAsUID);
        Assert.Equal("127.0.0.1:1", pod.SshAddress);
        Assert.Equal(7, await pod.RunAsync(null, new[] { "true" }, NullEventSink.Instance, default));
        var workspace = pod.WorkspaceDir;
        await pod.StopAsync();
        await pod.StopAsync();
        Assert.Equal(1, runner.Runtime!.Stops);
        Assert.Equal(PodState.Stopped, pod.State);
        Assert.False(Directory.Exists(workspace)); // the pod made it, the pod removes it
        Assert.Equal("PodNotRunning", (await Assert.ThrowsAsync<MelangeException>(() => pod.RunAsync(null, new[] { "true" }, NullEventSink.Instance, default))).ErrorId);
    }

    [Fact]
    public async Task TheImageMustBeTheRunnersAndStillExist()
    {
        var runner = new FakeRunner();
        Assert.Equal("WrongImageRunner", (await Assert.ThrowsAsync<MelangeException>(() => Pod.StartAsync(runner, new PodConfig(), Image("other"), NullEventSink.Instance, default))).ErrorId);
        var missing = new ImageInfo { Runner = "fake", Ref = Path.Combine(_dir, "gone"), Arch = "x86_64", Source = _dir };
        Assert.Equal("ImageRemoved", (await Assert.ThrowsAsync<MelangeException>(() => Pod.StartAsync(runner, new PodConfig(), missing, NullEventSink.Instance, default))).ErrorId);
        Assert.Equal("BadCpu", (await Assert.ThrowsAsync<MelangeException>(() => Pod.StartAsync(runner, new PodConfig { CPU = "x" }, Image(), NullEventSink.Instance, default))).ErrorId);
        Assert.Null(runner.Request); // none of these reached the runner
    }

    [Fact]
    public async Task AFailedStartRemovesTheWorkspaceItMade()
    {
        var runner = new FakeRunner { Fail = true };
        await Assert.ThrowsAsync<MelangeException>(() => Pod.StartAsync(runner, new PodConfig(), Image(), NullEventSink.Instance, default));
        Assert.False(Directory.Exists(runner.Request!.Spec.WorkspaceDir));
    }

    [Fact]
    public async Task ARuntimeThatReportsAFailureMakesThePodFailedAndTheSharedErrorsComeFromThePod()
    {
        var runner = new FakeRunner();
        using var pod = await Pod.StartAsync(runner, new PodConfig(), Image(), NullEventSink.Instance, default);
        Assert.Equal("NoOsRelease", (await Assert.ThrowsAsync<MelangeException>(() => pod.GetReleaseDataAsync(NullEventSink.Instance, default))).ErrorId);
        Assert.Equal("NoInteractiveSession", (await Assert.ThrowsAsync<MelangeException>(() => pod.DebugAsync(null, new[] { "sh" }, NullEventSink.Instance, default))).ErrorId);
        Assert.Equal("CommandTimedOut", (await Assert.ThrowsAsync<MelangeException>(() => pod.RunAsync(null, new[] { "sleep" }, TimeSpan.FromMilliseconds(50), NullEventSink.Instance, default))).ErrorId);
        runner.Runtime!.FailureReason = "the VM died";
        Assert.Equal(PodState.Failed, pod.State);
        Assert.Equal("PodNotRunning", (await Assert.ThrowsAsync<MelangeException>(() => pod.RunAsync(null, new[] { "true" }, NullEventSink.Instance, default))).ErrorId);
        pod.Dispose();
        Assert.Equal(PodState.Stopped, pod.State);
        Assert.Equal(1, runner.Runtime.Stops);
    }
}
