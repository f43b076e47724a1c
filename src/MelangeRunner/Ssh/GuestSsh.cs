using System.Net;
using System.Net.Sockets;
using System.Runtime.ExceptionServices;
using System.Security.Cryptography;
using System.Text;
using Renci.SshNet;
using Renci.SshNet.Common;

namespace MelangeRunner.Ssh;

/// <summary>How a remote command ended.</summary>
/// <param name="ExitCode">The status as a shell reports it: the exit status, or 128 + the signal number.</param>
/// <param name="ExitStatus">The exit status the server sent, if any.</param>
/// <param name="Signal">The signal that ended the command ("TERM", "KILL", …), if any.</param>
internal sealed record RemoteExit(int ExitCode, int? ExitStatus, string? Signal)
{
    public bool KilledBySignal => Signal is not null;

    public override string ToString() => Signal is null ? $"exit status {ExitCode}" : $"killed by signal {Signal} (status {ExitCode})";
}

/// <summary>
/// The host's SSH client side of the qemu runner: connection with a pinned host key, commands
/// with streamed output, and binary output as a stream (melange's sshDialWithTimeout,
/// getHostKey and sendSSHCommand).
/// </summary>
internal static class GuestSsh
{
    internal static readonly UTF8Encoding Utf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false);

    /// <summary>How often a running command checks that its client is still connected.</summary>
    internal static TimeSpan ConnectionPoll { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Connects and authenticates with <paramref name="clientKey"/>. The server must present exactly
    /// <paramref name="pinnedHostKeyBlob"/> (only its algorithm is offered); any other key ends the
    /// handshake before authentication with MelangeException(SecurityError, "HostKeyMismatch").
    /// Only loopback addresses are accepted. Connect and handshake are bounded by <paramref name="timeout"/>.
    /// </summary>
    public static async Task<SshConnection> ConnectAsync(string host, int port, string user, SshKeyPair clientKey, byte[] pinnedHostKeyBlob,
        TimeSpan timeout, CancellationToken ct, string role = "ssh")
    {
        ArgumentNullException.ThrowIfNull(clientKey);
        ArgumentNullException.ThrowIfNull(pinnedHostKeyBlob);
        ArgumentException.ThrowIfNullOrEmpty(user);
        var address = $"{host}:{port}";
        RequireLoopback(host, address);
        var pinned = (byte[])pinnedHostKeyBlob.Clone();
        var algorithm = SshWire.AlgorithmOf(pinned);

        var info = new ConnectionInfo(host, port, user, new PrivateKeyAuthenticationMethod(user, clientKey.ToSshNetKey()))
        {
            Timeout = timeout,
        };
        var accepted = AcceptedHostKeyAlgorithms(algorithm);
        foreach (var name in info.HostKeyAlgorithms.Keys.ToList())
            if (!accepted.Contains(name)) info.HostKeyAlgorithms.Remove(name);
        if (info.HostKeyAlgorithms.Count == 0)
            throw new MelangeException(ErrorKind.InvalidArgument, "HostKeyAlgorithmUnsupported",
                $"The pinned host key's algorithm '{algorithm}' is not supported by the SSH client.", "Pin an Ed25519 or ECDSA host key.", address);

        Prefer(info.Encryptions, "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"); // as melange; .NET's AES-GCM is hardware-accelerated
        // The guest computes its half of the key exchange under emulation: OpenSSL's P-256 takes it
        // ~50 ms there, OpenSSH's portable sntrup761x25519 (the default) ~300 ms per log-in.
        // The link is qemu's loopback port forward to a throwaway VM.
        Prefer(info.KeyExchangeAlgorithms, "ecdh-sha2-nistp256");

        byte[]? presented = null;
        var client = new SshClient(info);
        client.HostKeyReceived += (_, e) =>
        {
            presented = e.HostKey;
            e.CanTrust = e.HostKey is not null && CryptographicOperations.FixedTimeEquals(e.HostKey, pinned);
        };
        using var bounded = CancellationTokenSource.CreateLinkedTokenSource(ct);
        bounded.CancelAfter(timeout);
        try
        {
            // The watch subscribes to the client's errors before the session can report one.
            var connection = new SshConnection(client, role);
            await client.ConnectAsync(bounded.Token).ConfigureAwait(false);
            return connection;
        }
        catch (Exception e)
        {
            client.Dispose();
            if (presented is not null && !CryptographicOperations.FixedTimeEquals(presented, pinned))
                throw new MelangeException(ErrorKind.SecurityError, "HostKeyMismatch",
                    $"The SSH server at {address} presented a host key that is not the one generated for this VM " +
                    $"({SshWire.Fingerprint(pinned)} expected, {SshWire.Fingerprint(presented)} presented): refusing to connect.",
                    "Another process may be listening on the VM's forwarded port, or the guest did not install the injected host key. Stop the pod and start it again; if it recurs, look for what else listens on that port.",
                    address, e);
            if (ct.IsCancellationRequested) throw new OperationCanceledException("Connecting over SSH was cancelled.", e, ct);
            switch (e)
            {
                case OperationCanceledException or SshOperationTimeoutException:
                    throw new MelangeException(ErrorKind.OperationTimeout, "SshConnectTimeout",
                        $"Connecting to the SSH server at {address} as '{user}' did not complete within {timeout.TotalSeconds:0.#} s.",
                        "The guest may be overloaded or hung: read its console output.", address, e);
                case SshAuthenticationException:
                    throw new MelangeException(ErrorKind.PermissionDenied, "SshAuthenticationFailed",
                        $"The SSH server at {address} refused the client key for user '{user}': {e.Message}",
                        "Check that the user exists in the image and that the guest installed the client key for it.", address, e);
                case SocketException or SshConnectionException or SshException or IOException:
                    throw new MelangeException(ErrorKind.ConnectionError, "SshConnectFailed",
                        $"Could not connect to the SSH server at {address} as '{user}': {e.Message}",
                        "Check that the VM is running and its SSH server is up.", address, e);
                default:
                    throw;
            }
        }
    }

    /// <summary>
    /// The command line sent to the server: <c>env -- K=V … argv…</c>, every word quoted for a POSIX
    /// shell. The server runs it with the user's shell (<c>$SHELL -c</c>), so the program receives
    /// argv exactly; prefix it with <c>exec </c> to replace that shell. Environment names must be
    /// shell identifiers; no word may contain NUL.
    /// </summary>
    public static string BuildCommandLine(IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> argv)
    {
        ArgumentNullException.ThrowIfNull(argv);
        if (argv.Count == 0) throw new MelangeException(ErrorKind.InvalidArgument, "EmptyCommand", "The command to run is empty.", "Give at least the program to run.");
        var words = new List<string> { "env", "--" };
        if (environment is not null)
        {
            foreach (var (key, value) in environment.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                if (!IsEnvironmentName(key))
                    throw new MelangeException(ErrorKind.InvalidArgument, "InvalidEnvironmentName",
                        $"'{key}' is not a valid environment variable name.", "Use letters, digits and underscores, not starting with a digit.", key);
                RequireNoNul(value, $"the value of {key}");
                words.Add($"{key}={value}");
            }
        }
        foreach (var word in argv)
        {
            ArgumentNullException.ThrowIfNull(word, nameof(argv));
            RequireNoNul(word, "an argument");
        }
        // env takes a first word containing '=' as another assignment: let sh run such a program.
        if (argv[0].Contains('=')) words.AddRange(["/bin/sh", "-c", "exec \"$0\" \"$@\""]);
        words.AddRange(argv);
        return ShellQuote.Join(words);
    }

    /// <summary>
    /// Runs a command; each line of its standard output and error goes to the callbacks as it
    /// arrives (never both callbacks at once). Returns the exit status, or 128 + the signal number
    /// if a signal ended it (use <see cref="RunWithExitAsync"/> to tell those apart).
    /// Cancellation sends the command SIGTERM and throws OperationCanceledException; a lost
    /// connection throws MelangeException(ConnectionError, "SshConnectionLost").
    /// </summary>
    public static async Task<int> RunAsync(SshConnection connection, string commandLine, Action<string> standardOutputLine, Action<string> standardErrorLine, CancellationToken ct)
        => (await RunWithExitAsync(connection, commandLine, standardOutputLine, standardErrorLine, ct).ConfigureAwait(false)).ExitCode;

    /// <summary><see cref="RunAsync"/>, telling an exit status from a signal.</summary>
    public static async Task<RemoteExit> RunWithExitAsync(SshConnection connection, string commandLine, Action<string> standardOutputLine, Action<string> standardErrorLine, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(connection);
        var client = connection.Client;
        ArgumentException.ThrowIfNullOrEmpty(commandLine);
        ArgumentNullException.ThrowIfNull(standardOutputLine);
        ArgumentNullException.ThrowIfNull(standardErrorLine);
        ct.ThrowIfCancellationRequested();
        var watch = connection.Watch;
        using var run = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var command = Start(client, watch, commandLine, run.Token, out var exec);
        using (command)
        {
            var outputLock = new object();
            Exception? sinkFailure = null;
            void Fail(Exception e)
            {
                Interlocked.CompareExchange(ref sinkFailure, e, null);
                try { run.Cancel(); } catch (ObjectDisposedException) { }
            }
            var process = new RemoteProcess();
            var stdout = PumpLines(command.OutputStream, line => { lock (outputLock) standardOutputLine(line); }, Fail);
            var stderr = PumpLines(command.ExtendedOutputStream, line =>
            {
                if (process.TryConsume(line)) return;
                lock (outputLock) standardErrorLine(line);
            }, Fail);
            using var onLost = watch.Lost.Register(() => ClosePipes(command));
            try
            {
                await WaitForExitAsync(client, watch, exec).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                if (run.IsCancellationRequested && !watch.IsLost) await process.KillAsync(client).ConfigureAwait(false);
                ClosePipes(command);
                await DrainAsync(stdout, stderr).ConfigureAwait(false);
                if (sinkFailure is not null) ExceptionDispatchInfo.Throw(sinkFailure);
                if (ct.IsCancellationRequested) throw new OperationCanceledException("The remote command was cancelled (SIGTERM sent).", e, ct);
                throw Lost(client, watch, commandLine, e);
            }
            // The channel is closed: its pipes end once their buffered data has been read.
            if (!await DrainAsync(stdout, stderr, TimeSpan.FromSeconds(5)).ConfigureAwait(false))
            {
                ClosePipes(command);
                await DrainAsync(stdout, stderr).ConfigureAwait(false);
            }
            if (sinkFailure is not null) ExceptionDispatchInfo.Throw(sinkFailure);
            return ExitOf(client, watch, command, commandLine);
        }
    }

    /// <summary>
    /// Starts a command whose standard output is data (a tar stream) and returns that output as a
    /// stream read as it arrives. Standard error lines go to <paramref name="standardErrorLine"/>.
    /// At the end of the data, Read throws MelangeException(NonZeroExit, "RemoteCommandFailed") if
    /// the command failed and (ConnectionError, "SshConnectionLost") if the connection was lost.
    /// Disposing the stream before the end stops the command (SIGTERM). SSH.NET acknowledges
    /// channel data as it arrives rather than as it is read, so memory stays flat only while the
    /// reader keeps up with the network: read it continuously.
    /// </summary>
    public static Task<Stream> OpenOutputStreamAsync(SshConnection connection, string commandLine, Action<string> standardErrorLine, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(connection);
        ArgumentException.ThrowIfNullOrEmpty(commandLine);
        ArgumentNullException.ThrowIfNull(standardErrorLine);
        ct.ThrowIfCancellationRequested();
        return Task.FromResult<Stream>(new RemoteOutputStream(connection, commandLine, standardErrorLine, ct));
    }

    // ----------------------------------------------------------------------------------------

    /// <summary>
    /// Starts the command. Its first standard error line is its session's process id (see
    /// <see cref="RemoteProcess"/>), so that cancellation can end the whole process group:
    /// SSH "signal" requests are not enough (OpenSSH ignores them for root logins, which run
    /// without post-auth privilege separation).
    /// </summary>
    internal static SshCommand Start(SshClient client, ConnectionWatch watch, string commandLine, CancellationToken token, out Task exec)
    {
        if (watch.IsLost || !client.IsConnected) throw Lost(client, watch, commandLine, null);
        SshCommand? command = null;
        try
        {
            command = client.CreateCommand(RemoteProcess.Announce + commandLine, Utf8);
            exec = command.ExecuteAsync(token);
            // A command abandoned after its connection was lost must not leave an unobserved fault behind.
            _ = exec.ContinueWith(t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
            return command;
        }
        catch (Exception e) when (IsConnectionFailure(e))
        {
            command?.Dispose();
            throw Lost(client, watch, commandLine, e);
        }
    }

    /// <summary>Waits for the command's channel to close, failing fast when the connection goes.</summary>
    internal static async Task WaitForExitAsync(SshClient client, ConnectionWatch watch, Task exec)
    {
        while (true)
        {
            var tick = Task.Delay(ConnectionPoll, watch.Lost);
            if (await Task.WhenAny(exec, tick).ConfigureAwait(false) == exec)
            {
                await exec.ConfigureAwait(false);
                return;
            }
            if (!watch.IsLost && !client.IsConnected) watch.MarkLost("the SSH connection was closed");
            if (watch.IsLost) throw new SshConnectionException(watch.Reason);
        }
    }

    internal static RemoteExit ExitOf(SshClient client, ConnectionWatch watch, SshCommand command, string commandLine)
    {
        if (command.ExitStatus is { } status) return new RemoteExit(status, status, null);
        if (command.ExitSignal is { } signal) return new RemoteExit(128 + SignalNumber(signal), null, signal);
        if (watch.IsLost || !client.IsConnected) throw Lost(client, watch, commandLine, null);
        throw new MelangeException(ErrorKind.ConnectionError, "SshExitStatusMissing",
            $"The command '{commandLine}' on {Endpoint(client)} ended without an exit status (the server closed its channel).",
            "The guest may be shutting down or its SSH server failed: read the guest console.", Endpoint(client));
    }

    internal static MelangeException Lost(SshClient client, ConnectionWatch watch, string commandLine, Exception? inner)
    {
        if (!watch.IsLost) watch.MarkLost(inner?.Message ?? "the SSH connection was closed");
        return new MelangeException(ErrorKind.ConnectionError, "SshConnectionLost",
            $"The SSH connection to {Endpoint(client)} was lost while running '{Shorten(commandLine)}': {watch.Reason.TrimEnd('.')}.",
            "The VM may have powered off, crashed or hung: read the guest console output; stop the pod and start a new one.",
            Endpoint(client), inner);
    }

    internal static bool IsConnectionFailure(Exception e)
        => e is SshConnectionException or SocketException or ObjectDisposedException or IOException
            || (e is SshException && e is not SshAuthenticationException);

    internal static string Endpoint(SshClient client)
    {
        try { return $"{client.ConnectionInfo.Username}@{client.ConnectionInfo.Host}:{client.ConnectionInfo.Port}"; }
        catch (ObjectDisposedException) { return "(disposed SSH client)"; }
    }

    internal static void ClosePipes(SshCommand command)
    {
        try { command.OutputStream?.Dispose(); } catch (Exception e) when (e is ObjectDisposedException or IOException) { }
        try { command.ExtendedOutputStream?.Dispose(); } catch (Exception e) when (e is ObjectDisposedException or IOException) { }
    }

    /// <summary>Reads lines (UTF-8, split on \n, \r\n or \r as StreamReader does) on a thread of its own.</summary>
    internal static Task PumpLines(Stream stream, Action<string> sink, Action<Exception> sinkFailed)
        => Task.Factory.StartNew(() =>
        {
            try
            {
                using var reader = new StreamReader(stream, Utf8, detectEncodingFromByteOrderMarks: false, bufferSize: 16384, leaveOpen: true);
                while (reader.ReadLine() is { } line)
                {
                    try { sink(line); }
                    catch (Exception e)
                    {
                        sinkFailed(e);
                        return;
                    }
                }
            }
            catch (ObjectDisposedException) { } // the pipe was closed under us: the caller knows why
            catch (IOException) { }
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    internal static async Task<bool> DrainAsync(Task a, Task b, TimeSpan? limit = null)
    {
        var both = Task.WhenAll(a, b);
        if (limit is null)
        {
            await both.ConfigureAwait(false);
            return true;
        }
        return await Task.WhenAny(both, Task.Delay(limit.Value)).ConfigureAwait(false) == both;
    }

    private static int SignalNumber(string name) => name.ToUpperInvariant() switch
    {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        _ => 127, // unknown signal name: 255, as OpenSSH's client reports a missing status
    };

    private static string Shorten(string s) => s.Length <= 200 ? s : s[..200] + "…";

    private static bool IsEnvironmentName(string key)
        => key.Length > 0 && (char.IsAsciiLetter(key[0]) || key[0] == '_') && key.All(c => char.IsAsciiLetterOrDigit(c) || c == '_');

    private static void RequireNoNul(string word, string what)
    {
        if (word.Contains('\0'))
            throw new MelangeException(ErrorKind.InvalidArgument, "NulInCommand", $"{char.ToUpperInvariant(what[0])}{what[1..]} contains a NUL character, which a command line cannot carry.", "Remove the NUL character.");
    }

    private static void RequireLoopback(string host, string address)
    {
        var loopback = string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase)
                       || (IPAddress.TryParse(host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip));
        if (!loopback)
            throw new MelangeException(ErrorKind.SecurityError, "NonLoopbackAddress",
                $"Refusing an SSH connection to the non-loopback address {address}: the VM's SSH server is only reached through qemu's loopback port forward.",
                "Use 127.0.0.1.", address);
    }

    /// <summary>Puts the given algorithms first in the client's preference order (the others stay, for servers without them).</summary>
    private static void Prefer<T>(IDictionary<string, T> algorithms, params string[] preferred)
    {
        var all = algorithms.ToList();
        algorithms.Clear();
        foreach (var name in preferred)
            if (all.FirstOrDefault(kv => kv.Key == name) is { Value: not null } kv) algorithms.Add(kv.Key, kv.Value);
        foreach (var kv in all)
            if (!algorithms.ContainsKey(kv.Key)) algorithms.Add(kv.Key, kv.Value);
    }

    private static HashSet<string> AcceptedHostKeyAlgorithms(string keyType) => keyType switch
    {
        "ssh-rsa" => new(StringComparer.Ordinal) { "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa" },
        _ => new(StringComparer.Ordinal) { keyType },
    };
}
