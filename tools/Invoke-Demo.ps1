<#
.SYNOPSIS
A demo build in a bubblewrap pod, on a busybox image made here, ending with the exported
melange-out tree listed.
#>
[CmdletBinding()]
param(
    [string]$WorkRoot = (Join-Path ([IO.Path]::GetTempPath()) "melange-demo-$PID")
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
Import-Module (Join-Path $PSScriptRoot '../MelangeRunner.psd1') -Force

$null = New-Item -ItemType Directory -Force -Path $WorkRoot
$img = $null
$pod = $null
try {
    Write-Host "== Making a busybox rootfs layer"
    $layer = & (Join-Path $PSScriptRoot 'New-DemoRootfs.ps1') -OutputPath (Join-Path $WorkRoot 'rootfs.tar.gz')
    Write-Host "   $($layer.FullName) ($([math]::Round($layer.Length / 1KB)) KiB)"

    Write-Host "== Importing it for bubblewrap"
    $img = Import-MelangeImage -Path $layer.FullName -Runner bubblewrap
    $img | Format-Table | Out-Host

    Write-Host "== Starting a pod"
    $pod = $img | Start-MelangePod -WorkspaceDir (Join-Path $WorkRoot 'ws') -Environment @{ SOURCE_DATE_EPOCH = '0' }
    $pod | Get-MelangeReleaseData | Format-Table | Out-Host

    Write-Host "== Building 'hello' in the pod (as the build user)"
    $script = @'
set -eu
echo "building as $(id -un) (uid $(id -u)) in $(pwd) on $(uname -m)"
mkdir -p melange-out/hello/usr/bin melange-out/hello/usr/share/doc/hello
cat > melange-out/hello/usr/bin/hello <<'SH'
#!/bin/sh
echo "Hello from a MelangeRunner pod"
SH
chmod 0755 melange-out/hello/usr/bin/hello
ln -s hello melange-out/hello/usr/bin/hi
echo "built at epoch ${SOURCE_DATE_EPOCH}" > melange-out/hello/usr/share/doc/hello/README
melange-out/hello/usr/bin/hello
'@
    $pod | Invoke-MelangePod -Command sh, -c, $script | ForEach-Object { "   | $_" } | Out-Host

    Write-Host "== Exporting melange-out"
    $out = $pod | Export-MelangeWorkspace -Destination (Join-Path $WorkRoot 'out')
    Get-ChildItem -LiteralPath $out.FullName -Recurse -Force |
        Sort-Object FullName |
        ForEach-Object {
            $rel = [IO.Path]::GetRelativePath($out.FullName, $_.FullName)
            $target = if ($_.LinkTarget) { " -> $($_.LinkTarget)" } else { '' }
            '   {0} {1}{2}' -f $_.UnixMode, $rel, $target
        } | Out-Host
} finally {
    if ($pod) { $pod | Stop-MelangePod }
    if ($img) { $img | Remove-MelangeImage -Confirm:$false }
    Remove-Item -LiteralPath $WorkRoot -Recurse -Force -ErrorAction Ignore
}
