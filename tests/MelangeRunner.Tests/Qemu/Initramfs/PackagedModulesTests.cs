using System.Text;
using MelangeRunner.Qemu.Initramfs;
using MelangeRunner.Tests.Kernel;
using Xunit;
using Xunit.Abstractions;

namespace MelangeRunner.Tests.Initramfs;

/// <summary>
/// QEMU_KERNEL_MODULES as a user has it: the lib/modules/&lt;version&gt; of an unpacked linux-image
/// package, without modules.dep (and here without the other modules.* files either).
/// </summary>
public sealed class PackagedModulesTests
{
    private readonly ITestOutputHelper _out;
    public PackagedModulesTests(ITestOutputHelper output) => _out = output;

    private const string Version = "6.1.0-99-test";

    /// <summary>An unpacked package: &lt;root&gt;/lib/modules/V and &lt;root&gt;/boot.</summary>
    private static string Package(InitramfsTemp t, string? without = null)
    {
        var modules = FakeModuleTree.Write(t.PathOf($"pkg/lib/modules/{Version}"), without);
        Directory.CreateDirectory(t.PathOf("pkg/boot"));
        return modules;
    }

    private static string Base(InitramfsTemp t)
    {
        var path = t.PathOf("base.cpio");
        using var f = File.Create(path);
        using var w = new CpioWriter(f);
        w.WriteDirectory("lib", 0x1ED);
        w.WriteDirectory("lib/modules", 0x1ED);
        w.WriteFile("init", 0x1ED, Encoding.ASCII.GetBytes("#!/bin/sh\n"));
        w.Finish();
        return path;
    }

    private static string[] Listing(string tree) =>
        Directory.EnumerateFileSystemEntries(tree, "*", SearchOption.AllDirectories).Select(p => p + ":" + File.GetLastWriteTimeUtc(p).Ticks).Order(StringComparer.Ordinal).ToArray();

    /// <summary>The names in the archive appended to the base, and the load list's lines.</summary>
    private static (List<string> Names, string[] LoadList, long AppendedBytes) Appended(InitramfsTemp t, string basePath, string path)
    {
        var all = File.ReadAllBytes(path);
        var start = (int)((new FileInfo(basePath).Length + 3) / 4 * 4);
        var names = InitramfsTemp.CpioList(all[start..]);
        var dest = t.PathOf("x");
        Directory.CreateDirectory(dest);
        var (code, _, err) = InitramfsTemp.RunIn(dest, all[start..], "cpio", "-idm", "--quiet", "--no-absolute-filenames");
        Assert.True(code == 0, err);
        var list = Path.Combine(dest, "lib/modules", Version, KernelModules.LoadListName);
        return (names, File.Exists(list) ? File.ReadAllLines(list) : Array.Empty<string>(), all.Length - start);
    }

