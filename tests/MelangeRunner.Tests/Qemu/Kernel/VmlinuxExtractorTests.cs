using MelangeRunner.Qemu.Kernel;
using Xunit;

namespace MelangeRunner.Tests.Kernel;

/// <summary>Bzimage parsing and ELF extraction on synthetic kernels (in fake cache entries: no environment needed).</summary>
public sealed class VmlinuxExtractorTests
{
    private const string VersionLine = "6.1.0-99-test (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.999-1 (2026-01-01)";

    [Fact]
    public void ReadVersion_TakesTheFirstWordOfTheKernelVersionString()
    {
        using var tmp = new TempDir();
        var elf = KernelTestData.Elf();
        string img = tmp.Combine("vmlinuz");
        File.WriteAllBytes(img, KernelTestData.BzImage(KernelTestData.Gzip(elf), (uint)elf.Length, VersionLine, appendSize: false));
        Assert.Equal("6.1.0-99-test", VmlinuxExtractor.ReadVersion(img));
    }

    [Fact]
    public void ReadVersion_NullForFilesThatAreNotBzImages()
    {
        using var tmp = new TempDir();
        string elf = tmp.Combine("vmlinux");
        File.WriteAllBytes(elf, KernelTestData.Elf());
        Assert.Null(VmlinuxExtractor.ReadVersion(elf));
        string small = tmp.Combine("small");
        File.WriteAllBytes(small, new byte[100]);
        Assert.Null(VmlinuxExtractor.ReadVersion(small));
        Assert.Null(VmlinuxExtractor.ReadVersion(tmp.Combine("missing")));
        // A header without a version pointer.
        string noVersion = tmp.Combine("nover");
        File.WriteAllBytes(noVersion, KernelTestData.BzImage(KernelTestData.Gzip(new byte[10]), 10, null, appendSize: false));
        Assert.Null(VmlinuxExtractor.ReadVersion(noVersion));
    }

    public static TheoryData<string> Formats => new() { "gzip", "zstd", "xz" };

