using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using MelangeRunner.HostProcess;
using MelangeRunner.Qemu.Initramfs;

namespace MelangeRunner.Qemu.Template;

/// <summary>
/// Builds a template: the template initramfs (the base with the template init appended), a boot
/// with placeholder disks until the init says it is parked on the control port, then over QMP
/// stop, x-ignore-shared, migrate to the state file, quit. Built in a temporary directory
/// (registered with the reaper, as is qemu) and renamed into place; one builder per key at a time.
/// </summary>
internal static class TemplateBuilder
{
    /// <summary>The embedded guest init of templates (Qemu/Guest/template-init).</summary>
    public const string InitName = "template-init";

    /// <summary>What the template init prints once it blocks on the control port.</summary>
    public const string ParkedMarker = "melange-init: template ready";

    private static readonly TimeSpan ParkTimeout = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan LockTimeout = TimeSpan.FromMinutes(5);

    /// <summary>The template for <paramref name="key"/>: the one in the cache when it is sound, else built now.</summary>
    public static async Task<(VmTemplate Template, bool Built)> GetOrBuildAsync(string program, QemuLaunch podLaunch, string key, string baseInitramfs,
        IEventSink events, CancellationToken ct)
    {
        var ramBytes = TemplateCommand.MemoryMiB(podLaunch) * 1024 * 1024;
        if (TemplateStore.Find(key, ramBytes, out var why) is { } found) return (found, false);
        Directory.CreateDirectory(TemplateStore.Root);
        using var gate = await LockAsync(Path.Combine(TemplateStore.Root, key + ".lock"), events, ct).ConfigureAwait(false);
        // Another process may have built it while this one waited.
        if (TemplateStore.Find(key, ramBytes, out why) is { } built) return (built, false);
        if (Directory.Exists(TemplateStore.DirectoryFor(key))) TemplateStore.Discard(key, events, why);
        events.Verbose($"qemu: template {key}: building ({why})");
        return (await BuildAsync(program, podLaunch, key, baseInitramfs, events, ct).ConfigureAwait(false), true);
    }

    private static async Task<VmTemplate> BuildAsync(string program, QemuLaunch podLaunch, string key, string baseInitramfs, IEventSink events, CancellationToken ct)
    {
        var watch = Stopwatch.StartNew();
        var tmp = Path.Combine(TemplateStore.Root, key + ".tmp-" + Convert.ToHexString(RandomNumberGenerator.GetBytes(6)).ToLowerInvariant());
        Directory.CreateDirectory(tmp);
        using var tmpWatch = Reaper.WatchPath(tmp);
        try
        {
            var t = new VmTemplate(tmp, key);
            WriteInitramfs(baseInitramfs, t.Initramfs);
            // Placeholders: the template's disks are never probed (virtio_blk waits for the pod), its shares never mounted.
            foreach (var name in new[] { "disk.img", "rootfs.tar" })
                using (var f = new FileStream(Path.Combine(tmp, name), FileMode.CreateNew)) f.SetLength(1 << 20);
            Directory.CreateDirectory(Path.Combine(tmp, "ws"));
            if (podLaunch.CacheDir is not null) Directory.CreateDirectory(Path.Combine(tmp, "cache"));
            var ramBytes = TemplateCommand.MemoryMiB(podLaunch) * 1024 * 1024;
            using (var f = new FileStream(t.Ram, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite }))
                f.SetLength(ramBytes);

            var launch = TemplateCommand.WithoutPod(podLaunch, t.Initramfs, Path.Combine(tmp, "disk.img"), Path.Combine(tmp, "rootfs.tar"),
                Path.Combine(tmp, "ws"), Path.Combine(tmp, "cache"));
            var args = TemplateCommand.Build(launch, t.Ram, share: true, "user,id=id1", tmp);
            double bootSeconds;
            using (var qemu = QemuProcess.Start(program, args, events))
            {
                using var qemuWatch = Reaper.Watch(qemu.Process);
                try
                {
                    await WaitParkedAsync(qemu, ct).ConfigureAwait(false);
                    bootSeconds = watch.Elapsed.TotalSeconds;
                    await SaveAsync(qemu, tmp, t.State, ct).ConfigureAwait(false);
                }
                finally
                {
                    if (!qemu.HasExited) qemu.Kill();
                    qemu.WaitForExit();
                }
            }
            foreach (var name in new[] { "disk.img", "rootfs.tar", "qmp.sock", "ctl.sock" }) File.Delete(Path.Combine(tmp, name));
            foreach (var dir in new[] { "ws", "cache" })
                if (Directory.Exists(Path.Combine(tmp, dir))) Directory.Delete(Path.Combine(tmp, dir), recursive: true);

            var manifest = new TemplateManifest(TemplateStore.FormatVersion, key, ramBytes, new FileInfo(t.State).Length, new FileInfo(t.Initramfs).Length,
                DataSha256(t.Ram), Sha256(t.State), Sha256(t.Initramfs), DateTime.UtcNow.ToString("o", CultureInfo.InvariantCulture), Math.Round(bootSeconds, 2),
                TemplateCommand.Build(TemplateCommand.Placeholders(podLaunch), "<ram>", share: false, "<netdev>", "<run>"));
            File.WriteAllText(t.Manifest, JsonSerializer.Serialize(manifest, new JsonSerializerOptions { WriteIndented = true }));
            foreach (var file in new[] { t.Ram, t.State, t.Initramfs, t.Manifest })
                File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
            var final = TemplateStore.DirectoryFor(key);
            Directory.Move(tmp, final);
            TemplateStore.PruneUnused(key, events);
            events.Verbose($"qemu: template {key}: built in {watch.Elapsed.TotalSeconds:F1} s (boot to parked {bootSeconds:F1} s, state {manifest.StateBytes} bytes)");
            return new VmTemplate(final, key);
        }
        catch (Exception e)
        {
            try { Directory.Delete(tmp, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            if (e is OperationCanceledException or TemplateException) throw;
            throw new TemplateException("building the template failed: " + e.Message, e);
        }
    }

    /// <summary>The base initramfs with the template init appended as /init (the kernel unpacks the archives in turn; the later file wins).</summary>
    private static void WriteInitramfs(string baseInitramfs, string path)
    {
        using var f = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16);
        using (var b = new FileStream(baseInitramfs, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan))
            b.CopyTo(f);
        long pad = (4 - f.Length % 4) % 4;
        if (pad > 0) f.Write(new byte[pad]);
        using var cpio = new CpioWriter(f, 0x50000000, leaveOpen: true);
        cpio.WriteFile("init", 0x1ED, InitramfsBuilder.GuestFile(InitName));
        cpio.Finish();
    }

