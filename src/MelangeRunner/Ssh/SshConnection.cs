using System.Net.Sockets;
using System.Text;
using Renci.SshNet;

namespace MelangeRunner.Ssh;

/// <summary>
/// One SSH connection to a guest and everything that belongs to it: the SSH.NET client, its
/// role (build, control, control-build), the "connection is gone" signal that running commands
/// watch, and its keepalive. Commands run through it (<see cref="RunAsync"/>,
/// <see cref="CaptureAsync"/>, <see cref="OpenOutputStream"/>) and are written to -Verbose in one
/// format. Disposing it stops the keepalive and closes the connection.
/// </summary>
internal sealed class SshConnection : IDisposable
{
    private SshKeepalive? _keepalive;
    private int _disposed;

    internal SshConnection(SshClient client, string role = "ssh")
    {
        Client = client;
        Role = role;
        Watch = new ConnectionWatch(client);
    }

    public SshClient Client { get; }

    /// <summary>build (RunAs on port 22, chrooted), control (root on 2223) or control-build (root on 22, chrooted).</summary>
    public string Role { get; set; }

    public ConnectionWatch Watch { get; }

    public string User => Client.ConnectionInfo.Username;
    public string Address => $"{Client.ConnectionInfo.Host}:{Client.ConnectionInfo.Port}";

    /// <summary>user@host:port, as every message names the connection.</summary>
    public string Endpoint => GuestSsh.Endpoint(Client);

    public bool IsConnected => !Watch.IsLost && Client.IsConnected;

    /// <summary>Starts the keepalive (once); <paramref name="onDead"/> is called when it declares the connection lost.</summary>
    public void StartKeepalive(Action<string> onDead) => _keepalive ??= new SshKeepalive(this, Role, onDead);

    /// <summary>The verbose line of every command this connection runs.</summary>
    public void Announce(IEventSink events, string commandLine) => events.Verbose($"Running over SSH as {Endpoint}: {commandLine}");

    /// <summary>Runs a command, each output line to its callback as it comes; returns the exit status (see <see cref="GuestSsh.RunAsync"/>).</summary>
    public Task<int> RunAsync(string commandLine, Action<string> standardOutputLine, Action<string> standardErrorLine, CancellationToken ct) =>
        GuestSsh.RunAsync(this, commandLine, standardOutputLine, standardErrorLine, ct);

    /// <summary>A command's exit status and standard output (standard error goes to Verbose).</summary>
    public async Task<(int Code, string Output)> TryCaptureAsync(string commandLine, IEventSink events, CancellationToken ct)
    {
        var output = new StringBuilder();
        var code = await RunAsync(commandLine, line => output.Append(line).Append('\n'), events.Verbose, ct).ConfigureAwait(false);
        return (code, output.ToString());
    }

    /// <summary>A command's standard output; a non-zero status is GuestCommandFailed.</summary>
    public async Task<string> CaptureAsync(string commandLine, IEventSink events, CancellationToken ct, object? target = null)
    {
        var (code, output) = await TryCaptureAsync(commandLine, events, ct).ConfigureAwait(false);
        if (code != 0) throw CommandFailed(commandLine, code, target ?? commandLine);
        return output;
    }

    /// <summary>Runs a command with its output on Verbose; a non-zero status is GuestCommandFailed.</summary>
    public async Task RunCheckedAsync(string commandLine, IEventSink events, CancellationToken ct, object? target = null)
    {
        Announce(events, commandLine);
        var code = await RunAsync(commandLine, events.Verbose, events.Verbose, ct).ConfigureAwait(false);
        if (code != 0) throw CommandFailed(commandLine, code, target ?? commandLine);
    }

    /// <summary>A command's standard output as a stream (see <see cref="GuestSsh.OpenOutputStreamAsync"/>).</summary>
    public Stream OpenOutputStream(string commandLine, Action<string> standardErrorLine, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        return new RemoteOutputStream(this, commandLine, standardErrorLine, ct);
    }

    private static MelangeException CommandFailed(string commandLine, int code, object target) =>
        new(ErrorKind.InvalidOperation, "GuestCommandFailed", $"The VM command '{commandLine}' failed with status {code}.", "Run with -Verbose to see its messages.", target);

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _keepalive?.Dispose();
        try { Client.Dispose(); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or InvalidOperationException) { }
    }

    public override string ToString() => $"{Role}: {Endpoint}";
}
