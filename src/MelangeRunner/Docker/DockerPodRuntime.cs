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
internal sealed class DockerPodRuntime : IInteractivePodRuntime, IAsyncDisposable
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
            if (DockerEngine.Endpoint().Scheme == "unix")
            {
                foreach (var m in DockerPodPlanner.Mounts(spec))
                {
                    if (!File.Exists(m.Source) && !Directory.Exists(m.Source))
                        throw new MelangeException(ErrorKind.ObjectNotFound, "MountSourceNotFound",
                            $"The mount source '{m.Source}' (for {m.Destination}) does not exist.",
                            "Create it first, or correct the path given to -Mount or -CacheDir.", m.Source);
                }
            }
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

    // ---- the workspace --------------------------------------------------------------------

    /// <summary>Puts the host workspace at /home/build (a tar through the archive API), then, for a build user, chowns it.</summary>
    private async Task CopyWorkspaceInAsync(string workspace, IEventSink events, CancellationToken cancellationToken)
    {
        var pipe = new BytePipe(Workspace.PipeCapacity);
        var producer = Task.Run(() =>
        {
            try
            {
                using (var w = pipe.Writer(cancellationToken))
                using (var tar = new TarWriter(w, TarEntryFormat.Pax, leaveOpen: true))
                    WorkspaceTarIn.Write(tar, workspace, Defaults.WorkspaceDir.TrimStart('/'), events, cancellationToken);
                pipe.CompleteWriting(null);
            }
            catch (Exception e)
            {
                pipe.CompleteWriting(e);
                throw;
            }
        }, CancellationToken.None);
        await using (var body = new Workspace.ProducerStream(pipe, producer, cancellationToken))
        {
            try
            {
                await _client.Containers.ExtractArchiveToContainerAsync(ContainerId, new CopyToContainerParameters { Path = "/" }, body, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (producer.IsFaulted)
            {
                throw producer.Exception!.GetBaseException() is MelangeException m ? m : DockerEngine.Failed("copy the workspace into the pod", e, workspace);
            }
            catch (Exception e) when (e is not (OperationCanceledException or MelangeException))
            {
                throw DockerEngine.Failed("copy the workspace into the pod", e, workspace);
            }
        }
        await producer.ConfigureAwait(false);
        if (User is { } user && !DockerPodPlanner.IsRoot(user))
        {
            var (code, output) = await CaptureAsync(new[] { "chown", "-R", user, Defaults.WorkspaceDir }, cancellationToken).ConfigureAwait(false);
            if (code != 0)
                throw new MelangeException(ErrorKind.InvalidOperation, "PodStartFailed",
                    $"Could not give {Defaults.WorkspaceDir} to the build user {user} (chown exited with {code}): {output.Trim()}",
                    "Check that the user exists in the image (/etc/passwd) and that the image has chown.", user);
        }
    }

    /// <summary>A tar of melange-out, the extra files and the license files, read from the container through the archive API.</summary>
    public async Task<Stream> WorkspaceTarAsync(IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken cancellationToken)
    {
        var paths = new List<string>();
        foreach (var p in extraFiles.Concat(await FindLicenseFilesAsync(events, cancellationToken).ConfigureAwait(false)))
            if (!paths.Contains(p) && p != Workspace.OutputDir) paths.Add(p);

        var pipe = new BytePipe(Workspace.PipeCapacity);
        var producer = Task.Run(async () =>
        {
            try
            {
                await using (var w = pipe.Writer(cancellationToken))
                await using (var tar = new TarWriter(w, TarEntryFormat.Pax, leaveOpen: true))
                {
                    if (!await CopyArchiveAsync(tar, Workspace.OutputDir, cancellationToken).ConfigureAwait(false))
                        events.Warning($"The pod's workspace has no {Workspace.OutputDir} directory: the build wrote no output.");
                    foreach (var p in paths)
                        if (!await CopyArchiveAsync(tar, p, cancellationToken).ConfigureAwait(false))
                            events.Warning($"The pod's workspace has no '{p}'.");
                }
                pipe.CompleteWriting(null);
            }
            catch (Exception e)
            {
                pipe.CompleteWriting(e);
                throw;
            }
        }, CancellationToken.None);
        return new Workspace.ProducerStream(pipe, producer, cancellationToken);
    }

    /// <summary>
    /// Appends the engine's archive of /home/build/<paramref name="relative"/> to <paramref name="tar"/>,
    /// its entries renamed from the engine's (relative to the path's parent) to workspace-relative
    /// names. False when the path does not exist. The names are whatever the engine sends: the
    /// reader (SafeTarExtractor) treats them as hostile.
    /// </summary>
    private async Task<bool> CopyArchiveAsync(TarWriter tar, string relative, CancellationToken cancellationToken)
    {
        ContainerArchiveResponse archive;
        var path = new ContainerPathStatParameters { Path = Defaults.WorkspaceDir + "/" + relative };
        var parent = Path.GetDirectoryName(relative.TrimEnd('/'))?.Replace('\\', '/');
        var prefix = string.IsNullOrEmpty(parent) ? "" : parent + "/";
        try
        {
            // The engine follows a symlink in the last component (a melange-out that is a link to
            // / would export the container's whole root, /proc included): look first, and store
            // a link as a link, as the host-directory writer does.
            var stat = (await _client.Containers.GetArchiveFromContainerAsync(ContainerId, path, true, cancellationToken).ConfigureAwait(false)).Stat;
            if (stat is not null && (!string.IsNullOrEmpty(stat.LinkTarget) || (stat.Mode & GoModeSymlink) != 0))
            {
                var link = await ReadLinkAsync(relative, cancellationToken).ConfigureAwait(false) ?? stat.LinkTarget ?? "";
                await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.SymbolicLink, prefix + Path.GetFileName(relative.TrimEnd('/'))) { LinkName = link, Mode = (UnixFileMode)0x1FF }, cancellationToken).ConfigureAwait(false);
                return true;
            }
            archive = await _client.Containers.GetArchiveFromContainerAsync(ContainerId, path, false, cancellationToken).ConfigureAwait(false);
        }
        catch (DockerContainerNotFoundException) { return false; } // the client reports a missing path as this
        catch (DockerApiException e) when ((int)e.StatusCode == 404) { return false; }
        catch (Exception e) when (e is not (OperationCanceledException or MelangeException))
        {
            throw DockerEngine.Failed($"read {relative} from the pod", e, relative);
        }
        // prefix and names as the engine sends them; the exporter's extractor treats them as hostile.
        await using var stream = archive.Stream ?? Stream.Null;
        using var reader = new TarReader(stream, leaveOpen: true);
        TarEntry? entry;
        while ((entry = await reader.GetNextEntryAsync(copyData: false, cancellationToken).ConfigureAwait(false)) is not null)
        {
            if (entry.EntryType is TarEntryType.GlobalExtendedAttributes) continue;
            // A new entry, not the reader's: setting a read entry's DataStream reads the archive
            // synchronously, which the engine's response stream does not support.
            var name = prefix + entry.Name;
            var copy = new PaxTarEntry(entry.EntryType, name)
            {
                Mode = entry.Mode,
                Uid = entry.Uid,
                Gid = entry.Gid,
                ModificationTime = entry.ModificationTime,
            };
            if (entry.EntryType is TarEntryType.SymbolicLink) copy.LinkName = entry.LinkName;
            else if (entry.EntryType is TarEntryType.HardLink) copy.LinkName = prefix + entry.LinkName;
            if (entry.EntryType is TarEntryType.CharacterDevice or TarEntryType.BlockDevice)
            {
                copy.DeviceMajor = ((PosixTarEntry)entry).DeviceMajor;
                copy.DeviceMinor = ((PosixTarEntry)entry).DeviceMinor;
            }
            if (entry.DataStream is { } data && entry.EntryType is TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile)
                copy.DataStream = new KnownLengthStream(data, entry.Length);
            await tar.WriteEntryAsync(copy, cancellationToken).ConfigureAwait(false);
        }
        return true;
    }

    // Go's os.ModeSymlink, as the engine's path stat reports modes.
    private const uint GoModeSymlink = 1u << 27;

    /// <summary>The target of a symlink in the workspace, as readlink prints it (null when that fails).</summary>
    private async Task<string?> ReadLinkAsync(string relative, CancellationToken cancellationToken)
    {
        var sink = new CaptureSink();
        var code = await ExecAsync("0:0", null, new[] { "readlink", "--", relative }, sink, false, cancellationToken).ConfigureAwait(false);
        return code == 0 ? sink.Text.TrimEnd('\n') : null;
    }

    /// <summary>License files anywhere in the workspace outside melange-out and .git (as Workspace.FindLicenseFiles does on the host).</summary>
    private async Task<IReadOnlyList<string>> FindLicenseFilesAsync(IEventSink events, CancellationToken cancellationToken)
    {
        var (code, output) = await CaptureAsync(new[] { "find", ".", "(", "-path", "./" + Workspace.OutputDir, "-o", "-name", ".git", ")", "-prune", "-o", "-type", "f", "-print" },
            cancellationToken).ConfigureAwait(false);
        if (code != 0)
        {
            events.Warning($"Could not list the pod's workspace for license files (find exited with {code}): {output.Trim()}");
            return Array.Empty<string>();
        }
        return output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.StartsWith("./", StringComparison.Ordinal) ? l[2..] : l)
            .Where(l => l.Length > 0 && Workspace.IsLicenseFileName(Path.GetFileName(l)))
            .OrderBy(l => l, StringComparer.Ordinal).ToList();
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

    public Task StopAsync(IEventSink events, CancellationToken cancellationToken) => TerminateAsync(events, cancellationToken);

    /// <summary>Removes the container (and its anonymous volumes); harmless twice.</summary>
    public async Task TerminateAsync(IEventSink events, CancellationToken cancellationToken)
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

    public async ValueTask DisposeAsync() => await TerminateAsync(NullEventSink.Instance, CancellationToken.None).ConfigureAwait(false);

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

