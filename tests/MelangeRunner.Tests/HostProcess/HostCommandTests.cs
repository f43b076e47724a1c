using System.Diagnostics;
using MelangeRunner.HostProcess;
using Xunit;

namespace MelangeRunner.Tests.HostProcess;

public class HostCommandTests
{
    [Fact]
    public void FindOnPathTakesAPathAsItIsAndSearchesPathOtherwise()
    {
        Assert.Equal("/bin/sh", HostCommand.FindOnPath("/bin/sh"));
        Assert.True(Path.IsPathRooted(HostCommand.FindOnPath("sh")));
        Assert.Null(HostCommand.FindOnPath("melange-no-such-program"));
        Assert.Null(HostCommand.FindOnPath("/nonexistent/sh"));
    }

    [Fact]
    public void CaptureGivesTheStatusAndTheOutput()
    {
        var (code, both) = HostCommand.Capture("/bin/sh", "-c", "echo out; echo err >&2; exit 3");
        Assert.Equal(3, code);
        Assert.Equal("out\nerr\n", both);
        var (_, output) = HostCommand.Capture("/bin/sh", new[] { "-c", "echo $LC_ALL; echo err >&2" }, includeStandardError: false,
            new Dictionary<string, string> { ["LC_ALL"] = "C" });
        Assert.Equal("C\n", output);
        Assert.Equal("ProgramNotFound", Assert.Throws<MelangeException>(() => HostCommand.Capture("/nonexistent/program")).ErrorId);
    }

    [Fact]
    public async Task StopWaitsThenTerminatesThenKills()
    {
        // Ignores SIGTERM: only SIGKILL ends it.
        using var stubborn = HostCommand.StartLongRunning("/bin/sh", new[] { "-c", "trap '' TERM; while :; do sleep 0.1; done" }, NullEventSink.Instance,
            _ => { }, _ => { }, redirectInput: false);
        var steps = new List<string>();
        var watch = Stopwatch.StartNew();
        await HostCommand.StopAsync(stubborn, TimeSpan.FromMilliseconds(200), TimeSpan.FromMilliseconds(300), () => steps.Add("TERM"), () => steps.Add("KILL"));
        Assert.True(stubborn.HasExited);
        Assert.Equal(new[] { "TERM", "KILL" }, steps);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10));

        using var quick = HostCommand.StartLongRunning("/bin/sh", new[] { "-c", "exit 0" }, NullEventSink.Instance, _ => { }, _ => { }, redirectInput: false);
        await HostCommand.StopAsync(quick, TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(5), () => steps.Add("TERM2"), () => steps.Add("KILL2"));
        Assert.DoesNotContain("TERM2", steps); // it ended by itself within the first wait
    }
}
