using System.Collections;
using System.Globalization;
using System.Management.Automation;
using System.Management.Automation.Language;

namespace MelangeRunner.PowerShell;

/// <summary>
/// Invoke-MelangePod: runs a command in the pod and streams its output.
/// One string is a shell line (<c>/bin/sh -c</c>, as melange runs pipeline steps); several
/// words, or -ArgumentList, are an argument vector run without a shell.
/// </summary>
/// <remarks>
/// Parameter sets: PowerShell binds position 0 to -Pod even when the pod comes from the
/// pipeline, and a word such as "ls" cannot become a Pod, so the pod-first form is a set of its
/// own (PodFirst: -Pod at 0, -Command from 1) next to the piped one (Command: -Command from 0).
/// </remarks>
[Cmdlet(VerbsLifecycle.Invoke, "MelangePod", DefaultParameterSetName = CommandSet, HelpUri = Links.Cmdlets + "Invoke-MelangePod.md")]
[OutputType(typeof(string))]
public sealed class InvokeMelangePodCommand : MelangeCmdlet
{
    private const string CommandSet = "Command";
    private const string PodFirstSet = "PodFirst";
    private const string ArgumentListSet = "ArgumentList";

    /// <summary>The exit status $LASTEXITCODE gets when -Timeout ends the command (timeout(1)'s).</summary>
    public const int TimedOutExitCode = 124;

