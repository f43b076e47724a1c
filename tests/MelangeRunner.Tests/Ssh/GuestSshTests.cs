using System.Diagnostics;
using System.Text;
using MelangeRunner.Ssh;
using Renci.SshNet;
using Xunit;
using Xunit.Abstractions;

namespace MelangeRunner.Tests.Ssh;

[CollectionDefinition("sshd", DisableParallelization = true)]
public sealed class SshdCollection : ICollectionFixture<SshdFixture>;

[Collection("sshd")]
public class GuestSshTests(SshdFixture fx, ITestOutputHelper output)
{
    private static readonly string[] Hostile =
    [
        "plain", "two words", "it's", "\"double\"", "$HOME", "${PATH}", "`id`", "$(id)", "line1\nline2", "", " ", "*", "?", "~",
        "-n", "--", "\\back\\slash", "tab\there", "ünïcødé ✓", ";", "&&", "|", "#comment", "!bang", "a=b", "'", "''", "\r\n", "%s",
    ];

    private static async Task<(int Code, List<string> Out, List<string> Err)> Run(SshConnection client, string line, CancellationToken ct = default)
    {
        var o = new List<string>();
        var e = new List<string>();
        var code = await GuestSsh.RunAsync(client, line, o.Add, e.Add, ct);
        return (code, o, e);
    }

    private static async Task<byte[]> ReadAll(Stream s)
    {
        var m = new MemoryStream();
        await s.CopyToAsync(m);
        return m.ToArray();
    }

    [SshdFact]
    public async Task Pinned_host_key_is_accepted()
    {
        using var client = await fx.ConnectAsync();
        Assert.True(client.IsConnected);
        var (code, o, _) = await Run(client, "id -u");
        Assert.Equal(0, code);
        Assert.Equal(["0"], o);
    }

    [SshdFact]
    public async Task Another_host_key_is_refused_before_authentication()
    {
        using var otherHostKey = SshKeyPair.GenerateEd25519();
        using var impostor = new SshdServer(otherHostKey, [fx.ClientKey]);
        var e = await Assert.ThrowsAsync<MelangeException>(() => fx.ConnectAsync(impostor));
        Assert.Equal(ErrorKind.SecurityError, e.Kind);
        Assert.Equal("HostKeyMismatch", e.ErrorId);
        Assert.Contains(fx.HostKey.Fingerprint + " expected", e.Message);
        Assert.Contains(otherHostKey.Fingerprint + " presented", e.Message);
        Assert.Contains($"127.0.0.1:{impostor.Port}", e.Message);
        output.WriteLine(e.Message);

        // Control: the same server, pinned to its real key, logs the authentication; the refused one never got that far.
        using (var ok = await GuestSsh.ConnectAsync("127.0.0.1", impostor.Port, "root", fx.ClientKey, otherHostKey.PublicKeyBlob, TimeSpan.FromSeconds(30), default))
            Assert.True(ok.IsConnected);
        var deadline = Stopwatch.StartNew();
        while (!impostor.Log.Any(l => l.Contains("Accepted publickey")) && deadline.Elapsed < TimeSpan.FromSeconds(5)) await Task.Delay(50);
        var log = impostor.Log;
        Assert.Single(log, l => l.Contains("publickey"));
        Assert.Contains(log, l => l.Contains("Accepted publickey"));
    }

    [Fact]
    public async Task Non_loopback_addresses_are_refused()
    {
        var e = await Assert.ThrowsAsync<MelangeException>(() => GuestSsh.ConnectAsync("10.0.2.15", 22, "root", fx.ClientKey, fx.HostKey.PublicKeyBlob, TimeSpan.FromSeconds(1), default));
        Assert.Equal("NonLoopbackAddress", e.ErrorId);
    }

