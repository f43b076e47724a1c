using System.Diagnostics;
using MelangeRunner.Ssh;
using Xunit;
using Xunit.Abstractions;

namespace MelangeRunner.Tests.Ssh;

[Collection("sshd")]
public class SshKeepaliveTests(SshdFixture fx, ITestOutputHelper output)
{
    [SshdFact]
    public async Task Keepalives_are_answered_by_a_live_server()
    {
        using var client = await fx.ConnectAsync();
        string? dead = null;
        using var keepalive = new SshKeepalive(client, "build", r => dead = r, TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(2));
        Assert.StartsWith("global request", keepalive.ProbeKind);
        var rtt = await keepalive.ProbeAsync();
        output.WriteLine($"keepalive round trip {rtt.TotalMilliseconds:F1} ms");
        var watch = Stopwatch.StartNew();
        while (keepalive.Answered < 5)
        {
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"only {keepalive.Answered} keepalives answered");
            await Task.Delay(50);
        }
        Assert.Null(dead);
        // The session survives the replies (SSH.NET would drop it on an unregistered message type).
        var lines = new List<string>();
        Assert.Equal(0, await GuestSsh.RunAsync(client, "echo ok", lines.Add, _ => { }, default));
        Assert.Equal(["ok"], lines);
        Assert.True(client.IsConnected);
    }

    [SshdFact]
    public async Task A_server_that_stops_answering_is_declared_dead_within_the_bound()
    {
        using var server = new SshdServer(fx.HostKey, [fx.ClientKey]);
        using var client = await fx.ConnectAsync(server);
        var interval = TimeSpan.FromMilliseconds(500);
        var timeout = TimeSpan.FromMilliseconds(400);
        const int maxMissed = 3;
        var died = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var keepalive = new SshKeepalive(client, "build", r => died.TrySetResult(r), interval, timeout, maxMissed);

        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var run = GuestSsh.RunAsync(client, "echo started; exec sleep 300", _ => started.TrySetResult(), _ => { }, default);
        await started.Task.WaitAsync(TimeSpan.FromSeconds(10));
        var watch = Stopwatch.StartNew();
        while (keepalive.Answered < 1) await Task.Delay(20).WaitAsync(TimeSpan.FromSeconds(10));

        var frozen = server.SessionProcesses();
        watch.Restart();
        server.Signal(frozen, SshdServer.SIGSTOP);
        try
        {
            var reason = await died.Task.WaitAsync(TimeSpan.FromSeconds(30));
            var detected = watch.Elapsed;
            var bound = interval * maxMissed + timeout;
            output.WriteLine($"dead after {detected.TotalMilliseconds:F0} ms (bound {bound.TotalMilliseconds:F0} ms + 1 s slack): {reason}");
            Assert.Contains("3 consecutive keepalives missed", reason);
            Assert.True(detected <= bound + TimeSpan.FromSeconds(1), $"{detected} > {bound}");
            Assert.True(detected >= interval * (maxMissed - 1), $"declared dead too early: {detected}");

            // The command in flight fails at once, with the keepalive's reason.
            var e = await Assert.ThrowsAsync<MelangeException>(() => run.WaitAsync(TimeSpan.FromSeconds(3)));
            Assert.Equal("SshConnectionLost", e.ErrorId);
            Assert.Contains("keepalives missed", e.Message);
            output.WriteLine($"in-flight command failed after {watch.Elapsed.TotalMilliseconds:F0} ms");
            Assert.Equal("SshConnectionLost", (await Assert.ThrowsAsync<MelangeException>(() => GuestSsh.RunAsync(client, "true", _ => { }, _ => { }, default))).ErrorId);
        }
        finally
        {
            server.Signal(frozen, SshdServer.SIGCONT);
        }
    }

    [SshdFact]
    public async Task Dispose_stops_the_probes()
    {
        using var client = await fx.ConnectAsync();
        var keepalive = new SshKeepalive(client, "control", _ => { }, TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(2));
        await Task.Delay(400);
        keepalive.Dispose();
        var answered = keepalive.Answered;
        await Task.Delay(400);
        Assert.Equal(answered, keepalive.Answered);
        Assert.True(client.IsConnected);
    }
}
