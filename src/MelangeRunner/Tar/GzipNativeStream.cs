using System.Runtime.InteropServices;

namespace MelangeRunner.Tar;

/// <summary>
/// gzip decompression through the system's libz.so.1, which, unlike GZipStream, tells a
/// truncated stream from a complete one: GZipStream ends silently when its input ends inside a
/// member (its check is behind a process-wide AppContext switch, off by default), so a cut
/// layer would look like a short tar. Concatenated members are read in turn; bytes after the
/// last member that do not start another one are ignored, as GZipStream does.
/// <see cref="Decompression"/> falls back to GZipStream when the library is not installed.
/// </summary>
internal sealed unsafe class GzipNativeStream : ReadOnlyWrapper
{
    private const string Lib = "libz.so.1";
    private const int Z_OK = 0, Z_STREAM_END = 1, Z_BUF_ERROR = -5, Z_NO_FLUSH = 0;
    private const int GzipOnly = 15 + 16; // windowBits: a 32 KiB window, gzip wrapper (zlib checks CRC-32 and ISIZE)

    // zlib's z_stream for LP64 (uLong is 64 bits on Linux x86_64 and aarch64).
    [StructLayout(LayoutKind.Sequential)]
    private struct ZStream
    {
        public byte* NextIn; public uint AvailIn; public nuint TotalIn;
        public byte* NextOut; public uint AvailOut; public nuint TotalOut;
        public sbyte* Msg; public nint State;
        public nint ZAlloc, ZFree, Opaque;
        public int DataType; public nuint Adler; public nuint Reserved;
    }

    [DllImport(Lib)] private static extern sbyte* zlibVersion();
    [DllImport(Lib)] private static extern int inflateInit2_(ZStream* strm, int windowBits, sbyte* version, int streamSize);
    [DllImport(Lib)] private static extern int inflate(ZStream* strm, int flush);
    [DllImport(Lib)] private static extern int inflateReset(ZStream* strm);
    [DllImport(Lib)] private static extern int inflateEnd(ZStream* strm);

    private static readonly Lazy<bool> LibzLoads = new(() =>
    {
        if (Environment.GetEnvironmentVariable("MELANGE_RUNNER_MANAGED_GZIP") == "1") return false; // for tests of the fallback
        try { return NativeLibrary.TryLoad(Lib, typeof(GzipNativeStream).Assembly, null, out _) && zlibVersion() != null; }
        catch (Exception) { return false; }
    });

    public static bool IsAvailable => LibzLoads.Value;

    private readonly Stream _inner;
    // zlib keeps a pointer back to its z_stream and refuses calls from a moved one: native memory.
    private ZStream* _z;
    private readonly byte[] _in = GC.AllocateUninitializedArray<byte>(1 << 17, pinned: true);
    private int _inPos, _inLen;
    private bool _innerEnded, _memberEnded, _done;

    public GzipNativeStream(Stream inner)
    {
        _inner = inner;
        _z = (ZStream*)NativeMemory.AllocZeroed((nuint)sizeof(ZStream));
        int r = inflateInit2_(_z, GzipOnly, zlibVersion(), sizeof(ZStream));
        if (r != Z_OK)
        {
            NativeMemory.Free(_z);
            _z = null;
            throw new InvalidOperationException($"zlib's inflateInit2 failed ({r}).");
        }
    }

    private void Fill()
    {
        if (_inPos < _inLen || _innerEnded) return;
        _inLen = _inner.Read(_in, 0, _in.Length);
        _inPos = 0;
        if (_inLen == 0) _innerEnded = true;
    }

    protected override int ReadCore(Span<byte> buffer)
    {
        ObjectDisposedException.ThrowIf(_z == null, this);
        if (buffer.IsEmpty || _done) return 0;
        fixed (byte* dst = buffer)
        fixed (byte* src = _in)
        {
            while (true)
            {
                Fill();
                if (_memberEnded)
                {
                    // Another member follows only if the next byte starts one.
                    if (_inPos == _inLen || _in[_inPos] != 0x1F) { _done = true; return 0; }
                    inflateReset(_z);
                    _memberEnded = false;
                }
                if (_inPos == _inLen) throw new InvalidDataException("The gzip stream is truncated: it ends inside a member.");
                _z->NextIn = src + _inPos; _z->AvailIn = (uint)(_inLen - _inPos);
                _z->NextOut = dst; _z->AvailOut = (uint)buffer.Length;
                int r = inflate(_z, Z_NO_FLUSH);
                int produced = buffer.Length - (int)_z->AvailOut;
                _inPos = _inLen - (int)_z->AvailIn;
                if (r == Z_STREAM_END) _memberEnded = true;
                else if (r == Z_BUF_ERROR && _z->AvailIn > 0) throw new InvalidDataException("The gzip stream is corrupt: the decoder made no progress.");
                else if (r != Z_OK && r != Z_BUF_ERROR)
                    throw new InvalidDataException("The gzip stream is corrupt: " + (_z->Msg != null ? new string(_z->Msg) : $"zlib error {r}") + ".");
                if (produced > 0) return produced;
            }
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (_z != null)
        {
            inflateEnd(_z);
            NativeMemory.Free(_z);
            _z = null;
            if (disposing) _inner.Dispose();
        }
        base.Dispose(disposing);
    }

    ~GzipNativeStream() => Dispose(false);
}
