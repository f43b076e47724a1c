using System.Formats.Tar;
using System.Text;
using Docker.DotNet;
using Docker.DotNet.Models;
using MelangeRunner.HostProcess;
using MelangeRunner.IO;

namespace MelangeRunner.Docker;

/// <summary>
/// One running docker pod: it owns the engine client and the container id, and does
/// everything a pod does (run, interactive session, workspace tar, release data, stop).
/// <see cref="DockerRunner"/> only makes it.
/// </summary>
internal sealed partial class DockerPodRuntime : IInteractivePodRuntime
{
    private const string PidMarker = "melange-runner-pid:";
    private static readonly TimeSpan KillGrace = TimeSpan.FromSeconds(3);

    private readonly DockerClient _client;
    private readonly PodSpec _spec;
    private readonly ImageInfo _image;
    private int _terminated;

    private DockerPodRuntime(DockerClient client, PodSpec spec, ImageInfo image, string containerId, string? user)
    {
        _client = client;
        _spec = spec;
        _image = image;
        ContainerId = containerId;
        User = user;
    }

    /// <summary>The engine's container id.</summary>
    public string ContainerId { get; }

    public PodSpec Spec => _spec;

    public PodRuntimeView View => PodRuntimeView.None;

    // The engine keeps the container up; a container that died shows as a failed exec.
    public string? FailureReason => null;

    /// <summary>The user steps run as (null: root).</summary>
    public string? User { get; }

    public string Endpoint { get; } = DockerEngine.EndpointText;

    /// <summary>Creates and starts the container, copies the workspace in and hands it to the build user. Nothing is left behind on failure.</summary>
    public static async Task<DockerPodRuntime> StartAsync(string name, PodSpec spec, ImageInfo image, IEventSink events, CancellationToken cancellationToken)
    {
        var client = DockerEngine.CreateClient();
        string? containerId = null;
        try
        {
            await DockerEngine.EnsureAnswersAsync(client, cancellationToken).ConfigureAwait(false);
            await SweepAsync(client, events, cancellationToken).ConfigureAwait(false);
            ImageInspectResponse inspect;
            try
            {
                inspect = await client.Images.InspectImageAsync(image.Ref, cancellationToken).ConfigureAwait(false);
            }
            catch (DockerApiException e) when ((int)e.StatusCode == 404)
            {
                throw new MelangeException(ErrorKind.ObjectNotFound, "ImageRemoved",
                    $"The engine at {DockerEngine.EndpointText} has no image {image.Ref}.", "Import the image again with Import-MelangeImage -Runner docker.", image, e);
            }
            var user = DockerPodPlanner.ExecUser(spec) ?? (inspect.Config?.User is { Length: > 0 } u ? u : null);
            if (DockerPodPlanner.IsRoot(user)) user = null;

            // An engine on this host's socket binds this host's paths: a missing source is named
            // here, as the other runners name it, rather than in the engine's create error. A remote
            // engine's paths are its own host's, which only the engine can check.
            if (DockerEngine.Endpoint().Scheme == "unix") BindMount.RequireSources(DockerPodPlanner.Mounts(spec), "-Mount or -CacheDir");
            var request = DockerPodPlanner.CreateRequest(spec, image, name);
            events.Verbose("Docker create request (" + DockerEngine.EndpointText + "): " + DockerPodPlanner.ToJson(request));
            events.Verbose("Equivalent to: " + ShellQuote.Join(new[] { "docker" }.Concat(DockerPodPlanner.RunArguments(request))));
            events.Progress(new ProgressReport("Starting docker pod", "Creating the container", 0, 3));
            try
            {
                containerId = (await client.Containers.CreateContainerAsync(request, cancellationToken).ConfigureAwait(false)).ID;
                await client.Containers.StartContainerAsync(containerId, new ContainerStartParameters(), cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not (OperationCanceledException or MelangeException))
            {
                throw new MelangeException(ErrorKind.InvalidOperation, "PodStartFailed",
                    $"The Docker engine could not start the pod's container: {(e is DockerApiException api ? DockerEngine.ApiMessage(api) : e.Message)}",
                    "Check the mounts (their sources must exist on the engine's host), the image and the limits; read the engine's log.", name, e);
            }
            var runtime = new DockerPodRuntime(client, spec, image, containerId, user);
            events.Verbose($"docker pod {name}: container {containerId[..12]} started; steps run as {user ?? "root"}.");

            events.Progress(new ProgressReport("Starting docker pod", "Copying the workspace in", 1, 3));
            await runtime.CopyWorkspaceInAsync(spec.WorkspaceDir!, events, cancellationToken).ConfigureAwait(false);
            events.Progress(new ProgressReport("Starting docker pod", "Ready", 3, 3));
            return runtime;
        }
        catch
        {
            // By name when the id never came back (cancelled while the engine was creating it).
            await TryRemoveContainerAsync(client, containerId ?? name).ConfigureAwait(false);
            client.Dispose();
            throw;
        }
    }

    /// <summary>Removes the containers of this module whose owner (a process of this host) has died without stopping them.</summary>
    private static async Task SweepAsync(DockerClient client, IEventSink events, CancellationToken cancellationToken)
    {
        IList<ContainerListResponse> list;
        try
        {
            list = await client.Containers.ListContainersAsync(new ContainersListParameters
            {
                All = true,
                Filters = new Dictionary<string, IDictionary<string, bool>> { ["label"] = new Dictionary<string, bool> { [DockerEngine.OwnerLabel] = true } },
            }, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            events.Verbose("Could not list leftover containers: " + e.Message);
            return;
        }
        foreach (var c in list)
        {
            if (c.Labels is null || !c.Labels.TryGetValue(DockerEngine.OwnerLabel, out var owner) || !DockerEngine.OwnerIsGone(owner)) continue;
            events.Verbose($"Removing container {c.ID[..12]}, left by process {owner}, which is gone.");
            await TryRemoveContainerAsync(client, c.ID).ConfigureAwait(false);
        }
    }

    /// <summary>Removal on a path that already has an error (or is best effort): nothing it throws may replace that error.</summary>
    private static async Task TryRemoveContainerAsync(DockerClient client, string id)
    {
        try { await RemoveContainerAsync(client, id).ConfigureAwait(false); }
        catch (Exception) { } // the engine went away: the owner label lets a later start sweep it
    }

    private static async Task RemoveContainerAsync(DockerClient client, string id)
    {
        try
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await client.Containers.RemoveContainerAsync(id, new ContainerRemoveParameters { Force = true, RemoveVolumes = true }, cts.Token).ConfigureAwait(false);
        }
        catch (DockerContainerNotFoundException) { }
        catch (DockerApiException e) when ((int)e.StatusCode == 404) { }
    }

    // ---- commands -------------------------------------------------------------------------

    /// <summary>Runs a step as the build user in /home/build, streaming its lines; Ctrl+C or the token ends it in the container.</summary>
    public Task<int> RunAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken) =>
        ExecAsync(User, environment, command, events, stdoutToVerbose: false, cancellationToken);

