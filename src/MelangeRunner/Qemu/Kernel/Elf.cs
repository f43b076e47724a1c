using System.Buffers.Binary;
using System.Text;

namespace MelangeRunner.Qemu.Kernel;

/// <summary>The few ELF facts the kernel code needs: the PVH entry note and a section's bytes.</summary>
internal static class Elf
{
    internal const uint PT_NOTE = 4;
    /// <summary>XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point qemu jumps to when it boots an ELF kernel on x86.</summary>
    internal const uint XenElfNotePhys32Entry = 18;

    public static bool HasMagic(ReadOnlySpan<byte> b) => b.Length >= 4 && b[0] == 0x7F && b[1] == (byte)'E' && b[2] == (byte)'L' && b[3] == (byte)'F';

    /// <summary>
    /// Whether the ELF file carries the Xen PVH entry note (name "Xen", type 18) in a PT_NOTE
    /// segment. <paramref name="reason"/> says what is wrong when it does not.
    /// </summary>
    public static bool HasPvhNote(Stream file, out string reason)
    {
        reason = "";
        Span<byte> ident = stackalloc byte[64];
        if (file.Length < 52) { reason = "the file is too short for an ELF header"; return false; }
        file.Position = 0;
        file.ReadExactly(ident[..52]);
        if (!HasMagic(ident)) { reason = "it is not an ELF file"; return false; }
        bool is64 = ident[4] == 2;
        if (ident[4] is not (1 or 2)) { reason = "unknown ELF class"; return false; }
        if (ident[5] != 1) { reason = "it is not a little-endian ELF file"; return false; }
        if (is64)
        {
            if (file.Length < 64) { reason = "truncated ELF header"; return false; }
            file.Position = 0;
            file.ReadExactly(ident);
        }
        ushort machine = BinaryPrimitives.ReadUInt16LittleEndian(ident[18..]);
        if (machine is not (62 or 3)) { reason = $"its machine is {machine}, not x86"; return false; }
        long phoff = is64 ? (long)BinaryPrimitives.ReadUInt64LittleEndian(ident[32..]) : BinaryPrimitives.ReadUInt32LittleEndian(ident[28..]);
        int phentsize = BinaryPrimitives.ReadUInt16LittleEndian(ident[(is64 ? 54 : 42)..]);
        int phnum = BinaryPrimitives.ReadUInt16LittleEndian(ident[(is64 ? 56 : 44)..]);
        if (phnum == 0 || phentsize < (is64 ? 56 : 32) || phoff <= 0 || phoff + (long)phentsize * phnum > file.Length)
        {
            reason = "it has no valid program headers"; return false;
        }
        var ph = new byte[phentsize];
        bool anyNote = false;
        for (int i = 0; i < phnum; i++)
        {
            file.Position = phoff + (long)i * phentsize;
            file.ReadExactly(ph);
            if (BinaryPrimitives.ReadUInt32LittleEndian(ph) != PT_NOTE) continue;
            anyNote = true;
            long off = is64 ? (long)BinaryPrimitives.ReadUInt64LittleEndian(ph.AsSpan(8)) : BinaryPrimitives.ReadUInt32LittleEndian(ph.AsSpan(4));
            long size = is64 ? (long)BinaryPrimitives.ReadUInt64LittleEndian(ph.AsSpan(32)) : BinaryPrimitives.ReadUInt32LittleEndian(ph.AsSpan(16));
            if (off < 0 || size <= 0 || size > 1 << 20 || off + size > file.Length) continue;
            var notes = new byte[size];
            file.Position = off;
            file.ReadExactly(notes);
            if (FindNote(notes, "Xen", XenElfNotePhys32Entry)) return true;
        }
        reason = anyNote ? "it has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), so qemu cannot boot it as an ELF kernel (the kernel lacks CONFIG_PVH)"
                         : "it has no PT_NOTE segment, so no PVH entry note";
        return false;
    }

    /// <summary>Walks ELF notes (namesz, descsz, type, name, desc; each padded to 4 bytes).</summary>
    internal static bool FindNote(ReadOnlySpan<byte> notes, string name, uint type)
    {
        int p = 0;
        while (p + 12 <= notes.Length)
        {
            uint namesz = BinaryPrimitives.ReadUInt32LittleEndian(notes[p..]);
            uint descsz = BinaryPrimitives.ReadUInt32LittleEndian(notes[(p + 4)..]);
            uint t = BinaryPrimitives.ReadUInt32LittleEndian(notes[(p + 8)..]);
            long nameEnd = p + 12L + namesz;
            long next = p + 12L + Align4(namesz) + Align4(descsz);
            if (nameEnd > notes.Length || next > notes.Length + 3L) return false;
            var n = notes.Slice(p + 12, (int)namesz);
            if (n.Length > 0 && n[^1] == 0) n = n[..^1];
            if (t == type && Encoding.ASCII.GetString(n) == name) return true;
            if (next <= p) return false;
            p = (int)Math.Min(next, notes.Length);
        }
        return false;
    }

    private static long Align4(uint v) => (v + 3L) & ~3L;

    /// <summary>The bytes of the named section of an ELF file in memory (e.g. ".modinfo" of a kernel module), or null.</summary>
    internal static byte[]? ReadSection(ReadOnlySpan<byte> elf, string sectionName)
    {
        if (elf.Length < 52 || !HasMagic(elf) || elf[5] != 1) return null;
        bool is64 = elf[4] == 2;
        if (is64 && elf.Length < 64) return null;
        long shoff = is64 ? (long)BinaryPrimitives.ReadUInt64LittleEndian(elf[40..]) : BinaryPrimitives.ReadUInt32LittleEndian(elf[32..]);
        int shentsize = BinaryPrimitives.ReadUInt16LittleEndian(elf[(is64 ? 58 : 46)..]);
        int shnum = BinaryPrimitives.ReadUInt16LittleEndian(elf[(is64 ? 60 : 48)..]);
        int shstrndx = BinaryPrimitives.ReadUInt16LittleEndian(elf[(is64 ? 62 : 50)..]);
        if (shoff <= 0 || shnum == 0 || shstrndx >= shnum || shentsize < (is64 ? 64 : 40) || shoff + (long)shentsize * shnum > elf.Length) return null;

        (long Off, long Size, uint Name) Section(ReadOnlySpan<byte> e, int i)
        {
            var sh = e.Slice((int)(shoff + (long)i * shentsize), shentsize);
            uint name = BinaryPrimitives.ReadUInt32LittleEndian(sh);
            long off = is64 ? (long)BinaryPrimitives.ReadUInt64LittleEndian(sh[24..]) : BinaryPrimitives.ReadUInt32LittleEndian(sh[16..]);
            long size = is64 ? (long)BinaryPrimitives.ReadUInt64LittleEndian(sh[32..]) : BinaryPrimitives.ReadUInt32LittleEndian(sh[20..]);
            return (off, size, name);
        }

        var strtab = Section(elf, shstrndx);
        if (strtab.Off < 0 || strtab.Off + strtab.Size > elf.Length) return null;
        var names = elf.Slice((int)strtab.Off, (int)strtab.Size);
        for (int i = 0; i < shnum; i++)
        {
            var s = Section(elf, i);
            if (s.Name >= names.Length) continue;
            var n = names[(int)s.Name..];
            int end = n.IndexOf((byte)0);
            if (end < 0) continue;
            if (Encoding.ASCII.GetString(n[..end]) != sectionName) continue;
            if (s.Off < 0 || s.Off + s.Size > elf.Length) return null;
            return elf.Slice((int)s.Off, (int)s.Size).ToArray();
        }
        return null;
    }
}
