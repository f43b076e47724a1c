using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using MelangeRunner.Qemu.Kernel;
using Xunit;

namespace MelangeRunner.Tests.Kernel;

/// <summary>Tests that change process-wide environment variables (XDG_CACHE_HOME, QEMU_KERNEL_IMAGE) run one at a time.</summary>
[CollectionDefinition("Environment", DisableParallelization = true)]
public sealed class EnvironmentCollection;

/// <summary>Builds the files the kernel tests need: ELF kernels, bzImages around them, cache trees.</summary>
internal static class KernelTestData
{
    /// <summary>
    /// A small x86-64 ELF executable with a PT_NOTE segment holding a "Linux" note and a "Xen"
    /// note of type <paramref name="xenNoteType"/> (18 = XEN_ELFNOTE_PHYS32_ENTRY, the PVH entry;
    /// null = no Xen note), plus filler so that compression has something to do.
    /// </summary>
    public static byte[] Elf(uint? xenNoteType = 18, int filler = 64 * 1024)
    {
        var notes = new MemoryStream();
        WriteNote(notes, "Linux", 6, "6.1.0-99-test\0"u8.ToArray());
        if (xenNoteType is uint t) WriteNote(notes, "Xen", t, new byte[] { 0x50, 0x08, 0x00, 0x01, 0, 0, 0, 0 });
        byte[] n = notes.ToArray();

        const int ehsize = 64, phentsize = 56, phnum = 1;
        int notesOff = ehsize + phentsize * phnum;
        var elf = new byte[notesOff + n.Length + filler];
        var s = elf.AsSpan();
        s[0] = 0x7F; s[1] = (byte)'E'; s[2] = (byte)'L'; s[3] = (byte)'F';
        s[4] = 2; s[5] = 1; s[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(s[16..], 2);      // ET_EXEC
        BinaryPrimitives.WriteUInt16LittleEndian(s[18..], 62);     // EM_X86_64
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], 1);
        BinaryPrimitives.WriteUInt64LittleEndian(s[24..], 0x1000000);
        BinaryPrimitives.WriteUInt64LittleEndian(s[32..], ehsize); // e_phoff
        BinaryPrimitives.WriteUInt16LittleEndian(s[52..], ehsize);
        BinaryPrimitives.WriteUInt16LittleEndian(s[54..], phentsize);
        BinaryPrimitives.WriteUInt16LittleEndian(s[56..], phnum);
        BinaryPrimitives.WriteUInt16LittleEndian(s[58..], 64);
        var ph = s.Slice(ehsize, phentsize);
        BinaryPrimitives.WriteUInt32LittleEndian(ph, 4);            // PT_NOTE
        BinaryPrimitives.WriteUInt32LittleEndian(ph[4..], 4);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[8..], (ulong)notesOff);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[32..], (ulong)n.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], (ulong)n.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[48..], 4);
        n.CopyTo(s[notesOff..]);
        // Filler that looks a bit like code (x86 BCJ has E8/E9 to chew on).
        var rng = new Random(42);
        for (int i = notesOff + n.Length; i < elf.Length; i++) elf[i] = (i % 7 == 0) ? (byte)0xE8 : (byte)rng.Next(0, 16);
        return elf;
    }

    private static void WriteNote(Stream s, string name, uint type, byte[] desc)
    {
        byte[] nm = Encoding.ASCII.GetBytes(name + "\0");
        Span<byte> h = stackalloc byte[12];
        BinaryPrimitives.WriteUInt32LittleEndian(h, (uint)nm.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(h[4..], (uint)desc.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(h[8..], type);
        s.Write(h);
        s.Write(nm); s.Write(new byte[(4 - nm.Length % 4) % 4]);
        s.Write(desc); s.Write(new byte[(4 - desc.Length % 4) % 4]);
    }

    /// <summary>
    /// A bzImage as the kernel build lays it out: 4 setup sectors with the "HdrS" header
    /// (protocol 2.15, kernel_version string, payload_offset/payload_length), then the
    /// protected-mode code: some decompressor bytes, the compressed payload and (for every
    /// format but gzip, where the gzip trailer already ends with it) the le32 uncompressed size.
    /// </summary>
    public static byte[] BzImage(byte[] compressedPayload, uint uncompressedSize, string? versionString, bool appendSize, int protocol = 0x020F)
    {
        const int setupSects = 3;
        int pm = (setupSects + 1) * 512;
        const int decompressorBytes = 256;
        byte[] payload = appendSize ? compressedPayload.Concat(LE32(uncompressedSize)).ToArray() : compressedPayload;
        var img = new byte[pm + decompressorBytes + payload.Length + 64];
        var s = img.AsSpan();
        s[0x1F1] = setupSects;
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x1FE..], 0xAA55);
        "HdrS"u8.CopyTo(s[0x202..]);
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x206..], (ushort)protocol);
        if (versionString != null)
        {
            const int at = 0x400; // inside the setup sectors
            BinaryPrimitives.WriteUInt16LittleEndian(s[0x20E..], at - 0x200);
            Encoding.ASCII.GetBytes(versionString + "\0").CopyTo(s[at..]);
        }
        if (protocol >= 0x0208)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(s[0x248..], decompressorBytes);
            BinaryPrimitives.WriteUInt32LittleEndian(s[0x24C..], (uint)payload.Length);
        }
        for (int i = 0; i < decompressorBytes; i++) img[pm + i] = 0x90; // nops
        payload.CopyTo(s[(pm + decompressorBytes)..]);
        return img;
    }

    private static byte[] LE32(uint v)
    { var b = new byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(b, v); return b; }

    public static byte[] Gzip(byte[] data)
    {
        var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Optimal, leaveOpen: true)) gz.Write(data);
        return ms.ToArray();
    }

    public static byte[] Zstd(byte[] data)
    {
        var ms = new MemoryStream();
        using (var z = new SharpCompress.Compressors.ZStandard.CompressionStream(ms, 19, 1 << 16, true)) z.Write(data);
        return ms.ToArray();
    }

    /// <summary>xz with the x86 BCJ filter and CRC32, as the kernel's xz_wrap.sh does; null when xz is not installed.</summary>
    public static byte[]? Xz(byte[] data)
    {
        string? xz = FindProgram("xz");
        if (xz == null) return null;
        var psi = new ProcessStartInfo(xz) { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in new[] { "--check=crc32", "--x86", "--lzma2=dict=1MiB", "-c" }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var writer = Task.Run(() => { p.StandardInput.BaseStream.Write(data); p.StandardInput.Close(); });
        var ms = new MemoryStream();
        p.StandardOutput.BaseStream.CopyTo(ms);
        writer.Wait();
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
        return ms.ToArray();
    }

    public static string? FindProgram(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':').Where(d => d.Length > 0)
            .Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);

    /// <summary>
    /// A cache entry as tools/Get-MelangeKernel.ps1 leaves it:
    /// &lt;root&gt;/kernel/&lt;arch&gt;/&lt;version&gt;/{boot/vmlinuz-V, lib/modules/V/modules.dep, melange-kernel.json}.
    /// Returns the image path.
    /// </summary>
    public static string CacheEntry(string cacheRoot, string arch, string version, byte[] image, bool marker = true, bool modules = true)
    {
        string entry = Path.Combine(cacheRoot, "kernel", arch, version);
        Directory.CreateDirectory(Path.Combine(entry, "boot"));
        string img = Path.Combine(entry, "boot", "vmlinuz-" + version);
        File.WriteAllBytes(img, image);
        if (modules)
        {
            string mods = Path.Combine(entry, "lib", "modules", version);
            Directory.CreateDirectory(mods);
            File.WriteAllText(Path.Combine(mods, "modules.dep"), "");
        }
        if (marker)
            File.WriteAllText(Path.Combine(entry, KernelCache.MarkerName),
                $"{{\"version\":\"{version}\",\"arch\":\"{arch}\",\"image\":\"boot/vmlinuz-{version}\",\"modules\":\"lib/modules/{version}\"}}");
        return img;
    }
}

