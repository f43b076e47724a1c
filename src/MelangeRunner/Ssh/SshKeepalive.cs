using System.Diagnostics;
using System.Reflection;
using System.Text;
using Renci.SshNet;

namespace MelangeRunner.Ssh;

/// <summary>
/// Detects a dead peer the way melange's runSSHKeepalive does: every <c>interval</c> a request
/// that needs a reply (the global request <c>keepalive@openssh.com</c> with want-reply; servers
/// answer it with success or failure), each bounded by <c>requestTimeout</c>; after
/// <c>maxMissed</c> consecutive misses the connection is declared lost (running commands on this
/// client fail at once with SshConnectionLost), the client is disconnected and <c>onDead</c>
/// is called once. Worst-case detection time: maxMissed × max(interval, requestTimeout) + requestTimeout
/// (melange's defaults, 30 s / 10 s / 3: 100 s).
/// SSH.NET's own KeepAliveInterval sends SSH_MSG_IGNORE, which has no reply. Its session is
/// internal, so the global request is sent by reflection; if that ever fails (another SSH.NET
/// version), the probe falls back to running <c>true</c> on a new channel.
/// </summary>
internal sealed class SshKeepalive : IDisposable
{
    public static readonly TimeSpan DefaultInterval = TimeSpan.FromSeconds(30);
    public static readonly TimeSpan DefaultRequestTimeout = TimeSpan.FromSeconds(10);
    public const int DefaultMaxMissed = 3;

    private readonly SshConnection _connection;
    private readonly SshClient _client;
    private readonly string _name;
    private readonly Action<string> _onDead;
    private readonly TimeSpan _interval;
    private readonly TimeSpan _requestTimeout;
    private readonly int _maxMissed;
    private readonly CancellationTokenSource _stop = new();
    private readonly GlobalRequester? _requester;
    private readonly Task _loop;

