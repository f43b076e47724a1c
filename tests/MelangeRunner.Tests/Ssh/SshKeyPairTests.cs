using System.Diagnostics;
using MelangeRunner.HostProcess;
using MelangeRunner.Ssh;
using Xunit;

namespace MelangeRunner.Tests.Ssh;

public class SshKeyPairTests
{
    public static TheoryData<string> Algorithms => new() { SshKeyPair.Ed25519, SshKeyPair.EcdsaP256 };

    private static SshKeyPair Make(string algorithm) => algorithm == SshKeyPair.Ed25519 ? SshKeyPair.GenerateEd25519() : SshKeyPair.GenerateEcdsaP256();

    [Theory]
    [MemberData(nameof(Algorithms))]
    public void Public_parts_are_consistent(string algorithm)
    {
        using var key = Make(algorithm);
        Assert.Equal(algorithm, key.Algorithm);
        Assert.Equal(algorithm, SshWire.AlgorithmOf(key.PublicKeyBlob));
        Assert.StartsWith(algorithm + " AAAA", key.AuthorizedKeysLine);
        Assert.EndsWith(" melange-runner", key.AuthorizedKeysLine);
        Assert.Equal(key.PublicKeyBlob, SshKeyPair.ParsePublicKeyLine(key.AuthorizedKeysLine));
        Assert.StartsWith("SHA256:", key.Fingerprint);
        Assert.DoesNotContain("PRIVATE", key.ToString());
        var text = System.Text.Encoding.ASCII.GetString(key.OpenSshPrivateKey);
        Assert.StartsWith("-----BEGIN OPENSSH PRIVATE KEY-----\n", text);
        Assert.EndsWith("-----END OPENSSH PRIVATE KEY-----\n", text);
        Assert.All(text.Split('\n')[1..^2], line => Assert.InRange(line.Length, 1, 70));
        Assert.NotNull(key.ToSshNetKey());
    }

    [Theory]
    [MemberData(nameof(Algorithms))]
    public void Ssh_keygen_reads_the_private_key_and_derives_the_same_public_key(string algorithm)
    {
        if (HostCommand.FindOnPath("ssh-keygen") is null) return; // openssh-client absent: covered by the SSH.NET parse above
        using var key = Make(algorithm);
        var dir = Directory.CreateTempSubdirectory("melange-key-test-").FullName;
        try
        {
            var path = Path.Combine(dir, "id");
            File.WriteAllBytes(path, key.OpenSshPrivateKey);
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            var (code, output) = Run("ssh-keygen", "-y", "-f", path);
            Assert.True(code == 0, output);
            Assert.Equal(key.AuthorizedKeysLine, output.Trim());
            (code, output) = Run("ssh-keygen", "-l", "-f", path);
            Assert.True(code == 0, output);
            Assert.Contains(key.Fingerprint, output);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Dispose_zeroes_the_private_key()
    {
        var key = SshKeyPair.GenerateEd25519();
        var file = key.OpenSshPrivateKey;
        Assert.Contains(file, b => b != 0);
        key.Dispose();
        Assert.All(file, b => Assert.Equal(0, b));
        Assert.Throws<ObjectDisposedException>(() => key.OpenSshPrivateKey);
        Assert.Throws<ObjectDisposedException>(() => key.ToSshNetKey());
    }

    [Fact]
    public void Keys_are_fresh_each_time()
    {
        using var a = SshKeyPair.GenerateEd25519();
        using var b = SshKeyPair.GenerateEd25519();
        Assert.NotEqual(a.PublicKeyBlob, b.PublicKeyBlob);
    }

    internal static (int Code, string Output) Run(string program, params string[] args)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var a in args) start.ArgumentList.Add(a);
        using var p = Process.Start(start)!;
        p.StandardInput.Close();
        var err = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output + err.Result);
    }
}
