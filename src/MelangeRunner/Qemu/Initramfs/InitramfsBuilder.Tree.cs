using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using MelangeRunner.HostProcess;
using MelangeRunner.Images;
using MelangeRunner.Qemu.Kernel;

namespace MelangeRunner.Qemu.Initramfs;

/// <summary>The initramfs tree: the host programs, their libraries and the additional packages.</summary>
public static partial class InitramfsBuilder
{
    // ---------------------------------------------------------------------------------------
    // Planning the tree

    internal sealed record BuildPlan(InitramfsTree Tree, IReadOnlyList<string> HostFiles);

    /// <summary>The host programs (full paths) the guest needs; a clear error naming the Debian packages of those missing.</summary>
    internal static List<(HostTool Tool, string HostPath)> FindTools()
    {
        var found = new List<(HostTool, string)>();
        var missing = new List<HostTool>();
        foreach (var t in Tools)
        {
            var p = t.HostPaths.FirstOrDefault(File.Exists);
            if (p == null) missing.Add(t);
            else found.Add((t, p));
        }
        if (missing.Count > 0)
            throw new MelangeException(ErrorKind.NotInstalled, "MissingHostTool",
                "The qemu runner's initramfs is built from this host's programs and needs " +
                string.Join("; ", missing.Select(m => $"{m.HostPaths[0]} ({m.Why}, Debian package {m.Package})")) + ", which is not installed.",
                "Install it: sudo apt-get install -y " + string.Join(' ', missing.Select(m => m.Package).Distinct()),
                missing[0].HostPaths[0]);
        return found;
    }

    internal static IEnumerable<string> OpenSshHelpers() =>
        new[] { "/usr/lib/openssh", "/usr/libexec/openssh", "/usr/libexec" }
            .SelectMany(d => new[] { d + "/sshd-session", d + "/sshd-auth" }).Where(File.Exists);

