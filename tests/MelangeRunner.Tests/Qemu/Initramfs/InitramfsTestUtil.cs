using System.Diagnostics;
using MelangeRunner.Native;

namespace MelangeRunner.Tests.Initramfs;

internal sealed class InitramfsTemp : IDisposable
{
    public string Root { get; } = Directory.CreateTempSubdirectory("melange-initramfs-test-").FullName;
    public string PathOf(string rel) => Path.Combine(Root, rel);
    public void Dispose()
    {
        try { Run("chmod", "-R", "u+rwX", Root); Directory.Delete(Root, true); } catch (Exception) { }
    }

    public static (int Code, string Out, string Err) Run(string file, params string[] args) => RunIn(null, null, file, args);

    public static (int Code, string Out, string Err) RunIn(string? dir, byte[]? stdin, string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = stdin != null, UseShellExecute = false };
        if (dir != null) psi.WorkingDirectory = dir;
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["LC_ALL"] = "C";
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var outp = p.StandardOutput.ReadToEndAsync();
        if (stdin != null) { p.StandardInput.BaseStream.Write(stdin); p.StandardInput.Close(); }
        p.WaitForExit();
        return (p.ExitCode, outp.Result, err.Result);
    }

    /// <summary>Names listed by cpio -it for an archive (the first one in the bytes).</summary>
    public static List<string> CpioList(byte[] archive)
    {
        var (code, o, e) = RunIn(null, archive, "cpio", "-it", "--quiet");
        if (code != 0) throw new Exception("cpio -it failed: " + e);
        return o.Split('\n', StringSplitOptions.RemoveEmptyEntries).ToList();
    }

    public static bool HasCpio => File.Exists("/usr/bin/cpio") || File.Exists("/bin/cpio");
    public static bool IsRoot => Libc.IsRoot;
}

internal sealed class RecordingSink : IEventSink
{
    public List<string> Verbose { get; } = new();
    public List<string> Warnings { get; } = new();
    void IEventSink.Verbose(string message) { lock (Verbose) Verbose.Add(message); }
    public void Warning(string message) { lock (Warnings) Warnings.Add(message); }
    public void Progress(ProgressReport report) { }
    public void StandardOutput(string line) { }
    public void StandardError(string line) { }
}
