using System.Globalization;

namespace MelangeRunner.Qemu.Template;

/// <summary>
/// The qemu vector of a template and of a pod restored from it: the cold vector of
/// <see cref="QemuCommand.Build"/> with guest RAM in a file (<c>memory-backend-file</c>, shared
/// while the template is built, private copy-on-write in a pod), the control port
/// (virtio-serial port <see cref="ControlPortName"/>), a vmgenid device, a kernel command line
/// without per-pod words, and a QMP socket. Template and pod differ only in per-pod values.
/// </summary>
internal static class TemplateCommand
{
    public const string ControlPortName = "org.melange.ctl";

    /// <summary>The template's kernel command line: the cold one without the per-pod words (they go over the control port), with the host's TSC rate under TCG.</summary>
    public static string KernelCommandLine(QemuLaunch l)
    {
        var parts = QemuCommand.BaseKernelParameters(l);
        if (!string.IsNullOrWhiteSpace(l.Environment.KernelCmdline)) parts.Add(l.Environment.KernelCmdline!.Trim());
        parts.Add("melange_qemu_runner=1 melange.template=1");
        // Under TCG the guest's TSC runs at the host's rate; calibrated against the PM timer under
        // load it came out 1.5x too slow, and the template would bake that into every pod.
        if (QemuCommand.TscParameter(l) is { } tsc) parts.Add(tsc);
        return string.Join(' ', parts);
    }

    /// <summary>Guest RAM in whole MiB (a memory backend's size).</summary>
    public static long MemoryMiB(QemuLaunch l) => l.MemoryKiB / 1024;

    /// <param name="l">The launch (a pod's, or the template's with its placeholder files).</param>
    /// <param name="ramPath">The template's RAM file.</param>
    /// <param name="share">True while building (guest RAM written through to the file), false in a pod (MAP_PRIVATE).</param>
    /// <param name="netdev">The -netdev value, or null for the launch's own (a pod's, with its port forwards).</param>
    /// <param name="runDir">Where the QMP and control sockets go.</param>
    public static string[] Build(QemuLaunch l, string ramPath, bool share, string? netdev, string runDir)
    {
        var cold = QemuCommand.Build(l);
        var mib = MemoryMiB(l).ToString(CultureInfo.InvariantCulture);
        var args = new List<string>();
        for (var i = 0; i < cold.Length; i++)
        {
            var a = cold[i];
            var v = i + 1 < cold.Length ? cold[i + 1] : null;
            switch (a)
            {
                case "-machine":
                    args.AddRange(new[] { a, v + ",memory-backend=mem" });
                    i++;
                    break;
                case "-m":
                    args.AddRange(new[] { "-m", mib + "M", "-object", $"memory-backend-file,id=mem,size={mib}M,mem-path={QemuCommand.OptionValue(ramPath)},share={(share ? "on" : "off")},prealloc=off" });
                    i++;
                    break;
                case "-device" when v!.StartsWith("virtconsole,", StringComparison.Ordinal):
                    args.AddRange(new[] { a, v });
                    args.AddRange(new[] { "-chardev", $"socket,id=charctl0,path={QemuCommand.OptionValue(Path.Combine(runDir, "ctl.sock"))},server=on,wait=off" });
                    args.AddRange(new[] { "-device", $"virtserialport,chardev=charctl0,id=ctl0,name={ControlPortName}" });
                    i++;
                    break;
                case "-netdev":
                    args.AddRange(new[] { a, netdev ?? v! });
                    i++;
                    break;
                case "-object" when v!.StartsWith("rng-random,", StringComparison.Ordinal):
                    args.AddRange(new[] { a, v });
                    args.AddRange(new[] { "-device", "vmgenid,id=vmgenid0" });
                    i++;
                    break;
                case "-append":
                    args.AddRange(new[] { a, KernelCommandLine(l) });
                    i++;
                    break;
                default:
                    args.Add(a);
                    break;
            }
        }
        args.AddRange(new[] { "-qmp", $"unix:{QemuCommand.OptionValue(Path.Combine(runDir, "qmp.sock"))},server=on,wait=off" });
        return args.ToArray();
    }

    /// <summary>The launch with every per-pod value a placeholder: what the template key covers of the vector.</summary>
    public static QemuLaunch Placeholders(QemuLaunch l) => WithoutPod(l, "<initrd>", "<disk>", "<rootfs>", "<workspace>", "<cache>");

    /// <summary>
    /// The launch with no pod's values: no forwarded ports, no client key, an unformatted scratch
    /// disk, and these files in place of the pod's (a cache only where the pod has one).
    /// </summary>
    public static QemuLaunch WithoutPod(QemuLaunch l, string initrd, string disk, string rootfs, string workspace, string cache) => l with
    {
        SshPort = 0,
        ControlPort = 0,
        InitrdPath = initrd,
        DiskPath = disk,
        RootfsTar = rootfs,
        WorkspaceDir = workspace,
        CacheDir = l.CacheDir is null ? null : cache,
        ClientPublicKeyBase64 = "",
        ScratchFormatted = false,
    };
}
