using System.Text;
using MelangeRunner.Qemu.Initramfs;
using Xunit;
using Xunit.Abstractions;

namespace MelangeRunner.Tests.Initramfs;

public class ElfResolutionTests
{
    private readonly ITestOutputHelper _out;
    public ElfResolutionTests(ITestOutputHelper output) => _out = output;

    [Theory]
    [InlineData("/usr/sbin/sshd", "openssh-server")]
    [InlineData("/bin/tar", "tar")]
    [InlineData("/sbin/mke2fs", "e2fsprogs")]
    public void ResolvesLibcAndTheLoader(string program, string package)
    {
        if (!File.Exists(program)) { _out.WriteLine($"skipped: {program} is not installed (Debian package {package})"); return; }
        var resolver = new LibraryResolver();
        var elf = resolver.GetElf(program)!;
        Assert.NotNull(elf.Interpreter);
        Assert.Contains("libc.so.6", elf.Needed);
        var closure = resolver.Resolve(new[] { program });
        _out.WriteLine(string.Join("\n", closure));
        Assert.Equal(program, closure[0]);
        Assert.Contains(elf.Interpreter, closure);
        Assert.Contains(closure, p => Path.GetFileName(p) == "libc.so.6");
        Assert.All(closure, p => Assert.True(File.Exists(p), p));
        Assert.Equal(closure.Count, closure.Distinct().Count());
        // Every library is for the same machine as the program.
        Assert.All(closure.Skip(1), p => Assert.True(resolver.GetElf(p)!.IsCompatible(elf), p));
    }

    [Fact]
    public void StaticBusyboxHasNoInterpreter()
    {
        if (!File.Exists("/bin/busybox")) { _out.WriteLine("skipped: busybox-static is not installed"); return; }
        var elf = ElfReader.Read("/bin/busybox")!;
        if (elf.Interpreter != null) { _out.WriteLine("skipped: /bin/busybox is the dynamic build"); return; }
        Assert.Empty(elf.Needed);
        Assert.Equal(new[] { "/bin/busybox" }, new LibraryResolver().Resolve(new[] { "/bin/busybox" }));
    }

