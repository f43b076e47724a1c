using System.Text.Json;
using MelangeRunner.Bubblewrap;
using MelangeRunner.Native;
using MelangeRunner.Qemu;

namespace MelangeRunner.Images;

/// <summary>
/// The imported images on disk: each private image directory (melange-guest-XXXX,
/// melange-rootfs-XXXX in the temp directory) carries an image.json written when its import
/// completed, so that a later session can list the image again (Get-MelangeImage) and remove it.
/// </summary>
/// <remarks>
/// Security rule: only directories that are still private to the current user are listed (a real
/// directory, not a symlink, owned by us, no group or other bit). Another user's directory, or one
/// that was widened, is never offered for use or removal. The Ref is rebuilt from the directory's
/// known layout; the metadata file cannot point anywhere else.
/// </remarks>
public static class ImageCatalog
{
    public const string MetadataFileName = "image.json";
    private const int MetadataVersion = 1;
    private const int MaxMetadataBytes = 1 << 20;

    private sealed record Layout(string Prefix, string Runner, string RefName, bool RefIsDirectory);

    private static readonly Layout[] Layouts =
    {
        new(BubblewrapRunner.PrivateDirPrefix, Runners.Bubblewrap, BubblewrapRunner.RootfsDirName, true),
        new(QemuImageLoader.PrivateDirPrefix, Runners.Qemu, QemuImageLoader.TarName, false),
    };

    private sealed record Metadata(int Version, string? Runner, string? Arch, string? Source, string? SourceKind, string[]? Env, DateTimeOffset ImportedAt);

    // Written and read by hand: JsonSerializer's reflection start-up cost every import ~15 MiB of
    // resident memory and a noticeable first call, for seven fields.
    private static void Write(Stream stream, Metadata m)
    {
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        w.WriteNumber(nameof(m.Version), m.Version);
        w.WriteString(nameof(m.Runner), m.Runner);
        w.WriteString(nameof(m.Arch), m.Arch);
        w.WriteString(nameof(m.Source), m.Source);
        w.WriteString(nameof(m.SourceKind), m.SourceKind);
        w.WriteStartArray(nameof(m.Env));
        foreach (var e in m.Env ?? Array.Empty<string>()) w.WriteStringValue(e);
        w.WriteEndArray();
        w.WriteString(nameof(m.ImportedAt), m.ImportedAt);
        w.WriteEndObject();
    }

    private static Metadata Read(byte[] bytes)
    {
        using var doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 8 });
        var r = doc.RootElement;
        if (r.ValueKind != JsonValueKind.Object) throw new JsonException("not an object");
        string? Str(string name) => r.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;
        var version = r.TryGetProperty(nameof(Metadata.Version), out var ver) && ver.ValueKind == JsonValueKind.Number && ver.TryGetInt32(out var n) ? n : 0;
        var env = r.TryGetProperty(nameof(Metadata.Env), out var e) && e.ValueKind == JsonValueKind.Array
            ? e.EnumerateArray().Where(x => x.ValueKind == JsonValueKind.String).Select(x => x.GetString()!).ToArray()
            : null;
        var at = r.TryGetProperty(nameof(Metadata.ImportedAt), out var t) && t.ValueKind == JsonValueKind.String && t.TryGetDateTimeOffset(out var d) ? d : default;
        return new Metadata(version, Str(nameof(Metadata.Runner)), Str(nameof(Metadata.Arch)), Str(nameof(Metadata.Source)), Str(nameof(Metadata.SourceKind)), env, at);
    }

    /// <summary>Writes image.json (0600) into the private directory of a completed import.</summary>
    internal static void WriteMetadata(string privateDirectory, ImageInfo image)
    {
        var metadata = new Metadata(MetadataVersion, image.Runner, image.Arch, image.Source, image.SourceKind, image.Env, DateTimeOffset.UtcNow);
        var path = Path.Combine(privateDirectory, MetadataFileName);
        var mode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        using (var stream = new FileStream(path, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = mode }))
            Write(stream, metadata);
        File.SetUnixFileMode(path, mode);
    }

    /// <summary>
    /// The images whose private directories are in <paramref name="tempDirectory"/> (default: the
    /// temp directory imports use), oldest import first. Directories that are not listed, and why,
    /// go to the verbose stream: no metadata (an import in progress, or one made by an older
    /// version), not owned by the current user, not private, or an unreadable metadata file.
    /// </summary>
    public static IReadOnlyList<ImageInfo> List(IEventSink events, string? tempDirectory = null)
    {
        var root = tempDirectory ?? Path.GetTempPath();
        var found = new List<(DateTimeOffset At, ImageInfo Image)>();
        IEnumerable<string> candidates;
        try
        {
            candidates = Directory.EnumerateFileSystemEntries(root).Order(StringComparer.Ordinal).ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            events.Verbose($"Cannot list {root}: {e.Message}");
            return Array.Empty<ImageInfo>();
        }
        foreach (var dir in candidates)
        {
            var name = Path.GetFileName(dir);
            var layout = Layouts.FirstOrDefault(l => name.StartsWith(l.Prefix, StringComparison.Ordinal));
            if (layout is null) continue;
            if (TryRead(dir, layout, out var at, out var image, out var why)) found.Add((at, image!));
            else events.Verbose($"Skipped {dir}: {why}");
        }
        return found.OrderBy(f => f.At).Select(f => f.Image).ToList();
    }

    private static bool TryRead(string dir, Layout layout, out DateTimeOffset importedAt, out ImageInfo? image, out string why)
    {
        importedAt = default;
        image = null;
        var status = Libc.LStat(dir);
        if (status is not { IsDirectory: true }) { why = "not a directory"; return false; }
        if (status.Value.Uid != Ids.EffectiveUid) { why = $"owned by uid {status.Value.Uid}, not by you"; return false; }
        if ((status.Value.Permissions & 0x3F) != 0) { why = "other users can enter it (it is not 0700)"; return false; }

        var metadataPath = Path.Combine(dir, MetadataFileName);
        var file = Libc.LStat(metadataPath);
        if (file is null) { why = $"no {MetadataFileName} (an import in progress, or one made before images were recorded)"; return false; }
        if (!file.Value.IsRegular || file.Value.Uid != Ids.EffectiveUid || file.Value.Size > MaxMetadataBytes)
        {
            why = $"{MetadataFileName} is not a regular file of yours of ordinary size";
            return false;
        }
        Metadata? metadata;
        try
        {
            metadata = Read(File.ReadAllBytes(metadataPath));
        }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException)
        {
            why = $"{MetadataFileName} cannot be read: {e.Message}";
            return false;
        }
        if (metadata is not { Version: MetadataVersion } || metadata.Runner != layout.Runner || string.IsNullOrEmpty(metadata.Arch))
        {
            why = $"{MetadataFileName} is not version {MetadataVersion} metadata of a {layout.Runner} image";
            return false;
        }
        var reference = Path.Combine(dir, layout.RefName);
        var refStatus = Libc.LStat(reference);
        if (refStatus is null || (layout.RefIsDirectory ? !refStatus.Value.IsDirectory : !refStatus.Value.IsRegular))
        {
            why = $"its {layout.RefName} is missing";
            return false;
        }
        importedAt = metadata.ImportedAt;
        image = new ImageInfo
        {
            Runner = layout.Runner,
            Ref = reference,
            Arch = metadata.Arch!,
            Source = metadata.Source ?? "",
            SourceKind = metadata.SourceKind,
            Env = metadata.Env ?? Array.Empty<string>(),
        };
        why = "";
        return true;
    }
}
