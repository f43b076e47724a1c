using Renci.SshNet;

namespace MelangeRunner;

/// <summary>
/// One of a qemu pod's three SSH clients (build, control, control-build), shown by what it
/// is and where it goes. The SSH.NET client itself is reached through a method, so that
/// formatting and ConvertTo-Json never walk into its connection, its session or its keys.
/// </summary>
public sealed class PodSshClient
{
    internal PodSshClient(string role, SshClient client)
    {
        Role = role;
        Client = client;
    }

    /// <summary>build (RunAs on port 22, chrooted), control (root on 2223) or control-build (root on 22, chrooted).</summary>
    public string Role { get; }

    public string User => Client.ConnectionInfo.Username;

    public string Address => $"{Client.ConnectionInfo.Host}:{Client.ConnectionInfo.Port}";

    public bool IsConnected => Client.IsConnected;

    internal SshClient Client { get; }

    /// <summary>The SSH.NET client, for scripts that need more than the cmdlets give.</summary>
    public SshClient GetSshClient() => Client;

    public override string ToString() => $"{Role}: {User}@{Address}";
}
