using System.IO.Compression;
using MelangeRunner.Tar;
using Xunit;

namespace MelangeRunner.Tests.Tar;

/// <summary>Every decoder's failure is CorruptImage (InvalidData); the source's own failures pass through.</summary>
public class DecompressionTests
{
    private static byte[] Payload()
    {
        var data = new byte[600_000];
        new Random(3).NextBytes(data.AsSpan(0, 300_000)); // half random, half compressible
        return TarTestUtil.BuildTar(w => w.File("f", Convert.ToBase64String(data)));
    }

    private static byte[] Compress(string tool, byte[] data)
    {
        using var t = new TempTree();
        var input = t.PathOf("in");
        File.WriteAllBytes(input, data);
        TarTestUtil.MustRun(tool, "-q", "-k", input);
        var ext = tool switch { "gzip" => ".gz", "xz" => ".xz", "bzip2" => ".bz2", _ => ".zst" };
        return File.ReadAllBytes(input + ext);
    }

    private static byte[] ReadToEnd(Stream s)
    { var ms = new MemoryStream(); s.CopyTo(ms); return ms.ToArray(); }

    [Theory]
    [InlineData("gzip")]
    [InlineData("xz")]
    [InlineData("bzip2")]
    [InlineData("zstd")]
    public void ATruncatedStreamIsCorruptImage(string tool)
    {
        var tar = Payload();
        var whole = Compress(tool, tar);
        using (var s = Decompression.Open(new MemoryStream(whole), out _)) Assert.Equal(tar, ReadToEnd(s));
        foreach (var cut in new[] { whole.Length / 3, whole.Length - 1 })
        {
            // Some decoders (bzip2) decode their first block when opened: the error may come from Open.
            var e = Assert.Throws<MelangeException>(() =>
            {
                using var s = Decompression.Open(new MemoryStream(whole[..cut]), out var compression);
                Assert.Equal(tool, compression);
                ReadToEnd(s);
            });
            Assert.Equal("CorruptImage", e.ErrorId);
            Assert.Equal(ErrorKind.InvalidData, e.Kind);
            Assert.NotNull(e.InnerException);
        }
    }

    [Fact]
    public void TheManagedZstdDecodersFailureIsCorruptImageToo()
    {
        var whole = Compress("zstd", Payload());
        var source = new SourceGuard(new MemoryStream(whole[..(whole.Length / 2)]));
        using var s = new DecoderGuard(new SharpCompress.Compressors.ZStandard.DecompressionStream(source, 1 << 20, true, false), source, "zstd");
        Assert.Equal("CorruptImage", Assert.Throws<MelangeException>(() => ReadToEnd(s)).ErrorId);
    }

    [Fact]
    public void ConcatenatedGzipMembersAreReadInTurnAndTrailingZerosIgnored()
    {
        var a = Compress("gzip", "first "u8.ToArray());
        var b = Compress("gzip", Payload());
        var joined = a.Concat(b).Concat(new byte[1024]).ToArray();
        using var s = Decompression.Open(new MemoryStream(joined), out _);
        Assert.Equal("first "u8.ToArray().Concat(Payload()).ToArray(), ReadToEnd(s));
    }

    [Fact]
    public void ACorruptGzipMemberIsCorruptImage()
    {
        var gz = Compress("gzip", Payload());
        gz[gz.Length - 6] ^= 0xFF; // the CRC-32 in the trailer
        using var s = Decompression.Open(new MemoryStream(gz), out _);
        Assert.Equal("CorruptImage", Assert.Throws<MelangeException>(() => ReadToEnd(s)).ErrorId);
    }

    private sealed class FailingStream(byte[] data, int failAt) : Stream
    {
        private int _pos;
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _pos; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long o, SeekOrigin s) => throw new NotSupportedException();
        public override void SetLength(long v) => throw new NotSupportedException();
        public override void Write(byte[] b, int o, int c) => throw new NotSupportedException();
        public override int Read(byte[] buffer, int offset, int count)
        {
            if (_pos >= failAt) throw new IOException("disk gone");
            int n = Math.Min(count, Math.Min(failAt, data.Length) - _pos);
            Array.Copy(data, _pos, buffer, offset, n);
            _pos += n;
            return n;
        }
    }

    [Theory]
    [InlineData("gzip")]
    [InlineData("xz")]
    [InlineData("bzip2")]
    [InlineData("zstd")]
    public void TheSourcesOwnFailurePassesThroughUnchanged(string tool)
    {
        var whole = Compress(tool, Payload());
        Assert.Equal("disk gone", Assert.Throws<IOException>(() =>
        {
            using var s = Decompression.Open(new FailingStream(whole, whole.Length / 2), out _);
            ReadToEnd(s);
        }).Message);
    }
}