    [Parameter(Mandatory = true, ValueFromPipeline = true, ParameterSetName = CommandSet)]
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ParameterSetName = PodFirstSet)]
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ParameterSetName = ArgumentListSet)]
    [ArgumentCompleter(typeof(PodCompleter))]
    public Pod Pod { get; set; } = null!;

    [Parameter(Mandatory = true, Position = 0, ValueFromRemainingArguments = true, ParameterSetName = CommandSet)]
    [Parameter(Mandatory = true, Position = 1, ValueFromRemainingArguments = true, ParameterSetName = PodFirstSet)]
    public string[] Command { get; set; } = Array.Empty<string>();

    /// <summary>The command as an argument vector, never through a shell, even with one word.</summary>
    [Parameter(Mandatory = true, ParameterSetName = ArgumentListSet)]
    public string[] ArgumentList { get; set; } = Array.Empty<string>();

    /// <summary>Variables for this command only, set over the pod's environment.</summary>
    [Parameter]
    public IDictionary? Environment { get; set; }

    /// <summary>Ends the command when it runs longer; a number is seconds. Zero: no limit.</summary>
    [Parameter]
    [TimeSpanOrSeconds]
    public TimeSpan Timeout { get; set; }

    /// <summary>The name of the Azure Pipelines log group (default: the command).</summary>
    [Parameter]
    public string? LogGroup { get; set; }

    protected override void ProcessRecord()
    {
        if (Timeout < TimeSpan.Zero)
            ThrowEngineError(new MelangeException(ErrorKind.InvalidArgument, "InvalidTimeout",
                $"-Timeout must not be negative; got {Timeout}.", "Give a positive TimeSpan or number of seconds, or 0 for no limit.", Timeout));

        RefuseStolenArguments();
        var argv = ResolveCommand(out var display);
        var env = PodCommandHelpers.ToDictionary(Environment);
        var azure = AzurePipelines.IsEnabled();
        var debugLines = azure && VerboseEnabled();
        if (azure) Host.UI.WriteLine(AzurePipelines.GroupStart(string.IsNullOrEmpty(LogGroup) ? display : LogGroup!));
        int exitCode;
        try
        {
            exitCode = RunEngine((events, ct) => Pod.RunAsync(env, argv, Timeout,
                debugLines && events is PipelineEventSink sink ? new AzureDebugSink(sink, Host.UI.WriteLine) : events, ct));
        }
        catch (MelangeException e) when (e.ErrorId == "CommandTimedOut")
        {
            PodCommandHelpers.SetLastExitCode(this, TimedOutExitCode);
            if (azure) AzureFailure($"{display} timed out after {Timeout}");
            WriteEngineError(e, Pod);
            return;
        }
        catch (Exception e) when (IsReportable(e))
        {
            if (azure) AzureFailure($"{display} failed: {e.Message}");
            ThrowEngineError(e, Pod);
            return;
        }
        catch
        {
            if (azure) Host.UI.WriteLine(AzurePipelines.GroupEnd);
            throw;
        }
        PodCommandHelpers.SetLastExitCode(this, exitCode);
        if (exitCode != 0)
        {
            if (azure) AzureFailure($"{display} failed with exit code {exitCode}");
            WriteEngineError(new CommandFailedException(exitCode, argv), Pod);
        }
        else if (azure)
        {
            Host.UI.WriteLine(AzurePipelines.GroupEnd);
        }
    }

    // The issue goes after the group's end, so that it shows when the group is collapsed.
    private void AzureFailure(string message)
    {
        Host.UI.WriteLine(AzurePipelines.GroupEnd);
        Host.UI.WriteLine(AzurePipelines.Error(message));
    }

    /// <summary>The argument vector to run, and the command as the user wrote it (for messages).</summary>
    private string[] ResolveCommand(out string display)
    {
        if (ParameterSetName == ArgumentListSet)
        {
            display = ShellQuote.Join(ArgumentList);
            return ArgumentList;
        }
        // One string is a shell line, as melange runs a pipeline step's runs. A lone plain word
        // (`true`, `/usr/bin/id`) is run directly: the shell would only exec it, and -Verbose
        // then shows the command itself.
        if (Command.Length == 1 && !PlainWord().IsMatch(Command[0]))
        {
            display = Command[0];
            return new[] { "/bin/sh", "-c", Command[0] };
        }
        display = ShellQuote.Join(Command);
        return Command;
    }

    /// <summary>
    /// PowerShell binds any -word that abbreviates a parameter of this cmdlet or a common one
    /// (`ls -v /`: -v is -Verbose; `ls -l /`: -l is -LogGroup) before a cmdlet sees its
    /// arguments, so such a word never reaches the pod; the binder gives no way to stop it.
    /// When the statement shows an abbreviation written after the command's first word, the
    /// user meant it for the command: refuse rather than run a different command. Full names
    /// and PowerShell's aliases (-ErrorAction, -ea, -Verbose, -vb) stay PowerShell's.
    /// </summary>
    private void RefuseStolenArguments()
    {
        // InvocationInfo.Statement (PowerShell 7) is not in the 5.1 reference assemblies.
        var statement = typeof(InvocationInfo).GetProperty("Statement")?.GetValue(MyInvocation) as string;
        if (string.IsNullOrEmpty(statement)) statement = MyInvocation.Line;
        if (ParameterSetName == ArgumentListSet || string.IsNullOrEmpty(statement)) return;
        // Parsing costs more than the rest of a call: none is needed where no parameter is written
        // (`$pod | Invoke-MelangePod true`), nor again for a statement already found clean (a loop).
        if (!statement.Contains(" -", StringComparison.Ordinal) || ReferenceEquals(statement, _lastCleanStatement) || statement == _lastCleanStatement) return;
        var ast = Parser.ParseInput(statement, out _, out _);
        var parameters = MyInvocation.MyCommand.Parameters.Values;
        foreach (CommandAst command in ast.FindAll(a => a is CommandAst c &&
                     string.Equals(c.GetCommandName(), MyInvocation.InvocationName, StringComparison.OrdinalIgnoreCase), true))
        {
            var seenWord = false;
            var elements = command.CommandElements;
            for (var i = 1; i < elements.Count; i++)
            {
                if (elements[i] is not CommandParameterAst p) { seenWord = true; continue; }
                if (p.ParameterName == "-") break; // `--`: the rest is the command's
                var exact = parameters.FirstOrDefault(m => m.Name.Equals(p.ParameterName, StringComparison.OrdinalIgnoreCase) ||
                                                           m.Aliases.Contains(p.ParameterName, StringComparer.OrdinalIgnoreCase));
                var matched = exact ?? parameters.FirstOrDefault(m => m.Name.StartsWith(p.ParameterName, StringComparison.OrdinalIgnoreCase));
                if (matched is null) continue; // unknown: PowerShell passed it on as a word
                if (exact is null && seenWord)
                    ThrowEngineError(new MelangeException(ErrorKind.InvalidArgument, "CommandArgumentTakenByPowerShell",
                        $"PowerShell took '-{p.ParameterName}' as the parameter -{matched.Name} of {MyInvocation.InvocationName}, so it would not reach the command in the pod.",
                        $"Write the command as one string ('{WordsOf(command)}'), put it after -- ({MyInvocation.InvocationName} -- …), or pass -ArgumentList; spell PowerShell's parameters out in full.",
                        "-" + p.ParameterName));
                if (p.Argument is null && !matched.SwitchParameter) i++; // its value
            }
        }
        _lastCleanStatement = statement;
    }

    // The last statement RefuseStolenArguments found clean, per thread (runspaces run on their own threads).
    [ThreadStatic] private static string? _lastCleanStatement;

    private static string WordsOf(CommandAst command) =>
        string.Join(' ', command.CommandElements.Skip(1).Select(e => e.Extent.Text));

    private static System.Text.RegularExpressions.Regex PlainWord() => PlainWordPattern;

    private static readonly System.Text.RegularExpressions.Regex PlainWordPattern = new(@"^[A-Za-z0-9_./:@%+,=-]+$", System.Text.RegularExpressions.RegexOptions.CultureInvariant);

    private bool VerboseEnabled()
    {
        if (MyInvocation.BoundParameters.TryGetValue("Verbose", out var bound)) return bound is SwitchParameter { IsPresent: true } || bound is true;
        var preference = GetVariableValue("VerbosePreference");
        if (preference is PSObject p) preference = p.BaseObject;
        return preference switch
        {
            ActionPreference a => a is not (ActionPreference.SilentlyContinue or ActionPreference.Ignore),
            string s => Enum.TryParse<ActionPreference>(s, true, out var a) && a is not (ActionPreference.SilentlyContinue or ActionPreference.Ignore),
            _ => false,
        };
    }
}

/// <summary>
/// A TimeSpan parameter that also takes a number of seconds: PowerShell's own conversion
/// would read 30 as 30 ticks.
/// </summary>
internal sealed class TimeSpanOrSecondsAttribute : ArgumentTransformationAttribute
{
    public override object Transform(EngineIntrinsics engineIntrinsics, object inputData)
    {
        var value = inputData is PSObject p ? p.BaseObject : inputData;
        return value switch
        {
            int or long or short or byte or uint or ulong or ushort or sbyte or double or float or decimal =>
                TimeSpan.FromSeconds(Convert.ToDouble(value, CultureInfo.InvariantCulture)),
            string s when double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var seconds) => TimeSpan.FromSeconds(seconds),
            _ => inputData,
        };
    }
}
