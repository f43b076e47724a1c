using System.Collections;
using System.Management.Automation;

namespace MelangeRunner.PowerShell;

/// <summary>New-MelangePodConfig: a config object from the field parameters.</summary>
[Cmdlet(VerbsCommon.New, "MelangePodConfig", HelpUri = Links.Cmdlets + "New-MelangePodConfig.md")]
[OutputType(typeof(PodConfig))]
public sealed class NewMelangePodConfigCommand : PodConfigCmdlet
{
    protected override void EndProcessing() => WriteObject(BuildConfig(null));
}

/// <summary>
/// The parameters of cmdlets that act on an image with a config: the runner (by default the
/// one the image was imported for), the image from the pipeline, and a config object.
/// </summary>
public abstract class PodLaunchCmdlet : PodConfigCmdlet
{
    [Parameter]
    [ValidateSet(Runners.Bubblewrap, Runners.Qemu, Runners.Docker)]
    public string? Runner { get; set; }

    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true)]
    public ImageInfo Image { get; set; } = null!;

    [Parameter]
    public PodConfig? Config { get; set; }
}

/// <summary>Get-MelangePodPlan: the process that Start-MelangePod would run, without running it.</summary>
[Cmdlet(VerbsCommon.Get, "MelangePodPlan", HelpUri = Links.Cmdlets + "Get-MelangePodPlan.md")]
[OutputType(typeof(PodPlan))]
public sealed class GetMelangePodPlanCommand : PodLaunchCmdlet
{
    protected override void ProcessRecord()
    {
        var config = BuildConfig(Config);
        try
        {
            var plan = Pod.Plan(Runner, config, Image);
            WriteVerbose(plan.CommandLine);
            WriteObject(plan);
        }
        catch (Exception e) when (IsReportable(e))
        {
            WriteEngineError(e, Image);
        }
    }
}

/// <summary>Start-MelangePod: starts a pod from an imported image.</summary>
[Cmdlet(VerbsLifecycle.Start, "MelangePod", HelpUri = Links.Cmdlets + "Start-MelangePod.md")]
[OutputType(typeof(Pod))]
public sealed class StartMelangePodCommand : PodLaunchCmdlet
{
    protected override void ProcessRecord()
    {
        var config = BuildConfig(Config);
        try
        {
            var pod = RunEngine((events, ct) => Pod.StartAsync(Runner, config, Image, events, ct));
            PodTracker.Add(pod);
            try
            {
                WriteObject(pod);
            }
            catch (PipelineStoppedException)
            {
                // Stopped just as the pod became ready: nobody holds it, so it goes now, not at exit.
                PodTracker.Remove(pod);
                pod.Dispose();
                throw;
            }
        }
        catch (Exception e) when (IsReportable(e))
        {
            WriteEngineError(e, Image);
        }
    }
}

// Invoke-MelangePod lives in InvokeCommands.cs.

/// <summary>Enter-MelangePod: an interactive shell (or command) in the pod, on this terminal.</summary>
[Cmdlet(VerbsCommon.Enter, "MelangePod", HelpUri = Links.Cmdlets + "Enter-MelangePod.md")]
public sealed class EnterMelangePodCommand : MelangeCmdlet
{
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    [ArgumentCompleter(typeof(PodCompleter))]
    public Pod Pod { get; set; } = null!;

    [Parameter(Position = 0)]
    public string[] Command { get; set; } = { "/bin/sh" };

    [Parameter]
    public IDictionary? Environment { get; set; }

    protected override void ProcessRecord()
    {
        var env = PodCommandHelpers.ToDictionary(Environment);
        try
        {
            var exitCode = RunEngine((events, ct) => Pod.DebugAsync(env, Command, events, ct));
            PodCommandHelpers.SetLastExitCode(this, exitCode);
        }
        catch (Exception e) when (IsReportable(e))
        {
            ThrowEngineError(e, Pod);
        }
    }
}

/// <summary>Export-MelangeWorkspace: copies melange-out (and extra and license files) out of the pod.</summary>
[Cmdlet(VerbsData.Export, "MelangeWorkspace", DefaultParameterSetName = DirectorySet, HelpUri = Links.Cmdlets + "Export-MelangeWorkspace.md")]
[OutputType(typeof(DirectoryInfo), ParameterSetName = new[] { DirectorySet, PodDirectorySet })]
[OutputType(typeof(FileInfo), ParameterSetName = new[] { TarSet })]
public sealed class ExportMelangeWorkspaceCommand : MelangeCmdlet
{
    private const string DirectorySet = "Directory";
    private const string PodDirectorySet = "PodDirectory";
    private const string TarSet = "Tar";

