using System.Globalization;

namespace MelangeRunner.Qemu;

/// <summary>Everything that decides the qemu command line of one pod.</summary>
internal sealed record QemuLaunch
{
    /// <summary>Guest architecture, apko name (x86_64, aarch64).</summary>
    public required string Arch { get; init; }
    public required string HostArch { get; init; }
    public required bool KvmUsable { get; init; }
    public required int Cpus { get; init; }
    public required long MemoryKiB { get; init; }
    public string? CpuModel { get; init; }
    public required int SshPort { get; init; }
    public required int ControlPort { get; init; }
    public required string KernelPath { get; init; }
    public required string InitrdPath { get; init; }
    public required string DiskPath { get; init; }
    public required string RootfsTar { get; init; }
    public required string WorkspaceDir { get; init; }
    public string? CacheDir { get; init; }

    /// <summary>The virtiofsd socket when the cache goes over virtiofs; null for 9p.</summary>
    public string? VirtiofsSocket { get; init; }

    /// <summary>The client's authorized_keys line, base64 (sshkey= on the kernel command line).</summary>
    public required string ClientPublicKeyBase64 { get; init; }

    public required QemuEnvironment Environment { get; init; }

    /// <summary>A chatty kernel (debug loglevel=7) instead of quiet.</summary>
    public bool KernelDebug { get; init; }

    /// <summary>
    /// The host's TSC rate in kHz under TCG (0: unknown, or KVM): passed as tsc_early_khz, since
    /// without PIT and HPET the guest calibrates its TSC against the ACPI PM timer, which under
    /// load comes out wrong (docs/microvm.md#clock).
    /// </summary>
    public long TscKhz { get; init; }

    /// <summary>The host formatted the scratch disk as ext4 (melange.scratch=ext4): the guest only mounts it.</summary>
    public bool ScratchFormatted { get; init; }
}

/// <summary>The qemu argument vector, as melange's qemu runner builds it.</summary>
internal static class QemuCommand
{
    public static string Program(string arch) => $"qemu-system-{arch}";

    public const string X86Machine = "q35,hpet=off,smm=off,pit=off,i8042=off,sata=off,smbus=off,usb=off,vmport=off,graphics=off";

    /// <summary>The kernel command line: melange's flags, the network, QEMU_KERNEL_CMDLINE, the client key.</summary>
    public static string KernelCommandLine(QemuLaunch l)
    {
        var parts = BaseKernelParameters(l);
        // Our guest init reads the SLIRP addresses from here when QEMU_NET_CIDR moves the network.
        if (l.Environment.Network is { } net)
            parts.Add($"melange.net={net.Guest}/{net.PrefixLength},{net.Gateway},{net.Dns}");
        // The guest's address is static (no DHCP), so the search domains go to its resolv.conf this way.
        if (l.Environment.DnsSearch.Count > 0) parts.Add("melange.dns_search=" + string.Join(',', l.Environment.DnsSearch));
        if (l.ScratchFormatted) parts.Add("melange.scratch=ext4");
        if (!string.IsNullOrWhiteSpace(l.Environment.KernelCmdline)) parts.Add(l.Environment.KernelCmdline!.Trim());
        parts.Add("sshkey=" + l.ClientPublicKeyBase64);
        parts.Add("melange_qemu_runner=1");
        if (l.Environment.Testing is { } testing) parts.Add("melange.testing=" + testing.ToString(CultureInfo.InvariantCulture));
        if (TscParameter(l) is { } tsc) parts.Add(tsc);
        return string.Join(' ', parts);
    }

    /// <summary>melange's kernel flags, first on every command line (a cold boot's and a template's).</summary>
    public static List<string> BaseKernelParameters(QemuLaunch l) => new()
    {
        "console=hvc0",
        l.KernelDebug ? "debug loglevel=7" : "quiet",
        "nomodeset random.trust_cpu=on noapic nomodules 8250.nr_uarts=0 tsc=reliable no_timer_check cryptomgr.notests",
        "rcupdate.rcu_expedited=1 panic=-1 pci=lastbus=0 ftrace=off swiotlb=noforce edd=off",
    };

    /// <summary>tsc_early_khz under TCG when the host's TSC rate is known (docs/microvm.md#clock), else null.</summary>
    public static string? TscParameter(QemuLaunch l) =>
        l.TscKhz > 0 && !l.KvmUsable ? "tsc_early_khz=" + l.TscKhz.ToString(CultureInfo.InvariantCulture) : null;

    /// <summary>The accelerator: TCG across architectures, KVM when /dev/kvm works, else TCG (given once: docs/microvm.md#pitfall-10).</summary>
    public static string Accelerator(QemuLaunch l) =>
        l.Arch == l.HostArch && l.KvmUsable ? "kvm" : "tcg,thread=multi";

    /// <summary>The CPU model: the user's; a fixed model across architectures; host under KVM; max under TCG.</summary>
    public static string CpuModel(QemuLaunch l)
    {
        if (!string.IsNullOrEmpty(l.CpuModel)) return l.CpuModel!;
        if (l.Arch != l.HostArch)
            return l.Arch switch
            {
                "aarch64" => "cortex-a76",
                "x86_64" => "Haswell-v4",
                _ => throw UnsupportedArch(l.Arch),
            };
        return l.KvmUsable ? "host" : "max";
    }

