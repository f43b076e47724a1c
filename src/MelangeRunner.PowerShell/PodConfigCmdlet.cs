using System.Collections;
using System.Management.Automation;

namespace MelangeRunner.PowerShell;

/// <summary>
/// The config fields as parameters, shared by New-MelangePodConfig, Start-MelangePod and
/// Get-MelangePodPlan so that a one-liner needs no separate config object.
/// </summary>
public abstract class PodConfigCmdlet : MelangeCmdlet
{
    [Parameter]
    public string? PackageName { get; set; }

    /// <summary>Host workspace, bound (bubblewrap) or copied (qemu) to /home/build.</summary>
    [Parameter]
    public string? WorkspaceDir { get; set; }

    /// <summary>Bind mounts: "SOURCE:DESTINATION" strings, BindMount objects, or hashtables with Source and Destination.</summary>
    [Parameter]
    public object[]? Mount { get; set; }

    [Parameter]
    public IDictionary? Environment { get; set; }

    [Parameter]
    public SwitchParameter Networking { get; set; }

    [Parameter]
    [ArgumentCompleter(typeof(CapabilityCompleter))]
    public string[]? CapAdd { get; set; }

    [Parameter]
    [ArgumentCompleter(typeof(CapabilityCompleter))]
    public string[]? CapDrop { get; set; }

    [Parameter]
    public string? RunAsUid { get; set; }

    [Parameter]
    public string? RunAsGid { get; set; }

    /// <summary>A user name of the image's /etc/passwd (completed from it once -Image is bound) or a uid.</summary>
    [Parameter]
    [ArgumentCompleter(typeof(RunAsCompleter))]
    public string? RunAs { get; set; }

    [Parameter]
    [ValidateRange(1, 1024)]
    public int Cpu { get; set; }

    [Parameter]
    public string? CpuModel { get; set; }

    /// <summary>A melange size string (4Gi) or a PowerShell number of bytes (4GB).</summary>
    [Parameter]
    [SizeTransformation]
    [ArgumentCompleter(typeof(SizeCompleter))]
    public string? Memory { get; set; }

    [Parameter]
    [SizeTransformation]
    [ArgumentCompleter(typeof(SizeCompleter))]
    public string? Disk { get; set; }

    [Parameter]
    public string? CacheDir { get; set; }

    [Parameter]
    public TimeSpan Timeout { get; set; }

    [Parameter]
    [ArgumentCompleter(typeof(ArchCompleter))]
    public string? Arch { get; set; }

    /// <summary>qemu: auto (KVM where it really runs guests, else TCG), kvm or tcg.</summary>
    [Parameter]
    [ValidateSet("auto", "kvm", "tcg")]
    public string? Accelerator { get; set; }

    /// <summary>
    /// A copy of <paramref name="baseConfig"/> (or a new config) with every bound field
    /// parameter applied over it, host paths resolved against the current location.
    /// </summary>
    protected PodConfig BuildConfig(PodConfig? baseConfig)
    {
        var c = baseConfig?.Clone() ?? new PodConfig();
        var bound = MyInvocation.BoundParameters;
        if (bound.ContainsKey(nameof(PackageName))) c.PackageName = PackageName;
        if (bound.ContainsKey(nameof(WorkspaceDir))) c.WorkspaceDir = WorkspaceDir is null ? null : HostPath(WorkspaceDir);
        if (bound.ContainsKey(nameof(CacheDir))) c.CacheDir = CacheDir is null ? null : HostPath(CacheDir);
        if (Environment is not null)
            foreach (var (k, v) in PodCommandHelpers.ToDictionary(Environment)!) c.Environment[k] = v;
        if (bound.ContainsKey(nameof(Networking))) c.Capabilities.Networking = Networking.IsPresent;
        if (CapAdd is not null) c.Capabilities.Add = c.Capabilities.Add.Concat(CapAdd).ToArray();
        if (CapDrop is not null) c.Capabilities.Drop = c.Capabilities.Drop.Concat(CapDrop).ToArray();
        if (bound.ContainsKey(nameof(RunAsUid))) c.RunAsUID = RunAsUid;
        if (bound.ContainsKey(nameof(RunAsGid))) c.RunAsGID = RunAsGid;
        if (bound.ContainsKey(nameof(RunAs))) c.RunAs = RunAs;
        if (bound.ContainsKey(nameof(Cpu))) c.CPU = Cpu.ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (bound.ContainsKey(nameof(CpuModel))) c.CPUModel = CpuModel;
        if (bound.ContainsKey(nameof(Memory))) c.Memory = Memory;
        if (bound.ContainsKey(nameof(Disk))) c.Disk = Disk;
        if (bound.ContainsKey(nameof(Timeout))) c.Timeout = Timeout;
        if (bound.ContainsKey(nameof(Arch))) c.Arch = Arch;
        if (bound.ContainsKey(nameof(Accelerator))) c.Accelerator = Accelerator;

        try
        {
            if (Mount is not null) c.Mounts.AddRange(Mount.Select(ToBindMount));
            // Mount sources are host paths: relative ones are relative to the current location.
            c.Mounts = c.Mounts.Select(m => m with { Source = HostPath(m.Source) }).ToList();
            c.Validate();
        }
        catch (MelangeException e)
        {
            ThrowEngineError(e);
        }
        return c;
    }

    private static BindMount ToBindMount(object value) => (value is PSObject p ? p.BaseObject : value) switch
    {
        BindMount m => m,
        IDictionary d => new BindMount(d["Source"]?.ToString() ?? "", d["Destination"]?.ToString() ?? ""),
        var other => BindMount.Parse(other?.ToString() ?? ""),
    };
}
