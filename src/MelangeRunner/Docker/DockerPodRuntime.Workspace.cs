using System.Formats.Tar;
using System.Text;
using Docker.DotNet;
using Docker.DotNet.Models;
using MelangeRunner.HostProcess;
using MelangeRunner.IO;

namespace MelangeRunner.Docker;

/// <summary>The workspace of a docker pod: copied in at start, read back through the archive API.</summary>
internal sealed partial class DockerPodRuntime
{

    /// <summary>Puts the host workspace at /home/build (a tar through the archive API), then, for a build user, chowns it.</summary>
    private async Task CopyWorkspaceInAsync(string workspace, IEventSink events, CancellationToken cancellationToken)
    {
        var pipe = new BytePipe(Workspace.PipeCapacity);
        var producer = Task.Run(() =>
        {
            try
            {
                using (var w = pipe.Writer(cancellationToken))
                using (var tar = new TarWriter(w, TarEntryFormat.Pax, leaveOpen: true))
                    WorkspaceTarIn.Write(tar, workspace, Defaults.WorkspaceDir.TrimStart('/'), events, cancellationToken);
                pipe.CompleteWriting(null);
            }
            catch (Exception e)
            {
                pipe.CompleteWriting(e);
                throw;
            }
        }, CancellationToken.None);
        await using (var body = new Workspace.ProducerStream(pipe, producer, cancellationToken))
        {
            try
            {
                await _client.Containers.ExtractArchiveToContainerAsync(ContainerId, new CopyToContainerParameters { Path = "/" }, body, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (producer.IsFaulted)
            {
                throw producer.Exception!.GetBaseException() is MelangeException m ? m : DockerEngine.Failed("copy the workspace into the pod", e, workspace);
            }
            catch (Exception e) when (e is not (OperationCanceledException or MelangeException))
            {
                throw DockerEngine.Failed("copy the workspace into the pod", e, workspace);
            }
        }
        await producer.ConfigureAwait(false);
        if (User is { } user && !DockerPodPlanner.IsRoot(user))
        {
            var (code, output) = await CaptureAsync(new[] { "chown", "-R", user, Defaults.WorkspaceDir }, cancellationToken).ConfigureAwait(false);
            if (code != 0)
                throw new MelangeException(ErrorKind.InvalidOperation, "PodStartFailed",
                    $"Could not give {Defaults.WorkspaceDir} to the build user {user} (chown exited with {code}): {output.Trim()}",
                    "Check that the user exists in the image (/etc/passwd) and that the image has chown.", user);
        }
    }

    /// <summary>A tar of melange-out, the extra files and the license files, read from the container through the archive API.</summary>
    public async Task<Stream> WorkspaceTarAsync(IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken cancellationToken)
    {
        var paths = new List<string>();
        foreach (var p in extraFiles.Concat(await FindLicenseFilesAsync(events, cancellationToken).ConfigureAwait(false)))
            if (!paths.Contains(p) && p != Workspace.OutputDir) paths.Add(p);

        var pipe = new BytePipe(Workspace.PipeCapacity);
        var producer = Task.Run(async () =>
        {
            try
            {
                await using (var w = pipe.Writer(cancellationToken))
                await using (var tar = new TarWriter(w, TarEntryFormat.Pax, leaveOpen: true))
                {
                    if (!await CopyArchiveAsync(tar, Workspace.OutputDir, cancellationToken).ConfigureAwait(false))
                        events.Warning($"The pod's workspace has no {Workspace.OutputDir} directory: the build wrote no output.");
                    foreach (var p in paths)
                        if (!await CopyArchiveAsync(tar, p, cancellationToken).ConfigureAwait(false))
                            events.Warning($"The pod's workspace has no '{p}'.");
                }
                pipe.CompleteWriting(null);
            }
            catch (Exception e)
            {
                pipe.CompleteWriting(e);
                throw;
            }
        }, CancellationToken.None);
        return new Workspace.ProducerStream(pipe, producer, cancellationToken);
    }

    /// <summary>
    /// Appends the engine's archive of /home/build/<paramref name="relative"/> to <paramref name="tar"/>,
    /// its entries renamed from the engine's (relative to the path's parent) to workspace-relative
    /// names. False when the path does not exist. The names are whatever the engine sends: the
    /// reader (SafeTarExtractor) treats them as hostile.
    /// </summary>
    private async Task<bool> CopyArchiveAsync(TarWriter tar, string relative, CancellationToken cancellationToken)
    {
        ContainerArchiveResponse archive;
        var path = new ContainerPathStatParameters { Path = Defaults.WorkspaceDir + "/" + relative };
        var parent = Path.GetDirectoryName(relative.TrimEnd('/'))?.Replace('\\', '/');
        var prefix = string.IsNullOrEmpty(parent) ? "" : parent + "/";
        try
        {
            // The engine follows a symlink in the last component (a melange-out that is a link to
            // / would export the container's whole root, /proc included): look first, and store
            // a link as a link, as the host-directory writer does.
            var stat = (await _client.Containers.GetArchiveFromContainerAsync(ContainerId, path, true, cancellationToken).ConfigureAwait(false)).Stat;
            if (stat is not null && (!string.IsNullOrEmpty(stat.LinkTarget) || (stat.Mode & GoModeSymlink) != 0))
            {
                var link = await ReadLinkAsync(relative, cancellationToken).ConfigureAwait(false) ?? stat.LinkTarget ?? "";
                await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.SymbolicLink, prefix + Path.GetFileName(relative.TrimEnd('/'))) { LinkName = link, Mode = (UnixFileMode)0x1FF }, cancellationToken).ConfigureAwait(false);
                return true;
            }
            archive = await _client.Containers.GetArchiveFromContainerAsync(ContainerId, path, false, cancellationToken).ConfigureAwait(false);
        }
        catch (DockerContainerNotFoundException) { return false; } // the client reports a missing path as this
        catch (DockerApiException e) when ((int)e.StatusCode == 404) { return false; }
        catch (Exception e) when (e is not (OperationCanceledException or MelangeException))
        {
            throw DockerEngine.Failed($"read {relative} from the pod", e, relative);
        }
        // prefix and names as the engine sends them; the exporter's extractor treats them as hostile.
        await using var stream = archive.Stream ?? Stream.Null;
        using var reader = new TarReader(stream, leaveOpen: true);
        TarEntry? entry;
        while ((entry = await reader.GetNextEntryAsync(copyData: false, cancellationToken).ConfigureAwait(false)) is not null)
        {
            if (entry.EntryType is TarEntryType.GlobalExtendedAttributes) continue;
            // A new entry, not the reader's: setting a read entry's DataStream reads the archive
            // synchronously, which the engine's response stream does not support.
            var name = prefix + entry.Name;
            var copy = new PaxTarEntry(entry.EntryType, name)
            {
                Mode = entry.Mode,
                Uid = entry.Uid,
                Gid = entry.Gid,
                ModificationTime = entry.ModificationTime,
            };
            if (entry.EntryType is TarEntryType.SymbolicLink) copy.LinkName = entry.LinkName;
            else if (entry.EntryType is TarEntryType.HardLink) copy.LinkName = prefix + entry.LinkName;
            if (entry.EntryType is TarEntryType.CharacterDevice or TarEntryType.BlockDevice)
            {
                copy.DeviceMajor = ((PosixTarEntry)entry).DeviceMajor;
                copy.DeviceMinor = ((PosixTarEntry)entry).DeviceMinor;
            }
            if (entry.DataStream is { } data && entry.EntryType is TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile)
                copy.DataStream = new KnownLengthStream(data, entry.Length);
            await tar.WriteEntryAsync(copy, cancellationToken).ConfigureAwait(false);
        }
        return true;
    }

