using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;

namespace MelangeRunner.Qemu.Template;

/// <summary>What one pod sends its restored guest over the control port (docs/microvm.md#the-control-channel).</summary>
internal sealed record RestoreMessage(byte[] HostPrivateKey, string HostPublicKeyLine, string ClientAuthorizedKeysLine, IReadOnlyList<string> Environment)
{
    /// <summary>
    /// The text the guest's shell reads with its built-in read: a header, then records "name args",
    /// multi-line ones with their line count. The time is taken now, just before sending.
    /// </summary>
    public byte[] Encode(string nonce)
    {
        var sb = new StringBuilder();
        sb.Append("MELANGE-RESTORE 1\n");
        sb.Append("nonce ").Append(nonce).Append('\n');
        sb.Append("entropy ").Append(Convert.ToHexString(RandomNumberGenerator.GetBytes(64)).ToLowerInvariant()).Append('\n');
        var key = Encoding.ASCII.GetString(HostPrivateKey).TrimEnd('\n').Split('\n');
        sb.Append("hostkey ").Append(key.Length.ToString(CultureInfo.InvariantCulture)).Append('\n');
        foreach (var line in key) sb.Append(line).Append('\n');
        sb.Append("hostkey.pub\n").Append(HostPublicKeyLine.TrimEnd('\n')).Append('\n');
        sb.Append("authkey\n").Append(ClientAuthorizedKeysLine.TrimEnd('\n')).Append('\n');
        sb.Append("env ").Append(Environment.Count.ToString(CultureInfo.InvariantCulture)).Append('\n');
        foreach (var line in Environment) sb.Append(line).Append('\n');
        var now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        sb.Append(CultureInfo.InvariantCulture, $"time {now / 1000} {now % 1000 / 10}\n");
        sb.Append("END\n");
        return Encoding.ASCII.GetBytes(sb.ToString());
    }

    /// <summary>The pod's values the cold init reads from the kernel command line, as shell assignments.</summary>
    public static IReadOnlyList<string> EnvironmentOf(QemuLaunch l)
    {
        var env = new List<string>();
        if (l.ScratchFormatted) env.Add("SCRATCH=ext4");
        if (l.Environment.Network is { } net) env.Add($"NET='{net.Guest}/{net.PrefixLength},{net.Gateway},{net.Dns}'");
        if (l.Environment.DnsSearch.Count > 0) env.Add("DNS_SEARCH='" + string.Join(',', l.Environment.DnsSearch).Replace("'", "", StringComparison.Ordinal) + "'");
        if (l.Environment.Testing is { } testing) env.Add("TESTING=" + testing.ToString(CultureInfo.InvariantCulture));
        return env;
    }
}

/// <summary>
/// A pod from a template: qemu was started with -incoming defer; over QMP x-ignore-shared,
/// migrate-incoming from the state file, cont; then the restore message on the control port,
/// answered "OK nonce" once the guest has its keys, has reseeded its RNG and set its clock.
/// </summary>
internal static class TemplateRestore
{
    private static readonly TimeSpan AnswerTimeout = TimeSpan.FromSeconds(60);

    public static async Task RestoreAsync(QemuProcess qemu, VmTemplate template, string runDir, RestoreMessage message, IEventSink events, CancellationToken ct)
    {
        var watch = Stopwatch.StartNew();
        using (var qmp = await Qmp.ConnectAsync(Path.Combine(runDir, "qmp.sock"), () => qemu.HasExited, TimeSpan.FromSeconds(30), ct).ConfigureAwait(false))
        {
            await qmp.ExecuteAsync("migrate-set-capabilities", TemplateBuilder.IgnoreShared(), ct).ConfigureAwait(false);
            await qmp.ExecuteAsync("migrate-incoming", new JsonObject { ["uri"] = "exec:cat " + ShellQuote.Quote(template.State) }, ct).ConfigureAwait(false);
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
            while (true)
            {
                var status = (await qmp.ExecuteAsync("query-status", null, ct).ConfigureAwait(false))?["status"]?.GetValue<string>();
                if (status == "running") break;
                // The template was saved stopped, and the stream carries that run state: cont once loaded.
                if (status == "paused" && (await qmp.ExecuteAsync("query-migrate", null, ct).ConfigureAwait(false))?["status"]?.GetValue<string>() == "completed")
                {
                    await qmp.ExecuteAsync("cont", null, ct).ConfigureAwait(false);
                    continue;
                }
                if (status is not ("inmigrate" or "paused" or "prelaunch" or "restore-vm"))
                    throw new TemplateException($"the restore ended in state '{status}': {qemu.QemuErrorTail()}");
                if (qemu.HasExited) throw new TemplateException($"qemu exited (status {qemu.ExitCode}) while restoring: {qemu.QemuErrorTail()}");
                if (DateTime.UtcNow > deadline) throw new TemplateException("the restore did not finish within 60 s");
                await Task.Delay(5, ct).ConfigureAwait(false);
            }
        }
        events.Verbose($"qemu: template {template.Key}: VM running after {watch.Elapsed.TotalSeconds:F2} s");

        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(Path.Combine(runDir, "ctl.sock")), ct).ConfigureAwait(false);
        var nonce = Convert.ToHexString(RandomNumberGenerator.GetBytes(8)).ToLowerInvariant();
        await socket.SendAsync(message.Encode(nonce), SocketFlags.None, ct).ConfigureAwait(false);
        using var bounded = CancellationTokenSource.CreateLinkedTokenSource(ct);
        bounded.CancelAfter(AnswerTimeout);
        string? answer;
        try
        {
            using var stream = new NetworkStream(socket, ownsSocket: false);
            using var reader = new StreamReader(stream, Encoding.ASCII);
            var read = reader.ReadLineAsync(bounded.Token).AsTask();
            var exited = qemu.Process.WaitForExitAsync(bounded.Token);
            if (await Task.WhenAny(read, exited).ConfigureAwait(false) == exited && !read.IsCompleted)
                throw new TemplateException($"the restored VM exited (status {qemu.ExitCode}) before it answered:{Environment.NewLine}{qemu.ConsoleTail()}");
            answer = await read.ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new TemplateException($"the restored VM did not answer on its control port within {AnswerTimeout.TotalSeconds:0} s:{Environment.NewLine}{qemu.ConsoleTail()}");
        }
        if (answer != "OK " + nonce) throw new TemplateException($"the restored VM answered '{answer}' instead of 'OK {nonce}'");
        events.Verbose($"qemu: template {template.Key}: guest has its keys, clock and reseeded RNG after {watch.Elapsed.TotalSeconds:F2} s");
    }
}
