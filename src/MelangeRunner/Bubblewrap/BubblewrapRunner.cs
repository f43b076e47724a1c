using MelangeRunner.Images;

namespace MelangeRunner.Bubblewrap;

/// <summary>melange's bubblewrap runner: a bwrap sandbox over an unpacked image rootfs.</summary>
public sealed class BubblewrapRunner : IRunner, IDebugger, IImageLoader
{
    private const string LdconfigScript = "[ -x /sbin/ldconfig ] && /sbin/ldconfig /lib || true";

    public string Name => Runners.Bubblewrap;

    public IImageLoader ImageLoader => this;

    public RunnerInfo Probe()
    {
        var bwrap = PodProcess.FindOnPath(BubblewrapCommand.Program);
        if (bwrap is null)
            return new RunnerInfo(Name, false,
                "bwrap was not found on PATH. Install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap).", null);

        // The uid map check: what breaks on hosts that restrict unprivileged user namespaces.
        var (code, output) = PodProcess.Capture(bwrap, "--ro-bind", "/", "/", "--unshare-user", "true");
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

    /// <summary>What the first command of a pod runs; without a workspace, Start-MelangePod makes one, shown as a placeholder.</summary>
    public PodPlan Plan(PodConfig config, ImageInfo image)
    {
        config = ResolveUser(config, image);
        if (string.IsNullOrEmpty(config.WorkspaceDir))
        {
            config = config.Clone();
            config.WorkspaceDir = Path.Combine(Path.GetTempPath(), "melange-workspace-<new>");
        }
        return PlanCommand(config, image, interactive: false, null, new[] { "/bin/sh", "-c", LdconfigScript });
    }

    // The passwd the sandbox would see, read inside the image root (never through its symlinks to the host's).
    private static PodConfig ResolveUser(PodConfig config, ImageInfo image) => GuestUsers.ResolveInImage(config, image.Ref);

    private PodPlan PlanCommand(PodConfig config, ImageInfo image, bool interactive, IReadOnlyDictionary<string, string>? env, IReadOnlyList<string> command) => new()
    {
        Runner = Name,
        FileName = BubblewrapCommand.Program,
        Arguments = BubblewrapCommand.Build(image.Ref, EffectiveMounts(config), config, interactive, config.BaseEnvironment(image.Env, env), env, command, HostIsRoot),
    };

    /// <summary>The workspace and cache bound at melange's paths, then the user's mounts.</summary>
    internal static IReadOnlyList<BindMount> EffectiveMounts(PodConfig config)
    {
        var mounts = new List<BindMount>();
        if (!string.IsNullOrEmpty(config.WorkspaceDir)) mounts.Add(new BindMount(config.WorkspaceDir, Defaults.WorkspaceDir));
        if (!string.IsNullOrEmpty(config.CacheDir)) mounts.Add(new BindMount(config.CacheDir, Defaults.CacheDir));
        if (config.Capabilities.Networking && File.Exists(Defaults.ResolvConfPath))
            mounts.Add(new BindMount(Defaults.ResolvConfPath, Defaults.ResolvConfPath));
        mounts.AddRange(config.Mounts);
        return mounts;
    }

    private static bool HostIsRoot => System.Environment.IsPrivilegedProcess;

    public async Task<Pod> StartPodAsync(PodConfig config, ImageInfo image, IEventSink events, CancellationToken cancellationToken)
    {
        RequireImage(image);
        var pod = new Pod(this, ResolveUser(config, image), image);
        try
        {
            foreach (var m in EffectiveMounts(pod.Config))
            {
                if (!File.Exists(m.Source) && !Directory.Exists(m.Source))
                    throw new MelangeException(ErrorKind.ObjectNotFound, "MountSourceNotFound",
                        $"The mount source '{m.Source}' (for {m.Destination}) does not exist.",
                        "Create it first, or correct the path given to -Mount, -WorkspaceDir or -CacheDir.", m.Source);
            }
            events.Verbose("bubblewrap pod " + pod.Id + ": priming ld.so.cache");
            var code = await RunCoreAsync(pod, null, new[] { "/bin/sh", "-c", LdconfigScript }, events, setup: true, cancellationToken).ConfigureAwait(false);
            if (code != 0)
                throw new MelangeException(ErrorKind.InvalidOperation, "PodStartFailed",
                    $"The first command in the sandbox failed with status {code}; the image may have no /bin/sh.",
                    "Check that the image is a rootfs with /bin/sh, and read the messages above.", pod.Id);
            pod.State = PodState.Running;
            pod.StartedAt = DateTimeOffset.Now;
            return pod;
        }
        catch
        {
            pod.State = PodState.Failed;
            throw;
        }
    }

    public Task<int> RunAsync(Pod pod, IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken)
    {
        RequireRunning(pod);
        return RunCoreAsync(pod, environment, command, events, setup: false, cancellationToken);
    }

    private Task<int> RunCoreAsync(Pod pod, IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, bool setup, CancellationToken cancellationToken)
    {
        var plan = PlanCommand(pod.Config, pod.Image, interactive: false, environment, command);
        return PodProcess.RunAsync(plan.FileName, plan.Arguments, events, cancellationToken, stdoutToVerbose: setup);
    }

    public Task<int> DebugAsync(Pod pod, IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command, IEventSink events, CancellationToken cancellationToken)
    {
        RequireRunning(pod);
        // On a terminal, bwrap runs on a host PTY of its own (script): it needs one, since melange
        // omits --new-session here for job control, and so the sandbox would otherwise share (and
        // could inject input into, or leave raw) the caller's terminal; the PTY gives it TERM, its
        // size and resizes. bwrap binds that PTY at /dev/console (its /dev/pts is the sandbox's
        // own instance), which is what `tty` prints. Redirected input (CI) keeps the plain bwrap run.
        var pty = HostTerminal.PtyHelperFor(events);
        if (!HostTerminal.StdinIsTerminal)
            events.Verbose("Standard input is not a terminal: bwrap runs on the caller's streams, without a terminal of its own or TERM.");
        var env = pty is null ? environment : HostTerminal.WithHostTerm(environment);
        var plan = PlanCommand(pod.Config, pod.Image, interactive: true, env, command);
        return PodProcess.RunInteractiveAsync(plan.FileName, plan.Arguments, events, cancellationToken, pty);
    }

    /// <summary>Nothing runs between commands, so there is nothing to stop.</summary>
    public Task TerminatePodAsync(Pod pod, IEventSink events, CancellationToken cancellationToken) => Task.CompletedTask;

    public Task<Stream> WorkspaceTarAsync(Pod pod, IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken cancellationToken)
    {
        RequireRunning(pod);
        return Task.FromResult(Workspace.TarOfHostDirectory(pod.WorkspaceDir, extraFiles, events, cancellationToken));
    }

    public Task<ReleaseData> GetReleaseDataAsync(Pod pod, IEventSink events, CancellationToken cancellationToken)
    {
        RequireRunning(pod);
        // The rootfs is a host directory: read it on the host, but as the sandbox sees it, so that
        // an image whose /etc points at the host's /etc reports its own os-release or none.
        cancellationToken.ThrowIfCancellationRequested();
        return Task.FromResult(ReleaseData.ReadFromImage(pod.ImageRef) ?? throw new MelangeException(ErrorKind.ObjectNotFound, "NoOsRelease",
            "The image has no /etc/os-release or /usr/lib/os-release.", "Add an os-release file to the image.", pod.ImageRef));
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

    private void RequireImage(ImageInfo image)
    {
        if (image.Runner != Name)
            throw new MelangeException(ErrorKind.InvalidArgument, "WrongImageRunner",
                $"The image {image.Ref} was imported for the {image.Runner} runner, not for {Name}.",
                $"Import it again with -Runner {Name}.", image);
        if (!Directory.Exists(image.Ref))
            throw new MelangeException(ErrorKind.ObjectNotFound, "ImageRemoved",
                $"The image directory {image.Ref} no longer exists.", "Import the image again with Import-MelangeImage.", image);
        // The rule of LoadImageAsync, checked where it matters: no pod starts from a rootfs that
        // other host users can reach (an image unpacked by an older version, or a parent widened since).
        var parent = Path.GetDirectoryName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(image.Ref)));
        var status = parent is null ? null : Native.Libc.LStat(parent);
        if (status is not { IsDirectory: true } || status.Value.Uid != Native.Ids.EffectiveUid || (status.Value.Permissions & 0x3F) != 0 /* any group or other bit (077) */)
            throw new MelangeException(ErrorKind.SecurityError, "ImageNotPrivate",
                $"The image directory {image.Ref} is not inside a directory that only you can enter ({parent}); other host users could run its setuid programs.",
                "Remove it with Remove-MelangeImage and import it again with Import-MelangeImage.", image);
    }

    private static void RequireRunning(Pod pod)
    {
        if (pod.State != PodState.Running)
            throw new MelangeException(ErrorKind.InvalidOperation, "PodNotRunning",
                $"The pod {pod.Id} is {pod.State.ToString().ToLowerInvariant()}.", "Start a new pod with Start-MelangePod.", pod);
    }
}
