using System.Diagnostics;

namespace MelangeRunner.HostProcess;

/// <summary>
/// Starts user-step processes with default signal dispositions and an empty signal mask, by
/// running them through coreutils' <c>env --default-signal</c> (8.31 and later), which resets
/// every signal to SIG_DFL and unblocks it, then execs the program (same process id, so
/// waiting, exit status and killing the tree are unchanged).
/// </summary>
/// <remarks>
/// Chosen over posix_spawn with POSIX_SPAWN_SETSIGDEF|POSIX_SPAWN_SETSIGMASK, which would mean
/// replacing System.Diagnostics.Process (pipes, asynchronous reading, waiting alongside .NET's
/// own SIGCHLD reaping, killing the tree) for one attribute; and over changing this process's
/// own SIGPIPE disposition around the start, which .NET relies on and other threads share.
/// The launcher is part of the launch, not of the plan: Get-MelangePodPlan shows melange's bwrap
/// vector, and the verbose "Running:" line shows the command actually run, launcher included.
/// On a host whose env lacks --default-signal (coreutils before 8.31, busybox), the program is
/// started directly with a warning (once per process): its steps inherit SIGPIPE ignored.
/// </remarks>
internal static class SignalReset
{
    internal const string Option = "--default-signal";
    private static readonly Lazy<string?> FoundLauncher = new(FindLauncher);
    private static int _warned;

    /// <summary>The env program that supports --default-signal here, or null.</summary>
    internal static string? Launcher => FoundLauncher.Value;

    private static string? FindLauncher()
    {
        var candidates = new[] { HostCommand.FindOnPath("env"), "/usr/bin/env", "/bin/env" };
        foreach (var env in candidates.Distinct())
        {
            if (env is null || !File.Exists(env)) continue;
            try
            {
                if (HostCommand.Capture(env, Option, "true").ExitCode == 0) return env;
            }
            catch (MelangeException) { /* not startable: try the next */ }
        }
        return null;
    }

    /// <summary>The argument vector that runs <paramref name="fileName"/> through the launcher (as <see cref="Apply"/> does), for a command line run by another program.</summary>
    internal static IReadOnlyList<string> Argv(string fileName, IReadOnlyList<string> arguments, IEventSink events)
    {
        var start = new ProcessStartInfo();
        Apply(start, fileName, arguments, events);
        return new[] { start.FileName }.Concat(start.ArgumentList).ToList();
    }

    /// <summary>Sets <paramref name="start"/> to run <paramref name="fileName"/> with <paramref name="arguments"/> through the launcher, when there is one.</summary>
    internal static void Apply(ProcessStartInfo start, string fileName, IReadOnlyList<string> arguments, IEventSink events)
    {
        var launcher = Launcher;
        // env takes a leading NAME=VALUE word as an assignment, not as the program.
        if (launcher is null || fileName.Contains('='))
        {
            if (launcher is null && Interlocked.Exchange(ref _warned, 1) == 0)
                events.Warning($"This host's env does not support {Option} (coreutils 8.31 or later): commands in pods start with " +
                               "the signal dispositions .NET gives its children (SIGPIPE ignored), so a pipeline such as " +
                               "'yes | head -n 1' may not end. Install coreutils 8.31 or later.");
            start.FileName = fileName;
            foreach (var a in arguments) start.ArgumentList.Add(a);
            return;
        }
        // env would report a missing program as exit status 127; keep the clear error instead.
        if (HostCommand.FindOnPath(fileName) is null) throw HostCommand.ProgramNotFound(fileName, null);
        start.FileName = launcher;
        start.ArgumentList.Add(Option);
        start.ArgumentList.Add(fileName);
        foreach (var a in arguments) start.ArgumentList.Add(a);
    }
}
