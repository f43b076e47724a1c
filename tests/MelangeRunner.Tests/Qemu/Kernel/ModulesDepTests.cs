using System.Diagnostics;
using MelangeRunner.Qemu.Initramfs;
using MelangeRunner.Qemu.Kernel;
using Xunit;
using Xunit.Abstractions;

namespace MelangeRunner.Tests.Kernel;

/// <summary>modules.dep written from the modules' .modinfo when a dpkg -x tree has none.</summary>
public sealed class ModulesDepTests
{
    private readonly ITestOutputHelper _out;
    public ModulesDepTests(ITestOutputHelper output) => _out = output;

    private static readonly string[] GuestRoots = KernelModules.GuestModules.Select(m => m.Name).Concat(KernelModules.OnDemandModules.Select(m => m.Name)).ToArray();

    [Fact]
    public void Ensure_WritesTransitiveDependenciesInDepmodOrder()
    {
        using var tmp = new TempDir();
        string root = tmp.Combine("lib", "modules", "6.1.0-99-test");
        void Module(string rel, string name, params string[] deps)
        {
            string p = Path.Combine(root, rel);
            Directory.CreateDirectory(Path.GetDirectoryName(p)!);
            File.WriteAllBytes(p, FakeModule.Build(name, deps));
        }
        Module("kernel/fs/netfs/netfs.ko", "netfs");
        Module("kernel/fs/fscache/fscache.ko", "fscache", "netfs");
        Module("kernel/net/9p/9pnet.ko", "9pnet");
        Module("kernel/net/9p/9pnet_virtio.ko", "9pnet_virtio", "9pnet", "virtio_ring");
        Module("kernel/fs/9p/9p.ko", "9p", "9pnet", "fscache", "netfs");
        Module("kernel/drivers/virtio/virtio_ring.ko", "virtio_ring");
        var gz = KernelTestData.Gzip(FakeModule.Build("crc16"));
        Directory.CreateDirectory(Path.Combine(root, "kernel/lib"));
        File.WriteAllBytes(Path.Combine(root, "kernel/lib/crc16.ko.gz"), gz);
        File.WriteAllText(Path.Combine(root, "modules.order"), "kernel/fs/9p/9p.ko\nkernel/lib/crc16.ko\n");
        var sink = new RecordingSink();

        Assert.True(ModulesDep.Ensure(root, sink), sink.ToString());

        var lines = File.ReadAllLines(Path.Combine(root, "modules.dep"));
        Assert.Equal(7, lines.Length);
        Assert.Equal("kernel/fs/9p/9p.ko: kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko", lines[0]);
        Assert.Equal("kernel/lib/crc16.ko.gz:", lines[1]); // modules.order first, then the rest sorted
        Assert.Contains("kernel/net/9p/9pnet_virtio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/net/9p/9pnet.ko", lines);
        Assert.Contains("kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko", lines);

        // Loading right to left satisfies every dependency before its user.
        var loaded = new HashSet<string>();
        var deps = lines.ToDictionary(l => l.Split(':')[0], l => l.Split(':')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries));
        foreach (var m in deps["kernel/fs/9p/9p.ko"].Reverse())
        {
            Assert.All(deps[m], d => Assert.Contains(d, loaded));
            loaded.Add(m);
        }

