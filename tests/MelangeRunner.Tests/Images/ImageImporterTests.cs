using System.Formats.Tar;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text.Json;
using MelangeRunner.Images;
using MelangeRunner.Native;
using MelangeRunner.Tar;
using MelangeRunner.Tests.Tar;
using Xunit;

namespace MelangeRunner.Tests.Images;

public class ImageImporterTests
{
    private static byte[] Gzip(byte[] data)
    {
        var ms = new MemoryStream();
        using (var z = new GZipStream(ms, CompressionLevel.Fastest, leaveOpen: true)) z.Write(data);
        return ms.ToArray();
    }

    /// <summary>Compresses with the system tool (zstd, xz, bzip2).</summary>
    private static byte[] Tool(string tool, byte[] data, TempTree t)
    {
        string p = t.PathOf("in-" + Guid.NewGuid().ToString("N")[..6]);
        File.WriteAllBytes(p, data);
        TarTestUtil.MustRun(tool, "-q", "-k", p);
        string ext = tool switch { "zstd" => ".zst", "xz" => ".xz", _ => ".bz2" };
        return File.ReadAllBytes(p + ext);
    }

    private static readonly byte[] BaseLayer = TarTestUtil.BuildTar(w =>
    {
        w.Dir("etc");
        w.File("etc/os-release", "ID=test");
        w.File("etc/removed", "gone soon");
        w.File("keep/file", "kept");
        w.Dir("opq", (UnixFileMode)0x1C0);
        w.File("opq/lower1", "lower");
        w.File("opq/sub/lower2", "lower");
        w.File("dir-to-file/x", "x");
        w.File("bin/busybox", "bb", (UnixFileMode)0x1ED);
        w.HardLink("bin/sh", "bin/busybox");
        w.File("etc/.wh.never-written-alone", ""); // a whiteout in the lowest layer hides nothing and is not written
    });

    private static readonly byte[] UpperLayer = TarTestUtil.BuildTar(w =>
    {
        w.File("etc/.wh.removed", "");
        w.Dir("opq", (UnixFileMode)0x1ED);
        w.File("opq/upper", "upper");
        w.File("opq/.wh..wh..opq", "");
        w.File("dir-to-file", "now a file");
        w.File("new/file", "new");
    });

    private static readonly byte[] ArmLayer = TarTestUtil.BuildTar(w => w.File("arch", "arm64"));

    private static readonly string[] ExpectedAmd64 =
    {
        "bin", "bin/busybox", "bin/sh", "dir-to-file", "etc", "etc/os-release", "keep", "keep/file", "new", "new/file", "opq", "opq/upper",
    };

    private sealed class Oci
    {
        public readonly string Dir;
        public Oci(string dir) { Dir = dir; Directory.CreateDirectory(Path.Combine(dir, "blobs/sha256")); }

        public (string Digest, long Size) Blob(byte[] data)
        {
            string hex = Convert.ToHexString(SHA256.HashData(data)).ToLowerInvariant();
            File.WriteAllBytes(Path.Combine(Dir, "blobs/sha256", hex), data);
            return ("sha256:" + hex, data.Length);
        }

        public (string Digest, long Size) Json(object o) => Blob(JsonSerializer.SerializeToUtf8Bytes(o));

        public object Manifest(string arch, params byte[][] layers)
        {
            var cfg = Json(new { architecture = arch, os = "linux", rootfs = new { type = "layers" }, config = new { Env = new[] { "PATH=/opt/" + arch + "/bin:/usr/bin", "LANG=C.UTF-8", "not-a-variable" } } });
            var ls = layers.Select(l => { var b = Blob(l); return new { mediaType = "application/vnd.oci.image.layer.v1.tar+gzip", digest = b.Digest, size = b.Size }; }).ToArray();
            var m = Json(new { schemaVersion = 2, mediaType = "application/vnd.oci.image.manifest.v1+json", config = new { mediaType = "application/vnd.oci.image.config.v1+json", digest = cfg.Digest, size = cfg.Size }, layers = ls });
            return new { mediaType = "application/vnd.oci.image.manifest.v1+json", digest = m.Digest, size = m.Size, platform = new { architecture = arch, os = "linux" } };
        }

