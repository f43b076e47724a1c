namespace MelangeRunner;

/// <summary>Networking and the normalised capability lists of a <see cref="PodSpec"/>.</summary>
public sealed record CapabilitySpec(bool Networking, IReadOnlyList<string> Add, IReadOnlyList<string> Drop);

/// <summary>
/// A <see cref="PodConfig"/> checked and normalised once, and frozen: what a runner starts a pod
/// from. Capability names carry the CAP_ prefix, the accelerator is auto, kvm or tcg, and the
/// sizes are parsed. <see cref="From"/> is the only way to build one, so every spec is valid.
/// </summary>
public sealed record PodSpec
{
    private PodSpec() { }

    public string? PackageName { get; init; }
    public IReadOnlyList<BindMount> Mounts { get; init; } = Array.Empty<BindMount>();
    public CapabilitySpec Capabilities { get; init; } = new(false, Array.Empty<string>(), Array.Empty<string>());

    /// <summary>The config's environment, in the order given.</summary>
    public IReadOnlyList<KeyValuePair<string, string>> Environment { get; init; } = Array.Empty<KeyValuePair<string, string>>();

    public string? Arch { get; init; }
    public string? RunAsUID { get; init; }
    public string? RunAsGID { get; init; }
    public string? RunAs { get; init; }
    public string? WorkspaceDir { get; init; }
    public string? CacheDir { get; init; }
    public string? CPU { get; init; }
    public string? CPUModel { get; init; }
    public string? Memory { get; init; }
    public string? Disk { get; init; }
    public TimeSpan Timeout { get; init; }

    /// <summary>"auto", "kvm" or "tcg" (empty in the config means auto).</summary>
    public string Accelerator { get; init; } = "auto";

    /// <summary><see cref="CPU"/> as a number; 0 when not set.</summary>
    public int CpuCount { get; init; }

    /// <summary><see cref="Memory"/> in KiB; 0 when not set.</summary>
    public long MemoryKiB { get; init; }

    /// <summary>
    /// Checks every field that has a format (sizes, capabilities, mounts, environment names) and
    /// throws <see cref="MelangeException"/> naming the first that is wrong; <paramref name="config"/>
    /// is not changed.
    /// </summary>
    public static PodSpec From(PodConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        long memory = config.Memory is { Length: > 0 } m ? SizeParser.ParseToKiB(m, nameof(PodConfig.Memory)) : 0;
        if (config.Disk is { Length: > 0 } d) SizeParser.ParseToKiB(d, nameof(PodConfig.Disk));
        var cpus = 0;
        if (config.CPU is { Length: > 0 } && (!int.TryParse(config.CPU, out cpus) || cpus < 1))
            throw new MelangeException(ErrorKind.InvalidArgument, "BadCpu",
                $"CPU '{config.CPU}' is not a positive whole number of vCPUs.", "Pass -Cpu as a number such as 2.");
        var accelerator = Qemu.AcceleratorChoice.Normalize(config.Accelerator, "-Accelerator");
        var caps = config.Capabilities ?? new Capabilities();
        var add = Capability.Normalize(caps.Add);
        var drop = Capability.Normalize(caps.Drop);
        foreach (var mount in config.Mounts)
        {
            if (string.IsNullOrEmpty(mount.Source) || string.IsNullOrEmpty(mount.Destination))
                throw new MelangeException(ErrorKind.InvalidArgument, "BadMount",
                    $"Mount '{mount}' needs both a source and a destination.", "Write mounts as SOURCE:DESTINATION.");
            if (!mount.Destination.StartsWith('/'))
                throw new MelangeException(ErrorKind.InvalidArgument, "BadMount",
                    $"Mount destination '{mount.Destination}' is not an absolute path in the pod.", "Give the destination as an absolute path such as /opt/src.");
        }
        foreach (var key in config.Environment.Keys)
        {
            if (key.Length == 0 || key.Contains('=') || key.Contains('\0'))
                throw new MelangeException(ErrorKind.InvalidArgument, "BadEnvironment",
                    $"Environment variable name '{key}' is not valid.", "Use names without '=' or NUL characters.");
        }
        return new PodSpec
        {
            PackageName = config.PackageName,
            Mounts = config.Mounts.ToArray(),
            Capabilities = new CapabilitySpec(caps.Networking, add, drop),
            Environment = config.Environment.ToArray(),
            Arch = config.Arch,
            RunAsUID = config.RunAsUID,
            RunAsGID = config.RunAsGID,
            RunAs = config.RunAs,
            WorkspaceDir = config.WorkspaceDir,
            CacheDir = config.CacheDir,
            CPU = config.CPU,
            CPUModel = config.CPUModel,
            Memory = config.Memory,
            Disk = config.Disk,
            Timeout = config.Timeout,
            Accelerator = accelerator,
            CpuCount = cpus,
            MemoryKiB = memory,
        };
    }

    /// <summary>A new, mutable config with these values (what <see cref="Pod.Config"/> shows).</summary>
    public PodConfig ToConfig()
    {
        var environment = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in Environment) environment[k] = v;
        return new PodConfig
        {
            PackageName = PackageName,
            Mounts = Mounts.ToList(),
            Capabilities = new Capabilities { Networking = Capabilities.Networking, Add = Capabilities.Add.ToArray(), Drop = Capabilities.Drop.ToArray() },
            Environment = environment,
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
    }

    /// <summary>
    /// The environment of one step, the same on every runner, each layer over the one before:
    /// melange's default PATH (<see cref="Defaults.Path"/>), the image config's Env ("K=V", as
    /// OCI writes it), this spec's Environment, then the call's own variables.
    /// </summary>
    public Dictionary<string, string> StepEnvironment(IEnumerable<string>? imageEnv, IReadOnlyDictionary<string, string>? call)
    {
        var env = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in BaseEnvironment(imageEnv, call)) env[k] = v;
        foreach (var (k, v) in Environment) env[k] = v;
        if (call is not null) foreach (var (k, v) in call) env[k] = v;
        return env;
    }

    /// <summary>
    /// The layers under this spec's Environment for a step: melange's default PATH unless the
    /// image, this spec or the call's variables (<paramref name="call"/>) set one, then the image
    /// config's Env entries.
    /// </summary>
    public IEnumerable<KeyValuePair<string, string>> BaseEnvironment(IEnumerable<string>? imageEnv, IReadOnlyDictionary<string, string>? call)
    {
        var image = new List<KeyValuePair<string, string>>();
        foreach (var kv in imageEnv ?? Array.Empty<string>())
        {
            var eq = kv.IndexOf('=');
            if (eq > 0) image.Add(new(kv[..eq], kv[(eq + 1)..]));
        }
        if (!image.Any(kv => kv.Key == "PATH") && !Environment.Any(kv => kv.Key == "PATH") && call?.ContainsKey("PATH") != true)
            image.Insert(0, new("PATH", Defaults.Path));
        return image;
    }
}
