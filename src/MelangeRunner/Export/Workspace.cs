using System.Text.RegularExpressions;
using MelangeRunner.IO;
using MelangeRunner.Tar;

namespace MelangeRunner;

/// <summary>Getting the results out of a pod: the workspace tar and where it is written.</summary>
public static partial class Workspace
{
    /// <summary>The directory, relative to the workspace, that a build writes its packages into.</summary>
    public const string OutputDir = "melange-out";

    [GeneratedRegex(@"^(licen[cs]e|copying|notice|copyright|unlicense)([.\-_].*)?$", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant)]
    private static partial Regex LicenseFileName();

    /// <summary>Whether a file name looks like a license file (LICENSE, COPYING.md, NOTICE-APACHE…).</summary>
    public static bool IsLicenseFileName(string name) => LicenseFileName().IsMatch(name);

    /// <summary>
    /// Checks the extra file names a user asked for: relative to the workspace and staying inside it.
    /// </summary>
    public static IReadOnlyList<string> ValidateExtraFiles(IEnumerable<string>? extraFiles)
    {
        var result = new List<string>();
        foreach (var raw in extraFiles ?? Array.Empty<string>())
        {
            var name = raw.Replace('\\', '/').Trim();
            while (name.StartsWith("./", StringComparison.Ordinal)) name = name[2..];
            if (name.Length == 0 || name.StartsWith('/') || name.Split('/').Contains(".."))
                throw new MelangeException(ErrorKind.InvalidArgument, "BadExtraFile",
                    $"The extra file '{raw}' is not a path inside the workspace.",
                    "Give extra files relative to the workspace, without '..', for example 'config.log'.", raw);
            if (!result.Contains(name)) result.Add(name);
        }
        return result;
    }

    /// <summary>
    /// The license-file rule of both runners (the host walks the bubblewrap workspace, the guest
    /// lists the qemu one): a file whose name looks like a license (<see cref="IsLicenseFileName"/>),
    /// anywhere in the workspace except under melange-out (the build's output, exported anyway) and
    /// .git (a repository's objects are never the package's licenses). <paramref name="relativePath"/>
    /// is relative to the workspace, with '/' separators.
    /// </summary>
    public static bool IsLicenseFile(string relativePath) =>
        !relativePath.StartsWith(OutputDir + "/", StringComparison.Ordinal)
        && !relativePath.StartsWith(".git/", StringComparison.Ordinal)
        && IsLicenseFileName(Path.GetFileName(relativePath));

