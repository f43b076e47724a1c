using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Compression;
using System.Security.Cryptography;
using MelangeRunner.HostProcess;
using MelangeRunner.Tar;
using SharpCompress.Compressors.BZip2;
using SharpCompress.Compressors.Xz;

namespace MelangeRunner.Qemu.Kernel;

/// <summary>
/// Extracts the uncompressed ELF kernel (vmlinux) from an x86 bzImage, once, and caches it
/// (docs/microvm.md#pitfall-2: decompressing the XZ vmlinuz costs ~3 s per boot under TCG; the
/// ELF boots directly through its PVH entry note).
/// </summary>
/// <remarks>
/// The compressed payload is located through the setup header's payload_offset and
/// payload_length (boot protocol ≥ 2.08); for older kernels the protected-mode code is
/// scanned for each format's magic and every candidate tried. Decoders: gzip (the BCL),
/// zstd (libzstd through <see cref="ZstdNativeStream"/>, else SharpCompress), bzip2
/// (SharpCompress). xz: the kernel's stream uses the x86 BCJ filter ("--x86 --lzma2" on
/// Debian's 6.1 kernel), which SharpCompress 0.50.8's XZStream decodes wrongly (checked: its
/// output diverges after ~2 MiB and the block CRC fails), so the system's <c>xz -dc</c>
/// (xz-utils) runs as a process with the payload on its standard input, SharpCompress being
/// the last resort. When a managed decoder fails, and for lzma, lz4 and lzo, the system's
/// <c>gzip</c>, <c>zstd</c>, <c>bzip2</c>, <c>xz --format=lzma</c>, <c>lz4</c> or <c>lzop</c> is run the same way.
/// Every result is checked against the size the kernel build appends to the payload, then for
/// the ELF magic and the PVH note.
/// </remarks>
public static class VmlinuxExtractor
{
    /// <summary>Suffix of the file that records why a kernel cannot be extracted, so that it is not tried at every boot.</summary>
    internal const string NegativeSuffix = ".none";

