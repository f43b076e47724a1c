using System.Formats.Tar;
using System.Security.Cryptography;
using System.Text.Json;
using MelangeRunner.Tar;

namespace MelangeRunner.Images;

/// <summary>One layer blob to apply: how to open its (possibly compressed) bytes.</summary>
internal sealed record LayerRef(string Description, long Size, string? Digest, Func<Stream> Open);

/// <summary>An opened image: its kind, architecture and layers in order. Disposing closes the archive.</summary>
internal sealed class ImageSource : IDisposable
{
    public required string Kind { get; init; }
    public required string Arch { get; init; }
    public required IReadOnlyList<LayerRef> Layers { get; init; }

    /// <summary>The image config's Env ("K=V" strings, in order); empty for a bare layer tar.</summary>
    public IReadOnlyList<string> Env { get; init; } = Array.Empty<string>();

    /// <summary>The image config's WorkingDir and User (null when unset or for a bare layer tar).</summary>
    public string? WorkingDir { get; init; }
    public string? User { get; init; }

    public List<IDisposable> Owned { get; } = new();

    public void Dispose()
    {
        foreach (var d in Owned) d.Dispose();
    }

    private static readonly JsonDocumentOptions JsonOptions = new() { AllowTrailingCommas = true, MaxDepth = 64 };
    private const long MaxJsonSize = 16 << 20;

