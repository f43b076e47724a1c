namespace MelangeRunner;

/// <summary>Linux capability names and the Docker default set that melange starts from.</summary>
public static class Capability
{
    /// <summary>Docker's default capability set (moby's oci/caps/defaults.go).</summary>
    public static IReadOnlyList<string> DefaultSet { get; } = new[]
    {
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    };

    /// <summary>Every capability the kernel knows (linux/capability.h, up to CAP_CHECKPOINT_RESTORE).</summary>
    public static IReadOnlyList<string> Known { get; } = new[]
    {
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
        "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    };

    /// <summary>
    /// Upper-cases names and adds the CAP_ prefix ("net_admin" → "CAP_NET_ADMIN"); "ALL" stays ALL.
    /// An unknown name is an error that lists where to look.
    /// </summary>
    public static string[] Normalize(IEnumerable<string>? names)
    {
        var result = new List<string>();
        foreach (var raw in names ?? Array.Empty<string>())
        {
            var name = raw.Trim().ToUpperInvariant();
            if (name == "ALL") { result.Add(name); continue; }
            if (!name.StartsWith("CAP_", StringComparison.Ordinal)) name = "CAP_" + name;
            if (!Known.Contains(name))
                throw new MelangeException(ErrorKind.InvalidArgument, "UnknownCapability",
                    $"'{raw}' is not a Linux capability.",
                    "Use a name from capabilities(7), with or without the CAP_ prefix, for example NET_ADMIN.", raw);
            if (!result.Contains(name)) result.Add(name);
        }
        return result.ToArray();
    }

    /// <summary>
    /// The Docker default set, plus <paramref name="add"/>, minus <paramref name="drop"/>.
    /// As in Docker, dropping ALL keeps only what is added ("--cap-drop ALL --cap-add X").
    /// </summary>
    public static IReadOnlyList<string> Effective(IEnumerable<string>? add, IEnumerable<string>? drop)
    {
        var adds = Normalize(add);
        var drops = Normalize(drop);
        var set = drops.Contains("ALL") ? new List<string>() : new List<string>(DefaultSet);
        foreach (var a in adds.Contains("ALL") ? Known : adds)
            if (!set.Contains(a)) set.Add(a);
        if (!drops.Contains("ALL")) set.RemoveAll(drops.Contains);
        return set;
    }
}
