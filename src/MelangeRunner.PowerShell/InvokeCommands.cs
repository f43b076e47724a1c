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

        string[] argv;
        string display;
        try
        {
            argv = ResolveCommand(out display);
        }
        catch (MelangeException e)
        {
            ThrowEngineError(e);
            return;
        }
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
        var words = CommandWords();
        if (ParameterSetName == ArgumentListSet)
        {
            display = ShellQuote.Join(words);
            return words;
        }
        // One string is a shell line, as melange runs a pipeline step's runs. A lone plain word
        // (`true`, `/usr/bin/id`) is run directly: the shell would only exec it, and -Verbose
        // then shows the command itself.
        if (words.Length == 1 && !PlainWord().IsMatch(words[0]))
        {
            display = words[0];
            return new[] { "/bin/sh", "-c", words[0] };
        }
        display = ShellQuote.Join(words);
        return words;
    }

    // The command's own single-letter options. PowerShell would take `-v` as -Verbose, `-c` as
    // -Command, and call `-e`, `-i`, `-o`, `-p`, `-w` ambiguous before the cmdlet runs, so each
    // letter that begins a parameter name of this cmdlet (its own or a common one) is a hidden
    // switch of its own: the binder matches it exactly, and CommandWords() puts it back where
    // the statement has it. Letters that begin no parameter name reach the command anyway.
    [Parameter(DontShow = true)] public SwitchParameter A { get; set; }
    [Parameter(DontShow = true)] public SwitchParameter C { get; set; }
    [Parameter(DontShow = true)] public SwitchParameter D { get; set; }
    [Parameter(DontShow = true)] public SwitchParameter E { get; set; }
    [Parameter(DontShow = true)] public SwitchParameter I { get; set; }
    [Parameter(DontShow = true)] public SwitchParameter L { get; set; }
    [Parameter(DontShow = true)] public SwitchParameter O { get; set; }
    [Parameter(DontShow = true)] public SwitchParameter P { get; set; }
    [Parameter(DontShow = true)] public SwitchParameter T { get; set; }
    [Parameter(DontShow = true)] public SwitchParameter V { get; set; }
    [Parameter(DontShow = true)] public SwitchParameter W { get; set; }

    /// <summary>The hidden parameters that stand for the command's single-letter options.</summary>
    public static IReadOnlyList<string> LetterOptions { get; } = new[] { "A", "C", "D", "E", "I", "L", "O", "P", "T", "V", "W" };

    /// <summary>
    /// The words of the command as the statement has them. PowerShell binds before a cmdlet sees
    /// its arguments: a letter option (see <see cref="LetterOptions"/>) comes out of -Command, and
    /// a longer -word that abbreviates a parameter (`ls -ti`: -Timeout) is taken as that parameter.
    /// So the statement is read again: letters go back in their place, between the values
    /// PowerShell evaluated for the other words; an abbreviation written after the command's first
    /// word is refused rather than run as another command. Full names and PowerShell's aliases
    /// (-ErrorAction, -ea, -Verbose, -vb) stay PowerShell's, and so does anything after `--`
    /// the command's.
    /// </summary>
    private string[] CommandWords()
    {
        var lettersBound = LetterOptions.Any(MyInvocation.BoundParameters.ContainsKey);
        // InvocationInfo.Statement (PowerShell 7: this command's text) is not in the 5.1 reference assemblies.
        var statement = typeof(InvocationInfo).GetProperty("Statement")?.GetValue(MyInvocation) as string;
        if (string.IsNullOrEmpty(statement)) statement = MyInvocation.Line;
        if (string.IsNullOrEmpty(statement) || !statement.Contains(" -", StringComparison.Ordinal))
        {
            if (lettersBound) throw Unplaceable();
            return ParameterSetName == ArgumentListSet ? ArgumentList : Command;
        }
        // Parsing costs more than the rest of a call, so a loop reads its statement once. The
        // shape also depends on whether the pod comes from the pipeline (see StatementShape).
        var key = (statement, MyInvocation.ExpectingInput);
        if (!(_lastShapeKey == key && _lastShape is { } shape))
        {
            shape = StatementShape(statement);
            (_lastShapeKey, _lastShape) = (key, shape);
        }
        if (ParameterSetName == ArgumentListSet)
        {
            if (shape.Letters.FirstOrDefault() is { } letter) throw LetterWithArgumentList(letter);
            return ArgumentList;
        }
        if (!shape.Letters.Any()) return lettersBound ? throw Unplaceable() : Command;
        if (shape.Values != Command.Length) throw Unplaceable();
        var words = new List<string>(shape.Words.Count);
        var next = 0;
        foreach (var literal in shape.Words) words.Add(literal ?? Command[next++]);
        return words.ToArray();
    }

    /// <summary>A statement read once: each word of the command, null where PowerShell's value goes.</summary>
    private sealed record Shape(IReadOnlyList<string?> Words)
    {
        /// <summary>The letter options, as written.</summary>
        public IEnumerable<string> Letters => Words.OfType<string>();

        /// <summary>How many of the words are PowerShell's values (the bound -Command).</summary>
        public int Values => Words.Count(w => w is null);
    }

    private Shape StatementShape(string statement)
    {
        var ast = Parser.ParseInput(statement, out _, out _);
        // The statement is this command's own text, so its first command is this invocation.
        if (ast.Find(a => a is CommandAst, true) is not CommandAst command ||
            !string.Equals(command.GetCommandName(), MyInvocation.InvocationName, StringComparison.OrdinalIgnoreCase))
            return new Shape(Array.Empty<string?>());
        var parameters = MyInvocation.MyCommand.Parameters.Values;
        ParameterMetadata? Match(string name) =>
            parameters.FirstOrDefault(m => m.Name.Equals(name, StringComparison.OrdinalIgnoreCase) ||
                                           m.Aliases.Contains(name, StringComparer.OrdinalIgnoreCase))
            ?? (parameters.Where(m => m.Name.StartsWith(name, StringComparison.OrdinalIgnoreCase)).Take(2).ToList() is [var only] ? only : null);

        var elements = command.CommandElements;
        // Without pipeline input the first positional word is the pod, unless -Pod is written out
        // (the binder may report either set then, so the set name cannot tell).
        var podPending = !MyInvocation.ExpectingInput &&
            !elements.OfType<CommandParameterAst>().Any(p => Match(p.ParameterName)?.Name == nameof(Pod));
        var words = new List<string?>();
        var values = 0; // the words so far that are PowerShell's values
        var verbatim = false;
        for (var i = 1; i < elements.Count; i++)
        {
            if (!verbatim && elements[i] is CommandParameterAst p)
            {
                if (p.ParameterName == "-") { verbatim = true; continue; } // `--`: the rest is the command's
                var matched = Match(p.ParameterName);
                var isLetter = matched is not null && LetterOptions.Contains(matched.Name);
                if (isLetter)
                {
                    if (values == 0 || p.Argument is not null) throw LetterBeforeCommand(p, command);
                    words.Add("-" + p.ParameterName);
                    continue;
                }
                if (matched is not null)
                {
                    var exact = matched.Name.Equals(p.ParameterName, StringComparison.OrdinalIgnoreCase) ||
                                matched.Aliases.Contains(p.ParameterName, StringComparer.OrdinalIgnoreCase);
                    if (!exact && values > 0) throw TakenByPowerShell(p, matched, command);
                    if (p.Argument is null && !matched.SwitchParameter) i++; // its value
                    continue;
                }
                // A -word that names no parameter: PowerShell passes it on as a word of the command.
            }
            if (podPending) { podPending = false; continue; }
            words.Add(null);
            values++;
        }
        return new Shape(words);
    }

    // The last statement read and its shape, per thread (runspaces run on their own threads).
    [ThreadStatic] private static (string Statement, bool ExpectingInput)? _lastShapeKey;
    [ThreadStatic] private static Shape? _lastShape;

    private MelangeException TakenByPowerShell(CommandParameterAst p, ParameterMetadata matched, CommandAst command) =>
        new(ErrorKind.InvalidArgument, "CommandArgumentTakenByPowerShell",
            $"PowerShell took '-{p.ParameterName}' as the parameter -{matched.Name} of {MyInvocation.InvocationName}, so it would not reach the command in the pod.",
            $"Write the command as one string ('{WordsOf(command)}'), put it after -- ({MyInvocation.InvocationName} -- …), or pass -ArgumentList; spell PowerShell's parameters out in full.",
            "-" + p.ParameterName);

    private MelangeException LetterBeforeCommand(CommandParameterAst p, CommandAst command) =>
        new(ErrorKind.InvalidArgument, "CommandArgumentTakenByPowerShell",
            $"'{p.Extent.Text}' comes before the command, where it is neither a parameter of {MyInvocation.InvocationName} nor a word of the command: a single letter such as -{p.ParameterName} is always the command's own option.",
            $"Spell PowerShell's parameters out in full before the command (-Timeout, -Verbose, -Environment …), or write the command as one string ('{WordsOf(command)}').",
            p.Extent.Text);

    private MelangeException LetterWithArgumentList(string letter) =>
        new(ErrorKind.InvalidArgument, "CommandArgumentTakenByPowerShell",
            $"'{letter}' is written outside -ArgumentList, where it belongs to no word of the command.",
            "Put every word of the command in -ArgumentList (-ArgumentList ls, -l, /), and spell PowerShell's parameters out in full.", letter);

    private MelangeException Unplaceable() =>
        new(ErrorKind.InvalidArgument, "CommandArgumentTakenByPowerShell",
            $"{MyInvocation.InvocationName} could not tell where the command's single-letter options stand among its words (the command is splatted, or its statement text is not available).",
            $"Write the command as one string, put it after -- ({MyInvocation.InvocationName} -- …), or pass -ArgumentList.", MyInvocation.InvocationName);

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
