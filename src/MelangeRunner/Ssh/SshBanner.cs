using System.Diagnostics;
using System.Net.Sockets;
using System.Text;

namespace MelangeRunner.Ssh;

/// <summary>
/// Readiness of an SSH server behind qemu's port forward (docs/microvm.md#pitfall-9): qemu accepts
/// the TCP connection before the guest listens, then closes it; ready means an
/// identification line starting with "SSH-2.0-" was read (melange's checkSSHServer).
/// </summary>
internal static class SshBanner
{
    private static readonly TimeSpan ConnectTimeout = TimeSpan.FromMilliseconds(250);
    private static readonly TimeSpan ReadTimeout = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan Pause = TimeSpan.FromMilliseconds(100);

    /// <summary>
    /// Polls until a banner is read. <paramref name="hasExited"/> returning true →
    /// MelangeException(InvalidOperation, "VmExited"); the deadline passing →
    /// MelangeException(OperationTimeout, "SshNotReady"); cancellation → OperationCanceledException.
    /// </summary>
    public static async Task<string> WaitAsync(string host, int port, Func<bool> hasExited, TimeSpan deadline, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(hasExited);
        var watch = Stopwatch.StartNew();
        string? lastProblem = null;
        var attempts = 0;
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            if (hasExited())
                throw new MelangeException(ErrorKind.InvalidOperation, "VmExited",
                    $"The VM exited before its SSH server answered on {host}:{port}.",
                    "Read the guest console output for the reason (kernel panic, missing init, bad kernel command line).", $"{host}:{port}");
            var left = deadline - watch.Elapsed;
            if (left <= TimeSpan.Zero)
                throw new MelangeException(ErrorKind.OperationTimeout, "SshNotReady",
                    $"No SSH server answered on {host}:{port} within {deadline.TotalSeconds:0.#} s ({attempts} attempts; last: {lastProblem ?? "none"}).",
                    "The guest is slow to boot or its SSH server did not start: read the guest console output; without /dev/kvm (TCG) allow more time.",
                    $"{host}:{port}");
            attempts++;
            var (banner, problem) = await TryReadBannerAsync(host, port, left, ct).ConfigureAwait(false);
            if (banner is not null) return banner;
            lastProblem = problem;
            var pause = Pause < deadline - watch.Elapsed ? Pause : deadline - watch.Elapsed;
            if (pause > TimeSpan.Zero) await Task.Delay(pause, ct).ConfigureAwait(false);
        }
    }

    /// <summary>One attempt: the banner line, or why there is none.</summary>
    internal static async Task<(string? Banner, string Problem)> TryReadBannerAsync(string host, int port, TimeSpan left, CancellationToken ct)
    {
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        socket.NoDelay = true;
        using var attempt = CancellationTokenSource.CreateLinkedTokenSource(ct);
        try
        {
            attempt.CancelAfter(Min(ConnectTimeout, left));
            await socket.ConnectAsync(host, port, attempt.Token).ConfigureAwait(false);
            attempt.CancelAfter(Min(ReadTimeout, left));
            // RFC 4253 §4.2: the server may send other lines before its identification line.
            var buffer = new byte[512];
            var used = 0;
            while (true)
            {
                var n = await socket.ReceiveAsync(buffer.AsMemory(used), SocketFlags.None, attempt.Token).ConfigureAwait(false);
                if (n == 0) return (null, "the connection was closed without a banner");
                used += n;
                int newline;
                while ((newline = Array.IndexOf(buffer, (byte)'\n', 0, used)) >= 0)
                {
                    var line = Encoding.ASCII.GetString(buffer, 0, newline).TrimEnd('\r');
                    if (line.StartsWith("SSH-2.0-", StringComparison.Ordinal) || line.StartsWith("SSH-1.99-", StringComparison.Ordinal))
                        return (line, "");
                    if (line.StartsWith("SSH-", StringComparison.Ordinal))
                        return (null, $"an unsupported SSH version: {line}");
                    Array.Copy(buffer, newline + 1, buffer, 0, used - newline - 1);
                    used -= newline + 1;
                }
                if (used == buffer.Length) return (null, "a line too long for an SSH banner");
            }
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return (null, socket.Connected ? "connected, but no banner within the read timeout" : "the connection attempt timed out");
        }
        catch (SocketException e)
        {
            return (null, e.Message);
        }
    }

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;
}