    internal static BuildPlan Plan(string arch, string? modulesDir, IReadOnlyList<string> packages, IEventSink events, CancellationToken ct)
    {
        events.Progress(new ProgressReport(Activity, "Finding the host's programs and libraries", 0, null));
        var tools = FindTools();
        var resolver = new LibraryResolver();
        var tree = new InitramfsTree();

        // Reproduce the host's top-level links first (merged /usr: bin → usr/bin, lib → usr/lib…).
        foreach (var top in new[] { "bin", "sbin", "lib", "lib32", "lib64", "libx32" })
        {
            var target = new FileInfo("/" + top).LinkTarget;
            if (target != null) tree.AddSymlink(top, target);
        }

        var programs = tools.Select(t => t.HostPath).ToList();
        // OpenSSH 9.8 and later split the server: sshd runs sshd-session (and 10.0 sshd-auth) per connection.
        foreach (var helper in OpenSshHelpers()) programs.Add(helper);
        var extraFiles = new List<string>();
        foreach (var pkg in packages)
        {
            ct.ThrowIfCancellationRequested();
            var files = PackageFiles(pkg, events);
            foreach (var f in files)
            {
                var st = Native.Libc.LStat(f);
                if (st is { IsRegular: true } && resolver.GetElf(f) != null) programs.Add(f);
                else extraFiles.Add(f);
            }
        }

        // Every program must be for the target machine.
        foreach (var (tool, hostPath) in tools)
        {
            var elf = resolver.GetElf(hostPath);
            if (elf == null && tool.GuestPath == "/bin/busybox")
                throw new MelangeException(ErrorKind.InvalidData, "NotAnElfProgram", $"'{hostPath}' is not an ELF program.", "Reinstall busybox-static.", hostPath);
            if (elf?.Arch is { } a && a != arch)
                throw new MelangeException(ErrorKind.InvalidData, "ArchitectureMismatch", $"'{hostPath}' is a {a} program, not {arch}.", "Install the host's native package.", hostPath);
        }

        var closure = resolver.Resolve(programs);
        events.Verbose($"The initramfs takes {closure.Count} programs and libraries: {string.Join(' ', closure)}");
        var libcDir = closure.Select(resolver.RealPath).FirstOrDefault(p => Path.GetFileName(p).StartsWith("libc.so", StringComparison.Ordinal)) is { } libc
            ? Path.GetDirectoryName(libc) : null;
        foreach (var path in closure)
        {
            ct.ThrowIfCancellationRequested();
            var resolved = tree.AddHostPath(path);
            // A library found only through /etc/ld.so.conf: the guest has no ld.so.cache, so link it
            // into the directory the loader searches by default.
            var dir = Path.GetDirectoryName(path) ?? "/";
            if (libcDir != null && path != closure[0] && resolver.GetElf(path) is { Interpreter: null } e
                && Path.GetFileName(path).Contains(".so", StringComparison.Ordinal) && !LibraryResolver.DefaultDirectories(e).Contains(dir))
                tree.AddSymlink(libcDir + "/" + Path.GetFileName(path), resolved);
        }
        foreach (var f in extraFiles)
        {
            try { tree.AddHostPath(f); }
            catch (MelangeException e) when (e.ErrorId is "MissingHostFile" or "UnsupportedHostFile") { events.Verbose($"Skipped {f}: {e.Message}"); }
        }
        foreach (var (tool, hostPath) in tools)
            if (!tree.Contains(tree.Resolve(tool.GuestPath)))
                tree.AddSymlink(tool.GuestPath, HostPath.Walk("", hostPath, null));

        // busybox's applets, where busybox says they belong, unless a real program is there (GNU tar).
        foreach (var applet in BusyboxApplets(tools.First(t => t.Tool.GuestPath == "/bin/busybox").HostPath))
            tree.AddSymlink(applet, "/bin/busybox");

        // The guest's own files.
        foreach (var d in new[] { "dev", "proc", "sys", "run", "run/sshd", "mount", "etc", "etc/ssh", "etc/ssh/authorized_keys", "var", "var/empty", "home", "lib/modules" })
            tree.AddDirectory(d);
        tree.AddDirectory("tmp", 0x3FF); // 1777
        tree.AddDirectory("root", 0x1C0); // 0700
        tree.AddCharDevice("dev/console", 5, 1, 0x180);
        tree.AddCharDevice("dev/null", 1, 3, 0x1B6);
        tree.AddData("init", GuestFile("init"), 0x1ED);
        tree.AddData("usr/sbin/melange-load-modules", GuestFile("load-modules"), 0x1ED);
        tree.AddData("etc/ssh/sshd_config", GuestFile("sshd_config"), 0x1A4);
        tree.AddData("etc/passwd", Encoding.ASCII.GetBytes(
            "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534:sshd privilege separation:/run/sshd:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"));
        tree.AddData("etc/group", Encoding.ASCII.GetBytes("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"));
        tree.AddData("etc/nsswitch.conf", Encoding.ASCII.GetBytes("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"));
        tree.AddData("etc/hostname", Encoding.ASCII.GetBytes("melange\n"));
        if (File.Exists("/etc/mke2fs.conf")) tree.AddHostFile("etc/mke2fs.conf", "/etc/mke2fs.conf", 0x1A4);

        if (modulesDir != null) AddModules(tree, modulesDir, events, ct);
        else events.Verbose("No kernel modules directory: the guest kernel must have what it needs built in.");
        return new BuildPlan(tree, closure);
    }