    [Fact]
    public async Task WithoutModulesDep_OnlyTheGuestsModulesAreAppended_AndTheTreeIsNotTouched()
    {
        if (!InitramfsTemp.HasCpio) { _out.WriteLine("skipped: no cpio"); return; }
        using var t = new InitramfsTemp();
        var modules = Package(t);
        var basePath = Base(t);
        var before = Listing(t.PathOf("pkg"));
        var sink = new RecordingSink();

        var path = await InitramfsBuilder.InjectRuntimeDataAsync(basePath, new byte[] { 1 }, "ssh-ed25519 AAAA host", modules, sink, CancellationToken.None);
        try
        {
            var (names, loadList, appended) = Appended(t, basePath, path);
            _out.WriteLine(string.Join("\n", names.Concat(loadList)));
            var modulesIn = names.Where(n => n.EndsWith(".ko", StringComparison.Ordinal)).Select(n => n[n.LastIndexOf('/')..]).Order(StringComparer.Ordinal);
            // The guest's 21 boot modules and the cache's 3, stored decompressed; nothing else.
            Assert.Equal(new[] { "/9p.ko", "/9pnet.ko", "/9pnet_virtio.ko", "/crc16.ko", "/crc32c_generic.ko", "/ext4.ko", "/failover.ko", "/fscache.ko", "/fuse.ko", "/jbd2.ko",
                "/mbcache.ko", "/net_failover.ko", "/netfs.ko", "/overlay.ko", "/virtio-rng.ko", "/virtio.ko", "/virtio_blk.ko", "/virtio_console.ko", "/virtio_net.ko",
                "/virtio_pci.ko", "/virtio_pci_legacy_dev.ko", "/virtio_pci_modern_dev.ko", "/virtio_ring.ko", "/virtiofs.ko" }, modulesIn);
            Assert.DoesNotContain(names, n => n.Contains("snd") || n.Contains("e1000e") || n.Contains("i915") || n.EndsWith("modules.dep", StringComparison.Ordinal));
            Assert.Contains($"lib/modules/{Version}/{KernelModules.LoadListName}", names);
            Assert.True(appended < 64 * 1024, $"{appended} bytes appended");

            // The load list: dependencies first within each group, every module once.
            var rows = loadList.Where(l => !l.StartsWith('#')).Select(l => l.Split(' ')).ToList();
            Assert.Equal(24, rows.Count);
            Assert.Contains(rows, r => r[0] == "ext4" && r[1] == "kernel/fs/ext4/ext4.ko" && r[2] == "required" && r[3].StartsWith("boot", StringComparison.Ordinal));
            Assert.Contains(rows, r => r[0] == "9p" && r[1] == "kernel/fs/9p/9p.ko");
            Assert.Contains(rows, r => r[0] == "virtiofs" && r[2] == "optional" && r[3] == "virtiofs");
            var row = rows.Select((r, i) => (r[0], i)).ToDictionary(x => x.Item1, x => x.i);
            foreach (var (mod, deps) in FakeModuleTree.Modules.Where(m => row.ContainsKey(KernelModules.NameFromPath(m.Path))))
                foreach (var dep in deps)
                    Assert.True(row[dep] < row[KernelModules.NameFromPath(mod)], $"{dep} before {mod}");

            Assert.Contains(sink.Verbose, v => v.Contains("has no modules.dep") && v.Contains("the tree was not changed"));
        }
        finally
        {
            MelangeRunner.IO.SecureFile.Delete(path);
        }
        Assert.Equal(before, Listing(t.PathOf("pkg")));
    }

    [Fact]
    public async Task AMissingDependencyIsNamed_AndNothingIsLeftBehind()
    {
        using var t = new InitramfsTemp();
        var modules = Package(t, without: "virtio_ring");
        var before = Directory.GetFiles(Path.GetTempPath(), "melange-initramfs-*.cpio").ToHashSet();

        var e = await Assert.ThrowsAsync<MelangeException>(() => InitramfsBuilder.InjectRuntimeDataAsync(Base(t), new byte[] { 1 }, "k", modules, NullEventSink.Instance, CancellationToken.None));

        _out.WriteLine(e.Message + "\n" + e.Fix);
        Assert.Equal("KernelModuleMissing", e.ErrorId);
        Assert.Contains("kernel module virtio_ring", e.Message);
        Assert.Contains(modules, e.Message);
        Assert.Contains("QEMU_KERNEL_MODULES", e.Fix);
        Assert.DoesNotContain(Directory.GetFiles(Path.GetTempPath(), "melange-initramfs-*.cpio"), f => !before.Contains(f));
    }

    [Fact]
    public void AMissingGuestModuleIsNamed_AMissingOptionalOneIsSkipped()
    {
        using var t = new InitramfsTemp();
        var e = Assert.Throws<MelangeException>(() => InitramfsBuilder.AddModules(new InitramfsTree(), Package(t, without: "ext4"), NullEventSink.Instance, CancellationToken.None));
        Assert.Equal("KernelModuleMissing", e.ErrorId);
        Assert.Contains("ext4", e.Message);

        using var t2 = new InitramfsTemp();
        var sink = new RecordingSink();
        var (dep, _) = InitramfsBuilder.GuestModulesDep(Package(t2, without: "fuse"), Version, sink);
        Assert.False(dep.ContainsKey("virtiofs")); // it needs fuse: skipped, with a note
        Assert.Contains(sink.Verbose, v => v.Contains("virtiofs") && v.Contains("fuse") && v.Contains("optional"));
        Assert.True(dep.ContainsKey("overlay"));
    }

