using System.Formats.Tar;
using System.Text;
using MelangeRunner.Native;
using MelangeRunner.Tar;
using Xunit;

namespace MelangeRunner.Tests.Tar;

public class TarPathTests
{
    [Theory]
    [InlineData("usr/bin/ls", "usr/bin/ls")]
    [InlineData("./usr/bin", "usr/bin")]
    [InlineData("usr/bin/", "usr/bin")]
    [InlineData("./usr/bin//", "usr/bin")]
    [InlineData("./", "")]
    [InlineData(".", "")]
    [InlineData(".wh..wh..opq", ".wh..wh..opq")]
    [InlineData("...", "...")]
    public void AcceptsWhatTarWrites(string name, string expected) =>
        Assert.Equal(expected, TarPath.Normalize(name, out _));

    [Theory]
    [InlineData("", "empty name")]
    [InlineData("/etc/passwd", "absolute")]
    [InlineData("..", "'..' component")]
    [InlineData("../x", "'..' component")]
    [InlineData("a/../b", "'..' component")]
    [InlineData("a/./b", "'.' component")]
    [InlineData("a//b", "empty component")]
    [InlineData("././a", "'.' component")]
    [InlineData("..\0x", "NUL")]
    [InlineData("a\0/../../x", "NUL")]
    public void RefusesRatherThanNormalises(string name, string why)
    {
        Assert.Null(TarPath.Normalize(name, out string? reason));
        Assert.Contains(why, reason);
    }

    [Fact]
    public void BoundsLengthAndComponents()
    {
        Assert.NotNull(TarPath.Normalize(new string('a', 255), out _));
        Assert.Contains("255", Normalized(new string('a', 256)));
        Assert.NotNull(TarPath.Normalize(string.Join('/', Enumerable.Repeat("a", 2048)), out _)); // 4095 bytes
        Assert.Contains("4095", Normalized(string.Join('/', Enumerable.Repeat("a", 2048)) + "b"));
        Assert.Contains("4095", Normalized(string.Concat(Enumerable.Repeat("a/", 100_000)) + "f"));
        Assert.Contains("255", Normalized("x/" + new string('\u00e9', 128))); // 256 bytes of UTF-8
    }

    private static string Normalized(string name)
    {
        Assert.Null(TarPath.Normalize(name, out string? reason));
        return reason!;
    }

    [Theory]
    [InlineData("a/.wh.b", "Entry", "a/b")]
    [InlineData(".wh.b", "Entry", "b")]
    [InlineData("a/.wh..wh..opq", "Opaque", "a")]
    [InlineData("a/.wh..wh.plnk", "Meta", null)]
    [InlineData("a/b", "None", null)]
    public void Whiteouts(string rel, string kind, string? target)
    {
        Assert.Equal(kind, TarPath.Whiteout(rel, out string t, out string? reason).ToString());
        Assert.Null(reason);
        if (target != null) Assert.Equal(target, t);
    }

    [Theory]
    [InlineData(".wh...", "'..' component")]
    [InlineData("a/.wh..", "'.' component")]
    [InlineData("a/.wh.", "empty component")]
    public void WhiteoutsNamingTheParentOrItselfAreRefused(string rel, string why)
    {
        TarPath.Whiteout(rel, out _, out string? reason);
        Assert.Contains(why, reason);
    }

    [Fact]
    public void ArchiveLinksResolveLexicallyInsideOnly()
    {
        Assert.Equal("abc/layer.tar", TarPath.ResolveArchiveLink("def", "../abc/layer.tar"));
        Assert.Null(TarPath.ResolveArchiveLink("def", "../../x"));
        Assert.Null(TarPath.ResolveArchiveLink("def", "/etc/passwd"));
    }
}

/// <summary>The extractor as the qemu export uses it (Workspace.ExportToDirectoryAsync → SafeTarExtractor), against what a hostile guest can send.</summary>
public class HostileStreamTests
{
    private static readonly TarExtractOptions ExportOptions = new() { PreserveOwners = false };

    [Fact]
    public async Task NulInPaxPathDoesNotReachTheParentOfTheDestination()
    {
        using var t = new TempTree();
        string parent = t.Dir("parent");
        string dest = t.Dir("parent/dest");
        Libc.Chmod(parent, 0x1ED);
        var tar = RawTar.Build(new RawTar.Entry("placeholder", '5', Mode: 0x1FF,
            Pax: new() { ["path"] = Encoding.UTF8.GetBytes("..\0x"), ["SCHILY.xattr.user.evil"] = "yes"u8.ToArray(), ["mtime"] = "1000"u8.ToArray() }));
        var before = Libc.LStat(parent)!.Value;
        var sink = new CollectingSink();
        await SafeTarExtractor.ExtractAsync(new MemoryStream(tar), dest, ExportOptions, sink, CancellationToken.None);
        var after = Libc.LStat(parent)!.Value;
        Assert.Equal(0x1EDu, after.Permissions);
        Assert.Equal(before.MTimeSeconds, after.MTimeSeconds);
        Assert.Null(Libc.LGetXattr(parent, "user.evil"));
        Assert.Contains(sink.Warnings, w => w.Contains("NUL byte") && w.Contains("'..\\0x'"));
    }