    private static async Task WaitParkedAsync(QemuProcess qemu, CancellationToken ct)
    {
        var parked = qemu.ConsoleLineAsync(ParkedMarker);
        var exited = qemu.Process.WaitForExitAsync(ct);
        var done = await Task.WhenAny(parked, exited, Task.Delay(ParkTimeout, ct)).ConfigureAwait(false);
        ct.ThrowIfCancellationRequested();
        if (done == parked) return;
        if (done == exited)
        {
            qemu.WaitForExit();
            throw new TemplateException($"the template VM exited (status {qemu.ExitCode}) before it was parked: {qemu.QemuErrorTail()}{Environment.NewLine}{qemu.ConsoleTail()}");
        }
        throw new TemplateException($"the template VM was not parked within {ParkTimeout.TotalSeconds:0} s:{Environment.NewLine}{qemu.ConsoleTail()}");
    }

    private static async Task SaveAsync(QemuProcess qemu, string runDir, string statePath, CancellationToken ct)
    {
        using var qmp = await Qmp.ConnectAsync(Path.Combine(runDir, "qmp.sock"), () => qemu.HasExited, TimeSpan.FromSeconds(30), ct).ConfigureAwait(false);
        await qmp.ExecuteAsync("stop", null, ct).ConfigureAwait(false);
        await qmp.ExecuteAsync("migrate-set-capabilities", IgnoreShared(), ct).ConfigureAwait(false);
        await qmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = "exec:cat > " + ShellQuote.Quote(statePath) }, ct).ConfigureAwait(false);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            var status = (await qmp.ExecuteAsync("query-migrate", null, ct).ConfigureAwait(false))?["status"]?.GetValue<string>();
            if (status == "completed") break;
            if (status is "failed" or "cancelled") throw new TemplateException("saving the template VM failed (migration " + status + ")");
            if (DateTime.UtcNow > deadline) throw new TemplateException("saving the template VM did not finish within 60 s");
            await Task.Delay(10, ct).ConfigureAwait(false);
        }
        try { await qmp.ExecuteAsync("quit", null, ct).ConfigureAwait(false); }
        catch (TemplateException) { } // qemu may close the socket before it answers
        await qemu.Process.WaitForExitAsync(ct).WaitAsync(TimeSpan.FromSeconds(10), ct).ConfigureAwait(false);
    }

    internal static JsonObject IgnoreShared() =>
        new() { ["capabilities"] = new JsonArray(new JsonObject { ["capability"] = "x-ignore-shared", ["state"] = true }) };

    /// <summary>
    /// The digest of a sparse file's data: sha256 over, for each data extent (SEEK_DATA/SEEK_HOLE),
    /// its offset and length (8 bytes each, little-endian) and its bytes. The RAM file is the pod's
    /// memory size (4 GiB by default) but holds ~0.2 GB of data: hashing only that takes a fraction
    /// of a second instead of ~7 s.
    /// </summary>
    internal static string DataSha256(string path)
    {
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        var fd = (int)handle.DangerousGetHandle();
        var size = RandomAccess.GetLength(handle);
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        var header = new byte[16];
        long pos = 0;
        while (pos < size)
        {
            var data = Native.Libc.SeekData(fd, pos);
            if (data < 0) break; // ENXIO: only a hole is left
            var hole = Native.Libc.SeekHole(fd, data);
            if (hole < 0) hole = size;
            BitConverter.TryWriteBytes(header.AsSpan(0, 8), data);
            BitConverter.TryWriteBytes(header.AsSpan(8, 8), hole - data);
            h.AppendData(header);
            for (var o = data; o < hole;)
            {
                var n = RandomAccess.Read(handle, buffer.AsSpan(0, (int)Math.Min(buffer.Length, hole - o)), o);
                if (n <= 0) break;
                h.AppendData(buffer, 0, n);
                o += n;
            }
            pos = hole;
        }
        return Convert.ToHexString(h.GetHashAndReset()).ToLowerInvariant();
    }

    private static string Sha256(string path)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
        return Convert.ToHexString(SHA256.HashData(f)).ToLowerInvariant();
    }

    /// <summary>An exclusive lock file (flock through FileShare.None); waits while another builder holds it.</summary>
    private static async Task<FileStream> LockAsync(string path, IEventSink events, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + LockTimeout;
        var said = false;
        while (true)
        {
            try
            {
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                if (!said) events.Verbose($"qemu: waiting for another process that builds the template ({path})");
                said = true;
                await Task.Delay(100, ct).ConfigureAwait(false);
            }
        }
    }
}