        // An existing modules.dep is left alone.
        File.WriteAllText(Path.Combine(root, "modules.dep"), "kept\n");
        Assert.True(ModulesDep.Ensure(root, sink));
        Assert.Equal("kept\n", File.ReadAllText(Path.Combine(root, "modules.dep")));
    }

    [Fact]
    public void Derive_ReadsOnlyTheNeededModules_AndGivesTheLinesModulesDepWouldHave()
    {
        using var tmp = new TempDir();
        string root = FakeModuleTree.Write(tmp.Combine("lib", "modules", "6.1.0-99-test"));

        // The corrupt module is in the tree but not needed: it is never opened.
        var d = ModulesDep.Derive(root, new[] { "virtio_pci", "ext4", "9p" }, new HashSet<string>());

        Assert.Equal(new[] { "9p", "9pnet", "crc16", "ext4", "fscache", "jbd2", "mbcache", "netfs", "virtio", "virtio_pci", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_ring" },
            d.Dep.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(d.Dep.Count, d.ModulesRead);
        Assert.Equal(FakeModuleTree.Modules.Length + 1, d.FilesIndexed);
        Assert.Empty(d.Missing);
        Assert.Equal("kernel/fs/ext4/ext4.ko.xz", d.Dep["ext4"].Path);
        Assert.Equal("kernel/fs/9p/9p.ko.zst", d.Dep["9p"].Path);

        // Each line is what modules.dep written from the whole tree says (same transitive order).
        using var whole = new TempDir();
        string full = FakeModuleTree.Write(whole.Combine("lib", "modules", "6.1.0-99-test"), corrupt: false);
        var generated = KernelModules.ParseModulesDep(new StringReader(ModulesDep.Generate(full, out _)));
        foreach (var (name, entry) in d.Dep)
        {
            Assert.Equal(generated[name].Path, entry.Path);
            Assert.Equal(generated[name].Deps, entry.Deps);
        }
        // Loading right to left satisfies every dependency before its user.
        var loaded = new HashSet<string>();
        foreach (var m in d.Dep["9p"].Deps.Reverse().Select(KernelModules.NameFromPath))
        {
            Assert.All(d.Dep[m].Deps, dep => Assert.Contains(KernelModules.NameFromPath(dep), loaded));
            loaded.Add(m);
        }
    }

    [Fact]
    public void Derive_ReportsADependencyWithoutAFile_UnlessBuiltIn()
    {
        using var tmp = new TempDir();
        string root = FakeModuleTree.Write(tmp.Combine("lib", "modules", "6.1.0-99-test"), without: "virtio_ring");

        var d = ModulesDep.Derive(root, new[] { "virtio_console", "9p", "no_such_module" }, new HashSet<string>());

        Assert.Contains(("virtio_ring", "virtio_console"), d.Missing);
        Assert.Contains(("virtio_ring", "virtio"), d.Missing);
        Assert.DoesNotContain(d.Missing, m => m.NeededBy is "9p" or "fscache");
        Assert.False(d.Dep.ContainsKey("no_such_module")); // a missing root is left to the caller
        Assert.True(d.Dep.ContainsKey("virtio_console"));

        var builtIn = ModulesDep.Derive(root, new[] { "virtio_console" }, new HashSet<string> { "virtio_ring" });
        Assert.Empty(builtIn.Missing);
    }

    [Fact]
    public void Derive_NamesACorruptModuleThatIsNeeded()
    {
        using var tmp = new TempDir();
        string root = FakeModuleTree.Write(tmp.Combine("lib", "modules", "6.1.0-99-test"));
        var e = Assert.Throws<MelangeException>(() => ModulesDep.Derive(root, new[] { "i915" }, new HashSet<string>()));
        Assert.Equal("CorruptKernelModule", e.ErrorId);
        Assert.Contains(FakeModuleTree.Corrupt, e.Message);
    }

    [Fact]
    public void Derive_OnTheRealDebianTree_AgreesWithItsModulesDep()
    {
        var dir = MelangeRunner.Tests.Initramfs.KernelModuleOrderTests.FindModulesDir();
        if (dir == null) { _out.WriteLine("skipped: no kernel fetched (dotnet pwsh ./tools/Get-MelangeKernel.ps1)"); return; }
        var builtin = KernelModules.ParseBuiltin(new StreamReader(Path.Combine(dir, "modules.builtin")));
        var dep = KernelModules.ParseModulesDep(new StreamReader(Path.Combine(dir, "modules.dep")));

        var watch = Stopwatch.StartNew();
        var d = ModulesDep.Derive(dir, GuestRoots, builtin);
        _out.WriteLine($"{dir}: derived {d.Dep.Count} modules in {watch.ElapsedMilliseconds} ms ({d.ModulesRead} of {d.FilesIndexed} module files read)");

        Assert.Empty(d.Missing);
        Assert.True(d.FilesIndexed > 1000, $"{d.FilesIndexed} module files");
        Assert.Equal(d.Dep.Count, d.ModulesRead);
        // The closure of the roots in modules.dep, module by module: the same files and dependencies.
        var expected = GuestRoots.Where(dep.ContainsKey).SelectMany(r => dep[r].Deps.Select(KernelModules.NameFromPath).Append(r)).ToHashSet();
        Assert.Equal(expected.Order(StringComparer.Ordinal), d.Dep.Keys.Order(StringComparer.Ordinal));
        foreach (var (name, entry) in d.Dep)
        {
            Assert.Equal(dep[name].Path, entry.Path);
            Assert.Equal(dep[name].Deps.Order(StringComparer.Ordinal), entry.Deps.Order(StringComparer.Ordinal));
        }
        // Ordered from either source, the guest loads the same modules, each after what it needs.
        var fromDep = KernelModules.LoadOrder(dep, builtin, KernelModules.GuestModules, dir, NullEventSink.Instance);
        var fromDerived = KernelModules.LoadOrder(d.Dep, builtin, KernelModules.GuestModules, dir, NullEventSink.Instance);
        Assert.Equal(fromDep.Select(m => m.Name).Order(StringComparer.Ordinal), fromDerived.Select(m => m.Name).Order(StringComparer.Ordinal));
        var at = fromDerived.Select((m, i) => (m.Name, i)).ToDictionary(x => x.Name, x => x.i);
        foreach (var m in fromDerived)
            Assert.All(d.Dep[m.Name].Deps.Select(KernelModules.NameFromPath), x => Assert.True(at[x] < at[m.Name], $"{x} before {m.Name}"));
    }
}
