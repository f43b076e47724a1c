using System.Text;
using MelangeRunner.Native;
using MelangeRunner.Qemu.Initramfs;
using Xunit;
using Xunit.Abstractions;

namespace MelangeRunner.Tests.Initramfs;

public class InitramfsBuilderTests
{
    private readonly ITestOutputHelper _out;
    public InitramfsBuilderTests(ITestOutputHelper output) => _out = output;

    private static InitramfsBuilder.CacheInputs Inputs() => new("x86_64", "/lib/modules/6.1.0-57-amd64", "dep:1:2", new[] { "strace" },
        new[] { Encoding.ASCII.GetBytes("#!/bin/sh\n"), Encoding.ASCII.GetBytes("#!/bin/sh\nexit 0\n"), Encoding.ASCII.GetBytes("Port 22\n") },
        new[] { "/usr/sbin/sshd:/usr/sbin/sshd:100:5.0" });

    [Fact]
    public void CacheKeyChangesWithEveryInput()
    {
        var a = Inputs();
        var key = InitramfsBuilder.ComputeCacheKey(a);
        Assert.Equal(key, InitramfsBuilder.ComputeCacheKey(Inputs()));
        Assert.Matches("^[0-9a-f]{16}$", key);
        var variants = new[]
        {
            a with { Arch = "aarch64" },
            a with { ModulesDir = "/lib/modules/6.1.0-58-amd64" },
            a with { ModulesDir = null },
            a with { ModulesStamp = "dep:1:3" },
            a with { AdditionalPackages = new[] { "strace", "gdb" } },
            a with { AdditionalPackages = Array.Empty<string>() },
            a with { GuestFiles = new[] { Encoding.ASCII.GetBytes("#!/bin/sh\n#\n"), a.GuestFiles[1], a.GuestFiles[2] } },
            a with { GuestFiles = new[] { a.GuestFiles[0], Encoding.ASCII.GetBytes("#!/bin/sh\n"), a.GuestFiles[2] } },
            a with { GuestFiles = new[] { a.GuestFiles[0], a.GuestFiles[1], Encoding.ASCII.GetBytes("Port 2222\n") } },
            a with { HostFileStamps = new[] { "/usr/sbin/sshd:/usr/sbin/sshd:101:5.0" } },
            a with { HostFileStamps = new[] { "/usr/sbin/sshd:/usr/sbin/sshd:100:6.0" } },
        };
        var keys = variants.Select(InitramfsBuilder.ComputeCacheKey).Append(key).ToList();
        Assert.Equal(keys.Count, keys.Distinct().Count());
    }

    [Fact]
    public void GuestFilesAreEmbedded()
    {
        var init = Encoding.UTF8.GetString(InitramfsBuilder.GuestFile("init"));
        Assert.StartsWith("#!/bin/busybox sh", init);
        Assert.Contains("/sbin/mke2fs", init);
        Assert.Contains("--xattrs-include='*'", init);
        Assert.Contains(KernelModules.LoadListName, init);
        var loader = Encoding.UTF8.GetString(InitramfsBuilder.GuestFile("load-modules"));
        Assert.Contains(KernelModules.LoadListName, loader);
        Assert.Contains(KernelModules.BootGroupPrefix + "*)", loader);
        var sshd = Encoding.UTF8.GetString(InitramfsBuilder.GuestFile("sshd_config"));
        Assert.Contains("ChrootDirectory /mount", sshd);
        Assert.Contains("Match LocalPort 2223", sshd);
    }

    [Fact]
    public void AdditionalPackagesAreValidatedLikeMelange()
    {
        var old = Environment.GetEnvironmentVariable(InitramfsBuilder.AdditionalPackagesVariable);
        try
        {
            var sink = new RecordingSink();
            Environment.SetEnvironmentVariable(InitramfsBuilder.AdditionalPackagesVariable, "strace, gdb;rm -rf /");
            Assert.Empty(InitramfsBuilder.AdditionalPackages(MicrovmConfig.Default(), sink));
            Assert.Contains(sink.Warnings, w => w.Contains(InitramfsBuilder.AdditionalPackagesVariable));
            Environment.SetEnvironmentVariable(InitramfsBuilder.AdditionalPackagesVariable, "strace,,gdb");
            var cfg = MicrovmConfig.Default();
            cfg.AdditionalPackages.Add("less");
            Assert.Equal(new[] { "strace", "gdb", "less" }, InitramfsBuilder.AdditionalPackages(cfg, sink));
        }
        finally
        {
            Environment.SetEnvironmentVariable(InitramfsBuilder.AdditionalPackagesVariable, old);
        }
    }

