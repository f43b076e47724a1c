using System.Diagnostics;
using System.Formats.Tar;
using MelangeRunner.Native;

namespace MelangeRunner.Tests.Tar;

/// <summary>A temporary directory removed after the test (read-only directories included).</summary>
public sealed class TempTree : IDisposable
{
    public TempTree()
    {
        Root = Path.Combine(Path.GetTempPath(), "mr-test-" + Guid.NewGuid().ToString("N")[..10]);
        Directory.CreateDirectory(Root);
    }

    public string Root { get; }

    public string Dir(string name)
    {
        string p = Path.Combine(Root, name);
        Directory.CreateDirectory(p);
        return p;
    }

    public string PathOf(string name) => Path.Combine(Root, name);

    public void Dispose()
    {
        TarTestUtil.Run("chmod", "-R", "u+rwx", Root);
        try { Directory.Delete(Root, true); } catch (IOException) { }
    }
}

public sealed class CollectingSink : IEventSink
{
    public List<string> Warnings { get; } = new();
    public List<string> VerboseLines { get; } = new();
    public List<ProgressReport> Reports { get; } = new();
    public void Verbose(string message) { lock (this) VerboseLines.Add(message); }
    public void Warning(string message) { lock (this) Warnings.Add(message); }
    public void Progress(ProgressReport report) { lock (this) Reports.Add(report); }
    public void StandardOutput(string line) { }
    public void StandardError(string line) { }
}

public static class TarTestUtil
{
    public static bool IsRoot => Libc.IsRoot;

    /// <summary>Builds a PAX tar in memory with the given entries.</summary>
    public static byte[] BuildTar(Action<TarWriter> build)
    {
        var ms = new MemoryStream();
        using (var w = new TarWriter(ms, TarEntryFormat.Pax, leaveOpen: true)) build(w);
        return ms.ToArray();
    }

    public static void File(this TarWriter w, string name, string content, UnixFileMode mode = (UnixFileMode)0x1A4, int uid = 0, int gid = 0, IEnumerable<KeyValuePair<string, string>>? pax = null)
    {
        var e = pax == null ? new PaxTarEntry(TarEntryType.RegularFile, name) : new PaxTarEntry(TarEntryType.RegularFile, name, pax);
        e.Mode = mode; e.Uid = uid; e.Gid = gid; e.ModificationTime = new DateTimeOffset(2020, 1, 2, 3, 4, 5, TimeSpan.Zero);
        e.DataStream = new MemoryStream(System.Text.Encoding.UTF8.GetBytes(content));
        w.WriteEntry(e);
    }

    public static void Dir(this TarWriter w, string name, UnixFileMode mode = (UnixFileMode)0x1ED, int uid = 0, int gid = 0) =>
        w.WriteEntry(new PaxTarEntry(TarEntryType.Directory, name) { Mode = mode, Uid = uid, Gid = gid, ModificationTime = new DateTimeOffset(2021, 6, 7, 8, 9, 10, TimeSpan.Zero) });

    public static void Symlink(this TarWriter w, string name, string target) =>
        w.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, name) { LinkName = target, Mode = (UnixFileMode)0x1FF });

    public static void HardLink(this TarWriter w, string name, string target) =>
        w.WriteEntry(new PaxTarEntry(TarEntryType.HardLink, name) { LinkName = target, Mode = (UnixFileMode)0x1A4 });

    public static (int Code, string Out, string Err) Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, o.Result, e);
    }

    public static void MustRun(string file, params string[] args)
    {
        var (code, o, e) = Run(file, args);
        if (code != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)} exited {code}: {o}{e}");
    }

    /// <summary>A dir listing "path type mode uid:gid [target|content-length]" for comparisons.</summary>
    public static List<string> Describe(string root)
    {
        var list = new List<string>();
        void Walk(string dir)
        {
            foreach (var p in Directory.GetFileSystemEntries(dir))
            {
                var st = Libc.LStat(p)!.Value;
                string rel = Path.GetRelativePath(root, p);
                string extra = st.IsSymlink ? "-> " + Libc.ReadLink(p) : st.IsRegular ? System.IO.File.ReadAllText(p) : "";
                list.Add($"{rel} {st.FileType:x} {Convert.ToString(st.Permissions, 8)} {st.Uid}:{st.Gid} {extra}");
                if (st.IsDirectory) Walk(p);
            }
        }
        Walk(root);
        list.Sort(StringComparer.Ordinal);
        return list;
    }
}
