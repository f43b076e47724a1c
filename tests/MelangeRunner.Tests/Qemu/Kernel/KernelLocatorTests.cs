using MelangeRunner.Qemu.Kernel;
using Xunit;

namespace MelangeRunner.Tests.Kernel;

/// <summary>
/// KernelLocator's precedence (QEMU_KERNEL_IMAGE, /boot/vmlinuz, the fetched cache) with a
/// temporary XDG_CACHE_HOME; /boot/vmlinuz and the host's module trees are pointed at temp paths.
/// </summary>
[Collection("Environment")]
public sealed class KernelLocatorTests : IDisposable
{
    private const string VersionLine = "6.1.0-99-test (debian-kernel@lists.debian.org) #1 SMP Debian 6.1.999-1";
    private readonly TempDir _tmp = new();
    private readonly EnvScope _env = new();
    private readonly string _savedBoot = KernelLocator.BootKernelPath;
    private readonly string[] _savedRoots = KernelLocator.HostModuleRoots;

    public KernelLocatorTests()
    {
        _env.Set("XDG_CACHE_HOME", _tmp.Combine("cache")).Set("QEMU_KERNEL_IMAGE", null).Set("QEMU_KERNEL_MODULES", null);
        KernelLocator.BootKernelPath = _tmp.Combine("boot", "vmlinuz");
        KernelLocator.HostModuleRoots = new[] { _tmp.Combine("lib", "modules") };
    }

    public void Dispose()
    {
        KernelLocator.BootKernelPath = _savedBoot;
        KernelLocator.HostModuleRoots = _savedRoots;
        _env.Dispose();
        _tmp.Dispose();
    }

    private static byte[] BzImage(out byte[] elf)
    {
        elf = KernelTestData.Elf();
        return KernelTestData.BzImage(KernelTestData.Gzip(elf), (uint)elf.Length, VersionLine, appendSize: false);
    }

    private string CacheRoot => Path.Combine(_tmp.Combine("cache"), "melange-runner");

    [Fact]
    public void KernelImageVariable_MissingFile_IsAnErrorNamingTheVariable()
    {
        string missing = _tmp.Combine("no", "such", "vmlinuz");
        _env.Set("QEMU_KERNEL_IMAGE", missing);
        KernelTestData.CacheEntry(CacheRoot, "x86_64", "6.1.0-99-test", BzImage(out _)); // not used: the variable wins

        var e = Assert.Throws<MelangeException>(() => KernelLocator.Locate("x86_64", new RecordingSink()));
        Assert.Equal("KernelImageNotFound", e.ErrorId);
        Assert.Equal(ErrorKind.ObjectNotFound, e.Kind);
        Assert.Contains("QEMU_KERNEL_IMAGE", e.Message);
        Assert.Contains(missing, e.Message);
        Assert.NotNull(e.Fix);
    }

    [Fact]
    public void KernelImageVariable_Directory_IsAnError()
    {
        _env.Set("QEMU_KERNEL_IMAGE", _tmp.Path);
        var e = Assert.Throws<MelangeException>(() => KernelLocator.Locate("x86_64", new RecordingSink()));
        Assert.Contains("QEMU_KERNEL_IMAGE", e.Message);
        Assert.Contains("directory", e.Message);
    }

    [Fact]
    public void KernelImageVariable_ExistingFile_IsUsedAndItsElfExtractedIntoTheVmlinuxCache()
    {
        // A dpkg -x style tree: <tree>/boot/vmlinuz-V and <tree>/lib/modules/V.
        string tree = _tmp.Combine("tree");
        Directory.CreateDirectory(Path.Combine(tree, "boot"));
        Directory.CreateDirectory(Path.Combine(tree, "lib", "modules", "6.1.0-99-test"));
        File.WriteAllText(Path.Combine(tree, "lib", "modules", "6.1.0-99-test", "modules.dep"), "");
        string image = Path.Combine(tree, "boot", "vmlinuz-6.1.0-99-test");
        File.WriteAllBytes(image, BzImage(out var elf));
        File.WriteAllBytes(KernelLocator.BootKernelPath = _tmp.Combine("vmlinuz-host"), BzImage(out _)); // not used: the variable wins
        _env.Set("QEMU_KERNEL_IMAGE", image);

        var k = KernelLocator.Locate("x86_64", new RecordingSink());

        Assert.Equal("QEMU_KERNEL_IMAGE", k.Source);
        Assert.Equal(image, k.ImagePath);
        Assert.Equal("6.1.0-99-test", k.Version);
        Assert.True(k.IsElf);
        Assert.StartsWith(Path.Combine(CacheRoot, "vmlinux") + "/", k.BootPath);
        Assert.EndsWith(".elf", k.BootPath);
        Assert.Equal(elf, File.ReadAllBytes(k.BootPath));
        Assert.Equal(Path.Combine(tree, "lib", "modules", "6.1.0-99-test"), k.ModulesDir);
    }

