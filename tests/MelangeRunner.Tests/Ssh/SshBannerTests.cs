using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using MelangeRunner.Ssh;
using Xunit;

namespace MelangeRunner.Tests.Ssh;

public class SshBannerTests
{
    [Fact]
    public async Task A_listener_that_never_sends_a_banner_times_out()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var accepted = new List<Socket>();
        using var stop = new CancellationTokenSource();
        var acceptLoop = Task.Run(async () =>
        {
            try { while (true) accepted.Add(await listener.AcceptSocketAsync(stop.Token)); }
            catch (OperationCanceledException) { }
        });
        var watch = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<MelangeException>(() => SshBanner.WaitAsync("127.0.0.1", port, () => false, TimeSpan.FromSeconds(1.5), CancellationToken.None));
        watch.Stop();
        stop.Cancel();
        await acceptLoop;
        foreach (var s in accepted) s.Dispose();
        Assert.Equal(ErrorKind.OperationTimeout, e.Kind);
        Assert.Equal("SshNotReady", e.ErrorId);
        Assert.InRange(watch.Elapsed.TotalSeconds, 1.4, 3.5);
        Assert.NotEmpty(accepted);
    }

    [Fact]
    public async Task A_listener_that_closes_at_once_is_polled_until_the_deadline()
    {
        // qemu's forward before the guest listens: accept, then close.
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var count = 0;
        using var stop = new CancellationTokenSource();
        var acceptLoop = Task.Run(async () =>
        {
            try { while (true) { using var s = await listener.AcceptSocketAsync(stop.Token); Interlocked.Increment(ref count); } }
            catch (OperationCanceledException) { }
        });
        var e = await Assert.ThrowsAsync<MelangeException>(() => SshBanner.WaitAsync("127.0.0.1", port, () => false, TimeSpan.FromSeconds(1), CancellationToken.None));
        stop.Cancel();
        await acceptLoop;
        Assert.Equal("SshNotReady", e.ErrorId);
        Assert.InRange(count, 3, 20); // about every 100 ms
    }

    [Fact]
    public async Task An_exited_vm_is_reported_at_once()
    {
        var watch = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<MelangeException>(() => SshBanner.WaitAsync("127.0.0.1", 9, () => true, TimeSpan.FromSeconds(30), CancellationToken.None));
        Assert.Equal(ErrorKind.InvalidOperation, e.Kind);
        Assert.Equal("VmExited", e.ErrorId);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(1), watch.Elapsed.ToString());
    }

    [Fact]
    public async Task A_vm_that_exits_while_polling_is_reported_within_a_poll()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop(); // nothing listens: connection refused
        var exitAt = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<MelangeException>(() => SshBanner.WaitAsync("127.0.0.1", port,
            () => exitAt.Elapsed > TimeSpan.FromMilliseconds(500), TimeSpan.FromSeconds(30), CancellationToken.None));
        Assert.Equal("VmExited", e.ErrorId);
        Assert.InRange(exitAt.Elapsed.TotalSeconds, 0.5, 2);
    }

    [Fact]
    public async Task Cancellation_is_honoured()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => SshBanner.WaitAsync("127.0.0.1", 9, () => false, TimeSpan.FromSeconds(30), cts.Token));
    }
}