    /// <summary>
    /// Looks at what <paramref name="path"/> is (by content) and finds the layers for <paramref name="arch"/>.
    /// A compressed archive is first decompressed into <paramref name="tempDir"/> (created on demand),
    /// at most <paramref name="budget"/>'s bytes.
    /// </summary>
    public static ImageSource Open(string path, string? arch, Func<string> tempDir, ExpansionBudget budget, IEventSink events, CancellationToken ct)
    {
        string wanted = Architecture.Normalize(arch);
        if (Directory.Exists(path))
        {
            if (!File.Exists(Path.Combine(path, "index.json")))
                throw new MelangeException(ErrorKind.InvalidData, "UnknownImageFormat", $"The directory '{path}' is not an OCI image layout: it has no index.json.",
                    "Give an OCI image layout directory (with index.json and blobs/), an OCI or 'docker save' archive, or a layer tar.", path);
            var store = new DirBlobStore(path);
            return FromOci(store, "oci-layout", wanted, events);
        }
        if (!File.Exists(path))
            throw new MelangeException(ErrorKind.ObjectNotFound, "ImageNotFound", $"The image '{path}' does not exist.",
                "Check the path; give a layer tar, an OCI or 'docker save' archive, or an OCI image layout directory.", path);

        string compression;
        string? firstName;
        using (var raw = OpenFile(path))
        using (var s = Decompression.Open(raw, out compression))
            firstName = compression == "none" ? null : PeekFirstName(s);

        if (compression != "none")
        {
            if (firstName == null || !LooksLikeArchiveMember(firstName))
                return SingleLayer(path, "layer-tar+" + compression, wanted);
            // A compressed image archive (e.g. "docker save | gzip"): decompress it once to a temporary file.
            string dir = tempDir();
            string tmp = Path.Combine(dir, "archive.tar");
            events.Verbose($"'{path}' looks like a {compression}-compressed image archive; decompressing it to '{tmp}'.");
            using (var raw = OpenFile(path))
            using (var s = Decompression.Open(raw, out _))
            using (var o = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 0))
                StreamUtil.Copy(budget.Wrap(s), o, ct); // bounded like the layers: a small archive may expand without end
            var src = FromTarFile(tmp, wanted, ct, path);
            return src ?? SingleLayer(tmp, "layer-tar+" + compression, wanted);
        }
        return FromTarFile(path, wanted, ct, path) ?? SingleLayer(path, "layer-tar", wanted);
    }

    internal static FileStream OpenFile(string path) =>
        new(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan);

    private static ImageSource SingleLayer(string path, string kind, string arch) => new()
    {
        Kind = kind,
        Arch = arch,
        Layers = new[] { new LayerRef(Path.GetFileName(path), new FileInfo(path).Length, null, () => OpenFile(path)) },
    };

    private static string? PeekFirstName(Stream s)
    {
        try
        {
            using var r = new TarReader(s, leaveOpen: true);
            TarEntry? e;
            while ((e = r.GetNextEntry(copyData: false)) is { EntryType: TarEntryType.GlobalExtendedAttributes }) { }
            return e?.Name;
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or FormatException or NotSupportedException)
        {
            return null; // the extraction pass reports the corruption (or the GNU sparse entry) properly
        }
    }

    private static bool LooksLikeArchiveMember(string name)
    {
        name = name.StartsWith("./", StringComparison.Ordinal) ? name[2..] : name;
        if (name is "oci-layout" or "index.json" or "manifest.json" or "repositories" or "blobs" or "blobs/" || name.StartsWith("blobs/sha256", StringComparison.Ordinal)) return true;
        // Legacy "docker save": <64 hex>/ directories and <64 hex>.json configs.
        return name.Length >= 64 && name.AsSpan(0, 64).IndexOfAnyExcept("0123456789abcdef") < 0 && (name.Length == 64 || name[64] == '/' || name[64..] == ".json");
    }

    /// <summary>Reads an uncompressed tar's headers (seeking past data); an OCI or docker archive, or null for a plain layer.</summary>
    private static ImageSource? FromTarFile(string tarPath, string wanted, CancellationToken ct, string displayPath)
    {
        var fs = new FileStream(tarPath, FileMode.Open, FileAccess.Read, FileShare.Read, 4096, FileOptions.RandomAccess);
        try
        {
            var members = new Dictionary<string, ArchiveMember>(StringComparer.Ordinal);
            try
            {
                using var reader = new TarReader(fs, leaveOpen: true);
                TarEntry? e;
                long count = 0;
                while ((e = reader.GetNextEntry(copyData: false)) != null)
                {
                    if ((++count & 1023) == 0) ct.ThrowIfCancellationRequested();
                    string? rel = TarPath.Normalize(e.Name, out _);
                    if (rel == null) continue;
                    // Where the data starts is not exposed; the position after the header is kept
                    // and the data offset worked out (and checked) when a member is opened.
                    members[rel] = new ArchiveMember(fs.Position, e.Length, e.EntryType, e.LinkName);
                }
            }
            catch (NotSupportedException)
            {
                // System.Formats.Tar throws this for GNU sparse entries ('S'): no image archive has
                // them; as a layer, the extraction pass refuses it by name (SparseTarEntry).
                fs.Dispose();
                return null;
            }
            catch (Exception e) when (e is InvalidDataException or EndOfStreamException or FormatException)
            {
                throw new MelangeException(ErrorKind.InvalidData, "CorruptImage", $"'{displayPath}' is not a readable tar archive: {e.Message}",
                    "Check that the file is complete (re-download or re-create it).", displayPath, e);
            }
            var store = new ArchiveBlobStore(fs, members, displayPath);
            ImageSource? result = null;
            if (members.ContainsKey("index.json") && members.ContainsKey("oci-layout")) result = FromOci(store, "oci-archive", wanted, NullEventSink.Instance);
            else if (members.ContainsKey("manifest.json")) result = FromDocker(store, wanted, displayPath);
            if (result == null) { fs.Dispose(); return null; }
            result.Owned.Add(fs);
            return result;
        }
        catch
        {
            fs.Dispose();
            throw;
        }
    }

    // ---- OCI ----------------------------------------------------------------------------

    private const string OciIndex = "application/vnd.oci.image.index.v1+json";
    private const string DockerList = "application/vnd.docker.distribution.manifest.list.v2+json";

    private sealed record Candidate(JsonElement Descriptor, string? Arch, string? Variant, string? Os);

    private static ImageSource FromOci(IBlobStore store, string kind, string wanted, IEventSink events)
    {
        using var index = store.ReadJson("index.json");
        var candidates = new List<Candidate>();
        var nested = new List<JsonDocument>();
        try
        {
            CollectManifests(store, index.RootElement, candidates, nested, 0);
            if (candidates.Count == 0)
                throw new MelangeException(ErrorKind.InvalidData, "CorruptImage", $"The OCI index of '{store.DisplayPath}' lists no image manifest.",
                    "Re-create the image.", store.DisplayPath);

            // Descriptors without a platform (a single-image layout, usually): take it from the config.
            var resolved = new List<(Candidate C, JsonDocument? Manifest)>();
            foreach (var c in candidates)
            {
                if (c.Arch != null) { resolved.Add((c, null)); continue; }
                var m = store.ReadJson(DigestOf(c.Descriptor));
                nested.Add(m);
                string? cfgArch = null, cfgVariant = null, cfgOs = null;
                if (m.RootElement.TryGetProperty("config", out var cfgDesc))
                {
                    using var cfg = store.ReadJson(DigestOf(cfgDesc));
                    cfgArch = Str(cfg.RootElement, "architecture");
                    cfgVariant = Str(cfg.RootElement, "variant");
                    cfgOs = Str(cfg.RootElement, "os");
                }
                resolved.Add((c with { Arch = cfgArch, Variant = cfgVariant, Os = cfgOs }, m));
            }
            var real = resolved.Where(r => r.C.Arch is not (null or "unknown")).ToList();
            var match = real.FirstOrDefault(r => (r.C.Os is null or "linux") && Architecture.Matches(wanted, r.C.Arch, r.C.Variant));
            if (match.C == null)
            {
                // A single image that does not say its architecture is taken as it is.
                if (resolved.Count == 1 && resolved[0].C.Arch == null) match = resolved[0];
                else
                {
                    var available = real.Select(r => Architecture.FromOci(r.C.Arch!, r.C.Variant)).Distinct().ToList();
                    throw new MelangeException(ErrorKind.ObjectNotFound, "ArchitectureNotFound",
                        $"The image '{store.DisplayPath}' has no {wanted} ({Architecture.OciName(wanted)}) variant; it has: {(available.Count == 0 ? "none" : string.Join(", ", available))}.",
                        "Choose one of those with -Arch, or use an image built for this architecture.", store.DisplayPath);
                }
            }
            var manifest = match.Manifest ?? store.ReadJson(DigestOf(match.C.Descriptor));
            if (match.Manifest == null) nested.Add(manifest);
            if (!manifest.RootElement.TryGetProperty("layers", out var layers) || layers.ValueKind != JsonValueKind.Array)
                throw new MelangeException(ErrorKind.InvalidData, "CorruptImage", $"The image manifest in '{store.DisplayPath}' has no layers.", "Re-create the image.", store.DisplayPath);
            var list = new List<LayerRef>();
            int i = 0;
            foreach (var l in layers.EnumerateArray())
            {
                string digest = DigestOf(l);
                i++;
                list.Add(new LayerRef($"layer {i} ({digest[..Math.Min(digest.Length, 19)]})", store.Size(digest), digest, () => store.Open(digest)));
            }
            string archName = match.C.Arch != null ? Architecture.FromOci(match.C.Arch, match.C.Variant) : wanted;
            IReadOnlyList<string> env = Array.Empty<string>();
            string? workingDir = null, user = null;
            if (manifest.RootElement.TryGetProperty("config", out var configDescriptor))
            {
                using var config = store.ReadJson(DigestOf(configDescriptor));
                env = EnvOf(config.RootElement);
                (workingDir, user) = (ConfigString(config.RootElement, "WorkingDir"), ConfigString(config.RootElement, "User"));
            }
            events.Verbose($"Using the {archName} image of '{store.DisplayPath}' ({list.Count} layers).");
            return new ImageSource { Kind = kind, Arch = archName, Layers = list, Env = env, WorkingDir = workingDir, User = user };
        }
        finally
        {
            foreach (var d in nested) d.Dispose();
        }
    }

    private static void CollectManifests(IBlobStore store, JsonElement index, List<Candidate> into, List<JsonDocument> keep, int depth)
    {
        if (depth > 4 || !index.TryGetProperty("manifests", out var manifests) || manifests.ValueKind != JsonValueKind.Array) return;
        foreach (var d in manifests.EnumerateArray())
        {
            string? mt = Str(d, "mediaType");
            if (mt is OciIndex or DockerList)
            {
                var child = store.ReadJson(DigestOf(d));
                keep.Add(child);
                CollectManifests(store, child.RootElement, into, keep, depth + 1);
                continue;
            }
            string? arch = null, variant = null, os = null;
            if (d.TryGetProperty("platform", out var p) && p.ValueKind == JsonValueKind.Object)
            {
                arch = Str(p, "architecture"); variant = Str(p, "variant"); os = Str(p, "os");
            }
            into.Add(new Candidate(d, arch, variant, os));
        }
    }

    /// <summary>config.Env of an image config (OCI and docker alike): its "K=V" strings, others skipped.</summary>
    private static IReadOnlyList<string> EnvOf(JsonElement config)
    {
        if (!config.TryGetProperty("config", out var c) || c.ValueKind != JsonValueKind.Object ||
            !c.TryGetProperty("Env", out var env) || env.ValueKind != JsonValueKind.Array) return Array.Empty<string>();
        return env.EnumerateArray().Where(v => v.ValueKind == JsonValueKind.String).Select(v => v.GetString()!)
            .Where(kv => kv.IndexOf('=') > 0 && !kv.Contains('\0')).ToList();
    }

    /// <summary>config.WorkingDir / config.User of an image config: a non-empty string without NUL or newline, else null.</summary>
    private static string? ConfigString(JsonElement config, string name) =>
        config.TryGetProperty("config", out var c) && Str(c, name) is { Length: > 0 } v && v.IndexOfAny(new[] { '\0', '\n', '\r' }) < 0 ? v : null;

    private static string? Str(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static string DigestOf(JsonElement descriptor) =>
        Str(descriptor, "digest") ?? throw new MelangeException(ErrorKind.InvalidData, "CorruptImage", "An image descriptor has no digest.", "Re-create the image.");

    // ---- docker save ----------------------------------------------------------------------

    private static ImageSource FromDocker(ArchiveBlobStore store, string wanted, string displayPath)
    {
        using var doc = store.ReadJson("manifest.json");
        if (doc.RootElement.ValueKind != JsonValueKind.Array || doc.RootElement.GetArrayLength() == 0)
            throw new MelangeException(ErrorKind.InvalidData, "CorruptImage", $"The manifest.json of '{displayPath}' lists no image.", "Re-create the archive with 'docker save'.", displayPath);
        var seen = new List<string>();
        JsonElement? chosen = null;
        string? chosenArch = null;
        IReadOnlyList<string> env = Array.Empty<string>();
        string? workingDir = null, user = null;
        int count = doc.RootElement.GetArrayLength();
        foreach (var img in doc.RootElement.EnumerateArray())
        {
            string? arch = null, variant = null;
            if (Str(img, "Config") is { } cfgPath)
            {
                using var cfg = store.ReadJson(cfgPath);
                arch = Str(cfg.RootElement, "architecture");
                variant = Str(cfg.RootElement, "variant");
                env = EnvOf(cfg.RootElement);
                (workingDir, user) = (ConfigString(cfg.RootElement, "WorkingDir"), ConfigString(cfg.RootElement, "User"));
            }
            if (arch == null && count == 1) { chosen = img; chosenArch = wanted; break; }
            if (arch != null && Architecture.Matches(wanted, arch, variant)) { chosen = img; chosenArch = Architecture.FromOci(arch, variant); break; }
            env = Array.Empty<string>();
            (workingDir, user) = (null, null);
            if (arch != null) seen.Add(Architecture.FromOci(arch, variant));
        }
        if (chosen == null)
            throw new MelangeException(ErrorKind.ObjectNotFound, "ArchitectureNotFound",
                $"The archive '{displayPath}' has no {wanted} image; it has: {(seen.Count == 0 ? "none" : string.Join(", ", seen.Distinct()))}.",
                "Choose one of those with -Arch, or use an image built for this architecture.", displayPath);
        var list = new List<LayerRef>();
        if (chosen.Value.TryGetProperty("Layers", out var layers) && layers.ValueKind == JsonValueKind.Array)
            foreach (var l in layers.EnumerateArray())
            {
                string p = l.GetString() ?? "";
                var m = store.Resolve(p);
                string? digest = p.StartsWith("blobs/sha256/", StringComparison.Ordinal) ? "sha256:" + p["blobs/sha256/".Length..] : null;
                list.Add(new LayerRef(p, m.Length, digest, () => store.OpenMember(m)));
            }
        return new ImageSource { Kind = "docker-archive", Arch = chosenArch!, Layers = list, Env = env, WorkingDir = workingDir, User = user };
    }

    // ---- blob stores ----------------------------------------------------------------------

    internal interface IBlobStore
    {
        string DisplayPath { get; }
        /// <summary>A digest ("sha256:…") or, for a name without ':', a file of the layout.</summary>
        JsonDocument ReadJson(string digestOrName);
        Stream Open(string digest);
        long Size(string digest);
    }

    /// <summary>Validates a digest and turns it into the relative blob path; refuses anything that could name another file.</summary>
    internal static string BlobPath(string digest, string display)
    {
        int colon = digest.IndexOf(':');
        string alg = colon > 0 ? digest[..colon] : "";
        string hex = colon > 0 ? digest[(colon + 1)..] : "";
        bool ok = alg is "sha256" or "sha512" && hex.Length == (alg == "sha256" ? 64 : 128) && hex.AsSpan().IndexOfAnyExcept("0123456789abcdef") < 0;
        if (!ok)
            throw new MelangeException(ErrorKind.InvalidData, "CorruptImage", $"The image '{display}' refers to an invalid digest '{digest}'.", "Re-create the image.", display);
        return "blobs/" + alg + "/" + hex;
    }

    private static JsonDocument ParseJson(Stream s, string what, string display)
    {
        try { return JsonDocument.Parse(s, JsonOptions); }
        catch (JsonException e)
        {
            throw new MelangeException(ErrorKind.InvalidData, "CorruptImage", $"{what} in '{display}' is not valid JSON: {e.Message}", "Re-create the image.", display, e);
        }
    }

    private sealed class DirBlobStore : IBlobStore
    {
        private readonly string _dir;
        public DirBlobStore(string dir) { _dir = dir; DisplayPath = dir; }
        public string DisplayPath { get; }

        private string PathOf(string digestOrName)
        {
            string rel = digestOrName.Contains(':') ? BlobPath(digestOrName, DisplayPath) : digestOrName;
            string p = Path.Combine(_dir, rel);
            if (!File.Exists(p))
                throw new MelangeException(ErrorKind.InvalidData, "CorruptImage", $"The OCI layout '{DisplayPath}' lacks '{rel}'.", "The layout is incomplete; re-create or re-copy it.", DisplayPath);
            return p;
        }

        public JsonDocument ReadJson(string digestOrName)
        {
            string p = PathOf(digestOrName);
            if (new FileInfo(p).Length > MaxJsonSize) throw new MelangeException(ErrorKind.InvalidData, "CorruptImage", $"'{p}' is too large for an image manifest.", "Re-create the image.", DisplayPath);
            using var s = File.OpenRead(p);
            return ParseJson(s, digestOrName, DisplayPath);
        }

        public Stream Open(string digest) => OpenFile(PathOf(digest));
        public long Size(string digest) => new FileInfo(PathOf(digest)).Length;
    }

    internal sealed record ArchiveMember(long PositionAfterHeader, long Length, TarEntryType Type, string LinkName);

    private sealed class ArchiveBlobStore : IBlobStore
    {
        private readonly FileStream _fs;
        private readonly Dictionary<string, ArchiveMember> _members;
        public ArchiveBlobStore(FileStream fs, Dictionary<string, ArchiveMember> members, string display) { _fs = fs; _members = members; DisplayPath = display; }
        public string DisplayPath { get; }

        /// <summary>A member by name, following member symlinks (legacy docker save links duplicate layer.tar files).</summary>
        public ArchiveMember Resolve(string name)
        {
            string? rel = TarPath.Normalize(name, out _);
            for (int hops = 0; rel != null && hops < 8; hops++)
            {
                if (!_members.TryGetValue(rel, out var m)) break;
                if (m.Type is TarEntryType.SymbolicLink or TarEntryType.HardLink)
                {
                    rel = m.Type == TarEntryType.HardLink ? TarPath.Normalize(m.LinkName, out _) : TarPath.ResolveArchiveLink(TarPath.Parent(rel), m.LinkName);
                    continue;
                }
                return m;
            }
            throw new MelangeException(ErrorKind.InvalidData, "CorruptImage", $"The image archive '{DisplayPath}' lacks '{name}'.", "The archive is incomplete; re-create it.", DisplayPath);
        }

        public Stream OpenMember(ArchiveMember m) => new WindowStream(_fs, DataStart(m), m.Length);

        /// <summary>
        /// The offset of a member's data. On a seekable stream, TarReader leaves the position
        /// after the data and its padding (current .NET) or at the data; each candidate is
        /// checked against the size field of the header block just before it.
        /// </summary>
        private long DataStart(ArchiveMember m)
        {
            long padded = (m.Length + 511) / 512 * 512;
            Span<byte> h = stackalloc byte[512];
            foreach (long start in new[] { m.PositionAfterHeader - padded, m.PositionAfterHeader })
            {
                if (start < 512) continue;
                _fs.Position = start - 512;
                if (StreamUtil.ReadFull(_fs, h) != 512) continue;
                if ((h[124] & 0x80) != 0 || Xattrs.ParseOctal(h.Slice(124, 12)) == m.Length) return start;
            }
            throw new MelangeException(ErrorKind.InvalidData, "CorruptImage", $"The image archive '{DisplayPath}' could not be read (a member's data was not found).",
                "Re-create the archive.", DisplayPath);
        }

        public JsonDocument ReadJson(string digestOrName)
        {
            var m = Resolve(digestOrName.Contains(':') ? BlobPath(digestOrName, DisplayPath) : digestOrName);
            if (m.Length > MaxJsonSize) throw new MelangeException(ErrorKind.InvalidData, "CorruptImage", $"'{digestOrName}' is too large for an image manifest.", "Re-create the image.", DisplayPath);
            using var s = OpenMember(m);
            return ParseJson(s, digestOrName, DisplayPath);
        }

        public Stream Open(string digest) => OpenMember(Resolve(BlobPath(digest, DisplayPath)));
        public long Size(string digest) => Resolve(BlobPath(digest, DisplayPath)).Length;
    }
}

