namespace MelangeRunner;

/// <summary>A host path bound into the pod.</summary>
public sealed record BindMount
{
    public BindMount() { }

    public BindMount(string source, string destination)
    {
        Source = source;
        Destination = destination;
    }

    public string Source { get; init; } = "";
    public string Destination { get; init; } = "";

    /// <summary>
    /// MountSourceNotFound for the first mount whose source is not on this host; <paramref name="givenBy"/>
    /// names the parameters the sources come from, for the fix.
    /// </summary>
    internal static void RequireSources(IEnumerable<BindMount> mounts, string givenBy)
    {
        foreach (var m in mounts)
        {
            if (!File.Exists(m.Source) && !Directory.Exists(m.Source))
                throw new MelangeException(ErrorKind.ObjectNotFound, "MountSourceNotFound",
                    $"The mount source '{m.Source}' (for {m.Destination}) does not exist.",
                    $"Create it first, or correct the path given to {givenBy}.", m.Source);
        }
    }

    /// <summary>Reads "SOURCE:DESTINATION" (the destination is after the last colon).</summary>
    public static BindMount Parse(string value)
    {
        var colon = value.LastIndexOf(':');
        if (colon <= 0 || colon == value.Length - 1)
            throw new MelangeException(ErrorKind.InvalidArgument, "BadMount",
                $"The mount '{value}' is not of the form SOURCE:DESTINATION.",
                "Write mounts as SOURCE:DESTINATION, for example ./src:/opt/src.", value);
        return new BindMount(value[..colon], value[(colon + 1)..]);
    }

    public override string ToString() => $"{Source}:{Destination}";
}

/// <summary>Networking and kernel capabilities of the pod.</summary>
public sealed class Capabilities
{
    public bool Networking { get; set; }

    /// <summary>Kernel capabilities added to the default set.</summary>
    public string[] Add { get; set; } = Array.Empty<string>();

    /// <summary>Kernel capabilities removed from the default set.</summary>
    public string[] Drop { get; set; } = Array.Empty<string>();
}

/// <summary>
/// What a user sets to start a pod: melange's container.Config without its runtime state
/// (which lives on <see cref="Pod"/>).
/// </summary>
public sealed class PodConfig
{
    public string? PackageName { get; set; }

    /// <summary>Bind mounts, in the order they are applied.</summary>
    public List<BindMount> Mounts { get; set; } = new();

    public Capabilities Capabilities { get; set; } = new();

    /// <summary>Environment of every command, in the order given.</summary>
    public Dictionary<string, string> Environment { get; set; } = new(StringComparer.Ordinal);

    /// <summary>Guest architecture (apko names: x86_64, aarch64, …); empty means the host's.</summary>
    public string? Arch { get; set; }

    public string? RunAsUID { get; set; }
    public string? RunAsGID { get; set; }

    /// <summary>The user that build steps run as (a name or a numeric id).</summary>
    public string? RunAs { get; set; }

    /// <summary>The host directory bound (bubblewrap) or copied (qemu) to <see cref="Defaults.WorkspaceDir"/>.</summary>
    public string? WorkspaceDir { get; set; }

    /// <summary>The host directory made available at <see cref="Defaults.CacheDir"/>.</summary>
    public string? CacheDir { get; set; }

    /// <summary>Number of vCPUs (qemu), as a string as in melange.</summary>
    public string? CPU { get; set; }
    public string? CPUModel { get; set; }

    /// <summary>Memory size string, e.g. "4Gi".</summary>
    public string? Memory { get; set; }

    /// <summary>Scratch disk size string, e.g. "50Gi".</summary>
    public string? Disk { get; set; }

    /// <summary>Upper bound for a whole pod's life; zero means none.</summary>
    public TimeSpan Timeout { get; set; }

    /// <summary>qemu: "auto" (KVM where it really runs guests, else TCG; also when empty), "kvm" or "tcg".</summary>
    public string? Accelerator { get; set; }

    /// <summary>A deep copy, so that a started pod is not changed by later edits to the config.</summary>
    public PodConfig Clone() => new()
    {
        PackageName = PackageName,
        Mounts = new List<BindMount>(Mounts),
        Capabilities = new Capabilities
        {
            Networking = Capabilities.Networking,
            Add = (string[])Capabilities.Add.Clone(),
            Drop = (string[])Capabilities.Drop.Clone(),
        },
        Environment = new Dictionary<string, string>(Environment, StringComparer.Ordinal),
        Arch = Arch,
        RunAsUID = RunAsUID,
        RunAsGID = RunAsGID,
        RunAs = RunAs,
        WorkspaceDir = WorkspaceDir,
        CacheDir = CacheDir,
        CPU = CPU,
        CPUModel = CPUModel,
        Memory = Memory,
        Disk = Disk,
        Timeout = Timeout,
        Accelerator = Accelerator,
    };

    /// <summary>
    /// Checks every field that has a format (sizes, capabilities, mounts) and throws
    /// <see cref="MelangeException"/> naming the first that is wrong. The config is not changed:
    /// <see cref="PodSpec.From"/> is the normalised, frozen form a pod starts from.
    /// </summary>
    public void Validate() => _ = PodSpec.From(this);
}
