using MelangeRunner.HostProcess;

namespace MelangeRunner.Qemu;

/// <summary>
/// The pod's scratch disk: a sparse file, formatted as ext4 on the host when e2fsprogs is
/// installed. mke2fs takes tens of milliseconds natively and over half a second under TCG in
/// the guest; the guest formats the disk itself when the host could not (melange.scratch= on
/// the kernel command line says which).
/// </summary>
internal static class ScratchDisk
{
    /// <summary>The options of both formatters: inode tables and journal are initialised lazily (the disk is sparse).</summary>
    public static readonly string[] FormatOptions = { "-t", "ext4", "-F", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1" };

    /// <summary>The host's mke2fs, or null (Debian keeps it in /sbin, which is not on a user's PATH).</summary>
    public static string? HostFormatter() =>
        new[] { "/sbin/mke2fs", "/usr/sbin/mke2fs" }.FirstOrDefault(File.Exists) ?? HostCommand.FindOnPath("mke2fs");

    /// <summary>Creates the sparse disk in <paramref name="directory"/> and formats it if the host can.</summary>
    /// <returns>The disk's path, and whether it is formatted.</returns>
    public static (string Path, bool Formatted) Create(string directory, string size, IEventSink events)
    {
        var bytes = SizeParser.ParseToKiB(size, "disk size") * Units.KB;
        Directory.CreateDirectory(directory);
        var path = System.IO.Path.Combine(directory, $"melange-disk-{Guid.NewGuid():N}.img");
        using (var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
            file.SetLength(bytes); // sparse: no blocks are written
        try
        {
            return (path, Format(path, events));
        }
        catch
        {
            File.Delete(path);
            throw;
        }
    }

    private static bool Format(string path, IEventSink events)
    {
        if (HostFormatter() is not { } mke2fs)
        {
            events.Verbose("No mke2fs on the host (e2fsprogs): the guest formats the scratch disk.");
            return false;
        }
        var arguments = FormatOptions.Append(path).ToArray();
        events.Verbose("Running: " + ShellQuote.Join(arguments.Prepend(mke2fs)));
        var (code, output) = HostCommand.Capture(mke2fs, arguments);
        if (code == 0) return true;
        events.Verbose($"mke2fs exited with {code} ({output.Trim()}): the guest formats the scratch disk.");
        return false;
    }
}
