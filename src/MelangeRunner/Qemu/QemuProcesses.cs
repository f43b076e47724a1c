using System.Collections.Concurrent;
using System.Diagnostics;
using MelangeRunner.HostProcess;

namespace MelangeRunner.Qemu;

/// <summary>
/// The qemu process of one pod: started in a session of its own with its console drained (the
/// guest blocks on a full pipe), the console's last lines kept for error messages, and the
/// signs of a boot that is not going anywhere (a KVM error, a console that stays quiet).
/// </summary>
internal sealed class QemuProcess : IDisposable
{
    private const int ConsoleLinesKept = 40;
    private readonly ConcurrentQueue<string> _console = new();
    private readonly ConcurrentQueue<string> _qemuErrors = new();
    private readonly Stopwatch _sinceGuestOutput = Stopwatch.StartNew();
    private readonly Process _process;
    private readonly ConcurrentDictionary<string, TaskCompletionSource> _awaited = new(StringComparer.Ordinal);
    private volatile IEventSink? _consoleSink;

    private QemuProcess(Process process) => _process = process;

    /// <summary>Starts qemu; each console line goes to <paramref name="events"/>' Verbose until <see cref="DetachConsole"/>.</summary>
    public static QemuProcess Start(string program, IReadOnlyList<string> arguments, IEventSink events)
    {
        QemuProcess? qemu = null;
        var process = HostCommand.StartLongRunning(program, arguments, events,
            line => qemu!.AddConsoleLine(line), line => qemu!.AddQemuErrorLine(line), redirectInput: true, begin: false);
        qemu = new QemuProcess(process) { _consoleSink = events };
        qemu.RestartQuietClock();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return qemu;
    }

    public Process Process => _process;
    public int Id => _process.Id;
    public bool HasExited => _process.HasExited;
    public int ExitCode => _process.ExitCode;

    /// <summary>Waits for qemu to exit, and for its console pump to drain what the guest said before.</summary>
    public bool WaitForExit(int milliseconds) => _process.WaitForExit(milliseconds);

    public void WaitForExit() => _process.WaitForExit();

