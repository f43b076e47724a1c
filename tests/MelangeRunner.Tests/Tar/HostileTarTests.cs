using System.Formats.Tar;
using MelangeRunner.Native;
using MelangeRunner.Tar;
using Xunit;

namespace MelangeRunner.Tests.Tar;

/// <summary>
/// The hostile corpus: each case tries to write outside the destination. Layout per test:
/// root/dest (the destination), root/sentinel (must stay empty), root/outside/victim (must
/// stay unchanged), and /tmp/evil-&lt;id&gt; (must never appear).
/// </summary>
public class HostileTarTests
{
    public static readonly string Evil = "/tmp/evil-" + Guid.NewGuid().ToString("N")[..8];

    // name → (tar builder, the entry the warning must name or null when no warning is expected)
    private static readonly Dictionary<string, (Action<TarWriter> Build, string? Warned)> CaseTable = new()
    {
        ["absolute"] = (w => w.File(Evil, "x"), Evil),
        ["dotdot"] = (w => w.File("../sentinel/evil", "x"), "../sentinel/evil"),
        ["dotdot-inner"] = (w => w.File("a/../../sentinel/evil", "x"), "a/../../sentinel/evil"),
        ["dotdot-deep"] = (w => { w.Dir("a/b"); w.File("a/b/../../../sentinel/evil", "x"); }, "a/b/../../../sentinel/evil"),
        ["symlink-root-then-write"] = (w => { w.Symlink("link", "/"); w.File("link" + Evil, "x"); }, "link" + Evil),
        ["symlink-outside-then-write"] = (w => { w.Symlink("link", "../sentinel"); w.File("link/evil", "x"); }, "link/evil"),
        ["symlink-chain"] = (w => { w.Symlink("b", "../sentinel"); w.Symlink("a", "b"); w.File("a/evil", "x"); }, "a/evil"),
        ["symlink-dir-then-mkdir"] = (w => { w.Symlink("link", "../sentinel"); w.Dir("link/sub"); }, "link/sub"),
        ["hardlink-absolute"] = (w => w.HardLink("passwd", "/etc/passwd"), "passwd"),
        ["hardlink-dotdot"] = (w => w.HardLink("victim", "../outside/victim"), "victim"),
        ["hardlink-through-symlink"] = (w => { w.Symlink("l", "../outside"); w.HardLink("h", "l/victim"); }, "h"),
        ["hardlink-then-write"] = (w => { w.Symlink("l", "../outside"); w.HardLink("h", "l/victim"); w.File("h", "overwritten"); }, "h"),
        ["symlink-replaces-dir-then-write"] = (w => { w.Dir("d"); w.File("d/ok", "ok"); w.Symlink("d", "../sentinel"); w.File("d/evil", "x"); }, "d/evil"),
        ["symlink-over-file-then-file"] = (w => { w.Symlink("f", "../outside/victim"); w.File("f", "overwritten"); }, null),
        ["dir-mode-then-symlink"] = (w => { w.Dir("x", (UnixFileMode)0x1FF); w.Symlink("x", "../outside"); }, null),
        ["symlink-then-dir-entry-through-it"] = (w => { w.Symlink("etc", "/etc"); w.Dir("etc/cron.d", (UnixFileMode)0x1FF); w.File("etc/cron.d/evil", "x"); }, "etc/cron.d"),
        ["device-node"] = (w => w.WriteEntry(new PaxTarEntry(TarEntryType.BlockDevice, "dev/sda") { DeviceMajor = 8, DeviceMinor = 0 }), TarTestUtil.IsRoot ? null : "dev/sda"),
    };

    public static IEnumerable<object[]> Cases => CaseTable.Keys.Select(k => new object[] { k });

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task NothingLandsOutside(string name)
    {
        var (build, warned) = CaseTable[name];
        using var t = new TempTree();
        string dest = t.Dir("dest");
        string sentinel = t.Dir("sentinel");
        string outside = t.Dir("outside");
        string victim = Path.Combine(outside, "victim");
        File.WriteAllText(victim, "original");
        Libc.Chmod(victim, 0x1A4);
        Libc.Chmod(outside, 0x1ED);

        var sink = new CollectingSink();
        var tar = TarTestUtil.BuildTar(build);
        await SafeTarExtractor.ExtractAsync(new MemoryStream(tar), dest, new TarExtractOptions(), sink, CancellationToken.None);

        if (warned != null)
            Assert.Contains(sink.Warnings, w => w.Contains($"'{warned}'"));
        Assert.Empty(Directory.GetFileSystemEntries(sentinel));
        Assert.Equal(new[] { victim }, Directory.GetFileSystemEntries(outside));
        Assert.Equal("original", File.ReadAllText(victim));
        var vs = Libc.LStat(victim)!.Value;
        Assert.Equal(1u, vs.LinkCount);
        Assert.Equal(0x1A4u, vs.Permissions);
        Assert.Equal(0x1EDu, Libc.LStat(outside)!.Value.Permissions);
        Assert.False(File.Exists(Evil));
        Assert.False(File.Exists("/etc/cron.d/evil"));
        Assert.False(File.Exists("/passwd"));
    }

    [Fact]
    public async Task WhiteoutsCannotDeleteOutside()
    {
        using var t = new TempTree();
        string dest = t.Dir("dest");
        string outside = t.Dir("outside");
        File.WriteAllText(Path.Combine(outside, "victim"), "original");
        var tar = TarTestUtil.BuildTar(w =>
        {
            w.Symlink("l", "../outside");
            w.File("l/.wh.victim", "");
            w.File("l/.wh..wh..opq", "");
            w.File("../outside/.wh.victim", "");
        });
        await SafeTarExtractor.ExtractAsync(new MemoryStream(tar), dest, new TarExtractOptions { ApplyWhiteouts = true }, new CollectingSink(), CancellationToken.None);
        Assert.Equal("original", File.ReadAllText(Path.Combine(outside, "victim")));
    }
}
