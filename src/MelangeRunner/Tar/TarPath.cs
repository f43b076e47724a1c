using System.Formats.Tar;
using System.Text;

namespace MelangeRunner.Tar;

/// <summary>
/// The one path rule for what a tar says: every entry name, hard-link target, whiteout and
/// opaque marker, for image import (extraction and flattening) and both workspace exports,
/// is checked here before any system call sees it. The file-system checks (every parent a
/// real directory, never a symlink) are in <see cref="TarExtractor"/>.
/// </summary>
/// <remarks>
/// The rule: a name is relative; it may start with one "./" and end with slashes (what GNU tar
/// and every layer builder write); what is left is split at '/' and each component must be
/// non-empty, not "." and not "..", at most <see cref="MaxComponentBytes"/> bytes; the whole at
/// most <see cref="MaxNameBytes"/> bytes (so at most 2048 components: every walk over a name is
/// bounded); no NUL anywhere (the C library would cut the name there, and "..\0x" would pass a
/// check made on the whole string but reach the kernel as ".."); the name must be the tar's own
/// bytes, valid UTF-8 (<see cref="CheckExact"/>). Nothing is normalised away: a name that needs
/// it is refused, so that what is checked is exactly what reaches the kernel.
/// </remarks>
internal static class TarPath
{
    public const string WhiteoutPrefix = ".wh.";
    public const string WhiteoutMetaPrefix = ".wh..wh.";
    public const string OpaqueMarker = ".wh..wh..opq";

    /// <summary>PATH_MAX less the terminating NUL: no path call could take a longer name anyway.</summary>
    public const int MaxNameBytes = 4095;

    /// <summary>NAME_MAX.</summary>
    public const int MaxComponentBytes = 255;

    /// <summary>
    /// Turns an entry name into its relative path ("a/b", "" for the root) or returns null with
    /// the reason (a phrase that follows "Skipped tar entry 'x': ").
    /// </summary>
    public static string? Normalize(string name, out string? reason)
    {
        reason = null;
        if (name.Length == 0) { reason = "it has an empty name"; return null; }
        if (name.Contains('\0')) { reason = "its name contains a NUL byte"; return null; }
        if (name[0] == '/') { reason = "its name is an absolute path"; return null; }
        ReadOnlySpan<char> s = name;
        if (s is ".") return "";
        if (s.StartsWith("./")) s = s[2..];
        s = s.TrimEnd('/');
        if (s.Length == 0) return "";
        if (s.Length > MaxNameBytes / 3 && Encoding.UTF8.GetByteCount(s) > MaxNameBytes)
        {
            reason = $"its name is longer than {MaxNameBytes} bytes";
            return null;
        }
        for (var rest = s; ;)
        {
            int slash = rest.IndexOf('/');
            reason = CheckComponent(slash < 0 ? rest : rest[..slash], "its name");
            if (reason != null) return null;
            if (slash < 0) break;
            rest = rest[(slash + 1)..];
        }
        return s.Length == name.Length ? name : s.ToString(); // the usual clean name: no allocation
    }

    /// <summary>Why one path component is not acceptable, or null.</summary>
    private static string? CheckComponent(ReadOnlySpan<char> part, string what)
    {
        if (part.Length == 0) return $"{what} has an empty component ('//')";
        if (part is ".") return $"{what} has a '.' component";
        if (part is "..") return $"{what} has a '..' component";
        if (part.Length > MaxComponentBytes / 3 && Encoding.UTF8.GetByteCount(part) > MaxComponentBytes)
            return $"{what} has a component longer than {MaxComponentBytes} bytes";
        return null;
    }

    /// <summary>
    /// The name of an entry through the whole rule: <see cref="Normalize"/> and <see cref="CheckExact"/>.
    /// </summary>
    public static string? EntryName(TarEntry entry, RecordingStream? recorder, out string? reason)
    {
        string? rel = Normalize(entry.Name, out reason);
        if (rel == null) return null;
        if (!CheckExact(entry.Name, recorder, RawHeader.Field.Path)) { reason = "its name is not valid UTF-8"; return null; }
        return rel;
    }

    /// <summary>A hard link's target, through the same rule as names; never the root itself.</summary>
    public static string? HardLinkTarget(TarEntry entry, RecordingStream? recorder, out string? reason)
    {
        string link = entry.LinkName;
        string? rel = Normalize(link, out string? why);
        if (rel != null && !CheckExact(link, recorder, RawHeader.Field.LinkPath)) { rel = null; why = "its name is not valid UTF-8"; }
        if (rel == null) { reason = $"it is a hard link to '{link}', and {why!.Replace("its name", "that name")}"; return null; }
        if (rel.Length == 0) { reason = "it is a hard link to the destination directory"; return null; }
        reason = null;
        return rel;
    }

