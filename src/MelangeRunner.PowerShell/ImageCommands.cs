using System.Management.Automation;
using MelangeRunner.Images;

namespace MelangeRunner.PowerShell;

/// <summary>Import-MelangeImage: unpacks a layer tar, OCI layout or image archive for a runner.</summary>
[Cmdlet(VerbsData.Import, "MelangeImage", DefaultParameterSetName = PathSet, HelpUri = Links.Cmdlets + "Import-MelangeImage.md")]
[OutputType(typeof(ImageInfo))]
public sealed class ImportMelangeImageCommand : MelangeCmdlet
{
    private const string PathSet = "Path";
    private const string LiteralPathSet = "LiteralPath";

    /// <summary>Paths with wildcards, as PowerShell's own -Path: each match is imported.</summary>
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ParameterSetName = PathSet)]
    [SupportsWildcards]
    public string[] Path { get; set; } = Array.Empty<string>();

    /// <summary>Paths taken as written; bound by property name from Get-ChildItem (PSPath, FullName).</summary>
    [Parameter(Mandatory = true, ValueFromPipelineByPropertyName = true, ParameterSetName = LiteralPathSet)]
    [Alias("PSPath", "FullName", "LP")]
    public string[] LiteralPath { get; set; } = Array.Empty<string>();

    [Parameter(Mandatory = true, Position = 1)]
    [ValidateSet(Runners.Bubblewrap, Runners.Qemu, Runners.Docker)]
    public string Runner { get; set; } = "";

    /// <summary>The architecture to pick from a multi-platform image; default the host's.</summary>
    [Parameter]
    [ArgumentCompleter(typeof(ArchCompleter))]
    public string? Arch { get; set; }

    /// <summary>
    /// The most the image may expand to (all layers decompressed): a melange size string
    /// (64Gi, 500M) or a number of bytes (64GB in PowerShell); default 32 GiB.
    /// </summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    [SizeTransformation]
    [ArgumentCompleter(typeof(SizeCompleter))]
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

    private ImageImportOptions _options = ImageImportOptions.Default;

    /// <summary>
    /// The host paths to import: -LiteralPath as written; -Path with wildcards expanded (a pattern
    /// that matches nothing is an error, a plain path goes to the importer, which names what is missing).
    /// </summary>
    private IEnumerable<string> ResolvePaths()
    {
        if (ParameterSetName == LiteralPathSet)
        {
            foreach (var p in LiteralPath) yield return HostPath(p);
            yield break;
        }
        foreach (var p in Path)
        {
            if (!WildcardPattern.ContainsWildcardCharacters(p))
            {
                yield return HostPath(p);
                continue;
            }
            List<string> matches;
            try
            {
                matches = SessionState.Path.GetResolvedProviderPathFromPSPath(p, out var provider).Order(StringComparer.Ordinal).ToList();
                if (provider.Name != "FileSystem") matches.Clear();
            }
            catch (ItemNotFoundException)
            {
                matches = new List<string>();
            }
            if (matches.Count == 0)
                WriteEngineError(new MelangeException(ErrorKind.ObjectNotFound, "ImagePathNotMatched",
                    $"No file matches the path '{p}'.",
                    "Check the pattern with Get-ChildItem; use -LiteralPath for a name that contains [ ] * or ?.", p), p);
            foreach (var m in matches) yield return m;
        }
    }

    /// <summary>A PowerShell number arrives as its digits (bytes); anything else is a melange size string.</summary>
    private static long ParseSize(string value) =>
        long.TryParse(value.Trim(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long bytes)
            ? bytes : SizeParser.ParseToBytes(value, "maximum image size");

    protected override void ProcessRecord()
    {
        var loader = RunnerRegistry.Get(Runner).ImageLoader;
        var options = _options;
        foreach (var path in ResolvePaths())
        {
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
[Cmdlet(VerbsCommon.Remove, "MelangeImage", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium, HelpUri = Links.Cmdlets + "Remove-MelangeImage.md")]
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
