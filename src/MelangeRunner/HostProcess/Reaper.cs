using System.Diagnostics;
using System.Text;

namespace MelangeRunner.HostProcess;

/// <summary>
/// The backstop for a process that dies without cleaning up (SIGKILL, an OOM kill, a crash):
/// one watcher process per module process, <c>melange-reaper</c> (a shell script embedded
/// beside this file), reads registrations on its stdin. When this process ends in any way its
/// end of the pipe closes, and the watcher ends the registered processes (SIGTERM, then
/// SIGKILL) and removes the registered files. Normal clean-up forgets what it removed, so the
/// watcher only ever acts on what is really left over.
/// </summary>
/// <remarks>
/// The pipe's write end is close-on-exec (as every pipe .NET makes), so processes started
/// later (qemu, bwrap) do not hold it open. A registration is a best effort: if the watcher
/// cannot be started (no /bin/sh), pods still work and clean up normally; they only lose the
/// backstop, which <see cref="Available"/> reports.
/// </remarks>
internal static class Reaper
{
    private static readonly object Gate = new();
    private static Process? _watcher;
    private static StreamWriter? _input;
    private static bool _failed;

    /// <summary>Whether the watcher process is running.</summary>
    public static bool Available
    {
        get { lock (Gate) return EnsureStarted(); }
    }

    /// <summary>The watcher's process id (for tests), or null.</summary>
    public static int? WatcherPid
    {
        get { lock (Gate) return EnsureStarted() ? _watcher!.Id : null; }
    }

    /// <summary>Ends <paramref name="process"/> if this process dies before the registration is disposed.</summary>
    public static Registration Watch(Process process) =>
        StartTime(process.Id) is { } t ? Register($"P {process.Id} {t}") : Registration.None;

    /// <summary>Removes the file or directory tree at <paramref name="path"/> if this process dies before the registration is disposed.</summary>
    /// <param name="secret">Overwrite a file before removing it (it holds key material).</param>
    public static Registration WatchPath(string path, bool secret = false) =>
        // One registration a line: a path with a line break cannot be named (the module makes none).
        path.Contains('\n') ? Registration.None : Register((secret ? "S " : "F ") + Path.GetFullPath(path));

    private static Registration Register(string line)
    {
        Send(line);
        return new Registration("-" + line);
    }

    /// <summary>A registration with the watcher; disposing it (after the normal clean-up) forgets it.</summary>
    public sealed class Registration : IDisposable
    {
        internal static readonly Registration None = new(null);
        private string? _forget;

        internal Registration(string? forget) => _forget = forget;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _forget, null) is { } line) Send(line);
        }
    }

    /// <summary>Field 22 of /proc/PID/stat (start time in clock ticks), counted after the name's last ')'.</summary>
    internal static string? StartTime(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return fields.Length > 19 ? fields[19] : null;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    private static void Send(string line)
    {
        lock (Gate)
        {
            for (int attempt = 0; attempt < 2 && EnsureStarted(); attempt++)
            {
                try
                {
                    _input!.Write(line + "\n");
                    _input.Flush();
                    return;
                }
                catch (IOException)
                {
                    // The watcher died (someone killed it): start another and register again.
                    // What the dead one held is lost; the normal clean-up still runs.
                    _watcher?.Dispose();
                    _watcher = null;
                    _input = null;
                }
            }
        }
    }

    private static bool EnsureStarted()
    {
        if (_watcher is { HasExited: false }) return true;
        if (_failed) return false;
        try
        {
            // Its output stays the engine's own: nothing reads it, so nothing can block it.
            _watcher = HostCommand.Start("/bin/sh", new[] { "-c", Script.Value, "melange-reaper" }, redirectInput: true, redirectOutput: false);
            _input = new StreamWriter(_watcher.StandardInput.BaseStream, new UTF8Encoding(false)) { AutoFlush = false };
            return true;
        }
        catch (Exception e) when (e is MelangeException or IOException)
        {
            _failed = true;
            return false;
        }
    }

    private static readonly Lazy<string> Script = new(() =>
    {
        using var s = typeof(Reaper).Assembly.GetManifestResourceStream("MelangeRunner.HostProcess.melange-reaper")
            ?? throw new InvalidOperationException("The melange-reaper script is not embedded in the engine.");
        using var reader = new StreamReader(s);
        return reader.ReadToEnd();
    });
}
