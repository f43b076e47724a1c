<#
.SYNOPSIS
Peak memory of a pwsh process importing one layer: run in a fresh process (Invoke-Benchmarks
runs it under /usr/bin/time -v for the whole process's peak RSS).

.DESCRIPTION
Imports the module, warms it up on a tiny layer, then resets the kernel's peak-RSS mark
(writing 5 to /proc/self/clear_refs), records VmRSS as the baseline, imports -Path with
-Runner bubblewrap, and reads VmHWM: the growth is VmHWM - baseline. Writes one JSON line.
#>
param(
    [Parameter(Mandatory)][string]$Path,
    [Parameter(Mandatory)][string]$WarmUpLayer
)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
$ProgressPreference = 'SilentlyContinue'
Import-Module (Join-Path $PSScriptRoot '../MelangeRunner.psd1')

function Get-StatusKiB([string]$Field) {
    $line = [IO.File]::ReadAllLines('/proc/self/status') | Where-Object { $_ -like "${Field}:*" }
    [long](($line -split '\s+')[1])
}

# Warm-up: load and JIT the import path on a tiny layer, so the baseline includes the module.
Import-MelangeImage -Path $WarmUpLayer -Runner bubblewrap | Remove-MelangeImage -Confirm:$false
$peakBeforeReset = Get-StatusKiB VmHWM
$fs = [IO.FileStream]::new('/proc/self/clear_refs', [IO.FileMode]::Open, [IO.FileAccess]::Write)
$fs.Write([byte[]](0x35), 0, 1); $fs.Dispose()
$baseline = Get-StatusKiB VmRSS
$img = Import-MelangeImage -Path $Path -Runner bubblewrap
$peak = Get-StatusKiB VmHWM
$img | Remove-MelangeImage -Confirm:$false
[pscustomobject]@{
    PeakBeforeImportKiB = $peakBeforeReset
    BaselineKiB         = $baseline
    PeakDuringImportKiB = $peak
    GrowthKiB           = $peak - $baseline
} | ConvertTo-Json -Compress
