using System.Runtime.InteropServices;

namespace MelangeRunner.Images;

/// <summary>apko architecture names and their OCI platform equivalents.</summary>
public static class Architecture
{
    // apko name → (OCI architecture, OCI variant or null)
    private static readonly (string Apko, string Oci, string? Variant)[] Table =
    {
        ("x86_64", "amd64", null),
        ("aarch64", "arm64", null),
        ("armv7", "arm", "v7"),
        ("armhf", "arm", "v6"),
        ("ppc64le", "ppc64le", null),
        ("s390x", "s390x", null),
        ("x86", "386", null),
        ("riscv64", "riscv64", null),
        ("loongarch64", "loong64", null),
    };

    /// <summary>The host's architecture, apko-style (x86_64, aarch64…).</summary>
    public static string Host => RuntimeInformation.OSArchitecture switch
    {
        System.Runtime.InteropServices.Architecture.X64 => "x86_64",
        System.Runtime.InteropServices.Architecture.Arm64 => "aarch64",
        System.Runtime.InteropServices.Architecture.Arm => "armv7",
        System.Runtime.InteropServices.Architecture.X86 => "x86",
        System.Runtime.InteropServices.Architecture.S390x => "s390x",
        System.Runtime.InteropServices.Architecture.Ppc64le => "ppc64le",
        System.Runtime.InteropServices.Architecture.LoongArch64 => "loongarch64",
        var other => other.ToString().ToLowerInvariant(),
    };

    /// <summary>
    /// The apko name for an architecture given as an apko name (x86_64), an OCI name (amd64,
    /// arm/v7) or a platform (linux/arm64); null or empty means the host's.
    /// </summary>
    public static string Normalize(string? arch)
    {
        if (string.IsNullOrWhiteSpace(arch)) return Host;
        string a = arch.Trim().ToLowerInvariant();
        if (a.StartsWith("linux/", StringComparison.Ordinal)) a = a["linux/".Length..];
        if (a is "arm64/v8") a = "arm64";
        if (a is "i386" or "i686") a = "386";
        foreach (var (apko, oci, variant) in Table)
            if (a == apko || a == (variant == null ? oci : oci + "/" + variant)) return apko;
        if (a == "arm") return "armv7";
        throw new MelangeException(ErrorKind.InvalidArgument, "UnknownArchitecture", $"'{arch}' is not a known architecture.",
            "Use one of: " + string.Join(", ", Table.Select(t => t.Apko)) + " (or the OCI names: " + string.Join(", ", Table.Select(t => OciName(t.Apko))) + ").", arch);
    }

    /// <summary>The OCI platform string (amd64, arm/v7) of an apko architecture name.</summary>
    public static string OciName(string apko)
    {
        foreach (var (a, oci, variant) in Table)
            if (a == apko) return variant == null ? oci : oci + "/" + variant;
        return apko;
    }

    /// <summary>Whether an OCI platform's architecture and variant denote the apko architecture.</summary>
    internal static bool Matches(string apko, string? ociArch, string? ociVariant)
    {
        if (ociArch == null) return false;
        foreach (var (a, oci, variant) in Table)
        {
            if (a != apko || oci != ociArch) continue;
            if (variant == null) return true; // arm64 with or without "v8"
            return ociVariant == variant || (ociVariant == null && variant == "v7");
        }
        return false;
    }

    /// <summary>An apko-style name for an OCI platform, for messages and results.</summary>
    internal static string FromOci(string ociArch, string? ociVariant)
    {
        foreach (var (a, oci, variant) in Table)
            if (oci == ociArch && (variant == null || variant == ociVariant || (ociVariant == null && variant == "v7"))) return a;
        return ociVariant == null ? ociArch : ociArch + "/" + ociVariant;
    }
}
