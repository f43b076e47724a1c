using System.Formats.Tar;
using System.Text;

namespace MelangeRunner.Tar;

/// <summary>
/// SCHILY.xattr.* PAX attributes as raw bytes.
/// System.Formats.Tar decodes every PAX value as UTF-8, so a binary value (a
/// security.capability blob has bytes ≥ 0x80) comes back with U+FFFD in place of those
/// bytes. GNU tar writes such values raw. When a decoded value holds U+FFFD, the raw
/// bytes are recovered by re-parsing the extended header that <see cref="RecordingStream"/>
/// kept. If that was not possible (header over 1 MiB) the UTF-8 re-encoding is used and
/// the value may be wrong — the caller is warned.
/// </summary>
internal static class Xattrs
{
    public const string Prefix = "SCHILY.xattr.";

    public static bool HasAny(TarEntry entry) =>
        entry is PaxTarEntry pax && AnyXattrKey(pax.ExtendedAttributes);

    private static bool AnyXattrKey(IReadOnlyDictionary<string, string> ea)
    {
        foreach (var k in ea.Keys) if (k.StartsWith(Prefix, StringComparison.Ordinal)) return true;
        return false;
    }

    /// <summary>The xattrs of an entry (name without the prefix → raw value); <paramref name="lossy"/> when some could not be recovered exactly.</summary>
    public static List<KeyValuePair<string, byte[]>>? Get(TarEntry entry, RecordingStream? recorder, out bool lossy)
    {
        lossy = false;
        if (entry is not PaxTarEntry pax) return null;
        List<KeyValuePair<string, byte[]>>? result = null;
        Dictionary<string, byte[]>? raw = null;
        foreach (var (key, value) in pax.ExtendedAttributes)
        {
            if (!key.StartsWith(Prefix, StringComparison.Ordinal)) continue;
            byte[]? bytes = null;
            if (value.Contains('\uFFFD'))
            {
                raw ??= recorder != null && !recorder.Overflowed ? ParseRaw(recorder) : new Dictionary<string, byte[]>();
                if (!raw.TryGetValue(key, out bytes)) lossy = true;
            }
            (result ??= new()).Add(new(key[Prefix.Length..], bytes ?? Encoding.UTF8.GetBytes(value)));
        }
        return result;
    }

    /// <summary>Re-reads the 'x' extended header blocks among the recorded bytes (padding + headers of one entry).</summary>
    private static Dictionary<string, byte[]> ParseRaw(RecordingStream rec)
    {
        var found = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        ReadOnlySpan<byte> b = rec.Recorded;
        int pos = (int)((512 - rec.RecordStart % 512) % 512);
        while (pos + 512 <= b.Length)
        {
            var h = b.Slice(pos, 512);
            byte type = h[156];
            long size = ParseOctal(h.Slice(124, 12));
            pos += 512;
            if (type is (byte)'x' or (byte)'X')
            {
                if (size < 0 || pos + size > b.Length) break;
                ParseRecords(b.Slice(pos, (int)size), found);
            }
            else if (type is not ((byte)'L' or (byte)'K')) break; // the entry's own header: done
            pos += (int)((size + 511) / 512 * 512);
        }
        return found;
    }

    private static void ParseRecords(ReadOnlySpan<byte> data, Dictionary<string, byte[]> found)
    {
        // Records are "<len> <key>=<value>\n", where <len> counts the whole record.
        while (data.Length > 0)
        {
            int sp = data.IndexOf((byte)' ');
            if (sp <= 0 || !int.TryParse(Encoding.ASCII.GetString(data[..sp]), out int len) || len <= sp + 2 || len > data.Length) return;
            var rec = data.Slice(sp + 1, len - sp - 2); // without the trailing '\n'
            int eq = rec.IndexOf((byte)'=');
            if (eq > 0)
            {
                string key = Encoding.UTF8.GetString(rec[..eq]);
                if (key.StartsWith(Prefix, StringComparison.Ordinal)) found[key] = rec[(eq + 1)..].ToArray();
            }
            data = data[len..];
        }
    }

    /// <summary>A tar header's octal number field; -1 when it holds anything else.</summary>
    internal static long ParseOctal(ReadOnlySpan<byte> f) => RawHeader.ParseOctal(f);
}

/// <summary>
/// The raw bytes of an entry's headers, kept by <see cref="RecordingStream"/>: what
/// System.Formats.Tar decodes lossily (names as UTF-8) or not at all (GNU sparse markers).
/// </summary>
internal static class RawHeader
{
    public enum Field { Path, LinkPath }

