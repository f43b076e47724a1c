using MelangeRunner.Images;

namespace MelangeRunner.Bubblewrap;

/// <summary>Resolves the RunAs user of a config against the image's /etc/passwd.</summary>
internal static class GuestUsers
{
    /// <summary>
    /// <paramref name="config"/> with RunAsUID/RunAsGID filled from RunAs: a numeric
    /// RunAs is the uid; a name is looked up in <paramref name="passwd"/> (the image's /etc/passwd).
    /// Root, an empty RunAs, or a RunAsUID already set leave the config as it is.
    /// </summary>
    public static PodSpec Resolve(PodSpec config, string? passwd)
    {
        if (!NeedsLookup(config))
            return config;
        if (uint.TryParse(config.RunAs, out _))
            return config with { RunAsUID = config.RunAs };
        foreach (var line in (passwd ?? "").Split('\n'))
        {
            // name:password:uid:gid:gecos:home:shell
            var fields = line.TrimEnd('\r').Split(':');
            if (fields.Length >= 4 && fields[0] == config.RunAs)
                return config with { RunAsUID = fields[2], RunAsGID = string.IsNullOrEmpty(config.RunAsGID) ? fields[3] : config.RunAsGID };
        }
        throw new MelangeException(ErrorKind.ObjectNotFound, "UnknownUser",
            $"The user '{config.RunAs}' is not in the image's /etc/passwd.",
            "Add the user to the image, or pass a numeric id with -RunAs or -RunAsUid.", config.RunAs);
    }

    /// <summary>
    /// <see cref="Resolve(PodSpec, string?)"/> against the /etc/passwd of the unpacked image at
    /// <paramref name="rootfs"/>, read as the sandbox sees it (<see cref="ImageRoot"/>): through
    /// the image's own symlinks, never the host's passwd. Read only when a name must be looked up.
    /// </summary>
    public static PodSpec ResolveInImage(PodSpec config, string rootfs) =>
        Resolve(config, NeedsLookup(config) && !uint.TryParse(config.RunAs, out _) ? ImageRoot.ReadText(rootfs, "/etc/passwd") : null);

    /// <summary>A RunAs other than root, with no RunAsUID given, is resolved (a name through the image's passwd).</summary>
    private static bool NeedsLookup(PodSpec config) =>
        string.IsNullOrEmpty(config.RunAsUID) && !string.IsNullOrEmpty(config.RunAs) && config.RunAs is not ("root" or "0");
}
