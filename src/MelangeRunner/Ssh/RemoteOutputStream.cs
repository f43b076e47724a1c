using System.Collections.Concurrent;
using Renci.SshNet;

namespace MelangeRunner.Ssh;

/// <summary>
/// The standard output of a running remote command, read as it arrives. The end of the data
/// is where the command's fate is reported: a non-zero status or a lost connection is thrown
/// from Read instead of returning 0.
/// </summary>
internal sealed class RemoteOutputStream : Stream
{
    private const int StderrTail = 20;
    private readonly SshClient _client;
    private readonly string _commandLine;
    private readonly ConnectionWatch _watch;
    private readonly CancellationToken _callerToken;
    private readonly CancellationTokenSource _run;
    private readonly SshCommand _command;
    private readonly Task _exec;
    private readonly Stream _pipe;
    private readonly OutputBackpressure _backpressure;
    private readonly Task _stderrPump;
    private readonly ConcurrentQueue<string> _stderrTail = new();
    private readonly RemoteProcess _process = new();
    private readonly CancellationTokenRegistration _onLost;
    private bool _ended;
    private Exception? _failure;
    private long _position;
    private int _disposed;

    public RemoteOutputStream(SshConnection connection, string commandLine, Action<string> standardErrorLine, CancellationToken ct)
    {
        var client = connection.Client;
        _client = client;
        _commandLine = commandLine;
        _callerToken = ct;
        _watch = connection.Watch;
        _run = CancellationTokenSource.CreateLinkedTokenSource(ct);
        try
        {
            _command = GuestSsh.Start(client, _watch, commandLine, _run.Token, out _exec);
        }
        catch
        {
            _run.Dispose();
            throw;
        }
        _pipe = _command.OutputStream;
        _backpressure = new OutputBackpressure(_command);
        _stderrPump = GuestSsh.PumpLines(_command.ExtendedOutputStream, line =>
        {
            if (_process.TryConsume(line)) return;
            _stderrTail.Enqueue(line);
            while (_stderrTail.Count > StderrTail) _stderrTail.TryDequeue(out _);
            standardErrorLine(line);
        }, _ => { });
        // A lost connection or a cancellation must not leave Read blocked on a pipe nobody will end.
        _onLost = _watch.Lost.Register(() =>
        {
            _backpressure.Release();
            GuestSsh.ClosePipes(_command);
        });
        _run.Token.Register(() =>
        {
            _backpressure.Release();
            GuestSsh.ClosePipes(_command);
        });
    }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => _position; set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        if (_failure is not null) throw _failure;
        if (_ended || buffer.IsEmpty) return 0;
        int n;
        try { n = _pipe.Read(buffer); }
        catch (ObjectDisposedException) { n = 0; }
        if (n > 0)
        {
            _backpressure.Read();
            _position += n;
            return n;
        }
        _failure = Finish();
        if (_failure is not null) throw _failure;
        _ended = true;
        return 0;
    }

    /// <summary>At the end of the data: how did the command end?</summary>
    private Exception? Finish()
    {
        try
        {
            Task.Run(() => GuestSsh.WaitForExitAsync(_client, _watch, _exec)).GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            if (_callerToken.IsCancellationRequested && !_watch.IsLost) _process.KillAsync(_client).GetAwaiter().GetResult();
            if (_callerToken.IsCancellationRequested) return new OperationCanceledException("Reading the remote command's output was cancelled (SIGTERM sent).", e, _callerToken);
            return GuestSsh.Lost(_client, _watch, _commandLine, e);
        }
        _stderrPump.Wait(TimeSpan.FromSeconds(5));
        RemoteExit exit;
        try { exit = GuestSsh.ExitOf(_client, _watch, _command, _commandLine); }
        catch (MelangeException e) { return e; }
        if (exit.ExitCode == 0) return null;
        var tail = string.Join(Environment.NewLine, _stderrTail);
        return new MelangeException(ErrorKind.NonZeroExit, "RemoteCommandFailed",
            $"The command '{_commandLine}' on {GuestSsh.Endpoint(_client)} failed ({exit}); its output is incomplete." +
            (tail.Length > 0 ? $" Its last error output:{Environment.NewLine}{tail}" : ""),
            "Read the command's error output above.", GuestSsh.Endpoint(_client));
    }

    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _onLost.Dispose();
            // First: the kill below and the command's last messages need the receive loop.
            _backpressure.Dispose();
            if (!_exec.IsCompleted)
            {
                // Stopped before the end: end the remote command's process group, then the channel.
                // The kill needs the process id that the command announces on standard error, so
                // the pipes stay open (and the stderr pump running) until the kill is sent: closing
                // them first could lose an announcement still in flight, and the command with it.
                _ = Task.Run(async () =>
                {
                    if (!_watch.IsLost) await _process.KillAsync(_client).ConfigureAwait(false);
                    try { _run.Cancel(); } catch (AggregateException) { }
                    GuestSsh.ClosePipes(_command);
                });
            }
            else
            {
                GuestSsh.ClosePipes(_command);
            }
            _ = _exec.ContinueWith(_ =>
            {
                _command.Dispose();
                _run.Dispose();
            }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
        }
        base.Dispose(disposing);
    }
}
