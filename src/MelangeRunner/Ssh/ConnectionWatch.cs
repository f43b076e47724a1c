using Renci.SshNet;

namespace MelangeRunner.Ssh;

/// <summary>
/// The "connection is gone" signal of one <see cref="SshConnection"/>. SSH.NET does not reliably end a running command
/// when its own side closes the session (a keepalive giving up) or when the peer vanishes
/// without a FIN, so commands watch this as well as their channel.
/// </summary>
internal sealed class ConnectionWatch
{
    private readonly CancellationTokenSource _lost = new();
    private string? _reason;

    public ConnectionWatch(SshClient client)
    {
        client.ErrorOccurred += (_, e) => MarkLost($"the SSH session failed: {e.Exception.Message}");
    }

    public CancellationToken Lost => _lost.Token;
    public bool IsLost => _lost.IsCancellationRequested;
    public string Reason => _reason ?? "the SSH connection was closed";

    public void MarkLost(string reason)
    {
        Interlocked.CompareExchange(ref _reason, reason, null);
        try { _lost.Cancel(); }
        catch (AggregateException) { } // a registered callback failed; the state is set regardless
    }
}