    [Fact]
    public void ArchitectureIsChecked()
    {
        Assert.Equal("UnsupportedArchitecture", Assert.Throws<MelangeException>(() => InitramfsBuilder.CheckArch("s390x")).ErrorId);
        Assert.Equal("UnknownArchitecture", Assert.Throws<MelangeException>(() => InitramfsBuilder.CheckArch("pdp11")).ErrorId);
        var other = MelangeRunner.Images.Architecture.Host == "x86_64" ? "aarch64" : "x86_64";
        Assert.Equal("ArchitectureMismatch", Assert.Throws<MelangeException>(() => InitramfsBuilder.CheckArch(other)).ErrorId);
    }

    [Fact]
    public async Task BaseOverrideMustExist()
    {
        var old = Environment.GetEnvironmentVariable(InitramfsBuilder.BaseInitramfsVariable);
        try
        {
            Environment.SetEnvironmentVariable(InitramfsBuilder.BaseInitramfsVariable, "/nonexistent/initramfs.cpio");
            var e = await Assert.ThrowsAsync<MelangeException>(() => InitramfsBuilder.GetBaseAsync("x86_64", null, NullEventSink.Instance, CancellationToken.None));
            Assert.Equal("BaseInitramfsNotFound", e.ErrorId);
            Assert.Contains(InitramfsBuilder.BaseInitramfsVariable, e.Message);
            using var t = new InitramfsTemp();
            File.WriteAllText(t.PathOf("b.cpio"), "x");
            Environment.SetEnvironmentVariable(InitramfsBuilder.BaseInitramfsVariable, t.PathOf("b.cpio"));
            Assert.Equal(t.PathOf("b.cpio"), await InitramfsBuilder.GetBaseAsync("x86_64", null, NullEventSink.Instance, CancellationToken.None));
        }
        finally
        {
            Environment.SetEnvironmentVariable(InitramfsBuilder.BaseInitramfsVariable, old);
        }
    }