    [Theory]
    [MemberData(nameof(Formats))]
    public void GetOrExtract_ReturnsTheElfInsideTheBzImage(string format)
    {
        var elf = KernelTestData.Elf();
        byte[]? compressed = format switch
        {
            "gzip" => KernelTestData.Gzip(elf),
            "zstd" => KernelTestData.Zstd(elf),
            _ => KernelTestData.Xz(elf),
        };
        Assert.True(compressed != null, "xz (xz-utils) is needed to make the xz test payload and to extract xz kernels");
        using var tmp = new TempDir();
        string image = KernelTestData.CacheEntry(tmp.Path, "x86_64", "6.1.0-99-test",
            KernelTestData.BzImage(compressed!, (uint)elf.Length, VersionLine, appendSize: format != "gzip"));
        var sink = new RecordingSink();

        string? result = VmlinuxExtractor.GetOrExtract(image, sink);

        Assert.True(result != null, sink.ToString());
        Assert.Equal(Path.Combine(Path.GetDirectoryName(image)!, "vmlinux-6.1.0-99-test"), result);
        Assert.Equal(elf, File.ReadAllBytes(result!));
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(image)!, "*.tmp-*"));

        // Second call: the cached file, no extraction.
        var sink2 = new RecordingSink();
        Assert.Equal(result, VmlinuxExtractor.GetOrExtract(image, sink2));
        Assert.Contains(sink2.Messages, m => m.Contains("using the cached ELF kernel"));
    }

    [Fact]
    public void GetOrExtract_ScansForThePayloadBeforeProtocol208()
    {
        var elf = KernelTestData.Elf();
        using var tmp = new TempDir();
        string image = KernelTestData.CacheEntry(tmp.Path, "x86_64", "2.6.25-old",
            KernelTestData.BzImage(KernelTestData.Gzip(elf), (uint)elf.Length, "2.6.25-old #1", appendSize: false, protocol: 0x0207));
        var sink = new RecordingSink();
        string? result = VmlinuxExtractor.GetOrExtract(image, sink);
        Assert.True(result != null, sink.ToString());
        Assert.Equal(elf, File.ReadAllBytes(result!));
    }

    [Theory]
    [InlineData(17u)]   // a Xen note, but not PHYS32_ENTRY
    [InlineData(null)]  // no Xen note at all
    public void GetOrExtract_NullForAnElfWithoutThePvhNote(uint? xenType)
    {
        var elf = KernelTestData.Elf(xenType);
        using var tmp = new TempDir();
        string image = KernelTestData.CacheEntry(tmp.Path, "x86_64", "6.1.0-99-test",
            KernelTestData.BzImage(KernelTestData.Gzip(elf), (uint)elf.Length, VersionLine, appendSize: false));
        var sink = new RecordingSink();

        Assert.Null(VmlinuxExtractor.GetOrExtract(image, sink));
        Assert.Contains(sink.Messages, m => m.Contains("PVH"));
        string dir = Path.GetDirectoryName(image)!;
        Assert.False(File.Exists(Path.Combine(dir, "vmlinux-6.1.0-99-test")));
        Assert.Empty(Directory.GetFiles(dir, "*.tmp-*"));
        // Remembered: the second call does not decompress again.
        var sink2 = new RecordingSink();
        Assert.Null(VmlinuxExtractor.GetOrExtract(image, sink2));
        Assert.Contains(sink2.Messages, m => m.Contains("not extractable before"));
    }

    [Fact]
    public void GetOrExtract_NullForACorruptPayloadOrANonKernel()
    {
        var elf = KernelTestData.Elf();
        var gz = KernelTestData.Gzip(elf);
        for (int i = 40; i < gz.Length - 20; i += 7) gz[i] ^= 0x5A;
        using var tmp = new TempDir();
        string image = KernelTestData.CacheEntry(tmp.Path, "x86_64", "6.1.0-99-test",
            KernelTestData.BzImage(gz, (uint)elf.Length, VersionLine, appendSize: false));
        Assert.Null(VmlinuxExtractor.GetOrExtract(image, new RecordingSink()));
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(image)!, "*.tmp-*"));

        string text = tmp.Combine("not-a-kernel");
        File.WriteAllText(text, new string('x', 4096));
        var sink = new RecordingSink();
        Assert.Null(VmlinuxExtractor.GetOrExtract(text, sink));
        Assert.Contains(sink.Messages, m => m.Contains("not an x86 bzImage"));
        Assert.Null(VmlinuxExtractor.GetOrExtract(tmp.Combine("missing"), new RecordingSink()));
    }

    [Fact]
    public void GetOrExtract_ReturnsAnElfKernelWithTheNoteAsItIs()
    {
        using var tmp = new TempDir();
        string path = tmp.Combine("vmlinux");
        File.WriteAllBytes(path, KernelTestData.Elf());
        Assert.Equal(path, VmlinuxExtractor.GetOrExtract(path, new RecordingSink()));
        string bad = tmp.Combine("vmlinux-nopvh");
        File.WriteAllBytes(bad, KernelTestData.Elf(null));
        Assert.Null(VmlinuxExtractor.GetOrExtract(bad, new RecordingSink()));
    }

    [Fact]
    public void VersionComparer_OrdersNumerically()
    {
        var versions = new[] { "6.9.12-1-amd64", "6.10.0-1-amd64", "6.1.0-57-amd64", "6.1.0-9-amd64" };
        var sorted = versions.OrderBy(v => v, KernelLocator.VersionComparer.Instance).ToArray();
        Assert.Equal(new[] { "6.1.0-9-amd64", "6.1.0-57-amd64", "6.9.12-1-amd64", "6.10.0-1-amd64" }, sorted);
    }
}

/// <summary>The kernel fetched by tools/Get-MelangeKernel.ps1, when there is one (reads XDG_CACHE_HOME, hence the collection).</summary>
[Collection("Environment")]
public sealed class FetchedKernelTests
{
    [RealKernelFact]
    public void ReadVersion_OnTheFetchedKernel()
    {
        var (image, version) = RealKernelFactAttribute.Find()!.Value;
        Assert.Equal(version, VmlinuxExtractor.ReadVersion(image));
    }
}

/// <summary>Runs only when tools/Get-MelangeKernel.ps1 has put an x86_64 kernel in the user's cache.</summary>
public sealed class RealKernelFactAttribute : FactAttribute
{
    public RealKernelFactAttribute()
    {
        if (Find() == null)
            Skip = $"No x86_64 kernel fetched into {KernelCache.KernelDirectory("x86_64")} (run: dotnet pwsh ./tools/Get-MelangeKernel.ps1).";
    }

    internal static (string Image, string Version)? Find()
    {
        var found = KernelLocator.FindCached("x86_64", NullEventSink.Instance);
        return found == null ? null : (found.Value.Image, found.Value.Version);
    }
}
