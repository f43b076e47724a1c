namespace MelangeRunner.PowerShell;

/// <summary>
/// The project's web address, defined once: every cmdlet's HelpUri is its page under
/// docs/cmdlets, and MelangeRunner.psd1's ProjectUri is <see cref="Project"/> (a Pester test
/// checks that the two agree).
/// </summary>
internal static class Links
{
    public const string Project = "https://github.com/melange-runner/MelangeRunner";
    public const string Cmdlets = Project + "/blob/main/docs/cmdlets/";
}
