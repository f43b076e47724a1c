using System.Formats.Tar;
using MelangeRunner.Tar;

namespace MelangeRunner.Images;

/// <summary>
/// Writes the layers of an image as one flattened tar, streaming.
/// Pass 1 reads the headers of layers 2..n to learn what each upper layer hides (entries at
/// the same path, whiteouts, opaque directories, non-directories over directories); pass 2
/// streams every surviving entry of every layer, in layer order, to the output. A single-layer
/// image needs no pass 1. Memory holds paths only, never file contents.
/// </summary>
internal static class Flattener
{
    // For a path: the highest layer that has an entry (or a whiteout) at it, and the highest
    // layer that hides everything below it (whiteout, opaque marker, or a non-directory entry).
    private struct Mask
    { public int Self; public int Children; }

    public static void Run(IReadOnlyList<LayerRef> layers, Stream output, Func<ExpansionBudget> newBudget, IEventSink events, CancellationToken ct)
    {
        var masks = new Dictionary<string, Mask>(StringComparer.Ordinal);
        if (layers.Count > 1)
        {
            var scan = new ProgressTracker(events, layers.Skip(1).ToList(), "Scanning");
            var scanBudget = newBudget(); // each pass reads the layers once, and is bounded once
            for (int i = 1; i < layers.Count; i++)
            {
                scan.StartLayer(layers[i]);
                int layerIndex = i;
                ImageImporter.WithLayer(layers[i], scan, scanBudget, ct, tar => ScanLayer(tar, layerIndex, masks, ct));
            }
        }

        var writer = new PaxWriter(output);
        var state = new EmitState();
        var progress = new ProgressTracker(events, layers, "Flattening");
        var budget = newBudget();
        for (int i = 0; i < layers.Count; i++)
        {
            progress.StartLayer(layers[i]);
            int layerIndex = i;
            ImageImporter.WithLayer(layers[i], progress, budget, ct, tar => EmitLayer(tar, layerIndex, masks, writer, state, events, ct));
        }
        writer.Finish();
        progress.Complete();
    }

    /// <summary>
    /// Pass 1 for one upper layer. Names go through the same rule as in pass 2 (and in the
    /// extractor), so that a refused name masks nothing: a whiteout ".wh..." never names the
    /// parent directory.
    /// </summary>
    private static void ScanLayer(Stream tar, int layer, Dictionary<string, Mask> masks, CancellationToken ct)
    {
        var recorder = new RecordingStream(tar);
        using var reader = new TarReader(recorder, leaveOpen: true);
        TarEntry? e = null;
        while ((e = TarEntries.Next(reader, recorder, e, ct)) != null)
        {
            ct.ThrowIfCancellationRequested();
            if (e.EntryType == TarEntryType.GlobalExtendedAttributes) continue;
            string? rel = TarPath.EntryName(e, recorder, out _);
            if (rel == null) continue;
            switch (TarPath.Whiteout(rel, out string target, out _))
            {
                case TarPath.WhiteoutKind.Opaque: Raise(masks, target, layer, self: false, children: true); break;
                case TarPath.WhiteoutKind.Entry: Raise(masks, target, layer, self: true, children: true); break;
                case TarPath.WhiteoutKind.Meta: break; // aufs metadata, or a refused whiteout: hides nothing
                default: if (rel.Length > 0) Raise(masks, rel, layer, self: true, children: e.EntryType != TarEntryType.Directory); break;
            }
        }
    }

    private static void Raise(Dictionary<string, Mask> masks, string rel, int layer, bool self, bool children)
    {
        masks.TryGetValue(rel, out var m);
        if (self) m.Self = Math.Max(m.Self, layer);
        if (children) m.Children = Math.Max(m.Children, layer);
        masks[rel] = m;
    }

    /// <summary>Whether a higher layer than <paramref name="layer"/> replaces or deletes the path.</summary>
    private static bool Hidden(Dictionary<string, Mask> masks, string rel, int layer)
    {
        if (masks.Count == 0) return false;
        if (masks.TryGetValue(rel, out var m) && m.Self > layer) return true;
        for (string p = rel; p.Length > 0;)
        {
            p = TarPath.Parent(p);
            if (masks.TryGetValue(p, out var a) && a.Children > layer) return true;
        }
        return false;
    }

    private sealed class EmitState
    {
        // What the flattened output holds so far, to refuse paths through symlinks and dangling hard links.
        public readonly HashSet<string> Symlinks = new(StringComparer.Ordinal);
        public readonly HashSet<string> LinkTargets = new(StringComparer.Ordinal);
    }