    /// <summary>A root command in /home/build with its combined output (the runner's own helpers).</summary>
    private async Task<(int Code, string Output)> CaptureAsync(IReadOnlyList<string> command, CancellationToken cancellationToken)
    {
        var sink = new CaptureSink();
        var code = await ExecAsync("0:0", null, command, sink, stdoutToVerbose: false, cancellationToken).ConfigureAwait(false);
        return (code, sink.Text);
    }

    private async Task<int> ExecAsync(string? user, IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, bool stdoutToVerbose, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var env = _spec.StepEnvironment(_image.Env, environment).Select(kv => kv.Key + "=" + kv.Value).ToList();
        // The shell reports its pid (the exec's session and process group, which runc makes
        // new) before it becomes the command, so that ending the step can kill that group in
        // the container: killing the API connection alone leaves the process running.
        var argv = new List<string> { "/bin/sh", "-c", $"echo {PidMarker}$$ >&2; exec \"$@\"", "melange-step" };
        argv.AddRange(command);
        events.Verbose("docker exec " + ContainerId[..12] + (user is null ? "" : " as " + user) + ": " + ShellQuote.Join(command));
        string execId;
        MultiplexedStream stream;
        try
        {
            execId = (await _client.Exec.CreateContainerExecAsync(ContainerId, new ContainerExecCreateParameters
            {
                User = user ?? "",
                Cmd = argv,
                Env = env,
                WorkingDir = Defaults.WorkspaceDir,
                AttachStdout = true,
                AttachStderr = true,
                TTY = false,
            }, cancellationToken).ConfigureAwait(false)).ID;
            stream = await _client.Exec.StartContainerExecAsync(execId, new ContainerExecStartParameters { Detach = false, TTY = false }, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not (OperationCanceledException or MelangeException))
        {
            throw DockerEngine.Failed("run a command in the pod", e, ContainerId);
        }

        var stdout = new LineSplitter(stdoutToVerbose ? events.Verbose : events.StandardOutput);
        string? pgid = null;
        var stderr = new LineSplitter(line =>
        {
            if (pgid is null && line.StartsWith(PidMarker, StringComparison.Ordinal)) { pgid = line[PidMarker.Length..]; return; }
            events.StandardError(line);
        });
        using (stream)
        {
            var buffer = new byte[81920];
            try
            {
                while (true)
                {
                    var r = await stream.ReadOutputAsync(buffer, 0, buffer.Length, cancellationToken).ConfigureAwait(false);
                    if (r.EOF) break;
                    if (r.Target == MultiplexedStream.TargetStream.StandardError) stderr.Add(buffer.AsSpan(0, r.Count));
                    else stdout.Add(buffer.AsSpan(0, r.Count));
                }
            }
            catch (Exception e) when (cancellationToken.IsCancellationRequested)
            {
                await EndStepAsync(pgid ?? stderr.PeekMarker(PidMarker), events).ConfigureAwait(false);
                throw new OperationCanceledException("The step was cancelled.", e, cancellationToken);
            }
            catch (Exception e) when (e is not MelangeException)
            {
                throw DockerEngine.Failed("read the command's output", e, ContainerId);
            }
        }
        stdout.Flush();
        stderr.Flush();
        var inspect = await _client.Exec.InspectContainerExecAsync(execId, CancellationToken.None).ConfigureAwait(false);
        return (int)(inspect.ExitCode ?? -1);
    }

    /// <summary>SIGTERM to the step's process group in the container, SIGKILL after a grace.</summary>
    private async Task EndStepAsync(string? pgid, IEventSink events)
    {
        if (pgid is null || !int.TryParse(pgid, out var group) || group <= 1) return;
        events.Verbose($"Ending the step: process group {group} in the container gets SIGTERM, then SIGKILL after {KillGrace.TotalSeconds:0} s.");
        var script = $"kill -TERM -{group} 2>/dev/null; i=0; while kill -0 -{group} 2>/dev/null && [ $i -lt {(int)KillGrace.TotalSeconds * 10} ]; do sleep 0.1; i=$((i+1)); done; kill -KILL -{group} 2>/dev/null; true";
        try
        {
            using var cts = new CancellationTokenSource(KillGrace + TimeSpan.FromSeconds(10));
            await ExecAsync("0:0", null, new[] { "/bin/sh", "-c", script }, NullEventSink.Instance, false, cts.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            events.Warning($"Could not end the step's processes in the container: {e.Message}");
        }
    }

    /// <summary>An interactive command: `docker exec -i [-t]` on the caller's terminal (the CLI handles raw mode and resizes); without the CLI, an exec whose output is streamed.</summary>
    public Task<int> DebugAsync(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken)
    {
        var cli = HostCommand.FindOnPath("docker");
        if (command.Count == 0) command = new[] { "/bin/sh" };
        if (cli is null)
        {
            events.Warning("The docker CLI is not on PATH: the command runs without a terminal of its own.");
            return RunAsync(environment, command, events, cancellationToken);
        }
        var tty = HostTerminal.StdinIsTerminal;
        var env = tty ? HostTerminal.WithHostTerm(environment) : environment;
        var args = new List<string> { "exec", "--interactive" };
        if (tty) args.Add("--tty");
        if (User is { } u) args.AddRange(new[] { "--user", u });
        args.AddRange(new[] { "--workdir", Defaults.WorkspaceDir });
        foreach (var (k, v) in _spec.StepEnvironment(_image.Env, env)) args.AddRange(new[] { "--env", k + "=" + v });
        args.Add(ContainerId);
        args.AddRange(command);
        return HostCommand.RunInteractiveAsync(cli, args, events, cancellationToken);
    }

    /// <summary>The container's os-release, or null when it has none (Pod reports NoOsRelease).</summary>
    public async Task<ReleaseData?> GetReleaseDataAsync(IEventSink events, CancellationToken cancellationToken)
    {
        var (code, output) = await CaptureAsync(new[] { "/bin/sh", "-c", "cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null" }, cancellationToken).ConfigureAwait(false);
        return code != 0 || string.IsNullOrWhiteSpace(output) ? null : ReleaseData.Parse(output);
    }

    /// <summary>Removes the container (and its anonymous volumes); harmless twice.</summary>
    public async Task StopAsync(IEventSink events, CancellationToken cancellationToken)
    {
        if (Interlocked.Exchange(ref _terminated, 1) != 0) return;
        try
        {
            await RemoveContainerAsync(_client, ContainerId).ConfigureAwait(false);
            events.Verbose($"Container {ContainerId[..12]} removed.");
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            events.Warning($"Could not remove the container {ContainerId[..12]} from {Endpoint}: {e.Message} (remove it with: docker rm -f {ContainerId[..12]}).");
        }
        finally
        {
            _client.Dispose();
        }
    }

    /// <summary>Collects output (stdout and stderr) of a helper command.</summary>
    private sealed class CaptureSink : IEventSink
    {
        private readonly StringBuilder _text = new();
        public string Text { get { lock (_text) return _text.ToString(); } }
        public void Verbose(string message) { }
        public void Warning(string message) { }
        public void Progress(ProgressReport report) { }
        public void StandardOutput(string line) { lock (_text) _text.Append(line).Append('\n'); }
        public void StandardError(string line) { lock (_text) _text.Append(line).Append('\n'); }
    }
}
