using System.Security.Cryptography;

namespace MelangeRunner.IO;

/// <summary>Files that held a secret (the keyed initramfs, Enter-MelangePod's copy of the client key).</summary>
internal static class SecureFile
{
    /// <remarks>
    /// Security rule (melange's secureDelete): a file that held a private key is overwritten with
    /// random bytes and flushed to disk before it is unlinked, so that the key does not outlive
    /// the pod in the file system's free blocks. It is deleted even when the overwrite fails. A
    /// missing file is fine; anything but a regular file (never followed) is only unlinked.
    /// </remarks>
    public static void Delete(string path)
    {
        var st = Native.Libc.LStat(path);
        if (st == null) return;
        if (!st.Value.IsRegular) { File.Delete(path); return; }
        try
        {
            if ((st.Value.Permissions & 0x80) == 0) File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite); // 0400 files
            using var f = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.None, 1);
            long left = f.Length;
            var buf = new byte[Math.Min(1 << 20, Math.Max(left, 1))];
            while (left > 0)
            {
                int n = (int)Math.Min(buf.Length, left);
                RandomNumberGenerator.Fill(buf.AsSpan(0, n));
                f.Write(buf, 0, n);
                left -= n;
            }
            f.Flush(flushToDisk: true);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary><see cref="Delete"/> for clean-up paths, where a failure must not hide the error being reported.</summary>
    public static void TryDelete(string path)
    {
        try { Delete(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }
}
