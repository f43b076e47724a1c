<#
.SYNOPSIS
Time to ready: `Start-MelangePod -Runner qemu` against the same kernel booting an init that
powers off at once (bench/qemu-baseline.sh), alternating, in one run.

.DESCRIPTION
The baseline boots the file the runner boots (`-kernel` of `Get-MelangePodPlan`) with the
runner's -machine (with its options), -accel, -cpu, -m and -smp, and the runner's kernel
command line minus what only the runner's guest needs (console=hvc0, 8250.nr_uarts=0, the
client key, the runner's markers), plus console=ttyS0 so that the init's line is seen. Its
initramfs is busybox and an /init that powers off; its time is qemu's start to qemu's exit.

The module side is `$img | Start-MelangePod -WorkspaceDir <empty dir>` in this warm session
(a Stopwatch around the cmdlet: from the call to the pod being Running, i.e. SSH connected and
the workspace copied in), with -Verbose captured and time-stamped to split the time into host
preparation, boot to the SSH banner, SSH log-ins, and the workspace copy; the guest init's own
phase lines (always on its console) give the guest side. Stop-MelangePod follows, untimed
(its time is reported).

-Rounds rounds; each runs both sides, the order alternating per round. Expects the module to
be imported and an image imported for qemu. Outputs one object.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] $Image,
    [int]$Rounds = 5,
    [string]$WorkRoot = (Join-Path ([IO.Path]::GetTempPath()) "melange-bench-qemu-ready-$PID")
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
. (Join-Path $PSScriptRoot 'qemu-common.ps1')

