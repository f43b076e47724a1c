using System.Runtime.InteropServices;

namespace MelangeRunner.HostProcess;

/// <summary>
/// The host terminal of an interactive session (Enter-MelangePod): whether standard input is one,
/// the <c>TERM</c> that describes it, the PTY helper that wraps a sandbox in a terminal of its
/// own, and ending a helper so that it puts the terminal back.
/// </summary>
internal static class HostTerminal
{
    /// <summary>util-linux's script, which allocates the PTY, relays input, output and resizes, and restores the terminal.</summary>
    internal const string PtyHelper = "script";

    private static int _warnedNoHelper;

    /// <summary>True when this process's standard input is a terminal (not redirected, as in CI).</summary>
    internal static bool StdinIsTerminal => Native.Libc.IsTerminal(0);

    /// <summary>The host's TERM, or null when it is unset or empty.</summary>
    internal static string? Term => System.Environment.GetEnvironmentVariable("TERM") is { Length: > 0 } t ? t : null;

    /// <summary>
    /// The session's variables: the host's TERM (it describes the terminal the session really
    /// has, so it wins over a TERM from the image or the pod), then the call's own, which win.
    /// </summary>
    internal static IReadOnlyDictionary<string, string>? WithHostTerm(IReadOnlyDictionary<string, string>? call)
    {
        if (Term is not { } term) return call;
        var env = new Dictionary<string, string>(StringComparer.Ordinal) { ["TERM"] = term };
        if (call is not null) foreach (var (k, v) in call) env[k] = v;
        return env;
    }

    /// <summary>
    /// The PTY helper's full path when a session should get a host PTY (standard input is a
    /// terminal); null otherwise. A terminal without the helper warns once and runs without.
    /// </summary>
    internal static string? PtyHelperFor(IEventSink events)
    {
        if (!StdinIsTerminal) return null;
        if (HostCommand.FindOnPath(PtyHelper) is { } helper) return helper;
        if (Interlocked.Exchange(ref _warnedNoHelper, 1) == 0)
            events.Warning($"'{PtyHelper}' (util-linux) is not on PATH: the session shares this terminal without a pseudo-terminal of its own " +
                           "(no TERM, and the sandbox can change this terminal's modes). Install it: sudo apt-get install bsdutils (Debian/Ubuntu), util-linux elsewhere.");
        return null;
    }

    /// <summary>
    /// Ends an interactive helper (script, ssh) on cancellation with SIGTERM first, so that it
    /// ends its session and puts the host terminal back in the modes it found (SIGKILL would
    /// leave it raw, without echo); then the caller kills whatever is left.
    /// </summary>
    internal static async Task TerminateGracefullyAsync(System.Diagnostics.Process process, TimeSpan grace)
    {
        try
        {
            if (process.HasExited || Native.Libc.Kill(process.Id, Native.Libc.SIGTERM) != 0) return;
            using var wait = new CancellationTokenSource(grace);
            await process.WaitForExitAsync(wait.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) { /* still running: the caller kills the tree */ }
        catch (InvalidOperationException) { /* already gone */ }
    }
}