    [Fact]
    public void BuiltInModulesComeFromModulesBuiltinModinfo_OrTheKernelConfig()
    {
        // 9p missing as a file: fine when the kernel has it built in.
        using var t = new InitramfsTemp();
        var modules = Package(t, without: "9p");
        var e = Assert.Throws<MelangeException>(() => InitramfsBuilder.AddModules(new InitramfsTree(), modules, NullEventSink.Instance, CancellationToken.None));
        Assert.Contains("no 9p module", e.Message);
        File.WriteAllText(t.PathOf($"pkg/boot/config-{Version}"), "CONFIG_NET_9P=m\nCONFIG_9P_FS=y\n# CONFIG_OVERLAY_FS is not set\n");
        var (dep, builtin) = InitramfsBuilder.GuestModulesDep(modules, Version, NullEventSink.Instance);
        Assert.Equal(new[] { "9p" }, builtin);
        Assert.False(dep.ContainsKey("9p"));
        Assert.True(dep.ContainsKey("9pnet_virtio"));
        var tree = new InitramfsTree();
        InitramfsBuilder.AddModules(tree, modules, NullEventSink.Instance, CancellationToken.None);

        using var t2 = new InitramfsTemp();
        var other = Package(t2, without: "virtio_console");
        File.WriteAllBytes(Path.Combine(other, "modules.builtin.modinfo"), Encoding.ASCII.GetBytes("virtio_console.file=drivers/char/virtio_console\0virtio_console.license=GPL\0"));
        Assert.Contains("virtio_console", InitramfsBuilder.BuiltinModules(other, Version, NullEventSink.Instance));
        InitramfsBuilder.AddModules(new InitramfsTree(), other, NullEventSink.Instance, CancellationToken.None);
    }

    [Fact]
    public async Task TheTreeTheBaseWasBuiltWithIsNotAppendedAgain()
    {
        if (!InitramfsTemp.HasCpio) { _out.WriteLine("skipped: no cpio"); return; }
        using var t = new InitramfsTemp();
        var modules = Package(t);
        var basePath = Base(t);
        var path = await InitramfsBuilder.InjectRuntimeDataAsync(basePath, new byte[] { 1 }, "k", modules + "/", modules, NullEventSink.Instance, CancellationToken.None);
        try
        {
            var (names, _, _) = Appended(t, basePath, path);
            Assert.Equal(new[] { "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub" }, names);
        }
        finally
        {
            MelangeRunner.IO.SecureFile.Delete(path);
        }
    }

    [Fact]
    public void TheBaseCacheKeyFollowsTheNeededModulesWhenThereIsNoModulesDep()
    {
        try { InitramfsBuilder.FindTools(); }
        catch (MelangeException e) { _out.WriteLine("skipped: " + e.Message); return; }
        using var t = new InitramfsTemp();
        var modules = Package(t);
        string Stamp() => InitramfsBuilder.CacheInputsFor("x86_64", modules, Array.Empty<string>(), NullEventSink.Instance).ModulesStamp!;
        var first = Stamp();
        File.SetLastWriteTimeUtc(Path.Combine(modules, "kernel/sound/core/snd.ko"), DateTime.UtcNow.AddHours(-3));
        Assert.Equal(first, Stamp()); // not the guest's
        File.SetLastWriteTimeUtc(Path.Combine(modules, "kernel/fs/ext4/ext4.ko.xz"), DateTime.UtcNow.AddHours(-3));
        Assert.NotEqual(first, Stamp());
        File.Delete(Path.Combine(modules, "kernel/fs/jbd2/jbd2.ko.xz"));
        var missing = Assert.Throws<MelangeException>(Stamp); // fails before anything is built
        Assert.Contains("jbd2", missing.Message);
    }

    [Fact]
    public void AnInitramfsTooLargeForTheGuestIsRefused_NamingBothSizes()
    {
        using var t = new InitramfsTemp();
        var path = t.PathOf("big.cpio");
        using (var f = File.Create(path))
        {
            f.Write("070701"u8);
            f.SetLength(402L << 20); // sparse: the size of the whole package's tree appended
        }
        // Measured: this size boots in 1536 MiB and runs out of its RAM file system in 1280 MiB.
        Assert.Equal(402L << 20, InitramfsBuilder.CheckFitsInMemory(path, 1536 * 1024));
        var e = Assert.Throws<MelangeException>(() => InitramfsBuilder.CheckFitsInMemory(path, 1280 * 1024));
        _out.WriteLine(e.Message + "\n" + e.Fix);
        Assert.Equal("InitramfsTooLarge", e.ErrorId);
        Assert.Equal(ErrorKind.ResourceUnavailable, e.Kind);
        Assert.Contains("402 MiB", e.Message);
        Assert.Contains("1280 MiB", e.Message);
        Assert.Contains("-Memory", e.Fix);
        Assert.Equal(path, e.Target);
        Assert.Contains("402 MiB for 1280 MiB", InitramfsBuilder.DescribeFit(402L << 20, 1280 * 1024));
    }
}
