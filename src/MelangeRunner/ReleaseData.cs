using System.Text;
using MelangeRunner.Images;

namespace MelangeRunner;

/// <summary>The guest's /etc/os-release, as apko's ReleaseData carries it.</summary>
public sealed class ReleaseData
{
    public string ID { get; init; } = "";
    public string Name { get; init; } = "";
    public string PrettyName { get; init; } = "";
    public string VersionID { get; init; } = "";
    public string HomeURL { get; init; } = "";
    public string BugReportURL { get; init; } = "";

    /// <summary>Every assignment in the file, keys as written.</summary>
    public IReadOnlyDictionary<string, string> Fields { get; init; } = new Dictionary<string, string>();

    /// <summary>
    /// Parses os-release(5): KEY=value lines, blank lines and '#' comments skipped; values
    /// unquoted from double quotes (with \ escapes of $ " \ `) or single quotes (literal).
    /// </summary>
    public static ReleaseData Parse(string text)
    {
        var fields = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var rawLine in text.Split('\n'))
        {
            var line = rawLine.TrimEnd('\r').Trim();
            if (line.Length == 0 || line[0] == '#') continue;
            var eq = line.IndexOf('=');
            if (eq <= 0) continue;
            var key = line[..eq].Trim();
            fields[key] = Unquote(line[(eq + 1)..].Trim());
        }
        string Get(string k) => fields.TryGetValue(k, out var v) ? v : "";
        return new ReleaseData
        {
            ID = Get("ID"),
            Name = Get("NAME"),
            PrettyName = Get("PRETTY_NAME"),
            VersionID = Get("VERSION_ID"),
            HomeURL = Get("HOME_URL"),
            BugReportURL = Get("BUG_REPORT_URL"),
            Fields = fields,
        };
    }

    /// <summary>
    /// The os-release of the unpacked image at <paramref name="rootfs"/>, read as the sandbox
    /// sees it (<see cref="ImageRoot"/>: the image's symlinks resolve inside the image, never to
    /// the host's os-release): /etc/os-release, else /usr/lib/os-release, as os-release(5) says;
    /// null when the image has neither.
    /// </summary>
    public static ReleaseData? ReadFromImage(string rootfs)
    {
        foreach (var candidate in new[] { "/etc/os-release", "/usr/lib/os-release" })
            if (ImageRoot.ReadText(rootfs, candidate) is { } text)
                return Parse(text);
        return null;
    }

    private static string Unquote(string value)
    {
        if (value.Length >= 2 && value[0] == '\'' && value[^1] == '\'')
            return value[1..^1];
        if (value.Length >= 2 && value[0] == '"' && value[^1] == '"')
        {
            var sb = new StringBuilder(value.Length);
            for (var i = 1; i < value.Length - 1; i++)
            {
                var c = value[i];
                if (c == '\\' && i + 1 < value.Length - 1 && "$\"\\`".Contains(value[i + 1]))
                    c = value[++i];
                sb.Append(c);
            }
            return sb.ToString();
        }
        return value;
    }

    public override string ToString() =>
        PrettyName.Length > 0 ? PrettyName : $"{Name} {VersionID}".Trim() is { Length: > 0 } named ? named : ID;
}
