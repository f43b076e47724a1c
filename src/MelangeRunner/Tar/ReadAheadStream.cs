using System.Buffers;
using System.Collections.Concurrent;

namespace MelangeRunner.Tar;

/// <summary>
/// Decompresses on a background thread, a few chunks ahead of the reader, so that
/// decompression and file writing use two cores — as `tar -xzf` does with its gzip child.
/// Memory is bounded: at most <see cref="Depth"/> chunks of 1 MiB are in flight.
/// </summary>
internal sealed class ReadAheadStream : ReadOnlyWrapper
{
    private const int ChunkSize = 1 << 20;
    private const int Depth = 4;

    private readonly Stream _inner;
    private readonly BlockingCollection<(byte[] Buffer, int Length)> _full = new(Depth);
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _thread;
    private Exception? _error;
    private byte[]? _current;
    private int _currentLength, _currentPos;
    private bool _ended;

    public ReadAheadStream(Stream inner)
    {
        _inner = inner;
        _thread = new Thread(Produce) { IsBackground = true, Name = "melange-decompress" };
        _thread.Start();
    }

    private void Produce()
    {
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                byte[] buf = ArrayPool<byte>.Shared.Rent(ChunkSize);
                int n = StreamUtil.ReadFull(_inner, buf.AsSpan(0, ChunkSize));
                if (n == 0) { ArrayPool<byte>.Shared.Return(buf); break; }
                _full.Add((buf, n), _stop.Token);
                if (n < ChunkSize) break;
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested) { }
        catch (Exception e) { _error = e; }
        finally { _full.CompleteAdding(); }
    }

    protected override int ReadCore(Span<byte> buffer)
    {
        if (buffer.Length == 0) return 0;
        while (_current == null || _currentPos == _currentLength)
        {
            if (_current != null) { ArrayPool<byte>.Shared.Return(_current); _current = null; }
            if (_ended) return 0;
            if (!_full.TryTake(out var chunk, Timeout.Infinite))
            {
                _ended = true;
                if (_error != null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(_error);
                return 0;
            }
            (_current, _currentLength, _currentPos) = (chunk.Buffer, chunk.Length, 0);
        }
        int count = Math.Min(buffer.Length, _currentLength - _currentPos);
        _current.AsSpan(_currentPos, count).CopyTo(buffer);
        _currentPos += count;
        return count;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && !_stop.IsCancellationRequested)
        {
            _stop.Cancel();
            while (_full.TryTake(out var chunk)) ArrayPool<byte>.Shared.Return(chunk.Buffer); // unblock the producer
            _thread.Join();
            while (_full.TryTake(out var chunk)) ArrayPool<byte>.Shared.Return(chunk.Buffer);
            if (_current != null) { ArrayPool<byte>.Shared.Return(_current); _current = null; }
            _inner.Dispose();
            _full.Dispose();
            _stop.Dispose();
        }
        base.Dispose(disposing);
    }
}
