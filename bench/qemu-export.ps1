<#
.SYNOPSIS
Workspace export from a running qemu pod: `Export-MelangeWorkspace -Destination` against
`ssh -p CONTROLPORT root@127.0.0.1 'cd /mount/home/build && /bin/tar cpf - melange-out' | tar x -C dir`
from the same VM, at two sizes of melange-out, with the exporting pwsh process's memory.

.DESCRIPTION
melange-out is made in the VM, in halves of -HalfMiB MiB: half of it one random file
(`dd if=/dev/urandom`), half many small files (512 B to 15.5 KiB, 8 KiB on average, over 32
directories, written by one busybox awk process). The first half is measured (size 1), then
the second half is added and everything measured again (size 2 = twice size 1).

For each size: -Rounds rounds of both sides, the order alternating. Both sides extract into a
fresh directory under -ExtractRoot (default /dev/shm, tmpfs, so that the disk's write-back does
not swamp the comparison), deleted after each run (not timed). The module side runs in this
warm session, timed with a Stopwatch; before each export this process's peak-RSS mark is reset
(`5` into /proc/self/clear_refs, after a full GC) and VmRSS read; VmHWM after the export minus
that VmRSS is the export's memory growth. The OpenSSH side is one bash pipeline timed by bash.
The first run of each size checks that both sides extracted the same tree (`diff -r`).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] $Pod,
    [Parameter(Mandatory)] $Ssh,          # New-PodOpenSshAccess's object
    [int]$HalfMiB = 50,
    [int]$Rounds = 3,
    [string]$ExtractRoot = $(if (Test-Path /dev/shm) { '/dev/shm' } else { [IO.Path]::GetTempPath() })
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
. (Join-Path $PSScriptRoot 'qemu-common.ps1')

function Add-Half([string]$Name) {
    $blobMiB = [int]($HalfMiB / 2)
    $smallBytes = ($HalfMiB - $blobMiB) * 1MB
    $awk = @'
BEGIN {
    line = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ+/"
    pool = line; while (length(pool) < 16384) pool = pool pool
    cmd = "mkdir -p"; for (d = 0; d < 32; d++) cmd = cmd sprintf(" %s/d%02d", dir, d); system(cmd)
    n = 0; bytes = 0
    while (bytes < total) {
        size = 512 * (1 + n % 31)
        f = sprintf("%s/d%02d/f%05d", dir, n % 32, n)
        s = sprintf("%s %d\n", f, n)
        printf "%s%s", s, substr(pool, 1, size - length(s)) > f
        close(f)
        bytes += size; n++
    }
    print n
}
'@
    $script = "mkdir -p melange-out/$Name && dd if=/dev/urandom of=melange-out/$Name/blob bs=1M count=$blobMiB 2>/dev/null && " +
              "awk -v dir=melange-out/$Name/small -v total=$smallBytes '$awk'"
    $files = $Pod | Invoke-MelangePod -Command sh, -c, $script
    [int]"$files".Trim() + 1
}

$bashExport = @'
dir=$1; shift
t0=$EPOCHREALTIME
ssh "$@" 'cd /mount/home/build && /bin/tar cpf - melange-out' | tar x -C "$dir"
st=("${PIPESTATUS[@]}")
t1=$EPOCHREALTIME
[ "${st[0]}" = 0 ] && [ "${st[1]}" = 0 ] || { echo "ssh ${st[0]} tar ${st[1]}" >&2; exit 1; }
echo "$t0 $t1"
'@
$sshArgs = @($Ssh.Options) + @('-p', "$($Ssh.ControlPort)", 'root@127.0.0.1')
$n = 0
function New-Dest { $script:n++; $d = Join-Path $ExtractRoot "melange-bench-export-$PID-$script:n"; $null = New-Item -ItemType Directory -Path $d; $d }

function Invoke-RawExport {
    $d = New-Dest
    $out = & bash -c $bashExport bash $d @sshArgs
    if ($LASTEXITCODE) { throw "ssh | tar failed ($LASTEXITCODE)" }
    $t = "$out".Trim() -split ' '
    [pscustomobject]@{ Ms = ([double]$t[1] - [double]$t[0]) * 1000; Dir = $d }
}
function Invoke-ModuleExport {
    $d = New-Dest
    [GC]::Collect(); [GC]::WaitForPendingFinalizers(); [GC]::Collect()
    Reset-PeakRss
    $rss = Get-ProcessMemoryKiB VmRSS
    $sw = [Diagnostics.Stopwatch]::StartNew()
    $null = $Pod | Export-MelangeWorkspace -Destination $d
    $sw.Stop()
    $hwm = Get-ProcessMemoryKiB VmHWM
    [pscustomobject]@{ Ms = $sw.Elapsed.TotalMilliseconds; Dir = $d; RssKiB = $rss; HwmKiB = $hwm; GrowthKiB = $hwm - $rss }
}

$sizes = [Collections.Generic.List[object]]::new()
$files = 0
foreach ($half in 'a', 'b') {
    $mk = [Diagnostics.Stopwatch]::StartNew()
    $files += Add-Half $half
    $mk.Stop()
    $bytes = [long](Invoke-PodControl $Pod 'du -sb /mount/home/build/melange-out | cut -f1').Trim()
    Write-Host ("   melange-out: {0:N1} MiB, {1:N0} files (made in the VM in {2:N1} s); exporting, {3} rounds per side" -f ($bytes / 1MB), $files, $mk.Elapsed.TotalSeconds, $Rounds)
    $module = [Collections.Generic.List[object]]::new(); $raw = [Collections.Generic.List[object]]::new()
    $loadStart = Get-LoadAverage
    for ($r = 0; $r -lt $Rounds; $r++) {
        if ($r % 2 -eq 0) { $m = Invoke-ModuleExport; $x = Invoke-RawExport } else { $x = Invoke-RawExport; $m = Invoke-ModuleExport }
        if ($r -eq 0) {
            $diff = & diff -r --no-dereference $m.Dir $x.Dir 2>&1 | Select-Object -First 5
            if ($LASTEXITCODE) { throw "The two exports differ:`n$($diff -join "`n")" }
        }
        Remove-Item -LiteralPath $m.Dir, $x.Dir -Recurse -Force
        $module.Add($m); $raw.Add($x)
        Write-Host ("   round {0}: Export-MelangeWorkspace {1:N2} s (pwsh VmHWM growth {2:N1} MiB), ssh | tar {3:N2} s" -f ($r + 1), ($m.Ms / 1000), ($m.GrowthKiB / 1KB), ($x.Ms / 1000))
    }
    $mMed = Get-Median @($module.Ms); $rMed = Get-Median @($raw.Ms)
    $sizes.Add([pscustomobject]@{
            Bytes           = $bytes
            Files           = $files
            ModuleMs        = @($module.Ms)
            RawMs           = @($raw.Ms)
            ModuleMedian    = $mMed
            RawMedian       = $rMed
            Ratio           = $mMed / $rMed
            GrowthKiB       = @($module.GrowthKiB)
            GrowthMaxKiB    = ($module.GrowthKiB | Measure-Object -Maximum).Maximum
            GrowthMedianKiB = Get-Median @($module.GrowthKiB)
            BaselineRssKiB  = Get-Median @($module.RssKiB)
            Loads           = @($loadStart, (Get-LoadAverage))
        })
}
[pscustomobject]@{
    Sizes       = @($sizes)
    RawCommand  = "ssh $($sshArgs -join ' ') 'cd /mount/home/build && /bin/tar cpf - melange-out' | tar x -C <fresh dir>"
    ExtractRoot = $ExtractRoot
}
