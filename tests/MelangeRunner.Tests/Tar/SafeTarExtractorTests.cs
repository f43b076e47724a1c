using System.Formats.Tar;
using System.IO.Compression;
using MelangeRunner.Native;
using MelangeRunner.Tar;
using Xunit;

namespace MelangeRunner.Tests.Tar;

public class SafeTarExtractorTests
{
    private static async Task<(long Count, CollectingSink Sink)> Extract(byte[] tar, string dest, TarExtractOptions? options = null)
    {
        var sink = new CollectingSink();
        long n = await SafeTarExtractor.ExtractAsync(new MemoryStream(tar), dest, options ?? new TarExtractOptions(), sink, CancellationToken.None);
        return (n, sink);
    }

    [Fact]
    public async Task KeepsModesTimesAndContent()
    {
        using var t = new TempTree();
        var tar = TarTestUtil.BuildTar(w =>
        {
            w.Dir("ro", (UnixFileMode)0x16D); // 0555, with content written into it
            w.File("ro/inside", "x");
            w.File("bin/su", "suid", (UnixFileMode)0x9ED); // 04755
            w.File("bin/sg", "sgid", (UnixFileMode)0x5ED); // 02755
            w.Dir("tmp", (UnixFileMode)0x3FF); // 01777
            w.File("etc/shadow", "secret", (UnixFileMode)0x180); // 0600
        });
        string dest = t.Dir("dest");
        var (n, sink) = await Extract(tar, dest);
        Assert.Empty(sink.Warnings);
        Assert.Equal(6, n);
        Assert.Equal(0x16Du, Libc.LStat(Path.Combine(dest, "ro"))!.Value.Permissions);
        Assert.Equal("x", File.ReadAllText(Path.Combine(dest, "ro/inside")));
        Assert.Equal(0x9EDu, Libc.LStat(Path.Combine(dest, "bin/su"))!.Value.Permissions);
        Assert.Equal(0x5EDu, Libc.LStat(Path.Combine(dest, "bin/sg"))!.Value.Permissions);
        Assert.Equal(0x3FFu, Libc.LStat(Path.Combine(dest, "tmp"))!.Value.Permissions);
        Assert.Equal(0x180u, Libc.LStat(Path.Combine(dest, "etc/shadow"))!.Value.Permissions);
        Assert.Equal(new DateTimeOffset(2020, 1, 2, 3, 4, 5, TimeSpan.Zero).ToUnixTimeSeconds(), Libc.LStat(Path.Combine(dest, "bin/su"))!.Value.MTimeSeconds);
        Assert.Equal(new DateTimeOffset(2021, 6, 7, 8, 9, 10, TimeSpan.Zero).ToUnixTimeSeconds(), Libc.LStat(Path.Combine(dest, "ro"))!.Value.MTimeSeconds);
    }

    [Fact]
    public async Task LinksFifosAndOwners()
    {
        using var t = new TempTree();
        var tar = TarTestUtil.BuildTar(w =>
        {
            w.File("usr/bin/busybox", "bb", (UnixFileMode)0x1ED, uid: 1234, gid: 5678);
            w.HardLink("bin/ls", "usr/bin/busybox");
            w.Symlink("bin/sh", "/usr/bin/busybox"); // absolute targets are normal in a rootfs
            w.Symlink("lib", "usr/lib");
            w.WriteEntry(new PaxTarEntry(TarEntryType.Fifo, "run/fifo") { Mode = (UnixFileMode)0x1A4 });
        });
        string dest = t.Dir("dest");
        var (_, sink) = await Extract(tar, dest);
        Assert.Empty(sink.Warnings);
        var bb = Libc.LStat(Path.Combine(dest, "usr/bin/busybox"))!.Value;
        var ls = Libc.LStat(Path.Combine(dest, "bin/ls"))!.Value;
        Assert.Equal(bb.Inode, ls.Inode);
        Assert.Equal(2u, bb.LinkCount);
        Assert.Equal("/usr/bin/busybox", Libc.ReadLink(Path.Combine(dest, "bin/sh")));
        Assert.Equal("usr/lib", Libc.ReadLink(Path.Combine(dest, "lib")));
        Assert.Equal(Libc.S_IFIFO, Libc.LStat(Path.Combine(dest, "run/fifo"))!.Value.FileType);
        if (TarTestUtil.IsRoot) // owners are only applied as root
        {
            Assert.Equal(1234u, bb.Uid);
            Assert.Equal(5678u, bb.Gid);
        }
    }

