using System.Formats.Tar;

namespace MelangeRunner.Docker;

/// <summary>
/// Writes a host workspace as a tar rooted at <c>home/build/</c> (what the archive API unpacks
/// at "/" in the container): directories, regular files and symlinks, owned by root (the
/// runtime chowns the tree to the build user afterwards); symlinks are stored, never
/// followed, and anything else is skipped with a warning.
/// </summary>
internal static class WorkspaceTarIn
{
    public static void Write(TarWriter tar, string workspace, string prefix, IEventSink events, CancellationToken ct)
    {
        prefix = prefix.TrimEnd('/') + "/";
        tar.WriteEntry(Dir(prefix, File.GetUnixFileMode(workspace)));
        Walk(tar, new DirectoryInfo(workspace), prefix, events, ct);
    }

    private static PaxTarEntry Dir(string name, UnixFileMode mode) => new(TarEntryType.Directory, name) { Mode = mode, Uid = 0, Gid = 0 };

    private static void Walk(TarWriter tar, DirectoryInfo dir, string prefix, IEventSink events, CancellationToken ct)
    {
        foreach (var info in dir.EnumerateFileSystemInfos("*", new EnumerationOptions { RecurseSubdirectories = false, AttributesToSkip = 0, IgnoreInaccessible = false }).OrderBy(i => i.Name, StringComparer.Ordinal))
        {
            ct.ThrowIfCancellationRequested();
            var name = prefix + info.Name;
            var mode = File.GetUnixFileMode(info.FullName);
            if (info.LinkTarget is { } target)
            {
                tar.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, name) { LinkName = target, Mode = mode, Uid = 0, Gid = 0 });
            }
            else if (info is DirectoryInfo sub)
            {
                tar.WriteEntry(Dir(name + "/", mode));
                Walk(tar, sub, name + "/", events, ct);
            }
            else if ((info.Attributes & (FileAttributes.Device | FileAttributes.ReparsePoint)) == 0 && Native.Libc.LStat(info.FullName) is { IsRegular: true })
            {
                using var data = new FileStream(info.FullName, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1 << 16, FileOptions.SequentialScan);
                tar.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, name) { Mode = mode, Uid = 0, Gid = 0, DataStream = data, ModificationTime = info.LastWriteTimeUtc });
            }
            else
            {
                events.Warning($"Not copied into the pod: {info.FullName} is not a regular file, directory or symlink.");
            }
        }
    }
}
