using MelangeRunner.Tar;

namespace MelangeRunner.Images;

/// <summary>What an image source was found to be, and the architecture taken from it (apko name, e.g. x86_64).</summary>
public sealed record ImageSourceInfo(string Kind, string Arch);

public static class ImageImporter
{
    public static Task<ImageSourceInfo> ExtractAsync(string path, string? arch, string guestDir, IEventSink events, CancellationToken ct)
        => throw new NotImplementedException();

    public static Task<ImageSourceInfo> FlattenAsync(string path, string? arch, string outputTarPath, IEventSink events, CancellationToken ct)
        => throw new NotImplementedException();
}
