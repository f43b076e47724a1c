using System.Text;
using MelangeRunner.Qemu;
using MelangeRunner.Qemu.Template;
using Xunit;

namespace MelangeRunner.Tests.Qemu.Template;

public class TemplateCommandTests
{
    private static QemuLaunch Launch(int sshPort = 40022, string disk = "/t/disk.img", string workspace = "/ws", int cpus = 2, long memoryKiB = 1024 * 1024, string? cacheDir = null, long tscKhz = 2100000) => new()
    {
        Arch = "x86_64",
        HostArch = "x86_64",
        KvmUsable = false,
        Cpus = cpus,
        MemoryKiB = memoryKiB,
        SshPort = sshPort,
        ControlPort = sshPort + 1,
        KernelPath = "/k/vmlinux",
        InitrdPath = "/t/initramfs.cpio",
        DiskPath = disk,
        RootfsTar = "/t/rootfs.tar",
        WorkspaceDir = workspace,
        CacheDir = cacheDir,
        ClientPublicKeyBase64 = "S0VZ",
        ScratchFormatted = true,
        TscKhz = tscKhz,
        Environment = QemuEnvironment.Read(_ => null),
    };

    private static string After(string[] args, string flag) => args[Array.IndexOf(args, flag) + 1];

    private static string[] Placeholder(QemuLaunch l) => TemplateCommand.Build(TemplateCommand.Placeholders(l), "<ram>", false, "<netdev>", "<run>");

    [Fact]
    public void ThePodVectorMapsTheTemplateRamPrivatelyAndAddsControlPortVmgenidAndQmp()
    {
        var args = TemplateCommand.Build(Launch(), "/tpl/ram", share: false, null, "/run/x");
        Assert.EndsWith(",memory-backend=mem", After(args, "-machine"));
        Assert.Equal("1024M", After(args, "-m"));
        Assert.Contains("memory-backend-file,id=mem,size=1024M,mem-path=/tpl/ram,share=off,prealloc=off", args);
        Assert.Contains("virtserialport,chardev=charctl0,id=ctl0,name=org.melange.ctl", args);
        Assert.Contains("socket,id=charctl0,path=/run/x/ctl.sock,server=on,wait=off", args);
        Assert.Contains("vmgenid,id=vmgenid0", args);
        Assert.Equal("unix:/run/x/qmp.sock,server=on,wait=off", After(args, "-qmp"));
        Assert.Contains("hostfwd=tcp:127.0.0.1:40022-:22", After(args, "-netdev"));
        var append = After(args, "-append");
        Assert.DoesNotContain("sshkey=", append);
        Assert.DoesNotContain("melange.scratch", append);
        Assert.Contains("melange.template=1", append);
        Assert.Contains("tsc_early_khz=2100000", append);
    }

    [Fact]
    public void TheTemplateSharesItsRamAndForwardsNoPorts()
    {
        var args = TemplateCommand.Build(Launch(tscKhz: 0), "/tpl/ram", share: true, "user,id=id1", "/tpl");
        Assert.Contains("memory-backend-file,id=mem,size=1024M,mem-path=/tpl/ram,share=on,prealloc=off", args);
        Assert.Equal("user,id=id1", After(args, "-netdev"));
        Assert.DoesNotContain("tsc_early_khz", After(args, "-append"));
    }

    [Fact]
    public void PerPodValuesAreNotPartOfTheKeyVectorButResourcesAndDevicesAre()
    {
        Assert.Equal(Placeholder(Launch()), Placeholder(Launch(sshPort: 50000, disk: "/other/disk", workspace: "/other/ws")));
        Assert.NotEqual(Placeholder(Launch()), Placeholder(Launch(cpus: 1)));
        Assert.NotEqual(Placeholder(Launch()), Placeholder(Launch(memoryKiB: 2 * 1024 * 1024)));
        Assert.NotEqual(Placeholder(Launch()), Placeholder(Launch(cacheDir: "/cache")));
    }

    [Fact]
    public void TheRestoreMessageIsLineOrientedWithCountsAndEndsWithTheTime()
    {
        var key = Encoding.ASCII.GetBytes("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\nBBBB\n-----END OPENSSH PRIVATE KEY-----\n");
        var text = Encoding.ASCII.GetString(new RestoreMessage(key, "ssh-ed25519 HOST", "ecdsa-sha2-nistp256 CLIENT", new[] { "SCRATCH=ext4" }).Encode("0011223344556677"));
        var lines = text.Split('\n');
        Assert.Equal("MELANGE-RESTORE 1", lines[0]);
        Assert.Equal("nonce 0011223344556677", lines[1]);
        Assert.Matches("^entropy [0-9a-f]{128}$", lines[2]);
        Assert.Equal("hostkey 4", lines[3]);
        Assert.Equal("-----END OPENSSH PRIVATE KEY-----", lines[7]);
        Assert.Equal(new[] { "hostkey.pub", "ssh-ed25519 HOST", "authkey", "ecdsa-sha2-nistp256 CLIENT", "env 1", "SCRATCH=ext4" }, lines[8..14]);
        Assert.Matches("^time [0-9]+ [0-9]{1,2}$", lines[14]);
        Assert.Equal("END", lines[15]);
    }

    [Fact]
    public void TwoMessagesCarryDifferentEntropy()
    {
        var m = new RestoreMessage(Encoding.ASCII.GetBytes("k\n"), "p", "a", Array.Empty<string>());
        Assert.NotEqual(Encoding.ASCII.GetString(m.Encode("n")).Split('\n')[2], Encoding.ASCII.GetString(m.Encode("n")).Split('\n')[2]);
    }
}

public class TemplateDigestTests
{
    [Fact]
    public void TheRamDigestCoversTheDataExtentsAndTheirPlaces()
    {
        var dir = Directory.CreateTempSubdirectory("melange-digest-").FullName;
        try
        {
            string Make(string name, long at, byte value, long size = 64L << 20)
            {
                var p = Path.Combine(dir, name);
                using var f = new FileStream(p, FileMode.Create);
                f.SetLength(size);
                f.Position = at;
                f.Write(Enumerable.Repeat(value, 8192).ToArray());
                return p;
            }
            var a = TemplateBuilder.DataSha256(Make("a", 1 << 20, 7));
            Assert.Matches("^[0-9a-f]{64}$", a);
            Assert.Equal(a, TemplateBuilder.DataSha256(Make("b", 1 << 20, 7)));
            Assert.NotEqual(a, TemplateBuilder.DataSha256(Make("c", 1 << 20, 8)));
            Assert.NotEqual(a, TemplateBuilder.DataSha256(Make("d", 2 << 20, 7)));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
