using System.Management.Automation;

namespace MelangeRunner.PowerShell;

/// <summary>Import-MelangeImage: unpacks a layer tar, OCI layout or image archive for a runner.</summary>
[Cmdlet(VerbsData.Import, "MelangeImage")]
[OutputType(typeof(ImageInfo))]
public sealed class ImportMelangeImageCommand : MelangeCmdlet
{
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ValueFromPipelineByPropertyName = true)]
    [Alias("FullName", "PSPath", "LiteralPath")]
    public string[] Path { get; set; } = Array.Empty<string>();

    [Parameter(Mandatory = true)]
    [ValidateSet(Runners.Bubblewrap, Runners.Qemu)]
    public string Runner { get; set; } = "";

    /// <summary>The architecture to pick from a multi-platform image; default the host's.</summary>
    [Parameter]
    public string? Arch { get; set; }

    protected override void ProcessRecord()
    {
        var loader = RunnerRegistry.Get(Runner).ImageLoader;
        foreach (var p in Path)
        {
            var path = HostPath(p);
            try
            {
                var image = RunEngine((events, ct) => loader.LoadImageAsync(path, Arch, events, ct));
                WriteVerbose($"Imported {image.SourceKind} {image.Source} ({image.Arch}) as {image.Ref}");
                WriteObject(image);
            }
            catch (Exception e) when (MelangeCmdlet.IsReportable(e))
            {
                WriteEngineError(e, path);
            }
        }
    }
}

/// <summary>Remove-MelangeImage: deletes what Import-MelangeImage unpacked.</summary>
[Cmdlet(VerbsCommon.Remove, "MelangeImage", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium)]
public sealed class RemoveMelangeImageCommand : MelangeCmdlet
{
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true)]
    public ImageInfo[] Image { get; set; } = Array.Empty<ImageInfo>();

    protected override void ProcessRecord()
    {
        foreach (var image in Image)
        {
            if (!ShouldProcess(image.Ref, $"Remove {image.Runner} image imported from {image.Source}")) continue;
            if (PodTracker.RunningPodsOf(image) is { Count: > 0 } pods)
            {
                WriteEngineError(new MelangeException(ErrorKind.InvalidOperation, "ImageInUse",
                    $"The image {image.Ref} is in use by the running pod(s) {string.Join(", ", pods.Select(p => p.Id))}.",
                    "Stop those pods with Stop-MelangePod first."), image);
                continue;
            }
            try
            {
                var loader = RunnerRegistry.Get(image.Runner).ImageLoader;
                RunEngine((_, ct) => loader.RemoveImageAsync(image, ct));
            }
            catch (Exception e) when (MelangeCmdlet.IsReportable(e))
            {
                WriteEngineError(e, image);
            }
        }
    }
}
