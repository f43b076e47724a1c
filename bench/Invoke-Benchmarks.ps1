<#
.SYNOPSIS
Runs MelangeRunner's benchmarks against the raw tools and writes the results into
docs/benchmarks.md.

.DESCRIPTION
Called by `dotnet pwsh ./build.ps1 Bench` after the build (it expects bin/ to be built).

1. Pod exec overhead (bench/exec-overhead.ps1): -ExecCount x `Invoke-MelangePod true` in this
   warm session against the same number of the identical `bwrap ... true` from bash.
   Target: at most 1.3x.
2. Image import (bench/import.ps1): a generated layer of about -LayerMB MB
   (bench/New-BenchLayer.ps1), gzip and zstd, `Import-MelangeImage -Runner bubblewrap`
   against `tar -xzf` / `tar --zstd -xf` of the same file. Target: at most 1.2x, and peak
   memory of the importing process under 150 MiB.

3. The qemu runner (bench/qemu-benchmarks.ps1): time to ready, command round trip and
   export against qemu booting a bare init, OpenSSH's ssh, and ssh | tar; its own results
   block (between the bench:qemu markers). Skipped, with a warning, when the qemu runner is not
   usable here; -SkipQemu leaves it out, -QemuOnly runs only it. About 9-11 minutes under TCG.

