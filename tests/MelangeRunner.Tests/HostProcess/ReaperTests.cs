using System.Diagnostics;
using MelangeRunner.HostProcess;
using Xunit;

namespace MelangeRunner.Tests.HostProcess;

/// <summary>
/// The reaper script itself, run as the module runs it but with a stdin the test closes (as the
/// death of the module's process does), so that nothing here has to die for real.
/// </summary>
public class ReaperTests
{
    private static Process StartReaper()
    {
        using var s = typeof(Reaper).Assembly.GetManifestResourceStream("MelangeRunner.HostProcess.melange-reaper")!;
        var script = new StreamReader(s).ReadToEnd();
        var start = new ProcessStartInfo("/bin/sh") { RedirectStandardInput = true, UseShellExecute = false };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add(script);
        start.ArgumentList.Add("melange-reaper");
        return Process.Start(start)!;
    }

    private static Process Sleeper()
    {
        var p = Process.Start(new ProcessStartInfo("sleep", "600") { UseShellExecute = false })!;
        return p;
    }

    [Fact]
    public void At_end_of_input_it_ends_registered_processes_and_removes_registered_paths_but_not_forgotten_ones()
    {
        var dir = Directory.CreateTempSubdirectory("reaper-test-").FullName;
        using var watched = Sleeper();
        using var forgotten = Sleeper();
        try
        {
            var file = Path.Combine(dir, "disk with space.img");
            var tree = Path.Combine(dir, "workspace");
            var secret = Path.Combine(dir, "initramfs");
            var kept = Path.Combine(dir, "kept");
            File.WriteAllText(file, "x");
            Directory.CreateDirectory(Path.Combine(tree, "a/b"));
            File.WriteAllText(secret, "PRIVATE KEY");
            File.WriteAllText(kept, "x");

            using var reaper = StartReaper();
            var input = reaper.StandardInput;
            input.Write($"P {watched.Id} {Reaper.StartTime(watched.Id)}\n");
            input.Write($"P {forgotten.Id} {Reaper.StartTime(forgotten.Id)}\n");
            input.Write($"-P {forgotten.Id} {Reaper.StartTime(forgotten.Id)}\n");
            input.Write($"F {file}\nF {tree}\nS {secret}\nF {kept}\n-F {kept}\n");
            input.Close();
            Assert.True(reaper.WaitForExit(30_000));

            Assert.True(watched.WaitForExit(1000));
            Assert.False(forgotten.HasExited);
            Assert.False(File.Exists(file));
            Assert.False(Directory.Exists(tree));
            Assert.False(File.Exists(secret));
            Assert.True(File.Exists(kept));
        }
        finally
        {
            if (!forgotten.HasExited) forgotten.Kill();
            if (!watched.HasExited) watched.Kill();
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void A_reused_pid_is_not_killed()
    {
        using var other = Sleeper();
        try
        {
            using var reaper = StartReaper();
            // The registered process had another start time: that pid now belongs to someone else.
            reaper.StandardInput.Write($"P {other.Id} 1\n");
            reaper.StandardInput.Close();
            Assert.True(reaper.WaitForExit(30_000));
            Assert.False(other.HasExited);
        }
        finally
        {
            other.Kill();
        }
    }

    [Fact]
    public void A_process_that_ignores_SIGTERM_gets_SIGKILL()
    {
        var start = new ProcessStartInfo("/bin/sh") { UseShellExecute = false, RedirectStandardOutput = true };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add("trap '' TERM; echo ready; while :; do sleep 1; done");
        using var stubborn = Process.Start(start)!;
        try
        {
            Assert.Equal("ready", stubborn.StandardOutput.ReadLine());
            using var reaper = StartReaper();
            reaper.StandardInput.Write($"P {stubborn.Id} {Reaper.StartTime(stubborn.Id)}\n");
            reaper.StandardInput.Close();
            Assert.True(reaper.WaitForExit(30_000));
            Assert.True(stubborn.WaitForExit(1000));
        }
        finally
        {
            if (!stubborn.HasExited) stubborn.Kill();
        }
    }

    [Fact]
    public void The_module_watcher_runs_and_registrations_forget_on_dispose()
    {
        Assert.True(Reaper.Available);
        Assert.NotNull(Reaper.WatcherPid);
        using var p = Sleeper();
        var registration = Reaper.Watch(p);
        registration.Dispose();
        registration.Dispose(); // twice is harmless
        p.Kill();
    }
}
