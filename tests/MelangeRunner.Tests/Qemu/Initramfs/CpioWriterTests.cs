using System.Text;
using MelangeRunner.Native;
using MelangeRunner.Qemu.Initramfs;
using Xunit;
using Xunit.Abstractions;

namespace MelangeRunner.Tests.Initramfs;

public class CpioWriterTests
{
    private readonly ITestOutputHelper _out;
    public CpioWriterTests(ITestOutputHelper output) => _out = output;

    private static byte[] Sample(string hostFile)
    {
        var ms = new MemoryStream();
        using (var w = new CpioWriter(ms, leaveOpen: true))
        {
            w.WriteDirectory(".", 0x1ED);
            w.WriteDirectory("etc", 0x1ED, 1_700_000_000);
            w.WriteFile("etc/hello", 0x1A4, Encoding.ASCII.GetBytes("hello\n"), 1_700_000_000);
            w.WriteFile("etc/secret", 0x100, Encoding.ASCII.GetBytes("k"));
            w.WriteDirectory("bin", 0x1ED);
            using (var s = File.OpenRead(hostFile)) w.WriteFile("bin/prog", 0x1ED, s, s.Length);
            w.WriteSymlink("bin/sh", "prog");
            w.WriteSymlink("lib", "usr/lib");
            w.WriteDirectory("tmp", 0x3FF);
            w.WriteDevice("dev-console", true, 0x180, 5, 1);
            w.WriteDevice("dev-null", true, 0x1B6, 1, 3);
            w.WriteFile("a-name-of-odd-length", 0x1A4, Array.Empty<byte>());
            w.Finish();
        }
        return ms.ToArray();
    }

    [Fact]
    public void HeaderLayoutPaddingAndTrailer()
    {
        using var t = new InitramfsTemp();
        File.WriteAllBytes(t.PathOf("prog"), new byte[] { 1, 2, 3, 4, 5 });
        var a = Sample(t.PathOf("prog"));
        Assert.Equal(0, a.Length % 512);
        Assert.Equal("070701", Encoding.ASCII.GetString(a, 0, 6));
        // Walk the records: each header starts 4-aligned, names are NUL-terminated, inodes unique.
        int pos = 0;
        var inodes = new HashSet<string>();
        var names = new List<string>();
        while (true)
        {
            Assert.Equal(0, pos % 4);
            var h = Encoding.ASCII.GetString(a, pos, 110);
            Assert.StartsWith("070701", h);
            int Field(int i) => Convert.ToInt32(h.Substring(6 + i * 8, 8), 16);
            int nameSize = Field(11), fileSize = Field(6);
            var name = Encoding.UTF8.GetString(a, pos + 110, nameSize - 1);
            Assert.Equal(0, a[pos + 110 + nameSize - 1]);
            names.Add(name);
            if (name == "TRAILER!!!") break;
            Assert.True(inodes.Add(h.Substring(6, 8)), "duplicate inode for " + name);
            Assert.Equal(0, Field(2)); // uid
            Assert.Equal(0, Field(3)); // gid
            pos = (pos + 110 + nameSize + 3) & ~3;
            pos = (pos + fileSize + 3) & ~3;
        }
        Assert.Equal(".", names[0]);
        Assert.Contains("a-name-of-odd-length", names);
    }

    [Fact]
    public void IsDeterministic()
    {
        using var t = new InitramfsTemp();
        File.WriteAllBytes(t.PathOf("prog"), new byte[] { 9, 9, 9 });
        Assert.Equal(Sample(t.PathOf("prog")), Sample(t.PathOf("prog")));
    }

