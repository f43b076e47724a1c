using System.Reflection;
using Renci.SshNet;

namespace MelangeRunner.Ssh;

/// <summary>
/// Holds a remote command back while its unread output is over a limit. SSH.NET puts a command's
/// output in an unbounded pipe and adjusts the channel window before it hands the data on, so a
/// reader slower than the peer buffered without limit (reading 100 MB under load grew the working
/// set by 192 MiB). A handler after SshCommand's own on the channel's DataReceived runs on the session's
/// receive loop: while it waits there, SSH.NET reads nothing more from the socket and TCP holds
/// the peer back. The channel is internal to SshCommand, so it is reached by reflection; if that
/// ever fails (another SSH.NET version), nothing is held back, as before.
/// The wait stalls every channel of the connection, keepalive replies included: a reader that
/// stops for longer than the keepalive bound gets its connection declared dead.
/// </summary>
internal sealed class OutputBackpressure : IDisposable
{
    /// <summary>Unread output above which the receive loop waits for the reader.</summary>
    public const long Limit = 4 << 20;

    private static readonly FieldInfo? ChannelField = typeof(SshCommand).GetField("_channel", BindingFlags.Instance | BindingFlags.NonPublic);
    private readonly Stream _pipe;
    private readonly ManualResetEventSlim _drained = new(true);
    private readonly object? _channel;
    private readonly EventInfo? _event;
    private readonly Delegate? _handler;
    private volatile bool _released;

    public OutputBackpressure(SshCommand command)
    {
        _pipe = command.OutputStream;
        try
        {
            _channel = ChannelField?.GetValue(command);
            _event = _channel?.GetType().GetEvent("DataReceived", BindingFlags.Instance | BindingFlags.Public);
            if (_channel is null || _event?.EventHandlerType is not { } type) return;
            _handler = Delegate.CreateDelegate(type, this, typeof(OutputBackpressure).GetMethod(nameof(OnData), BindingFlags.Instance | BindingFlags.NonPublic)!);
            _event.AddEventHandler(_channel, _handler);
        }
        catch (Exception e) when (e is ArgumentException or TargetInvocationException or MemberAccessException or InvalidOperationException)
        {
            _handler = null; // not reachable in this SSH.NET: no backpressure
        }
    }

    /// <summary>Whether the receive loop can be held back (the channel was reached).</summary>
    public bool Attached => _handler is not null;

    /// <summary>The reader took data: the receive loop goes on once the pipe is under the limit.</summary>
    public void Read()
    {
        if (Unread() <= Limit) _drained.Set();
    }

    /// <summary>Nothing is held back any more (the stream is disposed, cancelled, or its connection lost).</summary>
    public void Release()
    {
        _released = true;
        _drained.Set();
    }

    private long Unread()
    {
        try { return _pipe.Length; }
        catch (ObjectDisposedException) { return 0; }
    }

    private void OnData(object? sender, EventArgs e)
    {
        while (!_released && Unread() > Limit)
        {
            _drained.Reset();
            // Checked again after the reset: a read in between has already set it or will.
            if (_released || Unread() <= Limit) return;
            _drained.Wait();
        }
    }

    public void Dispose()
    {
        Release();
        if (_handler is not null && _channel is not null)
        {
            try { _event!.RemoveEventHandler(_channel, _handler); }
            catch (Exception e) when (e is TargetInvocationException or InvalidOperationException) { /* the channel is gone */ }
        }
    }
}