Everything generated goes under a temporary directory that is deleted at the end. The
results table (between the bench:results markers) of docs/benchmarks.md is rewritten unless
-NoUpdateDoc; the rest of that page is left alone. Takes about 5-7 minutes (plus the qemu part).
#>
[CmdletBinding()]
param(
    [int]$ExecCount = 200,
    [int]$ExecRounds = 5,
    [int]$LayerMB = 300,
    [int]$ImportRounds = 5,
    [switch]$NoUpdateDoc,
    [switch]$SkipQemu,
    [switch]$QemuOnly
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
$ProgressPreference = 'SilentlyContinue'
$root = Split-Path -Parent $PSScriptRoot
Import-Module (Join-Path $root 'MelangeRunner.psd1') -Force
$qemuBench = { if (-not $SkipQemu) { $null = & (Join-Path $PSScriptRoot 'qemu-benchmarks.ps1') -NoUpdateDoc:$NoUpdateDoc } }
if ($QemuOnly) { & $qemuBench; return }

foreach ($tool in 'bwrap', 'bash', 'tar', 'gzip', 'zstd', 'sync') {
    if (-not (Get-Command $tool -CommandType Application -ErrorAction Ignore)) { throw "The benchmarks need '$tool' on PATH." }
}
if (-not (Test-Path /usr/bin/time)) {
    if ((& id -u) -eq '0' -and (Get-Command apt-get -ErrorAction Ignore)) {
        & apt-get update -qq; & sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends time >/dev/null'
    }
    if (-not (Test-Path /usr/bin/time)) { throw 'The benchmarks need /usr/bin/time: sudo apt-get install time' }
}

function Get-FirstLine([string]$Command) { (& sh -c "$Command 2>&1" | Select-Object -First 1) -replace '\s+$', '' }
$memKiB = [long]((Get-Content /proc/meminfo -TotalCount 1) -replace '\D', '')
$machine = [ordered]@{
    Date    = [DateTime]::UtcNow.ToString('yyyy-MM-dd HH:mm') + ' UTC'
    CPU     = ((Get-Content /proc/cpuinfo | Where-Object { $_ -like 'model name*' } | Select-Object -First 1) -split ':\s*', 2)[1]
    Nproc   = [int](& nproc)
    RAM     = '{0:N1} GiB' -f ($memKiB / 1MB)
    Kernel  = (& uname -r)
    OS      = ((Get-Content /etc/os-release | Where-Object { $_ -like 'PRETTY_NAME=*' }) -split '=', 2)[1].Trim('"')
    Tools   = "pwsh $($PSVersionTable.PSVersion), $(Get-FirstLine 'bwrap --version'), $(Get-FirstLine 'tar --version'), $(Get-FirstLine 'gzip --version'), $((Get-FirstLine 'zstd --version') -replace '^\*+\s*', '' -replace ',.*$', '')"
    Source  = "$(& git -C $root rev-parse --short HEAD)$(if (& git -C $root status --porcelain -- src) { ' + uncommitted changes under src/' })"
    LoadStart = (Get-Content /proc/loadavg) -replace '^(\S+ \S+ \S+).*', '$1'
}
Write-Host "== Machine: $($machine.Nproc) CPUs ($($machine.CPU)), $($machine.RAM), kernel $($machine.Kernel), load $($machine.LoadStart)"

$work = Join-Path ([IO.Path]::GetTempPath()) "melange-bench-$PID"
$null = New-Item -ItemType Directory -Force -Path $work
$sw = [Diagnostics.Stopwatch]::StartNew()
try {
    Write-Host "== Pod exec overhead: $ExecCount x Invoke-MelangePod true vs $ExecCount x bwrap ... true, $ExecRounds rounds"
    $exec = & (Join-Path $PSScriptRoot 'exec-overhead.ps1') -Count $ExecCount -Rounds $ExecRounds
    Write-Host ("   median per call: Invoke-MelangePod {0:N2} ms, bwrap from bash {1:N2} ms, ratio {2:N2}" -f $exec.ModulePerCallMs, $exec.RawPerCallMs, $exec.Ratio)

    Write-Host "== Generating a ~$LayerMB MB layer (gzip and zstd)"
    $layer = & (Join-Path $PSScriptRoot 'New-BenchLayer.ps1') -Directory (Join-Path $work 'layer') -SizeMB $LayerMB
    Write-Host ("   tar {0:N0} MB: {1} files, {2} directories, {3} symlinks, {4} hard links; .gz {5:N0} MB, .zst {6:N0} MB" -f ($layer.TarBytes / 1MB), $layer.Files, $layer.Directories, $layer.Symlinks, $layer.HardLinks, ($layer.GzipBytes / 1MB), ($layer.ZstdBytes / 1MB))
    $warmLayer = & (Join-Path $root 'tools/New-DemoRootfs.ps1') -OutputPath (Join-Path $work 'warm.tar.gz')

    Write-Host "== Image import: Import-MelangeImage vs tar, $ImportRounds rounds each"
    $imports = @(& (Join-Path $PSScriptRoot 'import.ps1') -Layer $layer.Gzip, $layer.Zstd -WarmUpLayer $warmLayer.FullName -Rounds $ImportRounds)
    foreach ($i in $imports) {
        Write-Host ("   {0}: Import-MelangeImage {1:N2} s, {2} {3:N2} s, ratio {4:N2}; peak RSS {5:N1} MiB (baseline {6:N1} MiB, growth {7:N1} MiB)" -f $i.Format, ($i.ModuleMedian / 1000), $i.RawCommand, ($i.RawMedian / 1000), $i.Ratio, ($i.ProcessPeakKiB / 1KB), ($i.BaselineKiB / 1KB), ($i.GrowthKiB / 1KB))
    }
} finally {
    Remove-Item -LiteralPath $work -Recurse -Force -ErrorAction Ignore
}
$machine.LoadEnd = (Get-Content /proc/loadavg) -replace '^(\S+ \S+ \S+).*', '$1'
$elapsed = $sw.Elapsed

# The results table.
function Format-Verdict([bool]$Pass) { if ($Pass) { 'pass' } else { '**FAIL**' } }
$rows = [Collections.Generic.List[string]]::new()
$rows.Add('| measurement | MelangeRunner | raw tool (same run) | ratio | target | result |')
$rows.Add('| --- | ---: | ---: | ---: | --- | --- |')
$rows.Add(('| pod exec: {0} x `Invoke-MelangePod true` vs {0} x `bwrap … true` from bash (median of {1} rounds, per call) | {2:N2} ms | {3:N2} ms | {4:N2}x | ≤ 1.3x | {5} |' -f
        $exec.Count, $exec.Rounds, $exec.ModulePerCallMs, $exec.RawPerCallMs, $exec.Ratio, (Format-Verdict ($exec.Ratio -le 1.3))))
foreach ($i in $imports) {
    $rows.Add(('| import {0}: `Import-MelangeImage -Runner bubblewrap` vs `{1}` (median of {2} runs) | {3:N2} s | {4:N2} s | {5:N2}x | ≤ 1.2x | {6} |' -f
            $i.Format, ($i.RawCommand -replace ' <layer> -C <fresh dir>', ''), $i.ModuleMs.Count, ($i.ModuleMedian / 1000), ($i.RawMedian / 1000), $i.Ratio, (Format-Verdict ($i.Ratio -le 1.2))))
}
foreach ($i in $imports) {
    $rows.Add(('| import {0}: (a) peak RSS of the whole pwsh process (`/usr/bin/time -v`) | {1:N1} MiB | – | – | < 150 MiB | {2} |' -f
            $i.Format, ($i.ProcessPeakKiB / 1KB), (Format-Verdict ($i.ProcessPeakKiB -lt 150KB))))
    $rows.Add(('| import {0}: (b) growth of VmHWM over the process''s baseline ({1:N1} MiB, module loaded) | {2:N1} MiB | – | – | baseline + growth < 150 MiB | {3} |' -f
            $i.Format, ($i.BaselineKiB / 1KB), ($i.GrowthKiB / 1KB), (Format-Verdict (($i.BaselineKiB + $i.GrowthKiB) -lt 150KB))))
}

$fmt = { param($v) ($v | ForEach-Object { '{0:N0}' -f $_ }) -join ', ' }
$details = @(
    ''
    "- Date: $($machine.Date). Machine: $($machine.Nproc) CPUs ($($machine.CPU)), $($machine.RAM) RAM, kernel $($machine.Kernel), $($machine.OS)."
    "- Load average (1/5/15 min) at start $($machine.LoadStart), at end $($machine.LoadEnd) — the machine is shared; figures from the same run are comparable with each other, not across runs."
    "- Tools: $($machine.Tools). Source measured: commit $($machine.Source)."
    "- Layer: $('{0:N0}' -f ($layer.TarBytes / 1MB)) MB tar, $($layer.Files) files, $($layer.Directories) directories, $($layer.Symlinks) symlinks, $($layer.HardLinks) hard links; gzip -6 $('{0:N0}' -f ($layer.GzipBytes / 1MB)) MB, zstd -3 $('{0:N0}' -f ($layer.ZstdBytes / 1MB)) MB. Both sides extract into a fresh directory on $($imports[0].ExtractRoot) (tmpfs)."
    "- Exec, each round's total for $($exec.Count) calls (ms): Invoke-MelangePod $(& $fmt $exec.ModuleMs); bwrap from bash $(& $fmt $exec.RawMs)."
    foreach ($i in $imports) { "- Import $($i.Format), each run (ms): Import-MelangeImage $(& $fmt $i.ModuleMs); $($i.RawCommand) $(& $fmt $i.RawMs)." }
    "- The bwrap vector (from ``Get-MelangePodPlan``, checked against ``Invoke-MelangePod -Verbose``): ``$($exec.CommandLine)``"
    "- Whole Bench task (benchmarks only, after the build): $([int]$elapsed.TotalMinutes) min $($elapsed.Seconds) s."
    ''
    'Reproduce: `dotnet tool restore && dotnet pwsh ./build.ps1 Bench`'
)
$table = ($rows + $details) -join "`n"
Write-Host ''
Write-Host $table

if (-not $NoUpdateDoc) {
    $doc = Join-Path $root 'docs/benchmarks.md'
    $start = '<!-- bench:results:start -->'; $end = '<!-- bench:results:end -->'
    $text = if (Test-Path $doc) { [IO.File]::ReadAllText($doc) } else { "# Benchmarks`n`n$start`n$end`n" }
    $a = $text.IndexOf($start); $b = $text.IndexOf($end)
    if ($a -lt 0 -or $b -lt $a) { $text = $text.TrimEnd() + "`n`n$start`n$end`n"; $a = $text.IndexOf($start); $b = $text.IndexOf($end) }
    $text = $text.Substring(0, $a + $start.Length) + "`n" + $table + "`n" + $text.Substring($b)
    [IO.File]::WriteAllText($doc, $text)
    Write-Host "Results written to $doc"
}

& $qemuBench
