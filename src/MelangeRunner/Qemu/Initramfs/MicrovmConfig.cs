namespace MelangeRunner;

/// <summary>
/// melange's MicrovmConfig: what the base initramfs of the qemu runner is made of. melange fetches
/// an init package from APK repositories; MelangeRunner builds its guest from the host's programs
/// with its own init, so <see cref="Repositories"/> and <see cref="ExtraKeys"/> are accepted for
/// compatibility but not used.
/// </summary>
public sealed class MicrovmConfig
{
    /// <summary>The name of MelangeRunner's built-in guest init (melange: its microvm-init package).</summary>
    public const string BuiltInInit = "melange-runner-init";

    /// <summary>The guest init; only the built-in one exists.</summary>
    public string Package { get; set; } = BuiltInInit;

    /// <summary>APK repositories (melange compatibility; not used: nothing is fetched).</summary>
    public List<string> Repositories { get; set; } = new();

    /// <summary>More things to put in the initramfs: Debian packages installed on the host, or programs on PATH.</summary>
    public List<string> AdditionalPackages { get; set; } = new();

    /// <summary>APK signing keys (melange compatibility; not used).</summary>
    public List<string> ExtraKeys { get; set; } = new();

    /// <summary>melange's DefaultMicrovmConfig.</summary>
    public static MicrovmConfig Default() => new();

    public override string ToString() => Package + (AdditionalPackages.Count > 0 ? " + " + string.Join(",", AdditionalPackages) : "");
}
