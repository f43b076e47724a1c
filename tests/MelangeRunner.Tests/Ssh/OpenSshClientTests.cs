using System.Diagnostics;
using MelangeRunner.HostProcess;
using MelangeRunner.Ssh;
using Xunit;

namespace MelangeRunner.Tests.Ssh;

[Collection("sshd")]
public class OpenSshClientTests(SshdFixture fx)
{
    private static (int Code, string Output) Run(OpenSshSession session)
    {
        var start = new ProcessStartInfo(session.FileName) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var a in session.Arguments) start.ArgumentList.Add(a);
        using var p = Process.Start(start)!;
        p.StandardInput.Close();
        var err = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEnd();
        Assert.True(p.WaitForExit(30000));
        return (p.ExitCode, output + err.Result);
    }

    [SshdFact]
    public void The_system_ssh_client_logs_in_with_the_pinned_key_and_cleans_up()
    {
        if (HostCommand.FindOnPath("ssh") is null) return; // openssh-client absent: Prepare would throw NotInstalled
        var line = GuestSsh.BuildCommandLine(new Dictionary<string, string> { ["X"] = "a b" }, ["sh", "-c", "test -t 0 && echo tty; echo \"$X\"; exit 5"]);
        string dir;
        using (var session = OpenSshClient.Prepare("127.0.0.1", fx.Server!.Port, "root", fx.ClientKey, fx.HostKey.PublicKeyBlob, line))
        {
            dir = session.Directory;
            Assert.Equal((UnixFileMode)0b111_000_000, File.GetUnixFileMode(dir));
            Assert.Equal((UnixFileMode)0b110_000_000, File.GetUnixFileMode(session.IdentityPath));
            Assert.Equal((UnixFileMode)0b110_000_000, File.GetUnixFileMode(session.KnownHostsPath));
            Assert.Contains("-tt", session.Arguments);
            Assert.Contains("StrictHostKeyChecking=yes", session.Arguments);
            var (code, output) = Run(session);
            Assert.Equal(5, code);
            Assert.Contains("tty", output);   // a real PTY
            Assert.Contains("a b", output);
        }
        Assert.False(Directory.Exists(dir));
    }

    [SshdFact]
    public void The_system_ssh_client_refuses_another_host_key()
    {
        if (HostCommand.FindOnPath("ssh") is null) return;
        using var other = SshKeyPair.GenerateEd25519();
        using var session = OpenSshClient.Prepare("127.0.0.1", fx.Server!.Port, "root", fx.ClientKey, other.PublicKeyBlob, "echo should-not-run");
        var (code, output) = Run(session);
        Assert.Equal(255, code);
        Assert.DoesNotContain("should-not-run", output);
        Assert.Contains("Host key verification failed", output);
    }
}
