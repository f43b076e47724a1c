using System.Net.Sockets;
using Docker.DotNet;

namespace MelangeRunner.Docker;

/// <summary>
/// Where the Docker Engine API is (DOCKER_HOST, else the default socket, as melange's
/// client.FromEnv), a client for it, and the probe that says whether it answers.
/// </summary>
internal static class DockerEngine
{
    internal const string DefaultSocket = "/var/run/docker.sock";
    internal const string DefaultEndpoint = "unix://" + DefaultSocket;

    /// <summary>How long the probe and the first request of an operation wait for an engine that does not answer.</summary>
    internal static readonly TimeSpan ProbeTimeout = TimeSpan.FromSeconds(5);

    /// <summary>The label every container and image of this module carries (melange's own).</summary>
    internal const string MelangeLabel = "dev.chainguard.melange";
    internal const string PackageLabel = "dev.chainguard.melange.package";

    /// <summary>Who created a container: "host:pid:starttime", so that a later process can sweep what a dead one left.</summary>
    internal const string OwnerLabel = "dev.chainguard.melange.runner-owner";

    /// <summary>The repository of imported images; the tag is unique per import (melange #2532).</summary>
    internal const string ImageRepository = "melange-runner/image";

    /// <summary>DOCKER_HOST when set (and not empty), else the default socket.</summary>
    internal static string EndpointText => System.Environment.GetEnvironmentVariable("DOCKER_HOST") is { Length: > 0 } h ? h.Trim() : DefaultEndpoint;

    internal static bool FromEnvironment => System.Environment.GetEnvironmentVariable("DOCKER_HOST") is { Length: > 0 };

    /// <summary>The endpoint as a URI (unix://, tcp://, http://); an invalid DOCKER_HOST is an argument error.</summary>
    internal static Uri Endpoint()
    {
        var text = EndpointText;
        if (Uri.TryCreate(text, UriKind.Absolute, out var uri) && uri.Scheme is "unix" or "tcp" or "http" or "https" or "npipe")
            return uri;
        throw new MelangeException(ErrorKind.InvalidArgument, "BadDockerHost",
            $"DOCKER_HOST='{text}' is not an engine address.",
            "Set DOCKER_HOST to unix:///path/to/docker.sock or tcp://host:port, or unset it to use " + DefaultSocket + ".", text);
    }

    /// <summary>A client for the engine; <paramref name="timeout"/> bounds each request that is not a stream.</summary>
    internal static DockerClient CreateClient(TimeSpan? timeout = null)
    {
        var uri = Endpoint();
        if (uri.Scheme == "unix" && !File.Exists(uri.LocalPath) && !IsSocket(uri.LocalPath))
            throw Unavailable(null, $"the socket {uri.LocalPath} does not exist");
        var builder = new DockerClientBuilder().WithEndpoint(uri);
        builder = builder.WithTimeout(timeout ?? Timeout.InfiniteTimeSpan);
        return builder.Build();
    }

    /// <summary>A client, or null (with a warning) when DOCKER_HOST is invalid or the socket is missing.</summary>
    internal static DockerClient? CreateClientOrNull(IEventSink events)
    {
        try { return CreateClient(); }
        catch (MelangeException e)
        {
            events.Warning("Docker images are not listed: " + e.Message);
            return null;
        }
    }

    private static bool IsSocket(string path) => Native.Libc.LStat(path) is not null;

    /// <summary>Ping within <see cref="ProbeTimeout"/>: null when the engine answers, else why not.</summary>
    internal static string? PingError()
    {
        try
        {
            using var client = CreateClient(ProbeTimeout);
            using var cts = new CancellationTokenSource(ProbeTimeout);
            client.System.PingAsync(cts.Token).GetAwaiter().GetResult();
            return null;
        }
        catch (MelangeException e) { return e.Message + " " + e.Fix; }
        catch (Exception e)
        {
            var error = Unavailable(e, null);
            return error.Message + " " + error.Fix;
        }
    }

