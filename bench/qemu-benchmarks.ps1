<#
.SYNOPSIS
The qemu runner's benchmarks (issue 3): time to ready, command round trip and workspace
export, each against the raw tool, and the results block of docs/benchmarks.md.

.DESCRIPTION
Called by bench/Invoke-Benchmarks.ps1 (or on its own, with the module built). Imports the demo
busybox rootfs (tools/New-DemoRootfs.ps1) for qemu, then:

1. one pod (its start also warms this session up): command round trip
   (bench/qemu-roundtrip.ps1) and export (bench/qemu-export.ps1); the pod is stopped;
2. time to ready (bench/qemu-ready.ps1): -ReadyRounds rounds of Start-MelangePod against
   bench/qemu-baseline.sh, alternating.

Before each part it waits (up to a minute) for the 1-minute load average to drop to 4 or
less, and records the load averages with every figure. Everything made is deleted: pods
stopped, the image removed, temporary directories gone; it checks that no qemu process it
started is left. Rewrites the block between the bench:qemu markers of docs/benchmarks.md
unless -NoUpdateDoc. About 9-11 minutes on a loaded 2-CPU machine under TCG.
#>
[CmdletBinding()]
param(
    [int]$ReadyRounds = 5,
    [int]$RoundTripCount = 100,
    [int]$ExportHalfMiB = 50,
    [int]$ExportRounds = 3,
    [string]$ModulePath,
    [switch]$NoUpdateDoc,
    # Also output the raw results as an object.
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
if (-not $runner.IsUsable) { Write-Warning "Skipping the qemu benchmarks: $($runner.Reason)"; return }
foreach ($tool in 'ssh', 'ssh-keygen', 'ssh-keyscan', 'bash', 'tar', 'diff', 'cpio', 'sh') {
    if (-not (Get-Command $tool -CommandType Application -ErrorAction Ignore)) { throw "The qemu benchmarks need '$tool' on PATH." }
}

function Get-FirstLine([string]$Command) { (& sh -c "$Command 2>&1" | Select-Object -First 1) -replace '\s+$', '' }
$info = [ordered]@{
    Date      = [DateTime]::UtcNow.ToString('yyyy-MM-dd HH:mm') + ' UTC'
    CPU       = ((Get-Content /proc/cpuinfo | Where-Object { $_ -like 'model name*' } | Select-Object -First 1) -split ':\s*', 2)[1]
    Nproc     = [int](& nproc)
    Accel     = if ($runner.Reason -like '*TCG*') { 'TCG (KVM not usable here)' } else { 'KVM' }
    Tools     = "pwsh $($PSVersionTable.PSVersion), $(Get-FirstLine 'qemu-system-x86_64 --version'), $(Get-FirstLine 'ssh -V'), $(Get-FirstLine 'tar --version')"
    Source    = "$(& git -C $root rev-parse --short HEAD)$(if (& git -C $root status --porcelain -- src) { ' + uncommitted changes under src/' })"
    LoadStart = Get-LoadAverage
}
Write-Host "== qemu benchmarks: $($info.Nproc) CPUs, $($info.Accel), load $($info.LoadStart)"

$work = Join-Path ([IO.Path]::GetTempPath()) "melange-bench-qemu-$PID"
$null = New-Item -ItemType Directory -Force -Path $work
$sw = [Diagnostics.Stopwatch]::StartNew()
$img = $null; $pod = $null; $qemuPids = [Collections.Generic.List[int]]::new()
try {
    $layer = & (Join-Path $root 'tools/New-DemoRootfs.ps1') -OutputPath (Join-Path $work 'rootfs.tar.gz')
    $img = Import-MelangeImage -Path $layer.FullName -Runner qemu

    $null = Wait-LowLoad
    Write-Host "== Starting a pod for the round trip and export benchmarks (load $(Get-LoadAverage))"
    $ws = Join-Path $work 'ws'
    $null = New-Item -ItemType Directory -Force -Path $ws
    $pod = $img | Start-MelangePod -WorkspaceDir $ws
    $qemuPids.Add($pod.QemuPid)
    $kernelRelease = ($pod | Invoke-MelangePod uname -r | Select-Object -First 1)
    $ssh = New-PodOpenSshAccess $pod $work
    $cipher = (& ssh @($ssh.Options) -v -p $ssh.BuildPort root@127.0.0.1 true 2>&1 | Select-String 'kex: server->client cipher: (\S+)' | Select-Object -First 1).Matches.Groups[1].Value

    $null = Wait-LowLoad
    Write-Host "== Command round trip: $RoundTripCount x Invoke-MelangePod true vs $RoundTripCount x ssh … true (load $(Get-LoadAverage))"
    $rt = & (Join-Path $PSScriptRoot 'qemu-roundtrip.ps1') -Pod $pod -Ssh $ssh -Count $RoundTripCount
    Write-Host ("   per call: Invoke-MelangePod {0:N1} ms, ssh {1:N1} ms, ratio {2:N2} (block medians {3:N1} / {4:N1} ms)" -f $rt.ModulePerCallMs, $rt.SshPerCallMs, $rt.Ratio, $rt.ModuleBlockMedian, $rt.SshBlockMedian)

    $null = Wait-LowLoad
    Write-Host "== Export: Export-MelangeWorkspace vs ssh … tar c | tar x (load $(Get-LoadAverage))"
    $ex = & (Join-Path $PSScriptRoot 'qemu-export.ps1') -Pod $pod -Ssh $ssh -HalfMiB $ExportHalfMiB -Rounds $ExportRounds
    foreach ($s in $ex.Sizes) {
        Write-Host ("   {0:N0} MiB: Export-MelangeWorkspace {1:N2} s, ssh | tar {2:N2} s, ratio {3:N2}; pwsh VmHWM growth median {4:N1} MiB, max {5:N1} MiB" -f ($s.Bytes / 1MB), ($s.ModuleMedian / 1000), ($s.RawMedian / 1000), $s.Ratio, ($s.GrowthMedianKiB / 1KB), ($s.GrowthMaxKiB / 1KB))
    }
    $pod | Stop-MelangePod
    $pod = $null

    $null = Wait-LowLoad
    Write-Host "== Time to ready: Start-MelangePod vs the kernel booting an init that powers off, $ReadyRounds rounds (load $(Get-LoadAverage))"
    $ready = & (Join-Path $PSScriptRoot 'qemu-ready.ps1') -Image $img -Rounds $ReadyRounds -WorkRoot (Join-Path $work 'ready')
    Write-Host ("   median: Start-MelangePod {0:N2} s, baseline {1:N2} s, ratio {2:N2}" -f ($ready.ModuleMedian / 1000), ($ready.BaselineMedian / 1000), $ready.Ratio)
} finally {
    if ($pod) { $pod | Stop-MelangePod -ErrorAction Continue }
    if ($img) { $img | Remove-MelangeImage -ErrorAction Continue }
    Remove-Item -LiteralPath $work -Recurse -Force -ErrorAction Ignore
    Get-ChildItem -Path /dev/shm -Filter "melange-bench-export-$PID-*" -ErrorAction Ignore | Remove-Item -Recurse -Force
    foreach ($p in $qemuPids) { if (Get-Process -Id $p -ErrorAction Ignore) { Write-Warning "qemu $p is still running" } }
}
$info.LoadEnd = Get-LoadAverage
$elapsed = $sw.Elapsed

function Format-Verdict([bool]$Pass) { if ($Pass) { 'pass' } else { '**FAIL**' } }
function Format-Loads([string[]]$L) { ($L | Select-Object -Unique) -join ' → ' }
$big = $ex.Sizes[-1]; $small = $ex.Sizes[0]
# Memory flat in the size: the larger export's growth within 8 MiB of the smaller one's.
$flat = ($big.GrowthMedianKiB - $small.GrowthMedianKiB) -le 8KB
$rows = @(
    '| measurement | MelangeRunner | raw tool (same run) | ratio | target | result | load (1/5/15 min) |'
    '| --- | ---: | ---: | ---: | --- | --- | --- |'
    ('| time to ready: `Start-MelangePod -Runner qemu` vs the same kernel booting an init that powers off (`bench/qemu-baseline.sh`; median of {0} alternating rounds) | {1:N2} s | {2:N2} s | {3:N2}x | ≤ 1.6x | {4} | {5} |' -f
        $ready.Rounds, ($ready.ModuleMedian / 1000), ($ready.BaselineMedian / 1000), $ready.Ratio, (Format-Verdict ($ready.Ratio -le 1.6)), (Format-Loads $ready.Loads))
    ('| command round trip: {0} x `Invoke-MelangePod true` vs {0} x `ssh -p PORT root@127.0.0.1 true` (port 22, per call; blocks of {1} alternating) | {2:N1} ms | {3:N1} ms | {4:N2}x | ≤ 0.3x | {5} | {6} |' -f
        $rt.Count, $rt.Block, $rt.ModulePerCallMs, $rt.SshPerCallMs, $rt.Ratio, (Format-Verdict ($rt.Ratio -le 0.3)), (Format-Loads $rt.Loads))
    foreach ($s in $ex.Sizes) {
        ('| export {0:N0} MiB ({1:N0} files): `Export-MelangeWorkspace -Destination` vs `ssh … ''/bin/tar cpf - melange-out'' \| tar x` (median of {2}) | {3:N2} s | {4:N2} s | {5:N2}x | {6} | {7} | {8} |' -f
            ($s.Bytes / 1MB), $s.Files, $s.ModuleMs.Count, ($s.ModuleMedian / 1000), ($s.RawMedian / 1000), $s.Ratio,
            $(if ($s -eq $big) { '≤ 1.1x' } else { '(info)' }), $(if ($s -eq $big) { Format-Verdict ($s.Ratio -le 1.1) } else { '–' }), (Format-Loads $s.Loads))
    }
    ('| export memory: growth of the pwsh process''s VmHWM during the export (median; {0:N0} MiB → {1:N0} MiB of melange-out) | {2:N1} → {3:N1} MiB | – | – | flat in the size | {4} | {5} |' -f
        ($small.Bytes / 1MB), ($big.Bytes / 1MB), ($small.GrowthMedianKiB / 1KB), ($big.GrowthMedianKiB / 1KB), (Format-Verdict $flat), (Format-Loads ($small.Loads + $big.Loads)))
)
$fmt = { param($v, $div = 1, $f = 'N0') ($v | ForEach-Object { "{0:$f}" -f ($_ / $div) }) -join ', ' }
$phases = ($ready.GuestPhases.PSObject.Properties | ForEach-Object { '{0} {1:N2}' -f $_.Name, $_.Value }) -join ', '
$details = @(
    ''
    "- Date: $($info.Date). Machine: $($info.Nproc) CPUs ($($info.CPU)), qemu under $($info.Accel); guest kernel $kernelRelease."
    "- Load average (1/5/15 min) at start $($info.LoadStart), at end $($info.LoadEnd); each row shows the load at its start and end. The machine is shared: compare figures within a run."
    "- Tools: $($info.Tools). Source measured: commit $($info.Source)."
    "- Time to ready, each round (s): Start-MelangePod $(& $fmt $ready.ModuleMs 1000 'N2'); baseline $(& $fmt $ready.BaselineMs 1000 'N2'). Start-MelangePod split (medians, s): host preparation $('{0:N2}' -f ($ready.HostPrepMedian / 1000)), qemu start to SSH banner $('{0:N2}' -f ($ready.BootMedian / 1000)), SSH banner to guest ready (the root clients log in while the init finishes) $('{0:N2}' -f ($ready.LoginMedian / 1000)), ready to returned (the build user's log-in beside the copy-in command) $('{0:N2}' -f ($ready.CopyInMedian / 1000)); Stop-MelangePod $('{0:N2}' -f ($ready.StopMedian / 1000)). Guest init phases (medians, s; `init` = kernel start to the init script): $phases. Baseline: its init ran $('{0:N2}' -f $ready.BaselineInitAt) s after the kernel started."
    "- Baseline command: ``$((($ready.BaselineEnv.GetEnumerator() | ForEach-Object { "$($_.Key)='$($_.Value)'" }) -join ' ')) sh bench/qemu-baseline.sh $($ready.Kernel) 1``"
    "- Round trip, per call in each block of $($rt.Block) (ms): Invoke-MelangePod $(& $fmt $rt.ModuleBlocks 1 'N1'); ssh $(& $fmt $rt.SshBlocks 1 'N1'). OpenSSH negotiated $cipher; its command: ``$($rt.SshCommand)`` (host key pinned from ssh-keyscan, a key of the benchmark's own added for root through the control client)."
    foreach ($s in $ex.Sizes) { "- Export $('{0:N0}' -f ($s.Bytes / 1MB)) MiB, each run (s): Export-MelangeWorkspace $(& $fmt $s.ModuleMs 1000 'N2'); ssh | tar $(& $fmt $s.RawMs 1000 'N2'). pwsh VmHWM growth per run (MiB): $(& $fmt $s.GrowthKiB 1KB 'N1') over a VmRSS of $('{0:N0}' -f ($s.BaselineRssKiB / 1KB)) MiB." }
    "- Export raw side: ``$($ex.RawCommand)``; both sides extract to $($ex.ExtractRoot); the first run of each size is checked with ``diff -r``."
    "- Whole qemu part: $([int]$elapsed.TotalMinutes) min $($elapsed.Seconds) s."
    ''
    'Reproduce: `dotnet tool restore && dotnet pwsh ./build.ps1 Build && dotnet pwsh bench/qemu-benchmarks.ps1`'
)
$table = ($rows + $details) -join "`n"
Write-Host ''
Write-Host $table

if (-not $NoUpdateDoc) {
    $doc = Join-Path $root 'docs/benchmarks.md'
    $start = '<!-- bench:qemu:start -->'; $end = '<!-- bench:qemu:end -->'
    $text = [IO.File]::ReadAllText($doc)
    $a = $text.IndexOf($start); $b = $text.IndexOf($end)
    if ($a -lt 0 -or $b -lt $a) { $text = $text.TrimEnd() + "`n`n## qemu runner: results`n`n$start`n$end`n"; $a = $text.IndexOf($start); $b = $text.IndexOf($end) }
    $text = $text.Substring(0, $a + $start.Length) + "`n" + $table + "`n" + $text.Substring($b)
    [IO.File]::WriteAllText($doc, $text)
    Write-Host "Results written to $doc"
}
if ($PassThru) { [pscustomobject]@{ Ready = $ready; RoundTrip = $rt; Export = $ex; Info = $info } }