    // Go's os.ModeSymlink, as the engine's path stat reports modes.
    private const uint GoModeSymlink = 1u << 27;

    /// <summary>The target of a symlink in the workspace, as readlink prints it (null when that fails).</summary>
    private async Task<string?> ReadLinkAsync(string relative, CancellationToken cancellationToken)
    {
        var sink = new CaptureSink();
        var code = await ExecAsync("0:0", null, new[] { "readlink", "--", relative }, sink, false, cancellationToken).ConfigureAwait(false);
        return code == 0 ? sink.Text.TrimEnd('\n') : null;
    }

    /// <summary>License files anywhere in the workspace outside melange-out and .git (as Workspace.FindLicenseFiles does on the host).</summary>
    private async Task<IReadOnlyList<string>> FindLicenseFilesAsync(IEventSink events, CancellationToken cancellationToken)
    {
        var (code, output) = await CaptureAsync(new[] { "find", ".", "(", "-path", "./" + Workspace.OutputDir, "-o", "-name", ".git", ")", "-prune", "-o", "-type", "f", "-print" },
            cancellationToken).ConfigureAwait(false);
        if (code != 0)
        {
            events.Warning($"Could not list the pod's workspace for license files (find exited with {code}): {output.Trim()}");
            return Array.Empty<string>();
        }
        return output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.StartsWith("./", StringComparison.Ordinal) ? l[2..] : l)
            .Where(l => l.Length > 0 && Workspace.IsLicenseFileName(Path.GetFileName(l)))
            .OrderBy(l => l, StringComparer.Ordinal).ToList();
    }
}
