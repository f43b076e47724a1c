using System.Management.Automation;
using MelangeRunner.Images;

namespace MelangeRunner.PowerShell;

/// <summary>Get-MelangePod: the pods started in this session (runspace), for the pod cmdlets' pipeline.</summary>
[Cmdlet(VerbsCommon.Get, "MelangePod", HelpUri = Links.Cmdlets + "Get-MelangePod.md")]
[OutputType(typeof(Pod))]
public sealed class GetMelangePodCommand : MelangeCmdlet
{
    [Parameter(Position = 0, ValueFromPipelineByPropertyName = true)]
    [SupportsWildcards]
    [ArgumentCompleter(typeof(PodIdCompleter))]
    public string[]? Id { get; set; }

    [Parameter]
    [ValidateSet(Runners.Bubblewrap, Runners.Qemu, Runners.Docker)]
    public string[]? Runner { get; set; }

    [Parameter]
    public PodState[]? State { get; set; }

    protected override void ProcessRecord()
    {
        var pods = PodTracker.InCurrentRunspace()
            .Where(p => Runner is null || Runner.Contains(p.Runner, StringComparer.Ordinal))
            .Where(p => State is null || State.Contains(p.State))
            .ToList();
        if (Id is null)
        {
            WriteObject(pods, enumerateCollection: true);
            return;
        }
        foreach (var id in Id)
        {
            var pattern = new WildcardPattern(id, WildcardOptions.IgnoreCase);
            var matched = pods.Where(p => pattern.IsMatch(p.Id)).ToList();
            // As Get-Process -Id does: a name without wildcards that matches nothing is an error; a pattern is a filter.
            if (matched.Count == 0 && !WildcardPattern.ContainsWildcardCharacters(id))
                WriteEngineError(new MelangeException(ErrorKind.ObjectNotFound, "PodNotFound",
                    $"No pod with the id '{id}' in this session{Filters()}.",
                    "List the pods of this session with Get-MelangePod; pods started in another runspace or process are not listed.", id), id);
            WriteObject(matched, enumerateCollection: true);
        }
    }

    private string Filters() =>
        (Runner is null ? "" : $" for the runner {string.Join("/", Runner)}") + (State is null ? "" : $" in the state {string.Join("/", State)}");
}

/// <summary>
/// Get-MelangeImage: the imported images on disk, including those an earlier session left behind,
/// so that <c>Get-MelangeImage | Remove-MelangeImage</c> cleans up.
/// </summary>
[Cmdlet(VerbsCommon.Get, "MelangeImage", HelpUri = Links.Cmdlets + "Get-MelangeImage.md")]
[OutputType(typeof(ImageInfo))]
public sealed class GetMelangeImageCommand : MelangeCmdlet
{
    /// <summary>Wildcards against the image's Ref (its rootfs directory or tar).</summary>
    [Parameter(Position = 0, ValueFromPipelineByPropertyName = true)]
    [SupportsWildcards]
    public string[]? Ref { get; set; }

    /// <summary>Wildcards against the path the image was imported from.</summary>
    [Parameter]
    [SupportsWildcards]
    public string[]? Source { get; set; }

    [Parameter]
    [ValidateSet(Runners.Bubblewrap, Runners.Qemu, Runners.Docker)]
    public string[]? Runner { get; set; }

    protected override void ProcessRecord()
    {
        IReadOnlyList<ImageInfo> images;
        try
        {
            images = RunEngine((events, _) => Task.FromResult(ImageCatalog.List(events)));
            // Docker images live in a shared engine: listed only when asked for by name.
            if (Runner?.Contains(Runners.Docker, StringComparer.Ordinal) == true)
                images = images.Concat(RunEngine((events, ct) => MelangeRunner.Docker.DockerImageCatalog.ListAsync(events, ct))).ToList();
        }
        catch (Exception e) when (IsReportable(e))
        {
            ThrowEngineError(e);
            return;
        }
        var refs = Patterns(Ref);
        var sources = Patterns(Source);
        foreach (var image in images)
        {
            if (Runner is not null && !Runner.Contains(image.Runner, StringComparer.Ordinal)) continue;
            if (refs is not null && !refs.Any(p => p.IsMatch(image.Ref))) continue;
            if (sources is not null && !sources.Any(p => p.IsMatch(image.Source))) continue;
            WriteObject(image);
        }
    }

    private static WildcardPattern[]? Patterns(string[]? values) =>
        values?.Select(v => new WildcardPattern(v, WildcardOptions.IgnoreCase)).ToArray();
}