    /// <summary>License files anywhere in the workspace (<see cref="IsLicenseFile"/>), relative paths, sorted.</summary>
    public static IReadOnlyList<string> FindLicenseFiles(string workspaceDir)
    {
        var found = new List<string>();
        var options = new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint, IgnoreInaccessible = true };
        foreach (var file in Directory.EnumerateFiles(workspaceDir, "*", options))
        {
            var rel = Path.GetRelativePath(workspaceDir, file).Replace('\\', '/');
            if (IsLicenseFile(rel)) found.Add(rel);
        }
        found.Sort(StringComparer.Ordinal);
        return found;
    }

    /// <summary>
    /// A tar stream of melange-out, the extra files and the license files of a host workspace,
    /// produced on a background task as the reader consumes it.
    /// </summary>
    public static Stream TarOfHostDirectory(string workspaceDir, IReadOnlyList<string> extraFiles, IEventSink events, CancellationToken cancellationToken)
    {
        var paths = new List<string> { OutputDir };
        foreach (var p in extraFiles.Concat(FindLicenseFiles(workspaceDir)))
            if (!paths.Contains(p)) paths.Add(p);
        if (!Directory.Exists(Path.Combine(workspaceDir, OutputDir)))
            events.Warning($"The workspace {workspaceDir} has no {OutputDir} directory: the build wrote no output.");

        // An in-process pipe, not an OS pipe: every wait on either side is cancellable, and a
        // zero-length read is never taken for the end of the stream (see BytePipe).
        var pipe = new BytePipe(PipeCapacity);
        var producer = Task.Run(async () =>
        {
            try
            {
                await DirectoryTarWriter.WriteAsync(pipe.Writer(cancellationToken), workspaceDir, paths, events, cancellationToken).ConfigureAwait(false);
                pipe.CompleteWriting(null);
            }
            catch (Exception e)
            {
                pipe.CompleteWriting(e); // the reader sees it at the end of the data
                throw;
            }
        }, CancellationToken.None); // not the token: the task must run to complete the pipe whatever happens
        return new ProducerStream(pipe, producer, cancellationToken);
    }

    /// <summary>How many bytes of tar may be written ahead of the reader.</summary>
    internal const int PipeCapacity = 1 << 20;

    /// <summary>Streams the pod's workspace tar into a tar file (written whole or not at all).</summary>
    public static async Task<FileInfo> ExportToTarAsync(Pod pod, string tarPath, IEnumerable<string>? extraFiles, IEventSink events, CancellationToken cancellationToken)
    {
        var extra = ValidateExtraFiles(extraFiles);
        var full = Path.GetFullPath(tarPath);
        var partial = full + ".partial-" + Guid.NewGuid().ToString("N")[..8];
        using var watch = HostProcess.Reaper.WatchPath(partial); // removed if the process dies mid-export
        try
        {
            await using (var tar = await pod.WorkspaceTarAsync(extra, events, cancellationToken).ConfigureAwait(false))
            await using (var file = new FileStream(partial, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous))
            {
                await CopyWithProgressAsync(tar, file, events, cancellationToken).ConfigureAwait(false);
            }
            File.Move(partial, full, overwrite: true);
            return new FileInfo(full);
        }
        finally
        {
            if (File.Exists(partial)) File.Delete(partial);
        }
    }

    /// <summary>Unpacks the pod's workspace tar under <paramref name="destination"/>, never outside it.</summary>
    public static async Task<DirectoryInfo> ExportToDirectoryAsync(Pod pod, string destination, IEnumerable<string>? extraFiles, IEventSink events, CancellationToken cancellationToken)
    {
        var extra = ValidateExtraFiles(extraFiles);
        var full = Path.GetFullPath(destination);
        Directory.CreateDirectory(full);
        await using var tar = await pod.WorkspaceTarAsync(extra, events, cancellationToken).ConfigureAwait(false);
        await using var counted = new ProgressStream(tar, events, "Exporting workspace");
        // Results belong to whoever exports them: owners are not carried over.
        await SafeTarExtractor.ExtractAsync(counted, full, new TarExtractOptions { PreserveOwners = false, ReapPartialFiles = true }, events, cancellationToken).ConfigureAwait(false);
        return new DirectoryInfo(full);
    }

    private static async Task CopyWithProgressAsync(Stream source, Stream target, IEventSink events, CancellationToken cancellationToken)
    {
        await using var counted = new ProgressStream(source, events, "Exporting workspace");
        await counted.CopyToAsync(target, 1 << 20, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Deletes a directory tree without following symlinks out of it; a missing tree is fine.</summary>
    public static void DeleteTree(string path)
    {
        if (!Directory.Exists(path)) return;
        // Directory.Delete does not follow symlinks; make read-only directories writable first.
        foreach (var dir in Directory.EnumerateDirectories(path, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint, IgnoreInaccessible = true }))
        {
            try { File.SetUnixFileMode(dir, File.GetUnixFileMode(dir) | UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute); }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        Directory.Delete(path, recursive: true);
    }

    /// <summary>
    /// The read side of a <see cref="BytePipe"/> whose writer is a task: the writer's failure
    /// surfaces at the end of the data, and disposing it stops the writer and waits for it.
    /// </summary>
    internal sealed class ProducerStream : Stream
    {
        private readonly BytePipe _pipe;
        private readonly Task _producer;
        private readonly CancellationToken _cancellationToken;
        private long _position;
        private int _disposed;

        public ProducerStream(BytePipe pipe, Task producer, CancellationToken cancellationToken)
        {
            _pipe = pipe; _producer = producer; _cancellationToken = cancellationToken;
        }

        /// <summary>The writer task, for tests that prove none is left behind.</summary>
        internal Task Producer => _producer;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _position; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            ObjectDisposedException.ThrowIf(_disposed != 0, this);
            var n = _pipe.Read(buffer, _cancellationToken);
            _position += n;
            return n;
        }

        public override int ReadByte()
        {
            Span<byte> one = stackalloc byte[1];
            return Read(one) == 1 ? one[0] : -1;
        }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            ObjectDisposedException.ThrowIf(_disposed != 0, this);
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(_cancellationToken, cancellationToken);
            var n = await _pipe.ReadAsync(buffer, linked.Token).ConfigureAwait(false);
            _position += n;
            return n;
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        protected override void Dispose(bool disposing)
        {
            if (disposing && Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                // The writer's next (or current, blocked) write fails at once; wait for it so that no
                // task outlives the export. It also stops at the cancellation token between chunks.
                _pipe.CloseReading();
                try { _producer.Wait(); } catch (AggregateException) { }
            }
            base.Dispose(disposing);
        }

        public override async ValueTask DisposeAsync()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                _pipe.CloseReading();
                try { await _producer.ConfigureAwait(false); } catch (Exception) { /* reported by Read, or the reader left early */ }
            }
            GC.SuppressFinalize(this);
        }
    }
}
