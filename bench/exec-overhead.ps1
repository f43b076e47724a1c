<#
.SYNOPSIS
Pod exec overhead: N x `Invoke-MelangePod true` in this (warm) session against N x the same
`bwrap ... true` from bash.

.DESCRIPTION
Imports the demo busybox image, starts a bubblewrap pod, and takes the exact argument vector
that Invoke-MelangePod runs (Get-MelangePodPlan's Arguments with the ldconfig command
replaced by `true`, checked against the `Running: [env --default-signal] bwrap ...` line of Invoke-MelangePod
-Verbose). Then, after a warm-up of each side, runs rounds of N calls per side, interleaved in blocks
(-Block) whose order alternates: calls of
`$pod | Invoke-MelangePod true` timed with a Stopwatch in this session, and one bash process
per block running the same bwrap vector in a loop, timed by bash itself ($EPOCHREALTIME, so
bash's start is not counted). Outputs one object with the per-round totals and medians.
Expects the module to be imported. Deletes everything it made.
#>
[CmdletBinding()]
param(
    [int]$Count = 200,
    [int]$Rounds = 5,
    [int]$WarmUp = 20,
    # Each round interleaves the two sides in blocks of this many calls, so that drift in the
    # machine's speed (a shared VM) hits both sides alike.
    [int]$Block = 20,
    [string]$WorkRoot = (Join-Path ([IO.Path]::GetTempPath()) "melange-bench-exec-$PID")
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

function Get-Median([double[]]$Values) {
    $s = @($Values | Sort-Object)
    if ($s.Count % 2) { $s[[int][Math]::Floor($s.Count / 2)] } else { ($s[$s.Count / 2 - 1] + $s[$s.Count / 2]) / 2 }
}

$null = New-Item -ItemType Directory -Force -Path $WorkRoot
$img = $null; $pod = $null
try {
    $layer = & (Join-Path $PSScriptRoot '../tools/New-DemoRootfs.ps1') -OutputPath (Join-Path $WorkRoot 'rootfs.tar.gz')
    $img = Import-MelangeImage -Path $layer.FullName -Runner bubblewrap
    $ws = Join-Path $WorkRoot 'ws'
    $null = New-Item -ItemType Directory -Force -Path $ws
    $pod = $img | Start-MelangePod -WorkspaceDir $ws

    # The exact vector: the plan's arguments, with the pod's first command (ldconfig) replaced by `true`.
    $plan = $img | Get-MelangePodPlan -WorkspaceDir $ws
    $a = @($plan.Arguments)
    $cmdAt = [Array]::IndexOf($a, '/bin/sh')
    if ($cmdAt -lt 0 -or $a[$cmdAt + 1] -ne '-c' -or $cmdAt + 3 -ne $a.Count) { throw "Unexpected plan: $($plan.CommandLine)" }
    $bwrapArgs = @($a[0..($cmdAt - 1)]) + 'true'
    $verbose = @($pod | Invoke-MelangePod true -Verbose 4>&1 | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] } |
            ForEach-Object Message | Where-Object { $_ -like 'Running: *' })
    # The module starts bwrap through `env --default-signal` (default signal dispositions for steps):
    # that exec is part of what is measured; the raw side runs bwrap itself.
    $expected = "$($plan.FileName) $($bwrapArgs -join ' ')"
    if ($verbose.Count -ne 1 -or -not ($verbose[0] -ceq "Running: $expected" -or $verbose[0].EndsWith(" --default-signal $expected", [StringComparison]::Ordinal))) {
        throw "Invoke-MelangePod runs something else than the vector under test.`n  verbose: $verbose`n  bench:   $expected"
    }

    $argFile = Join-Path $WorkRoot 'bwrap.args'
    [IO.File]::WriteAllText($argFile, (($bwrapArgs | ForEach-Object { "$_`0" }) -join ''))
    $bashLoop = @'
set -e
mapfile -d '' -t ARGS < "$1"
n=$2
t0=$EPOCHREALTIME
for ((i = 0; i < n; i++)); do bwrap "${ARGS[@]}"; done
t1=$EPOCHREALTIME
echo "$t0 $t1"
'@
    function Invoke-RawLoop([int]$N) {
        $out = & bash -c $bashLoop bash $argFile $N
        if ($LASTEXITCODE) { throw "bwrap loop failed ($LASTEXITCODE)" }
        $t = "$out".Trim() -split ' '
        ([double]$t[1] - [double]$t[0]) * 1000
    }
    function Invoke-ModuleLoop([int]$N) {
        $sw = [Diagnostics.Stopwatch]::StartNew()
        for ($i = 0; $i -lt $N; $i++) { $pod | Invoke-MelangePod true }
        $sw.Stop()
        if ($LASTEXITCODE) { throw "Invoke-MelangePod true failed ($LASTEXITCODE)" }
        $sw.Elapsed.TotalMilliseconds
    }

    # Warm-up of each side, then alternating rounds (which side goes first alternates too).
    $null = Invoke-ModuleLoop $WarmUp
    $null = Invoke-RawLoop $WarmUp
    $mod = [Collections.Generic.List[double]]::new(); $raw = [Collections.Generic.List[double]]::new()
    for ($r = 0; $r -lt $Rounds; $r++) {
        $m = 0.0; $w = 0.0
        for ($done = 0; $done -lt $Count; $done += $Block) {
            $n = [Math]::Min($Block, $Count - $done)
            if ((($r * $Count + $done) / $Block) % 2 -eq 0) { $m += Invoke-ModuleLoop $n; $w += Invoke-RawLoop $n }
            else { $w += Invoke-RawLoop $n; $m += Invoke-ModuleLoop $n }
        }
        $mod.Add($m); $raw.Add($w)
        Write-Verbose ("round {0}: {1} x Invoke-MelangePod {2:N0} ms, {1} x bwrap {3:N0} ms" -f $r, $Count, $m, $w)
    }
    $mMed = Get-Median $mod; $rMed = Get-Median $raw
    [pscustomobject]@{
        Benchmark    = 'exec'
        Count        = $Count
        Rounds       = $Rounds
        ModuleMs     = @($mod)
        RawMs        = @($raw)
        ModuleMedian = $mMed
        RawMedian    = $rMed
        ModulePerCallMs = $mMed / $Count
        RawPerCallMs = $rMed / $Count
        Ratio        = $mMed / $rMed
        CommandLine  = "$($plan.FileName) $($bwrapArgs -join ' ')"
    }
} finally {
    if ($pod) { $pod | Stop-MelangePod }
    if ($img) { $img | Remove-MelangeImage -Confirm:$false }
    Remove-Item -LiteralPath $WorkRoot -Recurse -Force -ErrorAction Ignore
}