/// <summary>
/// An entry's data as read from another tar, presented as seekable with its header's length, so
/// that TarWriter streams it into the (unseekable) pipe instead of refusing it; only the
/// position queries it makes before copying are answered.
/// </summary>
internal sealed class KnownLengthStream : Stream
{
    private readonly Stream _inner;
    private readonly long _length;
    private long _position;

    public KnownLengthStream(Stream inner, long length) { _inner = inner; _length = length; }

    public override bool CanRead => true;
    public override bool CanSeek => true;
    public override bool CanWrite => false;
    public override long Length => _length;
    public override long Position { get => _position; set => Seek(value, SeekOrigin.Begin); }
    public override void Flush() { }
    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        if (_position >= _length || buffer.Length == 0) return 0;
        var n = _inner.Read(buffer[..(int)Math.Min(buffer.Length, _length - _position)]);
        _position += n;
        return n;
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_position >= _length || buffer.Length == 0) return 0; // the engine's stream refuses reads at its end
        var n = await _inner.ReadAsync(buffer[..(int)Math.Min(buffer.Length, _length - _position)], cancellationToken).ConfigureAwait(false);
        _position += n;
        return n;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override long Seek(long offset, SeekOrigin origin)
    {
        var target = origin switch { SeekOrigin.Begin => offset, SeekOrigin.Current => _position + offset, _ => _length + offset };
        if (target != _position) throw new NotSupportedException("The entry's data can only be read forward.");
        return _position;
    }

    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}

