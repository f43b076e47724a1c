namespace MelangeRunner.PowerShell;

/// <summary>
/// Azure Pipelines logging commands (learn.microsoft.com/azure/devops/pipelines/scripts/logging-commands).
/// The agent reads them from the step's standard output, so they are written to the host, as
/// Write-Host would: that is stdout for a <c>pwsh -File</c> step, in order with the command's
/// output, and out of reach of assignments and stream redirections. The engine knows nothing of this.
/// </summary>
internal static class AzurePipelines
{
    /// <summary>Forces the logging commands on (1, true) or off (0, false); otherwise they follow TF_BUILD.</summary>
    public const string SwitchVariable = "MELANGE_AZURE_PIPELINES";

    /// <summary>On inside an agent (TF_BUILD set), unless MELANGE_AZURE_PIPELINES says otherwise.</summary>
    public static bool IsEnabled()
    {
        var forced = Environment.GetEnvironmentVariable(SwitchVariable)?.Trim();
        if (!string.IsNullOrEmpty(forced))
        {
            if (forced is "1" || forced.Equals("true", StringComparison.OrdinalIgnoreCase)) return true;
            if (forced is "0" || forced.Equals("false", StringComparison.OrdinalIgnoreCase)) return false;
        }
        return !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("TF_BUILD"));
    }

    /// <summary>The agent's escaping for a command's message: %, CR and LF.</summary>
    public static string EscapeData(string value) =>
        value.Replace("%", "%AZP25", StringComparison.Ordinal).Replace("\r", "%0D", StringComparison.Ordinal).Replace("\n", "%0A", StringComparison.Ordinal);

    /// <summary>The agent's escaping for a property value: the message's, plus ; and ].</summary>
    public static string EscapeProperty(string value) =>
        EscapeData(value).Replace(";", "%3B", StringComparison.Ordinal).Replace("]", "%5D", StringComparison.Ordinal);

    // A formatting command (##[group], ##[debug]) is one line: the agent decodes no escapes in it.
    private static string OneLine(string value) => value.Replace("\r\n", " ", StringComparison.Ordinal).Replace('\r', ' ').Replace('\n', ' ');

    public static string GroupStart(string name) => "##[group]" + OneLine(name);

    public const string GroupEnd = "##[endgroup]";

    public static IEnumerable<string> Debug(string message) =>
        message.Replace("\r\n", "\n", StringComparison.Ordinal).Split('\n').Select(line => "##[debug]" + line);

    public static string Error(string message) => "##vso[task.logissue type=error]" + EscapeData(message);
}

/// <summary>Passes engine events through, and writes each verbose message also as ##[debug] lines, in order.</summary>
internal sealed class AzureDebugSink : IEventSink
{
    private readonly PipelineEventSink _inner;
    private readonly Action<string> _hostLine;

    public AzureDebugSink(PipelineEventSink inner, Action<string> hostLine)
    {
        _inner = inner;
        _hostLine = hostLine;
    }

    public void Verbose(string message)
    {
        _inner.Verbose(message);
        _inner.Post(() => { foreach (var line in AzurePipelines.Debug(message)) _hostLine(line); });
    }

    public void Warning(string message) => _inner.Warning(message);
    public void Progress(ProgressReport report) => _inner.Progress(report);
    public void StandardOutput(string line) => _inner.StandardOutput(line);
    public void StandardError(string line) => _inner.StandardError(line);
}
