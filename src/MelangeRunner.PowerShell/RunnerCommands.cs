using System.Management.Automation;

namespace MelangeRunner.PowerShell;

/// <summary>Get-MelangeRunner: the runners, whether each can be used here, and why not.</summary>
[Cmdlet(VerbsCommon.Get, "MelangeRunner", HelpUri = Links.Cmdlets + "Get-MelangeRunner.md")]
[OutputType(typeof(RunnerInfo))]
public sealed class GetMelangeRunnerCommand : MelangeCmdlet
{
    /// <summary>Runner names or wildcards (q*); no ValidateSet, so completion comes from a completer.</summary>
    [Parameter(Position = 0, ValueFromPipeline = true, ValueFromPipelineByPropertyName = true)]
    [SupportsWildcards]
    [ArgumentCompleter(typeof(RunnerNameCompleter))]
    [Alias("Runner")]
    public string[]? Name { get; set; }

    protected override void ProcessRecord()
    {
        foreach (var name in Name ?? new[] { "*" })
        {
            var pattern = new WildcardPattern(name, WildcardOptions.IgnoreCase);
            var matched = Runners.All.Where(pattern.IsMatch).ToList();
            if (matched.Count == 0 && !WildcardPattern.ContainsWildcardCharacters(name))
            {
                WriteEngineError(new MelangeException(ErrorKind.ObjectNotFound, "UnknownRunner",
                    $"There is no runner named '{name}'.", $"Use one of: {string.Join(", ", Runners.All)}.", name), name);
                continue;
            }
            foreach (var runner in matched)
            {
                var info = RunnerRegistry.Get(runner).Probe();
                WriteVerbose($"{info.Name}: {(info.IsUsable ? "usable" : "not usable: " + info.Reason)}");
                WriteObject(info);
            }
        }
    }
}

/// <summary>Test-MelangeRunner: $true when the runner can be used on this host.</summary>
[Cmdlet(VerbsDiagnostic.Test, "MelangeRunner", HelpUri = Links.Cmdlets + "Test-MelangeRunner.md")]
[OutputType(typeof(bool))]
public sealed class TestMelangeRunnerCommand : MelangeCmdlet
{
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ValueFromPipelineByPropertyName = true)]
    [ValidateSet(Runners.Bubblewrap, Runners.Qemu, Runners.Docker)]
    [Alias("Runner")]
    public string Name { get; set; } = "";

    protected override void ProcessRecord()
    {
        var info = RunnerRegistry.Get(Name).Probe();
        if (!info.IsUsable) WriteVerbose($"{info.Name} is not usable: {info.Reason}");
        WriteObject(info.IsUsable);
    }
}