    /// <summary>
    /// The path of the cached ELF kernel extracted from <paramref name="bzImagePath"/> (extracting
    /// it first when needed), or null when that is impossible: not a bzImage, an unknown or
    /// undecodable payload, or an ELF without the Xen PVH entry note that qemu needs to boot an
    /// ELF kernel on x86. Never throws for an unextractable kernel; Verbose says why.
    /// When <paramref name="bzImagePath"/> already is an ELF kernel with the note, it is returned as is.
    /// </summary>
    public static string? GetOrExtract(string bzImagePath, IEventSink events)
    {
        ArgumentNullException.ThrowIfNull(bzImagePath);
        events ??= NullEventSink.Instance;
        string source;
        try { source = Path.GetFullPath(bzImagePath); }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            events.Verbose($"Kernel: no ELF kernel extracted: '{bzImagePath}' is not a valid path ({e.Message}).");
            return null;
        }
        try
        {
            return GetOrExtractCore(source, events);
        }
        catch (Exception e) // never throws for an unextractable kernel: the caller boots the bzImage
        {
            events.Verbose($"Kernel: no ELF kernel extracted from {source}: {e.Message}; booting the compressed image.");
            return null;
        }
    }

    /// <summary>
    /// The kernel version from the bzImage setup header (the first word of the kernel_version
    /// string, e.g. "6.1.0-57-amd64"), or null when the file is not a readable bzImage or has none.
    /// </summary>
    public static string? ReadVersion(string bzImagePath)
    {
        try
        {
            using var fs = new FileStream(bzImagePath, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.None);
            return BzImage.Read(fs)?.Version;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            return null;
        }
    }

    private static string? GetOrExtractCore(string source, IEventSink events)
    {
        using var fs = new FileStream(source, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.None);
        Span<byte> magic = stackalloc byte[4];
        if (fs.Length >= 4) { fs.ReadExactly(magic); }
        if (Elf.HasMagic(magic))
        {
            if (Elf.HasPvhNote(fs, out string why)) return source;
            events.Verbose($"Kernel: {source} is an ELF file but qemu cannot boot it: {why}.");
            return null;
        }
        var header = BzImage.Read(fs);
        if (header == null)
        {
            events.Verbose($"Kernel: {source} is not an x86 bzImage (no \"HdrS\" setup header): nothing to extract.");
            return null;
        }

        var (target, sourceTime) = TargetFor(source, fs);
        string negative = target + NegativeSuffix;
        if (File.Exists(target) && File.GetLastWriteTimeUtc(target) >= sourceTime)
        {
            using (var cached = File.OpenRead(target))
                if (Elf.HasPvhNote(cached, out _))
                {
                    events.Verbose($"Kernel: using the cached ELF kernel {target}.");
                    return target;
                }
            events.Verbose($"Kernel: the cached {target} is not a bootable ELF kernel; extracting again.");
        }
        else if (File.Exists(negative) && File.GetLastWriteTimeUtc(negative) >= sourceTime)
        {
            string reason = SafeReadAll(negative);
            events.Verbose($"Kernel: {source} was found not extractable before ({reason}); booting the compressed image. Delete {negative} to try again.");
            return null;
        }

        var sw = Stopwatch.StartNew();
        var candidates = Candidates(fs, header);
        if (candidates.Count == 0)
        {
            return Unextractable(source, negative, "no compressed payload (gzip, xz, zstd, lzma, lz4, lzo or bzip2) was found after the setup code", events);
        }

        string? lastFailure = null;
        bool decodedElfWithoutNote = false;
        foreach (var c in candidates)
        {
            foreach (var decoder in Decoders(c.Format))
            {
                string temp = target + $".tmp-{Environment.ProcessId}-{Guid.NewGuid():N}";
                try
                {
                    long written;
                    using (var output = new FileStream(temp, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 20, FileOptions.None))
                    {
                        written = decoder.Run(fs, c.Start, c.InputLength, output);
                        if (c.ExpectedSize is uint expected && (uint)written != expected)
                            throw new InvalidDataException($"{decoder.Name} produced {written} bytes, the payload trailer says {expected}");
                        output.Flush(flushToDisk: true);
                        if (!Elf.HasPvhNote(output, out string why))
                        {
                            if (Elf.HasMagic(ReadHead(output))) decodedElfWithoutNote = true;
                            throw new InvalidDataException("the payload is " + (decodedElfWithoutNote ? "an ELF kernel, but " : "not an ELF kernel: ") + why);
                        }
                    }
                    File.SetUnixFileMode(temp, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
                    File.Move(temp, target, overwrite: true);
                    TryDelete(negative);
                    events.Verbose($"Kernel: extracted the ELF kernel ({written / (1024 * 1024)} MiB, {c.Format} via {decoder.Name}, {sw.Elapsed.TotalSeconds:0.0} s) from {source} to {target}.");
                    return target;
                }
                catch (Exception e) // decoders throw their own exception types (SharpCompress's among them)
                {
                    TryDelete(temp);
                    lastFailure = $"{c.Format} at offset {c.Start} via {decoder.Name}: {e.Message}";
                    events.Verbose($"Kernel: {lastFailure}");
                }
            }
        }
        if (decodedElfWithoutNote)
            return Unextractable(source, negative, lastFailure ?? "no PVH note", events);
        // Decoder failures may be transient (a missing tool installed later): no negative marker.
        events.Verbose($"Kernel: could not extract the ELF kernel from {source} ({lastFailure}); booting the compressed image.");
        return null;
    }

    private static byte[] ReadHead(Stream s)
    {
        var b = new byte[4];
        s.Position = 0;
        return s.Read(b) == 4 ? b : Array.Empty<byte>();
    }

    private static string? Unextractable(string source, string negative, string reason, IEventSink events)
    {
        events.Verbose($"Kernel: no ELF kernel can be extracted from {source}: {reason}; booting the compressed image.");
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(negative)!);
            File.WriteAllText(negative, reason + "\n");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return null;
    }

    /// <summary>
    /// Where the ELF kernel of <paramref name="source"/> is cached: beside it for a kernel in a
    /// cache entry (<c>boot/vmlinuz-V</c> → <c>boot/vmlinux-V</c>) when that directory is
    /// writable; else <c>melange-runner/vmlinux/&lt;sha256&gt;.elf</c>. The time is the moment
    /// from which a cached file is current (the image's modification time; MinValue for the
    /// content-addressed name).
    /// </summary>
    internal static (string Path, DateTime ValidFrom) TargetFor(string source, FileStream fs)
    {
        if (KernelCache.EntryOf(source) != null)
        {
            string dir = Path.GetDirectoryName(source)!;
            string name = Path.GetFileName(source);
            string elfName = name.StartsWith("vmlinuz", StringComparison.Ordinal) ? "vmlinux" + name["vmlinuz".Length..] : name + ".vmlinux";
            if (IsWritableDirectory(dir)) return (Path.Combine(dir, elfName), File.GetLastWriteTimeUtc(source));
        }
        fs.Position = 0;
        string hash = Convert.ToHexString(SHA256.HashData(fs)).ToLowerInvariant();
        string cacheDir = KernelCache.VmlinuxDirectory;
        Directory.CreateDirectory(cacheDir);
        return (Path.Combine(cacheDir, hash + ".elf"), DateTime.MinValue);
    }

    private static bool IsWritableDirectory(string dir)
    {
        try
        {
            using var probe = new FileStream(Path.Combine(dir, $".probe-{Environment.ProcessId}-{Guid.NewGuid():N}"), FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
    }

    // ---- payload candidates --------------------------------------------------------------------

    internal sealed record Candidate(string Format, long Start, long InputLength, uint? ExpectedSize);

    private static readonly (string Format, byte[] Magic)[] Magics =
    {
        ("gzip", new byte[] { 0x1F, 0x8B, 0x08 }),
        ("xz", new byte[] { 0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00 }),
        ("zstd", new byte[] { 0x28, 0xB5, 0x2F, 0xFD }),
        ("bzip2", "BZh"u8.ToArray()),
        ("lz4", new byte[] { 0x02, 0x21, 0x4C, 0x18 }),   // lz4 legacy frame (lz4 -l), what the kernel uses
        ("lzo", new byte[] { 0x89, 0x4C, 0x5A, 0x4F }),   // lzop
        ("lzma", new byte[] { 0x5D, 0x00, 0x00 }),        // lzma "alone": properties 0x5D, dictionary size follows
    };

    internal static string? DetectFormat(ReadOnlySpan<byte> head)
    {
        foreach (var (format, m) in Magics)
            if (head.Length >= m.Length && head[..m.Length].SequenceEqual(m)) return format;
        return null;
    }

    private static List<Candidate> Candidates(FileStream fs, BzImage header)
    {
        var list = new List<Candidate>();
        if (header.PayloadStart is long start && header.PayloadLength is long len && len > 8)
        {
            var head = new byte[16];
            fs.Position = start;
            fs.ReadExactly(head);
            var trailer = new byte[4];
            fs.Position = start + len - 4;
            fs.ReadExactly(trailer);
            uint size = BinaryPrimitives.ReadUInt32LittleEndian(trailer);
            string? format = DetectFormat(head);
            if (format != null)
            {
                // The kernel's build appends the uncompressed size (le32) to every format; for
                // gzip those 4 bytes are the gzip trailer's ISIZE itself, so they stay in the input.
                list.Add(new Candidate(format, start, format == "gzip" ? len : len - 4, size));
                return list;
            }
        }
        // Protocol < 2.08, or a payload we do not recognise at the advertised place: scan.
        long from = header.ProtectedModeStart;
        if (from >= fs.Length) return list;
        const int window = 1 << 20;
        var buf = new byte[window + 16];
        long pos = from;
        while (pos < fs.Length && list.Count < 8)
        {
            fs.Position = pos;
            int n = fs.ReadAtLeast(buf, buf.Length, throwOnEndOfStream: false);
            int limit = pos + n >= fs.Length ? n : n - 16;
            for (int i = 0; i < limit && list.Count < 8; i++)
            {
                string? f = DetectFormat(buf.AsSpan(i, Math.Min(16, n - i)));
                if (f != null) list.Add(new Candidate(f, pos + i, fs.Length - (pos + i), null));
            }
            if (pos + n >= fs.Length) break;
            pos += limit;
        }
        return list;
    }

    // ---- decoders ------------------------------------------------------------------------------------

    internal abstract class Decoder
    {
        public abstract string Name { get; }
        /// <summary>Decodes <paramref name="length"/> bytes at <paramref name="start"/> into <paramref name="output"/>; returns the bytes written.</summary>
        public abstract long Run(FileStream input, long start, long length, Stream output);
    }

    private static IEnumerable<Decoder> Decoders(string format)
    {
        switch (format)
        {
            case "gzip":
                yield return new ManagedDecoder("managed gzip", s => new GZipStream(s, CompressionMode.Decompress));
                yield return new ProcessDecoder("gzip", "-dc");
                break;
            case "xz":
                // The system's xz first: SharpCompress 0.50.8's XZStream decodes the x86 BCJ filter
                // wrongly ("Block check corrupt" after ~2 MiB of a kernel; plain LZMA2 streams are
                // fine) and is ~10x slower. It stays as the last resort for non-BCJ streams.
                yield return new ProcessDecoder("xz", "-dc");
                yield return new ManagedDecoder("SharpCompress XZStream", s => new XZStream(s));
                break;
            case "zstd":
                yield return new ManagedDecoder(ZstdNativeStream.IsAvailable ? "libzstd" : "SharpCompress zstd",
                    s => ZstdNativeStream.IsAvailable ? new ZstdNativeStream(s) : new SharpCompress.Compressors.ZStandard.DecompressionStream(s, 1 << 20, true, false));
                yield return new ProcessDecoder("zstd", "-dc");
                break;
            case "bzip2":
                yield return new ManagedDecoder("SharpCompress bzip2", s => BZip2Stream.Create(s, SharpCompress.Compressors.CompressionMode.Decompress, false, false, false));
                yield return new ProcessDecoder("bzip2", "-dc");
                break;
            case "lzma":
                yield return new ProcessDecoder("xz", "--format=lzma", "-dc");
                break;
            case "lz4":
                yield return new ProcessDecoder("lz4", "-dc");
                break;
            case "lzo":
                yield return new ProcessDecoder("lzop", "-dc");
                break;
        }
    }

    private sealed class ManagedDecoder(string name, Func<Stream, Stream> open) : Decoder
    {
        public override string Name => name;

        public override long Run(FileStream input, long start, long length, Stream output)
        {
            input.Position = start;
            using var slice = new SliceStream(input, length);
            using var decoded = open(slice);
            var buffer = new byte[1 << 20];
            long total = 0;
            int n;
            while ((n = decoded.Read(buffer, 0, buffer.Length)) > 0)
            {
                output.Write(buffer, 0, n);
                total += n;
            }
            return total;
        }
    }

    private sealed class ProcessDecoder(string program, params string[] args) : Decoder
    {
        public override string Name => "the system's " + program;

        public override long Run(FileStream input, long start, long length, Stream output)
        {
            string? path = HostCommand.FindOnPath(program)
                ?? throw new NotSupportedException($"'{program}' is not installed");
            using var p = HostCommand.Start(path, args, redirectInput: true);
            var stderr = p.StandardError.ReadToEndAsync();
            var feed = Task.Run(() =>
            {
                try
                {
                    input.Position = start;
                    using var slice = new SliceStream(input, length);
                    slice.CopyTo(p.StandardInput.BaseStream, 1 << 20);
                }
                catch (IOException) { /* the decoder stopped reading (it failed, or the stream ended): its status says which */ }
                finally { try { p.StandardInput.Close(); } catch (IOException) { } }
            });
            long total = 0;
            var buffer = new byte[1 << 20];
            var stdout = p.StandardOutput.BaseStream;
            int n;
            while ((n = stdout.Read(buffer, 0, buffer.Length)) > 0)
            {
                output.Write(buffer, 0, n);
                total += n;
            }
            feed.Wait();
            p.WaitForExit();
            // lz4/lzop/xz complain about the kernel's trailing size bytes only after the stream: a
            // non-zero status is a failure unless the output is complete, which the caller checks.
            if (p.ExitCode != 0 && total == 0)
                throw new InvalidDataException($"{program} exited with status {p.ExitCode}: {stderr.Result.Trim()}");
            return total;
        }
    }

    /// <summary>A read-only view of the next <c>length</c> bytes of a stream (positioned by the caller); leaves it open.</summary>
    private sealed class SliceStream(Stream inner, long length) : Stream
    {
        private readonly long _length = length;
        private long _left = length;
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => _length;
        public override long Position { get => _length - _left; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));
        public override int Read(Span<byte> buffer)
        {
            if (_left <= 0 || buffer.Length == 0) return 0;
            int n = inner.Read(buffer[..(int)Math.Min(buffer.Length, _left)]);
            _left -= n;
            return n;
        }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    private static string SafeReadAll(string path)
    {
        try { return File.ReadAllText(path).Trim(); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return "reason unreadable"; }
    }

    private static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }
}
