using System.Buffers;
using System.Runtime.InteropServices;

namespace MelangeRunner.Tar;

/// <summary>
/// zstd decompression through the system's libzstd.so.1 (ZSTD_decompressStream): several
/// times faster than a managed decoder. <see cref="Decompression"/> falls back to
/// SharpCompress's decoder when the library is not installed.
/// </summary>
internal sealed unsafe class ZstdNativeStream : ReadOnlyWrapper
{
    private const string Lib = "libzstd.so.1";

    [StructLayout(LayoutKind.Sequential)] private struct InBuffer { public byte* Src; public nuint Size; public nuint Pos; }
    [StructLayout(LayoutKind.Sequential)] private struct OutBuffer { public byte* Dst; public nuint Size; public nuint Pos; }

    [DllImport(Lib)] private static extern nint ZSTD_createDStream();
    [DllImport(Lib)] private static extern nuint ZSTD_freeDStream(nint zds);
    [DllImport(Lib)] private static extern nuint ZSTD_initDStream(nint zds);
    [DllImport(Lib)] private static extern nuint ZSTD_decompressStream(nint zds, OutBuffer* output, InBuffer* input);
    [DllImport(Lib)] private static extern uint ZSTD_isError(nuint code);
    [DllImport(Lib)] private static extern nint ZSTD_getErrorName(nuint code);
    [DllImport(Lib)] private static extern nuint ZSTD_DStreamInSize();

    private static readonly Lazy<bool> LibzstdLoads = new(() =>
    {
        if (Environment.GetEnvironmentVariable("MELANGE_RUNNER_MANAGED_ZSTD") == "1") return false; // for benchmarks/tests of the fallback
        try { return NativeLibrary.TryLoad(Lib, typeof(ZstdNativeStream).Assembly, null, out _) && ZSTD_DStreamInSize() > 0; }
        catch (Exception) { return false; }
    });

    public static bool IsAvailable => LibzstdLoads.Value;

    private readonly Stream _inner;
    private nint _ctx;
    private readonly byte[] _in;
    private int _inPos, _inLen;
    private bool _innerEnded;
    private bool _frameOpen; // a frame is started and not finished

    public ZstdNativeStream(Stream inner)
    {
        _inner = inner;
        _ctx = ZSTD_createDStream();
        if (_ctx == 0) throw new OutOfMemoryException("ZSTD_createDStream failed.");
        ZSTD_initDStream(_ctx);
        _in = ArrayPool<byte>.Shared.Rent(1 << 17);
    }

    protected override int ReadCore(Span<byte> buffer)
    {
        ObjectDisposedException.ThrowIf(_ctx == 0, this);
        if (buffer.Length == 0) return 0;
        fixed (byte* dst = buffer)
        fixed (byte* src = _in)
        {
            while (true)
            {
                if (_inPos == _inLen && !_innerEnded)
                {
                    _inLen = _inner.Read(_in, 0, _in.Length);
                    _inPos = 0;
                    if (_inLen == 0) _innerEnded = true;
                }
                if (_inPos == _inLen && _innerEnded)
                {
                    if (_frameOpen) throw new InvalidDataException("The zstd stream is truncated.");
                    return 0;
                }
                var input = new InBuffer { Src = src, Size = (nuint)_inLen, Pos = (nuint)_inPos };
                var output = new OutBuffer { Dst = dst, Size = (nuint)buffer.Length, Pos = 0 };
                nuint r = ZSTD_decompressStream(_ctx, &output, &input);
                if (ZSTD_isError(r) != 0)
                    throw new InvalidDataException("The zstd stream is corrupt: " + Marshal.PtrToStringAnsi(ZSTD_getErrorName(r)));
                _inPos = (int)input.Pos;
                _frameOpen = r != 0; // 0: a frame was completely decoded and flushed
                if (output.Pos > 0) return (int)output.Pos;
            }
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (_ctx != 0)
        {
            ZSTD_freeDStream(_ctx);
            _ctx = 0;
            ArrayPool<byte>.Shared.Return(_in);
            if (disposing) _inner.Dispose();
        }
        base.Dispose(disposing);
    }

    ~ZstdNativeStream() => Dispose(false);
}
