using System.Buffers;
using System.Text;

namespace MelangeRunner.Tar;

/// <summary>One entry for <see cref="PaxWriter"/>.</summary>
internal sealed class TarHeaderInfo
{
    public required string Name;       // relative path, without a trailing slash
    public required byte TypeFlag;     // '0' file, '1' hard link, '2' symlink, '3' char, '4' block, '5' dir, '6' fifo
    public uint Mode;
    public uint Uid, Gid;
    public string? UName, GName;
    public long Size;
    public long MTimeSeconds;
    public long MTimeNanoseconds;
    public string? LinkName;
    public uint DevMajor, DevMinor;
    public List<KeyValuePair<string, byte[]>>? Xattrs; // name without "SCHILY.xattr." → raw value
}

/// <summary>
/// A small PAX (POSIX.1-2001) tar writer. System.Formats.Tar's writer takes PAX values as
/// strings and writes them as UTF-8, so it cannot write a binary xattr (security.capability)
/// the way GNU tar does; this writer emits SCHILY.xattr.* values as raw bytes, and uses an
/// extended header only when an entry needs one (long or non-ASCII names, large ids or sizes,
/// sub-second mtimes, xattrs).
/// </summary>
internal sealed class PaxWriter
{
    public const byte File = (byte)'0', HardLink = (byte)'1', Symlink = (byte)'2', CharDevice = (byte)'3', BlockDevice = (byte)'4', Directory = (byte)'5', Fifo = (byte)'6';

    private readonly Stream _out;
    private readonly byte[] _header = new byte[512];
    private readonly MemoryStream _pax = new();

    public PaxWriter(Stream output) => _out = output;

    public void WriteEntry(TarHeaderInfo h, Stream? data, CancellationToken ct)
    {
        string name = h.TypeFlag == Directory ? h.Name + "/" : h.Name;
        _pax.SetLength(0);
        byte[] nameBytes = Encoding.UTF8.GetBytes(name);
        if (nameBytes.Length > 100 || !Ascii.IsValid(nameBytes)) AddRecord("path", nameBytes);
        byte[]? linkBytes = h.LinkName != null ? Encoding.UTF8.GetBytes(h.LinkName) : null;
        if (linkBytes != null && (linkBytes.Length > 100 || !Ascii.IsValid(linkBytes))) AddRecord("linkpath", linkBytes);
        const long Max8 = 0x1FFFFF /* 07777777 */, Max12 = 0x1FFFFFFFF /* 077777777777 */;
        if (h.Uid > Max8) AddRecord("uid", h.Uid.ToString());
        if (h.Gid > Max8) AddRecord("gid", h.Gid.ToString());
        if (h.Size > Max12) AddRecord("size", h.Size.ToString());
        if (h.MTimeNanoseconds != 0 || h.MTimeSeconds < 0 || h.MTimeSeconds > Max12)
            AddRecord("mtime", h.MTimeNanoseconds == 0 ? h.MTimeSeconds.ToString() : $"{h.MTimeSeconds}.{h.MTimeNanoseconds:D9}");
        if (h.UName != null && Encoding.UTF8.GetByteCount(h.UName) > 31) AddRecord("uname", h.UName);
        if (h.GName != null && Encoding.UTF8.GetByteCount(h.GName) > 31) AddRecord("gname", h.GName);
        if (h.Xattrs != null)
            foreach (var (xname, value) in h.Xattrs) AddRecord(Xattrs.Prefix + xname, value);

        if (_pax.Length > 0)
        {
            string paxName = "PaxHeaders/" + TarPath.BaseName(h.Name);
            FillHeader(Truncate(Encoding.UTF8.GetBytes(paxName), 100), (byte)'x', 0x1A4, 0, 0, null, null, _pax.Length, h.MTimeSeconds < 0 ? 0 : Math.Min(h.MTimeSeconds, Max12), null, 0, 0);
            _out.Write(_header);
            _out.Write(_pax.GetBuffer(), 0, (int)_pax.Length);
            Pad(_pax.Length);
        }

        long size = h.TypeFlag == File ? h.Size : 0;
        FillHeader(Truncate(nameBytes, 100), h.TypeFlag, h.Mode & 0xFFF, h.Uid, h.Gid, h.UName, h.GName, size,
            Math.Clamp(h.MTimeSeconds, 0, Max12), linkBytes != null ? Truncate(linkBytes, 100) : null, h.DevMajor, h.DevMinor);
        _out.Write(_header);
        if (size > 0)
        {
            if (data == null) throw new ArgumentException("A file entry with content needs a data stream.");
            CopyExactly(data, size, h.Name, ct);
            Pad(size);
        }
    }

