using System.IO.Compression;
using SharpCompress.Compressors.BZip2;
using SharpCompress.Compressors.Xz;

namespace MelangeRunner.Tar;

/// <summary>Recognises a (possibly compressed) tar stream by its first bytes.</summary>
internal static class Decompression
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
        if (compression == "none") return prefixed;
        // Decoders run on their own thread (ReadAheadStream) so that decompressing and writing
        // overlap. Each one reads through a SourceGuard and is read through a DecoderGuard: what
        // the decoder throws in its own types (SharpCompress's DataErrorException and
        // ArchiveOperationException, zlib's and zstd's errors, InvalidDataException) is the
        // data's fault and becomes CorruptImage; what the source throws (I/O, cancellation, a
        // digest or truncation check) passes through unchanged.
        var source = new SourceGuard(prefixed);
        Stream? decoder;
        try
        {
            decoder = compression switch
            {
                "gzip" => GzipNativeStream.IsAvailable ? new GzipNativeStream(source) : new GZipStream(source, CompressionMode.Decompress), // concatenated members too
                "zstd" => ZstdNativeStream.IsAvailable ? new ZstdNativeStream(source) : new SharpCompress.Compressors.ZStandard.DecompressionStream(source, 1 << 20, true, false),
                "xz" => new XZStream(source), // reads the stream header at once
                "bzip2" => BZip2Stream.Create(source, SharpCompress.Compressors.CompressionMode.Decompress, true, false, false),
                _ => null,
            };
        }
        catch (Exception e) when (DecoderGuard.IsDataError(e))
        {
            source.Dispose();
            throw DecoderGuard.Corrupt(e, source, compression);
        }
        if (decoder != null) return new ReadAheadStream(new DecoderGuard(decoder, source, compression));
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
    private static bool IsTarHeader(ReadOnlySpan<byte> h)
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

/// <summary>Between a decoder and its source: remembers the source's own failure, so that it is not taken for corrupt data.</summary>
internal sealed class SourceGuard : ReadOnlyWrapper
{
    private readonly Stream _inner;
    public SourceGuard(Stream inner) => _inner = inner;

    /// <summary>What the source threw, if it did.</summary>
    public System.Runtime.ExceptionServices.ExceptionDispatchInfo? Failure { get; private set; }

    /// <summary>Compressed bytes handed to the decoder so far.</summary>
    public long BytesRead { get; private set; }

    protected override int ReadCore(Span<byte> buffer)
    {
        try
        {
            int n = _inner.Read(buffer);
            BytesRead += n;
            return n;
        }
        catch (Exception e)
        {
            Failure ??= System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e);
            throw;
        }
    }

    protected override void Dispose(bool disposing) { if (disposing) _inner.Dispose(); base.Dispose(disposing); }
}

/// <summary>
/// Reads a decoder and turns whatever it throws about the data, in whatever exception type its
/// library uses, into one error: CorruptImage (InvalidData). A failure of the source is rethrown
/// as the source threw it, even when the decoder wrapped it in one of its own.
/// </summary>
internal sealed class DecoderGuard : ReadOnlyWrapper
{
    private readonly Stream _decoder;
    private readonly SourceGuard _source;
    private readonly string _compression;

    public DecoderGuard(Stream decoder, SourceGuard source, string compression) { _decoder = decoder; _source = source; _compression = compression; }

    protected override int ReadCore(Span<byte> buffer)
    {
        try { return _decoder.Read(buffer); }
        catch (Exception e) when (IsDataError(e)) { throw Corrupt(e, _source, _compression); }
    }

    /// <summary>Whether an exception out of a decoder may be about the data (not cancellation, memory, a disposed stream or one of ours).</summary>
    internal static bool IsDataError(Exception e) => e is not (OperationCanceledException or OutOfMemoryException or ObjectDisposedException or MelangeException);

    /// <summary>The error for a decoder's failure; the source's own failure instead, rethrown, when there was one.</summary>
    internal static MelangeException Corrupt(Exception e, SourceGuard source, string compression)
    {
        source.Failure?.Throw();
        return new MelangeException(ErrorKind.InvalidData, "CorruptImage",
            $"The {compression} data is corrupt or truncated (after {source.BytesRead} compressed bytes): {e.Message}",
            "Check that the image file is complete (re-download or re-create it).", null, e);
    }

    protected override void Dispose(bool disposing) { if (disposing) _decoder.Dispose(); base.Dispose(disposing); }
}