/// <summary>Hashes what is read through it, to check a layer blob against its digest.</summary>
internal sealed class DigestCheckingStream : Tar.ReadOnlyWrapper
{
    private readonly Stream _inner;
    private readonly IncrementalHash? _hash;
    private readonly string? _digest;
    private readonly string _what;

    public DigestCheckingStream(Stream inner, string? digest, string what)
    {
        _inner = inner; _digest = digest; _what = what;
        if (digest != null && digest.StartsWith("sha256:", StringComparison.Ordinal)) _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        else if (digest != null && digest.StartsWith("sha512:", StringComparison.Ordinal)) _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA512);
    }

    protected override int ReadCore(Span<byte> buffer)
    {
        int n = _inner.Read(buffer);
        _hash?.AppendData(buffer[..n]);
        return n;
    }

    /// <summary>Reads what is left and compares the digest.</summary>
    public void Verify(CancellationToken ct)
    {
        if (_hash == null) return;
        StreamUtil.Drain(this, ct);
        string actual = Convert.ToHexString(_hash.GetHashAndReset()).ToLowerInvariant();
        if (!_digest!.EndsWith(actual, StringComparison.Ordinal))
            throw new MelangeException(ErrorKind.InvalidData, "DigestMismatch", $"{_what} does not match its digest {_digest} (got {actual}); the image is corrupt.",
                "Re-create or re-download the image.", _digest);
    }

    protected override void Dispose(bool disposing) { if (disposing) { _inner.Dispose(); _hash?.Dispose(); } base.Dispose(disposing); }
}
