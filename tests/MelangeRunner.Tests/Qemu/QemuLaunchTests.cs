using MelangeRunner.Qemu;
using Xunit;

namespace MelangeRunner.Tests.Qemu;

public class QemuLaunchTests
{
    private static QemuLaunch Launch(string arch = "x86_64", bool kvm = false, QemuEnvironment? env = null,
        string? cacheDir = null, string? virtiofs = null, string? cpuModel = null, string workspace = "/ws") => new()
        {
            Arch = arch,
            HostArch = "x86_64",
            KvmUsable = kvm,
            Cpus = 2,
            MemoryKiB = 4L * 1024 * 1024,
            CpuModel = cpuModel,
            SshPort = 40022,
            ControlPort = 40023,
            KernelPath = "/k/vmlinux",
            InitrdPath = "/t/initramfs.cpio",
            DiskPath = "/t/disk.img",
            RootfsTar = "/t/rootfs.tar",
            WorkspaceDir = workspace,
            CacheDir = cacheDir,
            VirtiofsSocket = virtiofs,
            ClientPublicKeyBase64 = "S0VZ",
            Environment = env ?? QemuEnvironment.Read(_ => null),
        };

    private static string After(string[] args, string flag) => args[Array.IndexOf(args, flag) + 1];

    private static IEnumerable<string> AllAfter(string[] args, string flag) =>
        args.Select((a, i) => (a, i)).Where(x => x.a == flag).Select(x => args[x.i + 1]);

    [Fact]
    public void X86UnderTcgUsesQ35MaxCpuAndOneAccel()
    {
        var args = QemuCommand.Build(Launch());
        Assert.Equal(QemuCommand.X86Machine, After(args, "-machine"));
        Assert.Equal(new[] { "tcg,thread=multi" }, AllAfter(args, "-accel"));
        Assert.Equal("max", After(args, "-cpu"));
        Assert.Equal("4194304k", After(args, "-m"));
        Assert.Equal("2,dies=1,sockets=1,cores=2,threads=1", After(args, "-smp"));
        Assert.Equal("qemu-system-x86_64", QemuCommand.Program("x86_64"));
    }

    [Fact]
    public void KvmWhenUsableWithTheHostCpu()
    {
        var args = QemuCommand.Build(Launch(kvm: true));
        Assert.Equal(new[] { "kvm" }, AllAfter(args, "-accel"));
        Assert.Equal("host", After(args, "-cpu"));
    }

    [Fact]
    public void CrossArchitectureIsTcgWithAFixedCpuModel()
    {
        var args = QemuCommand.Build(Launch(arch: "aarch64", kvm: true));
        Assert.Equal("virt", After(args, "-machine"));
        Assert.Equal(new[] { "tcg,thread=multi" }, AllAfter(args, "-accel"));
        Assert.Equal("cortex-a76", After(args, "-cpu"));
    }

    [Fact]
    public void TheUsersCpuModelWins() =>
        Assert.Equal("Skylake-Server", After(QemuCommand.Build(Launch(kvm: true, cpuModel: "Skylake-Server")), "-cpu"));

    [Fact]
    public void UnknownArchitectureIsRefused()
    {
        var e = Assert.Throws<MelangeException>(() => QemuCommand.Build(Launch(arch: "s390x")));
        Assert.Equal("UnsupportedArchitecture", e.ErrorId);
    }

    [Fact]
    public void ConsoleNetworkRngAndDevicesAsMelange()
    {
        var args = QemuCommand.Build(Launch());
        var joined = string.Join(' ', args);
        Assert.Contains("-display none -no-reboot -no-user-config -nodefaults", joined);
        Assert.Contains("-chardev stdio,id=charconsole0", joined);
        Assert.Contains("-device virtconsole,chardev=charconsole0,id=console0", joined);
        Assert.Equal("user,id=id1,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40023-:2223", After(args, "-netdev"));
        Assert.Contains("virtio-net-pci,netdev=id1,romfile=,host_mtu=1400", args);
        Assert.Contains("virtio-rng-pci,rng=rng0", args);
        Assert.Contains("rng-random,filename=/dev/urandom,id=rng0", args);
        Assert.Equal("/k/vmlinux", After(args, "-kernel"));
        Assert.Equal("/t/initramfs.cpio", After(args, "-initrd"));
        Assert.Contains("local,security_model=mapped,id=fsdev100,path=/ws", args);
        Assert.Contains("virtio-9p-pci,id=fs100,fsdev=fsdev100,mount_tag=defaultshare", args);
        Assert.Contains("if=none,id=disk0,cache=unsafe,format=raw,aio=threads,file=/t/disk.img", args);
        Assert.Contains("driver=raw,node-name=image.tar,read-only=on,file.driver=file,file.filename=/t/rootfs.tar", args);
        // The scratch disk comes first (/dev/vda), the rootfs second (/dev/vdb).
        Assert.True(Array.IndexOf(args, "virtio-blk-pci,drive=disk0,iothread=io1,packed=on,num-queues=1") <
                    Array.IndexOf(args, "virtio-blk-pci,drive=image.tar,iothread=io2,packed=on,num-queues=1"));
    }

