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
    private void Post(Action write)
    {
        try { _queue.Add(write); }
        catch (ObjectDisposedException) { /* the cmdlet has ended */ }
        catch (InvalidOperationException) { /* adding completed: the work is over */ }
    }

    /// <summary>
    /// Runs <paramref name="work"/> in the background, writing its events here until it ends.
    /// Returns only when the work has ended, even when the pipeline is stopped: a write then
    /// throws PipelineStoppedException, but the work is still cleaning up (a VM shutting down,
    /// a partial file being removed), and returning early would let pwsh exit under it.
    /// </summary>
    public T Pump<T>(Task<T> work)
    {
        work.ContinueWith(_ => _queue.CompleteAdding(), TaskScheduler.Default);
        PipelineStoppedException? stopped = null;
        foreach (var write in _queue.GetConsumingEnumerable())
        {
            if (stopped is not null) continue; // drained unwritten: nothing can be written any more
            try { write(); }
            catch (PipelineStoppedException e) { stopped = e; }
        }
        if (stopped is not null)
        {
            // The work saw the same stop through its token; its own exception does not matter now.
            _ = work.Exception;
            throw stopped;
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
