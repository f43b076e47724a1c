using MelangeRunner.Images;

namespace MelangeRunner.Qemu;

/// <summary>
/// Loads images for the qemu runner: one flattened, uncompressed rootfs tar that the VM
/// attaches as a read-only disk and unpacks with GNU tar.
/// </summary>
public sealed class QemuImageLoader : IImageLoader
{
    internal const string PrivateDirPrefix = "melange-rootfs-", TarName = "rootfs.tar";

    /// <remarks>
    /// Security rule: the flattened tar (and the blobs unpacked beside it while flattening)
    /// lives in a directory only the importing user can enter (0700, melange-rootfs-XXXX), and
    /// the tar itself is 0600: it holds every file of the image, /etc/shadow and setuid
    /// programs' contents included, with no business being readable by other host users.
    /// </remarks>
    public async Task<ImageInfo> LoadImageAsync(string path, string? arch, IEventSink events, CancellationToken cancellationToken)
    {
        using var privateDir = PrivateImageDirectory.Create(PrivateDirPrefix);
        var tarPath = Path.Combine(privateDir.FullName, TarName);
        // Created 0600 first: the flattener truncates and rewrites it, keeping the mode.
        using (new FileStream(tarPath, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite })) { }
        var source = await ImageImporter.FlattenAsync(path, arch, tarPath, events, cancellationToken).ConfigureAwait(false);
        File.SetUnixFileMode(tarPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        var image = new ImageInfo { Runner = Runners.Qemu, Ref = tarPath, Arch = source.Arch, Source = Path.GetFullPath(path), SourceKind = source.Kind, Env = source.Env.ToArray() };
        privateDir.Keep(image);
        return image;
    }

    /// <summary>Deletes the tar and its private directory (a Ref of another shape: only that file).</summary>
    public Task RemoveImageAsync(ImageInfo image, CancellationToken cancellationToken)
    {
        var full = Path.GetFullPath(image.Ref);
        var parent = Path.GetDirectoryName(full);
        if (Path.GetFileName(full) == TarName && parent is not null && Path.GetFileName(parent).StartsWith(PrivateDirPrefix, StringComparison.Ordinal))
            Workspace.DeleteTree(parent);
        else
            File.Delete(image.Ref);
        return Task.CompletedTask;
    }
}
