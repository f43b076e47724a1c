using System.IO.Compression;
using SharpCompress.Compressors.BZip2;
using SharpCompress.Compressors.Xz;

namespace MelangeRunner.Tar;

/// <summary>Recognises a (possibly compressed) tar stream by its first bytes.</summary>
public static class Decompression
{
    /// <summary>The formats <see cref="Open"/> accepts, for error messages.</summary>
    public const string AcceptedFormats = "a tar archive, plain or compressed with gzip, zstd, xz or bzip2";

    /// <summary>
    /// Sniffs the magic bytes of a non-seekable stream and returns a stream of the
    /// decompressed content, and the compression's name ("none", "gzip", "zstd", "xz", "bzip2").
    /// The returned stream owns <paramref name="raw"/>.
    /// </summary>
    public static Stream Open(Stream raw, out string compression)
    {
        var head = new byte[512];
        int n = StreamUtil.ReadFull(raw, head);
        var prefixed = new PrefixedStream(head, n, raw);
        compression = Detect(head.AsSpan(0, n));
        switch (compression)
        {
            case "none": return prefixed;
            // Decoders run on their own thread (ReadAheadStream) so that decompressing and writing overlap.
            case "gzip": return new ReadAheadStream(new GZipStream(prefixed, CompressionMode.Decompress)); // reads concatenated members too
            case "zstd": return new ReadAheadStream(ZstdNativeStream.IsAvailable ? new ZstdNativeStream(prefixed) : new SharpCompress.Compressors.ZStandard.DecompressionStream(prefixed, 1 << 20, true, false));
            case "xz": return new ReadAheadStream(new XZStream(prefixed));
            case "bzip2": return new ReadAheadStream(BZip2Stream.Create(prefixed, SharpCompress.Compressors.CompressionMode.Decompress, true, false, false));
        }
        prefixed.Dispose();
        throw new MelangeException(ErrorKind.InvalidData, "UnknownImageFormat",
            n == 0 ? "The image file is empty." : $"The data is not {AcceptedFormats}.",
            "Give an OCI image layout directory, an OCI or 'docker save' archive, or a single layer tar (uncompressed, .gz, .zst, .xz or .bz2).");
    }

    /// <summary>The compression name for the first bytes, or "unknown".</summary>
    internal static string Detect(ReadOnlySpan<byte> h)
    {
        if (h.Length >= 2 && h[0] == 0x1F && h[1] == 0x8B) return "gzip";
        if (h.Length >= 4 && h[0] == 0x28 && h[1] == 0xB5 && h[2] == 0x2F && h[3] == 0xFD) return "zstd";
        if (h.Length >= 6 && h[..6].SequenceEqual(new byte[] { 0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00 })) return "xz";
        if (h.Length >= 4 && h[0] == 'B' && h[1] == 'Z' && h[2] == 'h' && h[3] >= '1' && h[3] <= '9') return "bzip2";
        if (h.Length == 512 && IsTarHeader(h)) return "none";
        // An empty archive: the end-of-archive marker alone.
        if (h.Length == 512 && !h.ContainsAnyExcept((byte)0)) return "none";
        return "unknown";
    }

    /// <summary>A tar header block: "ustar" magic, or (v7) a valid header checksum.</summary>
    static bool IsTarHeader(ReadOnlySpan<byte> h)
    {
        if (h.Slice(257, 5).SequenceEqual("ustar"u8)) return true;
        long sum = 0;
        for (int i = 0; i < 512; i++) sum += i is >= 148 and < 156 ? (byte)' ' : h[i];
        var field = h.Slice(148, 8);
        long stored = 0; bool any = false;
        foreach (byte b in field)
        {
            if (b is >= (byte)'0' and <= (byte)'7') { stored = stored * 8 + (b - '0'); any = true; }
            else if (any || (b != ' ' && b != 0)) break;
        }
        return any && stored == sum && h[0] != 0;
    }
}
