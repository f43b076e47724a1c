using System.Diagnostics;
using System.Text;

namespace MelangeRunner;

/// <summary>
/// Runs a host process (bwrap, qemu helpers) with its output streamed line by line to an
/// <see cref="IEventSink"/> as it comes; cancelling kills the whole process tree at once.
/// </summary>
/// <remarks>
/// Security/behaviour rule: a process that runs user steps (<see cref="RunAsync"/>,
/// <see cref="RunInteractiveAsync"/>: bwrap for Start-/Invoke-/Enter-MelangePod, the OpenSSH
/// client of Enter-MelangePod) starts with default signal dispositions and an empty signal
/// mask, as melange's steps do. .NET ignores SIGPIPE and keeps SIG_IGN across fork and exec,
/// so without this `yes | head -c 1` never ends in a step. See <see cref="SignalReset"/>.
/// </remarks>
public static class PodProcess
{
    /// <summary>Runs the process to its end and returns its exit status.</summary>
    /// <param name="stdoutToVerbose">Send standard output to Verbose instead of StandardOutput (for set-up steps).</param>
    public static async Task<int> RunAsync(string fileName, IReadOnlyList<string> arguments, IEventSink events,
        CancellationToken cancellationToken, bool stdoutToVerbose = false)
    {
        var start = new ProcessStartInfo(fileName)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
        };
        SignalReset.Apply(start, fileName, arguments, events);
        events.Verbose("Running: " + CommandLine(start));

        using var process = StartOrExplain(start);
        // No input: a command that reads stdin sees end of file instead of hanging.
        process.StandardInput.Close();

