<#
.SYNOPSIS
Command round trip on a running qemu pod: N x `Invoke-MelangePod true` against N x
`ssh -p PORT root@127.0.0.1 true` with OpenSSH's client, on the same port (22 in the guest,
the chrooted build port that Invoke-MelangePod uses).

.DESCRIPTION
Invoke-MelangePod reuses the pod's open SSH.NET connection (one new channel per command);
OpenSSH's client pays a new TCP connection, key exchange and authentication per call. The
OpenSSH side logs in with a key of its own that this script adds for root in the guest
through the pod's control client, with the guest's host key pinned by ssh-keyscan into a
temporary known_hosts (see qemu-common.ps1). Its calls run in a bash loop timed by bash
($EPOCHREALTIME, so bash's start is not counted); the module's in this warm session, timed
with a Stopwatch. After a warm-up of -WarmUp calls each, the N calls per side are made in
blocks of -Block whose order alternates. Reported: the total per side divided by N, and the
median of the blocks' per-call times.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] $Pod,
    [Parameter(Mandatory)] $Ssh,          # New-PodOpenSshAccess's object
    [int]$Count = 100,
    [int]$Block = 20,
    [int]$WarmUp = 5
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
. (Join-Path $PSScriptRoot 'qemu-common.ps1')

$bashLoop = @'
n=$1; shift
t0=$EPOCHREALTIME
for ((i = 0; i < n; i++)); do ssh "$@" true || exit 1; done
t1=$EPOCHREALTIME
echo "$t0 $t1"
'@
$sshArgs = @($Ssh.Options) + @('-p', "$($Ssh.BuildPort)", 'root@127.0.0.1')
function Invoke-SshLoop([int]$N) {
    $out = & bash -c $bashLoop bash $N @sshArgs
    if ($LASTEXITCODE) { throw "ssh loop failed ($LASTEXITCODE)" }
    $t = "$out".Trim() -split ' '
    ([double]$t[1] - [double]$t[0]) * 1000
}
function Invoke-ModuleLoop([int]$N) {
    $sw = [Diagnostics.Stopwatch]::StartNew()
    for ($i = 0; $i -lt $N; $i++) { $Pod | Invoke-MelangePod true }
    $sw.Stop()
    if ($LASTEXITCODE) { throw "Invoke-MelangePod true failed ($LASTEXITCODE)" }
    $sw.Elapsed.TotalMilliseconds
}

$null = Invoke-ModuleLoop $WarmUp
$null = Invoke-SshLoop $WarmUp
$moduleBlocks = [Collections.Generic.List[double]]::new()
$sshBlocks = [Collections.Generic.List[double]]::new()
$loadStart = Get-LoadAverage
for ($b = 0; $b -lt [Math]::Ceiling($Count / $Block); $b++) {
    $n = [Math]::Min($Block, $Count - $b * $Block)
    if ($b % 2 -eq 0) { $moduleBlocks.Add((Invoke-ModuleLoop $n) / $n); $sshBlocks.Add((Invoke-SshLoop $n) / $n) }
    else { $sshBlocks.Add((Invoke-SshLoop $n) / $n); $moduleBlocks.Add((Invoke-ModuleLoop $n) / $n) }
}
$loadEnd = Get-LoadAverage
$moduleTotal = 0.0; $sshTotal = 0.0
for ($b = 0; $b -lt $moduleBlocks.Count; $b++) {
    $n = [Math]::Min($Block, $Count - $b * $Block)
    $moduleTotal += $moduleBlocks[$b] * $n; $sshTotal += $sshBlocks[$b] * $n
}
$mMed = Get-Median @($moduleBlocks); $sMed = Get-Median @($sshBlocks)
[pscustomobject]@{
    Count             = $Count
    Block             = $Block
    ModuleTotalMs     = $moduleTotal
    SshTotalMs        = $sshTotal
    ModulePerCallMs   = $moduleTotal / $Count
    SshPerCallMs      = $sshTotal / $Count
    Ratio             = $moduleTotal / $sshTotal
    ModuleBlockMedian = $mMed
    SshBlockMedian    = $sMed
    BlockRatio        = $mMed / $sMed
    ModuleBlocks      = @($moduleBlocks)
    SshBlocks         = @($sshBlocks)
    SshCommand        = "ssh $($sshArgs -join ' ') true"
    Loads             = @($loadStart, $loadEnd)
}