    [Fact]
    public void BuildCommandLine_validates_environment_names()
    {
        foreach (var bad in new[] { "", "1A", "A-B", "A B", "A=B", "$X", "é" })
        {
            var e = Assert.Throws<MelangeException>(() => GuestSsh.BuildCommandLine(new Dictionary<string, string> { [bad] = "v" }, ["true"]));
            Assert.Equal("InvalidEnvironmentName", e.ErrorId);
        }
        Assert.Equal("NulInCommand", Assert.Throws<MelangeException>(() => GuestSsh.BuildCommandLine(null, ["echo", "a\0b"])).ErrorId);
        Assert.Equal("EmptyCommand", Assert.Throws<MelangeException>(() => GuestSsh.BuildCommandLine(null, [])).ErrorId);
        Assert.Equal("env -- A=1 _b=2 echo 'x y'", GuestSsh.BuildCommandLine(new Dictionary<string, string> { ["_b"] = "2", ["A"] = "1" }, ["echo", "x y"]));
    }

    [SshdFact]
    public async Task Hostile_arguments_and_environment_arrive_intact()
    {
        using var client = await fx.ConnectAsync();
        // Bytes, not lines: printf '%s\0' and the binary stream show every argument exactly.
        var line = "exec " + GuestSsh.BuildCommandLine(null, ["printf", "%s\\0", .. Hostile]);
        await using (var s = await GuestSsh.OpenOutputStreamAsync(client, line, _ => { }, default))
            Assert.Equal(Hostile, Encoding.UTF8.GetString(await ReadAll(s)).Split('\0')[..^1]);

        var env = new Dictionary<string, string>();
        for (var i = 0; i < Hostile.Length; i++) env[$"V{i}"] = Hostile[i];
        var script = "printf '%s\\0' " + string.Join(' ', Enumerable.Range(0, Hostile.Length).Select(i => $"\"$V{i}\""));
        line = "cd / && exec " + GuestSsh.BuildCommandLine(env, ["sh", "-c", script]);
        await using (var s = await GuestSsh.OpenOutputStreamAsync(client, line, _ => { }, default))
            Assert.Equal(Hostile, Encoding.UTF8.GetString(await ReadAll(s)).Split('\0')[..^1]);

        // And as lines through printf '%s\n' (no \r: lines split there as StreamReader does).
        var printable = Hostile.Where(h => !h.Contains('\r')).ToArray();
        var (code, o, _) = await Run(client, GuestSsh.BuildCommandLine(null, ["printf", "%s\\n", .. printable]));
        Assert.Equal(0, code);
        Assert.Equal(string.Join('\n', printable), string.Join('\n', o));
    }

    [SshdFact]
    public async Task A_program_whose_name_contains_an_equals_sign_runs()
    {
        var dir = Directory.CreateTempSubdirectory("melange-eq-").FullName;
        try
        {
            var program = Path.Combine(dir, "x=y");
            File.WriteAllText(program, "#!/bin/sh\nprintf '%s|' \"$@\"; echo \"$FOO\"\n");
            File.SetUnixFileMode(program, (UnixFileMode)0b111_101_101);
            using var client = await fx.ConnectAsync();
            var (code, o, e) = await Run(client, GuestSsh.BuildCommandLine(new Dictionary<string, string> { ["FOO"] = "bar" }, [program, "a b", "c=d"]));
            Assert.True(code == 0, string.Join('\n', e));
            Assert.Equal(["a b|c=d|bar"], o);
        }
        finally { Directory.Delete(dir, true); }
    }

