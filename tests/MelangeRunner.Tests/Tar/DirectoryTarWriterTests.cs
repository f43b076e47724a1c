using System.Formats.Tar;
using MelangeRunner.Native;
using MelangeRunner.Tar;
using Xunit;

namespace MelangeRunner.Tests.Tar;

public class DirectoryTarWriterTests
{
    private static string MakeTree(TempTree t)
    {
        string src = t.Dir("src");
        Directory.CreateDirectory(Path.Combine(src, "melange-out/pkg/usr/bin"));
        File.WriteAllText(Path.Combine(src, "melange-out/pkg/usr/bin/tool"), "tool");
        Libc.Chmod(Path.Combine(src, "melange-out/pkg/usr/bin/tool"), 0x9ED); // 04755
        TarTestUtil.MustRun("ln", Path.Combine(src, "melange-out/pkg/usr/bin/tool"), Path.Combine(src, "melange-out/pkg/usr/bin/tool2"));
        File.CreateSymbolicLink(Path.Combine(src, "melange-out/pkg/usr/bin/t"), "tool");
        File.CreateSymbolicLink(Path.Combine(src, "melange-out/pkg/abs"), "/etc/passwd");
        TarTestUtil.MustRun("mkfifo", Path.Combine(src, "melange-out/pkg/fifo"));
        Directory.CreateDirectory(Path.Combine(src, "melange-out/ro"));
        File.WriteAllText(Path.Combine(src, "melange-out/ro/file"), "in a read-only dir");
        Libc.Chmod(Path.Combine(src, "melange-out/ro"), 0x16D); // 0555
        File.WriteAllText(Path.Combine(src, "LICENSE"), "MIT");
        if (TarTestUtil.IsRoot) Libc.LChown(Path.Combine(src, "LICENSE"), 4321, 8765);
        Libc.LSetXattr(Path.Combine(src, "LICENSE"), "user.origin", "test"u8);
        File.WriteAllText(Path.Combine(src, "not-exported"), "x");
        return src;
    }

    [Fact]
    public async Task RoundTripsTreeWithLinksModesAndXattrs()
    {
        using var t = new TempTree();
        string src = MakeTree(t);
        var sink = new CollectingSink();
        string tarPath = t.PathOf("ws.tar");
        await using (var fs = File.Create(tarPath))
            await DirectoryTarWriter.WriteAsync(fs, src, new[] { "melange-out", "LICENSE", "missing-file" }, sink, CancellationToken.None);
        Assert.Contains(sink.Warnings, w => w.Contains("missing-file"));

        string dest = t.Dir("dest");
        var xs = new CollectingSink();
        await using (var fs = File.OpenRead(tarPath))
            await SafeTarExtractor.ExtractAsync(fs, dest, new TarExtractOptions(), xs, CancellationToken.None);
        Assert.Empty(xs.Warnings);
        var expected = TarTestUtil.Describe(src).Where(l => !l.StartsWith("not-exported")).ToList();
        Assert.Equal(expected, TarTestUtil.Describe(dest));
        Assert.Equal(Libc.LStat(Path.Combine(dest, "melange-out/pkg/usr/bin/tool"))!.Value.Inode, Libc.LStat(Path.Combine(dest, "melange-out/pkg/usr/bin/tool2"))!.Value.Inode);
        Assert.Equal(Libc.LStat(Path.Combine(src, "melange-out/pkg/usr/bin/tool"))!.Value.MTimeSeconds, Libc.LStat(Path.Combine(dest, "melange-out/pkg/usr/bin/tool"))!.Value.MTimeSeconds);
        var x = Libc.LGetXattr(Path.Combine(src, "LICENSE"), "user.origin");
        if (x != null) Assert.Equal(x, Libc.LGetXattr(Path.Combine(dest, "LICENSE"), "user.origin"));
    }

    [Fact]
    public async Task GnuTarReadsOutputIncludingBinaryCapability()
    {
        using var t = new TempTree();
        string src = MakeTree(t);
        byte[] cap = { 0x01, 0x00, 0x00, 0x02, 0x80, 0x20, 0x00, 0x00, 0x80, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0 };
        bool caps = TarTestUtil.IsRoot && Libc.LSetXattr(Path.Combine(src, "melange-out/ro/file"), "security.capability", cap) == 0;
        string tarPath = t.PathOf("ws.tar");
        await using (var fs = File.Create(tarPath))
            await DirectoryTarWriter.WriteAsync(fs, src, new[] { "melange-out", "LICENSE" }, NullEventSink.Instance, CancellationToken.None);
        string dest = t.Dir("gnu");
        TarTestUtil.MustRun("tar", "--xattrs", "--xattrs-include=*", "-xpf", tarPath, "-C", dest);
        Assert.Equal(TarTestUtil.Describe(src).Where(l => !l.StartsWith("not-exported")).ToList(), TarTestUtil.Describe(dest));
        if (caps) Assert.Equal(cap, Libc.LGetXattr(Path.Combine(dest, "melange-out/ro/file"), "security.capability"));
    }

    [Fact]
    public async Task LongNamesAndBclReadsIt()
    {
        using var t = new TempTree();
        string src = t.Dir("src");
        string deep = string.Join('/', Enumerable.Repeat("ñame-long-directory", 12));
        Directory.CreateDirectory(Path.Combine(src, deep));
        File.WriteAllText(Path.Combine(src, deep, "f"), "deep");
        var ms = new MemoryStream();
        await DirectoryTarWriter.WriteAsync(ms, src, new[] { "ñame-long-directory" }, NullEventSink.Instance, CancellationToken.None);
        ms.Position = 0;
        using var r = new TarReader(ms);
        var names = new List<string>();
        while (r.GetNextEntry() is { } e) names.Add(e.Name);
        Assert.Contains(deep + "/f", names);
    }
}
