namespace MelangeRunner.IO;

/// <summary>Counts bytes read through it and reports progress at most ten times a second.</summary>
internal sealed class ProgressStream : Stream
{
    private readonly Stream _inner;
    private readonly IEventSink _events;
    private readonly string _activity;
    private readonly long? _total;
    private long _done;
    private long _lastReport = Environment.TickCount64;

    public ProgressStream(Stream inner, IEventSink events, string activity, long? total = null)
    {
        _inner = inner; _events = events; _activity = activity; _total = total;
    }

    public long BytesRead => _done;
    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => _done; set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    // A zero-length read (tar readers make one at the end of every entry) says nothing about the
    // end of the data: it is passed on, but neither counted nor reported as the end.
    public override int Read(Span<byte> buffer) => buffer.IsEmpty ? _inner.Read(buffer) : Count(_inner.Read(buffer));

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var n = await _inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
        return buffer.IsEmpty ? n : Count(n);
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <summary>Counts a read of a non-empty buffer: 0 here is the end of the data, reported at once.</summary>
    private int Count(int n)
    {
        _done += n;
        var now = Environment.TickCount64;
        if (now - _lastReport >= 100 || n == 0)
        {
            _lastReport = now;
            var status = _total is { } t ? $"{_done / Units.MB} of {t / Units.MB} MiB" : $"{_done / Units.MB} MiB";
            _events.Progress(new ProgressReport(_activity, status, _done, _total));
        }
        return n;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _inner.Dispose();
        base.Dispose(disposing);
    }
}
