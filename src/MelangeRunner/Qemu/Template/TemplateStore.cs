using System.Collections.Concurrent;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using MelangeRunner.HostProcess;

namespace MelangeRunner.Qemu.Template;

/// <summary>A built template in the cache: its directory (ram, state, initramfs.cpio, manifest.json, all mode 0444).</summary>
internal sealed record VmTemplate(string Directory, string Key)
{
    public string Ram => Path.Combine(Directory, "ram");
    public string State => Path.Combine(Directory, "state");
    public string Initramfs => Path.Combine(Directory, "initramfs.cpio");
    public string Manifest => Path.Combine(Directory, "manifest.json");
}

/// <summary>What a template records at build: its key, its files' sizes and sha256s (of the RAM file: of its data extents, <see cref="TemplateBuilder.DataSha256"/>).</summary>
internal sealed record TemplateManifest(int Format, string Key, long RamBytes, long StateBytes, long InitramfsBytes,
    string RamSha256, string StateSha256, string InitramfsSha256, string Built, double BootSeconds, string[] Arguments);

/// <summary>
/// The templates under <c>${HostCache.Root}/template/&lt;key&gt;/</c>: the key over everything the
/// saved RAM and device state depend on, a cheap check per start (manifest, key, sizes, modes),
/// and the discard of a template that is corrupt, stale or fails to restore.
/// </summary>
internal static class TemplateStore
{
    public const int FormatVersion = 1;
    private static readonly ConcurrentDictionary<string, string> Digests = new(StringComparer.Ordinal);

    public static string Root => Path.Combine(HostCache.Root, "template");

    public static string DirectoryFor(string key) => Path.Combine(Root, key);

    /// <summary>
    /// The template key: qemu (path, version, binary), the kernel, the template initramfs (the base
    /// and the template init), the host's TSC rate, and the whole vector with per-pod values as
    /// placeholders (machine, memory, vCPUs, CPU model, accelerator, device set, -append).
    /// </summary>
    public static string ComputeKey(string program, QemuLaunch podLaunch, string baseInitramfs)
    {
        var vector = TemplateCommand.Build(TemplateCommand.Placeholders(podLaunch), "<ram>", share: false, "<netdev>", "<run>");
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        void Add(string s) { h.AppendData(Encoding.UTF8.GetBytes(s)); h.AppendData(new byte[] { 0 }); }
        Add("melange-template/" + FormatVersion.ToString(CultureInfo.InvariantCulture));
        var qemu = Path.GetFullPath(program);
        Add(qemu);
        Add(QemuVersion(qemu));
        Add(FileDigest(qemu));
        Add(FileDigest(podLaunch.KernelPath));
        Add(FileDigest(baseInitramfs));
        Add(Convert.ToHexString(SHA256.HashData(Initramfs.InitramfsBuilder.GuestFile(TemplateBuilder.InitName))));
        Add(HostResources.TscKhz().ToString(CultureInfo.InvariantCulture));
        foreach (var a in vector) Add(a);
        return Convert.ToHexString(h.GetHashAndReset()).ToLowerInvariant()[..24];
    }

    /// <summary>The template for <paramref name="key"/> if it is there and sound (a cheap check: no hashing), else null with why.</summary>
    public static VmTemplate? Find(string key, long ramBytes, out string why)
    {
        var t = new VmTemplate(DirectoryFor(key), key);
        if (!Directory.Exists(t.Directory)) { why = "no template was built for these inputs yet"; return null; }
        TemplateManifest? m;
        try { m = JsonSerializer.Deserialize<TemplateManifest>(File.ReadAllText(t.Manifest)); }
        catch (Exception e) when (e is IOException or JsonException or UnauthorizedAccessException) { why = "its manifest is missing or unreadable (" + e.Message + ")"; return null; }
        if (m is null || m.Format != FormatVersion || m.Key != key) { why = "its manifest does not match its key"; return null; }
        if (m.RamBytes != ramBytes) { why = $"{Path.GetFileName(t.Ram)} is missing or has the wrong size"; return null; }
        foreach (var (path, size) in new[] { (t.Ram, ramBytes), (t.State, m.StateBytes), (t.Initramfs, m.InitramfsBytes) })
        {
            var info = new FileInfo(path);
            if (!info.Exists || info.Length != size) { why = $"{Path.GetFileName(path)} is missing or has the wrong size"; return null; }
            if ((info.UnixFileMode & (UnixFileMode.UserWrite | UnixFileMode.GroupWrite | UnixFileMode.OtherWrite)) != 0) { why = $"{Path.GetFileName(path)} is writable (a template is read-only)"; return null; }
        }
        why = "";
        return t;
    }

    /// <summary>Removes a template that must not be used again (it is renamed away first: pods that map its files keep them).</summary>
    public static void Discard(string key, IEventSink events, string why)
    {
        var dir = DirectoryFor(key);
        if (!Directory.Exists(dir)) return;
        events.Verbose($"qemu: template {key}: discarded ({why})");
        var aside = dir + ".discard-" + Convert.ToHexString(RandomNumberGenerator.GetBytes(4)).ToLowerInvariant();
        try
        {
            Directory.Move(dir, aside);
            Directory.Delete(aside, recursive: true);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>How long a template may go unused before a build of another one removes it.</summary>
    public static readonly TimeSpan UnusedLifetime = TimeSpan.FromDays(7);

    /// <summary>A restore used the template: its directory's mtime says when (for <see cref="PruneUnused"/>).</summary>
    public static void MarkUsed(VmTemplate t)
    {
        try { Directory.SetLastWriteTimeUtc(t.Directory, DateTime.UtcNow); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>Removes the templates (and their lock files) not used for <see cref="UnusedLifetime"/>, except <paramref name="keep"/>.</summary>
    public static void PruneUnused(string keep, IEventSink events)
    {
        foreach (var dir in Directory.EnumerateDirectories(Root))
        {
            var name = Path.GetFileName(dir);
            if (name == keep || name.Contains('.', StringComparison.Ordinal)) continue;
            if (DateTime.UtcNow - Directory.GetLastWriteTimeUtc(dir) < UnusedLifetime) continue;
            Discard(name, events, $"not used for {UnusedLifetime.TotalDays:0} days");
            try { File.Delete(Path.Combine(Root, name + ".lock")); } catch (IOException) { }
        }
    }

    /// <summary>sha256 of a file, computed once per process for each (path, size, mtime, inode).</summary>
    public static string FileDigest(string path)
    {
        if (!File.Exists(path)) throw new TemplateException($"{path} does not exist");
        var real = File.ResolveLinkTarget(path, returnFinalTarget: true)?.FullName ?? Path.GetFullPath(path);
        var info = new FileInfo(real);
        var stamp = string.Create(CultureInfo.InvariantCulture, $"{real}:{info.Length}:{info.LastWriteTimeUtc.Ticks}");
        return Digests.GetOrAdd(stamp, _ =>
        {
            using var f = new FileStream(real, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
            return Convert.ToHexString(SHA256.HashData(f)).ToLowerInvariant();
        });
    }

    private static string QemuVersion(string qemu) => Digests.GetOrAdd("version:" + qemu + ":" + FileDigest(qemu), _ =>
    {
        var (code, output) = HostCommand.Capture(qemu, "--version");
        if (code != 0) throw new TemplateException($"{qemu} --version failed with status {code}");
        return output.Split('\n')[0].Trim();
    });
}