    /// <summary>The files of an additional package: a Debian package installed on the host (dpkg -L), else a program on PATH.</summary>
    internal static List<string> PackageFiles(string name, IEventSink events)
    {
        var dpkg = new[] { "/usr/bin/dpkg", "/bin/dpkg" }.FirstOrDefault(File.Exists);
        if (dpkg != null)
        {
            var (rc, output) = RunCapture(dpkg, "-L", name);
            if (rc == 0)
            {
                var files = output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                    .Where(l => l.StartsWith('/'))
                    .Where(l => !(l.StartsWith("/usr/share/doc/", StringComparison.Ordinal) || l.StartsWith("/usr/share/man/", StringComparison.Ordinal)
                        || l.StartsWith("/usr/share/info/", StringComparison.Ordinal) || l.StartsWith("/usr/share/lintian/", StringComparison.Ordinal)))
                    .Where(l => Native.Libc.LStat(l) is { IsDirectory: false })
                    .Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
                events.Verbose($"Additional package {name}: {files.Count} files from dpkg -L");
                return files;
            }
        }
        if (HostCommand.FindOnPath(name) is { } program)
        {
            events.Verbose($"Additional package {name}: the program {program}");
            return new List<string> { program };
        }
        throw new MelangeException(ErrorKind.NotInstalled, "AdditionalPackageNotFound",
            $"'{name}' (from {AdditionalPackagesVariable} or -AdditionalPackage) is neither a Debian package installed on this host nor a program on PATH.",
            $"Install it (sudo apt-get install -y {name}) or remove it from the list.", name);
    }

    /// <summary>busybox's applets with their install paths (bin/sh, usr/bin/awk, sbin/insmod…).</summary>
    internal static List<string> BusyboxApplets(string busybox)
    {
        var (rc, output) = RunCapture(busybox, "--list-full");
        var list = rc == 0 ? output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList() : new List<string>();
        if (list.Count == 0)
        {
            var (rc2, plain) = RunCapture(busybox, "--list");
            if (rc2 != 0)
                throw new MelangeException(ErrorKind.InvalidData, "BusyboxBroken", $"'{busybox} --list' failed.", "Reinstall busybox-static.", busybox);
            list = plain.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(a => "bin/" + a).ToList();
        }
        // The init needs these whatever busybox's build says.
        foreach (var needed in new[] { "bin/sh", "bin/mount", "sbin/insmod", "sbin/poweroff" })
            if (!list.Any(l => Path.GetFileName(l) == Path.GetFileName(needed))) list.Add(needed);
        return list.Where(l => !l.Contains("..", StringComparison.Ordinal) && Path.GetFileName(l) != "busybox").Order(StringComparer.Ordinal).ToList();
    }

    // Standard output only, in the C locale: the lists are parsed.
    private static (int ExitCode, string Output) RunCapture(string file, params string[] args) =>
        HostCommand.Capture(file, args, includeStandardError: false, new Dictionary<string, string> { ["LC_ALL"] = "C" });

    internal static byte[] GuestFile(string name)
    {
        var asm = typeof(InitramfsBuilder).Assembly;
        var resource = asm.GetManifestResourceNames().FirstOrDefault(n => n.EndsWith(".Qemu.Guest." + name, StringComparison.Ordinal))
            ?? throw new InvalidOperationException($"The guest file '{name}' is not embedded in {asm.GetName().Name}.");
        using var s = asm.GetManifestResourceStream(resource)!;
        using var ms = new MemoryStream();
        s.CopyTo(ms);
        return ms.ToArray();
    }

    private static void WriteAtomically(string outputPath, InitramfsTree tree, IEventSink events, CancellationToken ct)
    {
        var full = Path.GetFullPath(outputPath);
        var tmp = full + "." + Convert.ToHexString(RandomNumberGenerator.GetBytes(6)).ToLowerInvariant() + ".tmp";
        long total = tree.ContentLength();
        try
        {
            using (var f = new FileStream(tmp, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, BufferSize = 1 << 16, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead }))
            using (var cpio = new CpioWriter(f, leaveOpen: true))
            {
                long last = 0;
                tree.WriteTo(cpio, ct, pos =>
                {
                    if (pos - last < 1 << 20) return;
                    last = pos;
                    events.Progress(new ProgressReport(Activity, $"Writing {Path.GetFileName(full)}", Math.Min(pos, total), total));
                });
                f.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
            events.Progress(new ProgressReport(Activity, "Done", total, total));
            events.Verbose($"Wrote the initramfs {full} ({new FileInfo(full).Length} bytes, {tree.Count} entries)");
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }
}
