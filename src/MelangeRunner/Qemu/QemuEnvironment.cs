using System.Net;
using System.Text.RegularExpressions;

namespace MelangeRunner.Qemu;

/// <summary>
/// The QEMU_* environment variables melange's qemu runner honours, read and validated once
/// per pod so that a bad value fails before anything starts.
/// </summary>
internal sealed partial class QemuEnvironment
{
    public string? KernelImage { get; init; }
    public string? KernelCmdline { get; init; }
    public string? KernelModules { get; init; }
    public string? BaseInitramfs { get; init; }
    public string? AdditionalPackages { get; init; }
    public string? DisksPath { get; init; }
    public bool UseVirtiofs { get; init; }
    public string? VirtiofsPath { get; init; }

    /// <summary>QEMU_USE_TEMPLATE: start pods by restoring a booted template VM (docs/microvm.md#templates) when one fits.</summary>
    public bool UseTemplate { get; init; }

    /// <summary>The SLIRP network from QEMU_NET_CIDR (normalised), or null for qemu's 10.0.2.0/24.</summary>
    public SlirpNetwork? Network { get; init; }

    public IReadOnlyList<string> DnsSearch { get; init; } = Array.Empty<string>();

    /// <summary>MELANGE_QEMU_ACCELERATOR (auto, kvm or tcg): the accelerator for scripts; -Accelerator wins over it.</summary>
    public string? Accelerator { get; init; }

    /// <summary>TESTING, passed to the guest as melange.testing=N when it is a number.</summary>
    public int? Testing { get; init; }

    /// <summary>Reads the variables through <paramref name="get"/> (default: the process environment).</summary>
    public static QemuEnvironment Read(Func<string, string?>? get = null, IEventSink? events = null)
    {
        get ??= Environment.GetEnvironmentVariable;
        string? Value(string name) => get(name) is { Length: > 0 } v ? v : null;

        int? testing = null;
        if (Value("TESTING") is { } t)
        {
            if (int.TryParse(t, out var n)) testing = n;
            else events?.Warning($"TESTING must be a number; ignoring '{t}'.");
        }
        return new QemuEnvironment
        {
            KernelImage = Value("QEMU_KERNEL_IMAGE"),
            KernelCmdline = get("QEMU_KERNEL_CMDLINE"),
            KernelModules = Value("QEMU_KERNEL_MODULES"),
            BaseInitramfs = Value("QEMU_BASE_INITRAMFS"),
            AdditionalPackages = Value("QEMU_ADDITIONAL_PACKAGES"),
            DisksPath = Value("QEMU_DISKS_PATH"),
            UseVirtiofs = Value("QEMU_USE_VIRTIOFS") is { } v && ParseBool(v),
            VirtiofsPath = Value("QEMU_VIRTIOFS_PATH"),
            UseTemplate = Value("QEMU_USE_TEMPLATE") is { } tpl && ParseBool(tpl),
            Network = Value("QEMU_NET_CIDR") is { } cidr ? SlirpNetwork.Parse(cidr) : null,
            DnsSearch = get("QEMU_DNS_SEARCH") is { } dns ? ParseDnsSearch(dns) : Array.Empty<string>(),
            Testing = testing,
            Accelerator = Value(AcceleratorChoice.EnvironmentVariable) is { } accel ? AcceleratorChoice.Normalize(accel, AcceleratorChoice.EnvironmentVariable) : null,
        };
    }

    /// <summary>
    /// Only the variables that name host paths and packages (QEMU_KERNEL_IMAGE, QEMU_KERNEL_MODULES,
    /// QEMU_BASE_INITRAMFS, QEMU_ADDITIONAL_PACKAGES), which need no validation: for the kernel
    /// lookup and the initramfs outside a pod start (New-MelangeInitramfs, Get-MelangeRunner).
    /// </summary>
    public static QemuEnvironment ReadPaths(Func<string, string?>? get = null)
    {
        get ??= Environment.GetEnvironmentVariable;
        string? Value(string name) => get(name) is { Length: > 0 } v ? v : null;
        return new QemuEnvironment
        {
            KernelImage = Value("QEMU_KERNEL_IMAGE"),
            KernelModules = Value("QEMU_KERNEL_MODULES"),
            BaseInitramfs = Value("QEMU_BASE_INITRAMFS"),
            AdditionalPackages = Value("QEMU_ADDITIONAL_PACKAGES"),
        };
    }

