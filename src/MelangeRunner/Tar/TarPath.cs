namespace MelangeRunner.Tar;

/// <summary>Lexical checks of tar entry names (the file-system checks are in <see cref="SafeTarExtractor"/>).</summary>
internal static class TarPath
{
    public const string WhiteoutPrefix = ".wh.";
    public const string OpaqueMarker = ".wh..wh..opq";

    /// <summary>
    /// Turns an entry name into a clean relative path ("a/b", "" for the root) or returns
    /// null with the reason: absolute names and names whose ".." components climb above
    /// the root are refused. "./", "." and repeated slashes are dropped.
    /// </summary>
    public static string? Normalize(string name, out string? reason)
    {
        reason = null;
        if (name.Length == 0) { reason = "it has an empty name"; return null; }
        if (name[0] == '/') { reason = "its name is an absolute path"; return null; }
        // Fast path: already clean (the usual case in layers) — no allocation.
        if (IsClean(name)) return name.EndsWith('/') ? name.TrimEnd('/') : name;
        var parts = new List<string>();
        foreach (var part in name.Split('/'))
        {
            if (part.Length == 0 || part == ".") continue;
            if (part == "..")
            {
                if (parts.Count == 0) { reason = "its name climbs out of the destination with '..'"; return null; }
                parts.RemoveAt(parts.Count - 1);
                continue;
            }
            parts.Add(part);
        }
        return string.Join('/', parts);
    }

    static bool IsClean(string name)
    {
        int start = 0;
        for (int i = 0; i <= name.Length; i++)
        {
            if (i == name.Length || name[i] == '/')
            {
                int len = i - start;
                if (len == 0 && i != name.Length) return false;
                if (len == 1 && name[start] == '.') return false;
                if (len == 2 && name[start] == '.' && name[start + 1] == '.') return false;
                start = i + 1;
            }
        }
        return true;
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