    [Fact]
    public void NotElfIsNull()
    {
        using var t = new InitramfsTemp();
        File.WriteAllText(t.PathOf("script"), "#!/bin/sh\necho hi\n");
        Assert.False(ElfReader.IsElf(t.PathOf("script")));
        Assert.Null(ElfReader.Read(t.PathOf("script")));
        File.WriteAllBytes(t.PathOf("bad"), new byte[] { 0x7F, (byte)'E', (byte)'L', (byte)'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 62, 0 });
        Assert.Throws<MelangeException>(() => ElfReader.Read(t.PathOf("bad")));
    }

    [Fact]
    public void ReadsLdSoConfWithIncludes()
    {
        using var t = new InitramfsTemp();
        Directory.CreateDirectory(t.PathOf("etc/ld.so.conf.d"));
        File.WriteAllText(t.PathOf("etc/ld.so.conf"), "# comment\ninclude /etc/ld.so.conf.d/*.conf\n/opt/first\n");
        File.WriteAllText(t.PathOf("etc/ld.so.conf.d/b.conf"), "/opt/b\n");
        File.WriteAllText(t.PathOf("etc/ld.so.conf.d/a.conf"), "/opt/a # trailing comment\ninclude ../ld.so.conf\n");
        File.WriteAllText(t.PathOf("etc/ld.so.conf.d/ignored.txt"), "/opt/no\n");
        var r = new LibraryResolver(t.Root);
        Assert.Equal(new[] { "/opt/a", "/opt/b", "/opt/first" }, r.ConfigDirectories);
    }

    [Fact]
    public void FindsLibrariesThroughLinksAndLdSoConf()
    {
        // A fake root: a copy of the host's tar with its libc found through /etc/ld.so.conf in /opt/libs.
        if (!File.Exists("/bin/tar")) { _out.WriteLine("skipped: tar is not installed"); return; }
        using var t = new InitramfsTemp();
        var host = new LibraryResolver();
        var tar = host.GetElf("/bin/tar")!;
        Directory.CreateDirectory(t.PathOf("bin"));
        File.Copy("/bin/tar", t.PathOf("bin/tar"));
        Directory.CreateDirectory(t.PathOf("opt/libs"));
        Directory.CreateDirectory(t.PathOf("etc"));
        File.WriteAllText(t.PathOf("etc/ld.so.conf"), "/opt/libs\n");
        foreach (var needed in tar.Needed)
            File.Copy(host.FindLibrary(needed, "/bin/tar", tar)!, t.PathOf("opt/libs/" + needed));
        var r = new LibraryResolver(t.Root);
        Assert.Equal("/opt/libs/libc.so.6", r.FindLibrary("libc.so.6", "/bin/tar", tar));
        Assert.Null(r.FindLibrary("libnothere.so.1", "/bin/tar", tar));
    }
}

public class KernelModuleOrderTests
{
    private const string Dep = """
        kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
        kernel/drivers/virtio/virtio_ring.ko:
        kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
        kernel/drivers/virtio/virtio_pci_modern_dev.ko:
        kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
        kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
        kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
        kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
        kernel/lib/crc16.ko:
        kernel/fs/mbcache.ko:
        kernel/fs/jbd2/jbd2.ko:
        kernel/cyc/a.ko: kernel/cyc/b.ko
        kernel/cyc/b.ko: kernel/cyc/a.ko
        """;

    private static Dictionary<string, (string Path, IReadOnlyList<string> Deps)> Parse() => KernelModules.ParseModulesDep(new StringReader(Dep));

    private static void AssertDepsFirst(List<ModuleToLoad> order, Dictionary<string, (string Path, IReadOnlyList<string> Deps)> dep)
    {
        var names = order.Select(m => m.Name).ToList();
        Assert.Equal(names.Count, names.Distinct().Count());
        foreach (var m in order)
            foreach (var d in dep[m.Name].Deps)
            {
                var dn = KernelModules.NameFromPath(d);
                if (names.Contains(dn) && !(m.Name is "a" or "b")) Assert.True(names.IndexOf(dn) < names.IndexOf(m.Name), $"{dn} must come before {m.Name}");
            }
    }

    [Fact]
    public void DependenciesComeFirst()
    {
        var dep = Parse();
        var order = KernelModules.LoadOrder(dep, new HashSet<string>(), new[] { ("virtio_pci", false), ("virtio_console", false), ("virtio-rng", false), ("ext4", false) }, "/m", NullEventSink.Instance);
        AssertDepsFirst(order, dep);
        var names = order.Select(m => m.Name).ToList();
        Assert.Equal(new[] { "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_console", "virtio_rng", "jbd2", "mbcache", "crc16", "ext4" }, names);
        Assert.Equal("kernel/drivers/char/hw_random/virtio-rng.ko", order.Single(m => m.Name == "virtio_rng").RelativePath);
        Assert.All(order, m => Assert.False(m.Optional));
    }

    [Fact]
    public void DashesAndUnderscoresAreTheSame()
    {
        Assert.Equal("virtio_rng", KernelModules.NameFromPath("kernel/drivers/char/hw_random/virtio-rng.ko.zst"));
        Assert.Equal("ext4", KernelModules.NameFromPath("kernel/fs/ext4/ext4.ko.xz"));
        var order = KernelModules.LoadOrder(Parse(), new HashSet<string>(), new[] { ("virtio_rng", false), ("virtio-console", false) }, "/m", NullEventSink.Instance);
        Assert.Contains(order, m => m.Name == "virtio_console");
    }

    [Fact]
    public void CyclesDoNotHang()
    {
        var order = KernelModules.LoadOrder(Parse(), new HashSet<string>(), new[] { ("a", false) }, "/m", NullEventSink.Instance);
        Assert.Equal(new[] { "b", "a" }, order.Select(m => m.Name));
    }

    [Fact]
    public void BuiltinAndMissingModules()
    {
        var sink = new RecordingSink();
        var builtin = new HashSet<string> { "virtio_pci", "9p" };
        var order = KernelModules.LoadOrder(Parse(), builtin, new[] { ("virtio_pci", false), ("9p", false), ("overlay", true), ("virtio_console", false) }, "/m", sink);
        Assert.DoesNotContain(order, m => m.Name is "virtio_pci" or "9p" or "overlay");
        Assert.Contains(sink.Verbose, v => v.Contains("overlay"));
        var e = Assert.Throws<MelangeException>(() => KernelModules.LoadOrder(Parse(), builtin, new[] { ("9pnet_virtio", false) }, "/m", sink));
        Assert.Equal("KernelModuleMissing", e.ErrorId);
        Assert.Contains("9pnet_virtio", e.Message);
    }

    [Fact]
    public void LoadListNamesDecompressedFiles()
    {
        var order = KernelModules.LoadOrder(Parse(), new HashSet<string>(), new[] { ("ext4", false) }, "/m", NullEventSink.Instance);
        var text = KernelModules.FormatLoadList(order, "6.1.0-57-amd64");
        Assert.Contains("ext4 kernel/fs/ext4/ext4.ko required boot1\n", text);
        Assert.StartsWith("#", text);
    }

    [Fact]
    public void RealDebianModulesWhenAvailable()
    {
        var dir = FindModulesDir();
        if (dir == null) return;
        var dep = KernelModules.ParseModulesDep(new StreamReader(Path.Combine(dir, "modules.dep")));
        var builtin = File.Exists(Path.Combine(dir, "modules.builtin")) ? KernelModules.ParseBuiltin(new StreamReader(Path.Combine(dir, "modules.builtin"))) : new HashSet<string>();
        var order = KernelModules.LoadOrder(dep, builtin, KernelModules.GuestModules, dir, NullEventSink.Instance);
        AssertDepsFirst(order, dep);
        var names = order.Select(m => m.Name).ToList();
        foreach (var n in new[] { "virtio_ring", "virtio", "virtio_pci", "virtio_console", "virtio_rng", "crc32c_generic", "ext4", "virtio_blk", "virtio_net", "9pnet", "9pnet_virtio", "9p" })
            Assert.Contains(n, names);
        Assert.True(names.IndexOf("virtio_console") < names.IndexOf("ext4"));
    }

    [Fact]
    public void BootModulesSplitIntoIndependentChains()
    {
        var dep = Parse();
        var order = KernelModules.LoadOrder(dep, new HashSet<string>(), new[] { ("virtio_pci", false), ("virtio_console", false), ("ext4", false) }, "/m", NullEventSink.Instance);
        var chains = KernelModules.SplitIntoChains(order, dep, m => m.Name == "ext4" ? 2_000_000 : 50_000, 2);
        Assert.Equal(order.Select(m => m.Name).Order(), chains.Select(m => m.Name).Order());
        // ext4 and what it needs stay together, in order; no module depends on one in another chain.
        var groupOf = chains.ToDictionary(m => m.Name, m => m.Group);
        foreach (var m in chains)
            foreach (var d in dep[m.Name].Deps.Select(KernelModules.NameFromPath).Where(groupOf.ContainsKey))
                Assert.Equal(groupOf[d], m.Group);
        Assert.Equal(2, chains.Select(m => m.Group).Distinct().Count());
        Assert.All(chains, m => Assert.StartsWith(KernelModules.BootGroupPrefix, m.Group));
        AssertDepsFirst(chains.Where(m => m.Group == groupOf["ext4"]).ToList(), dep);
        // The heavy ext4 chain goes alone; the light parts share the other chain.
        Assert.Equal(new[] { "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_console" },
            chains.Where(m => m.Group != groupOf["ext4"]).Select(m => m.Name));
        Assert.Single(KernelModules.SplitIntoChains(order, dep, _ => 1, 1).Select(m => m.Group).Distinct());
    }

    [Fact]
    public void OnDemandModulesComeAfterTheBootChains()
    {
        var dep = KernelModules.ParseModulesDep(new StringReader(Dep + "\nkernel/fs/overlayfs/overlay.ko:\nkernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio_ring.ko\nkernel/fs/fuse/fuse.ko:\n"));
        var builtin = new HashSet<string> { "virtio_blk", "virtio_net", "9pnet_virtio", "9p", "virtio_rng", "crc32c_generic" };
        var list = KernelModules.GuestLoadList(dep, builtin, "/m", _ => 1000, NullEventSink.Instance);
        var demand = list.SkipWhile(m => m.Group.StartsWith(KernelModules.BootGroupPrefix, StringComparison.Ordinal)).ToList();
        Assert.Equal(new[] { ("overlay", "overlay"), ("fuse", "virtiofs"), ("virtiofs", "virtiofs") }, demand.Select(m => (m.Name, m.Group)));
        Assert.All(demand, m => Assert.True(m.Optional));
        Assert.DoesNotContain(list, m => m.Name == "virtio_ring" && !m.Group.StartsWith(KernelModules.BootGroupPrefix, StringComparison.Ordinal));
    }

    [Fact]
    public void SignaturesAreStripped()
    {
        var body = Encoding.ASCII.GetBytes("\x7fELF module body");
        var signature = new byte[] { 0x30, 0x82, 1, 2, 3, 4, 5, 6, 7 };
        var info = new byte[] { 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, (byte)signature.Length }; // PKCS#7, sig_len big-endian
        var signed = body.Concat(signature).Concat(info).Concat(Encoding.ASCII.GetBytes("~Module signature appended~\n")).ToArray();
        Assert.Equal(body, KernelModules.StripSignature(signed));
        Assert.Equal(body, KernelModules.StripSignature(body));
        Assert.True(KernelModules.ConfigForcesSignatures(new StringReader("CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_FORCE=y\n")));
        Assert.False(KernelModules.ConfigForcesSignatures(new StringReader("CONFIG_MODULE_SIG=y\n# CONFIG_MODULE_SIG_FORCE is not set\n")));
    }

    internal static string? FindModulesDir()
    {
        var candidates = new List<string>();
        foreach (var root in new[] { "/tmp/k/lib/modules", Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache/melange-runner/kernel") })
            if (Directory.Exists(root))
                candidates.AddRange(Directory.EnumerateFiles(root, "modules.dep", SearchOption.AllDirectories).Select(Path.GetDirectoryName)!);
        return candidates.Where(d => d != null && d.Contains("-amd64", StringComparison.Ordinal)).Order(StringComparer.Ordinal).LastOrDefault();
    }
}
