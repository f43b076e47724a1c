using MelangeRunner.HostProcess;
namespace MelangeRunner.Bubblewrap;

/// <summary>
/// A running bubblewrap pod. Nothing runs between commands: every command is one bwrap run over
/// the image directory with the same vector, and the workspace is a host directory.
/// </summary>
internal sealed class BubblewrapPodRuntime(string podId, PodSpec spec, ImageInfo image) : IInteractivePodRuntime
{
    public PodSpec Spec { get; } = spec;

    public PodRuntimeView View => PodRuntimeView.None;

    public string? FailureReason => null;

    public string PodId { get; } = podId;

    /// <summary>A set-up command: its standard output goes to Verbose.</summary>
    internal Task<int> RunSetupAsync(IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken)
    {
        var plan = BubblewrapRunner.PlanCommand(Spec, image, interactive: false, null, command);
        return HostCommand.RunAsync(plan.FileName, plan.Arguments, events, cancellationToken, stdoutToVerbose: true);
    }

    public Task<int> RunAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken)
    {
        var plan = BubblewrapRunner.PlanCommand(Spec, image, interactive: false, environment, command);
        return HostCommand.RunAsync(plan.FileName, plan.Arguments, events, cancellationToken);
    }

    public Task<int> DebugAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken)
    {
        // On a terminal, bwrap runs on a host PTY of its own (script): it needs one, since melange
        // omits --new-session here for job control, and so the sandbox would otherwise share (and
        // could inject input into, or leave raw) the caller's terminal; the PTY gives it TERM, its
        // size and resizes. bwrap binds that PTY at /dev/console (its /dev/pts is the sandbox's
        // own instance), which is what `tty` prints. Redirected input (CI) keeps the plain bwrap run.
        var pty = HostTerminal.PtyHelperFor(events);
        if (!HostTerminal.StdinIsTerminal)
            events.Verbose("Standard input is not a terminal: bwrap runs on the caller's streams, without a terminal of its own or TERM.");
        var env = pty is null ? environment : HostTerminal.WithHostTerm(environment);
        var plan = BubblewrapRunner.PlanCommand(Spec, image, interactive: true, env, command);
        return HostCommand.RunInteractiveAsync(plan.FileName, plan.Arguments, events, cancellationToken, pty);
    }

    public Task<Stream> WorkspaceTarAsync(IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken cancellationToken) =>
        Task.FromResult(Workspace.TarOfHostDirectory(Spec.WorkspaceDir!, extraFiles, events, cancellationToken));

    public Task<ReleaseData?> GetReleaseDataAsync(IEventSink events, CancellationToken cancellationToken)
    {
        // The rootfs is a host directory: read it on the host, but as the sandbox sees it, so that
        // an image whose /etc points at the host's /etc reports its own os-release or none.
        cancellationToken.ThrowIfCancellationRequested();
        return Task.FromResult(ReleaseData.ReadFromImage(image.Ref));
    }

    /// <summary>Nothing runs between commands, so there is nothing to stop.</summary>
    public Task StopAsync(IEventSink events, CancellationToken cancellationToken) => Task.CompletedTask;
}