    [SshdFact]
    public async Task Output_lines_stream_before_the_command_ends()
    {
        using var client = await fx.ConnectAsync();
        var firstLine = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var lines = new List<string>();
        var run = GuestSsh.RunAsync(client, "echo a; sleep 1; echo b", l => { lines.Add(l); firstLine.TrySetResult(l); }, _ => { }, default);
        Assert.Equal("a", await firstLine.Task.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.False(run.IsCompleted, "the first line must arrive while the command still runs");
        Assert.Equal(0, await run);
        Assert.Equal(["a", "b"], lines);
    }

    [SshdFact]
    public async Task Stdout_stderr_and_exit_status_are_separate()
    {
        using var client = await fx.ConnectAsync();
        var (code, o, e) = await Run(client, "echo out; echo err >&2; printf 'no newline'; exit 7");
        Assert.Equal(7, code);
        Assert.Equal(["out", "no newline"], o);
        Assert.Equal(["err"], e);
    }

    [SshdFact]
    public async Task Utf8_split_across_chunks_is_decoded()
    {
        using var client = await fx.ConnectAsync();
        // The first half of "é" in one write, the second half a moment later.
        var (code, o, _) = await Run(client, "printf 'caf\\303'; sleep 0.3; printf '\\251\\n'; printf '✓✓✓'");
        Assert.Equal(0, code);
        Assert.Equal(["café", "✓✓✓"], o);
    }

    [SshdFact]
    public async Task A_signal_becomes_128_plus_its_number()
    {
        using var client = await fx.ConnectAsync();
        var exit = await GuestSsh.RunWithExitAsync(client, "exec sh -c 'kill -KILL $$'", _ => { }, _ => { }, default);
        Assert.Equal(137, exit.ExitCode);
        Assert.Equal("KILL", exit.Signal);
        Assert.Null(exit.ExitStatus);
    }

    [SshdFact]
    public async Task Cancellation_ends_the_remote_command()
    {
        using var client = await fx.ConnectAsync();
        var marker = $"3000.{Random.Shared.Next(100000, 999999)}";
        using var cts = new CancellationTokenSource();
        var run = GuestSsh.RunAsync(client, "cd / && exec " + GuestSsh.BuildCommandLine(null, ["sleep", marker]), _ => { }, _ => { }, cts.Token);
        var watch = Stopwatch.StartNew();
        while (fx.Server!.ProcessesWith("sleep " + marker).Count == 0)
        {
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), "the remote sleep never started");
            await Task.Delay(20);
        }
        watch.Restart();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run);
        var cancelled = watch.Elapsed;
        while (fx.Server.ProcessesWith("sleep " + marker).Count > 0)
        {
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), "the remote sleep survived the cancellation");
            await Task.Delay(20);
        }
        output.WriteLine($"cancel returned after {cancelled.TotalMilliseconds:F0} ms; remote process gone after {watch.Elapsed.TotalMilliseconds:F0} ms");
        // The client is still usable.
        Assert.Equal(0, (await Run(client, "true")).Code);
    }

    [SshdFact]
    public async Task A_100_MB_output_stream_is_read_in_bounded_memory()
    {
        using var client = await fx.ConnectAsync();
        const long size = 100_000_000;
        // The live managed heap after a full collection: what the stream holds on to. The working
        // set is not used: garbage waits for a collection whose budget follows the host's L3
        // cache size (tens to hundreds of MiB), so it measured the host, not the stream.
        var before = GC.GetTotalMemory(forceFullCollection: true);
        var peak = before;
        var watch = Stopwatch.StartNew();
        long total = 0;
        await using (var s = await GuestSsh.OpenOutputStreamAsync(client, $"head -c {size} /dev/zero", _ => { }, default))
        {
            var buffer = new byte[81920];
            int n;
            var sampled = 0L;
            while ((n = await s.ReadAsync(buffer)) > 0)
            {
                total += n;
                if (total - sampled > 10_000_000)
                {
                    sampled = total;
                    peak = Math.Max(peak, GC.GetTotalMemory(forceFullCollection: true));
                }
            }
        }
        watch.Stop();
        Assert.Equal(size, total);
        var growth = (peak - before) / 1048576.0;
        output.WriteLine($"100 MB in {watch.Elapsed.TotalSeconds:F2} s with a full collection every 10 MB; live heap before {before / 1048576.0:F1} MiB, peak growth {growth:F1} MiB");
        Assert.True(growth < 16, $"the live heap grew by {growth:F1} MiB while streaming");
    }

    [SshdFact]
    public async Task The_output_backpressure_reaches_the_command_channel()
    {
        // Without it (an SSH.NET whose internals moved), a slow reader buffers without limit.
        using var client = await fx.ConnectAsync();
        using var command = client.Client.CreateCommand("true");
        var exec = command.ExecuteAsync();
        using (var backpressure = new OutputBackpressure(command))
            Assert.True(backpressure.Attached, "SshCommand's channel was not reachable");
        await exec;
        Assert.Equal(0, command.ExitStatus);
    }

    [SshdFact]
    public async Task A_failing_output_command_throws_at_the_end_of_its_data()
    {
        using var client = await fx.ConnectAsync();
        var errors = new List<string>();
        await using var s = await GuestSsh.OpenOutputStreamAsync(client, "head -c 1000 /dev/zero; echo 'tar: broken' >&2; exit 3", errors.Add, default);
        var buffer = new byte[4096];
        long total = 0;
        var e = await Assert.ThrowsAsync<MelangeException>(async () =>
        {
            int n;
            while ((n = await s.ReadAsync(buffer)) > 0) total += n;
        });
        Assert.Equal(1000, total);
        Assert.Equal("RemoteCommandFailed", e.ErrorId);
        Assert.Equal(ErrorKind.NonZeroExit, e.Kind);
        Assert.Contains("tar: broken", e.Message);
        Assert.Contains("exit status 3", e.Message);
        Assert.Equal(["tar: broken"], errors);
    }

    [SshdFact]
    public async Task Disposing_the_output_stream_early_stops_the_command()
    {
        using var client = await fx.ConnectAsync();
        var marker = $"3000.{Random.Shared.Next(100000, 999999)}";
        var s = await GuestSsh.OpenOutputStreamAsync(client, $"echo start; exec sleep {marker}", _ => { }, default);
        var buffer = new byte[6];
        Assert.True(await s.ReadAsync(buffer) > 0);
        await s.DisposeAsync();
        var watch = Stopwatch.StartNew();
        while (fx.Server!.ProcessesWith("sleep " + marker).Count > 0)
        {
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), "the remote command survived the stream's disposal");
            await Task.Delay(20);
        }
    }

    [SshdFact]
    public async Task A_warm_client_runs_true_quickly()
    {
        using var client = await fx.ConnectAsync();
        for (var i = 0; i < 5; i++) await Run(client, "true");
        const int n = 30;
        var watch = Stopwatch.StartNew();
        for (var i = 0; i < n; i++) Assert.Equal(0, (await Run(client, "true")).Code);
        watch.Stop();
        output.WriteLine($"RunAsync(\"true\") on a warm client: {watch.Elapsed.TotalMilliseconds / n:F2} ms per round trip ({n} runs)");
    }

    [SshdFact]
    public async Task Killing_the_server_mid_command_loses_the_connection_promptly()
    {
        using var server = new SshdServer(fx.HostKey, [fx.ClientKey]);
        using var client = await fx.ConnectAsync(server);
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = GuestSsh.RunAsync(client, "echo started; exec sleep 300", _ => started.TrySetResult(), _ => { }, default);
        await started.Task.WaitAsync(TimeSpan.FromSeconds(10));
        var watch = Stopwatch.StartNew();
        server.Signal(server.SessionProcesses(), SshdServer.SIGKILL);
        var e = await Assert.ThrowsAsync<MelangeException>(() => run.WaitAsync(TimeSpan.FromSeconds(10)));
        output.WriteLine($"SshConnectionLost after {watch.Elapsed.TotalMilliseconds:F0} ms: {e.Message}");
        Assert.Equal("SshConnectionLost", e.ErrorId);
        Assert.Equal(ErrorKind.ConnectionError, e.Kind);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(3), watch.Elapsed.ToString());
        // Later commands fail the same way, at once.
        Assert.Equal("SshConnectionLost", (await Assert.ThrowsAsync<MelangeException>(() => Run(client, "true"))).ErrorId);
    }

    [SshdFact]
    public async Task Killing_the_server_mid_stream_surfaces_from_Read()
    {
        using var server = new SshdServer(fx.HostKey, [fx.ClientKey]);
        using var client = await fx.ConnectAsync(server);
        await using var s = await GuestSsh.OpenOutputStreamAsync(client, "head -c 1000 /dev/zero; exec sleep 300", _ => { }, default);
        var buffer = new byte[4096];
        Assert.True(await s.ReadAsync(buffer) > 0);
        server.Signal(server.SessionProcesses(), SshdServer.SIGKILL);
        var e = await Assert.ThrowsAsync<MelangeException>(async () =>
        {
            while (await s.ReadAsync(buffer).AsTask().WaitAsync(TimeSpan.FromSeconds(10)) > 0) { }
        });
        Assert.Equal("SshConnectionLost", e.ErrorId);
    }
}
