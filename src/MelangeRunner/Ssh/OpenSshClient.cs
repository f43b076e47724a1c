using System.Security.Cryptography;
using System.Text;
using MelangeRunner.HostProcess;

namespace MelangeRunner.Ssh;

/// <summary>
/// An interactive session through the system's OpenSSH client (<c>ssh -tt</c>), which follows the
/// terminal size and modes itself. The files it needs live in a private temporary directory until
/// <see cref="Dispose"/>.
/// </summary>
internal sealed class OpenSshSession : IDisposable
{
    private readonly HostProcess.Reaper.Registration _identityWatch, _directoryWatch;

    internal OpenSshSession(string fileName, IReadOnlyList<string> arguments, string directory, string knownHostsPath, string identityPath,
        HostProcess.Reaper.Registration identityWatch, HostProcess.Reaper.Registration directoryWatch)
    {
        _identityWatch = identityWatch;
        _directoryWatch = directoryWatch;
        FileName = fileName;
        Arguments = arguments;
        Directory = directory;
        KnownHostsPath = knownHostsPath;
        IdentityPath = identityPath;
    }

    /// <summary>The ssh program's full path.</summary>
    public string FileName { get; }

    /// <summary>The arguments after the program name.</summary>
    public IReadOnlyList<string> Arguments { get; }

    /// <summary>The private (0700) directory holding the two files.</summary>
    public string Directory { get; }
    public string KnownHostsPath { get; }
    public string IdentityPath { get; }

    /// <summary>Overwrites the private key file with random bytes, then deletes both files and the directory.</summary>
    public void Dispose()
    {
        IO.SecureFile.TryDelete(IdentityPath);
        try { File.Delete(KnownHostsPath); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        try { System.IO.Directory.Delete(Directory, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        _identityWatch.Dispose();
        _directoryWatch.Dispose();
    }
}

internal static class OpenSshClient
{
    /// <summary>
    /// Writes a known_hosts file holding only the pinned key (for both <c>host</c> and
    /// <c>[host]:port</c>) and the client key (mode 0600) into a new 0700 temporary directory,
    /// and returns the <c>ssh</c> command: strict host key checking against that file only, that
    /// identity only, no agent, no user or system ssh_config (<c>-F /dev/null</c>), melange's
    /// keepalive (30 s × 3), a forced PTY (<c>-tt</c>), and <paramref name="commandLine"/> (or a
    /// login shell when null). Missing <c>ssh</c> → MelangeException(NotInstalled, "OpenSshClientNotFound").
    /// </summary>
    public static OpenSshSession Prepare(string host, int port, string user, SshKeyPair clientKey, byte[] pinnedHostKeyBlob, string? commandLine)
    {
        ArgumentNullException.ThrowIfNull(clientKey);
        ArgumentNullException.ThrowIfNull(pinnedHostKeyBlob);
        if (string.IsNullOrEmpty(user) || user[0] == '-' || !user.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.' or '$'))
            throw new MelangeException(ErrorKind.InvalidArgument, "InvalidUserName", $"'{user}' is not a user name that can be given to ssh.", "Use a plain user name.", user);
        if (string.IsNullOrEmpty(host) || host[0] == '-' || host.Any(c => char.IsWhiteSpace(c) || c is '@' or ','))
            throw new MelangeException(ErrorKind.InvalidArgument, "InvalidHost", $"'{host}' is not a host that can be given to ssh.", "Use 127.0.0.1.", host);
        ArgumentOutOfRangeException.ThrowIfLessThan(port, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(port, 65535);

        var ssh = HostCommand.FindOnPath("ssh") ?? throw new MelangeException(ErrorKind.NotInstalled, "OpenSshClientNotFound",
            "The OpenSSH client 'ssh' is not on PATH; an interactive session in a qemu pod needs it.",
            "Install it: sudo apt-get install openssh-client (Debian/Ubuntu), or the openssh-client package of your distribution.", "ssh");

        var directory = System.IO.Directory.CreateTempSubdirectory("melange-ssh-").FullName;
        var directoryWatch = HostProcess.Reaper.WatchPath(directory);
        var identityWatch = HostProcess.Reaper.WatchPath(Path.Combine(directory, "id"), secret: true);
        try
        {
            File.SetUnixFileMode(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            var knownHosts = Path.Combine(directory, "known_hosts");
            var identity = Path.Combine(directory, "id");
            var keyLine = SshKeyPair.AuthorizedKeysLineOf(pinnedHostKeyBlob);
            WritePrivate(knownHosts, Encoding.ASCII.GetBytes($"[{host}]:{port} {keyLine}\n{host} {keyLine}\n"));
            WritePrivate(identity, clientKey.OpenSshPrivateKey);

            var args = new List<string>
            {
                "-F", "/dev/null",
                "-o", "StrictHostKeyChecking=yes",
                "-o", "UserKnownHostsFile=" + knownHosts,
                "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "HostKeyAlgorithms=" + SshWire.AlgorithmOf(pinnedHostKeyBlob),
                // The guest's half of the key exchange is emulated: P-256 first, as GuestSsh does.
                "-o", "KexAlgorithms=^ecdh-sha2-nistp256",
                "-o", "CheckHostIP=no",
                "-o", "UpdateHostKeys=no",
                "-o", "IdentitiesOnly=yes",
                "-o", "IdentityFile=" + identity,
                "-o", "IdentityAgent=none",
                "-o", "PasswordAuthentication=no",
                "-o", "KbdInteractiveAuthentication=no",
                "-o", "ServerAliveInterval=30",
                "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=ERROR",
                "-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture),
                "-tt",
                $"{user}@{host}",
            };
            if (commandLine is not null)
            {
                args.Add("--");
                args.Add(commandLine);
            }
            return new OpenSshSession(ssh, args, directory, knownHosts, identity, identityWatch, directoryWatch);
        }
        catch
        {
            IO.SecureFile.TryDelete(Path.Combine(directory, "id"));
            try { System.IO.Directory.Delete(directory, recursive: true); } catch (IOException) { }
            identityWatch.Dispose();
            directoryWatch.Dispose();
            throw;
        }
    }

    private static void WritePrivate(string path, byte[] content)
    {
        using var file = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
        file.Write(content);
        file.Flush(flushToDisk: true);
    }
}
