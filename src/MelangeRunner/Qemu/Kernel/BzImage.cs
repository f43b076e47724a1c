using System.Buffers.Binary;
using System.Text;

namespace MelangeRunner.Qemu.Kernel;

/// <summary>
/// The x86 boot protocol's setup header of a bzImage (Documentation/arch/x86/boot.rst):
/// where the compressed kernel is and which version it is.
/// </summary>
internal sealed class BzImage
{
    // Offsets in the file (the setup header lives in the first two sectors).
    internal const int SetupSectsOffset = 0x1F1;
    internal const int HeaderMagicOffset = 0x202;   // "HdrS"
    internal const int ProtocolOffset = 0x206;      // u16, e.g. 0x020F
    internal const int KernelVersionOffset = 0x20E; // u16: pointer to a NUL-terminated string, minus 0x200
    internal const int PayloadOffsetOffset = 0x248; // u32, protocol >= 2.08: from the start of the protected-mode code
    internal const int PayloadLengthOffset = 0x24C; // u32
    internal const int HeaderBytes = 0x250;

    public required int Protocol { get; init; }
    public required int SetupSects { get; init; }
    /// <summary>Where the protected-mode code (the part after the real-mode setup) starts in the file.</summary>
    public long ProtectedModeStart => (SetupSects + 1) * 512L;
    /// <summary>The compressed payload's offset in the file, or null before protocol 2.08.</summary>
    public long? PayloadStart { get; init; }
    public long? PayloadLength { get; init; }
    public string? VersionString { get; init; }

    /// <summary>The first token of the kernel_version string ("6.1.0-57-amd64"), or null.</summary>
    public string? Version => VersionString is { Length: > 0 } s ? s.Split(' ', 2)[0] : null;

    /// <summary>Parses the setup header of a file opened for reading; null when it is not a bzImage.</summary>
    public static BzImage? Read(Stream file)
    {
        long length = file.Length;
        if (length < HeaderBytes) return null;
        var head = new byte[Math.Min(length, 64 * 1024)];
        file.Position = 0;
        file.ReadExactly(head);
        return Parse(head, length);
    }

    /// <summary>Parses a setup header from the first bytes of a file (64 KiB is plenty) of <paramref name="fileLength"/> bytes.</summary>
    public static BzImage? Parse(ReadOnlySpan<byte> head, long fileLength)
    {
        if (head.Length < HeaderBytes || !head.Slice(HeaderMagicOffset, 4).SequenceEqual("HdrS"u8)) return null;
        int protocol = BinaryPrimitives.ReadUInt16LittleEndian(head[ProtocolOffset..]);
        int setupSects = head[SetupSectsOffset];
        if (setupSects == 0) setupSects = 4; // "If this field is 0, the real value is 4."

        string? version = null;
        int ptr = BinaryPrimitives.ReadUInt16LittleEndian(head[KernelVersionOffset..]);
        if (protocol >= 0x0200 && ptr != 0)
        {
            int at = ptr + 0x200;
            if (at < head.Length)
            {
                var rest = head[at..];
                int end = rest.IndexOf((byte)0);
                if (end < 0) end = Math.Min(rest.Length, 256);
                var s = rest[..Math.Min(end, 256)];
                bool printable = s.Length > 0;
                foreach (byte b in s) if (b < 0x20 || b > 0x7E) { printable = false; break; }
                if (printable) version = Encoding.ASCII.GetString(s);
            }
        }

        long? payloadStart = null, payloadLength = null;
        if (protocol >= 0x0208)
        {
            long off = BinaryPrimitives.ReadUInt32LittleEndian(head[PayloadOffsetOffset..]);
            long len = BinaryPrimitives.ReadUInt32LittleEndian(head[PayloadLengthOffset..]);
            long start = (setupSects + 1) * 512L + off;
            if (len > 0 && start + len <= fileLength) { payloadStart = start; payloadLength = len; }
        }
        return new BzImage { Protocol = protocol, SetupSects = setupSects, PayloadStart = payloadStart, PayloadLength = payloadLength, VersionString = version };
    }
}