    [Fact]
    public async Task RootEntryLeavesTheDestinationAlone()
    {
        using var t = new TempTree();
        string dest = t.Dir("dest");
        Libc.Chmod(dest, 0x1C0);
        var tar = RawTar.Build(
            new RawTar.Entry("./", '5', Mode: 0x1FF, Pax: new() { ["SCHILY.xattr.user.evil"] = "yes"u8.ToArray() }),
            new RawTar.Entry("./f", '0', Data: "f"u8.ToArray()));
        var before = Libc.LStat(dest)!.Value;
        var sink = new CollectingSink();
        await SafeTarExtractor.ExtractAsync(new MemoryStream(tar), dest, new TarExtractOptions(), sink, CancellationToken.None);
        var after = Libc.LStat(dest)!.Value;
        Assert.Equal(0x1C0u, after.Permissions);
        Assert.Equal((before.Uid, before.Gid), (after.Uid, after.Gid));
        Assert.Null(Libc.LGetXattr(dest, "user.evil"));
        Assert.Equal("f", File.ReadAllText(Path.Combine(dest, "f")));
        Assert.Empty(sink.Warnings);
    }

    [Fact]
    public async Task CancelledMidFileLeavesNoFileThatLooksComplete()
    {
        using var t = new TempTree();
        string dest = t.Dir("dest");
        var data = new byte[8 << 20];
        Random.Shared.NextBytes(data);
        var tar = TarTestUtil.BuildTar(w => w.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, "big") { DataStream = new MemoryStream(data) }));
        using var cts = new CancellationTokenSource();
        // Cancels once 3 MiB of the tar were read: the extractor is then inside the file's data.
        var stream = new CancelAfter(new MemoryStream(tar), 3 << 20, cts);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => SafeTarExtractor.ExtractAsync(stream, dest, ExportOptions, NullEventSink.Instance, cts.Token));
        Assert.True(stream.Cancelled);
        Assert.Empty(Directory.GetFileSystemEntries(dest));
    }

    [Fact]
    public async Task TruncatedMidFileLeavesNoPartialFile()
    {
        using var t = new TempTree();
        string dest = t.Dir("dest");
        var tar = TarTestUtil.BuildTar(w => { w.File("done", "ok"); w.File("big", new string('x', 3 << 20)); });
        await Assert.ThrowsAsync<MelangeException>(() => SafeTarExtractor.ExtractAsync(new MemoryStream(tar[..(2 << 20)]), dest, ExportOptions, NullEventSink.Instance, CancellationToken.None));
        Assert.Equal(new[] { "done" }, Directory.GetFileSystemEntries(dest).Select(Path.GetFileName));
    }

    [Fact]
    public async Task ZeroRunsBecomeHoles()
    {
        using var t = new TempTree();
        string dest = t.Dir("dest");
        var data = new byte[16 << 20];
        data[9 << 20] = 1;
        var tar = TarTestUtil.BuildTar(w => w.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, "sparse") { DataStream = new MemoryStream(data) }));
        await SafeTarExtractor.ExtractAsync(new MemoryStream(tar), dest, ExportOptions, NullEventSink.Instance, CancellationToken.None);
        string f = Path.Combine(dest, "sparse");
        Assert.Equal(data, File.ReadAllBytes(f));
        var (_, blocks, _) = TarTestUtil.Run("stat", "-c", "%b", f);
        Assert.True(long.Parse(blocks.Trim()) * 512 < 1 << 20, $"{blocks.Trim()} blocks allocated");
    }

    [Fact]
    public async Task NamesDifferingOnlyInInvalidUtf8AreRefusedNotMerged()
    {
        using var t = new TempTree();
        string dest = t.Dir("dest");
        var tar = RawTar.Build(
            new RawTar.Entry([(byte)'n', 0xFF], '0', Data: "first"u8.ToArray()),
            new RawTar.Entry([(byte)'n', 0xFE], '0', Data: "second"u8.ToArray()),
            new RawTar.Entry("l", '2', Pax: new() { ["linkpath"] = [(byte)'t', 0xFF] }));
        var sink = new CollectingSink();
        await SafeTarExtractor.ExtractAsync(new MemoryStream(tar), dest, ExportOptions, sink, CancellationToken.None);
        Assert.Empty(Directory.GetFileSystemEntries(dest));
        Assert.Equal(3, sink.Warnings.Count(w => w.Contains("not valid UTF-8")));
    }

    [Fact]
    public async Task WhiteoutOfDotDotDeletesNothingOutside()
    {
        using var t = new TempTree();
        string dest = t.Dir("dest");
        File.WriteAllText(t.PathOf("victim"), "original");
        var tar = RawTar.Build(new RawTar.Entry(".wh...", '0'), new RawTar.Entry("a/.wh..", '0'));
        var sink = new CollectingSink();
        await SafeTarExtractor.ExtractAsync(new MemoryStream(tar), dest, new TarExtractOptions { ApplyWhiteouts = true }, sink, CancellationToken.None);
        Assert.Equal("original", File.ReadAllText(t.PathOf("victim")));
        Assert.True(Directory.Exists(dest));
        Assert.Equal(2, sink.Warnings.Count(w => w.Contains("whiteout")));
    }

    [Fact]
    public async Task GnuSparseEntriesAreRefusedByName()
    {
        using var t = new TempTree();
        string src = t.Dir("src");
        TarTestUtil.MustRun("sh", "-c", $"truncate -s 4M '{src}/holes' && printf x | dd of='{src}/holes' bs=1 seek=2097152 conv=notrunc status=none");
        foreach (var format in new[] { "gnu", "posix" })
        {
            string tarPath = t.PathOf($"{format}.tar");
            TarTestUtil.MustRun("tar", "-S", $"--format={format}", "-C", src, "-cf", tarPath, "holes");
            await using var fs = File.OpenRead(tarPath);
            var ex = await Assert.ThrowsAsync<MelangeException>(() => SafeTarExtractor.ExtractAsync(fs, t.Dir("dest-" + format), ExportOptions, NullEventSink.Instance, CancellationToken.None));
            Assert.Equal("SparseTarEntry", ex.ErrorId);
            Assert.Contains("'holes'", ex.Message);
        }
    }

    [Fact]
    public async Task DeepTreesAreRemovedWithoutRecursion()
    {
        // A directory replaced by a file goes with its whole tree: 2000 levels (the most a name allows is 2048).
        using var t = new TempTree();
        string dest = t.Dir("dest");
        string deep = string.Join('/', Enumerable.Repeat("d", 2000));
        var tar = TarTestUtil.BuildTar(w => { w.File(deep + "/f", "x"); w.File("d", "file now"); });
        var sink = new CollectingSink();
        await SafeTarExtractor.ExtractAsync(new MemoryStream(tar), dest, ExportOptions, sink, CancellationToken.None);
        Assert.Empty(sink.Warnings);
        Assert.Equal("file now", File.ReadAllText(Path.Combine(dest, "d")));
    }

    private sealed class CancelAfter(Stream inner, long limit, CancellationTokenSource cts) : Stream
    {
        private long _read;
        public bool Cancelled { get; private set; }
        public override int Read(byte[] buffer, int offset, int count)
        {
            int n = inner.Read(buffer, offset, count);
            _read += n;
            if (_read >= limit && !Cancelled) { Cancelled = true; cts.Cancel(); }
            return n;
        }
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _read; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}

