using Renci.SshNet;

namespace MelangeRunner.Ssh;

/// <summary>The session's process id, announced on standard error; kills its process group.</summary>
internal sealed class RemoteProcess
{
    private const string Marker = "\u001eMELANGE-PID ";
    // sshd and dropbear start each session with setsid(): the shell's $$ is the process group id.
    // Standard input is /dev/null, as for a bubblewrap pod: nothing feeds the channel, and a
    // step that reads stdin must see end of file rather than wait for ever.
    internal const string Announce = "exec </dev/null; printf '\\036MELANGE-PID %s\\n' \"$$\" >&2; ";
    private int _seen;
    private readonly TaskCompletionSource _firstLine = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public int? Pid { get; private set; }

    /// <summary>True when <paramref name="line"/> is the announcement (the first stderr line), which is then not shown.</summary>
    public bool TryConsume(string line)
    {
        if (Interlocked.Exchange(ref _seen, 1) != 0) return false;
        try
        {
            if (!line.StartsWith(Marker, StringComparison.Ordinal) || !int.TryParse(line.AsSpan(Marker.Length), out var pid) || pid <= 1) return false;
            Pid = pid;
            return true;
        }
        finally
        {
            _firstLine.TrySetResult();
        }
    }

    /// <summary>SIGTERM to the command's process group, SIGKILL 3 s later if it is still there; bounded, never throws.</summary>
    public async Task KillAsync(SshClient client)
    {
        // Standard output can arrive before the announcement on standard error (separate
        // streams): a stop right after the first output waits a moment for the process id.
        if (Pid is null) await Task.WhenAny(_firstLine.Task, Task.Delay(TimeSpan.FromSeconds(2))).ConfigureAwait(false);
        if (Pid is not { } pid || !client.IsConnected) return;
        var kill = $"kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null; " +
                   $"(sleep 3; kill -0 -- -{pid} 2>/dev/null && kill -KILL -- -{pid}) </dev/null >/dev/null 2>&1 & true";
        try
        {
            using var command = client.CreateCommand(kill, GuestSsh.Utf8);
            using var bounded = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await command.ExecuteAsync(bounded.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is OperationCanceledException || GuestSsh.IsConnectionFailure(e) || e is InvalidOperationException) { }
    }
}