        var stdout = PumpAsync(process.StandardOutput, stdoutToVerbose ? events.Verbose : events.StandardOutput);
        var stderr = PumpAsync(process.StandardError, events.StandardError);
        try
        {
            await process.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            Kill(process);
            throw;
        }
        await Task.WhenAll(stdout, stderr).ConfigureAwait(false);
        return process.ExitCode;
    }

    /// <summary>Runs the process on the caller's terminal (no redirection), for interactive use.</summary>
    /// <param name="ptyHelper">
    /// util-linux script (<see cref="HostTerminal.PtyHelperFor"/>), to run the process on a new
    /// pseudo-terminal of its own; null runs it on the caller's streams as they are.
    /// </param>
    /// <remarks>
    /// With the helper, the command is <c>script -q -e -c 'exec env --default-signal PROGRAM ARGS…' /dev/null</c>:
    /// script makes the PTY the controlling terminal of a new session, puts the host terminal in
    /// raw mode, relays bytes and window sizes (SIGWINCH → TIOCSWINSZ), returns the program's
    /// status (-e; 128+N for a signal) and restores the host terminal, also when the program was
    /// killed. The host terminal's modes are not touched here: .NET keeps its own record of them
    /// around child processes, and setting them behind its back (tried) left pwsh's terminal in
    /// the modes of one of its cursor queries after a resize.
    /// </remarks>
    public static async Task<int> RunInteractiveAsync(string fileName, IReadOnlyList<string> arguments, IEventSink events, CancellationToken cancellationToken,
        string? ptyHelper = null)
    {
        var start = new ProcessStartInfo(fileName) { UseShellExecute = false };
        if (ptyHelper is null)
        {
            SignalReset.Apply(start, fileName, arguments, events);
        }
        else
        {
            // script runs the line with $SHELL -c: use sh, whatever the user's login shell is.
            start.Environment["SHELL"] = "/bin/sh";
            SignalReset.Apply(start, ptyHelper, new[] { "-q", "-e", "-c", "exec " + ShellQuote.Join(SignalReset.Argv(fileName, arguments, events)), "/dev/null" }, events);
        }
        events.Verbose("Running: " + CommandLine(start));
        using var process = StartOrExplain(start);
        try
        {
            await process.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Not SIGKILL first: the helper restores the terminal's modes only when it can run.
            await HostTerminal.TerminateGracefullyAsync(process, TimeSpan.FromSeconds(2)).ConfigureAwait(false);
            Kill(process);
            throw;
        }
        return process.ExitCode;
    }

    /// <summary>Runs a short helper command and returns its exit status and combined output.</summary>
    public static (int ExitCode, string Output) Capture(string fileName, params string[] arguments)
    {
        var start = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in arguments) start.ArgumentList.Add(a);
        using var process = StartOrExplain(start);
        process.StandardInput.Close();
        var err = process.StandardError.ReadToEndAsync();
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, output + err.GetAwaiter().GetResult());
    }

    /// <summary>
    /// Starts a long-running helper (qemu, virtiofsd) in a session of its own (<see cref="HostProcess.OwnSession"/>),
    /// each line of its output to a callback; <paramref name="begin"/> false leaves the reading to the caller
    /// (BeginOutputReadLine, BeginErrorReadLine), for callbacks that need the result first.
    /// </summary>
    internal static Process StartLongRunning(string fileName, IReadOnlyList<string> arguments, IEventSink events,
        Action<string> standardOutputLine, Action<string> standardErrorLine, bool redirectInput, bool begin = true)
    {
        var start = new ProcessStartInfo(fileName)
        {
            RedirectStandardInput = redirectInput,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in arguments) start.ArgumentList.Add(a);
        HostProcess.OwnSession.Apply(start);
        events.Verbose("Running: " + CommandLine(start));
        var process = StartOrExplain(start);
        process.OutputDataReceived += (_, e) => { if (e.Data is { } line) standardOutputLine(line); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is { } line) standardErrorLine(line); };
        if (begin)
        {
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
        }
        return process;
    }

    /// <summary>
    /// Ends a long-running helper: <paramref name="waitFirst"/> for it to exit by itself (zero: not
    /// at all), then SIGTERM, then <paramref name="afterTerm"/> more and SIGKILL of its process tree.
    /// </summary>
    internal static async Task StopAsync(Process process, TimeSpan waitFirst, TimeSpan afterTerm, Action? onTerm, Action? onKill)
    {
        if (waitFirst > TimeSpan.Zero ? await ExitsWithin(process, waitFirst).ConfigureAwait(false) : process.HasExited) return;
        onTerm?.Invoke();
        Native.Libc.Kill(process.Id, Native.Libc.SIGTERM);
        if (await ExitsWithin(process, afterTerm).ConfigureAwait(false)) return;
        onKill?.Invoke();
        try { process.Kill(entireProcessTree: true); }
        catch (InvalidOperationException) { /* exited meanwhile */ }
        await process.WaitForExitAsync().ConfigureAwait(false);
    }

    private static async Task<bool> ExitsWithin(Process process, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token).ConfigureAwait(false);
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    /// <summary>The full path of a program on PATH, or null.</summary>
    public static string? FindOnPath(string program)
    {
        if (program.Contains('/')) return File.Exists(program) ? program : null;
        foreach (var dir in (System.Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, program);
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }

    /// <summary>The exact command line <paramref name="start"/> runs, shell-quoted, for -Verbose.</summary>
    internal static string CommandLine(ProcessStartInfo start) => ShellQuote.Join(new[] { start.FileName }.Concat(start.ArgumentList));

    internal static MelangeException ProgramNotFound(string fileName, Exception? inner) =>
        new(ErrorKind.NotInstalled, "ProgramNotFound",
            $"Could not start '{fileName}': {inner?.Message ?? "it was not found on PATH"}.",
            $"Install the program that provides '{fileName}' and make sure it is on PATH.", fileName, inner);

    private static Process StartOrExplain(ProcessStartInfo start)
    {
        try
        {
            return Process.Start(start) ?? throw new InvalidOperationException("Process.Start returned null.");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw ProgramNotFound(start.FileName, e);
        }
    }

    private static async Task PumpAsync(StreamReader reader, Action<string> sink)
    {
        while (await reader.ReadLineAsync().ConfigureAwait(false) is { } line) sink(line);
    }

    private static void Kill(Process process)
    {
        try { process.Kill(entireProcessTree: true); }
        catch (InvalidOperationException) { /* already exited */ }
        process.WaitForExit();
    }
}

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
    private static readonly Lazy<string?> s_launcher = new(FindLauncher);
    private static int s_warned;

    /// <summary>The env program that supports --default-signal here, or null.</summary>
    internal static string? Launcher => s_launcher.Value;

    private static string? FindLauncher()
    {
        var candidates = new[] { PodProcess.FindOnPath("env"), "/usr/bin/env", "/bin/env" };
        foreach (var env in candidates.Distinct())
        {
            if (env is null || !File.Exists(env)) continue;
            try
            {
                if (PodProcess.Capture(env, Option, "true").ExitCode == 0) return env;
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
            if (launcher is null && Interlocked.Exchange(ref s_warned, 1) == 0)
                events.Warning($"This host's env does not support {Option} (coreutils 8.31 or later): commands in pods start with " +
                               "the signal dispositions .NET gives its children (SIGPIPE ignored), so a pipeline such as " +
                               "'yes | head -n 1' may not end. Install coreutils 8.31 or later.");
            start.FileName = fileName;
            foreach (var a in arguments) start.ArgumentList.Add(a);
            return;
        }
        // env would report a missing program as exit status 127; keep the clear error instead.
        if (PodProcess.FindOnPath(fileName) is null) throw PodProcess.ProgramNotFound(fileName, null);
        start.FileName = launcher;
        start.ArgumentList.Add(Option);
        start.ArgumentList.Add(fileName);
        foreach (var a in arguments) start.ArgumentList.Add(a);
    }
}
