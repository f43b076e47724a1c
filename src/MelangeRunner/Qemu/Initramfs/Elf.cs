using System.Buffers.Binary;
using System.Text;

namespace MelangeRunner.Qemu.Initramfs;

/// <summary>What the dynamic linker needs to know about an ELF file (ELF32 or ELF64, either byte order).</summary>
public sealed record ElfInfo(bool Is64, bool LittleEndian, ushort Machine, string? Interpreter,
    IReadOnlyList<string> Needed, IReadOnlyList<string> RunPath, IReadOnlyList<string> RPath)
{
    public const ushort EM_386 = 3, EM_ARM = 40, EM_X86_64 = 62, EM_AARCH64 = 183, EM_RISCV = 243;

    /// <summary>Whether a library can be loaded into this program (same class and machine).</summary>
    public bool IsCompatible(ElfInfo other) => Is64 == other.Is64 && Machine == other.Machine && LittleEndian == other.LittleEndian;

    /// <summary>The apko architecture name of the machine, or null.</summary>
    public string? Arch => Machine switch
    {
        EM_X86_64 => "x86_64",
        EM_AARCH64 => "aarch64",
        EM_386 => "x86",
        EM_ARM => "armv7",
        EM_RISCV when Is64 => "riscv64",
        _ => null,
    };
}

/// <summary>A reader of ELF program headers and the dynamic section (no ldd, no execution).</summary>
public static class ElfReader
{
    private const uint PT_LOAD = 1, PT_DYNAMIC = 2, PT_INTERP = 3;
    private const long DT_NULL = 0, DT_NEEDED = 1, DT_STRTAB = 5, DT_STRSZ = 10, DT_RPATH = 15, DT_RUNPATH = 29;

