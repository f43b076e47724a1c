namespace MelangeRunner;

/// <summary>Paths inside the runner's environment, as melange's pkg/container defines them.</summary>
public static class Defaults
{
    /// <summary>The workspace directory in the runner's environment.</summary>
    public const string WorkspaceDir = "/home/build";

    /// <summary>The cache directory in the runner's environment.</summary>
    public const string CacheDir = "/var/cache/melange";

    /// <summary>The resolv.conf file in the runner's environment.</summary>
    public const string ResolvConfPath = "/etc/resolv.conf";

    /// <summary>The build user that steps run as when no other user is asked for.</summary>
    public const string BuildUserId = "1000";

    /// <summary>The PATH of every step unless the image or the user sets one (melange's pkg/build/pipeline.go).</summary>
    public const string Path = "/usr/local/sbin:/usr/local/bin:/usr/bin:/usr/sbin:/sbin:/bin";
}

/// <summary>Binary size units (melange uses binary values for all units).</summary>
public static class Units
{
    public const long KB = 1L << 10;
    public const long MB = 1L << 20;
    public const long GB = 1L << 30;
    public const long TB = 1L << 40;
}

/// <summary>The names of the runners.</summary>
public static class Runners
{
    public const string Bubblewrap = "bubblewrap";
    public const string Qemu = "qemu";
    public const string Docker = "docker";

    /// <summary>Every runner name, in the order they are listed.</summary>
    public static IReadOnlyList<string> All { get; } = new[] { Bubblewrap, Qemu, Docker };
}
