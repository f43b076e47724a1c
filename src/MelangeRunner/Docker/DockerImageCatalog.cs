using Docker.DotNet.Models;

namespace MelangeRunner.Docker;

/// <summary>
/// Get-MelangeImage -Runner docker: the images this module imported into the engine (by their
/// import label), as ImageInfo objects rebuilt from the labels the import set and the image's Env.
/// Only when docker is asked for by name: the engine is shared by every session and user of it.
/// </summary>
public static class DockerImageCatalog
{
    public static async Task<IReadOnlyList<ImageInfo>> ListAsync(IEventSink events, CancellationToken cancellationToken)
    {
        var result = new List<ImageInfo>();
        using var client = DockerEngine.CreateClientOrNull(events);
        if (client is null) return result;
        try
        {
            await DockerEngine.EnsureAnswersAsync(client, cancellationToken).ConfigureAwait(false);
        }
        catch (MelangeException e)
        {
            events.Warning("Docker images are not listed: " + e.Message);
            return result;
        }
        var images = await client.Images.ListImagesAsync(new ImagesListParameters
        {
            Filters = new Dictionary<string, IDictionary<string, bool>> { ["label"] = new Dictionary<string, bool> { [DockerImageLoader.ImportLabel] = true } },
        }, cancellationToken).ConfigureAwait(false);
        foreach (var image in images)
        {
            var labels = image.Labels ?? new Dictionary<string, string>();
            foreach (var tag in image.RepoTags ?? new List<string>())
            {
                var reference = Normalize(tag);
                if (!reference.StartsWith(DockerEngine.ImageRepository + ":", StringComparison.Ordinal)) continue;
                var inspect = await client.Images.InspectImageAsync(image.ID, cancellationToken).ConfigureAwait(false);
                result.Add(new ImageInfo
                {
                    Runner = Runners.Docker,
                    Ref = reference,
                    Arch = labels.TryGetValue(DockerImageLoader.ArchLabel, out var arch) ? arch : inspect.Architecture ?? "",
                    Source = labels.TryGetValue(DockerImageLoader.SourceLabel, out var src) ? src : "",
                    SourceKind = labels.TryGetValue(DockerImageLoader.KindLabel, out var kind) ? kind : null,
                    Env = inspect.Config?.Env?.ToArray() ?? Array.Empty<string>(),
                });
            }
        }
        events.Verbose($"{result.Count} docker image(s) of this module in the engine at {DockerEngine.EndpointText}.");
        return result.OrderBy(i => i.Ref, StringComparer.Ordinal).ToList();
    }

    // podman lists short names with their registry (localhost/…, docker.io/…).
    private static string Normalize(string tag)
    {
        foreach (var prefix in new[] { "docker.io/library/", "docker.io/", "localhost/" })
            if (tag.StartsWith(prefix, StringComparison.Ordinal)) return tag[prefix.Length..];
        return tag;
    }
}
