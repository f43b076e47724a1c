using MelangeRunner.Images;

namespace MelangeRunner.Qemu;

/// <summary>
/// Loads images for the qemu runner: one flattened, uncompressed rootfs tar that the VM
/// attaches as a read-only disk and unpacks with GNU tar.
/// </summary>
public sealed class QemuImageLoader : IImageLoader
{
    public async Task<ImageInfo> LoadImageAsync(string path, string? arch, IEventSink events, CancellationToken cancellationToken)
    {
        var tarPath = Path.Combine(Path.GetTempPath(), $"melange-rootfs-{Guid.NewGuid():N}.tar");
        var source = await ImageImporter.FlattenAsync(path, arch, tarPath, events, cancellationToken).ConfigureAwait(false);
        return new ImageInfo { Runner = Runners.Qemu, Ref = tarPath, Arch = source.Arch, Source = Path.GetFullPath(path), SourceKind = source.Kind };
    }

    public Task RemoveImageAsync(ImageInfo image, CancellationToken cancellationToken)
    {
        File.Delete(image.Ref);
        return Task.CompletedTask;
    }
}
