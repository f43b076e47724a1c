using System.Security.Cryptography;
using Docker.DotNet;
using Docker.DotNet.Models;
using MelangeRunner.Images;
using MelangeRunner.IO;

namespace MelangeRunner.Docker;

/// <summary>
/// Loads images into the engine: every source the module reads (a layer tar in any
/// compression, an OCI layout, an OCI or docker-save archive) is flattened by the module's
/// own importer (whiteouts resolved, unsafe entries dropped) and streamed into the engine's
/// import (POST /images/create?fromSrc=-), never through a file of its own. Each import gets
/// a tag of its own (<c>melange-runner/image:&lt;random&gt;</c>), so concurrent imports never
/// race on one tag (melange #2532). The image spec's Env, WorkingDir and User go along as
/// import changes.
/// </summary>
internal sealed class DockerImageLoader : IImageLoader
{
    internal const string ImportLabel = "dev.chainguard.melange.runner-import";

    public async Task<ImageInfo> LoadImageAsync(string path, string? arch, IEventSink events, CancellationToken cancellationToken)
    {
        var options = ImageImportOptions.Current;
        options.Validate();
        var full = Path.GetFullPath(path);
        var tag = Convert.ToHexString(RandomNumberGenerator.GetBytes(8)).ToLowerInvariant();
        var reference = DockerEngine.ImageRepository + ":" + tag;
        using var client = DockerEngine.CreateClient();
        await DockerEngine.EnsureAnswersAsync(client, cancellationToken).ConfigureAwait(false);

        // Scratch space for the importer (a compressed archive is unpacked once), private and
        // registered with the reaper so that a dying process leaves nothing.
        var temp = Directory.CreateTempSubdirectory("melange-docker-import-");
        using var tempWatch = HostProcess.Reaper.WatchPath(temp.FullName);
        ImageSource? source = null;
        try
        {
            using var tempDir = new TempDir(temp.FullName);
            source = await Task.Run(() => ImageSource.Open(full, arch, tempDir.Get, new ExpansionBudget(options.MaximumSize, $"The image archive '{path}'"), events, cancellationToken), cancellationToken).ConfigureAwait(false);
            events.Verbose($"'{path}' is {source.Kind} ({source.Arch}, {source.Layers.Count} layer(s)); importing it into the Docker engine at {DockerEngine.EndpointText} as {reference}.");

            var pipe = new BytePipe(Workspace.PipeCapacity);
            var layers = source.Layers;
            var producer = Task.Run(() =>
            {
                try
                {
                    using (var w = pipe.Writer(cancellationToken))
                        Flattener.Run(layers, w, () => new ExpansionBudget(options.MaximumSize, $"The image '{path}'"), events, cancellationToken);
                    pipe.CompleteWriting(null);
                }
                catch (Exception e)
                {
                    pipe.CompleteWriting(e);
                    throw;
                }
            }, CancellationToken.None);

            var changes = Changes(source).ToList();
            changes.Add(Labels(full, source));
            var parameters = new ImagesCreateParameters
            {
                FromSrc = "-",
                // The tag inside repo (which the API allows): podman's import ignores a separate tag.
                Repo = reference,
                Platform = "linux/" + Architecture.OciName(source.Arch),
                Message = "melange-runner import of " + full,
                Changes = changes,
            };
            var messages = new List<JSONMessage>();
            using (var body = new Workspace.ProducerStream(pipe, producer, cancellationToken))
            {
                try
                {
                    await client.Images.CreateImageAsync(parameters, body, null, new Progress(messages), cancellationToken).ConfigureAwait(false);
                }
                catch (Exception e) when (producer.IsFaulted)
                {
                    // The flattener's failure (a corrupt layer…) is the cause, not the aborted upload.
                    throw producer.Exception!.GetBaseException() is MelangeException m ? m : DockerEngine.Failed("import the image", e, path);
                }
                catch (Exception e) when (e is not (OperationCanceledException or MelangeException))
                {
                    throw DockerEngine.Failed("import the image", e, path);
                }
            }
            await producer.ConfigureAwait(false);
            lock (messages)
            {
                if (messages.FirstOrDefault(m => m.Error is not null) is { } failed)
                    throw new MelangeException(ErrorKind.InvalidData, "DockerImportFailed",
                        $"The Docker engine could not import '{path}': {failed.Error?.Message}",
                        "Read the engine's message; check that the image is a complete rootfs.", path);
            }
            // The engine's answer is the image id; inspecting the tag proves that it exists.
            var inspect = await client.Images.InspectImageAsync(reference, cancellationToken).ConfigureAwait(false);
            events.Verbose($"Imported {reference} ({inspect.ID}, {inspect.Size} bytes).");
            events.Progress(new ProgressReport("Importing image", "Done", 1, 1));
            return new ImageInfo
            {
                Runner = Runners.Docker,
                Ref = reference,
                Arch = source.Arch,
                Source = full,
                SourceKind = source.Kind,
                Env = source.Env.ToArray(),
            };
        }
        catch
        {
            // Whatever the engine already made of a partial import goes too.
            await TryRemoveAsync(client, reference).ConfigureAwait(false);
            throw;
        }
        finally
        {
            source?.Dispose();
            try { Workspace.DeleteTree(temp.FullName); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>The Dockerfile instructions that keep the image spec: ENV, WORKDIR, USER, the import label.</summary>
    internal static IEnumerable<string> Changes(ImageSource source)
    {
        foreach (var kv in source.Env)
        {
            var eq = kv.IndexOf('=');
            if (eq <= 0 || kv.AsSpan().IndexOfAny('\n', '\r') >= 0) continue;
            yield return "ENV " + kv[..eq] + "=" + Quote(kv[(eq + 1)..]);
        }
        if (source.WorkingDir is { } wd) yield return "WORKDIR " + wd;
        if (source.User is { } user) yield return "USER " + user;
    }

    internal const string SourceLabel = "dev.chainguard.melange.runner-source", ArchLabel = "dev.chainguard.melange.runner-arch", KindLabel = "dev.chainguard.melange.runner-kind";

    /// <summary>What Get-MelangeImage -Runner docker rebuilds the ImageInfo from: the importer, the source, its architecture and kind.</summary>
    internal static string Labels(string fullSource, ImageSource source)
    {
        var labels = $"LABEL {DockerEngine.MelangeLabel}=true {ImportLabel}={Quote(DockerEngine.OwnerValue)} {ArchLabel}={Quote(source.Arch)} {KindLabel}={Quote(source.Kind)}";
        if (fullSource.AsSpan().IndexOfAny('\n', '\r') < 0) labels += $" {SourceLabel}={Quote(fullSource)}";
        return labels;
    }

    // A Dockerfile ENV/LABEL value in double quotes (the only way to keep spaces and an empty value).
    private static string Quote(string value) => "\"" + value.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("$", "\\$") + "\"";

    /// <summary>The image is in the engine: the start's inspect reports ImageRemoved (a 404) itself.</summary>
    public bool IsPresent(ImageInfo image) => true;

    public async Task RemoveImageAsync(ImageInfo image, CancellationToken cancellationToken)
    {
        using var client = DockerEngine.CreateClient();
        await DockerEngine.EnsureAnswersAsync(client, cancellationToken).ConfigureAwait(false);
        try
        {
            await client.Images.DeleteImageAsync(image.Ref, new ImageDeleteParameters { Force = true }, cancellationToken).ConfigureAwait(false);
        }
        catch (DockerImageNotFoundException) { }
        catch (DockerApiException e) when ((int)e.StatusCode == 404) { }
        catch (Exception e) when (e is not (OperationCanceledException or MelangeException))
        {
            throw DockerEngine.Failed($"remove the image {image.Ref}", e, image);
        }
    }

    internal static async Task TryRemoveAsync(DockerClient client, string reference)
    {
        try
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await client.Images.DeleteImageAsync(reference, new ImageDeleteParameters { Force = true }, cts.Token).ConfigureAwait(false);
        }
        catch (Exception) { } // not there, or the engine went away: nothing more to do
    }

    private sealed class Progress : IProgress<JSONMessage>
    {
        private readonly List<JSONMessage> _messages;
        public Progress(List<JSONMessage> messages) => _messages = messages;
        public void Report(JSONMessage value) { lock (_messages) _messages.Add(value); }
    }
}
