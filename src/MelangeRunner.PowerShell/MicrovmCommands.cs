using System.Management.Automation;
using MelangeRunner.Qemu.Initramfs;

namespace MelangeRunner.PowerShell;

/// <summary>New-MelangeInitramfs: melange's GenerateBaseInitramfs, from the host's programs.</summary>
[Cmdlet(VerbsCommon.New, "MelangeInitramfs", HelpUri = Links.Cmdlets + "New-MelangeInitramfs.md")]
[OutputType(typeof(FileInfo))]
public sealed class NewMelangeInitramfsCommand : MelangeCmdlet
{
    /// <summary>The initramfs file to write (a cpio newc archive).</summary>
    [Parameter(Mandatory = true, Position = 0)]
    [Alias("Path")]
    public string OutputPath { get; set; } = "";

    /// <summary>A starting config (Get-MelangeMicrovmConfig's, edited); the other parameters apply over it.</summary>
    [Parameter(ValueFromPipeline = true)]
    public MicrovmConfig? Config { get; set; }

    /// <summary>The architecture (x86_64 or aarch64); it must be the host's. Default: the host's.</summary>
    [Parameter]
    [ArgumentCompleter(typeof(ArchCompleter))]
    public string? Arch { get; set; }

    /// <summary>The init package; only the built-in melange-runner-init exists.</summary>
    [Parameter]
    public string? Package { get; set; }

    /// <summary>APK repositories (accepted for melange compatibility; not used).</summary>
    [Parameter]
    public string[]? Repository { get; set; }

    /// <summary>Debian packages installed on the host, or programs on PATH, to add.</summary>
    [Parameter]
    public string[]? AdditionalPackage { get; set; }

    /// <summary>APK keys (accepted for melange compatibility; not used).</summary>
    [Parameter]
    public string[]? ExtraKey { get; set; }

    /// <summary>A lib/modules/&lt;version&gt; tree whose guest modules to include (default: those of the kernel pods boot).</summary>
    [Parameter]
    public string? KernelModules { get; set; }

    protected override void EndProcessing()
    {
        var output = HostPath(OutputPath);
        var config = MicrovmConfig.Default();
        if (Config is not null)
        {
            config.Package = Config.Package;
            config.Repositories = new List<string>(Config.Repositories);
            config.AdditionalPackages = new List<string>(Config.AdditionalPackages);
            config.ExtraKeys = new List<string>(Config.ExtraKeys);
        }
        if (!string.IsNullOrEmpty(Package)) config.Package = Package;
        if (Repository != null) config.Repositories.AddRange(Repository);
        if (AdditionalPackage != null) config.AdditionalPackages.AddRange(AdditionalPackage);
        if (ExtraKey != null) config.ExtraKeys.AddRange(ExtraKey);
        var modules = string.IsNullOrEmpty(KernelModules) ? null : HostPath(KernelModules);
        if (modules != null && !Directory.Exists(modules))
        {
            WriteEngineError(new MelangeException(ErrorKind.ObjectNotFound, "KernelModulesNotFound",
                $"The kernel modules directory '{modules}' does not exist.",
                "Give the lib/modules/<version> directory of the guest kernel, or omit -KernelModules.", modules), modules);
            return;
        }
        try
        {
            var arch = string.IsNullOrEmpty(Arch) ? Images.Architecture.Host : Arch;
            RunEngine((events, ct) => InitramfsBuilder.GenerateBaseAsync(arch, config, modules ?? InitramfsBuilder.ModulesOfBootedKernel(arch, events), output, events, ct));
            WriteObject(new FileInfo(output));
        }
        catch (Exception e) when (IsReportable(e))
        {
            WriteEngineError(e, output);
        }
    }
}

/// <summary>Get-MelangeMicrovmConfig: melange's DefaultMicrovmConfig.</summary>
[Cmdlet(VerbsCommon.Get, "MelangeMicrovmConfig", HelpUri = Links.Cmdlets + "Get-MelangeMicrovmConfig.md")]
[OutputType(typeof(MicrovmConfig))]
public sealed class GetMelangeMicrovmConfigCommand : PSCmdlet
{
    protected override void EndProcessing() => WriteObject(MicrovmConfig.Default());
}