    [Fact]
    public void AnUnpackedPackage_WithoutModulesDep_IsNotWrittenTo()
    {
        // dpkg -x of linux-image-V: boot/vmlinuz-V and lib/modules/V with no modules.dep (postinst would run depmod).
        string tree = _tmp.Combine("pkg");
        string modules = FakeModuleTree.Write(Path.Combine(tree, "lib", "modules", "6.1.0-99-test"));
        Directory.CreateDirectory(Path.Combine(tree, "boot"));
        string image = Path.Combine(tree, "boot", "vmlinuz-6.1.0-99-test");
        File.WriteAllBytes(image, BzImage(out _));
        _env.Set("QEMU_KERNEL_IMAGE", image);

        var k = KernelLocator.Locate("x86_64", new RecordingSink());

        Assert.Equal(modules, k.ModulesDir);
        Assert.False(File.Exists(Path.Combine(modules, "modules.dep")));
    }

    [Fact]
    public void KernelModulesVariable_IsTheModulesTree_AndAVersionMismatchIsWarned()
    {
        string modules = _tmp.Combine("elsewhere", "lib", "modules", "6.1.0-99-test");
        Directory.CreateDirectory(modules);
        Directory.CreateDirectory(_tmp.Combine("lib", "modules", "6.1.0-99-test")); // the host's: not used, the variable wins
        KernelTestData.CacheEntry(CacheRoot, "x86_64", "6.1.0-99-test", BzImage(out _));
        _env.Set("QEMU_KERNEL_MODULES", modules + "/");

        var k = KernelLocator.Locate("x86_64", new RecordingSink());
        Assert.Equal(modules, k.ModulesDir);

        string other = _tmp.Combine("other", "6.2.0-1-test");
        Directory.CreateDirectory(other);
        _env.Set("QEMU_KERNEL_MODULES", other);
        var sink = new RecordingSink();
        Assert.Equal(other, KernelLocator.Locate("x86_64", sink).ModulesDir);
        Assert.Contains(sink.Messages, m => m.StartsWith("WARNING: ", StringComparison.Ordinal) && m.Contains("6.1.0-99-test") && m.Contains(other));

        // Not a directory: not the modules tree (the initramfs reports it).
        _env.Set("QEMU_KERNEL_MODULES", _tmp.Combine("no-such-dir"));
        Assert.NotEqual(_tmp.Combine("no-such-dir"), KernelLocator.Locate("x86_64", new RecordingSink()).ModulesDir);
    }

    [Fact]
    public void BootVmlinuz_IsUsedWhenTheVariableIsUnset_WithTheHostModules()
    {
        Directory.CreateDirectory(_tmp.Combine("boot"));
        File.WriteAllBytes(KernelLocator.BootKernelPath, BzImage(out _));
        Directory.CreateDirectory(_tmp.Combine("lib", "modules", "6.1.0-99-test"));
        File.WriteAllText(_tmp.Combine("lib", "modules", "6.1.0-99-test", "modules.dep"), "");
        KernelTestData.CacheEntry(CacheRoot, "x86_64", "6.2.0-1-test", BzImage(out _)); // not used: /boot wins

        var k = KernelLocator.Locate("x86_64", new RecordingSink());

        Assert.Equal("/boot/vmlinuz", k.Source);
        Assert.Equal(KernelLocator.BootKernelPath, k.ImagePath);
        Assert.Equal(_tmp.Combine("lib", "modules", "6.1.0-99-test"), k.ModulesDir);
    }

