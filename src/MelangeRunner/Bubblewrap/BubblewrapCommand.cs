namespace MelangeRunner.Bubblewrap;

/// <summary>The bwrap argument vector, built as melange's bubblewrap runner builds it.</summary>
internal static class BubblewrapCommand
{
    public const string Program = "bwrap";

    /// <param name="rootfs">The guest directory bound at / (the image ref).</param>
    /// <param name="mounts">Bind mounts after the root, in order.</param>
    /// <param name="config">The pod config (user, capabilities, networking).</param>
    /// <param name="interactive">For a terminal session: no --new-session, which would break job control.</param>
    /// <param name="baseEnvironment">What comes before the config's environment: melange's PATH and the image's Env (<see cref="PodSpec.BaseEnvironment"/>).</param>
    /// <param name="environmentOverride">Per-call variables, set after (so over) the config's.</param>
    /// <param name="command">The command to run in the sandbox.</param>
    /// <param name="hostIsRoot">Whether bwrap runs as root; a root build without it needs a user namespace.</param>
    public static string[] Build(string rootfs, IEnumerable<BindMount> mounts, PodSpec config, bool interactive,
        IEnumerable<KeyValuePair<string, string>> baseEnvironment, IReadOnlyDictionary<string, string>? environmentOverride,
        IEnumerable<string> command, bool hostIsRoot)
    {
        // The root must be bound first: every later mount lands inside it.
        var args = new List<string> { "--bind", rootfs, "/" };
        foreach (var m in mounts) args.AddRange(new[] { "--bind", m.Source, m.Destination });

        args.AddRange(new[]
        {
            "--unshare-pid", "--die-with-parent",
            "--dev", "/dev",
            "--proc", "/proc",
            "--ro-bind", "/sys", "/sys",
            "--chdir", Defaults.WorkspaceDir,
            "--clearenv",
        });

        var (uid, gid) = SandboxUser(config, hostIsRoot);
        if (uid is not null)
            args.AddRange(new[] { "--unshare-user", "--uid", uid, "--gid", gid! });

        // An explicit list makes the effective set exact whatever bwrap's own default for the uid is.
        args.AddRange(new[] { "--cap-drop", "ALL" });
        foreach (var cap in Capability.Effective(config.Capabilities.Add, config.Capabilities.Drop))
            args.AddRange(new[] { "--cap-add", cap });

        if (!interactive) args.Add("--new-session");
        if (!config.Capabilities.Networking) args.Add("--unshare-net");

        // bwrap applies --setenv in order: each layer over the one before, as melange's env then overrides.
        foreach (var (k, v) in baseEnvironment) args.AddRange(new[] { "--setenv", k, v });
        foreach (var (k, v) in config.Environment) args.AddRange(new[] { "--setenv", k, v });
        if (environmentOverride is not null)
            foreach (var (k, v) in environmentOverride) args.AddRange(new[] { "--setenv", k, v });

        args.AddRange(command);
        return args.ToArray();
    }

    /// <summary>
    /// melange's rules: RunAsUID (with RunAsGID, else the same id); else root when RunAs asks
    /// for it (a user namespace only when bwrap itself is not root); else the build user 1000.
    /// </summary>
    public static (string? Uid, string? Gid) SandboxUser(PodSpec config, bool hostIsRoot)
    {
        if (!string.IsNullOrEmpty(config.RunAsUID))
            return (config.RunAsUID, string.IsNullOrEmpty(config.RunAsGID) ? config.RunAsUID : config.RunAsGID);
        if (IsRoot(config.RunAs))
            return hostIsRoot ? (null, null) : ("0", "0");
        return (Defaults.BuildUserId, Defaults.BuildUserId);
    }

    private static bool IsRoot(string? runAs) => runAs is "root" or "0";
}