/// <summary>A temporary directory removed at the end of a test.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir() => Path = Directory.CreateTempSubdirectory("mr-kernel-").FullName;
    public string Path { get; }
    public string Combine(params string[] parts) => System.IO.Path.Combine(new[] { Path }.Concat(parts).ToArray());
    public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
}

/// <summary>Records the engine's Verbose messages.</summary>
internal sealed class RecordingSink : IEventSink
{
    public List<string> Messages { get; } = new();
    public void Verbose(string message) { lock (Messages) Messages.Add(message); }
    public void Warning(string message) { lock (Messages) Messages.Add("WARNING: " + message); }
    public void Progress(ProgressReport report) { }
    public void StandardOutput(string line) { }
    public void StandardError(string line) { }
    public override string ToString() => string.Join("\n", Messages);
}

/// <summary>Sets environment variables for the duration of a test and restores them.</summary>
internal sealed class EnvScope : IDisposable
{
    private readonly Dictionary<string, string?> _saved = new();
    public EnvScope Set(string name, string? value)
    {
        if (!_saved.ContainsKey(name)) _saved[name] = Environment.GetEnvironmentVariable(name);
        Environment.SetEnvironmentVariable(name, value);
        return this;
    }
    public void Dispose()
    {
        foreach (var (k, v) in _saved) Environment.SetEnvironmentVariable(k, v);
    }
}

