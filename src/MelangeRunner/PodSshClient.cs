using System.Text;
using MelangeRunner.Ssh;

namespace MelangeRunner;

/// <summary>What a command run through <see cref="PodSshClient.Run"/> printed, and how it ended.</summary>
public sealed record PodCommandResult(int ExitCode, string Output, string Error);

/// <summary>
/// One of a qemu pod's three SSH clients (build, control, control-build), shown by what it is
/// and where it goes, with a way to run a command. The connection itself (its session and the
/// pod's keys) stays inside the engine: formatting and ConvertTo-Json reach only these properties,
/// and no SSH.NET type leaves the module's own load context.
/// </summary>
public sealed class PodSshClient
{
    private readonly SshConnection _connection;

    internal PodSshClient(SshConnection connection) => _connection = connection;

    /// <summary>build (RunAs on port 22, chrooted), control (root on 2223) or control-build (root on 22, chrooted).</summary>
    public string Role => _connection.Role;

    public string User => _connection.User;

    public string Address => _connection.Address;

    public bool IsConnected => _connection.IsConnected;

    /// <summary>
    /// Runs <paramref name="commandLine"/> with the login shell of <see cref="User"/> (no
    /// workspace, no pod environment: Invoke-MelangePod gives those) and returns its output.
    /// Cancelling ends the remote process group.
    /// </summary>
    public async Task<PodCommandResult> RunAsync(string commandLine, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(commandLine);
        var output = new StringBuilder();
        var error = new StringBuilder();
        var code = await _connection.RunAsync(commandLine, line => output.Append(line).Append('\n'), line => error.Append(line).Append('\n'), cancellationToken).ConfigureAwait(false);
        return new PodCommandResult(code, output.ToString(), error.ToString());
    }

    /// <summary><see cref="RunAsync"/>, waiting; <paramref name="timeout"/> (default: none) ends the command when it runs too long.</summary>
    public PodCommandResult Run(string commandLine, TimeSpan? timeout = null)
    {
        using var limit = timeout is { } t && t > TimeSpan.Zero ? new CancellationTokenSource(t) : new CancellationTokenSource();
        return Task.Run(() => RunAsync(commandLine, limit.Token)).GetAwaiter().GetResult();
    }

    public override string ToString() => $"{Role}: {User}@{Address}";
}