    [Fact]
    public async Task UserXattrRoundTrips()
    {
        using var t = new TempTree();
        var tar = TarTestUtil.BuildTar(w => w.File("f", "x", pax: new Dictionary<string, string> { ["SCHILY.xattr.user.note"] = "hello" }));
        string dest = t.Dir("dest");
        var (_, sink) = await Extract(tar, dest);
        var v = Libc.LGetXattr(Path.Combine(dest, "f"), "user.note");
        if (v == null && sink.Warnings.Any(w => w.Contains("user.note"))) return; // file system without user xattrs (e.g. some tmpfs)
        Assert.Equal("hello", System.Text.Encoding.UTF8.GetString(v!));
    }

    [Fact]
    public async Task BinaryCapabilityFromGnuTarRoundTrips()
    {
        if (!TarTestUtil.IsRoot) return; // security.capability needs root (skipped otherwise)
        using var t = new TempTree();
        string src = t.Dir("src");
        File.WriteAllText(Path.Combine(src, "ping"), "ping");
        // VFS_CAP_REVISION_2 with cap_net_raw|cap_setuid: bytes ≥ 0x80 that UTF-8 decoding would mangle.
        byte[] cap = { 0x01, 0x00, 0x00, 0x02, 0x80, 0x20, 0x00, 0x00, 0x80, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0 };
        Assert.Equal(0, Libc.LSetXattr(Path.Combine(src, "ping"), "security.capability", cap));
        string tarPath = t.PathOf("caps.tar");
        TarTestUtil.MustRun("tar", "--xattrs", "--xattrs-include=*", "--format=posix", "-C", src, "-cf", tarPath, "ping");
        string dest = t.Dir("dest");
        var sink = new CollectingSink();
        await using (var fs = File.OpenRead(tarPath))
            await SafeTarExtractor.ExtractAsync(fs, dest, new TarExtractOptions(), sink, CancellationToken.None);
        Assert.Empty(sink.Warnings);
        Assert.Equal(cap, Libc.LGetXattr(Path.Combine(dest, "ping"), "security.capability"));
    }

    [Fact]
    public async Task DeviceNodeOnlyAsRoot()
    {
        using var t = new TempTree();
        var tar = TarTestUtil.BuildTar(w => w.WriteEntry(new PaxTarEntry(TarEntryType.CharacterDevice, "dev/null") { DeviceMajor = 1, DeviceMinor = 3, Mode = (UnixFileMode)0x1B6 }));
        string dest = t.Dir("dest");
        var (_, sink) = await Extract(tar, dest);
        var st = Libc.LStat(Path.Combine(dest, "dev/null"));
        if (TarTestUtil.IsRoot)
        {
            Assert.Equal(Libc.S_IFCHR, st!.Value.FileType);
            Assert.Equal((1u, 3u), (st.Value.RDevMajor, st.Value.RDevMinor));
        }
        else
        {
            Assert.Null(st);
            Assert.Contains(sink.Warnings, w => w.Contains("'dev/null'") && w.Contains("device"));
        }
    }

    [Fact]
    public async Task ReplacesExistingPathsLikeUnlinkFirst()
    {
        using var t = new TempTree();
        string dest = t.Dir("dest");
        var tar = TarTestUtil.BuildTar(w =>
        {
            w.File("a", "old");
            w.HardLink("b", "a");
            w.File("a", "new"); // must not write through the hard link b
            w.Dir("d");
            w.File("d/x", "x");
            w.File("d", "file over dir");
            w.Symlink("s", "/etc");
            w.Dir("s"); // a directory over a symlink replaces the symlink
            w.File("s/inside", "ok");
        });
        var (_, sink) = await Extract(tar, dest);
        Assert.Empty(sink.Warnings);
        Assert.Equal("new", File.ReadAllText(Path.Combine(dest, "a")));
        Assert.Equal("old", File.ReadAllText(Path.Combine(dest, "b")));
        Assert.Equal("file over dir", File.ReadAllText(Path.Combine(dest, "d")));
        Assert.True(Libc.LStat(Path.Combine(dest, "s"))!.Value.IsDirectory);
        Assert.Equal("ok", File.ReadAllText(Path.Combine(dest, "s/inside")));
    }

