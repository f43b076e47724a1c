namespace MelangeRunner.Qemu;

/// <summary>The accelerator a qemu pod boots with, and why (a clause: "/dev/kvm is missing…", "-Accelerator tcg asks for it"): shown by -Verbose, Get-MelangePodPlan and Get-MelangeRunner.</summary>
/// <param name="Accelerator">"kvm" or "tcg".</param>
/// <param name="Pinned">The user asked for it (-Accelerator or the environment variable): no fallback.</param>
internal sealed record AcceleratorChoice(string Accelerator, string Reason, bool Pinned)
{
    public const string Auto = "auto", Kvm = "kvm", Tcg = "tcg";

    /// <summary>The environment variable that pins the accelerator for scripts; -Accelerator wins over it.</summary>
    public const string EnvironmentVariable = "MELANGE_QEMU_ACCELERATOR";

    /// <summary>"auto", "kvm" or "tcg" from a user's value (empty means auto), or an InvalidAccelerator error naming <paramref name="source"/>.</summary>
    public static string Normalize(string? value, string source)
    {
        if (string.IsNullOrWhiteSpace(value)) return Auto;
        var v = value.Trim().ToLowerInvariant();
        if (v is Auto or Kvm or Tcg) return v;
        throw new MelangeException(ErrorKind.InvalidArgument, "InvalidAccelerator",
            $"{source} is '{value}', which is not an accelerator.", "Use auto (KVM where it runs guests, else TCG), kvm or tcg.", value);
    }

    /// <summary>
    /// The config's value over the environment's, then: tcg as asked; kvm as asked where KVM can
    /// run this guest, else a KvmUnavailable error at once (never a boot that hangs); auto from
    /// the host's evidence (<paramref name="kvm"/>, called only when KVM is possible at all).
    /// </summary>
    public static AcceleratorChoice Decide(string? configValue, string? environmentValue, string arch, string hostArch, Func<KvmDecision> kvm)
    {
        var fromConfig = Normalize(configValue, "-Accelerator");
        var fromEnvironment = Normalize(environmentValue, EnvironmentVariable);
        var (requested, source) = fromConfig != Auto ? (fromConfig, $"-Accelerator {fromConfig}")
            : fromEnvironment != Auto ? (fromEnvironment, $"{EnvironmentVariable}={fromEnvironment}")
            : (Auto, "");
        if (requested == Tcg) return new(Tcg, $"{source} asks for it", Pinned: true);
        if (arch != hostArch)
        {
            if (requested == Kvm)
                throw Unavailable(source, $"KVM cannot run a {arch} guest on this {hostArch} host");
            return new(Tcg, $"the guest is {arch}, the host {hostArch}", Pinned: false);
        }
        var decision = kvm();
        if (requested == Kvm)
            return decision.Usable ? new(Kvm, $"{source} asks for it", Pinned: true) : throw Unavailable(source, decision.Reason);
        return new(decision.Usable ? Kvm : Tcg, decision.Reason, Pinned: false);
    }

    private static MelangeException Unavailable(string source, string why) =>
        new(ErrorKind.ResourceUnavailable, "KvmUnavailable", $"{source} asks for KVM, but {why}.",
            $"Use -Accelerator tcg (or auto), or unset {EnvironmentVariable}; KVM needs a CPU with VT-x/AMD-V (nested virtualization on a VM) and a readable /dev/kvm.", source);
}