    /// <summary>Checks that the engine answers (within <see cref="ProbeTimeout"/>), with the clear error otherwise.</summary>
    internal static async Task EnsureAnswersAsync(DockerClient client, CancellationToken cancellationToken)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(ProbeTimeout);
        try
        {
            await client.System.PingAsync(cts.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (!cancellationToken.IsCancellationRequested && e is not MelangeException)
        {
            throw Unavailable(e, null);
        }
    }

    /// <summary>The "no engine" error: which address was tried and what to start.</summary>
    internal static MelangeException Unavailable(Exception? cause, string? detail)
    {
        var where = FromEnvironment ? $"DOCKER_HOST={EndpointText}" : $"the default socket {DefaultSocket} (DOCKER_HOST is not set)";
        detail ??= Describe(cause);
        var permission = cause is not null && Describe(cause).Contains("ermission", StringComparison.Ordinal);
        var fix = permission
            ? "Add your user to the 'docker' group (sudo usermod -aG docker $USER, then log in again), run as root, or point DOCKER_HOST at an engine you may use."
            : FromEnvironment
                ? $"Start the engine that DOCKER_HOST names ({EndpointText}), correct DOCKER_HOST, or unset it to use {DefaultSocket}."
                : "Start the Docker engine (sudo systemctl start docker; without systemd: sudo dockerd > /var/log/dockerd.log 2>&1 &), " +
                  "or start podman's API service (podman system service -t 0 unix:///run/podman/podman.sock) and set DOCKER_HOST to its socket, " +
                  "or set DOCKER_HOST to a remote engine (tcp://host:2375).";
        return new MelangeException(permission ? ErrorKind.PermissionDenied : ErrorKind.ConnectionError, "DockerEngineUnavailable",
            $"No Docker engine answers at {where}: {detail}.", fix, EndpointText, cause);
    }

    private static string Describe(Exception? e)
    {
        for (var x = e; x is not null; x = x.InnerException)
        {
            if (x is SocketException s) return s.Message;
            if (x is UnauthorizedAccessException u) return u.Message;
        }
        return e switch
        {
            null => "no answer",
            OperationCanceledException or TimeoutException => $"no answer within {ProbeTimeout.TotalSeconds:0} s",
            _ => e.GetBaseException().Message,
        };
    }

    /// <summary>An engine error of an operation as a MelangeException (the engine's own message kept).</summary>
    internal static MelangeException Failed(string what, Exception e, object? target)
    {
        if (e is MelangeException m) return m;
        if (e is DockerApiException api)
        {
            var body = ApiMessage(api);
            var kind = (int)api.StatusCode switch { 404 => ErrorKind.ObjectNotFound, 409 => ErrorKind.InvalidOperation, 400 => ErrorKind.InvalidArgument, _ => ErrorKind.InvalidOperation };
            return new MelangeException(kind, "DockerRequestFailed", $"The Docker engine refused to {what}: {body}",
                "Read the engine's message; check the engine's log (dockerd) when it gives no reason.", target, e);
        }
        if (e is HttpRequestException or IOException or SocketException)
            return Unavailable(e, null);
        return new MelangeException(ErrorKind.InvalidOperation, "DockerRequestFailed", $"Could not {what}: {e.Message}",
            "Check that the Docker engine is running and read its log.", target, e);
    }

    /// <summary>The "message" of an engine error body, or the body.</summary>
    internal static string ApiMessage(DockerApiException e)
    {
        var body = e.ResponseBody?.Trim() ?? "";
        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(body);
            if (doc.RootElement.TryGetProperty("message", out var msg) && msg.GetString() is { } s) return s;
        }
        catch (System.Text.Json.JsonException) { }
        return body.Length > 0 ? body : e.StatusCode.ToString();
    }

    /// <summary>This process as an owner label value: host name, pid and the kernel's start time of the pid.</summary>
    internal static string OwnerValue => Owner.Value;

    private static readonly Lazy<string> Owner = new(() =>
        $"{System.Environment.MachineName}:{System.Environment.ProcessId}:{HostProcess.Reaper.StartTime(System.Environment.ProcessId) ?? "0"}");

    /// <summary>Whether an owner label names a process of this host that no longer runs (its pid gone or reused).</summary>
    internal static bool OwnerIsGone(string? owner)
    {
        var parts = owner?.Split(':');
        if (parts is not { Length: 3 } || parts[0] != System.Environment.MachineName || !int.TryParse(parts[1], out var pid)) return false;
        var now = HostProcess.Reaper.StartTime(pid);
        return now is null || now != parts[2];
    }
}
