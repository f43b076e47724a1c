using MelangeRunner.HostProcess;
using MelangeRunner.Images;

namespace MelangeRunner.Bubblewrap;

/// <summary>melange's bubblewrap runner: a bwrap sandbox over an unpacked image rootfs.</summary>
public sealed class BubblewrapRunner : IRunner, IImageLoader
{
    private const string LdconfigScript = "[ -x /sbin/ldconfig ] && /sbin/ldconfig /lib || true";

    public string Name => Runners.Bubblewrap;

    public IImageLoader ImageLoader => this;

    public RunnerInfo Probe()
    {
        var bwrap = HostCommand.FindOnPath(BubblewrapCommand.Program);
        if (bwrap is null)
            return new RunnerInfo(Name, false,
                "bwrap was not found on PATH. Install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap).", null);

        // The uid map check: what breaks on hosts that restrict unprivileged user namespaces.
        var (code, output) = HostCommand.Capture(bwrap, "--ro-bind", "/", "/", "--unshare-user", "true");
        if (code != 0)
        {
            var reason = $"bwrap cannot create a user namespace here ({output.Trim()}).";
            if (output.Contains("uid map", StringComparison.OrdinalIgnoreCase) || output.Contains("Permission denied", StringComparison.Ordinal))
                reason += " Unprivileged user namespaces are restricted on this host. On Ubuntu 23.10 and later, either allow them " +
                          "(sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0) or give bwrap an AppArmor profile that permits " +
                          "'userns'; elsewhere check that kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0.";
            return new RunnerInfo(Name, false, reason, null);
        }
        return new RunnerInfo(Name, true, null, null);
    }

    /// <summary>What the first command of a pod runs.</summary>
    public PodPlan Plan(PodSpec spec, ImageInfo image) =>
        PlanCommand(ResolveUser(spec, image), image, interactive: false, null, SetupCommand);

    private static readonly string[] SetupCommand = { "/bin/sh", "-c", LdconfigScript };

    // The passwd the sandbox would see, read inside the image root (never through its symlinks to the host's).
    private static PodSpec ResolveUser(PodSpec spec, ImageInfo image) => GuestUsers.ResolveInImage(spec, image.Ref);

    internal static PodPlan PlanCommand(PodSpec spec, ImageInfo image, bool interactive, IReadOnlyDictionary<string, string>? env, IReadOnlyList<string> command) => new()
    {
        Runner = Runners.Bubblewrap,
        FileName = BubblewrapCommand.Program,
        Arguments = BubblewrapCommand.Build(image.Ref, EffectiveMounts(spec), spec, interactive, spec.BaseEnvironment(image.Env, env), env, command, HostIsRoot),
    };

    /// <summary>The workspace and cache bound at melange's paths, then the user's mounts.</summary>
    internal static IReadOnlyList<BindMount> EffectiveMounts(PodSpec spec)
    {
        var mounts = new List<BindMount>();
        if (!string.IsNullOrEmpty(spec.WorkspaceDir)) mounts.Add(new BindMount(spec.WorkspaceDir, Defaults.WorkspaceDir));
        if (!string.IsNullOrEmpty(spec.CacheDir)) mounts.Add(new BindMount(spec.CacheDir, Defaults.CacheDir));
        if (spec.Capabilities.Networking && File.Exists(Defaults.ResolvConfPath))
            mounts.Add(new BindMount(Defaults.ResolvConfPath, Defaults.ResolvConfPath));
        mounts.AddRange(spec.Mounts);
        return mounts;
    }

    private static bool HostIsRoot => System.Environment.IsPrivilegedProcess;