/// <summary>Minimal relocatable ELF files with a .modinfo section, as kernel modules are.</summary>
internal static class FakeModule
{
    public static byte[] Build(string name, params string[] depends)
    {
        var modinfo = System.Text.Encoding.ASCII.GetBytes($"license=GPL\0depends={string.Join(',', depends)}\0name={name}\0vermagic=6.1.0 SMP\0");
        var shstr = System.Text.Encoding.ASCII.GetBytes("\0.modinfo\0.shstrtab\0");
        const int ehsize = 64, shentsize = 64, shnum = 3;
        int modOff = ehsize, strOff = modOff + modinfo.Length, shOff = (strOff + shstr.Length + 7) & ~7;
        var b = new byte[shOff + shentsize * shnum];
        var s = b.AsSpan();
        s[0] = 0x7F; s[1] = (byte)'E'; s[2] = (byte)'L'; s[3] = (byte)'F'; s[4] = 2; s[5] = 1; s[6] = 1;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(s[16..], 1);  // ET_REL
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(s[18..], 62);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(s[40..], (ulong)shOff);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(s[52..], ehsize);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(s[58..], shentsize);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(s[60..], shnum);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(s[62..], 2);  // .shstrtab index
        modinfo.CopyTo(s[modOff..]);
        shstr.CopyTo(s[strOff..]);
        void Section(int i, uint nameOff, uint type, int off, int size)
        {
            var h = b.AsSpan(shOff + i * shentsize, shentsize);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(h, nameOff);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(h[4..], type);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(h[24..], (ulong)off);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(h[32..], (ulong)size);
        }
        Section(1, 1, 1, modOff, modinfo.Length);   // .modinfo, PROGBITS
        Section(2, 10, 3, strOff, shstr.Length);    // .shstrtab, STRTAB
        return b;
    }
}