    [Fact]
    public void CpioReadsItBackAndExtractsIt()
    {
        if (!InitramfsTemp.HasCpio) { _out.WriteLine("skipped: GNU cpio is not installed (apt-get install cpio)"); return; }
        using var t = new InitramfsTemp();
        var content = new byte[300_001];
        new Random(42).NextBytes(content);
        File.WriteAllBytes(t.PathOf("prog"), content);
        var archive = Sample(t.PathOf("prog"));

        var (code, listing, err) = InitramfsTemp.RunIn(null, archive, "cpio", "-itv", "--quiet");
        Assert.True(code == 0, err);
        _out.WriteLine(listing);
        var lines = listing.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains(lines, l => l.StartsWith("-rw-r--r--", StringComparison.Ordinal) && l.EndsWith(" etc/hello", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("-r--------", StringComparison.Ordinal) && l.EndsWith(" etc/secret", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("lrwxrwxrwx", StringComparison.Ordinal) && l.EndsWith(" bin/sh -> prog", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("drwxrwxrwt", StringComparison.Ordinal) && l.EndsWith(" tmp", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("crw-------", StringComparison.Ordinal) && l.Contains("5,") && l.EndsWith(" dev-console", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("crw-rw-rw-", StringComparison.Ordinal) && l.EndsWith(" dev-null", StringComparison.Ordinal));
        Assert.All(lines, l => Assert.Matches(@"^\S+\s+\d+\s+root\s+root\s", l));

        var dest = t.PathOf("x");
        Directory.CreateDirectory(dest);
        var args = new List<string> { "-idm", "--quiet", "--no-absolute-filenames" };
        if (!InitramfsTemp.IsRoot) args.Add("--no-preserve-owner");
        (code, _, err) = InitramfsTemp.RunIn(dest, archive, "cpio", args.ToArray());
        // Without root, cpio cannot make device nodes; everything else must be there.
        Assert.True(code == 0 || !InitramfsTemp.IsRoot, err);
        Assert.Equal(content, File.ReadAllBytes(Path.Combine(dest, "bin/prog")));
        Assert.Equal("hello\n", File.ReadAllText(Path.Combine(dest, "etc/hello")));
        Assert.Equal(0x1EDu, Libc.LStat(Path.Combine(dest, "bin/prog"))!.Value.Permissions);
        Assert.Equal(0x100u, Libc.LStat(Path.Combine(dest, "etc/secret"))!.Value.Permissions);
        Assert.Equal("prog", Libc.ReadLink(Path.Combine(dest, "bin/sh")));
        Assert.Equal("usr/lib", Libc.ReadLink(Path.Combine(dest, "lib")));
        Assert.Equal(1_700_000_000, Libc.LStat(Path.Combine(dest, "etc/hello"))!.Value.MTimeSeconds);
        if (InitramfsTemp.IsRoot)
        {
            var dev = Libc.LStat(Path.Combine(dest, "dev-null"))!.Value;
            Assert.Equal(Libc.S_IFCHR, dev.FileType);
            Assert.Equal((1u, 3u), (dev.RDevMajor, dev.RDevMinor));
        }
    }

    [Fact]
    public void ShortStreamIsAnError()
    {
        var ms = new MemoryStream();
        using var w = new CpioWriter(ms, leaveOpen: true);
        var e = Assert.Throws<MelangeException>(() => w.WriteFile("f", 0x1A4, new MemoryStream(new byte[3]), 10));
        Assert.Equal("FileChangedWhileReading", e.ErrorId);
    }

    [Fact]
    public void TreeResolvesThroughItsLinksAndWritesParentsFirst()
    {
        var tree = new InitramfsTree();
        tree.AddSymlink("lib", "usr/lib");
        tree.AddData("lib/x86_64-linux-gnu/libc.so.6", new byte[] { 1 });
        tree.AddData("lib/modules/6.1/modules.dep", new byte[] { 2 });
        Assert.True(tree.Contains("usr/lib/x86_64-linux-gnu/libc.so.6"));
        Assert.Equal("usr/lib/modules/6.1/modules.dep", tree.Resolve("/lib/modules/6.1/modules.dep"));
        var ms = new MemoryStream();
        using (var w = new CpioWriter(ms, leaveOpen: true)) tree.WriteTo(w, CancellationToken.None);
        if (!InitramfsTemp.HasCpio) return;
        var names = InitramfsTemp.CpioList(ms.ToArray());
        Assert.Equal(".", names[0]);
        for (int i = 0; i < names.Count; i++)
        {
            var parent = Path.GetDirectoryName(names[i]);
            if (!string.IsNullOrEmpty(parent)) Assert.True(names.IndexOf(parent) is >= 0 and var p && p < i, $"{parent} after {names[i]}");
        }
    }
}
