<#
.SYNOPSIS
Pods restored from a template (issue 12, QEMU_USE_TEMPLATE=1) against cold boots and the
bare-kernel baseline, in one run; the results block of docs/benchmarks.md.

.DESCRIPTION
With the module built and the demo busybox rootfs imported for qemu:

1. template build time: -Builds times, each after discarding the template of the default
   inputs: the start's verbose "built in … (boot to parked …)" line; the pod is stopped;
2. warm template: bench/qemu-ready.ps1 -Rounds -Rounds with QEMU_USE_TEMPLATE=1 (each round
   Start-MelangePod against bench/qemu-baseline.sh, alternating);
3. cold boot: the same with QEMU_USE_TEMPLATE unset;
4. parallel: for each N in -Parallel, N Start-MelangePod at once (one runspace each, warm
   template): the wall time until all are Running, each start's time, and each qemu's Pss and
   Rss (/proc/PID/smaps_rollup); then all are stopped.

Everything made is deleted (pods stopped, image removed); templates stay in the cache, as in use.
Rewrites the block between the bench:qemu-template markers of docs/benchmarks.md unless -NoUpdateDoc.
#>
[CmdletBinding()]
param(
    [int]$Rounds = 5,
    [int]$Builds = 2,
    [int[]]$Parallel = @(2),
    [string]$ModulePath,
    [switch]$NoUpdateDoc,
    [switch]$PassThru
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
$ProgressPreference = 'SilentlyContinue'
$root = Split-Path -Parent $PSScriptRoot
if (-not $ModulePath) { $ModulePath = Join-Path $root 'MelangeRunner.psd1' }
Import-Module $ModulePath -Force
. (Join-Path $PSScriptRoot 'qemu-common.ps1')

$runner = Get-MelangeRunner qemu
if (-not $runner.IsUsable) { Write-Warning "Skipping the qemu template benchmarks: $($runner.Reason)"; return }
$work = Join-Path ([IO.Path]::GetTempPath()) "melange-bench-template-$PID"
$null = New-Item -ItemType Directory -Force $work
$saved = $env:QEMU_USE_TEMPLATE
$img = $null
try {
    $rootfs = Join-Path $work 'rootfs.tar.gz'
    $null = & (Join-Path $root 'tools/New-DemoRootfs.ps1') -OutputPath $rootfs
    $img = Import-MelangeImage -Path $rootfs -Runner qemu
    $templates = Join-Path ($env:XDG_CACHE_HOME ? $env:XDG_CACHE_HOME : (Join-Path $HOME '.cache')) 'melange-runner/template'
    $env:QEMU_USE_TEMPLATE = '1'

    # 1. Build time.
    $buildTimes = foreach ($i in 1..$Builds) {
        $plan = $img | Get-MelangePodPlan
        if ($plan.StartPath -match 'template ([0-9a-f]{24})') { Remove-Item -Recurse -Force (Join-Path $templates $Matches[1]) -ErrorAction Ignore }
        $line = $null
        $pod = $img | Start-MelangePod -Verbose 4>&1 | ForEach-Object {
            if ($_ -is [Management.Automation.VerboseRecord]) { if ($_.Message -match 'built in ([0-9.]+) s \(boot to parked ([0-9.]+) s') { $line = $Matches } } else { $_ }
        }
        $pod | Stop-MelangePod
        if (-not $line) { throw 'The start did not build a template.' }
        [pscustomobject]@{ TotalS = [double]$line[1]; ParkedS = [double]$line[2] }
        Write-Host ("   template build {0}: {1:N1} s (boot to parked {2:N1} s)" -f $i, [double]$line[1], [double]$line[2])
    }

    # 2 and 3. Warm template and cold boot, each against the baseline.
    Write-Host '   warm template:'
    $null = Wait-LowLoad
    $warm = & (Join-Path $PSScriptRoot 'qemu-ready.ps1') -Image $img -Rounds $Rounds
    $env:QEMU_USE_TEMPLATE = $null
    Write-Host '   cold boot:'
    $null = Wait-LowLoad
    $cold = & (Join-Path $PSScriptRoot 'qemu-ready.ps1') -Image $img -Rounds $Rounds
    $env:QEMU_USE_TEMPLATE = '1'

    # 4. Parallel restores.
    $parallelRuns = foreach ($n in $Parallel) {
        $null = Wait-LowLoad
        $load = Get-LoadAverage
        $instances = foreach ($i in 1..$n) {
            $ps = [powershell]::Create()
            $null = $ps.AddScript({
                    param($img, $manifest) Import-Module $manifest; $env:QEMU_USE_TEMPLATE = '1'
                    $sw = [Diagnostics.Stopwatch]::StartNew(); $p = $img | Start-MelangePod; [pscustomobject]@{ Pod = $p; S = $sw.Elapsed.TotalSeconds }
                }).AddArgument($img).AddArgument($ModulePath)
            [pscustomobject]@{ Ps = $ps }
        }
        $sw = [Diagnostics.Stopwatch]::StartNew()
        foreach ($x in $instances) { $x | Add-Member Async $x.Ps.BeginInvoke() }
        $results = foreach ($x in $instances) { $x.Ps.EndInvoke($x.Async)[0] }
        $wall = $sw.Elapsed.TotalSeconds
        $mem = foreach ($r in $results) {
            $roll = Get-Content "/proc/$($r.Pod.QemuPid)/smaps_rollup"
            [pscustomobject]@{
                PssMiB = [long](($roll | Where-Object { $_ -like 'Pss:*' }) -replace '\D', '') / 1024
                RssMiB = [long](($roll | Where-Object { $_ -like 'Rss:*' }) -replace '\D', '') / 1024
            }
        }
        foreach ($r in $results) { $r.Pod | Stop-MelangePod }
        foreach ($x in $instances) { $x.Ps.Dispose() }
        Write-Host ("   {0} at once: all Running after {1:N2} s (each {2}), Pss {3} MiB, load {4}" -f $n, $wall,
            (($results.S | ForEach-Object { '{0:N2}' -f $_ }) -join ' '), (($mem.PssMiB | ForEach-Object { '{0:N0}' -f $_ }) -join ' '), $load)
        [pscustomobject]@{ N = $n; WallS = $wall; StartS = @($results.S); PssMiB = @($mem.PssMiB); RssMiB = @($mem.RssMiB); Load = $load }
    }

    $fmt = { param($ms) '{0:N2}' -f ($ms / 1000) }
    $lines = @(
        "Measured $([DateTime]::UtcNow.ToString('yyyy-MM-dd HH:mm')) UTC by ``bench/qemu-template-benchmarks.ps1 -Rounds $Rounds``; $((Get-Content /proc/cpuinfo | Where-Object { $_ -like 'model name*' } | Select-Object -First 1) -replace '^.*:\s*', ''), $([Environment]::ProcessorCount) CPUs; accelerator: $($runner.Accelerator); load before/after: $($warm.Loads[0]) / $($cold.Loads[-1]).",
        '',
        '| | median (s) | runs (s) | baseline median in the same rounds (s) | ratio |',
        '| --- | ---: | --- | ---: | ---: |',
        "| Start-MelangePod → Running, warm template | **$(& $fmt $warm.ModuleMedian)** | $(($warm.ModuleMs | ForEach-Object { & $fmt $_ }) -join ' ') | $(& $fmt $warm.BaselineMedian) | $('{0:N2}' -f $warm.Ratio) |",
        "| Start-MelangePod → Running, cold boot | $(& $fmt $cold.ModuleMedian) | $(($cold.ModuleMs | ForEach-Object { & $fmt $_ }) -join ' ') | $(& $fmt $cold.BaselineMedian) | $('{0:N2}' -f $cold.Ratio) |",
        "| warm: host preparation / qemu start → SSH banner / → guest ready / copy-in | $(& $fmt $warm.HostPrepMedian) / $(& $fmt $warm.BootMedian) / $(& $fmt $warm.LoginMedian) / $(& $fmt $warm.CopyInMedian) | | | |",
        "| cold: host preparation / qemu start → SSH banner / → guest ready / copy-in | $(& $fmt $cold.HostPrepMedian) / $(& $fmt $cold.BootMedian) / $(& $fmt $cold.LoginMedian) / $(& $fmt $cold.CopyInMedian) | | | |",
        "| template build (in the first start) | $('{0:N1}' -f (Get-Median @($buildTimes.TotalS))) | $(($buildTimes | ForEach-Object { '{0:N1} (parked {1:N1})' -f $_.TotalS, $_.ParkedS }) -join ', ') | | |"
    )
    foreach ($p in $parallelRuns) {
        $lines += "| $($p.N) restores at once: wall time until all Running | $('{0:N2}' -f $p.WallS) | each $(($p.StartS | ForEach-Object { '{0:N2}' -f $_ }) -join ' '); Pss per qemu $(($p.PssMiB | ForEach-Object { '{0:N0}' -f $_ }) -join ' ') MiB, Rss $(($p.RssMiB | ForEach-Object { '{0:N0}' -f $_ }) -join ' ') MiB; load $($p.Load) | | |"
    }
    $block = $lines -join "`n"
    Write-Host $block
    if (-not $NoUpdateDoc) {
        $doc = Join-Path $root 'docs/benchmarks.md'
        $text = Get-Content -Raw $doc
        $begin = '<!-- bench:qemu-template:begin -->'; $end = '<!-- bench:qemu-template:end -->'
        $i = $text.IndexOf($begin); $j = $text.IndexOf($end)
        if ($i -lt 0 -or $j -lt 0) { throw "docs/benchmarks.md has no $begin … $end block" }
        $text = $text.Substring(0, $i + $begin.Length) + "`n" + $block + "`n" + $text.Substring($j)
        [IO.File]::WriteAllText($doc, $text)
    }
    if ($PassThru) { [pscustomobject]@{ Builds = $buildTimes; Warm = $warm; Cold = $cold; Parallel = $parallelRuns } }
} finally {
    $env:QEMU_USE_TEMPLATE = $saved
    if ($img) { $img | Remove-MelangeImage -Confirm:$false }
    Remove-Item -Recurse -Force $work -ErrorAction Ignore
}