/// <summary>Splits a byte stream into UTF-8 lines (LF, a trailing CR dropped) as they complete.</summary>
internal sealed class LineSplitter
{
    private readonly Action<string> _line;
    private readonly List<byte> _pending = new();

    public LineSplitter(Action<string> line) => _line = line;

    public void Add(ReadOnlySpan<byte> data)
    {
        while (data.Length > 0)
        {
            var nl = data.IndexOf((byte)'\n');
            if (nl < 0) { foreach (var b in data) _pending.Add(b); return; }
            foreach (var b in data[..nl]) _pending.Add(b);
            Emit();
            data = data[(nl + 1)..];
        }
    }

    /// <summary>The marker's value if the unfinished line is the marker (cancelled before its newline was read).</summary>
    public string? PeekMarker(string marker)
    {
        var text = Encoding.UTF8.GetString(_pending.ToArray());
        return text.StartsWith(marker, StringComparison.Ordinal) ? text[marker.Length..] : null;
    }

    public void Flush()
    {
        if (_pending.Count > 0) Emit();
    }

    private void Emit()
    {
        var count = _pending.Count;
        if (count > 0 && _pending[count - 1] == (byte)'\r') count--;
        var text = Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_pending)[..count]);
        _pending.Clear();
        _line(text);
    }
}