    [Fact]
    public void Cache_TheNewestCompleteEntryIsUsed()
    {
        KernelTestData.CacheEntry(CacheRoot, "x86_64", "6.9.12-1-amd64", BzImage(out _));
        string newest = KernelTestData.CacheEntry(CacheRoot, "x86_64", "6.10.0-2-amd64", BzImage(out var elf));
        KernelTestData.CacheEntry(CacheRoot, "x86_64", "6.11.0-1-amd64", BzImage(out _), marker: false); // incomplete fetch
        KernelTestData.CacheEntry(CacheRoot, "aarch64", "6.12.0-1-arm64", BzImage(out _));              // another arch
        var sink = new RecordingSink();

        var k = KernelLocator.Locate("amd64", sink); // OCI names are accepted

        Assert.Equal("cache", k.Source);
        Assert.Equal(newest, k.ImagePath);
        Assert.Equal("6.1.0-99-test", k.Version); // the header is what counts
        Assert.True(k.IsElf);
        Assert.Equal(Path.Combine(Path.GetDirectoryName(newest)!, "vmlinux-6.10.0-2-amd64"), k.BootPath);
        Assert.Equal(elf, File.ReadAllBytes(k.BootPath));
        Assert.Contains(sink.Messages, m => m.Contains("incomplete fetch"));
    }

    [Fact]
    public void Cache_ModulesDirMatchesTheVersion()
    {
        string image = KernelTestData.CacheEntry(CacheRoot, "x86_64", "6.1.0-99-test", BzImage(out _));
        var k = KernelLocator.Locate("x86_64", new RecordingSink());
        Assert.Equal(Path.Combine(CacheRoot, "kernel", "x86_64", "6.1.0-99-test", "lib", "modules", "6.1.0-99-test"), k.ModulesDir);
        Assert.Equal(image, k.ImagePath);
    }

    [Fact]
    public void Cache_Aarch64ImageIsBootedAsIs()
    {
        byte[] image = new byte[8192];
        "ARMd"u8.CopyTo(image.AsSpan(0x38)); // arm64 Image magic
        string path = KernelTestData.CacheEntry(CacheRoot, "aarch64", "6.1.0-99-arm64", image);

        var k = KernelLocator.Locate("aarch64", new RecordingSink());

        Assert.Equal(path, k.BootPath);
        Assert.Equal(path, k.ImagePath);
        Assert.False(k.IsElf);
        Assert.Equal("6.1.0-99-arm64", k.Version); // from the cache metadata
        Assert.Equal("cache", k.Source);
    }

    [Fact]
    public void BootVmlinuz_IsNotUsedForAForeignArchitecture()
    {
        Directory.CreateDirectory(_tmp.Combine("boot"));
        File.WriteAllBytes(KernelLocator.BootKernelPath, BzImage(out _));
        string foreign = MelangeRunner.Images.Architecture.Host == "aarch64" ? "x86_64" : "aarch64";
        var e = Assert.Throws<MelangeException>(() => KernelLocator.Locate(foreign, new RecordingSink()));
        Assert.Equal("KernelNotFound", e.ErrorId);
    }

    [Fact]
    public void NothingAnywhere_IsKernelNotFoundWithTheFetchCommand()
    {
        var e = Assert.Throws<MelangeException>(() => KernelLocator.Locate("x86_64", new RecordingSink()));
        Assert.Equal("KernelNotFound", e.ErrorId);
        Assert.Equal(ErrorKind.NotInstalled, e.Kind);
        Assert.Equal("Run: dotnet pwsh ./tools/Get-MelangeKernel.ps1, or set QEMU_KERNEL_IMAGE to a kernel image", e.Fix);
        Assert.Contains("QEMU_KERNEL_IMAGE", e.Message);
    }

    [Fact]
    public void KernelCacheRoot_FollowsXdgCacheHome()
    {
        Assert.Equal(CacheRoot, KernelCache.Root);
        _env.Set("XDG_CACHE_HOME", "relative/ignored");
        Assert.Equal(Path.Combine(Environment.GetEnvironmentVariable("HOME")!, ".cache", "melange-runner"), KernelCache.Root);
    }
}
