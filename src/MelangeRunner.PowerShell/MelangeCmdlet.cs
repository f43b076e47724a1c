using System.Management.Automation;

namespace MelangeRunner.PowerShell;

/// <summary>
/// The base of every cmdlet that calls the engine: Ctrl+C (StopProcessing) cancels the
/// engine's token, engine events are written on the pipeline thread, and engine failures
/// become ErrorRecords with a stable id, a category, a target and a recommended action.
/// </summary>
public abstract class MelangeCmdlet : PSCmdlet, IDisposable
{
    private readonly CancellationTokenSource _stopping = new();

    protected CancellationToken Cancellation => _stopping.Token;

    protected override void StopProcessing() => _stopping.Cancel();

    public void Dispose()
    {
        _stopping.Dispose();
        GC.SuppressFinalize(this);
    }

    /// <summary>
    /// Runs engine work on a background task and writes what it reports until it ends.
    /// </summary>
    /// <param name="standardOutput">What to do with each output line of a pod command (default: write it as output).</param>
    protected T RunEngine<T>(Func<IEventSink, CancellationToken, Task<T>> work, Action<string>? standardOutput = null)
    {
        using var sink = new PipelineEventSink(this, standardOutput);
        try
        {
            return sink.Pump(Task.Run(() => work(sink, Cancellation)), Cancellation);
        }
        catch (OperationCanceledException) when (Cancellation.IsCancellationRequested)
        {
            throw new PipelineStoppedException();
        }
    }

    /// <summary>Runs engine work and writes its result; a failure becomes a non-terminating error about <paramref name="target"/>.</summary>
    protected void WriteEngineResult<T>(Func<IEventSink, CancellationToken, Task<T>> work, object? target)
    {
        try
        {
            WriteObject(RunEngine(work));
        }
        catch (Exception e) when (IsReportable(e))
        {
            WriteEngineError(e, target);
        }
    }

    protected void RunEngine(Func<IEventSink, CancellationToken, Task> work) =>
        RunEngine<bool>(async (events, ct) => { await work(events, ct).ConfigureAwait(false); return true; });

    /// <summary>
    /// Whether an exception from the engine becomes an ErrorRecord for the current item,
    /// rather than ending the pipeline (stops and cancellations do that).
    /// </summary>
    internal static bool IsReportable(Exception e) =>
        e is not (PipelineStoppedException or OperationCanceledException or OutOfMemoryException);

    /// <summary>A path as the user meant it: relative to the current PowerShell location.</summary>
    protected string HostPath(string path) => SessionState.Path.GetUnresolvedProviderPathFromPSPath(path);

    /// <summary>Writes a non-terminating error for an engine failure.</summary>
    protected void WriteEngineError(Exception e, object? target = null) => WriteError(ToErrorRecord(e, target));

    /// <summary>Stops the cmdlet with an engine failure.</summary>
    protected void ThrowEngineError(Exception e, object? target = null) => ThrowTerminatingError(ToErrorRecord(e, target));

    internal static ErrorRecord ToErrorRecord(Exception e, object? target = null)
    {
        if (e is AggregateException { InnerExceptions.Count: 1 } agg) e = agg.InnerException!;
        if (e is MelangeException m)
        {
            var record = new ErrorRecord(m, m.ErrorId, Category(m.Kind), target ?? m.Target);
            record.ErrorDetails = new ErrorDetails(m.Message) { RecommendedAction = m.Fix ?? "" };
            return record;
        }
        var category = e switch
        {
            UnauthorizedAccessException => ErrorCategory.PermissionDenied,
            FileNotFoundException or DirectoryNotFoundException => ErrorCategory.ObjectNotFound,
            IOException => ErrorCategory.WriteError,
            TimeoutException => ErrorCategory.OperationTimeout,
            ArgumentException => ErrorCategory.InvalidArgument,
            _ => ErrorCategory.NotSpecified,
        };
        return new ErrorRecord(e, e.GetType().Name, category, target);
    }

    private static ErrorCategory Category(ErrorKind kind) => kind switch
    {
        ErrorKind.InvalidArgument => ErrorCategory.InvalidArgument,
        ErrorKind.ObjectNotFound => ErrorCategory.ObjectNotFound,
        ErrorKind.NotInstalled => ErrorCategory.NotInstalled,
        ErrorKind.InvalidData => ErrorCategory.InvalidData,
        ErrorKind.InvalidOperation => ErrorCategory.InvalidOperation,
        ErrorKind.PermissionDenied => ErrorCategory.PermissionDenied,
        ErrorKind.ResourceUnavailable => ErrorCategory.ResourceUnavailable,
        ErrorKind.OperationTimeout => ErrorCategory.OperationTimeout,
        ErrorKind.ConnectionError => ErrorCategory.ConnectionError,
        ErrorKind.SecurityError => ErrorCategory.SecurityError,
        ErrorKind.NonZeroExit => ErrorCategory.InvalidResult,
        ErrorKind.Cancelled => ErrorCategory.OperationStopped,
        _ => ErrorCategory.NotSpecified,
    };
}