    public static string[] Build(QemuLaunch l)
    {
        var args = new List<string>();
        var memorySuffix = l.VirtiofsSocket is null ? "" : ",memory-backend=mem";
        args.AddRange(new[] { "-machine", l.Arch switch
        {
            "x86_64" => X86Machine + memorySuffix,
            "aarch64" => "virt" + memorySuffix,
            _ => throw UnsupportedArch(l.Arch),
        } });

        if (l.VirtiofsSocket is null)
        {
            args.AddRange(new[] { "-m", $"{l.MemoryKiB}k" });
        }
        else
        {
            // virtiofs needs guest memory shared with virtiofsd, aligned to MiB.
            var mib = (l.MemoryKiB + 1023) / 1024;
            args.AddRange(new[] { "-m", $"{mib * 1024}k", "-object", $"memory-backend-memfd,id=mem,size={mib}M,share=on" });
        }

        args.AddRange(new[] { "-smp", $"{l.Cpus},dies=1,sockets=1,cores={l.Cpus},threads=1" });
        args.AddRange(new[] { "-accel", Accelerator(l) });
        args.AddRange(new[] { "-cpu", CpuModel(l) });
        args.AddRange(new[] { "-display", "none", "-no-reboot", "-no-user-config", "-nodefaults" });
        args.AddRange(new[]
        {
            "-device", "virtio-serial-pci,id=virtio-serial0,max_ports=2",
            "-chardev", "stdio,id=charconsole0",
            "-device", "virtconsole,chardev=charconsole0,id=console0",
        });

        var netdev = $"user,id=id1,hostfwd=tcp:127.0.0.1:{l.SshPort}-:22,hostfwd=tcp:127.0.0.1:{l.ControlPort}-:2223";
        if (l.Environment.Network is { } net) netdev += ",net=" + net;
        foreach (var domain in l.Environment.DnsSearch) netdev += ",dnssearch=" + domain;
        args.AddRange(new[] { "-netdev", netdev });
        args.AddRange(new[] { "-device", "virtio-net-pci,netdev=id1,romfile=,host_mtu=1400" });
        // Without an entropy source, mkfs and the SSH server stall for seconds (docs/microvm.md#pitfall-1).
        args.AddRange(new[] { "-device", "virtio-rng-pci,rng=rng0", "-object", "rng-random,filename=/dev/urandom,id=rng0" });
        args.AddRange(new[] { "-append", KernelCommandLine(l) });

        args.AddRange(new[] { "-fsdev", $"local,security_model=mapped,id=fsdev100,path={OptionValue(l.WorkspaceDir)}" });
        args.AddRange(new[] { "-device", "virtio-9p-pci,id=fs100,fsdev=fsdev100,mount_tag=defaultshare" });
        if (!string.IsNullOrEmpty(l.CacheDir))
        {
            if (l.VirtiofsSocket is { } socket)
            {
                args.AddRange(new[] { "-chardev", $"socket,id=char_cache,path={OptionValue(socket)}" });
                args.AddRange(new[] { "-device", "vhost-user-fs-pci,queue-size=1024,chardev=char_cache,tag=melange_cache" });
            }
            else
            {
                args.AddRange(new[] { "-fsdev", $"local,security_model=mapped,id=fsdev101,readonly=on,path={OptionValue(l.CacheDir!)}" });
                args.AddRange(new[] { "-device", "virtio-9p-pci,id=fs101,fsdev=fsdev101,mount_tag=melange_cache" });
            }
        }

        args.AddRange(new[] { "-kernel", l.KernelPath, "-initrd", l.InitrdPath });

        var queues = Math.Max(1, l.Cpus / 2).ToString(CultureInfo.InvariantCulture);
        args.AddRange(new[] { "-object", "iothread,id=io1" });
        args.AddRange(new[] { "-device", $"virtio-blk-pci,drive=disk0,iothread=io1,packed=on,num-queues={queues}" });
        args.AddRange(new[] { "-drive", $"if=none,id=disk0,cache=unsafe,format=raw,aio=threads,file={OptionValue(l.DiskPath)}" });
        args.AddRange(new[] { "-object", "iothread,id=io2" });
        args.AddRange(new[] { "-device", $"virtio-blk-pci,drive=image.tar,iothread=io2,packed=on,num-queues={queues}" });
        args.AddRange(new[] { "-blockdev", $"driver=raw,node-name=image.tar,read-only=on,file.driver=file,file.filename={OptionValue(l.RootfsTar)}" });
        return args.ToArray();
    }

    /// <summary>A value inside a qemu option list, where a comma must be doubled.</summary>
    public static string OptionValue(string value) => value.Replace(",", ",,");

    private static MelangeException UnsupportedArch(string arch) =>
        new(ErrorKind.InvalidArgument, "UnsupportedArchitecture", $"The qemu runner cannot boot {arch} guests.",
            "Use -Arch x86_64 or -Arch aarch64.", arch);
}