    // Two directory sets so that both `$pod | Export-MelangeWorkspace ./out` (the destination at
    // position 0) and `Export-MelangeWorkspace $pod ./out` (the pod first) bind: one set cannot
    // put the pod at position 0 without taking a piped call's ./out as the pod.
    [Parameter(Mandatory = true, ValueFromPipeline = true, ParameterSetName = DirectorySet)]
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = PodDirectorySet)]
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ParameterSetName = TarSet)]
    [ArgumentCompleter(typeof(PodCompleter))]
    public Pod Pod { get; set; } = null!;

    [Parameter(Mandatory = true, Position = 0, ParameterSetName = DirectorySet)]
    [Parameter(Mandatory = true, Position = 1, ParameterSetName = PodDirectorySet)]
    public string Destination { get; set; } = "";

    [Parameter(Mandatory = true, ParameterSetName = TarSet)]
    public string AsTarPath { get; set; } = "";

    /// <summary>Workspace files (relative paths) exported besides melange-out.</summary>
    [Parameter]
    public string[]? ExtraFile { get; set; }

    protected override void ProcessRecord()
    {
        if (ParameterSetName == TarSet)
        {
            var path = HostPath(AsTarPath);
            WriteEngineResult((events, ct) => Workspace.ExportToTarAsync(Pod, path, ExtraFile, events, ct), Pod);
        }
        else
        {
            var path = HostPath(Destination);
            WriteEngineResult((events, ct) => Workspace.ExportToDirectoryAsync(Pod, path, ExtraFile, events, ct), Pod);
        }
    }
}

/// <summary>Get-MelangeReleaseData: the pod's /etc/os-release.</summary>
[Cmdlet(VerbsCommon.Get, "MelangeReleaseData", HelpUri = Links.Cmdlets + "Get-MelangeReleaseData.md")]
[OutputType(typeof(ReleaseData))]
public sealed class GetMelangeReleaseDataCommand : MelangeCmdlet
{
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [ArgumentCompleter(typeof(PodCompleter))]
    public Pod Pod { get; set; } = null!;

    protected override void ProcessRecord()
    {
        WriteEngineResult((events, ct) => Pod.GetReleaseDataAsync(events, ct), Pod);
    }
}

/// <summary>Stop-MelangePod: stops the pod and removes what it left on the host.</summary>
[Cmdlet(VerbsLifecycle.Stop, "MelangePod", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Low, HelpUri = Links.Cmdlets + "Stop-MelangePod.md")]
[OutputType(typeof(Pod))]
public sealed class StopMelangePodCommand : MelangeCmdlet
{
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [ArgumentCompleter(typeof(PodCompleter))]
    public Pod[] Pod { get; set; } = Array.Empty<Pod>();

    /// <summary>Writes each pod after stopping it (State Stopped), as Stop-Process -PassThru does.</summary>
    [Parameter]
    public SwitchParameter PassThru { get; set; }

    protected override void ProcessRecord()
    {
        foreach (var pod in Pod)
        {
            if (!ShouldProcess(pod.Id, $"Stop {pod.Runner} pod")) continue;
            try
            {
                RunEngine((events, ct) => pod.StopAsync(events, ct));
            }
            catch (Exception e) when (IsReportable(e))
            {
                WriteEngineError(e, pod);
            }
            finally
            {
                PodTracker.Remove(pod);
            }
            if (PassThru) WriteObject(pod);
        }
    }
}

internal static class PodCommandHelpers
{
    public static IReadOnlyDictionary<string, string>? ToDictionary(IDictionary? table)
    {
        if (table is null) return null;
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (DictionaryEntry e in table) result[e.Key.ToString()!] = e.Value?.ToString() ?? "";
        return result;
    }

    /// <summary>$LASTEXITCODE, as a native command sets it.</summary>
    public static void SetLastExitCode(PSCmdlet cmdlet, int exitCode) =>
        cmdlet.SessionState.PSVariable.Set("global:LASTEXITCODE", exitCode);
}
