using System.Formats.Tar;
using MelangeRunner.Native;
using MelangeRunner.Tar;

namespace MelangeRunner.Images;

/// <summary>
/// What an image source was found to be — Kind: "layer-tar" (with "+gzip", "+zstd", "+xz"
/// or "+bzip2" when compressed), "oci-layout", "oci-archive" or "docker-archive" — and the
/// architecture of the image taken from it, apko-style (x86_64, aarch64…).
/// </summary>
internal sealed record ImageSourceInfo(string Kind, string Arch, IReadOnlyList<string> Env);

/// <summary>
/// How an import may use the host: independent of any PodConfig, since an image is imported
/// before there is a pod.
/// </summary>
public sealed class ImageImportOptions
{
    /// <summary>
    /// 32 GiB: far above ordinary build images (a Debian build-essential rootfs is ~1 GB), and
    /// finite, so that a small layer that decompresses without end (a zstd or gzip "bomb")
    /// fails fast instead of filling the file system.
    /// </summary>
    public const long DefaultMaximumSize = 32L << 30;

    /// <summary>
    /// The most bytes an import may expand to: the decompressed tar streams of all its layers
    /// together (headers, data and padding), and separately a compressed image archive's
    /// decompressed size. Passing it fails the import with ImageTooLarge.
    /// </summary>
    public long MaximumSize { get; init; } = DefaultMaximumSize;

    public static ImageImportOptions Default { get; } = new();

    private static readonly AsyncLocal<ImageImportOptions?> CurrentOptions = new();

    /// <summary>
    /// The options for imports started from the current async flow. IImageLoader.LoadImageAsync
    /// has no options parameter; Import-MelangeImage sets these around its call instead.
    /// </summary>
    public static ImageImportOptions Current
    {
        get => CurrentOptions.Value ?? Default;
        set => CurrentOptions.Value = value;
    }

    public void Validate()
    {
        if (MaximumSize <= 0)
            throw new MelangeException(ErrorKind.InvalidArgument, "InvalidSize", $"The maximum image size must be positive; it is {MaximumSize}.",
                "Give a size such as 64Gi or 64GB.", MaximumSize);
    }
}

/// <summary>Counts the bytes an import expands to, across the streams it wraps; passing the bound is ImageTooLarge.</summary>
internal sealed class ExpansionBudget
{
    private readonly long _max;
    private readonly string _what;
    private long _used;

    public ExpansionBudget(long max, string what) { _max = max; _what = what; }

    public Stream Wrap(Stream inner) => new Counted(inner, this);

    private void Add(int n)
    {
        _used += n;
        if (_used > _max)
            throw new MelangeException(ErrorKind.InvalidData, "ImageTooLarge",
                $"{_what} expands to more than {Format(_max)} (the import's maximum size); it was stopped there.",
                "If the image is trusted and really that large, import it with a larger -MaximumSize (for example -MaximumSize 100GB).", _max);
    }

    private static string Format(long bytes) => bytes % (1L << 30) == 0 ? $"{bytes >> 30} GiB" : bytes % (1L << 20) == 0 ? $"{bytes >> 20} MiB" : $"{bytes} bytes";

    private sealed class Counted : ReadOnlyWrapper
    {
        private readonly Stream _inner;
        private readonly ExpansionBudget _budget;
        public Counted(Stream inner, ExpansionBudget budget) { _inner = inner; _budget = budget; }
        protected override int ReadCore(Span<byte> buffer)
        {
            int n = _inner.Read(buffer);
            _budget.Add(n);
            return n;
        }
        protected override void Dispose(bool disposing) { if (disposing) _inner.Dispose(); base.Dispose(disposing); }
    }
}

/// <summary>Turns an image on disk (detected by content) into a rootfs directory or one flattened rootfs tar.</summary>
internal static class ImageImporter
{
    private const string Activity = "Importing image";

    /// <summary>
    /// Unpacks the image at <paramref name="path"/> into the existing (empty) directory
    /// <paramref name="guestDir"/>, applying layers in order with OCI whiteouts. Unsafe
    /// entries are skipped with a warning. The directory is made 0755 (the root of a rootfs);
    /// no entry changes it. On failure or cancellation the directory is left for the caller to
    /// delete. The options default to <see cref="ImageImportOptions.Current"/>.
    /// </summary>
    public static Task<ImageSourceInfo> ExtractAsync(string path, string? arch, string guestDir, IEventSink events, CancellationToken ct) =>
        ExtractAsync(path, arch, guestDir, ImageImportOptions.Current, events, ct);