    /// <summary>Whether the file starts with the ELF magic.</summary>
    public static bool IsElf(string path)
    {
        try
        {
            using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1);
            Span<byte> magic = stackalloc byte[4];
            return f.ReadAtLeast(magic, 4, false) == 4 && magic[0] == 0x7F && magic[1] == (byte)'E' && magic[2] == (byte)'L' && magic[3] == (byte)'F';
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Reads an ELF file; null when it is not ELF.</summary>
    public static ElfInfo? Read(string path)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 4096, FileOptions.RandomAccess);
        return Read(f, path);
    }

    public static ElfInfo? Read(Stream f, string nameForErrors)
    {
        var ident = new byte[64];
        int got = f.ReadAtLeast(ident, ident.Length, false);
        if (got < 16 || ident[0] != 0x7F || ident[1] != 'E' || ident[2] != 'L' || ident[3] != 'F') return null;
        bool is64 = ident[4] switch { 1 => false, 2 => true, _ => throw Corrupt(nameForErrors, "unknown ELF class") };
        bool le = ident[5] switch { 1 => true, 2 => false, _ => throw Corrupt(nameForErrors, "unknown byte order") };
        if (got < (is64 ? 64 : 52)) throw Corrupt(nameForErrors, "truncated ELF header");

        ushort U16(ReadOnlySpan<byte> b) => le ? BinaryPrimitives.ReadUInt16LittleEndian(b) : BinaryPrimitives.ReadUInt16BigEndian(b);
        uint U32(ReadOnlySpan<byte> b) => le ? BinaryPrimitives.ReadUInt32LittleEndian(b) : BinaryPrimitives.ReadUInt32BigEndian(b);
        ulong U64(ReadOnlySpan<byte> b) => le ? BinaryPrimitives.ReadUInt64LittleEndian(b) : BinaryPrimitives.ReadUInt64BigEndian(b);
        ulong Word(ReadOnlySpan<byte> b) => is64 ? U64(b) : U32(b);

        ushort machine = U16(ident.AsSpan(18));
        ulong phoff = is64 ? U64(ident.AsSpan(32)) : U32(ident.AsSpan(28));
        ushort phentsize = U16(ident.AsSpan(is64 ? 54 : 42));
        ushort phnum = U16(ident.AsSpan(is64 ? 56 : 44));
        if (phnum == 0) return new ElfInfo(is64, le, machine, null, Array.Empty<string>(), Array.Empty<string>(), Array.Empty<string>());
        if (phentsize < (is64 ? 56 : 32) || phnum > 4096) throw Corrupt(nameForErrors, "bad program header table");

        var ph = ReadAt(f, (long)phoff, phentsize * phnum, nameForErrors);
        var loads = new List<(ulong VAddr, ulong Offset, ulong FileSize)>();
        string? interp = null;
        (ulong Offset, ulong Size)? dynamic = null;
        for (int i = 0; i < phnum; i++)
        {
            var h = ph.AsSpan(i * phentsize, phentsize);
            uint type = U32(h);
            ulong offset, vaddr, filesz;
            if (is64) { offset = U64(h[8..]); vaddr = U64(h[16..]); filesz = U64(h[32..]); }
            else { offset = U32(h[4..]); vaddr = U32(h[8..]); filesz = U32(h[16..]); }
            switch (type)
            {
                case PT_LOAD: loads.Add((vaddr, offset, filesz)); break;
                case PT_DYNAMIC: dynamic = (offset, filesz); break;
                case PT_INTERP:
                    if (filesz > 4096) throw Corrupt(nameForErrors, "PT_INTERP too long");
                    interp = Encoding.UTF8.GetString(ReadAt(f, (long)offset, (int)filesz, nameForErrors)).TrimEnd('\0');
                    break;
            }
        }

        var needed = new List<string>();
        var runpath = new List<string>();
        var rpath = new List<string>();
        if (dynamic is { } dyn && dyn.Size > 0)
        {
            if (dyn.Size > 1 << 20) throw Corrupt(nameForErrors, "dynamic section too large");
            var d = ReadAt(f, (long)dyn.Offset, (int)dyn.Size, nameForErrors);
            int entSize = is64 ? 16 : 8;
            var entries = new List<(long Tag, ulong Val)>();
            ulong strtab = 0, strsz = 0;
            for (int off = 0; off + entSize <= d.Length; off += entSize)
            {
                long tag = is64 ? (long)U64(d.AsSpan(off)) : (int)U32(d.AsSpan(off));
                ulong val = Word(d.AsSpan(off + entSize / 2));
                if (tag == DT_NULL) break;
                if (tag == DT_STRTAB) strtab = val;
                else if (tag == DT_STRSZ) strsz = val;
                else entries.Add((tag, val));
            }
            if (entries.Any(e => e.Tag is DT_NEEDED or DT_RPATH or DT_RUNPATH))
            {
                // DT_STRTAB is a virtual address: map it to a file offset through the PT_LOAD segments.
                long? strOff = null;
                foreach (var (vaddr, offset, filesz) in loads)
                    if (strtab >= vaddr && strtab < vaddr + filesz) { strOff = (long)(offset + (strtab - vaddr)); break; }
                if (strOff is null) throw Corrupt(nameForErrors, "DT_STRTAB outside the loaded segments");
                if (strsz == 0 || strsz > 16 << 20) strsz = 1 << 16;
                var strings = ReadAt(f, strOff.Value, (int)strsz, nameForErrors, allowShort: true);
                string Str(ulong at)
                {
                    if (at >= (ulong)strings.Length) throw Corrupt(nameForErrors, "string outside the string table");
                    int end = Array.IndexOf(strings, (byte)0, (int)at);
                    if (end < 0) end = strings.Length;
                    return Encoding.UTF8.GetString(strings, (int)at, end - (int)at);
                }
                foreach (var (tag, val) in entries)
                {
                    switch (tag)
                    {
                        case DT_NEEDED: needed.Add(Str(val)); break;
                        case DT_RUNPATH: runpath.AddRange(Str(val).Split(':', StringSplitOptions.RemoveEmptyEntries)); break;
                        case DT_RPATH: rpath.AddRange(Str(val).Split(':', StringSplitOptions.RemoveEmptyEntries)); break;
                    }
                }
            }
        }
        return new ElfInfo(is64, le, machine, interp, needed, runpath, rpath);
    }

    private static byte[] ReadAt(Stream f, long offset, int count, string name, bool allowShort = false)
    {
        if (offset < 0 || count < 0 || offset > f.Length) throw Corrupt(name, "offset outside the file");
        f.Position = offset;
        var buf = new byte[count];
        int n = f.ReadAtLeast(buf, count, false);
        if (n < count)
        {
            if (!allowShort) throw Corrupt(name, "truncated");
            Array.Resize(ref buf, n);
        }
        return buf;
    }

    private static MelangeException Corrupt(string path, string why) =>
        new(ErrorKind.InvalidData, "CorruptElf", $"'{path}' is not a valid ELF file: {why}.",
            "Reinstall the package that provides it, or leave it out of QEMU_ADDITIONAL_PACKAGES.", path);
}