        public void Index(params object[] manifests)
        {
            File.WriteAllText(Path.Combine(Dir, "oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}");
            File.WriteAllBytes(Path.Combine(Dir, "index.json"), JsonSerializer.SerializeToUtf8Bytes(new { schemaVersion = 2, mediaType = "application/vnd.oci.image.index.v1+json", manifests }));
        }
    }

    private static string MakeLayout(TempTree t)
    {
        var oci = new Oci(t.PathOf("layout"));
        var upperZstd = Tool("zstd", UpperLayer, t);
        oci.Index(oci.Manifest("amd64", Gzip(BaseLayer), upperZstd), oci.Manifest("arm64", ArmLayer));
        return oci.Dir;
    }

    private static List<string> Paths(string root) =>
        TarTestUtil.Describe(root).Select(l => l[..l.IndexOf(' ')]).ToList();

    [Theory]
    [InlineData("none")]
    [InlineData("gzip")]
    [InlineData("zstd")]
    [InlineData("xz")]
    [InlineData("bzip2")]
    public async Task SingleLayerEachCompression(string compression)
    {
        using var t = new TempTree();
        byte[] data = compression switch
        {
            "none" => BaseLayer,
            "gzip" => Gzip(BaseLayer),
            "zstd" => Tool("zstd", BaseLayer, t),
            "xz" => Tool("xz", BaseLayer, t),
            _ => Tool("bzip2", BaseLayer, t),
        };
        string file = t.PathOf("layer.bin"); // the name says nothing: detection is by content
        File.WriteAllBytes(file, data);
        string guest = t.Dir("guest");
        var sink = new CollectingSink();
        var info = await ImageImporter.ExtractAsync(file, null, guest, sink, CancellationToken.None);
        Assert.Equal(compression == "none" ? "layer-tar" : "layer-tar+" + compression, info.Kind);
        Assert.Equal(Architecture.Host, info.Arch);
        Assert.Equal("ID=test", File.ReadAllText(Path.Combine(guest, "etc/os-release")));
        Assert.False(File.Exists(Path.Combine(guest, "etc/.wh.never-written-alone")));
        Assert.NotEmpty(sink.Reports);
        Assert.Equal(data.Length, sink.Reports[^1].Done);
        Assert.Equal(data.Length, sink.Reports[^1].Total);
    }

    [Fact]
    public void NativeAndManagedZstdAgree()
    {
        using var t = new TempTree();
        var big = new byte[3 << 20];
        new Random(1).NextBytes(big.AsSpan(0, 1 << 20));
        var z = Tool("zstd", big, t);
        using var managed = new SharpCompress.Compressors.ZStandard.DecompressionStream(new MemoryStream(z), 1 << 20, true, false);
        var a = new MemoryStream(); managed.CopyTo(a);
        Assert.Equal(big, a.ToArray());
        if (ZstdNativeStream.IsAvailable)
        {
            using var native = new ZstdNativeStream(new MemoryStream(z));
            var b = new MemoryStream(); native.CopyTo(b);
            Assert.Equal(big, b.ToArray());
            using var cut = new ZstdNativeStream(new MemoryStream(z[..(z.Length / 2)]));
            Assert.Throws<InvalidDataException>(() => cut.CopyTo(Stream.Null));
        }
    }

