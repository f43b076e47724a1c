using System.Management.Automation;
using MelangeRunner.Images;

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

    /// <summary>
    /// The most the image may expand to (all layers decompressed): a melange size string
    /// (64Gi, 500M) or a number of bytes (64GB in PowerShell); default 32 GiB.
    /// </summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? MaximumSize { get; set; }

    protected override void BeginProcessing()
    {
        if (MaximumSize == null) return;
        try
        {
            var options = new ImageImportOptions { MaximumSize = ParseSize(MaximumSize) };
            options.Validate();
            _options = options;
        }
        catch (MelangeException e)
        {
            ThrowEngineError(e, MaximumSize);
        }
    }

    ImageImportOptions _options = ImageImportOptions.Default;

    /// <summary>A PowerShell number arrives as its digits (bytes); anything else is a melange size string.</summary>
    static long ParseSize(string value) =>
        long.TryParse(value.Trim(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long bytes)
            ? bytes : SizeParser.ParseToBytes(value, "maximum image size");

    protected override void ProcessRecord()
    {
        var loader = RunnerRegistry.Get(Runner).ImageLoader;
        var options = _options;
        foreach (var p in Path)
        {
            var path = HostPath(p);
            try
            {
                // The loaders take no options; an AsyncLocal set inside this async lambda reaches the import and ends with it.
                var image = RunEngine(async (events, ct) =>
                {
                    ImageImportOptions.Current = options;
                    return await loader.LoadImageAsync(path, Arch, events, ct).ConfigureAwait(false);
                });
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
