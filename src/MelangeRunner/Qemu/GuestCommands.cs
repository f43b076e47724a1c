using MelangeRunner.Ssh;

namespace MelangeRunner.Qemu;

/// <summary>
/// Every shell command line the host sends to a qemu guest, in one place. The control shell is
/// busybox, whose applets win over PATH: GNU tar is named by its full path (docs/microvm.md#pitfall-3). Words
/// that come from users are quoted with <see cref="ShellQuote"/>.
/// </summary>
internal static class GuestCommands
{
    /// <summary>The rootfs is unpacked at /mount; the build sessions (port 22) are chrooted into it.</summary>
    public const string RootfsMount = "/mount";

    /// <summary>The workspace as the control session (not chrooted) sees it.</summary>
    public const string Workspace = RootfsMount + Defaults.WorkspaceDir;

    /// <summary>Waits for our init to finish (/run/melange-ready), when /run/melange-init says that our init runs.</summary>
    public const string WaitUntilReady = "if [ -e /run/melange-init ]; then while [ ! -e /run/melange-ready ]; do usleep 20000; done; fi";

    public const string KernelVersion = "uname -rv";

    /// <summary>The build environment's os-release (the rootfs at /mount), not the initramfs's.</summary>
    public const string OsRelease = "chroot /mount cat /etc/os-release 2>/dev/null || chroot /mount cat /usr/lib/os-release";

    /// <summary>sync, then power off, in the background: the VM powers off under the command.</summary>
    public const string PowerOff = "sh -c 'echo s > /proc/sysrq-trigger && echo o > /proc/sysrq-trigger &'";

    /// <summary>
    /// The cache mount (virtiofs, or 9p under an overlay so that the guest can write), the
    /// workspace copy (as root in the chroot, then owned by <paramref name="user"/>) and the
    /// share's unmount, as one command: each command is a round trip through an emulated network.
    /// </summary>
    public static string CopyIn(string? cacheDir, bool virtiofs, string user)
    {
        var steps = new List<string>();
        if (!string.IsNullOrEmpty(cacheDir))
            steps.Add(virtiofs
                ? $"melange-load-modules virtiofs && mkdir -p /mount{Defaults.CacheDir} && mount -t virtiofs melange_cache /mount{Defaults.CacheDir}"
                : $"melange-load-modules overlay && mkdir -p {Defaults.CacheDir} /mount{Defaults.CacheDir} /mount/upper /mount/work && chmod 1777 /mount/upper && " +
                  $"mount -t 9p -o ro,trans=virtio melange_cache {Defaults.CacheDir} && " +
                  $"mount -t overlay overlay -o lowerdir={Defaults.CacheDir},upperdir=/mount/upper,workdir=/mount/work /mount{Defaults.CacheDir}");
        // Our init mounted the workspace read-only at /mount/mnt.
        steps.Add("grep -q '^defaultshare ' /proc/mounts || { mkdir -p /mount/mnt && mount -t 9p -o ro,trans=virtio defaultshare /mount/mnt; }");
        steps.Add("chroot /mount /bin/sh -c " + ShellQuote.Quote(
            $"mkdir -p {Defaults.WorkspaceDir} && find /mnt/ -mindepth 1 -maxdepth 1 -exec cp -a {{}} {Defaults.WorkspaceDir}/ \\; && chown -R {ShellQuote.Quote(user)} {Defaults.WorkspaceDir}"));
        steps.Add("umount /mount/mnt");
        return string.Join(" && ", steps.Select(step => "{ " + step + "; }"));
    }

    /// <summary>
    /// A build step: cd to the workspace, then the step's environment
    /// (<see cref="PodSpec.StepEnvironment"/>) and melange's CAP_ADD/CAP_DROP, then the command.
    /// </summary>
    public static string Step(PodSpec spec, IEnumerable<string>? imageEnv, IReadOnlyDictionary<string, string>? environment, IReadOnlyList<string> command)
    {
        var env = spec.StepEnvironment(imageEnv, environment);
        env["CAP_ADD"] = string.Join(',', spec.Capabilities.Add);
        env["CAP_DROP"] = string.Join(',', spec.Capabilities.Drop);
        return $"cd {Defaults.WorkspaceDir} && exec {GuestSsh.BuildCommandLine(env, command)}";
    }

    /// <summary>
    /// The workspace's single-link regular files: the license files are picked from it with
    /// <see cref="MelangeRunner.Workspace.IsLicenseFile"/>, the one rule both runners use.
    /// </summary>
    public const string ListWorkspaceFiles = "cd " + Workspace + " && find . -type f -links 1 -print";

    /// <summary>A fresh list file in the guest for tar -T (the command line has a length limit).</summary>
    public static string NewListFile() => $"/tmp/melange-extrafiles-{Guid.NewGuid():N}.txt";

    public static string TruncateFile(string path) => $": > {path}";

    public static string AppendLines(string path, IEnumerable<string> lines) => $"printf '%s\\n' {ShellQuote.Join(lines)} >> {path}";

    /// <summary>melange-out and the listed files as a tar on standard output; named pipes in melange-out go first (tar would block on them).</summary>
    public static string WorkspaceTar(string listFile) =>
        $"cd {Workspace} && {{ find {MelangeRunner.Workspace.OutputDir} -type p -delete >/dev/null 2>&1 || true; }} && " +
        $"/bin/tar cpf - --xattrs --xattrs-include='*' --acls --ignore-failed-read {MelangeRunner.Workspace.OutputDir} -T {listFile}; status=$?; rm -f {listFile}; exit $status";
}
