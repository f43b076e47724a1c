using System.Diagnostics;
using System.Text;

namespace MelangeRunner.HostProcess;

/// <summary>
/// The one way the engine starts host processes: find a program on PATH (<see cref="FindOnPath"/>),
/// capture a short helper's output (<see cref="Capture(string, string[])"/>), stream a step's output
/// line by line to an <see cref="IEventSink"/> (<see cref="RunAsync"/>; cancelling kills the whole
/// process tree at once), run one on the caller's terminal (<see cref="RunInteractiveAsync"/>),
/// start a long-running helper in a session of its own (<see cref="StartLongRunning"/>) and stop it
/// (<see cref="StopAsync"/>: wait, SIGTERM, SIGKILL). <see cref="Start"/> is what they share.
/// </summary>
/// <remarks>
/// Security/behaviour rule: a process that runs user steps (<see cref="RunAsync"/>,
/// <see cref="RunInteractiveAsync"/>: bwrap for Start-/Invoke-/Enter-MelangePod, the OpenSSH
/// client of Enter-MelangePod) starts with default signal dispositions and an empty signal
/// mask, as melange's steps do. .NET ignores SIGPIPE and keeps SIG_IGN across fork and exec,
/// so without this `yes | head -c 1` never ends in a step. See <see cref="SignalReset"/>.
/// </remarks>
internal static class HostCommand
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
    public static (int ExitCode, string Output) Capture(string fileName, params string[] arguments) =>
        Capture(fileName, arguments, includeStandardError: true);

    /// <summary>
    /// Runs a short helper command (no input) and returns its exit status and standard output,
    /// followed by its standard error when <paramref name="includeStandardError"/>.
    /// </summary>
    public static (int ExitCode, string Output) Capture(string fileName, IReadOnlyList<string> arguments, bool includeStandardError,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        using var process = Start(fileName, arguments, redirectInput: true, environment: environment);
        process.StandardInput.Close();
        var err = process.StandardError.ReadToEndAsync();
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        var error = err.GetAwaiter().GetResult();
        return (process.ExitCode, includeStandardError ? output + error : output);
    }

    /// <summary>
    /// Starts <paramref name="fileName"/> directly (no launcher, no shell): standard output and
    /// error redirected unless <paramref name="redirectOutput"/> is false (they are then the
    /// engine's own), standard input when <paramref name="redirectInput"/>, in a session of its own
    /// with <paramref name="ownSession"/>. A program that cannot be started is ProgramNotFound.
    /// </summary>
    public static Process Start(string fileName, IEnumerable<string> arguments, bool redirectInput, bool redirectOutput = true,
        IReadOnlyDictionary<string, string>? environment = null, bool ownSession = false)
    {
        var start = new ProcessStartInfo(fileName)
        {
            RedirectStandardInput = redirectInput,
            RedirectStandardOutput = redirectOutput,
            RedirectStandardError = redirectOutput,
            UseShellExecute = false,
        };
        foreach (var a in arguments) start.ArgumentList.Add(a);
        if (environment is not null)
            foreach (var (k, v) in environment) start.Environment[k] = v;
        if (ownSession) OwnSession.Apply(start);
        return StartOrExplain(start);
    }

    /// <summary>
    /// Starts a long-running helper (qemu, virtiofsd) in a session of its own (<see cref="OwnSession"/>),
    /// each line of its output to a callback; <paramref name="begin"/> false leaves the reading to the caller
    /// (BeginOutputReadLine, BeginErrorReadLine), for callbacks that need the result first.
    /// </summary>
    public static Process StartLongRunning(string fileName, IReadOnlyList<string> arguments, IEventSink events,
        Action<string> standardOutputLine, Action<string> standardErrorLine, bool redirectInput, bool begin = true)
    {
        var process = Start(fileName, arguments, redirectInput, ownSession: true);
        // Said once it runs: the caller registers it with the reaper as soon as this returns, and a
        // watcher that kills pwsh on this line (a test, a CI timeout) must not find it unregistered.
        events.Verbose("Running: " + CommandLine(OwnSession.Apply(new ProcessStartInfo(fileName, arguments))));
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
    public static async Task StopAsync(Process process, TimeSpan waitFirst, TimeSpan afterTerm, Action? onTerm, Action? onKill)
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

    /// <summary>
    /// The full path of a program: a name with a '/' as it is (when it exists), else the first
    /// match in PATH's absolute directories (a relative PATH entry would depend on the current
    /// directory, which a user can choose), or in /usr/local/bin:/usr/bin:/bin when PATH is unset
    /// or empty; null when there is none.
    /// </summary>
    public static string? FindOnPath(string program)
    {
        if (program.Contains('/')) return File.Exists(program) ? program : null;
        var path = System.Environment.GetEnvironmentVariable("PATH") is { Length: > 0 } p ? p : DefaultPath;
        foreach (var dir in path.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            if (!Path.IsPathRooted(dir)) continue;
            var candidate = Path.Combine(dir, program);
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }

    private const string DefaultPath = "/usr/local/bin:/usr/bin:/bin";

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
