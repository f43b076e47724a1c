namespace MelangeRunner;

/// <summary>What kind of failure an engine error is; the cmdlets map it to an ErrorCategory.</summary>
public enum ErrorKind
{
    InvalidArgument,
    ObjectNotFound,
    NotInstalled,
    InvalidData,
    InvalidOperation,
    PermissionDenied,
    ResourceUnavailable,
    OperationTimeout,
    ConnectionError,
    SecurityError,
    NonZeroExit,
    Cancelled,
}

/// <summary>
/// An engine failure that a user can act on: <see cref="Exception.Message"/> names the
/// problem, <see cref="Fix"/> says what to do, <see cref="ErrorId"/> is stable for scripts.
/// </summary>
public class MelangeException : Exception
{
    public MelangeException(ErrorKind kind, string errorId, string message, string? fix = null, object? target = null, Exception? inner = null)
        : base(message, inner)
    {
        Kind = kind;
        ErrorId = errorId;
        Fix = fix;
        Target = target;
    }

    public ErrorKind Kind { get; }
    public string ErrorId { get; }
    public string? Fix { get; }
    public object? Target { get; }
}

/// <summary>A command in the pod that ended with a non-zero status.</summary>
public sealed class CommandFailedException : MelangeException
{
    public CommandFailedException(int exitCode, IReadOnlyList<string> command)
        : base(ErrorKind.NonZeroExit, "CommandFailed",
            $"The command '{string.Join(' ', command)}' exited with status {exitCode}.", null, command)
    {
        ExitCode = exitCode;
        Command = command;
    }

    public int ExitCode { get; }
    public IReadOnlyList<string> Command { get; }
}
