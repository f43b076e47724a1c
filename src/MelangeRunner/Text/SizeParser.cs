using System.Globalization;
using System.Text.RegularExpressions;

namespace MelangeRunner;

/// <summary>Size strings as melange's convertHumanToKB reads them ("4Gi", "512M", "100B").</summary>
public static partial class SizeParser
{
    // Binary units (Ki…Ti), decimal units in either case (K/k…T/t), and plain bytes.
    private static readonly (string Unit, long Multiplier)[] UnitTable =
    {
        ("Ki", 1L << 10), ("Mi", 1L << 20), ("Gi", 1L << 30), ("Ti", 1L << 40),
        ("K", 1_000L), ("M", 1_000_000L), ("G", 1_000_000_000L), ("T", 1_000_000_000_000L),
        ("k", 1_000L), ("m", 1_000_000L), ("g", 1_000_000_000L), ("t", 1_000_000_000_000L),
        ("B", 1L),
    };

    /// <summary>The accepted units, as an error message lists them.</summary>
    public static string AcceptedUnits => string.Join(", ", UnitTable.Select(u => u.Unit));

    [GeneratedRegex(@"^(\d+)([a-zA-Z]+)$", RegexOptions.CultureInvariant)]
    private static partial Regex SizePattern();

    /// <summary>Parses a size string to bytes.</summary>
    /// <param name="value">The size, a whole number directly followed by a unit.</param>
    /// <param name="what">What the size is for (named in the error).</param>
    public static long ParseToBytes(string value, string what = "size")
    {
        var match = SizePattern().Match(value?.Trim() ?? "");
        if (!match.Success)
            throw Bad(value, what, $"it is not a whole number followed by a unit");
        var unit = match.Groups[2].Value;
        var multiplier = UnitTable.FirstOrDefault(u => u.Unit == unit).Multiplier;
        if (multiplier == 0)
            throw Bad(value, what, $"'{unit}' is not a unit");
        if (!long.TryParse(match.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out var number))
            throw Bad(value, what, "the number is too large");
        try
        {
            return checked(number * multiplier);
        }
        catch (OverflowException)
        {
            throw Bad(value, what, "the size is too large");
        }
    }

    /// <summary>
    /// A byte count as a size string this parser reads back to the same count, in the largest
    /// binary unit that divides it exactly (4294967296 → "4Gi", 1536 MiB → "1536Mi", 1000 → "1000B"),
    /// so that a PowerShell number (4GB) shows up readably in a config or a plan.
    /// </summary>
    public static string FromBytes(long bytes)
    {
        if (bytes < 0)
            throw Bad(bytes.ToString(CultureInfo.InvariantCulture), "size", "it is negative");
        foreach (var (unit, multiplier) in new[] { ("Ti", 1L << 40), ("Gi", 1L << 30), ("Mi", 1L << 20), ("Ki", 1L << 10) })
            if (bytes != 0 && bytes % multiplier == 0)
                return (bytes / multiplier).ToString(CultureInfo.InvariantCulture) + unit;
        return bytes.ToString(CultureInfo.InvariantCulture) + "B";
    }

    /// <summary>Parses a size string to KiB, rounding down, as melange does.</summary>
    public static long ParseToKiB(string value, string what = "size") => ParseToBytes(value, what) / Units.KB;

    private static MelangeException Bad(string? value, string what, string why) =>
        new(ErrorKind.InvalidArgument, "InvalidSize",
            $"The {what} '{value}' is not a valid size: {why}.",
            $"Write a whole number directly followed by one of the units {AcceptedUnits} (binary Ki/Mi/Gi/Ti, decimal K/M/G/T), for example 4Gi.",
            value);
}
