using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using MelangeRunner.HostProcess;
using MelangeRunner.Images;
using MelangeRunner.Qemu.Kernel;

namespace MelangeRunner.Qemu.Initramfs;

/// <summary>The per-pod initramfs: the base with the pod's SSH host key (and modules) appended.</summary>
public static partial class InitramfsBuilder
{
    // ---------------------------------------------------------------------------------------
    // Per pod

    internal static string InjectRuntimeData(string baseInitramfs, byte[] hostPrivateKey, string hostPublicKeyLine, string? extraModulesDir, IEventSink events, CancellationToken ct) =>
        InjectRuntimeData(baseInitramfs, hostPrivateKey, hostPublicKeyLine, extraModulesDir, null, events, ct);

    internal static string InjectRuntimeData(string baseInitramfs, byte[] hostPrivateKey, string hostPublicKeyLine, string? extraModulesDir, string? baseModulesDir, IEventSink events, CancellationToken ct)
    {
        if (!File.Exists(baseInitramfs))
            throw new MelangeException(ErrorKind.ObjectNotFound, "BaseInitramfsNotFound", $"The base initramfs '{baseInitramfs}' does not exist.",
                $"Check {BaseInitramfsVariable}, or let MelangeRunner build the base (unset it).", baseInitramfs);
        InitramfsTree? modules = null;
        if (!string.IsNullOrEmpty(extraModulesDir))
        {
            if (!Directory.Exists(extraModulesDir))
                throw new MelangeException(ErrorKind.ObjectNotFound, "KernelModulesNotFound", $"QEMU_KERNEL_MODULES is set to '{extraModulesDir}', which is not a directory.",
                    "Point QEMU_KERNEL_MODULES at the kernel's lib/modules/<version> directory, or unset it.", extraModulesDir);
            var dir = Path.GetFullPath(extraModulesDir).TrimEnd('/');
            if (baseModulesDir != null && dir == Path.GetFullPath(baseModulesDir).TrimEnd('/'))
                events.Verbose($"QEMU_KERNEL_MODULES is the tree the base initramfs was built with ({dir}): its modules are there already.");
            else
            {
                // Only the modules the guest needs and their load list, never the tree whole: a
                // package's tree is ~400 MB, which the guest would have to hold in RAM.
                modules = new InitramfsTree();
                AddModules(modules, dir, events, ct);
            }
        }

        var path = Path.Combine(Path.GetTempPath(), "melange-initramfs-" + Convert.ToHexString(RandomNumberGenerator.GetBytes(8)).ToLowerInvariant() + ".cpio");
        try
        {
            using (var f = new FileStream(path, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, BufferSize = 1 << 16, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
            {
                using (var b = new FileStream(baseInitramfs, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan))
                    b.CopyTo(f);
                // The kernel unpacks each concatenated archive in turn; the next one must start 4-byte aligned.
                long pad = (4 - f.Length % 4) % 4;
                if (pad > 0) f.Write(new byte[pad]);
                using (var cpio = new CpioWriter(f, InjectedInodeBase, leaveOpen: true))
                {
                    cpio.WriteFile("etc/ssh/ssh_host_ed25519_key", 0x100, hostPrivateKey); // 0400
                    var pub = hostPublicKeyLine.EndsWith('\n') ? hostPublicKeyLine : hostPublicKeyLine + "\n";
                    cpio.WriteFile("etc/ssh/ssh_host_ed25519_key.pub", 0x1A4, Encoding.ASCII.GetBytes(pub));
                    if (modules != null)
                    {
                        // Only lib/modules/<version> and below: lib and lib/modules are in the base (lib may be a link).
                        foreach (var (key, node) in modules.Nodes)
                        {
                            ct.ThrowIfCancellationRequested();
                            var k = key.StartsWith("usr/lib/modules/", StringComparison.Ordinal) ? key[4..] : key;
                            if (!k.StartsWith("lib/modules/", StringComparison.Ordinal)) continue;
                            switch (node)
                            {
                                case InitramfsTree.DirNode d: cpio.WriteDirectory(k, d.Mode, d.MTime); break;
                                case InitramfsTree.LinkNode l: cpio.WriteSymlink(k, l.Target, l.MTime); break;
                                case InitramfsTree.FileNode { Data: { } data } fd: cpio.WriteFile(k, fd.Mode, data, fd.MTime); break;
                                case InitramfsTree.FileNode fh:
                                    using (var s = new FileStream(fh.HostPath!, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan))
                                        cpio.WriteFile(k, fh.Mode, s, s.Length, fh.MTime);
                                    break;
                            }
                        }
                    }
                    cpio.Finish();
                }
                f.Flush(flushToDisk: true);
            }
            File.SetUnixFileMode(path, UnixFileMode.UserRead);
            events.Verbose($"Per-pod initramfs {path} ({new FileInfo(path).Length} bytes): the base plus the SSH host key{(modules != null ? " and the modules of " + extraModulesDir : "")}");
            return path;
        }
        catch
        {
            IO.SecureFile.TryDelete(path);
            throw;
        }
    }
}