    [Fact]
    public async Task SkipsGlobalHeadersAndHandlesLongNames()
    {
        using var t = new TempTree();
        string longName = string.Join('/', Enumerable.Repeat("a-rather-long-directory-name", 8)) + "/file";
        var ms = new MemoryStream();
        using (var w = new TarWriter(ms, TarEntryFormat.Gnu, leaveOpen: true))
        {
            var g = new PaxGlobalExtendedAttributesTarEntry(new Dictionary<string, string> { ["comment"] = "x" });
            w.WriteEntry(g);
            var e = new GnuTarEntry(TarEntryType.RegularFile, longName) { DataStream = new MemoryStream("long"u8.ToArray()) };
            w.WriteEntry(e);
        }
        string dest = t.Dir("dest");
        var (n, sink) = await Extract(ms.ToArray(), dest);
        Assert.Equal(1, n);
        Assert.Empty(sink.Warnings);
        Assert.Equal("long", File.ReadAllText(Path.Combine(dest, longName)));
    }

    [Fact]
    public async Task GnuTarArchiveCrossCheck()
    {
        using var t = new TempTree();
        string src = t.Dir("src");
        Directory.CreateDirectory(Path.Combine(src, "d/e"));
        File.WriteAllText(Path.Combine(src, "d/e/f"), "f");
        File.CreateSymbolicLink(Path.Combine(src, "d/link"), "e/f");
        TarTestUtil.MustRun("ln", Path.Combine(src, "d/e/f"), Path.Combine(src, "d/hard"));
        TarTestUtil.MustRun("mkfifo", Path.Combine(src, "d/fifo"));
        TarTestUtil.MustRun("chmod", "4750", Path.Combine(src, "d/e/f"));
        string tarPath = t.PathOf("gnu.tar.gz");
        TarTestUtil.MustRun("tar", "-C", src, "-czf", tarPath, ".");
        string dest = t.Dir("dest");
        var sink = new CollectingSink();
        await using (var fs = File.OpenRead(tarPath))
        await using (var s = Decompression.Open(fs, out string comp))
        {
            Assert.Equal("gzip", comp);
            await SafeTarExtractor.ExtractAsync(s, dest, new TarExtractOptions(), sink, CancellationToken.None);
        }
        Assert.Empty(sink.Warnings);
        Assert.Equal(TarTestUtil.Describe(src), TarTestUtil.Describe(dest));
        Assert.Equal(Libc.LStat(Path.Combine(dest, "d/e/f"))!.Value.Inode, Libc.LStat(Path.Combine(dest, "d/hard"))!.Value.Inode);
    }

    [Fact]
    public async Task TruncatedStreamIsInvalidData()
    {
        using var t = new TempTree();
        var tar = TarTestUtil.BuildTar(w => w.File("big", new string('x', 100_000)));
        var ex = await Assert.ThrowsAsync<MelangeException>(() => Extract(tar[..5000], t.Dir("dest")));
        Assert.Equal(ErrorKind.InvalidData, ex.Kind);
        var gz = new MemoryStream();
        using (var z = new GZipStream(gz, CompressionLevel.Fastest, leaveOpen: true)) z.Write(tar);
        var cut = gz.ToArray()[..(int)(gz.Length / 2)];
        var ex2 = await Assert.ThrowsAsync<MelangeException>(async () =>
        {
            using var s = Decompression.Open(new MemoryStream(cut), out _);
            await SafeTarExtractor.ExtractAsync(s, t.Dir("dest2"), new TarExtractOptions(), NullEventSink.Instance, CancellationToken.None);
        });
        Assert.Equal(ErrorKind.InvalidData, ex2.Kind);
    }

    [Fact]
    public async Task CancellationStops()
    {
        using var t = new TempTree();
        var tar = TarTestUtil.BuildTar(w => { for (int i = 0; i < 50; i++) w.File($"f{i}", "x"); });
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            SafeTarExtractor.ExtractAsync(new MemoryStream(tar), t.Dir("dest"), new TarExtractOptions(), NullEventSink.Instance, cts.Token));
    }
}