    // Go's strconv.ParseBool.
    private static bool ParseBool(string value) => value is "1" or "t" or "T" or "true" or "TRUE" or "True";

    [GeneratedRegex("^[a-zA-Z0-9.-]+$", RegexOptions.CultureInvariant)]
    private static partial Regex DnsDomain();

    /// <summary>
    /// Comma-separated search domains; only letters, digits, dots and hyphens, which keeps
    /// them from injecting other -netdev options.
    /// </summary>
    public static IReadOnlyList<string> ParseDnsSearch(string input)
    {
        var domains = new List<string>();
        foreach (var part in input.Trim().Split(','))
        {
            var domain = part.Trim();
            if (domain.Length == 0) continue;
            if (!DnsDomain().IsMatch(domain))
                throw new MelangeException(ErrorKind.InvalidArgument, "InvalidDnsSearch",
                    $"QEMU_DNS_SEARCH has an invalid domain '{domain}': only letters, digits, dots and hyphens are allowed.",
                    "Set QEMU_DNS_SEARCH to comma-separated domains such as example.com,corp.internal.", input);
            domains.Add(domain);
        }
        if (domains.Count == 0)
            throw new MelangeException(ErrorKind.InvalidArgument, "InvalidDnsSearch",
                "QEMU_DNS_SEARCH is set but names no domain.", "Unset it, or list domains such as example.com.", input);
        return domains;
    }
}

/// <summary>A SLIRP network (QEMU_NET_CIDR) and the addresses qemu derives in it.</summary>
internal sealed record SlirpNetwork(IPAddress Network, int PrefixLength)
{
    public const int MinPrefix = 8;
    public const int MaxPrefix = 28;

    public override string ToString() => $"{Network}/{PrefixLength}";

    /// <summary>SLIRP's gateway (host) address: network + 2.</summary>
    public IPAddress Gateway => Offset(2);

    /// <summary>SLIRP's DNS address: network + 3.</summary>
    public IPAddress Dns => Offset(3);

    /// <summary>The first DHCP address, which the guest takes: network + 15.</summary>
    public IPAddress Guest => Offset(15);

    private IPAddress Offset(uint n)
    {
        var b = Network.GetAddressBytes();
        var value = ((uint)b[0] << 24 | (uint)b[1] << 16 | (uint)b[2] << 8 | b[3]) + n;
        return new IPAddress(new[] { (byte)(value >> 24), (byte)(value >> 16), (byte)(value >> 8), (byte)value });
    }

    /// <summary>
    /// An IPv4 CIDR with a prefix from /8 to /28 (so that SLIRP's addresses up to +15 fit);
    /// anything else, a comma included, is refused: the value goes into a -netdev option.
    /// </summary>
    public static SlirpNetwork Parse(string input)
    {
        var text = input.Trim();
        MelangeException Bad(string why) => new(ErrorKind.InvalidArgument, "InvalidNetCidr",
            $"QEMU_NET_CIDR '{input}' is not usable: {why}.",
            $"Set QEMU_NET_CIDR to an IPv4 network from /{MinPrefix} to /{MaxPrefix}, for example 192.168.76.0/24.", input);

        if (text.Length == 0) throw Bad("it is empty");
        if (text.Contains(',')) throw Bad("it contains a comma");
        var slash = text.IndexOf('/');
        if (slash <= 0 || !IPAddress.TryParse(text[..slash], out var ip) || !int.TryParse(text[(slash + 1)..], out var prefix))
            throw Bad("it is not of the form A.B.C.D/N");
        if (ip.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork || text[..slash].Count(c => c == '.') != 3)
            throw Bad("it is not IPv4");
        if (prefix < MinPrefix || prefix > MaxPrefix) throw Bad($"the prefix /{prefix} is outside /{MinPrefix}–/{MaxPrefix}");
        var b = ip.GetAddressBytes();
        var value = (uint)b[0] << 24 | (uint)b[1] << 16 | (uint)b[2] << 8 | b[3];
        var mask = uint.MaxValue << (32 - prefix);
        value &= mask;
        return new SlirpNetwork(new IPAddress(new[] { (byte)(value >> 24), (byte)(value >> 16), (byte)(value >> 8), (byte)value }), prefix);
    }
}