/// <summary>Tar bytes written by hand: for what System.Formats.Tar will not write (raw non-UTF-8 names, NUL in PAX values).</summary>
public static class RawTar
{
    public sealed record Entry(byte[] Name, char Type, uint Mode = 0x1A4, byte[]? Data = null, Dictionary<string, byte[]>? Pax = null)
    {
        public Entry(string name, char type, uint Mode = 0x1A4, byte[]? Data = null, Dictionary<string, byte[]>? Pax = null)
            : this(Encoding.UTF8.GetBytes(name), type, Mode, Data, Pax) { }
    }

    public static byte[] Build(params Entry[] entries)
    {
        var o = new MemoryStream();
        foreach (var e in entries)
        {
            if (e.Pax != null)
            {
                var records = new MemoryStream();
                foreach (var (k, v) in e.Pax)
                {
                    byte[] body = [.. Encoding.UTF8.GetBytes($" {k}="), .. v, (byte)'\n'];
                    int len = body.Length + 1;
                    while (len.ToString().Length + body.Length != len) len = len.ToString().Length + body.Length;
                    records.Write(Encoding.ASCII.GetBytes(len.ToString()));
                    records.Write(body);
                }
                Write(o, "PaxHeaders/x"u8.ToArray(), 'x', 0x1A4, records.ToArray());
            }
            Write(o, e.Name, e.Type, e.Mode, e.Data ?? []);
        }
        o.Write(new byte[1024]);
        return o.ToArray();
    }

    private static void Write(MemoryStream o, byte[] name, char type, uint mode, byte[] data)
    {
        var h = new byte[512];
        name.CopyTo(h, 0);
        void Put(string s, int at) => Encoding.ASCII.GetBytes(s).CopyTo(h, at);
        Put(Convert.ToString(mode, 8).PadLeft(7, '0'), 100);
        Put("0000000", 108);
        Put("0000000", 116);
        Put(Convert.ToString(data.Length, 8).PadLeft(11, '0'), 124);
        Put("14000000000", 136);
        h[156] = (byte)type;
        Put("ustar\0", 257);
        Put("00", 263);
        for (int i = 148; i < 156; i++) h[i] = (byte)' ';
        Put(Convert.ToString(h.Sum(b => (int)b), 8).PadLeft(6, '0') + "\0 ", 148);
        o.Write(h);
        o.Write(data);
        if (data.Length % 512 != 0) o.Write(new byte[512 - data.Length % 512]);
    }
}
