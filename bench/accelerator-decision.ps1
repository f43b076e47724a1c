<#
.SYNOPSIS
What the qemu runner's accelerator decision costs: on a host's first pod start, and after.

.DESCRIPTION
Measures, -Rounds times each, in this process:
- facts: reading the host facts (/dev/kvm and its KVM_GET_API_VERSION ioctl, /proc/cpuinfo flags,
  /sys/module), which decide alone wherever they say no (this machine kind: kvm_pvm);
- probe: qemu started paused with -accel kvm -cpu host and told over QMP to quit, which a host whose
  facts say yes pays once per boot (then the decision is read from the cache);
- cached: reading the decision back from its cache file;
and, as the raw tool in the same run, the identical qemu probe from sh. Prints one object.
#>
[CmdletBinding()]
param([int]$Rounds = 10)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
$root = Split-Path -Parent $PSScriptRoot
Import-Module (Join-Path $root 'MelangeRunner.psd1') -Force
$qemu = (Get-Command qemu-system-x86_64 -CommandType Application -ErrorAction Stop | Select-Object -First 1).Source
$engine = [MelangeRunner.Qemu.KvmHostFacts].Assembly
$flags = [Reflection.BindingFlags]'NonPublic,Static'
$probe = [MelangeRunner.Qemu.HostResources].GetMethod('QemuStartsWithKvm', $flags)
$cache = $engine.GetType('MelangeRunner.Qemu.KvmDecisionCache')
$load = $cache.GetMethod('Load', [Reflection.BindingFlags]'Public,Static')

function Measure-Median([scriptblock]$Block) {
    $null = & $Block # warm
    $times = foreach ($i in 1..$Rounds) {
        $w = [Diagnostics.Stopwatch]::StartNew(); $null = & $Block; $w.Elapsed.TotalMilliseconds
    }
    ($times | Sort-Object)[[int][Math]::Floor($Rounds / 2)]
}

$facts = Measure-Median { [MelangeRunner.Qemu.KvmHostFacts]::Read() }
$probeMs = Measure-Median { $probe.Invoke($null, @($qemu, 'q35')) }
$cachedMs = Measure-Median { $load.Invoke($null, @($qemu, 'q35')) }
$raw = Measure-Median {
    & sh -c "printf '%s\n' '{`"execute`":`"qmp_capabilities`"}' '{`"execute`":`"quit`"}' | $qemu -accel kvm -cpu host -machine q35 -nodefaults -display none -no-user-config -S -qmp stdio >/dev/null 2>&1"
}
$decision = [MelangeRunner.Qemu.KvmDecision]::Decide([MelangeRunner.Qemu.KvmHostFacts]::Read(), $null)
[pscustomobject]@{
    FactsMs         = [Math]::Round($facts, 2)
    QemuProbeMs     = [Math]::Round($probeMs, 1)
    RawQemuProbeMs  = [Math]::Round($raw, 1)
    ProbeRatio      = [Math]::Round($probeMs / $raw, 2)
    CachedMs        = [Math]::Round($cachedMs, 2)
    FactsSay        = if ($decision.Usable) { 'kvm (then probe)' } else { 'tcg: ' + $decision.Reason }
}
