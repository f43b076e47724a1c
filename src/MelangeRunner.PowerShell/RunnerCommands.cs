using System.Management.Automation;

namespace MelangeRunner.PowerShell;

/// <summary>Get-MelangeRunner: the runners, whether each can be used here, and why not.</summary>
[Cmdlet(VerbsCommon.Get, "MelangeRunner")]
[OutputType(typeof(RunnerInfo))]
public sealed class GetMelangeRunnerCommand : MelangeCmdlet
{
    [Parameter(Position = 0, ValueFromPipeline = true, ValueFromPipelineByPropertyName = true)]
    [ValidateSet(Runners.Bubblewrap, Runners.Qemu)]
    [Alias("Runner")]
    public string[]? Name { get; set; }

    protected override void ProcessRecord()
    {
        foreach (var name in Name ?? Runners.All.ToArray())
        {
            var info = RunnerRegistry.Get(name).Probe();
            WriteVerbose($"{info.Name}: {(info.IsUsable ? "usable" : "not usable: " + info.Reason)}");
            WriteObject(info);
        }
    }
}

/// <summary>Test-MelangeRunner: $true when the runner can be used on this host.</summary>
[Cmdlet(VerbsDiagnostic.Test, "MelangeRunner")]
[OutputType(typeof(bool))]
public sealed class TestMelangeRunnerCommand : MelangeCmdlet
{
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ValueFromPipelineByPropertyName = true)]
    [ValidateSet(Runners.Bubblewrap, Runners.Qemu)]
    [Alias("Runner")]
    public string Name { get; set; } = "";

    protected override void ProcessRecord()
    {
        var info = RunnerRegistry.Get(Name).Probe();
        if (!info.IsUsable) WriteVerbose($"{info.Name} is not usable: {info.Reason}");
        WriteObject(info.IsUsable);
    }
}