    /// <summary>The end-of-archive marker: two zero blocks.</summary>
    public void Finish()
    {
        Array.Clear(_header);
        _out.Write(_header);
        _out.Write(_header);
        _out.Flush();
    }

    private void CopyExactly(Stream data, long size, string name, CancellationToken ct)
    {
        byte[] buf = ArrayPool<byte>.Shared.Rent(StreamUtil.CopyBufferSize);
        try
        {
            long left = size;
            while (left > 0)
            {
                int n = data.Read(buf, 0, (int)Math.Min(buf.Length, left));
                if (n == 0) throw new EndOfStreamException($"'{name}' ended after {size - left} of {size} bytes (did it change while it was read?).");
                _out.Write(buf, 0, n);
                left -= n;
                ct.ThrowIfCancellationRequested();
            }
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
    }

    private void Pad(long length)
    {
        int pad = (int)((512 - length % 512) % 512);
        if (pad > 0) { Array.Clear(_header); _out.Write(_header, 0, pad); }
    }

    private void AddRecord(string key, string value) => AddRecord(key, Encoding.UTF8.GetBytes(value));

    private void AddRecord(string key, byte[] value)
    {
        // "<len> <key>=<value>\n" where <len> counts the whole record, its own digits included.
        int keyLen = Encoding.UTF8.GetByteCount(key);
        int body = keyLen + value.Length + 3;
        int len = body + 1;
        while (len != body + len.ToString().Length) len = body + len.ToString().Length;
        var prefix = Encoding.ASCII.GetBytes($"{len} ");
        _pax.Write(prefix);
        _pax.Write(Encoding.UTF8.GetBytes(key));
        _pax.WriteByte((byte)'=');
        _pax.Write(value);
        _pax.WriteByte((byte)'\n');
    }

    private static byte[] Truncate(byte[] b, int max) => b.Length <= max ? b : b[..max];

    private void FillHeader(byte[] name, byte type, uint mode, uint uid, uint gid, string? uname, string? gname, long size, long mtime, byte[]? link, uint major, uint minor)
    {
        var h = _header.AsSpan();
        h.Clear();
        name.CopyTo(h);
        Octal(h.Slice(100, 8), mode);
        Octal(h.Slice(108, 8), uid > 0x1FFFFF ? 0 : uid);
        Octal(h.Slice(116, 8), gid > 0x1FFFFF ? 0 : gid);
        if (size > 0x1FFFFFFFF) { h[124] = 0x80; for (int i = 0; i < 8; i++) h[135 - i] = (byte)(size >> (8 * i)); } // GNU base-256
        else Octal(h.Slice(124, 12), size);
        Octal(h.Slice(136, 12), mtime);
        h[156] = type;
        link?.CopyTo(h[157..]);
        "ustar\0"u8.CopyTo(h[257..]);
        "00"u8.CopyTo(h[263..]);
        if (uname != null) Truncate(Encoding.UTF8.GetBytes(uname), 31).CopyTo(h[265..]);
        if (gname != null) Truncate(Encoding.UTF8.GetBytes(gname), 31).CopyTo(h[297..]);
        if (type is CharDevice or BlockDevice)
        {
            Octal(h.Slice(329, 8), major);
            Octal(h.Slice(337, 8), minor);
        }
        h.Slice(148, 8).Fill((byte)' ');
        int sum = 0;
        foreach (byte b in h) sum += b;
        Octal(h.Slice(148, 7), sum); // six digits, NUL, then the space left in place
    }

    /// <summary>Zero-padded octal digits filling the field except its last byte (NUL).</summary>
    private static void Octal(Span<byte> field, long value)
    {
        int digits = field.Length - 1;
        for (int i = digits - 1; i >= 0; i--) { field[i] = (byte)('0' + (value & 7)); value >>= 3; }
        field[digits] = 0;
    }
}