    /// <summary>
    /// The name or link target as the tar holds it, with the precedence System.Formats.Tar
    /// uses: a PAX 'path'/'linkpath' record, else a GNU 'L'/'K' long name, else the header's
    /// own fields (ustar prefix + name). Null when the recorded bytes do not hold it.
    /// </summary>
    public static byte[]? Read(RecordingStream rec, Field field)
    {
        ReadOnlySpan<byte> b = rec.Recorded;
        int pos = (int)((512 - rec.RecordStart % 512) % 512);
        byte[]? pax = null, gnu = null;
        ReadOnlySpan<byte> paxKey = field == Field.Path ? "path"u8 : "linkpath"u8;
        byte longType = field == Field.Path ? (byte)'L' : (byte)'K';
        while (pos + 512 <= b.Length)
        {
            var h = b.Slice(pos, 512);
            byte type = h[156];
            long size = ParseOctal(h.Slice(124, 12));
            pos += 512;
            if (type is (byte)'x' or (byte)'X' or (byte)'L' or (byte)'K')
            {
                if (size < 0 || pos + size > b.Length) return null;
                var data = b.Slice(pos, (int)size);
                if (type is (byte)'x' or (byte)'X') { if (PaxValue(data, paxKey) is { } v) pax = v; }
                else if (type == longType) gnu = UpToNul(data).ToArray();
                pos += (int)((size + 511) / 512 * 512);
                continue;
            }
            if (pax != null) return pax;
            if (gnu != null) return gnu;
            if (field == Field.LinkPath) return UpToNul(h.Slice(157, 100)).ToArray();
            var name = UpToNul(h[..100]);
            var prefix = h.Slice(257, 6).SequenceEqual("ustar\0"u8) ? UpToNul(h.Slice(345, 155)) : default;
            if (prefix.Length == 0) return name.ToArray();
            var full = new byte[prefix.Length + 1 + name.Length];
            prefix.CopyTo(full);
            full[prefix.Length] = (byte)'/';
            name.CopyTo(full.AsSpan(prefix.Length + 1));
            return full;
        }
        return null;
    }

    /// <summary>
    /// Whether the recorded headers mark a GNU sparse file: type 'S' (tar -S --format=gnu), or
    /// GNU.sparse.* PAX records (--format=posix, any sparse version).
    /// </summary>
    public static bool HasSparseMarker(RecordingStream rec)
    {
        ReadOnlySpan<byte> b = rec.Recorded;
        int pos = (int)((512 - rec.RecordStart % 512) % 512);
        while (pos + 512 <= b.Length)
        {
            var h = b.Slice(pos, 512);
            byte type = h[156];
            if (type == (byte)'S') return true;
            long size = ParseOctal(h.Slice(124, 12));
            pos += 512;
            if (size < 0) return false;
            if (type is (byte)'x' or (byte)'X' && b[pos..].Length >= size && b.Slice(pos, (int)size).IndexOf("GNU.sparse."u8) >= 0) return true;
            if (type is not ((byte)'x' or (byte)'X' or (byte)'L' or (byte)'K' or (byte)'g')) return false;
            pos += (int)((size + 511) / 512 * 512);
        }
        return false;
    }

    private static ReadOnlySpan<byte> UpToNul(ReadOnlySpan<byte> f)
    {
        int i = f.IndexOf((byte)0);
        return i < 0 ? f : f[..i];
    }

    /// <summary>The raw value of one key among PAX records "&lt;len&gt; &lt;key&gt;=&lt;value&gt;\n" (the last one wins).</summary>
    private static byte[]? PaxValue(ReadOnlySpan<byte> data, ReadOnlySpan<byte> key)
    {
        byte[]? found = null;
        while (data.Length > 0)
        {
            int sp = data.IndexOf((byte)' ');
            if (sp <= 0 || !int.TryParse(Encoding.ASCII.GetString(data[..sp]), out int len) || len <= sp + 2 || len > data.Length) break;
            var rec = data.Slice(sp + 1, len - sp - 2);
            int eq = rec.IndexOf((byte)'=');
            if (eq > 0 && rec[..eq].SequenceEqual(key)) found = rec[(eq + 1)..].ToArray();
            data = data[len..];
        }
        return found;
    }

    /// <summary>A tar header's octal number field; -1 when it holds anything else.</summary>
    internal static long ParseOctal(ReadOnlySpan<byte> f)
    {
        long v = 0;
        foreach (byte c in f)
        {
            if (c is >= (byte)'0' and <= (byte)'7') v = v * 8 + (c - '0');
            else if (c is (byte)' ' or 0) { if (v != 0) break; }
            else return -1;
        }
        return v;
    }
}