    public SshKeepalive(SshConnection connection, string name, Action<string> onDead, TimeSpan? interval = null, TimeSpan? requestTimeout = null, int maxMissed = DefaultMaxMissed)
    {
        ArgumentNullException.ThrowIfNull(connection);
        var client = connection.Client;
        _connection = connection;
        ArgumentNullException.ThrowIfNull(onDead);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxMissed, 1);
        _client = client;
        _name = name;
        _onDead = onDead;
        _interval = interval ?? DefaultInterval;
        _requestTimeout = requestTimeout ?? DefaultRequestTimeout;
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(_interval, TimeSpan.Zero, nameof(interval));
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(_requestTimeout, TimeSpan.Zero, nameof(requestTimeout));
        _maxMissed = maxMissed;
        _requester = GlobalRequester.TryCreate(client, out var why);
        ProbeKind = _requester is null ? $"exec 'true' ({why})" : "global request keepalive@openssh.com";
        _loop = Task.Run(LoopAsync);
    }

    /// <summary>What is sent: the global request, or the fallback command (and why).</summary>
    public string ProbeKind { get; }

    /// <summary>Replies received so far (for diagnostics and tests).</summary>
    public int Answered { get; private set; }

    /// <summary>Consecutive misses at the moment.</summary>
    public int Missed { get; private set; }

    /// <summary>Set once the peer was declared dead.</summary>
    public string? DeadReason { get; private set; }

    /// <summary>Sends one probe now and waits for its reply (bounded by the request timeout).</summary>
    public async Task<TimeSpan> ProbeAsync(CancellationToken ct = default)
    {
        var watch = Stopwatch.StartNew();
        using var bounded = CancellationTokenSource.CreateLinkedTokenSource(ct, _stop.Token);
        bounded.CancelAfter(_requestTimeout);
        try
        {
            if (_requester is not null) await _requester.SendAsync(bounded.Token).ConfigureAwait(false);
            else await GuestSsh.RunAsync(_connection, "true", _ => { }, _ => { }, bounded.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested && !_stop.IsCancellationRequested)
        {
            throw new TimeoutException($"no keepalive reply within {_requestTimeout.TotalSeconds:0.###} s");
        }
        return watch.Elapsed;
    }

    private async Task LoopAsync()
    {
        using var timer = new PeriodicTimer(_interval);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token).ConfigureAwait(false))
            {
                string problem;
                if (!_client.IsConnected) problem = "the connection is closed";
                else
                {
                    try
                    {
                        await ProbeAsync(_stop.Token).ConfigureAwait(false);
                        Answered++;
                        Missed = 0;
                        continue;
                    }
                    catch (OperationCanceledException) when (_stop.IsCancellationRequested)
                    {
                        return;
                    }
                    catch (Exception e)
                    {
                        problem = e.Message;
                    }
                    Missed++;
                    if (Missed < _maxMissed && _client.IsConnected) continue;
                    problem = $"{Missed} consecutive keepalives missed (last: {problem})";
                }
                Dead($"the {_name} SSH connection to {GuestSsh.Endpoint(_client)} is dead: {problem}");
                return;
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested) { }
    }

    private void Dead(string reason)
    {
        DeadReason = reason;
        _connection.Watch.MarkLost(reason);
        // Disconnect off this thread: SSH.NET may wait on a peer that no longer answers.
        _ = Task.Run(() =>
        {
            try { _client.Disconnect(); }
            catch (Exception) { /* the connection is gone either way */ }
        });
        try { _onDead(reason); }
        catch (Exception) { /* a callback failure must not kill the keepalive thread's caller */ }
    }

    public void Dispose()
    {
        if (_stop.IsCancellationRequested) return;
        _stop.Cancel();
        try { _loop.Wait(TimeSpan.FromSeconds(2)); }
        catch (AggregateException) { }
        _requester?.Detach();
    }

    /// <summary>SSH_MSG_GLOBAL_REQUEST through SSH.NET's internal session; replies arrive in order (RFC 4254 §4).</summary>
    private sealed class GlobalRequester
    {
        private static readonly Assembly SshNet = typeof(SshClient).Assembly;
        private readonly object _session;
        private readonly MethodInfo _send;
        private readonly object _message;
        private readonly EventInfo _success, _failure;
        private readonly Delegate _successHandler, _failureHandler;
        private readonly LinkedList<TaskCompletionSource> _pending = new();

        private GlobalRequester(object session, MethodInfo send, object message, EventInfo success, EventInfo failure)
        {
            _session = session;
            _send = send;
            _message = message;
            _success = success;
            _failure = failure;
            var handler = typeof(GlobalRequester).GetMethod(nameof(OnReply), BindingFlags.Instance | BindingFlags.NonPublic)!;
            _successHandler = Delegate.CreateDelegate(success.EventHandlerType!, this, handler);
            _failureHandler = Delegate.CreateDelegate(failure.EventHandlerType!, this, handler);
        }

        public static GlobalRequester? TryCreate(SshClient client, out string why)
        {
            why = "";
            try
            {
                var iSession = SshNet.GetType("Renci.SshNet.ISession", throwOnError: true)!;
                var session = typeof(BaseClient).GetProperty("Session", BindingFlags.Instance | BindingFlags.NonPublic)!.GetValue(client)
                              ?? throw new InvalidOperationException("the client has no session (not connected)");
                var register = iSession.GetMethod("RegisterMessage")!;
                var send = iSession.GetMethod("SendMessage")!;
                var success = iSession.GetEvent("RequestSuccessReceived")!;
                var failure = iSession.GetEvent("RequestFailureReceived")!;
                var messageType = SshNet.GetType("Renci.SshNet.Messages.Connection.GlobalRequestMessage", throwOnError: true)!;
                var message = Activator.CreateInstance(messageType, BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public, null,
                    [Encoding.ASCII.GetBytes("keepalive@openssh.com"), true], null)!;
                var requester = new GlobalRequester(session, send, message, success, failure);
                // Without these, SSH.NET treats a reply as a protocol error and drops the session.
                register.Invoke(session, ["SSH_MSG_REQUEST_SUCCESS"]);
                register.Invoke(session, ["SSH_MSG_REQUEST_FAILURE"]);
                success.AddEventHandler(session, requester._successHandler);
                failure.AddEventHandler(session, requester._failureHandler);
                return requester;
            }
            catch (Exception e)
            {
                why = "SSH.NET's session is not reachable: " + (e is TargetInvocationException { InnerException: { } inner } ? inner.Message : e.Message);
                return null;
            }
        }

        public async Task SendAsync(CancellationToken ct)
        {
            var reply = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            // The send may block on a peer that reads nothing: keep it off the caller's path.
            var send = Task.Run(() =>
            {
                lock (_pending)
                {
                    // Append and send under one lock so that the list order is the wire order.
                    var node = _pending.AddLast(reply);
                    try
                    {
                        _send.Invoke(_session, [_message]);
                    }
                    catch (TargetInvocationException e) when (e.InnerException is not null)
                    {
                        _pending.Remove(node);
                        reply.TrySetException(e.InnerException);
                    }
                }
            }, CancellationToken.None);
            await send.WaitAsync(ct).ConfigureAwait(false);
            // A reply that comes after the timeout still takes its own entry: later replies stay matched.
            await reply.Task.WaitAsync(ct).ConfigureAwait(false);
        }

        private void OnReply(object? sender, EventArgs e)
        {
            TaskCompletionSource? reply = null;
            lock (_pending)
                if (_pending.First is { } first)
                {
                    reply = first.Value;
                    _pending.RemoveFirst();
                }
            reply?.TrySetResult();
        }

        public void Detach()
        {
            try
            {
                _success.RemoveEventHandler(_session, _successHandler);
                _failure.RemoveEventHandler(_session, _failureHandler);
            }
            catch (Exception) { /* the session is gone */ }
        }
    }
}
