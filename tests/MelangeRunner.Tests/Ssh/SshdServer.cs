using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using MelangeRunner.Ssh;
using Xunit;

namespace MelangeRunner.Tests.Ssh;

/// <summary>A Fact that is skipped, with the reason, when a real sshd cannot be run here.</summary>
public sealed class SshdFactAttribute : FactAttribute
{
    public SshdFactAttribute()
    {
        if (SshdServer.WhyUnavailable() is { } why) Skip = why;
    }
}

/// <summary>A real OpenSSH sshd on 127.0.0.1 with a host key made by SshKeyPair; killed on Dispose.</summary>
public sealed class SshdServer : IDisposable
{
    public const string Program = "/usr/sbin/sshd";
    private readonly Process _process;
    private readonly ConcurrentQueue<string> _log = new();

    public static string? WhyUnavailable()
    {
        if (!File.Exists(Program)) return $"{Program} is not installed (Debian package openssh-server).";
        if (Environment.UserName != "root" && geteuid() != 0) return "sshd must run as root for these tests.";
        return null;
    }

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern uint geteuid();

    public SshdServer(SshKeyPair hostKey, IEnumerable<SshKeyPair> clientKeys)
    {
        Directory = System.IO.Directory.CreateTempSubdirectory("melange-sshd-test-").FullName;
        System.IO.Directory.CreateDirectory("/run/sshd"); // privilege separation directory
        var hostKeyPath = Path.Combine(Directory, "host_key");
        File.WriteAllBytes(hostKeyPath, hostKey.OpenSshPrivateKey);
        File.SetUnixFileMode(hostKeyPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        File.WriteAllLines(Path.Combine(Directory, "authorized_keys"), clientKeys.Select(k => k.AuthorizedKeysLine));
        Port = FreePort();
        var config = Path.Combine(Directory, "sshd_config");
        File.WriteAllText(config, $"""
            Port {Port}
            ListenAddress 127.0.0.1
            HostKey {hostKeyPath}
            AuthorizedKeysFile {Directory}/authorized_keys
            PidFile {Directory}/sshd.pid
            UsePAM no
            StrictModes no
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            LogLevel VERBOSE
            MaxStartups 200
            MaxSessions 100
            """ + "\n");
        var start = new ProcessStartInfo(Program) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in new[] { "-D", "-e", "-f", config }) start.ArgumentList.Add(a);
        _process = Process.Start(start)!;
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) _log.Enqueue(e.Data); };
        _process.OutputDataReceived += (_, e) => { if (e.Data is not null) _log.Enqueue(e.Data); };
        _process.BeginErrorReadLine();
        _process.BeginOutputReadLine();
        try
        {
            SshBanner.WaitAsync("127.0.0.1", Port, () => _process.HasExited, TimeSpan.FromSeconds(15), CancellationToken.None).GetAwaiter().GetResult();
        }
        catch
        {
            Dispose();
            throw new InvalidOperationException("sshd did not start: " + string.Join("\n", _log));
        }
    }

    public string Directory { get; }
    public int Port { get; }
    public int Pid => _process.Id;
    public IReadOnlyList<string> Log => _log.ToArray();

    /// <summary>The sshd processes serving connections (every descendant of the listener).</summary>
    public IReadOnlyList<int> SessionProcesses() => Descendants(_process.Id).ToList();

    public void Signal(IEnumerable<int> pids, int signal)
    {
        foreach (var pid in pids) kill(pid, signal);
    }

    public const int SIGKILL = 9, SIGSTOP = 19, SIGCONT = 18;

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int kill(int pid, int sig);

    public static IEnumerable<int> Descendants(int root)
    {
        var children = new Dictionary<int, List<int>>();
        foreach (var dir in System.IO.Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid)) continue;
            string stat;
            try { stat = File.ReadAllText(Path.Combine(dir, "stat")); } catch (IOException) { continue; }
            var rest = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            var ppid = int.Parse(rest[1]);
            if (!children.TryGetValue(ppid, out var list)) children[ppid] = list = new List<int>();
            list.Add(pid);
        }
        var queue = new Queue<int>([root]);
        while (queue.Count > 0)
            foreach (var child in children.GetValueOrDefault(queue.Dequeue()) ?? [])
            {
                yield return child;
                queue.Enqueue(child);
            }
    }

    /// <summary>Process ids whose command line contains <paramref name="marker"/>, among this server's descendants.</summary>
    public IReadOnlyList<int> ProcessesWith(string marker)
        => SessionProcesses().Where(pid =>
        {
            try { return File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ').Contains(marker, StringComparison.Ordinal); }
            catch (IOException) { return false; }
        }).ToList();

    private static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    public void Dispose()
    {
        try
        {
            var all = Descendants(_process.Id).ToList();
            Signal(all, SIGCONT);
            Signal(all, SIGKILL);
            if (!_process.HasExited) _process.Kill();
            _process.WaitForExit(5000);
        }
        catch (InvalidOperationException) { }
        _process.Dispose();
        try { System.IO.Directory.Delete(Directory, true); } catch (IOException) { }
    }
}

/// <summary>One sshd and the keys for the whole test class.</summary>
public sealed class SshdFixture : IDisposable
{
    public SshdFixture()
    {
        HostKey = SshKeyPair.GenerateEd25519();
        ClientKey = SshKeyPair.GenerateEcdsaP256();
        if (SshdServer.WhyUnavailable() is null) Server = new SshdServer(HostKey, [ClientKey]);
    }

    public SshKeyPair HostKey { get; }
    public SshKeyPair ClientKey { get; }
    public SshdServer? Server { get; }

    internal Task<SshConnection> ConnectAsync(SshdServer? server = null)
        => GuestSsh.ConnectAsync("127.0.0.1", (server ?? Server!).Port, "root", ClientKey, HostKey.PublicKeyBlob, TimeSpan.FromSeconds(30), CancellationToken.None);

    public void Dispose()
    {
        Server?.Dispose();
        HostKey.Dispose();
        ClientKey.Dispose();
    }
}
