using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace MelangeRunner.Qemu.Template;

/// <summary>A QMP client on qemu's unix socket: the greeting, qmp_capabilities, then one command at a time (events are skipped).</summary>
internal sealed class Qmp : IDisposable
{
    private readonly Socket _socket;
    private readonly StreamReader _reader;
    private readonly Stream _stream;

    private Qmp(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
        _reader = new StreamReader(_stream, Encoding.UTF8);
    }

    /// <summary>Connects once qemu listens on <paramref name="path"/>; gives up when <paramref name="exited"/> says qemu is gone, or at the deadline.</summary>
    public static async Task<Qmp> ConnectAsync(string path, Func<bool> exited, TimeSpan timeout, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), ct).ConfigureAwait(false);
                var qmp = new Qmp(socket);
                await qmp.ReadReplyAsync(ct).ConfigureAwait(false); // the greeting
                await qmp.ExecuteAsync("qmp_capabilities", null, ct).ConfigureAwait(false);
                return qmp;
            }
            catch (SocketException)
            {
                socket.Dispose();
                if (exited()) throw new TemplateException("qemu exited before its QMP socket answered");
                if (DateTime.UtcNow > deadline) throw new TemplateException($"qemu's QMP socket {path} did not answer within {timeout.TotalSeconds:0} s");
                await Task.Delay(10, ct).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Runs <paramref name="command"/>; its "return", or a <see cref="TemplateException"/> with qemu's error.</summary>
    public async Task<JsonNode?> ExecuteAsync(string command, JsonObject? arguments, CancellationToken ct)
    {
        var request = new JsonObject { ["execute"] = command };
        if (arguments is not null) request["arguments"] = arguments;
        var bytes = Encoding.UTF8.GetBytes(request.ToJsonString() + "\n");
        await _stream.WriteAsync(bytes, ct).ConfigureAwait(false);
        var reply = await ReadReplyAsync(ct).ConfigureAwait(false);
        if (reply["error"] is { } error) throw new TemplateException($"QMP {command}: {error["desc"]}");
        return reply["return"];
    }

    private async Task<JsonNode> ReadReplyAsync(CancellationToken ct)
    {
        while (true)
        {
            var line = await _reader.ReadLineAsync(ct).ConfigureAwait(false) ?? throw new TemplateException("qemu closed its QMP socket");
            JsonNode? node;
            try { node = JsonNode.Parse(line); }
            catch (JsonException) { continue; }
            if (node is null || node["event"] is not null) continue;
            return node;
        }
    }

    public void Dispose()
    {
        _reader.Dispose();
        _stream.Dispose();
        _socket.Dispose();
    }
}

/// <summary>A template that cannot be built or restored: the pod cold-boots instead (the message says why with -Verbose).</summary>
internal sealed class TemplateException(string message, Exception? inner = null) : Exception(message, inner);
