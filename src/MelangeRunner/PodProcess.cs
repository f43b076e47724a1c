using System.Diagnostics;
using System.Text;

namespace MelangeRunner;

/// <summary>
/// Runs a host process (bwrap, qemu helpers) with its output streamed line by line to an
/// <see cref="IEventSink"/> as it comes; cancelling kills the whole process tree at once.
/// </summary>
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
        foreach (var a in arguments) start.ArgumentList.Add(a);
        events.Verbose("Running: " + ShellQuote.Join(new[] { fileName }.Concat(arguments)));

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
    public static async Task<int> RunInteractiveAsync(string fileName, IReadOnlyList<string> arguments, IEventSink events, CancellationToken cancellationToken)
    {
        var start = new ProcessStartInfo(fileName) { UseShellExecute = false };
        foreach (var a in arguments) start.ArgumentList.Add(a);
        events.Verbose("Running: " + ShellQuote.Join(new[] { fileName }.Concat(arguments)));
        using var process = StartOrExplain(start);
        try
        {
            await process.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
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

    private static Process StartOrExplain(ProcessStartInfo start)
    {
        try
        {
            return Process.Start(start) ?? throw new InvalidOperationException("Process.Start returned null.");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new MelangeException(ErrorKind.NotInstalled, "ProgramNotFound",
                $"Could not start '{start.FileName}': {e.Message}.",
                $"Install the program that provides '{start.FileName}' and make sure it is on PATH.", start.FileName, e);
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
