using System.Runtime.ExceptionServices;

namespace MelangeRunner.IO;

/// <summary>
/// A bounded, in-process byte pipe between one writer and one reader (the workspace tar
/// producer and the export), built so that it cannot deadlock whatever the sizes and counts:
/// <list type="bullet">
/// <item>the writer waits only while the buffer is full and the reader is still there;</item>
/// <item>the reader waits only while the buffer is empty and the writer has not completed;</item>
/// <item>a zero-length read returns 0 at once and never means the end of the data (tar
/// readers ask for 0 bytes at the end of every entry);</item>
/// <item>every wait is cancellable, and closing the reading side fails the writer's pending and
/// later writes at once, so a stopped export never leaves the writer blocked.</item>
/// </list>
/// The end of the data is reported only once the writer has completed; its failure, if any, is
/// rethrown to the reader there.
/// </summary>
internal sealed class BytePipe
{
    private readonly object _gate = new();
    private readonly byte[] _ring;
    private int _start, _count;
    private bool _writerDone, _readerGone;
    private ExceptionDispatchInfo? _writerError;
    // Completed (and replaced) whenever the state changes; waiters wait on it outside the lock.
    private TaskCompletionSource _changed = NewSignal();

    public BytePipe(int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        _ring = new byte[capacity];
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Bytes written and not yet read (for tests).</summary>
    internal int Buffered { get { lock (_gate) return _count; } }

    /// <summary>A write-only stream over the pipe; its writes wait (cancellably) while the pipe is full.</summary>
    public Stream Writer(CancellationToken cancellationToken) => new WriteSide(this, cancellationToken);

    /// <summary>The writer has finished: <paramref name="error"/> null for success.</summary>
    public void CompleteWriting(Exception? error)
    {
        lock (_gate)
        {
            if (_writerDone) return;
            _writerDone = true;
            _writerError = error is null ? null : ExceptionDispatchInfo.Capture(error);
        }
        Signal();
    }

    /// <summary>The reader has gone: pending and later writes fail with an IOException.</summary>
    public void CloseReading()
    {
        lock (_gate) _readerGone = true;
        Signal();
    }

    private void Signal()
    {
        TaskCompletionSource old;
        lock (_gate) { old = _changed; _changed = NewSignal(); }
        old.TrySetResult();
    }

    /// <summary>
    /// Reads what is buffered (at least one byte when <paramref name="buffer"/> is not empty),
    /// waiting while nothing is; returns 0 only at the end of the data or for an empty buffer.
    /// </summary>
    public int Read(Span<byte> buffer, CancellationToken cancellationToken)
    {
        if (buffer.IsEmpty) return 0;
        while (true)
        {
            if (TryRead(buffer, out var n, out var wait)) return n;
            wait.Wait(cancellationToken);
        }
    }

    public async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        if (buffer.IsEmpty) return 0;
        while (true)
        {
            if (TryRead(buffer.Span, out var n, out var wait)) return n;
            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private bool TryRead(Span<byte> buffer, out int n, out Task wait)
    {
        ExceptionDispatchInfo? error = null;
        lock (_gate)
        {
            wait = _changed.Task;
            if (_count > 0)
            {
                n = Math.Min(buffer.Length, _count);
                int first = Math.Min(n, _ring.Length - _start);
                _ring.AsSpan(_start, first).CopyTo(buffer);
                _ring.AsSpan(0, n - first).CopyTo(buffer[first..]);
                _start = (_start + n) % _ring.Length;
                _count -= n;
            }
            else if (_writerDone) { n = 0; error = _writerError; }
            else { n = -1; }
        }
        if (n < 0) return false;
        error?.Throw();
        if (n > 0) Signal(); // room for the writer
        return true;
    }

    private void Write(ReadOnlySpan<byte> data, CancellationToken cancellationToken)
    {
        while (!data.IsEmpty)
        {
            int n = TryWrite(data, out var wait);
            if (n > 0) data = data[n..];
            else wait.Wait(cancellationToken);
        }
    }

    private async ValueTask WriteAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        while (!data.IsEmpty)
        {
            int n = TryWrite(data.Span, out var wait);
            if (n > 0) data = data[n..];
            else await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Copies as much of <paramref name="data"/> as fits and returns the count; 0 (and the signal to wait on) when nothing does.</summary>
    private int TryWrite(ReadOnlySpan<byte> data, out Task wait)
    {
        int n;
        lock (_gate)
        {
            wait = _changed.Task;
            if (_readerGone) throw new IOException("The reader of the workspace tar has gone (the export was stopped or failed).");
            if (_writerDone) throw new InvalidOperationException("The pipe's writing side is already complete.");
            n = Math.Min(data.Length, _ring.Length - _count);
            if (n == 0) return 0;
            int end = (_start + _count) % _ring.Length;
            int first = Math.Min(n, _ring.Length - end);
            data[..first].CopyTo(_ring.AsSpan(end));
            data[first..n].CopyTo(_ring);
            _count += n;
        }
        Signal(); // data for the reader
        return n;
    }

    private sealed class WriteSide : Stream
    {
        private readonly BytePipe _pipe;
        private readonly CancellationToken _cancellationToken;

        public WriteSide(BytePipe pipe, CancellationToken cancellationToken) { _pipe = pipe; _cancellationToken = cancellationToken; }

        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => _pipe.Write(buffer.AsSpan(offset, count), _cancellationToken);
        public override void Write(ReadOnlySpan<byte> buffer) => _pipe.Write(buffer, _cancellationToken);
        public override void WriteByte(byte value) => _pipe.Write(new[] { value }, _cancellationToken);

        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(_cancellationToken, cancellationToken);
            await _pipe.WriteAsync(buffer, linked.Token).ConfigureAwait(false);
        }

        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    }
}
