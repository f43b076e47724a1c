using System.Text;
using MelangeRunner.Native;

namespace MelangeRunner.Images;

/// <summary>
/// Reads files of an unpacked image on the host as the sandbox sees them: the image
/// directory is <c>/</c>, so its symlinks never lead to the host's files.
/// </summary>
/// <remarks>
/// Security rule: the host never reads an image file through a plain path under the rootfs.
/// An image is hostile input; its <c>/etc</c> may be a symlink to the host's <c>/etc</c>, or
/// its <c>etc/os-release</c> a <c>../../../..</c> chain out of the image directory, and a
/// read through such a path would report (or leak) the host's files. See
/// <see cref="RootedPath"/> for how the resolution stays inside the root.
/// </remarks>
public static class ImageRoot
{
    /// <summary>The largest text file read (passwd, os-release); an image cannot make the host read gigabytes.</summary>
    public const int MaxTextBytes = 4 << 20;

    /// <summary>
    /// The text of the regular file at <paramref name="guestPath"/> as seen from inside
    /// <paramref name="rootfs"/>, or null when there is none there: missing, a dangling link, a
    /// symlink loop, a directory, FIFO or device, or a directory on the way this process may
    /// not search. Larger than <paramref name="maxBytes"/> is <c>ImageFileTooLarge</c>.
    /// </summary>
    public static string? ReadText(string rootfs, string guestPath, int maxBytes = MaxTextBytes) =>
        ReadText(rootfs, guestPath, maxBytes, RootedResolve.Auto);

    internal static string? ReadText(string rootfs, string guestPath, int maxBytes, RootedResolve method)
    {
        if (RootedPath.OpenFile(rootfs, guestPath, out var handle, method) != RootedOpenResult.Opened)
            return null;
        using (handle)
        using (var stream = new FileStream(handle!, FileAccess.Read, bufferSize: 0))
        {
            var buffer = new MemoryStream();
            var chunk = new byte[64 * 1024];
            int n;
            while ((n = stream.Read(chunk, 0, chunk.Length)) > 0)
            {
                if (buffer.Length + n > maxBytes)
                    throw new MelangeException(ErrorKind.InvalidData, "ImageFileTooLarge",
                        $"The image's {guestPath} is larger than {maxBytes} bytes; it is not read.",
                        $"Replace {guestPath} in the image with a file of ordinary size.", guestPath);
                buffer.Write(chunk, 0, n);
            }
            buffer.Position = 0;
            using var reader = new StreamReader(buffer, Encoding.UTF8, detectEncodingFromByteOrderMarks: true);
            return reader.ReadToEnd();
        }
    }
}