    public void Kill()
    {
        try { _process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
    }

    /// <summary>The console keeps talking after the cmdlet that started the pod ends; later lines are kept for errors only.</summary>
    public void DetachConsole() => _consoleSink = null;

    /// <summary>Set by qemu's first report of a KVM failure on its standard error.</summary>
    public TaskCompletionSource<string> KvmError { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>No console line came from the guest (qemu's own messages aside).</summary>
    public bool GuestSaidNothing { get; private set; } = true;

    /// <summary>Time since the guest's last console line (or since qemu started).</summary>
    public TimeSpan GuestQuietFor { get { lock (_sinceGuestOutput) return _sinceGuestOutput.Elapsed; } }

    /// <summary>Completes when a guest console line contains <paramref name="text"/> (from now on).</summary>
    public Task ConsoleLineAsync(string text) =>
        _awaited.GetOrAdd(text, _ => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;

    public string QemuErrorTail() => string.Join(" | ", _qemuErrors);

    public string ConsoleTail() => _console.IsEmpty ? "  (nothing)" : string.Join(Environment.NewLine, _console.Select(l => "  " + l));

    /// <summary>
    /// Ends qemu after the guest was asked to power off: 5 s to exit, then SIGTERM, then 5 s more
    /// and SIGKILL of its process tree (with a warning).
    /// </summary>
    public Task StopAsync(IEventSink events) => HostCommand.StopAsync(_process, TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(5),
        () => events.Verbose("qemu: VM did not exit after the shutdown signal, sending SIGTERM"),
        () => events.Warning("qemu did not exit after SIGTERM; killing it."));

    public void Dispose() => _process.Dispose();

    private void RestartQuietClock()
    {
        lock (_sinceGuestOutput) _sinceGuestOutput.Restart();
    }

    private void AddQemuErrorLine(string line)
    {
        _qemuErrors.Enqueue(line);
        while (_qemuErrors.Count > 5) _qemuErrors.TryDequeue(out _);
        // "KVM internal error. Suberror: 1", "emulation failure", "failed to set MSR", "Could not access KVM kernel module".
        if (line.Contains("kvm", StringComparison.OrdinalIgnoreCase) || line.Contains("emulation failure", StringComparison.OrdinalIgnoreCase))
            KvmError.TrySetResult(line.Trim());
        AddConsoleLine("qemu: " + line, fromGuest: false);
    }

    private void AddConsoleLine(string line, bool fromGuest = true)
    {
        if (fromGuest)
        {
            GuestSaidNothing = false;
            RestartQuietClock();
            foreach (var (text, seen) in _awaited)
                if (line.Contains(text, StringComparison.Ordinal)) seen.TrySetResult();
        }
        _console.Enqueue(line);
        while (_console.Count > ConsoleLinesKept) _console.TryDequeue(out _);
        _consoleSink?.Verbose("console: " + line);
    }
}

/// <summary>virtiofsd serving a pod's cache directory (QEMU_USE_VIRTIOFS), on a socket of its own.</summary>
internal sealed class VirtiofsdProcess : IDisposable
{
    private readonly Process _process;

    private VirtiofsdProcess(Process process, string socket)
    {
        _process = process;
        Socket = socket;
    }

    public int Id => _process.Id;
    public Process Process => _process;
    public string Socket { get; }

    /// <summary>QEMU_VIRTIOFS_PATH's virtiofsd, else the distributions' places, else PATH.</summary>
    public static string Find(QemuEnvironment env)
    {
        var candidates = new List<string>();
        if (env.VirtiofsPath is { } dir) candidates.Add(Path.Combine(dir, "virtiofsd"));
        candidates.AddRange(new[] { "/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd" });
        return candidates.FirstOrDefault(File.Exists) ?? HostCommand.FindOnPath("virtiofsd") ?? throw new MelangeException(
            ErrorKind.NotInstalled, "VirtiofsdNotFound",
            $"QEMU_USE_VIRTIOFS is set but virtiofsd was not found (looked in {string.Join(", ", candidates)} and PATH).",
            "Install virtiofsd (Debian 12: sudo apt-get install qemu-system-common; later: virtiofsd), set QEMU_VIRTIOFS_PATH to its directory, or unset QEMU_USE_VIRTIOFS.");
    }

    /// <summary>Starts virtiofsd for <paramref name="cacheDir"/>; <paramref name="started"/> sees it before its socket is waited for (so that the caller can register it).</summary>
    public static async Task<VirtiofsdProcess> StartAsync(string program, string cacheDir, Action<VirtiofsdProcess> started, IEventSink events, CancellationToken ct)
    {
        var socket = Path.Combine(Path.GetTempPath(), $"melange-virtiofsd-{Guid.NewGuid():N}.sock");
        var process = HostCommand.StartLongRunning(program, new[] { "--socket-path=" + socket, $"--thread-pool-size={Environment.ProcessorCount * 2}",
                "-o", "source=" + cacheDir, "-o", "cache=always", "-o", "sandbox=namespace", "-o", "xattr", "-o", "writeback", "-o", "no_posix_lock" },
            events, l => events.Verbose("virtiofsd: " + l), l => events.Verbose("virtiofsd: " + l), redirectInput: false);
        var virtiofsd = new VirtiofsdProcess(process, socket);
        started(virtiofsd);

        // The socket appears when virtiofsd listens.
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        while (!File.Exists(socket))
        {
            if (process.HasExited)
                throw new MelangeException(ErrorKind.InvalidOperation, "VirtiofsdFailed", $"virtiofsd exited with status {process.ExitCode} before listening.", "Run with -Verbose to see its messages.");
            try { await Task.Delay(50, timeout.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw new MelangeException(ErrorKind.OperationTimeout, "VirtiofsdTimeout", "virtiofsd did not create its socket within 10 s.", "Run with -Verbose to see its messages.");
            }
        }
        return virtiofsd;
    }

    /// <summary>SIGTERM, and SIGKILL 5 s later.</summary>
    public Task StopAsync() => HostCommand.StopAsync(_process, TimeSpan.Zero, TimeSpan.FromSeconds(5), null, null);

    public void Dispose() => _process.Dispose();
}
