using System.Runtime.InteropServices;

namespace MelangeRunner.Native;

/// <summary>The process's own ids (Libc.IsRoot only says whether the effective uid is 0).</summary>
internal static class Ids
{
    [DllImport("libc", EntryPoint = "geteuid")]
    private static extern uint geteuid_();

    public static uint EffectiveUid => geteuid_();
}
