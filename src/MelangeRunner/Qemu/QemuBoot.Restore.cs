using System.Security.Cryptography;
using MelangeRunner.HostProcess;
using MelangeRunner.Images;
using MelangeRunner.Qemu.Kernel;
using MelangeRunner.Qemu.Template;
using MelangeRunner.Ssh;

namespace MelangeRunner.Qemu;

/// <summary>Whether a start may restore from a template, and why not (docs/microvm.md#templates).</summary>
internal static class TemplatePath
{
    /// <summary>Null when the pod may come from a template; else why it cold-boots.</summary>
    public static string? WhyCold(QemuEnvironment env, PodSpec spec, string? virtiofsSocket, string arch)
    {
        if (!env.UseTemplate) return "QEMU_USE_TEMPLATE is not set";
        if (virtiofsSocket is not null || (env.UseVirtiofs && !string.IsNullOrEmpty(spec.CacheDir)))
            return "the cache goes over virtiofs, which needs guest memory shared with virtiofsd; a template's is a private copy";
        if (arch != "x86_64" || Architecture.Host != "x86_64") return $"templates are made for x86_64 guests on x86_64 hosts (q35 with vmgenid), not {arch}";
        if (env.KernelModules is not null) return "QEMU_KERNEL_MODULES adds modules to each pod's initramfs";
        if (env.BaseInitramfs is not null) return "QEMU_BASE_INITRAMFS names an initramfs whose init may not be MelangeRunner's";
        return null;
    }

    /// <summary>Which path a start would take and why (Get-MelangePodPlan), without building anything.</summary>
    public static string Describe(PodSpec spec, ImageInfo image, QemuEnvironment env, AcceleratorChoice accel, KernelInfo kernel, string? virtiofsSocket, string arch)
    {
        if (WhyCold(env, spec, virtiofsSocket, arch) is { } why) return $"cold boot ({why})";
        if (HostCommand.FindOnPath(QemuCommand.Program(arch)) is not { } program) return "cold boot (qemu is not installed)";
        if (Initramfs.InitramfsBuilder.CachedBasePath(arch, kernel.ModulesDir, env, NullEventSink.Instance) is not { } basePath)
            return "restore from a template built at the first start (the base initramfs is not built yet)";
        try
        {
            var launch = QemuLaunchPlanner.Plan(spec, image, env, accel, HostCapacity.Read(), new LaunchFiles(kernel.BootPath, "<template>", "<disk>", 0, 0, "", null, false));
            var key = TemplateStore.ComputeKey(program, launch, basePath);
            return TemplateStore.Find(key, TemplateCommand.MemoryMiB(launch) * 1024 * 1024, out var missing) is { } t
                ? $"restore from template {key} (reused; {t.Directory})"
                : $"restore from template {key} (built at the first start: {missing})";
        }
        catch (TemplateException e)
        {
            return $"cold boot (no template: {e.Message})";
        }
    }
}

internal static partial class QemuBoot
{
    /// <summary>
    /// The restore path: the template for this launch (built now if there is none, or if it is
    /// corrupt or stale), qemu with -incoming defer, the restore over QMP, the restore message.
    /// Null when the pod must cold-boot instead (-Verbose says why); the runtime is then as before.
    /// </summary>
    private static async Task<(QemuLaunch, QemuProcess)?> TryRestoreAsync(QemuPodRuntime state, string program, AcceleratorChoice accel, KernelInfo kernel,
        string baseInitramfs, bool scratchFormatted, SshKeyPair hostKey, IEventSink events, CancellationToken ct)
    {
        var launch = QemuLaunchPlanner.Plan(state.Spec, state.Image, state.Environment, accel, HostCapacity.Read(), new LaunchFiles(kernel.BootPath, "<template>", state.DiskPath!,
            QemuLaunchPlanner.FreePort(), QemuLaunchPlanner.FreePort(), "", null, scratchFormatted));
        string key;
        VmTemplate template;
        bool built;
        try
        {
            key = TemplateStore.ComputeKey(program, launch, baseInitramfs);
            (template, built) = await TemplateBuilder.GetOrBuildAsync(program, launch, key, baseInitramfs, events, ct).ConfigureAwait(false);
        }
        catch (TemplateException e)
        {
            events.Verbose($"qemu: start path: cold boot (no template: {e.Message})");
            return null;
        }
        launch = launch with { InitrdPath = template.Initramfs };
        events.Verbose($"qemu: start path: restore from template {key} ({(built ? "built for this start" : "reused")}; {template.Directory})");
        events.Verbose($"qemu: VM resources: arch={launch.Arch} cpus={launch.Cpus} memory={TemplateCommand.MemoryMiB(launch)}MiB accel={QemuCommand.Accelerator(launch)} ({accel.Reason})");

        var runDir = Path.Combine(Path.GetTempPath(), "melange-restore-" + Convert.ToHexString(RandomNumberGenerator.GetBytes(8)).ToLowerInvariant());
        Directory.CreateDirectory(runDir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        state.RunDir = runDir;
        state.Watch(runDir, Reaper.WatchPath(runDir));
        var args = TemplateCommand.Build(launch, template.Ram, share: false, null, runDir).Concat(new[] { "-incoming", "defer" }).ToArray();
        var qemu = QemuProcess.Start(program, args, events);
        state.Started(qemu);
        var message = new RestoreMessage(hostKey.OpenSshPrivateKey, hostKey.AuthorizedKeysLine, state.ClientKey!.AuthorizedKeysLine, RestoreMessage.EnvironmentOf(launch));
        try
        {
            await TemplateRestore.RestoreAsync(qemu, template, runDir, message, events, ct).ConfigureAwait(false);
            TemplateStore.MarkUsed(template);
            return (launch, qemu);
        }
        catch (Exception e) when (e is TemplateException or IOException or System.Net.Sockets.SocketException)
        {
            events.Verbose($"qemu: start path: cold boot (the restore from template {key} failed: {e.Message})");
            await state.DropQemuAsync(events).ConfigureAwait(false);
            TemplateStore.Discard(key, events, "it failed to restore");
            return null;
        }
    }
}