    public async Task<IPodRuntime> StartAsync(PodStartRequest request, IEventSink events, CancellationToken cancellationToken)
    {
        RequirePrivateImage(request.Image);
        var spec = ResolveUser(request.Spec, request.Image);
        BindMount.RequireSources(EffectiveMounts(spec), "-Mount, -WorkspaceDir or -CacheDir");
        var runtime = new BubblewrapPodRuntime(request.PodId, spec, request.Image);
        events.Verbose("bubblewrap pod " + request.PodId + ": priming ld.so.cache");
        var code = await runtime.RunSetupAsync(SetupCommand, events, cancellationToken).ConfigureAwait(false);
        if (code != 0)
            throw new MelangeException(ErrorKind.InvalidOperation, "PodStartFailed",
                $"The first command in the sandbox failed with status {code}; the image may have no /bin/sh.",
                "Check that the image is a rootfs with /bin/sh, and read the messages above.", request.PodId);
        return runtime;
    }

    /// <summary>The directory of an image's rootfs inside its private directory.</summary>
    internal const string RootfsDirName = "rootfs";
    internal const string PrivateDirPrefix = "melange-guest-";

    /// <remarks>
    /// Security rule: an image's rootfs lives one level down in a directory that only the
    /// importing user can enter (0700: melange-guest-XXXX/rootfs). Images carry setuid and
    /// setgid files, devices and file capabilities, owned by root when root imports; and a
    /// layer's own <c>./</c> entry decides the mode of the rootfs itself. Were the rootfs
    /// reachable, any other host user could run its setuid-root programs with euid 0. The
    /// private parent is created here and no layer entry can name it, so no layer can widen it.
    /// bwrap binds the rootfs itself, so the sandbox still sees its own <c>/</c> (0755), which a
    /// non-root build user can traverse. <see cref="ImageInfo.Ref"/> is the rootfs, as before.
    /// </remarks>
    public async Task<ImageInfo> LoadImageAsync(string path, string? arch, IEventSink events, CancellationToken cancellationToken)
    {
        using var privateDir = PrivateImageDirectory.Create(PrivateDirPrefix);
        var rootfs = Path.Combine(privateDir.FullName, RootfsDirName);
        Directory.CreateDirectory(rootfs);
        // 0755 whatever the umask: the sandbox's '/', which a build user that is not root must traverse.
        File.SetUnixFileMode(rootfs, (UnixFileMode)0x1ED); // 0755
        var source = await ImageImporter.ExtractAsync(path, arch, rootfs, events, cancellationToken).ConfigureAwait(false);
        var image = new ImageInfo { Runner = Name, Ref = rootfs, Arch = source.Arch, Source = Path.GetFullPath(path), SourceKind = source.Kind, Env = source.Env.ToArray() };
        privateDir.Keep(image);
        return image;
    }

    /// <summary>Deletes the whole private directory of an imported image (a Ref of another shape: that directory).</summary>
    public Task RemoveImageAsync(ImageInfo image, CancellationToken cancellationToken)
    {
        Workspace.DeleteTree(PrivateDirOf(image.Ref) ?? image.Ref);
        return Task.CompletedTask;
    }

    /// <summary>melange-guest-XXXX for a Ref melange-guest-XXXX/rootfs; null for any other shape.</summary>
    private static string? PrivateDirOf(string rootfs)
    {
        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(rootfs));
        var parent = Path.GetDirectoryName(full);
        return Path.GetFileName(full) == RootfsDirName && parent is not null && Path.GetFileName(parent).StartsWith(PrivateDirPrefix, StringComparison.Ordinal)
            ? parent : null;
    }

    private static void RequirePrivateImage(ImageInfo image)
    {
        // The rule of LoadImageAsync, checked where it matters: no pod starts from a rootfs that
        // other host users can reach (an image unpacked by an older version, or a parent widened since).
        var parent = Path.GetDirectoryName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(image.Ref)));
        var status = parent is null ? null : Native.Libc.LStat(parent);
        if (status is not { IsDirectory: true } || status.Value.Uid != Native.Ids.EffectiveUid || (status.Value.Permissions & 0x3F) != 0 /* any group or other bit (077) */)
            throw new MelangeException(ErrorKind.SecurityError, "ImageNotPrivate",
                $"The image directory {image.Ref} is not inside a directory that only you can enter ({parent}); other host users could run its setuid programs.",
                "Remove it with Remove-MelangeImage and import it again with Import-MelangeImage.", image);
    }
}
