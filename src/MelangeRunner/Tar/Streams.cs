using System.Buffers;

namespace MelangeRunner.Tar;

/// <summary>
/// A read-only forwarding stream: the base for the wrappers below. Rule for every wrapper: a
/// read of an empty buffer returns 0 and is not the end of the stream (System.Formats.Tar makes
/// one at the end of each entry); only 0 for a non-empty buffer is the end.
/// </summary>
internal abstract class ReadOnlyWrapper : Stream
{
    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    /// <summary>Bytes read so far (some decoders ask for it); setting it is not supported.</summary>
    public override long Position { get => _position; set => throw new NotSupportedException(); }
    private long _position;
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));
    public sealed override int Read(Span<byte> buffer)
    {
        int n = ReadCore(buffer);
        _position += n;
        return n;
    }
    protected abstract int ReadCore(Span<byte> buffer);
    public override int ReadByte() { Span<byte> b = stackalloc byte[1]; return Read(b) == 1 ? b[0] : -1; }
}

/// <summary>Counts the bytes read through it (for progress) and reports them at most 10 times a second.</summary>
internal sealed class CountingStream : ReadOnlyWrapper
{
    private readonly Stream _inner;
    private readonly bool _leaveOpen;
    private readonly Action<long>? _onProgress;
    private long _lastReportTicks;

    public CountingStream(Stream inner, Action<long>? onProgress = null, long initialCount = 0, bool leaveOpen = false)
    {
        _inner = inner; _onProgress = onProgress; BytesRead = initialCount; _leaveOpen = leaveOpen;
    }

    public long BytesRead { get; private set; }

    protected override int ReadCore(Span<byte> buffer)
    {
        int n = _inner.Read(buffer);
        BytesRead += n;
        if (_onProgress != null)
        {
            long now = Environment.TickCount64;
            // n == 0 is the end only for a non-empty request: a zero-length read says nothing.
            if (now - _lastReportTicks >= 100 || (n == 0 && !buffer.IsEmpty)) { _lastReportTicks = now; _onProgress(BytesRead); }
        }
        return n;
    }

    protected override void Dispose(bool disposing) { if (disposing && !_leaveOpen) _inner.Dispose(); base.Dispose(disposing); }
}

/// <summary>Replays bytes already read (by format sniffing) before continuing with the rest of the stream.</summary>
internal sealed class PrefixedStream : ReadOnlyWrapper
{
    private readonly byte[] _prefix;
    private int _pos;
    private readonly int _len;
    private readonly Stream _inner;

    public PrefixedStream(byte[] prefix, int length, Stream inner) { _prefix = prefix; _len = length; _inner = inner; }

    protected override int ReadCore(Span<byte> buffer)
    {
        if (_pos < _len)
        {
            int n = Math.Min(buffer.Length, _len - _pos);
            _prefix.AsSpan(_pos, n).CopyTo(buffer);
            _pos += n;
            return n;
        }
        return _inner.Read(buffer);
    }

    protected override void Dispose(bool disposing) { if (disposing) _inner.Dispose(); base.Dispose(disposing); }
}

/// <summary>A window [offset, offset+length) of a seekable file stream, read with its own position (blobs inside an image archive).</summary>
internal sealed class WindowStream : ReadOnlyWrapper
{
    private readonly Stream _file;
    private long _pos;
    private readonly long _end;

    public WindowStream(Stream file, long offset, long length) { _file = file; _pos = offset; _end = offset + length; }

    protected override int ReadCore(Span<byte> buffer)
    {
        long left = _end - _pos;
        if (left <= 0 || buffer.Length == 0) return 0;
        if (buffer.Length > left) buffer = buffer[..(int)left];
        _file.Position = _pos;
        int n = _file.Read(buffer);
        if (n == 0) throw new EndOfStreamException("The image archive is truncated.");
        _pos += n;
        return n;
    }
}

/// <summary>
/// Keeps a copy of the bytes read while <see cref="Recording"/> is on (bounded), so that the
/// raw bytes of a PAX extended header can be re-read: System.Formats.Tar decodes PAX values
/// as UTF-8, which mangles binary xattr values such as security.capability.
/// </summary>
internal sealed class RecordingStream : ReadOnlyWrapper
{
    private const int Limit = 1 << 20;
    private readonly Stream _inner;
    private byte[] _buf = new byte[8192];

    public RecordingStream(Stream inner) => _inner = inner;

    public long Position64 { get; private set; }
    public long RecordStart { get; private set; }
    public int RecordedLength { get; private set; }
    public bool Overflowed { get; private set; }
    public bool Recording { get; private set; }
    public ReadOnlySpan<byte> Recorded => _buf.AsSpan(0, RecordedLength);

    public void StartRecording() { Recording = true; RecordedLength = 0; Overflowed = false; RecordStart = Position64; }
    public void StopRecording() => Recording = false;

    protected override int ReadCore(Span<byte> buffer)
    {
        int n = _inner.Read(buffer);
        if (Recording && n > 0 && !Overflowed)
        {
            if (RecordedLength + n > Limit) Overflowed = true;
            else
            {
                if (RecordedLength + n > _buf.Length) Array.Resize(ref _buf, Math.Max(_buf.Length * 2, RecordedLength + n));
                buffer[..n].CopyTo(_buf.AsSpan(RecordedLength));
                RecordedLength += n;
            }
        }
        Position64 += n;
        return n;
    }

    protected override void Dispose(bool disposing) { if (disposing) _inner.Dispose(); base.Dispose(disposing); }
}

internal static class StreamUtil
{
    public const int CopyBufferSize = 1 << 20;

    /// <summary>Copies with a pooled 1 MiB buffer, checking for cancellation between chunks.</summary>
    public static long Copy(Stream from, Stream to, CancellationToken ct)
    {
        byte[] buf = ArrayPool<byte>.Shared.Rent(CopyBufferSize);
        try
        {
            long total = 0;
            int n;
            while ((n = from.Read(buf, 0, buf.Length)) > 0)
            {
                ct.ThrowIfCancellationRequested();
                to.Write(buf, 0, n);
                total += n;
            }
            return total;
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
    }

    public static void Drain(Stream s, CancellationToken ct)
    {
        byte[] buf = ArrayPool<byte>.Shared.Rent(CopyBufferSize);
        try { while (s.Read(buf, 0, buf.Length) > 0) ct.ThrowIfCancellationRequested(); }
        finally { ArrayPool<byte>.Shared.Return(buf); }
    }

    /// <summary>Reads until the span is full or the stream ends; returns the count read.</summary>
    public static int ReadFull(Stream s, Span<byte> buffer)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = s.Read(buffer[total..]);
            if (n == 0) break;
            total += n;
        }
        return total;
    }
}
