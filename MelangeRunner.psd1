@{
    RootModule           = 'bin/MelangeRunner.PowerShell.dll'
    ModuleVersion        = '0.1.0'
    GUID                 = '5d0b7c0e-8a61-4f4e-9d0c-3f2b6f1b7a41'
    Author               = 'MelangeRunner developers'
    CompanyName          = 'MelangeRunner'
    Copyright            = '(c) MelangeRunner developers. Apache-2.0.'
    Description          = "melange's container runners (bubblewrap sandbox, qemu microVM) as PowerShell cmdlets: import an image, start a pod, run build steps with live output, export the workspace."
    PowerShellVersion    = '7.4'
    CompatiblePSEditions = @('Core')
    FormatsToProcess     = @('MelangeRunner.format.ps1xml')
    CmdletsToExport      = @(
        'Get-MelangeRunner'
        'Test-MelangeRunner'
        'New-MelangePodConfig'
        'Import-MelangeImage'
        'Remove-MelangeImage'
        'Get-MelangePodPlan'
        'Start-MelangePod'
        'Invoke-MelangePod'
        'Enter-MelangePod'
        'Export-MelangeWorkspace'
        'Get-MelangeReleaseData'
        'Stop-MelangePod'
        'New-MelangeInitramfs'
        'Get-MelangeMicrovmConfig'
        'Get-MelangePod'
        'Get-MelangeImage'
    )
    FunctionsToExport    = @()
    AliasesToExport      = @()
    VariablesToExport    = @()
    PrivateData          = @{
        PSData = @{
            Tags         = @('melange', 'bubblewrap', 'qemu', 'apk', 'build', 'sandbox', 'Linux')
            LicenseUri   = 'https://www.apache.org/licenses/LICENSE-2.0'
            # The same address as Links.Project in src/MelangeRunner.PowerShell/Links.cs (the cmdlets' HelpUri); Help.Tests.ps1 checks it.
            ProjectUri   = 'https://github.com/melange-runner/MelangeRunner'
            ReleaseNotes = @'
0.1.0
- Get-MelangePod lists the pods of the session; Get-MelangeImage lists imported images, including those an earlier session left on disk (Get-MelangeImage | Remove-MelangeImage cleans up).
- Sizes take PowerShell numbers (-Memory 4GB); positional binding (Start-MelangePod $img, Stop-MelangePod $pod, Export-MelangeWorkspace $pod ./out); Stop-MelangePod -PassThru; wildcards on Get-MelangeRunner -Name and Get-MelangePod -Id; Import-MelangeImage -Path expands wildcards, -LiteralPath does not.
- Tab completion for -Arch, -CapAdd/-CapDrop, -RunAs (the image's users), -Memory/-Disk, pod ids and -Pod.
- Get-Help about_MelangeRunner; HelpUri on every cmdlet.
'@
        }
    }
}
