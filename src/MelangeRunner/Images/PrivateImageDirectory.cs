using MelangeRunner.HostProcess;

namespace MelangeRunner.Images;

/// <summary>
/// The directory an image is imported into: new (mkdtemp), 0700, owned by the importing user, so
/// that no other host user can reach the image's files (setuid programs, /etc/shadow) whatever
/// modes its layers carry. Until <see cref="Keep"/>, it is a partial import: disposing deletes it,
/// and the reaper deletes it if the process dies first (docs/cleanup.md).
/// </summary>
internal sealed class PrivateImageDirectory : IDisposable
{
    private readonly Reaper.Registration _watch;
    private bool _kept;

    private PrivateImageDirectory(string path)
    {
        FullName = path;
        _watch = Reaper.WatchPath(path);
    }

    public string FullName { get; }

    public static PrivateImageDirectory Create(string prefix)
    {
        // mkdtemp: new, so no other user could have placed or swapped anything in it; the mode is set again whatever the umask.
        var path = Directory.CreateTempSubdirectory(prefix).FullName;
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return new PrivateImageDirectory(path);
    }

    /// <summary>
    /// The import is complete: the directory stays when disposed (until Remove-MelangeImage), with
    /// the image's metadata file, so that Get-MelangeImage finds it again in a later session.
    /// </summary>
    public void Keep(ImageInfo image)
    {
        ImageCatalog.WriteMetadata(FullName, image);
        _kept = true;
    }

    public void Dispose()
    {
        if (!_kept) Workspace.DeleteTree(FullName);
        _watch.Dispose();
    }
}