    [Fact]
    public async Task InjectAppendsAnArchiveWithTheHostKeyAndSecureDeleteRemovesIt()
    {
        using var t = new InitramfsTemp();
        var basePath = t.PathOf("base.cpio");
        using (var f = File.Create(basePath))
        using (var w = new CpioWriter(f))
        {
            w.WriteDirectory("etc", 0x1ED);
            w.WriteDirectory("etc/ssh", 0x1ED);
            w.WriteFile("init", 0x1ED, Encoding.ASCII.GetBytes("#!/bin/sh\n"));
            w.Finish();
        }
        var baseBytes = File.ReadAllBytes(basePath);
        var key = Encoding.ASCII.GetBytes("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n");

        // A modules tree given as QEMU_KERNEL_MODULES rides along.
        var mods = t.PathOf("modules/6.1.0-test");
        Directory.CreateDirectory(Path.Combine(mods, "kernel/fs/9p"));
        File.WriteAllText(Path.Combine(mods, "modules.dep"), "kernel/fs/9p/9p.ko:\n");
        File.WriteAllText(Path.Combine(mods, "modules.builtin"), string.Join("\n", KernelModules.GuestModules.Select(m => $"kernel/x/{m.Name}.ko").Where(n => !n.Contains("/9p.ko"))) + "\n");
        File.WriteAllText(Path.Combine(mods, "kernel/fs/9p/9p.ko"), "module");

        var path = await InitramfsBuilder.InjectRuntimeDataAsync(basePath, key, "ssh-ed25519 AAAAC3 host", mods, NullEventSink.Instance, CancellationToken.None);
        try
        {
            Assert.StartsWith(Path.GetTempPath().TrimEnd('/'), path);
            Assert.Equal(0x100u, Libc.LStat(path)!.Value.Permissions);
            var all = File.ReadAllBytes(path);
            Assert.Equal(baseBytes, all[..baseBytes.Length]);
            Assert.Equal(baseBytes, File.ReadAllBytes(basePath)); // the base is untouched
            if (InitramfsTemp.HasCpio)
            {
                var (code, listing, err) = InitramfsTemp.RunIn(null, all[baseBytes.Length..], "cpio", "-itv", "--quiet");
                Assert.True(code == 0, err);
                _out.WriteLine(listing);
                var lines = listing.Split('\n', StringSplitOptions.RemoveEmptyEntries);
                Assert.Contains(lines, l => l.StartsWith("-r--------", StringComparison.Ordinal) && l.EndsWith(" etc/ssh/ssh_host_ed25519_key", StringComparison.Ordinal));
                Assert.Contains(lines, l => l.StartsWith("-rw-r--r--", StringComparison.Ordinal) && l.EndsWith(" etc/ssh/ssh_host_ed25519_key.pub", StringComparison.Ordinal));
                Assert.Contains(lines, l => l.EndsWith(" lib/modules/6.1.0-test/kernel/fs/9p/9p.ko", StringComparison.Ordinal));
                Assert.Contains(lines, l => l.EndsWith(" lib/modules/6.1.0-test/" + KernelModules.LoadListName, StringComparison.Ordinal));
                Assert.DoesNotContain(lines, l => l.EndsWith(" lib", StringComparison.Ordinal) || l.EndsWith(" lib/modules", StringComparison.Ordinal));
                // Extracting the appended archive gives the key bytes back.
                var dest = t.PathOf("x");
                Directory.CreateDirectory(dest);
                (code, _, err) = InitramfsTemp.RunIn(dest, all[baseBytes.Length..], "cpio", "-idm", "--quiet", "--no-absolute-filenames");
                Assert.True(code == 0, err);
                Assert.Equal(key, File.ReadAllBytes(Path.Combine(dest, "etc/ssh/ssh_host_ed25519_key")));
                Assert.Equal("ssh-ed25519 AAAAC3 host\n", File.ReadAllText(Path.Combine(dest, "etc/ssh/ssh_host_ed25519_key.pub")));
                Assert.Equal("9p kernel/fs/9p/9p.ko required boot1", File.ReadAllLines(Path.Combine(dest, "lib/modules/6.1.0-test", KernelModules.LoadListName))[1]);
            }
        }
        finally
        {
            MelangeRunner.IO.SecureFile.Delete(path);
        }
        Assert.False(File.Exists(path));
        MelangeRunner.IO.SecureFile.Delete(path); // a missing file is fine
    }

    [Fact]
    public async Task InjectLeavesNothingBehindOnFailure()
    {
        using var t = new InitramfsTemp();
        var before = Directory.GetFiles(Path.GetTempPath(), "melange-initramfs-*.cpio").ToHashSet();
        File.WriteAllBytes(t.PathOf("base.cpio"), new byte[512]);
        var e = await Assert.ThrowsAsync<MelangeException>(() => InitramfsBuilder.InjectRuntimeDataAsync(t.PathOf("base.cpio"), new byte[] { 1 }, "k", t.PathOf("no-such-modules"), NullEventSink.Instance, CancellationToken.None));
        Assert.Equal("KernelModulesNotFound", e.ErrorId);
        // A modules tree without the guest's modules fails half-way.
        Directory.CreateDirectory(t.PathOf("m/6.1"));
        File.WriteAllText(t.PathOf("m/6.1/modules.dep"), "kernel/x.ko:\n");
        await Assert.ThrowsAsync<MelangeException>(() => InitramfsBuilder.InjectRuntimeDataAsync(t.PathOf("base.cpio"), new byte[] { 1 }, "k", t.PathOf("m/6.1"), NullEventSink.Instance, CancellationToken.None));
        Assert.DoesNotContain(Directory.GetFiles(Path.GetTempPath(), "melange-initramfs-*.cpio"), f => !before.Contains(f));
    }

    [Fact]
    public void SecureDeleteOverwritesAReadOnlyFile()
    {
        using var t = new InitramfsTemp();
        var p = t.PathOf("secret");
        File.WriteAllBytes(p, new byte[3_000_000]);
        File.SetUnixFileMode(p, UnixFileMode.UserRead);
        MelangeRunner.IO.SecureFile.Delete(p);
        Assert.False(File.Exists(p));
    }