    [Fact]
    public async Task OciLayoutAppliesLayersAndWhiteouts()
    {
        using var t = new TempTree();
        string layout = MakeLayout(t);
        string guest = t.Dir("guest");
        var sink = new CollectingSink();
        var info = await ImageImporter.ExtractAsync(layout, "x86_64", guest, sink, CancellationToken.None);
        Assert.Equal(("oci-layout", "x86_64"), (info.Kind, info.Arch));
        Assert.Equal(new[] { "PATH=/opt/amd64/bin:/usr/bin", "LANG=C.UTF-8" }, info.Env); // the chosen image's config; not K=V skipped
        Assert.Empty(sink.Warnings);
        Assert.Equal(ExpectedAmd64, Paths(guest));
        Assert.Equal("now a file", File.ReadAllText(Path.Combine(guest, "dir-to-file")));
        Assert.Equal(0x1EDu, Libc.LStat(Path.Combine(guest, "opq"))!.Value.Permissions);
        Assert.Equal(Libc.LStat(Path.Combine(guest, "bin/busybox"))!.Value.Inode, Libc.LStat(Path.Combine(guest, "bin/sh"))!.Value.Inode);
    }

    [Fact]
    public async Task OciLayoutSelectsArchitectureOrListsThem()
    {
        using var t = new TempTree();
        string layout = MakeLayout(t);
        string guest = t.Dir("guest");
        var info = await ImageImporter.ExtractAsync(layout, "arm64", guest, NullEventSink.Instance, CancellationToken.None);
        Assert.Equal("aarch64", info.Arch);
        Assert.Equal(new[] { "arch" }, Paths(guest));
        var ex = await Assert.ThrowsAsync<MelangeException>(() => ImageImporter.ExtractAsync(layout, "s390x", t.Dir("g2"), NullEventSink.Instance, CancellationToken.None));
        Assert.Equal("ArchitectureNotFound", ex.ErrorId);
        Assert.Contains("x86_64", ex.Message);
        Assert.Contains("aarch64", ex.Message);
        var bad = await Assert.ThrowsAsync<MelangeException>(() => ImageImporter.ExtractAsync(layout, "pdp11", t.Dir("g3"), NullEventSink.Instance, CancellationToken.None));
        Assert.Equal(ErrorKind.InvalidArgument, bad.Kind);
    }

    [Fact]
    public async Task OciArchive()
    {
        using var t = new TempTree();
        string layout = MakeLayout(t);
        string archive = t.PathOf("image.tar");
        TarFile.CreateFromDirectory(layout, archive, includeBaseDirectory: false);
        string guest = t.Dir("guest");
        var info = await ImageImporter.ExtractAsync(archive, "amd64", guest, NullEventSink.Instance, CancellationToken.None);
        Assert.Equal("oci-archive", info.Kind);
        Assert.Equal(ExpectedAmd64, Paths(guest));
    }

