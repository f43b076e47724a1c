using System.Text;

namespace MelangeRunner.Qemu.Initramfs;

/// <summary>
/// Writes a cpio archive in the "newc" format (magic 070701) that the kernel unpacks as an
/// initramfs: a 110-byte ASCII header of 13 eight-digit hex fields, the NUL-terminated name
/// padded to 4 bytes, the data padded to 4 bytes, and a final TRAILER!!! record.
/// </summary>
internal sealed class CpioWriter : IDisposable
{
    public const uint S_IFDIR = 0x4000, S_IFREG = 0x8000, S_IFLNK = 0xA000, S_IFCHR = 0x2000, S_IFBLK = 0x6000;
    private const string Trailer = "TRAILER!!!";

    private readonly Stream _out;
    private readonly bool _leaveOpen;
    private readonly byte[] _copyBuffer = new byte[1 << 17];
    private uint _nextInode;
    private long _written;
    private bool _finished;

    /// <param name="firstInode">Inode numbers are unique within the archive, counting up from here
    /// (an archive appended to another should start above the first one's range).</param>
    public CpioWriter(Stream output, uint firstInode = 1, bool leaveOpen = false)
    {
        _out = output;
        _leaveOpen = leaveOpen;
        _nextInode = firstInode;
    }

    /// <summary>Bytes written so far.</summary>
    public long Position => _written;

    public void WriteDirectory(string name, uint mode, long mtime = 0, uint uid = 0, uint gid = 0) =>
        WriteHeader(name, S_IFDIR | (mode & 0xFFF), uid, gid, 2, mtime, 0, 0, 0);

    public void WriteSymlink(string name, string target, long mtime = 0)
    {
        var data = Encoding.UTF8.GetBytes(target);
        WriteHeader(name, S_IFLNK | 0x1FF, 0, 0, 1, mtime, data.Length, 0, 0);
        WriteData(data);
    }

    public void WriteFile(string name, uint mode, ReadOnlySpan<byte> content, long mtime = 0, uint uid = 0, uint gid = 0)
    {
        WriteHeader(name, S_IFREG | (mode & 0xFFF), uid, gid, 1, mtime, content.Length, 0, 0);
        WriteData(content);
    }

    /// <summary>A regular file whose content is streamed from <paramref name="content"/>, exactly <paramref name="length"/> bytes.</summary>
    public void WriteFile(string name, uint mode, Stream content, long length, long mtime = 0, uint uid = 0, uint gid = 0)
    {
        WriteHeader(name, S_IFREG | (mode & 0xFFF), uid, gid, 1, mtime, length, 0, 0);
        long left = length;
        while (left > 0)
        {
            int n = content.Read(_copyBuffer, 0, (int)Math.Min(_copyBuffer.Length, left));
            if (n <= 0)
                throw new MelangeException(ErrorKind.InvalidData, "FileChangedWhileReading",
                    $"'{name}' became shorter while it was being added to the initramfs ({length - left} of {length} bytes).",
                    "Make sure nothing modifies the host's programs and libraries while the initramfs is built, and try again.", name);
            _out.Write(_copyBuffer, 0, n);
            _written += n;
            left -= n;
        }
        Pad();
    }

    /// <summary>A character (or block) device node.</summary>
    public void WriteDevice(string name, bool character, uint mode, uint major, uint minor, long mtime = 0) =>
        WriteHeader(name, (character ? S_IFCHR : S_IFBLK) | (mode & 0xFFF), 0, 0, 1, mtime, 0, major, minor);

    /// <summary>Writes the TRAILER!!! record and pads the archive to 512 bytes (zeros, which the kernel skips).</summary>
    public void Finish()
    {
        if (_finished) return;
        WriteHeader(Trailer, 0, 0, 0, 1, 0, 0, 0, 0, inode: 0);
        int rem = (int)(_written % 512);
        if (rem != 0)
        {
            _out.Write(new byte[512 - rem]);
            _written += 512 - rem;
        }
        _out.Flush();
        _finished = true;
    }

    public void Dispose()
    {
        if (!_leaveOpen) _out.Dispose();
    }

    private void WriteHeader(string name, uint mode, uint uid, uint gid, uint nlink, long mtime, long size, uint rdevMajor, uint rdevMinor, uint? inode = null)
    {
        if (_finished) throw new InvalidOperationException("The cpio archive is already finished.");
        name = name.TrimStart('/');
        if (name.Length == 0) name = ".";
        if (size > uint.MaxValue)
            throw new MelangeException(ErrorKind.InvalidData, "FileTooLargeForCpio",
                $"'{name}' is {size} bytes; a newc cpio archive holds files up to 4 GiB.", "Leave such a file out of the initramfs.", name);
        var nameBytes = Encoding.UTF8.GetBytes(name);
        var header = new StringBuilder(110);
        header.Append("070701");
        void Hex(uint v) => header.Append(v.ToString("X8", System.Globalization.CultureInfo.InvariantCulture));
        Hex(inode ?? _nextInode++);
        Hex(mode);
        Hex(uid);
        Hex(gid);
        Hex(nlink);
        Hex((uint)Math.Clamp(mtime, 0, uint.MaxValue));
        Hex((uint)size);
        Hex(0); // dev major
        Hex(0); // dev minor
        Hex(rdevMajor);
        Hex(rdevMinor);
        Hex((uint)nameBytes.Length + 1);
        Hex(0); // check
        var bytes = Encoding.ASCII.GetBytes(header.ToString());
        _out.Write(bytes);
        _out.Write(nameBytes);
        _out.WriteByte(0);
        _written += bytes.Length + nameBytes.Length + 1;
        Pad();
    }

    private void WriteData(ReadOnlySpan<byte> data)
    {
        _out.Write(data);
        _written += data.Length;
        Pad();
    }

    private void Pad()
    {
        int rem = (int)(_written & 3);
        if (rem == 0) return;
        Span<byte> zeros = stackalloc byte[4];
        zeros.Clear();
        _out.Write(zeros[..(4 - rem)]);
        _written += 4 - rem;
    }
}