    public static Task<ImageSourceInfo> ExtractAsync(string path, string? arch, string guestDir, ImageImportOptions options, IEventSink events, CancellationToken ct)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentException.ThrowIfNullOrEmpty(guestDir);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        events ??= NullEventSink.Instance;
        return Task.Run(() =>
        {
            using var temp = new TempDir(Path.GetDirectoryName(Path.GetFullPath(guestDir)));
            using var source = ImageSource.Open(path, arch, temp.Get, new ExpansionBudget(options.MaximumSize, $"The image archive '{path}'"), events, ct);
            events.Verbose($"'{path}' is {source.Kind} ({source.Arch}, {source.Layers.Count} layer(s)); unpacking into '{guestDir}'.");
            // The root of a rootfs: traversable by the sandbox's non-root users whatever mode it was created with.
            int chmod = Libc.Chmod(Path.GetFullPath(guestDir), 0x1ED);
            if (chmod != 0) throw Libc.Error("chmod", guestDir, chmod);
            var extractor = new TarExtractor(guestDir, new TarExtractOptions { ApplyWhiteouts = true }, events);
            var progress = new ProgressTracker(events, source.Layers, "Unpacking");
            var budget = new ExpansionBudget(options.MaximumSize, $"The image '{path}'");
            foreach (var layer in source.Layers)
            {
                ct.ThrowIfCancellationRequested();
                progress.StartLayer(layer);
                WithLayer(layer, progress, budget, ct, tar => extractor.ExtractLayer(tar, ct));
            }
            extractor.Finish(ct);
            progress.Complete();
            return new ImageSourceInfo(source.Kind, source.Arch, source.Env);
        }, ct);
    }

    /// <summary>
    /// Writes the flattened rootfs of the image as one uncompressed PAX tar at
    /// <paramref name="outputTarPath"/> (whiteouts resolved, unsafe entries dropped with a
    /// warning, owners, modes, devices and xattrs kept). A partial output is deleted on failure.
    /// The options default to <see cref="ImageImportOptions.Current"/>.
    /// </summary>
    public static Task<ImageSourceInfo> FlattenAsync(string path, string? arch, string outputTarPath, IEventSink events, CancellationToken ct) =>
        FlattenAsync(path, arch, outputTarPath, ImageImportOptions.Current, events, ct);

    public static Task<ImageSourceInfo> FlattenAsync(string path, string? arch, string outputTarPath, ImageImportOptions options, IEventSink events, CancellationToken ct)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentException.ThrowIfNullOrEmpty(outputTarPath);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        events ??= NullEventSink.Instance;
        return Task.Run(() =>
        {
            string output = Path.GetFullPath(outputTarPath);
            bool done = false;
            try
            {
                using var temp = new TempDir(Path.GetDirectoryName(output));
                using var source = ImageSource.Open(path, arch, temp.Get, new ExpansionBudget(options.MaximumSize, $"The image archive '{path}'"), events, ct);
                events.Verbose($"'{path}' is {source.Kind} ({source.Arch}, {source.Layers.Count} layer(s)); writing the flattened rootfs to '{output}'.");
                using (var fs = new FileStream(output, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
                    Flattener.Run(source.Layers, fs, () => new ExpansionBudget(options.MaximumSize, $"The image '{path}'"), events, ct);
                done = true;
                return new ImageSourceInfo(source.Kind, source.Arch, source.Env);
            }
            finally
            {
                if (!done) TryDelete(output);
            }
        }, ct);
    }

    private static void TryDelete(string file)
    {
        try { File.Delete(file); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>Opens a layer (counted, digest-checked, decompressed) and hands its tar stream to <paramref name="use"/>.</summary>
    internal static void WithLayer(LayerRef layer, ProgressTracker? progress, ExpansionBudget budget, CancellationToken ct, Action<Stream> use)
    {
        var raw = layer.Open();
        var counted = new CountingStream(raw, progress != null ? progress.Report : null);
        var checking = new DigestCheckingStream(counted, layer.Digest, layer.Description);
        Stream tar;
        string compression;
        try { tar = Decompression.Open(checking, out compression); }
        catch (MelangeException e) when (e.ErrorId == "UnknownImageFormat")
        {
            checking.Dispose();
            throw new MelangeException(ErrorKind.InvalidData, "UnknownImageFormat", $"The image's {layer.Description} is not {Decompression.AcceptedFormats}.",
                "Re-create the image; layers must be tar archives.", layer.Description, e);
        }
        tar = budget.Wrap(tar); // the bound counts what decompression yields, before any of it is written
        using (tar)
        {
            try
            {
                use(tar);
                StreamUtil.Drain(tar, ct); // the rest (tar padding), so that the digest covers the whole blob
                checking.Verify(ct);
            }
            catch (Exception e) when (e is InvalidDataException or EndOfStreamException or FormatException or NotSupportedException or SharpCompress.Common.ArchiveException)
            {
                throw new MelangeException(ErrorKind.InvalidData, "CorruptImage", $"The image's {layer.Description} ({compression}) is corrupt or truncated: {e.Message}",
                    "Check that the image file is complete (re-download or re-create it).", layer.Description, e);
            }
        }
    }
}

/// <summary>Reports bytes read of the (compressed) layers, throttled by <see cref="CountingStream"/>.</summary>
internal sealed class ProgressTracker
{
    private readonly IEventSink _events;
    private readonly long _total;
    private readonly int _count;
    private readonly string _verb;
    private long _before;
    private long _current;
    private int _index;

    public ProgressTracker(IEventSink events, IReadOnlyList<LayerRef> layers, string verb)
    {
        _events = events;
        _total = layers.Sum(l => l.Size);
        _count = layers.Count;
        _verb = verb;
    }

    public void StartLayer(LayerRef layer)
    {
        _before += _current;
        _current = 0;
        _index++;
        Report(0);
    }

    public void Report(long bytesOfLayer)
    {
        _current = bytesOfLayer;
        _events.Progress(new ProgressReport("Importing image", $"{_verb} layer {_index} of {_count}", _before + _current, _total));
    }

    public void Complete() => _events.Progress(new ProgressReport("Importing image", "Done", _total, _total));
}

/// <summary>A temporary directory made only when asked for, removed on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    private readonly string? _near;
    private string? _path;

    public TempDir(string? near) => _near = near;

    public string Get()
    {
        if (_path != null) return _path;
        foreach (var parent in new[] { _near, Path.GetTempPath() })
        {
            if (string.IsNullOrEmpty(parent) || !Directory.Exists(parent)) continue;
            try
            {
                string p = Path.Combine(parent, ".melange-import-" + Guid.NewGuid().ToString("N")[..12]);
                Directory.CreateDirectory(p);
                _path = p;
                return p;
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        _path = Directory.CreateTempSubdirectory("melange-import-").FullName;
        return _path;
    }

    public void Dispose()
    {
        if (_path == null) return;
        try { Directory.Delete(_path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        _path = null;
    }
}
