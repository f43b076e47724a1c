using System.Text.Json;
using System.Text.Json.Serialization;
using Docker.DotNet.Models;

namespace MelangeRunner.Docker;

/// <summary>
/// The container a docker pod is (pure: nothing here talks to the engine): the create request
/// and the equivalent <c>docker run</c> line, for Start-MelangePod and Get-MelangePodPlan alike.
/// </summary>
internal static class DockerPodPlanner
{
    /// <summary>melange's PID 1: prime ld.so.cache where ldconfig exists, then stay up.</summary>
    internal const string KeepAliveScript = "[ -x /sbin/ldconfig ] && /sbin/ldconfig /lib || true\nwhile true; do sleep 5; done";

    internal static IReadOnlyList<string> KeepAliveCommand { get; } = new[] { "/bin/sh", "-c", KeepAliveScript };

    /// <summary>
    /// The mounts the container gets: the cache and the user's mounts, bound (on the engine's
    /// host). The workspace is not bound: it is copied in at start and read back through the
    /// archive API, so that a remote engine works and root-owned files never land in the
    /// host's workspace (melange #1647). melange's resolv.conf mount is left to the engine,
    /// which writes its own /etc/resolv.conf.
    /// </summary>
    internal static IReadOnlyList<BindMount> Mounts(PodSpec spec)
    {
        var mounts = new List<BindMount>();
        if (!string.IsNullOrEmpty(spec.CacheDir)) mounts.Add(new BindMount(spec.CacheDir, Defaults.CacheDir));
        foreach (var m in spec.Mounts)
            if (m.Source != Defaults.ResolvConfPath) mounts.Add(m);
        return mounts;
    }

    /// <summary>The user a step runs as: RunAsUID[:RunAsGID], else RunAs (resolved by the engine in the image), else the image's own user.</summary>
    internal static string? ExecUser(PodSpec spec)
    {
        if (!string.IsNullOrEmpty(spec.RunAsUID))
            return string.IsNullOrEmpty(spec.RunAsGID) ? spec.RunAsUID : spec.RunAsUID + ":" + spec.RunAsGID;
        return string.IsNullOrEmpty(spec.RunAs) ? null : spec.RunAs;
    }

    /// <summary>Whether a user (as exec takes it: name or uid, with an optional :group) is root; null or empty is the container's user, root.</summary>
    internal static bool IsRoot(string? user) =>
        string.IsNullOrEmpty(user) || (user.Split(':')[0] is "root" or "0");

    internal static long? NanoCpus(PodSpec spec) =>
        spec.CPU is { Length: > 0 } c && int.TryParse(c, out var n) && n > 0 ? n * 1_000_000_000L : null;

    internal static long? MemoryBytes(PodSpec spec) =>
        spec.Memory is { Length: > 0 } m ? SizeParser.ParseToBytes(m, "Memory") : null;

    /// <summary>The create request for a pod of <paramref name="spec"/> from <paramref name="image"/>.</summary>
    internal static CreateContainerParameters CreateRequest(PodSpec spec, ImageInfo image, string? name = null)
    {
        var labels = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            [DockerEngine.MelangeLabel] = "true",
            [DockerEngine.PackageLabel] = spec.PackageName ?? "",
            [DockerEngine.OwnerLabel] = DockerEngine.OwnerValue,
        };
        var host = new HostConfig
        {
            Mounts = Mounts(spec).Select(m => new Mount { Type = "bind", Source = m.Source, Target = m.Destination }).ToList(),
            CapDrop = new List<string> { "ALL" },
            CapAdd = Capability.Effective(spec.Capabilities.Add, spec.Capabilities.Drop).ToList(),
            NetworkMode = spec.Capabilities.Networking ? null! : "none",
            NanoCPUs = NanoCpus(spec) ?? 0,
            Memory = MemoryBytes(spec) ?? 0,
        };
        // Memory without swap on top: the limit is the limit (docker run --memory-swap = --memory).
        if (host.Memory > 0) host.MemorySwap = host.Memory;
        return new CreateContainerParameters
        {
            Name = name,
            Image = image.Ref,
            Cmd = KeepAliveCommand.ToList(),
            Entrypoint = new List<string>(),
            Env = spec.StepEnvironment(image.Env, null).Select(kv => kv.Key + "=" + kv.Value).ToList(),
            WorkingDir = "/",
            User = "0:0",
            Tty = false,
            Labels = labels,
            HostConfig = host,
        };
    }

    /// <summary>The request as the engine receives it (JSON, nulls left out).</summary>
    internal static string ToJson(CreateContainerParameters request) =>
        JsonSerializer.Serialize(request, new JsonSerializerOptions { WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingDefault });

    /// <summary>The <c>docker run</c> arguments (after "docker") that create and start the same container.</summary>
    internal static string[] RunArguments(CreateContainerParameters r)
    {
        var a = new List<string> { "run", "--detach" };
        if (!string.IsNullOrEmpty(r.Name)) a.AddRange(new[] { "--name", r.Name });
        foreach (var (k, v) in r.Labels ?? new Dictionary<string, string>()) a.AddRange(new[] { "--label", k + "=" + v });
        var h = r.HostConfig ?? new HostConfig();
        if (h.NetworkMode is { } net) a.AddRange(new[] { "--network", net });
        foreach (var c in h.CapDrop ?? new List<string>()) a.AddRange(new[] { "--cap-drop", c });
        foreach (var c in h.CapAdd ?? new List<string>()) a.AddRange(new[] { "--cap-add", c });
        if (h.NanoCPUs > 0) a.AddRange(new[] { "--cpus", (h.NanoCPUs / 1e9).ToString(System.Globalization.CultureInfo.InvariantCulture) });
        if (h.Memory > 0) a.AddRange(new[] { "--memory", h.Memory + "b", "--memory-swap", h.MemorySwap + "b" });
        foreach (var m in h.Mounts ?? new List<Mount>()) a.AddRange(new[] { "--mount", $"type={m.Type},source={m.Source},target={m.Target}" });
        foreach (var e in r.Env ?? new List<string>()) a.AddRange(new[] { "--env", e });
        a.AddRange(new[] { "--user", r.User, "--workdir", r.WorkingDir, "--entrypoint", "" });
        a.Add(r.Image);
        a.AddRange(r.Cmd);
        return a.ToArray();
    }

    /// <summary>Get-MelangePodPlan's answer for docker.</summary>
    internal static PodPlan Plan(PodSpec spec, ImageInfo image)
    {
        var request = CreateRequest(spec, image);
        return new PodPlan
        {
            Runner = Runners.Docker,
            FileName = "docker",
            Arguments = RunArguments(request),
            Cpus = NanoCpus(spec) is { } n ? (int)(n / 1_000_000_000L) : null,
            MemoryKiB = MemoryBytes(spec) is { } b ? b / Units.KB : null,
            CreateRequest = ToJson(request),
            Endpoint = DockerEngine.EndpointText,
        };
    }
}