    private static string MakeDockerArchive(TempTree t, bool gzip)
    {
        string dir = t.Dir("docker");
        string Put(string name, byte[] data) { string p = Path.Combine(dir, name); Directory.CreateDirectory(Path.GetDirectoryName(p)!); File.WriteAllBytes(p, data); return name; }
        string h1 = new string('a', 64), h2 = new string('b', 64), h3 = new string('c', 64);
        var cfg = Put(h3 + ".json", JsonSerializer.SerializeToUtf8Bytes(new { architecture = "amd64", os = "linux", config = new { Env = new[] { "PATH=/usr/local/bin:/usr/bin:/bin", "CC=gcc" } } }));
        var l1 = Put(h1 + "/layer.tar", BaseLayer);
        var l2 = Put(h2 + "/layer.tar", UpperLayer);
        Put("manifest.json", JsonSerializer.SerializeToUtf8Bytes(new[] { new { Config = cfg, RepoTags = new[] { "test:latest" }, Layers = new[] { l1, l2 } } }));
        string archive = t.PathOf("docker.tar");
        TarTestUtil.MustRun("tar", "-C", dir, "-cf", archive, "manifest.json", cfg, h1, h2);
        if (!gzip) return archive;
        File.WriteAllBytes(archive + ".gz", Gzip(File.ReadAllBytes(archive)));
        return archive + ".gz";
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task DockerSaveArchive(bool gzip)
    {
        using var t = new TempTree();
        string archive = MakeDockerArchive(t, gzip);
        string guest = t.Dir("guest");
        var info = await ImageImporter.ExtractAsync(archive, null, guest, NullEventSink.Instance, CancellationToken.None);
        Assert.Equal("docker-archive", info.Kind);
        Assert.Equal(new[] { "PATH=/usr/local/bin:/usr/bin:/bin", "CC=gcc" }, info.Env);
        Assert.Equal(ExpectedAmd64, Paths(guest));
        Assert.DoesNotContain(Directory.GetDirectories(t.Root), d => Path.GetFileName(d).StartsWith(".melange-import-"));
        var ex = await Assert.ThrowsAsync<MelangeException>(() => ImageImporter.ExtractAsync(archive, "aarch64", t.Dir("g2"), NullEventSink.Instance, CancellationToken.None));
        Assert.Equal("ArchitectureNotFound", ex.ErrorId);
        Assert.Contains("x86_64", ex.Message);
    }

    [Fact]
    public async Task FlattenResolvesWhiteoutsAndMatchesExtraction()
    {
        using var t = new TempTree();
        string layout = MakeLayout(t);
        string output = t.PathOf("rootfs.tar");
        var info = await ImageImporter.FlattenAsync(layout, "amd64", output, NullEventSink.Instance, CancellationToken.None);
        Assert.Equal("oci-layout", info.Kind);
        var names = new List<string>();
        await using (var fs = File.OpenRead(output))
        using (var r = new TarReader(fs))
            while (r.GetNextEntry() is { } e) names.Add(e.Name.TrimEnd('/'));
        Assert.DoesNotContain(names, n => n.Contains(".wh."));
        // Parents that no layer lists (bin, keep, new) are not invented; tar creates them on extraction.
        Assert.Equal(ExpectedAmd64.Except(new[] { "bin", "keep", "new" }), names.Distinct().Order(StringComparer.Ordinal).ToArray());
        // GNU tar (what the VM uses) unpacks it to the same tree as the direct extraction.
        string viaTar = t.Dir("via-tar"), direct = t.Dir("direct");
        TarTestUtil.MustRun("tar", "--xattrs", "--xattrs-include=*", "-xpf", output, "-C", viaTar);
        await ImageImporter.ExtractAsync(layout, "amd64", direct, NullEventSink.Instance, CancellationToken.None);
        Assert.Equal(TarTestUtil.Describe(direct), TarTestUtil.Describe(viaTar));
    }

    [Fact]
    public async Task FlattenKeepsOwnersDevicesAndCapabilities()
    {
        using var t = new TempTree();
        string src = t.Dir("src");
        File.WriteAllText(Path.Combine(src, "ping"), "ping");
        byte[] cap = { 0x01, 0x00, 0x00, 0x02, 0x80, 0x20, 0x00, 0x00, 0x80, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0 };
        bool root = TarTestUtil.IsRoot;
        if (root) Assert.Equal(0, Libc.LSetXattr(Path.Combine(src, "ping"), "security.capability", cap));
        string layer = t.PathOf("layer.tar");
        TarTestUtil.MustRun("tar", "--xattrs", "--xattrs-include=*", "--format=posix", "-C", src, "-cf", layer, "ping");
        var extra = TarTestUtil.BuildTar(w =>
        {
            w.WriteEntry(new PaxTarEntry(TarEntryType.CharacterDevice, "dev/null") { DeviceMajor = 1, DeviceMinor = 3, Mode = (UnixFileMode)0x1B6 });
            w.File("home/build/.profile", "x", uid: 1000, gid: 1000);
        });
        var oci = new Oci(t.PathOf("layout"));
        oci.Index(oci.Manifest("amd64", File.ReadAllBytes(layer), extra));
        string output = t.PathOf("rootfs.tar");
        await ImageImporter.FlattenAsync(oci.Dir, "amd64", output, NullEventSink.Instance, CancellationToken.None);
        var (code, listing, _) = TarTestUtil.Run("tar", "-tvf", output);
        Assert.Equal(0, code);
        Assert.Contains(listing.Split('\n'), l => l.StartsWith("crw-rw-rw-") && l.Contains("1,3") && l.Contains("dev/null"));
        Assert.Contains(listing.Split('\n'), l => l.Contains("1000/1000") && l.Contains("home/build/.profile"));
        if (root)
        {
            string dest = t.Dir("dest");
            TarTestUtil.MustRun("tar", "--xattrs", "--xattrs-include=*", "-xpf", output, "-C", dest);
            Assert.Equal(cap, Libc.LGetXattr(Path.Combine(dest, "ping"), "security.capability"));
        }
    }

    [Fact]
    public async Task FlattenDeletesPartialOutputOnFailure()
    {
        using var t = new TempTree();
        string file = t.PathOf("broken.tar.gz");
        var gz = Gzip(TarTestUtil.BuildTar(w => w.File("big", new string('x', 200_000))));
        File.WriteAllBytes(file, gz[..(gz.Length / 2)]);
        string output = t.PathOf("rootfs.tar");
        var ex = await Assert.ThrowsAsync<MelangeException>(() => ImageImporter.FlattenAsync(file, null, output, NullEventSink.Instance, CancellationToken.None));
        Assert.Equal(ErrorKind.InvalidData, ex.Kind);
        Assert.False(File.Exists(output));
    }

    [Fact]
    public async Task ErrorsForMissingUnknownAndTamperedInput()
    {
        using var t = new TempTree();
        var missing = await Assert.ThrowsAsync<MelangeException>(() => ImageImporter.ExtractAsync(t.PathOf("nope.tar"), null, t.Dir("g"), NullEventSink.Instance, CancellationToken.None));
        Assert.Equal((ErrorKind.ObjectNotFound, "ImageNotFound"), (missing.Kind, missing.ErrorId));
        Assert.NotNull(missing.Fix);

        string junk = t.PathOf("junk");
        File.WriteAllText(junk, "this is not an image at all, just text");
        var unknown = await Assert.ThrowsAsync<MelangeException>(() => ImageImporter.ExtractAsync(junk, null, t.Dir("g2"), NullEventSink.Instance, CancellationToken.None));
        Assert.Equal((ErrorKind.InvalidData, "UnknownImageFormat"), (unknown.Kind, unknown.ErrorId));
        Assert.Contains("gzip", unknown.Message);

        var noIndex = await Assert.ThrowsAsync<MelangeException>(() => ImageImporter.ExtractAsync(t.Dir("empty"), null, t.Dir("g3"), NullEventSink.Instance, CancellationToken.None));
        Assert.Equal("UnknownImageFormat", noIndex.ErrorId);

        // A layer blob swapped for another valid layer: caught by its digest.
        string layout = MakeLayout(t);
        string blob = Directory.GetFiles(Path.Combine(layout, "blobs/sha256")).First(f => File.ReadAllBytes(f).AsSpan().SequenceEqual(ArmLayer));
        File.WriteAllBytes(blob, UpperLayer);
        var tampered = await Assert.ThrowsAsync<MelangeException>(() => ImageImporter.ExtractAsync(layout, "arm64", t.Dir("g4"), NullEventSink.Instance, CancellationToken.None));
        Assert.Equal("DigestMismatch", tampered.ErrorId);
    }

    [Fact]
    public async Task DigestsCannotNameFilesOutsideTheLayout()
    {
        using var t = new TempTree();
        var oci = new Oci(t.PathOf("layout"));
        oci.Index(new { mediaType = "application/vnd.oci.image.manifest.v1+json", digest = "sha256:../../../../etc/passwd", size = 1, platform = new { architecture = "amd64", os = "linux" } });
        var ex = await Assert.ThrowsAsync<MelangeException>(() => ImageImporter.ExtractAsync(oci.Dir, "amd64", t.Dir("g"), NullEventSink.Instance, CancellationToken.None));
        Assert.Equal(ErrorKind.InvalidData, ex.Kind);
        Assert.Contains("invalid digest", ex.Message);
    }
}