$null = New-Item -ItemType Directory -Force -Path $WorkRoot
try {
    $ws = Join-Path $WorkRoot 'ws'
    $null = New-Item -ItemType Directory -Force -Path $ws
    $plan = $Image | Get-MelangePodPlan -WorkspaceDir $ws
    $a = @($plan.Arguments)
    function Get-Arg([string]$Name) {
        $i = [Array]::IndexOf($a, $Name)
        if ($i -lt 0) { throw "The plan has no $Name" }
        $a[$i + 1]
    }
    $kernel = Get-Arg '-kernel'
    $baselineEnv = [ordered]@{
        BASELINE_MACHINE = Get-Arg '-machine'
        BASELINE_ACCEL   = Get-Arg '-accel'
        BASELINE_CPU     = Get-Arg '-cpu'
        BASELINE_MEM     = Get-Arg '-m'
        BASELINE_SMP     = Get-Arg '-smp'
        BASELINE_APPEND  = (@('console=ttyS0') + @((($plan.KernelCommandLine -replace 'sshkey=<[^>]*>', '') -split ' ') | Where-Object {
                    $_ -and $_ -notmatch '^(console=|8250\.nr_uarts=|sshkey=|melange_qemu_runner=|melange\.)' })) -join ' '
        BASELINE_SHOW_INIT = '1'
    }
    $baselineScript = Join-Path $PSScriptRoot 'qemu-baseline.sh'

    function Invoke-Baseline {
        foreach ($k in $baselineEnv.Keys) { Set-Item "env:$k" $baselineEnv[$k] }
        try { $out = & sh $baselineScript $kernel 1 }
        finally { foreach ($k in $baselineEnv.Keys) { Remove-Item "env:$k" -ErrorAction Ignore } }
        if ($LASTEXITCODE) { throw "qemu-baseline.sh failed ($LASTEXITCODE)" }
        $f = "$out".Trim() -split ' '
        [pscustomobject]@{ Ms = [double]$f[0] * 1000; InitAt = [double]$f[1] }
    }

    function Invoke-Start {
        $sw = [Diagnostics.Stopwatch]::StartNew()
        $marks = [ordered]@{}
        $phases = [ordered]@{}
        $pod = $null
        # TESTING would change the guest's kernel command line (debug logging): keep it unset.
        $testing = $env:TESTING; Remove-Item env:TESTING -ErrorAction Ignore
        try {
            $Image | Start-MelangePod -WorkspaceDir $ws -Verbose 4>&1 | ForEach-Object {
                $t = $sw.Elapsed.TotalMilliseconds
                if ($_ -is [System.Management.Automation.VerboseRecord]) {
                    $m = $_.Message
                    if ($m -like 'Running: *qemu-system*') { $marks.QemuStarted = $t }
                    elseif ($m -like 'qemu: SSH banner after*') { $marks.Banner = $t }
                    # The root clients logged in and the guest's init finished (/run/melange-ready).
                    elseif ($m -like 'qemu: guest ready after*') { $marks.LoggedIn = $t }
                    elseif ($m -match 'melange-init: kernel \S+, init started at ([0-9.]+)s') { $phases.init = [double]$Matches[1] }
                    elseif ($m -match 'melange-init: phase (\S+) done at [0-9.]+s \(\+([0-9.]+)s\)') { $phases[$Matches[1]] = [double]$Matches[2] }
                } else { $pod = $_ }
            }
            $sw.Stop()
        } finally { if ($null -ne $testing) { $env:TESTING = $testing } }
        if ($null -eq $pod -or "$($pod.State)" -ne 'Running') { throw 'Start-MelangePod did not return a running pod' }
        $total = $sw.Elapsed.TotalMilliseconds
        $stop = [Diagnostics.Stopwatch]::StartNew()
        $pod | Stop-MelangePod
        $stop.Stop()
        [pscustomobject]@{
            Ms        = $total
            HostPrepMs = $marks['QemuStarted']
            BootMs    = $marks['Banner'] - $marks['QemuStarted']     # qemu started -> SSH banner read
            LoginMs   = $marks['LoggedIn'] - $marks['Banner']        # the root log-ins, while the init finishes
            CopyInMs  = $total - $marks['LoggedIn']                  # the build user's log-in beside one command: cache mount, copy-in, umount
            Phases    = [pscustomobject]$phases
            StopMs    = $stop.Elapsed.TotalMilliseconds
        }
    }

    $module = [Collections.Generic.List[object]]::new()
    $baseline = [Collections.Generic.List[object]]::new()
    $loads = [Collections.Generic.List[string]]::new()
    for ($r = 0; $r -lt $Rounds; $r++) {
        $loads.Add((Get-LoadAverage))
        if ($r % 2 -eq 0) { $baseline.Add((Invoke-Baseline)); $module.Add((Invoke-Start)) }
        else { $module.Add((Invoke-Start)); $baseline.Add((Invoke-Baseline)) }
        Write-Host ("   round {0}: Start-MelangePod {1:N2} s (host {2:N2}, boot to banner {3:N2}, root log-ins to ready {4:N2}, copy-in {5:N2}), baseline {6:N2} s (init at {7:N2} s), load {8}" -f
            ($r + 1), ($module[-1].Ms / 1000), ($module[-1].HostPrepMs / 1000), ($module[-1].BootMs / 1000), ($module[-1].LoginMs / 1000), ($module[-1].CopyInMs / 1000),
            ($baseline[-1].Ms / 1000), $baseline[-1].InitAt, $loads[-1])
    }
    $loads.Add((Get-LoadAverage))

    $phaseNames = @($module | ForEach-Object { $_.Phases.PSObject.Properties.Name } | Select-Object -Unique)
    $phaseMedians = [ordered]@{}
    foreach ($n in $phaseNames) { $phaseMedians[$n] = Get-Median @($module | ForEach-Object { $_.Phases.$n } | Where-Object { $null -ne $_ }) }
    $mMed = Get-Median @($module.Ms); $bMed = Get-Median @($baseline.Ms)
    [pscustomobject]@{
        Rounds          = $Rounds
        ModuleMs        = @($module.Ms)
        BaselineMs      = @($baseline.Ms)
        ModuleMedian    = $mMed
        BaselineMedian  = $bMed
        Ratio           = $mMed / $bMed
        BaselineInitAt  = Get-Median @($baseline.InitAt)
        HostPrepMedian  = Get-Median @($module.HostPrepMs)
        BootMedian      = Get-Median @($module.BootMs)
        LoginMedian     = Get-Median @($module.LoginMs)
        CopyInMedian    = Get-Median @($module.CopyInMs)
        StopMedian      = Get-Median @($module.StopMs)
        GuestPhases     = [pscustomobject]$phaseMedians
        Loads           = @($loads)
        Kernel          = $kernel
        BaselineEnv     = $baselineEnv
        Plan            = $plan.CommandLine
    }
} finally {
    Remove-Item -LiteralPath $WorkRoot -Recurse -Force -ErrorAction Ignore
}
