namespace MelangeRunner.Tar;

public static class DirectoryTarWriter
{
    public static Task WriteAsync(Stream output, string root, IReadOnlyList<string> relativePaths, IEventSink events, CancellationToken ct)
        => throw new NotImplementedException();
}
