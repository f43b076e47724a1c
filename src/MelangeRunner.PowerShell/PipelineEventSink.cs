using System.Collections.Concurrent;
using System.Management.Automation;

namespace MelangeRunner.PowerShell;

/// <summary>
/// Collects engine events from any thread and writes them on the pipeline thread, the only
/// thread where a cmdlet may call Write*.
/// </summary>
internal sealed class PipelineEventSink : IEventSink, IDisposable
{
    private readonly BlockingCollection<Action> _queue = new();
    private readonly Cmdlet _cmdlet;
    private readonly Action<string> _standardOutput;
    private readonly Dictionary<string, int> _progressIds = new();
    private readonly int _progressParentId;

    public PipelineEventSink(Cmdlet cmdlet, Action<string>? standardOutput = null)
    {
        _cmdlet = cmdlet;
        _standardOutput = standardOutput ?? (line => cmdlet.WriteObject(line));
        _progressParentId = -1;
    }

    public void Verbose(string message) => Post(() => _cmdlet.WriteVerbose(message));

    public void Warning(string message) => Post(() => _cmdlet.WriteWarning(message));

    public void Progress(ProgressReport report) => Post(() => WriteProgress(report, completed: false));

    public void StandardOutput(string line) => Post(() => _standardOutput(line));

    // Shown on the host like a native command's stderr, and capturable (6>&1, -InformationVariable),
    // without becoming an error record.
    public void StandardError(string line) => Post(() => _cmdlet.WriteInformation(
        new HostInformationMessage { Message = line, NoNewLine = false }, new[] { "PSHOST", "stderr" }));

    // Late events (a background thread still talking after the cmdlet ended) are dropped.
    // Internal so that a cmdlet can add its own writes in order with the engine's (AzurePipelines).
    internal void Post(Action write)
    {
        try { _queue.Add(write); }
        catch (ObjectDisposedException) { /* the cmdlet has ended */ }
        catch (InvalidOperationException) { /* adding completed: the work is over */ }
    }

    /// <summary>
    /// How long a stopped cmdlet waits for the engine's clean-up (a qemu shutdown takes at most
    /// ~10 s: poweroff, SIGTERM, SIGKILL). Past it, work blocked where no token reaches (a read
    /// from a stalled pipe or network file system) is left to finish on its own, with the reaper
    /// still holding what it would remove (docs/cleanup.md): a Ctrl+C never hangs.
    /// </summary>
    internal static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Runs <paramref name="work"/> in the background, writing its events here until it ends.
    /// When the pipeline is stopped a write throws PipelineStoppedException, but the work is
    /// still cleaning up (a VM shutting down, a partial file being removed), and returning at
    /// once would let pwsh exit under it: so the queue is drained unwritten until the work ends,
    /// for <see cref="StopGrace"/> at most.
    /// </summary>
    public T Pump<T>(Task<T> work, CancellationToken stopping)
    {
        work.ContinueWith(_ => _queue.CompleteAdding(), TaskScheduler.Default);
        var stopped = false;
        var deadline = DateTime.MaxValue;
        while (true)
        {
            Action? write;
            try
            {
                if (stopped)
                {
                    var left = deadline - DateTime.UtcNow;
                    if (left <= TimeSpan.Zero || !_queue.TryTake(out write, left)) break;
                    continue; // drained unwritten: nothing can be written any more
                }
                if (!_queue.TryTake(out write, Timeout.Infinite, stopping)) break; // the work has ended
            }
            catch (OperationCanceledException)
            {
                stopped = true;
                deadline = DateTime.UtcNow + StopGrace;
                continue;
            }
            try { write(); }
            catch (PipelineStoppedException)
            {
                stopped = true;
                deadline = DateTime.UtcNow + StopGrace;
            }
        }
        if (stopped)
        {
            // The work saw the same stop through its token; its own exception does not matter now.
            _ = work.ContinueWith(t => t.Exception, TaskScheduler.Default);
            throw new PipelineStoppedException();
        }
        foreach (var activity in _progressIds.Keys.ToList())
            WriteProgress(new ProgressReport(activity, "Done", 0, null), completed: true);
        return work.GetAwaiter().GetResult();
    }

    private void WriteProgress(ProgressReport report, bool completed)
    {
        if (!_progressIds.TryGetValue(report.Activity, out var id))
        {
            id = _progressIds.Count + 1;
            _progressIds[report.Activity] = id;
        }
        var record = new ProgressRecord(id, report.Activity, report.Status) { ParentActivityId = _progressParentId };
        if (completed) record.RecordType = ProgressRecordType.Completed;
        else if (report.Total is > 0 and var total) record.PercentComplete = (int)Math.Clamp(report.Done * 100 / total, 0, 100);
        _cmdlet.WriteProgress(record);
    }

    public void Dispose() => _queue.Dispose();
}