    /// <summary>
    /// A symlink's target is stored as it is and never followed while extracting, so only what
    /// would change it on its way to symlink(2) is refused: emptiness, NUL, more than PATH_MAX,
    /// bytes that are not UTF-8.
    /// </summary>
    public static string? SymlinkTarget(TarEntry entry, RecordingStream? recorder, out string? reason)
    {
        string link = entry.LinkName;
        reason = link.Length == 0 ? "it is a symlink with an empty target"
            : link.Contains('\0') ? "its symlink target contains a NUL byte"
            : Encoding.UTF8.GetByteCount(link) > MaxNameBytes ? $"its symlink target is longer than {MaxNameBytes} bytes"
            : !CheckExact(link, recorder, RawHeader.Field.LinkPath) ? "its symlink target is not valid UTF-8"
            : null;
        return reason == null ? link : null;
    }

    /// <summary>
    /// System.Formats.Tar decodes names as UTF-8, turning invalid bytes into U+FFFD, so two
    /// different names ("a\xff", "a\xfe") would come back as one and silently become one file
    /// (and a name would be changed). A decoded name with U+FFFD is accepted only when the raw
    /// header bytes hold exactly that name (a real U+FFFD); names are kept exact or refused,
    /// never merged. Without the raw bytes (a header over 1 MiB), it is refused.
    /// </summary>
    private static bool CheckExact(string decoded, RecordingStream? recorder, RawHeader.Field field)
    {
        if (!decoded.Contains('\uFFFD')) return true;
        if (recorder == null || recorder.Overflowed) return false;
        byte[]? raw = RawHeader.Read(recorder, field);
        return raw != null && System.Text.Unicode.Utf8.IsValid(raw) && Encoding.UTF8.GetString(raw) == decoded;
    }

    public enum WhiteoutKind { None, Entry, Opaque, Meta }

    /// <summary>
    /// Whether a clean relative path is an OCI whiteout. For <see cref="WhiteoutKind.Entry"/>,
    /// <paramref name="target"/> is the path it deletes: the name after ".wh." must itself be a
    /// valid component (".wh..." would otherwise name the parent of the directory, ".wh.." the
    /// directory itself). For <see cref="WhiteoutKind.Opaque"/> it is the directory to clear.
    /// Other ".wh..wh." names are aufs metadata, ignored as containerd does. Null with a reason when refused.
    /// </summary>
    public static WhiteoutKind Whiteout(string rel, out string target, out string? reason)
    {
        reason = null;
        target = "";
        string baseName = BaseName(rel);
        if (!baseName.StartsWith(WhiteoutPrefix, StringComparison.Ordinal)) return WhiteoutKind.None;
        target = Parent(rel);
        if (baseName == OpaqueMarker) return WhiteoutKind.Opaque;
        if (baseName.StartsWith(WhiteoutMetaPrefix, StringComparison.Ordinal)) return WhiteoutKind.Meta;
        string hidden = baseName[WhiteoutPrefix.Length..];
        reason = CheckComponent(hidden, "the name it deletes");
        if (reason != null) { reason = $"it is a whiteout, and {reason}"; return WhiteoutKind.Meta; }
        target = Join(target, hidden);
        return WhiteoutKind.Entry;
    }

    /// <summary>
    /// Resolves a member symlink of an image archive (legacy 'docker save' links layer.tar files as
    /// "../&lt;id&gt;/layer.tar") lexically, for looking the member up by name. Never used for
    /// a file-system path. Null when it climbs above the archive's root or breaks the rule.
    /// </summary>
    public static string? ResolveArchiveLink(string memberDir, string link)
    {
        if (link.Length == 0 || link[0] == '/' || link.Contains('\0')) return null;
        var parts = new List<string>(memberDir.Length == 0 ? Array.Empty<string>() : memberDir.Split('/'));
        foreach (var part in link.Split('/'))
        {
            if (part.Length == 0 || part == ".") continue;
            if (part == "..")
            {
                if (parts.Count == 0) return null;
                parts.RemoveAt(parts.Count - 1);
            }
            else parts.Add(part);
        }
        return Normalize(string.Join('/', parts), out _);
    }

    public static string Parent(string rel)
    {
        int i = rel.LastIndexOf('/');
        return i < 0 ? "" : rel[..i];
    }

    public static string BaseName(string rel)
    {
        int i = rel.LastIndexOf('/');
        return i < 0 ? rel : rel[(i + 1)..];
    }

    public static string Join(string parent, string name) => parent.Length == 0 ? name : parent + "/" + name;

    /// <summary>True when <paramref name="ancestor"/> is a proper ancestor directory of <paramref name="rel"/>.</summary>
    public static bool IsUnder(string rel, string ancestor) =>
        ancestor.Length == 0 ? rel.Length > 0 : rel.Length > ancestor.Length && rel[ancestor.Length] == '/' && rel.StartsWith(ancestor, StringComparison.Ordinal);
}