    private static bool ThroughSymlink(EmitState s, string rel, out string via)
    {
        via = "";
        if (s.Symlinks.Count == 0) return false;
        for (string p = TarPath.Parent(rel); p.Length > 0; p = TarPath.Parent(p))
            if (s.Symlinks.Contains(p)) { via = p; return true; }
        return false;
    }

    private static void EmitLayer(Stream tar, int layer, Dictionary<string, Mask> masks, PaxWriter writer, EmitState state, IEventSink events, CancellationToken ct)
    {
        var recorder = new RecordingStream(tar);
        using var reader = new TarReader(recorder, leaveOpen: true);
        TarEntry? e = null;
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            e = TarEntries.Next(reader, recorder, e, ct);
            if (e == null) break;
            var type = e.EntryType;
            if (type == TarEntryType.GlobalExtendedAttributes) continue;
            string shown = TarExtractor.Printable(e.Name);
            string? rel = TarPath.EntryName(e, recorder, out string? reason);
            if (rel == null) { events.Warning($"Skipped tar entry '{shown}': {reason}."); continue; }
            var whiteout = TarPath.Whiteout(rel, out _, out string? refused);
            if (refused != null) { events.Warning($"Skipped tar entry '{shown}': {refused}."); continue; }
            if (whiteout != TarPath.WhiteoutKind.None) continue; // resolved in pass 1
            // "./": the root is the guest's (its init makes it root-owned 0755 for sshd), never the tar's.
            if (rel.Length == 0)
            {
                if (type != TarEntryType.Directory) events.Warning($"Skipped tar entry '{shown}': it would replace the root directory.");
                continue;
            }
            if (Hidden(masks, rel, layer)) continue;
            if (ThroughSymlink(state, rel, out string via)) { events.Warning($"Skipped tar entry '{shown}': its parent '{via}' is a symlink."); continue; }

            byte flag;
            switch (type)
            {
                case TarEntryType.Directory: flag = PaxWriter.Directory; break;
                case TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile: flag = PaxWriter.File; break;
                case TarEntryType.SymbolicLink: flag = PaxWriter.Symlink; break;
                case TarEntryType.HardLink: flag = PaxWriter.HardLink; break;
                case TarEntryType.Fifo: flag = PaxWriter.Fifo; break;
                case TarEntryType.CharacterDevice: flag = PaxWriter.CharDevice; break;
                case TarEntryType.BlockDevice: flag = PaxWriter.BlockDevice; break;
                default: events.Warning($"Skipped tar entry '{shown}': its type ({type}) is not supported."); continue;
            }

            string? link = null;
            if (flag == PaxWriter.HardLink)
            {
                link = TarPath.HardLinkTarget(e, recorder, out string? lr);
                if (link == null) { events.Warning($"Skipped tar entry '{shown}': {lr}."); continue; }
                if (!state.LinkTargets.Contains(link)) { events.Warning($"Skipped tar entry '{shown}': it is a hard link to '{TarExtractor.Printable(e.LinkName)}', which is not in the image before it."); continue; }
            }
            else if (flag == PaxWriter.Symlink)
            {
                link = TarPath.SymlinkTarget(e, recorder, out string? sr);
                if (link == null) { events.Warning($"Skipped tar entry '{shown}': {sr}."); continue; }
            }

            var posix = e as PosixTarEntry;
            var (sec, ns) = TarExtractor.UnixTime(e.ModificationTime);
            var h = new TarHeaderInfo
            {
                Name = rel,
                TypeFlag = flag,
                Mode = (uint)e.Mode,
                Uid = (uint)e.Uid,
                Gid = (uint)e.Gid,
                UName = posix != null && posix.UserName.Length > 0 ? posix.UserName : null,
                GName = posix != null && posix.GroupName.Length > 0 ? posix.GroupName : null,
                Size = flag == PaxWriter.File ? e.Length : 0,
                MTimeSeconds = sec,
                MTimeNanoseconds = ns,
                LinkName = link,
                DevMajor = posix != null ? (uint)posix.DeviceMajor : 0,
                DevMinor = posix != null ? (uint)posix.DeviceMinor : 0,
                Xattrs = Xattrs.Get(e, recorder, out bool lossy),
            };
            if (h.Xattrs?.RemoveAll(x => x.Key.Length == 0 || x.Key.Contains('\0')) > 0)
                events.Warning($"Tar entry '{shown}': skipped an extended attribute whose name is empty or contains a NUL byte.");
            if (lossy) events.Warning($"Tar entry '{shown}': a binary extended attribute value could not be recovered exactly.");
            writer.WriteEntry(h, e.DataStream, ct);

            if (flag == PaxWriter.Symlink) state.Symlinks.Add(rel);
            else state.Symlinks.Remove(rel);
            if (flag != PaxWriter.Directory) state.LinkTargets.Add(rel);
        }
    }
}
