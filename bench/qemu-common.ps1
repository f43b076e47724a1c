<#
.SYNOPSIS
Helpers shared by the qemu benchmarks (dot-source it): medians, load averages, this
process's memory counters, and an OpenSSH client key installed in a running qemu pod.
#>

function Get-Median([double[]]$Values) {
    $s = @($Values | Sort-Object)
    if ($s.Count -eq 0) { return [double]::NaN }
    if ($s.Count % 2) { $s[[int][Math]::Floor($s.Count / 2)] } else { ($s[$s.Count / 2 - 1] + $s[$s.Count / 2]) / 2 }
}

# "1.23 0.98 0.77": the 1/5/15-minute load averages.
function Get-LoadAverage { (Get-Content /proc/loadavg) -replace '^(\S+ \S+ \S+).*', '$1' }

# The 1-minute load average as a number.
function Get-Load1 { [double]((Get-Content /proc/loadavg) -split ' ')[0] }

# Waits (up to -MaxSeconds) until the 1-minute load average is at most -Below; returns the load it saw last.
function Wait-LowLoad([double]$Below = 4, [int]$MaxSeconds = 60) {
    $sw = [Diagnostics.Stopwatch]::StartNew()
    while ((Get-Load1) -gt $Below -and $sw.Elapsed.TotalSeconds -lt $MaxSeconds) { Start-Sleep -Seconds 5 }
    Get-Load1
}

# This process's memory counters from /proc/self/status, in KiB (VmRSS, VmHWM, ...).
function Get-ProcessMemoryKiB([string]$Field) {
    $line = [IO.File]::ReadAllLines('/proc/self/status') | Where-Object { $_ -like "${Field}:*" } | Select-Object -First 1
    [long]($line -replace '\D', '')
}

# Resets the kernel's peak-RSS mark (VmHWM) of this process to its current RSS.
function Reset-PeakRss { [IO.File]::WriteAllText('/proc/self/clear_refs', '5') }

# Runs a command on the pod's control connection (root in the initramfs, not chrooted)
# through PodSshClient.Run; throws when it fails.
function Invoke-PodControl($Pod, [string]$Command) {
    $r = $Pod.ControlClient.Run($Command)
    if ($r.ExitCode -ne 0) { throw "Control command failed ($($r.ExitCode)): $Command`n$($r.Error)" }
    $r.Output
}

<#
Makes an Ed25519 key pair for OpenSSH's client, installs its public key for root in the
running pod (through the pod's control client), pins the guest's host key for both forwarded
ports in a known_hosts file (ssh-keyscan: trust on first use, acceptable for a benchmark on
loopback) and returns what `ssh` needs: the options and the two ports.
#>
function New-PodOpenSshAccess($Pod, [string]$Directory) {
    $key = Join-Path $Directory 'id_ed25519'
    & ssh-keygen -q -t ed25519 -N '' -C melange-bench -f $key
    if ($LASTEXITCODE) { throw 'ssh-keygen failed' }
    $pub = (Get-Content "$key.pub" -Raw).Trim()
    # sshd reads authorized keys before it chroots (AuthorizedKeysFile /etc/ssh/authorized_keys/%u
    # .ssh/authorized_keys in the initramfs), so the initramfs files serve port 22 too; the
    # chroot's /mount/root/.ssh/authorized_keys is added as well, as a user would.
    $null = Invoke-PodControl $Pod ("umask 077 && mkdir -p /root/.ssh /mount/root/.ssh && " +
        "echo '$pub' >> /root/.ssh/authorized_keys && echo '$pub' >> /mount/root/.ssh/authorized_keys")
    $buildPort = [int]($Pod.SshAddress -split ':')[1]
    $controlPort = [int]($Pod.SshControlAddress -split ':')[1]
    $knownHosts = Join-Path $Directory 'known_hosts'
    $lines = foreach ($p in $buildPort, $controlPort) {
        $k = @(& ssh-keyscan -T 30 -t ed25519 -p $p 127.0.0.1 2>$null)
        if ($LASTEXITCODE -or $k.Count -eq 0) { throw "ssh-keyscan of port $p failed" }
        $k
    }
    Set-Content -LiteralPath $knownHosts -Value $lines
    $options = @('-F', '/dev/null', '-i', $key, '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes',
        '-o', "UserKnownHostsFile=$knownHosts", '-o', 'StrictHostKeyChecking=yes', '-o', 'LogLevel=ERROR')
    # Check both ports answer as root.
    foreach ($p in $buildPort, $controlPort) {
        $null = & ssh @options -p $p root@127.0.0.1 true
        if ($LASTEXITCODE) { throw "OpenSSH could not log in on port $p ($LASTEXITCODE)" }
    }
    [pscustomobject]@{ Options = $options; BuildPort = $buildPort; ControlPort = $controlPort; KnownHosts = $knownHosts; Key = $key }
}