    [Fact]
    public async Task GeneratesABaseFromTheHost()
    {
        try { InitramfsBuilder.FindTools(); }
        catch (MelangeException e) { _out.WriteLine("skipped: " + e.Message + " " + e.Fix); return; }
        using var t = new InitramfsTemp();
        var modules = KernelModuleOrderTests.FindModulesDir();
        _out.WriteLine("modules: " + (modules ?? "(none found; run tools/Get-MelangeKernel.ps1)"));
        var sink = new RecordingSink();
        var output = t.PathOf("initramfs.cpio");
        await InitramfsBuilder.GenerateBaseAsync(MelangeRunner.Images.Architecture.Host, MicrovmConfig.Default(), modules, output, sink, CancellationToken.None);
        Assert.Empty(sink.Warnings);
        Assert.Empty(Directory.GetFiles(t.Root, "*.tmp"));
        var bytes = File.ReadAllBytes(output);
        _out.WriteLine($"{bytes.Length} bytes");
        var again = t.PathOf("again.cpio");
        await InitramfsBuilder.GenerateBaseAsync(MelangeRunner.Images.Architecture.Host, MicrovmConfig.Default(), modules, again, sink, CancellationToken.None);
        Assert.Equal(bytes, File.ReadAllBytes(again)); // deterministic
        if (!InitramfsTemp.HasCpio) return;

        var (code, listing, err) = InitramfsTemp.RunIn(null, bytes, "cpio", "-itv", "--quiet");
        Assert.True(code == 0, err);
        var lines = listing.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var names = lines.Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[8]).ToList();
        Assert.Equal(".", names[0]);
        Assert.StartsWith("drwxr-xr-x", lines[0]);
        Assert.Contains("init", names);
        Assert.Contains(lines, l => l.StartsWith("crw-------", StringComparison.Ordinal) && l.EndsWith(" dev/console", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("crw-rw-rw-", StringComparison.Ordinal) && l.EndsWith(" dev/null", StringComparison.Ordinal));

        // Extract and check that the guest's paths resolve as on the host (links included).
        var root = t.PathOf("root");
        Directory.CreateDirectory(root);
        (code, _, err) = InitramfsTemp.RunIn(root, bytes, "cpio", "-idm", "--quiet", "--no-absolute-filenames");
        string In(string p) => HostPathIn(root, p);
        foreach (var p in new[] { "/bin/busybox", "/usr/sbin/sshd", "/sbin/mke2fs", "/bin/tar", "/bin/sh", "/sbin/insmod", "/init", "/etc/ssh/sshd_config", "/etc/passwd" })
            Assert.True(File.Exists(In(p)), p + " is missing from the initramfs");
        var sshd = new LibraryResolver().GetElf("/usr/sbin/sshd")!;
        Assert.True(File.Exists(In(sshd.Interpreter!)), "the loader " + sshd.Interpreter);
        Assert.Equal(File.ReadAllBytes("/bin/tar"), File.ReadAllBytes(In("/bin/tar"))); // GNU tar, not busybox's applet
        var closure = new LibraryResolver().Resolve(new[] { "/usr/sbin/sshd", "/bin/tar", "/sbin/mke2fs" });
        Assert.All(closure, p => Assert.True(File.Exists(In(p)), p));
        if (modules != null)
        {
            var list = In("/lib/modules/" + Path.GetFileName(modules) + "/" + KernelModules.LoadListName);
            Assert.True(File.Exists(list));
            foreach (var line in File.ReadAllLines(list).Where(l => !l.StartsWith('#')))
                Assert.True(File.Exists(In("/lib/modules/" + Path.GetFileName(modules) + "/" + line.Split(' ')[1])), line);
        }
    }

    /// <summary>A guest path inside an extracted initramfs, following its (absolute or relative) links inside it.</summary>
    private static string HostPathIn(string root, string path)
    {
        var parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries).ToList();
        var cur = new List<string>();
        for (int i = 0, hops = 0; i < parts.Count; i++)
        {
            var next = root + "/" + string.Join('/', cur.Append(parts[i]));
            var target = new FileInfo(next).LinkTarget;
            if (target == null || hops++ > 40) { if (parts[i] == "..") { if (cur.Count > 0) cur.RemoveAt(cur.Count - 1); } else if (parts[i] != ".") cur.Add(parts[i]); continue; }
            if (target.StartsWith('/')) cur.Clear();
            parts = target.Split('/', StringSplitOptions.RemoveEmptyEntries).Concat(parts.Skip(i + 1)).ToList();
            i = -1;
        }
        return root + "/" + string.Join('/', cur);
    }
}
