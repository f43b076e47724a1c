using MelangeRunner.Qemu.Kernel;
using Xunit;

namespace MelangeRunner.Tests.Kernel;

/// <summary>modules.dep written from the modules' .modinfo when a dpkg -x tree has none.</summary>
public sealed class ModulesDepTests
{
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
}