    [Fact]
    public void KernelCommandLineCarriesMelangesFlagsAndTheKey()
    {
        var line = QemuCommand.KernelCommandLine(Launch());
        Assert.StartsWith("console=hvc0 quiet ", line);
        Assert.Contains(" panic=-1 ", line);
        Assert.Contains(" sshkey=S0VZ melange_qemu_runner=1", line);
        Assert.DoesNotContain("melange.testing", line);
        Assert.DoesNotContain("melange.net", line);
    }

    [Fact]
    public void AHostFormattedScratchDiskIsAnnounced()
    {
        Assert.DoesNotContain("melange.scratch", QemuCommand.KernelCommandLine(Launch()));
        Assert.Contains(" melange.scratch=ext4 ", QemuCommand.KernelCommandLine(Launch() with { ScratchFormatted = true }));
    }

    [Fact]
    public void TheScratchDiskIsSparseAndFormattedWhenTheHostCan()
    {
        var dir = Directory.CreateTempSubdirectory("melange-scratch-test-").FullName;
        try
        {
            var (path, formatted) = ScratchDisk.Create(dir, "4Gi", NullEventSink.Instance);
            Assert.Equal(4L << 30, new FileInfo(path).Length);
            Assert.Equal(ScratchDisk.HostFormatter() is not null, formatted);
            if (formatted)
            {
                // The ext4 superblock's magic, 0xEF53 at byte 1080.
                using var f = File.OpenRead(path);
                f.Position = 1080;
                Assert.Equal(new byte[] { 0x53, 0xEF }, new[] { (byte)f.ReadByte(), (byte)f.ReadByte() });
            }
            Assert.Throws<MelangeException>(() => ScratchDisk.Create(dir, "4 parsecs", NullEventSink.Instance));
            Assert.Single(Directory.GetFiles(dir));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void EnvironmentVariablesReachTheCommandLine()
    {
        var vars = new Dictionary<string, string>
        {
            ["QEMU_NET_CIDR"] = "192.168.76.9/24",
            ["QEMU_DNS_SEARCH"] = "example.com, corp.internal",
            ["QEMU_KERNEL_CMDLINE"] = "mitigations=off",
            ["TESTING"] = "1",
        };
        var launch = Launch(env: QemuEnvironment.Read(vars.GetValueOrDefault));
        var args = QemuCommand.Build(launch);
        Assert.EndsWith(",net=192.168.76.0/24,dnssearch=example.com,dnssearch=corp.internal", After(args, "-netdev"));
        var line = QemuCommand.KernelCommandLine(launch);
        Assert.Contains(" melange.net=192.168.76.15/24,192.168.76.2,192.168.76.3 ", line);
        Assert.Contains(" melange.dns_search=example.com,corp.internal ", line);
        Assert.Contains(" mitigations=off sshkey=", line);
        Assert.EndsWith(" melange.testing=1", line);
    }

    [Fact]
    public void NonNumericTestingIsIgnored() =>
        Assert.Null(QemuEnvironment.Read(n => n == "TESTING" ? "yes" : null).Testing);

    [Fact]
    public void CacheOverNinePReadOnly()
    {
        var args = QemuCommand.Build(Launch(cacheDir: "/cache"));
        Assert.Contains("local,security_model=mapped,id=fsdev101,readonly=on,path=/cache", args);
        Assert.Contains("virtio-9p-pci,id=fs101,fsdev=fsdev101,mount_tag=melange_cache", args);
        Assert.DoesNotContain("vhost-user-fs-pci,queue-size=1024,chardev=char_cache,tag=melange_cache", args);
    }

    [Fact]
    public void CacheOverVirtiofsSharesMemory()
    {
        var args = QemuCommand.Build(Launch(cacheDir: "/cache", virtiofs: "/t/v.sock"));
        Assert.Equal(QemuCommand.X86Machine + ",memory-backend=mem", After(args, "-machine"));
        Assert.Equal("4194304k", After(args, "-m"));
        Assert.Contains("memory-backend-memfd,id=mem,size=4096M,share=on", args);
        Assert.Contains("socket,id=char_cache,path=/t/v.sock", args);
        Assert.Contains("vhost-user-fs-pci,queue-size=1024,chardev=char_cache,tag=melange_cache", args);
    }

    [Fact]
    public void CommasInPathsAreEscapedForQemu() =>
        Assert.Contains("local,security_model=mapped,id=fsdev100,path=/w,,s", QemuCommand.Build(Launch(workspace: "/w,s")));
}

public class QemuEnvironmentTests
{
    [Theory]
    [InlineData("192.168.76.0/24", "192.168.76.0/24")]
    [InlineData("192.168.76.5/24", "192.168.76.0/24")]
    [InlineData("10.0.0.0/8", "10.0.0.0/8")]
    [InlineData(" 172.16.0.16/28 ", "172.16.0.16/28")]
    public void AcceptsIpv4NetworksFromSlash8ToSlash28(string input, string expected) =>
        Assert.Equal(expected, SlirpNetwork.Parse(input).ToString());

    [Theory]
    [InlineData("")]
    [InlineData("not-a-cidr")]
    [InlineData("192.168.1.0")]
    [InlineData("192.168.1.0/29")]
    [InlineData("192.168.1.0/30")]
    [InlineData("10.0.0.0/7")]
    [InlineData("fd00::/64")]
    [InlineData("1.2.3/24")]
    [InlineData("192.168.1.0/24,hostfwd=tcp::2222-:22")]
    [InlineData("192.168.1.0/x")]
    public void RefusesEverythingElse(string input)
    {
        var e = Assert.Throws<MelangeException>(() => SlirpNetwork.Parse(input));
        Assert.Equal("InvalidNetCidr", e.ErrorId);
        Assert.Contains("QEMU_NET_CIDR", e.Message);
    }

    [Fact]
    public void DerivesSlirpAddresses()
    {
        var net = SlirpNetwork.Parse("10.20.0.0/16");
        Assert.Equal("10.20.0.2", net.Gateway.ToString());
        Assert.Equal("10.20.0.3", net.Dns.ToString());
        Assert.Equal("10.20.0.15", net.Guest.ToString());
    }

    [Theory]
    [InlineData("example.com", new[] { "example.com" })]
    [InlineData("a.com,b-c.org", new[] { "a.com", "b-c.org" })]
    [InlineData(" x.com , ,y.com ", new[] { "x.com", "y.com" })]
    public void ParsesDnsSearchDomains(string input, string[] expected) =>
        Assert.Equal(expected, QemuEnvironment.ParseDnsSearch(input));

    [Theory]
    [InlineData("")]
    [InlineData(",,")]
    [InlineData("a.com;reboot")]
    [InlineData("a b.com")]
    [InlineData("x.com,hostfwd=tcp::1-:22")]
    [InlineData("ex_ample.com")]
    public void RefusesBadDnsSearchDomains(string input)
    {
        var e = Assert.Throws<MelangeException>(() => QemuEnvironment.ParseDnsSearch(input));
        Assert.Equal("InvalidDnsSearch", e.ErrorId);
    }

    [Fact]
    public void ReadsTheVariables()
    {
        var vars = new Dictionary<string, string> { ["QEMU_USE_VIRTIOFS"] = "true", ["QEMU_DISKS_PATH"] = "/d", ["QEMU_KERNEL_MODULES"] = "/m" };
        var env = QemuEnvironment.Read(vars.GetValueOrDefault);
        Assert.True(env.UseVirtiofs);
        Assert.Equal("/d", env.DisksPath);
        Assert.Equal("/m", env.KernelModules);
        Assert.False(QemuEnvironment.Read(n => n == "QEMU_USE_VIRTIOFS" ? "0" : null).UseVirtiofs);
    }
}

public class HostResourcesTests
{
    // melange's effectiveCPU table: (cfg, cgroup, host) → vCPUs.
    [Theory]
    [InlineData(0, 0, 8, 2)]     // nothing set: fallback cap
    [InlineData(0, 0, 1, 1)]     // a 1-CPU host stays at 1
    [InlineData(4, 0, 8, 4)]     // the user's value
    [InlineData(16, 0, 8, 8)]    // capped by the host
    [InlineData(0, 4, 8, 4)]     // the cgroup narrows the host
    [InlineData(8, 4, 16, 4)]    // the user's value capped by the cgroup
    [InlineData(2, 4, 16, 2)]
    [InlineData(0, 16, 8, 2)]    // a cgroup above the host does not narrow: fallback
    [InlineData(0, 8, 8, 2)]
    public void CpuPrecedence(int cfg, int cgroup, int host, int expected) =>
        Assert.Equal(expected, HostResources.EffectiveCpu(cfg, cgroup, host));

    private const long GiB = 1024 * 1024;

    // melange's effectiveMemoryKB table: (cfg, 85% of available, cgroup) → KiB.
    [Theory]
    [InlineData(0, 20 * GiB, 0, 4 * GiB)]      // fallback cap
    [InlineData(0, 2 * GiB, 0, 2 * GiB)]       // small host below the cap
    [InlineData(8 * GiB, 20 * GiB, 0, 8 * GiB)]
    [InlineData(32 * GiB, 20 * GiB, 0, 20 * GiB)]
    [InlineData(0, 6 * GiB, 8 * GiB, 6 * GiB)] // the cgroup drives the budget: no cap
    [InlineData(1 * GiB, 6 * GiB, 8 * GiB, 1 * GiB)]
    public void MemoryPrecedence(long cfg, long hostScaled, long cgroup, long expected) =>
        Assert.Equal(expected, HostResources.EffectiveMemoryKiB(cfg, hostScaled, cgroup));

    [Fact]
    public void ReadsCgroupV2AndV1Limits()
    {
        var root = Directory.CreateTempSubdirectory("mr-cgroup-").FullName;
        try
        {
            Assert.Equal(0, HostResources.CgroupCpuLimit(root));
            Assert.Equal(0, HostResources.CgroupMemoryLimitKiB(root));

            File.WriteAllText(Path.Combine(root, "cpu.max"), "max 100000\n");
            File.WriteAllText(Path.Combine(root, "memory.max"), "max\n");
            Assert.Equal(0, HostResources.CgroupCpuLimit(root));
            Assert.Equal(0, HostResources.CgroupMemoryLimitKiB(root));

            File.WriteAllText(Path.Combine(root, "cpu.max"), "250000 100000\n");
            File.WriteAllText(Path.Combine(root, "memory.max"), "2147483648\n");
            Assert.Equal(2, HostResources.CgroupCpuLimit(root));
            Assert.Equal(2 * GiB, HostResources.CgroupMemoryLimitKiB(root));
            Assert.Equal(2 * GiB, HostResources.AvailableMemoryKiB(root, "/nonexistent"));

            File.Delete(Path.Combine(root, "cpu.max"));
            File.Delete(Path.Combine(root, "memory.max"));
            Directory.CreateDirectory(Path.Combine(root, "cpu"));
            Directory.CreateDirectory(Path.Combine(root, "memory"));
            File.WriteAllText(Path.Combine(root, "cpu/cpu.cfs_quota_us"), "50000\n");
            File.WriteAllText(Path.Combine(root, "cpu/cpu.cfs_period_us"), "100000\n");
            File.WriteAllText(Path.Combine(root, "memory/memory.limit_in_bytes"), "9223372036854771712\n");
            Assert.Equal(1, HostResources.CgroupCpuLimit(root));   // half a CPU rounds up to one
            Assert.Equal(0, HostResources.CgroupMemoryLimitKiB(root)); // v1's "unlimited"
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    [Fact]
    public void ReadsMemAvailable()
    {
        var meminfo = Path.GetTempFileName();
        try
        {
            File.WriteAllText(meminfo, "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   12345678 kB\n");
            Assert.Equal(12345678, HostResources.AvailableMemoryKiB("/nonexistent", meminfo));
            File.WriteAllText(meminfo, "MemFree: 1000 kB\nBuffers: 200 kB\nCached: 30 kB\n");
            Assert.Equal(1230, HostResources.AvailableMemoryKiB("/nonexistent", meminfo));
        }
        finally
        {
            File.Delete(meminfo);
        }
    }
}
