using System.Diagnostics;

namespace MelangeRunner.HostProcess;

/// <summary>
/// Starts a long-lived helper (qemu, virtiofsd) in a session of its own, through util-linux's
/// <c>setsid</c>. A terminal's Ctrl+C signals its whole foreground process group, which holds
/// every child that pwsh started: without this, Ctrl+C on any command at the prompt would end
/// (qemu: "terminating on signal 2") the VMs of every pod the session holds. setsid execs the
/// program in the same process (a child of .NET is never a group leader), so the pid is the
/// program's. Ending these processes stays with the module (and the reaper).
/// </summary>
internal static class OwnSession
{
    private static readonly Lazy<string?> Setsid = new(() => HostCommand.FindOnPath("setsid"));

    /// <summary>Rewrites <paramref name="start"/> to run its program under setsid, when setsid exists.</summary>
    public static ProcessStartInfo Apply(ProcessStartInfo start)
    {
        if (Setsid.Value is not { } setsid) return start;
        var args = new List<string> { start.FileName };
        args.AddRange(start.ArgumentList);
        start.FileName = setsid;
        start.ArgumentList.Clear();
        foreach (var a in args) start.ArgumentList.Add(a);
        return start;
    }
}