/// <summary>
/// A lib/modules/&lt;version&gt; tree as Debian's package unpacks it (no modules.dep), with the
/// guest's modules and their real dependencies (Debian 6.1), some compressed as newer distributions
/// ship them, and modules the guest does not need, one of them corrupt, so that reading it fails.
/// </summary>
internal static class FakeModuleTree
{
    /// <summary>Relative path → direct dependencies, as .modinfo's depends= has them.</summary>
    public static readonly (string Path, string[] Depends)[] Modules =
    {
        ("kernel/drivers/virtio/virtio_ring.ko", new string[0]),
        ("kernel/drivers/virtio/virtio.ko", new[] { "virtio_ring" }),
        ("kernel/drivers/virtio/virtio_pci_modern_dev.ko", new string[0]),
        ("kernel/drivers/virtio/virtio_pci_legacy_dev.ko", new string[0]),
        ("kernel/drivers/virtio/virtio_pci.ko", new[] { "virtio_pci_modern_dev", "virtio", "virtio_ring", "virtio_pci_legacy_dev" }),
        ("kernel/drivers/char/virtio_console.ko", new[] { "virtio", "virtio_ring" }),
        ("kernel/drivers/char/hw_random/virtio-rng.ko", new[] { "virtio_ring", "virtio" }),
        ("kernel/lib/crc16.ko.gz", new string[0]),
        ("kernel/fs/mbcache.ko", new string[0]),
        ("kernel/fs/jbd2/jbd2.ko.xz", new string[0]),
        ("kernel/crypto/crc32c_generic.ko", new string[0]),
        ("kernel/fs/ext4/ext4.ko.xz", new[] { "mbcache", "jbd2", "crc16" }),
        ("kernel/drivers/block/virtio_blk.ko", new[] { "virtio", "virtio_ring" }),
        ("kernel/net/core/failover.ko", new string[0]),
        ("kernel/drivers/net/net_failover.ko", new[] { "failover" }),
        ("kernel/drivers/net/virtio_net.ko", new[] { "net_failover", "virtio", "virtio_ring" }),
        ("kernel/fs/netfs/netfs.ko.zst", new string[0]),
        ("kernel/fs/fscache/fscache.ko", new[] { "netfs" }),
        ("kernel/net/9p/9pnet.ko", new string[0]),
        ("kernel/net/9p/9pnet_virtio.ko", new[] { "9pnet", "virtio", "virtio_ring" }),
        ("kernel/fs/9p/9p.ko.zst", new[] { "netfs", "9pnet", "fscache" }),
        ("kernel/fs/overlayfs/overlay.ko", new string[0]),
        ("kernel/fs/fuse/fuse.ko", new string[0]),
        ("kernel/fs/fuse/virtiofs.ko", new[] { "fuse", "virtio_ring", "virtio" }),
        // Not the guest's.
        ("kernel/sound/core/snd.ko", new[] { "soundcore" }),
        ("kernel/sound/soundcore.ko", new string[0]),
        ("kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko", new string[0]),
    };

    /// <summary>A module that is never read: garbage behind an .xz name (decompressing it throws).</summary>
    public const string Corrupt = "kernel/drivers/gpu/drm/i915/i915.ko.xz";

    /// <summary>Writes the tree at <paramref name="root"/> (its last part is the version) and returns it.</summary>
    public static string Write(string root, string? without = null, bool corrupt = true)
    {
        foreach (var (rel, deps) in Modules)
        {
            if (without != null && Path.GetFileName(rel).StartsWith(without + ".ko", StringComparison.Ordinal)) continue;
            var name = Path.GetFileName(rel);
            name = name[..name.IndexOf(".ko", StringComparison.Ordinal)].Replace('-', '_');
            var body = FakeModule.Build(name, deps);
            var path = Path.Combine(root, rel);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllBytes(path, rel.EndsWith(".gz", StringComparison.Ordinal) ? KernelTestData.Gzip(body)
                : rel.EndsWith(".xz", StringComparison.Ordinal) ? Compress(body, "xz", "--check=crc32", "--lzma2=dict=1MiB", "-c")
                : rel.EndsWith(".zst", StringComparison.Ordinal) ? Compress(body, "zstd", "-q", "-c")
                : body);
        }
        if (!corrupt) return root;
        var bad = Path.Combine(root, Corrupt);
        Directory.CreateDirectory(Path.GetDirectoryName(bad)!);
        File.WriteAllBytes(bad, Encoding.ASCII.GetBytes("not an xz stream at all"));
        return root;
    }

    /// <summary>Compresses with the system's tool, as a distribution's kernel build does.</summary>
    private static byte[] Compress(byte[] data, string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var output = new MemoryStream();
        var copy = p.StandardOutput.BaseStream.CopyToAsync(output);
        p.StandardInput.BaseStream.Write(data);
        p.StandardInput.Close();
        copy.Wait();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{tool} failed: {p.ExitCode}");
        return output.ToArray();
    }
}
