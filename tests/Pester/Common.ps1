# Shared set-up for the module tests: dot-source it in BeforeAll.
$ErrorActionPreference = 'Stop'
$script:RepoRoot = (Resolve-Path (Join-Path $PSScriptRoot '../..')).Path
$script:ModuleManifest = Join-Path $script:RepoRoot 'MelangeRunner.psd1'
Import-Module $script:ModuleManifest -Force

# The busybox rootfs that the demo uses, made once per test run. build.ps1 Test points
# MELANGE_TEST_TMP at a directory it removes afterwards.
function Get-TestRootfs {
    $dir = if ($env:MELANGE_TEST_TMP) { $env:MELANGE_TEST_TMP } else { [IO.Path]::GetTempPath() }
    $path = Join-Path $dir "melange-test-rootfs-$PID.tar.gz"
    if (-not (Test-Path $path)) {
        $null = & (Join-Path $script:RepoRoot 'tools/New-DemoRootfs.ps1') -OutputPath $path
    }
    $path
}

# Processes whose command line contains a marker string (to prove nothing was left running).
function Get-ProcessByMarker([string]$Marker) {
    Get-ChildItem /proc -Directory | Where-Object Name -Match '^\d+$' | ForEach-Object {
        $cmdline = Get-Content -LiteralPath "/proc/$($_.Name)/cmdline" -Raw -ErrorAction Ignore
        if ($cmdline -and ($cmdline -replace "`0", ' ') -like "*$Marker*" -and [int]$_.Name -ne $PID) { [int]$_.Name }
    }
}

# A signal set when a PowerShell instance writes its first output. The handler is C#:
# a scriptblock handler would run on the instance's thread inside this runspace.
if (-not ('MelangeTestSignals' -as [type])) {
    Add-Type -TypeDefinition @'
using System.Management.Automation;
using System.Threading;
public static class MelangeTestSignals
{
    public static ManualResetEventSlim OnFirstItem(PSDataCollection<PSObject> collection)
    {
        var signal = new ManualResetEventSlim(false);
        collection.DataAdded += (sender, e) => signal.Set();
        return signal;
    }
}
'@
}

# Runs Invoke-MelangePod in another PowerShell instance, waits for the command's first
# output line, then stops that pipeline as Ctrl+C does. Returns the first line, how long
# Stop() took and the final state, and calls $WhileRunning (with the first line) before stopping.
function Invoke-AndStop {
    param($Pod, [string]$Script, [scriptblock]$WhileRunning = {}, [int]$TimeoutSeconds = 60)
    $ps = [powershell]::Create()
    try {
        $null = $ps.AddScript({
                param($pod, $script, $manifest)
                Import-Module $manifest
                $pod | Invoke-MelangePod -Command sh, -c, $script
            }).AddArgument($Pod).AddArgument($Script).AddArgument($script:ModuleManifest)
        $output = [System.Management.Automation.PSDataCollection[psobject]]::new()
        $started = [MelangeTestSignals]::OnFirstItem($output)
        $null = $ps.BeginInvoke([System.Management.Automation.PSDataCollection[psobject]]::new(), $output)
        if (-not $started.Wait([TimeSpan]::FromSeconds($TimeoutSeconds))) { throw "No output within $TimeoutSeconds s." }
        & $WhileRunning $output[0]
        $watch = [Diagnostics.Stopwatch]::StartNew()
        $ps.Stop()
        [pscustomobject]@{ FirstLine = $output[0]; StopSeconds = $watch.Elapsed.TotalSeconds; State = $ps.InvocationStateInfo.State }
    } finally {
        $ps.Dispose()
    }
}

# Starts another pwsh (the same one that runs the tests) on a script, with its own TMPDIR
# when given, and standard output readable line by line: for the tests that kill PowerShell.
function Start-ChildPwsh {
    param([Parameter(Mandatory)][string]$Script, [string]$TempDirectory)
    $host_ = [Environment]::ProcessPath
    $start = [Diagnostics.ProcessStartInfo]::new($host_)
    # A pwsh run as a .NET tool is 'dotnet pwsh.dll'; an installed one is its own executable.
    if ([IO.Path]::GetFileName($host_) -eq 'dotnet') { $start.ArgumentList.Add((Join-Path $PSHOME 'pwsh.dll')) }
    foreach ($a in '-NoProfile', '-NonInteractive', '-Command', $Script) { $start.ArgumentList.Add($a) }
    $start.RedirectStandardOutput = $true
    $start.RedirectStandardInput = $true
    $start.UseShellExecute = $false
    if ($TempDirectory) { $start.Environment['TMPDIR'] = $TempDirectory }
    [Diagnostics.Process]::Start($start)
}

# Reads lines of a child's output until one matches $Pattern (returned), failing after $TimeoutSeconds.
function Wait-ChildLine {
    param([Parameter(Mandatory)][Diagnostics.Process]$Process, [Parameter(Mandatory)][string]$Pattern, [int]$TimeoutSeconds = 240)
    $deadline = [DateTime]::UtcNow.AddSeconds($TimeoutSeconds)
    $seen = [Collections.Generic.List[string]]::new()
    while ($true) {
        $left = $deadline - [DateTime]::UtcNow
        $read = $Process.StandardOutput.ReadLineAsync()
        if ($left -le [TimeSpan]::Zero -or -not $read.Wait($left)) { throw "No line matching '$Pattern' within $TimeoutSeconds s; the child said: $($seen -join ' | ')" }
        $line = $read.Result
        if ($null -eq $line) { throw "The child ended without a line matching '$Pattern'; it said: $($seen -join ' | ')" }
        if ($line -match $Pattern) { return $line }
        $seen.Add($line)
    }
}

# The module's cache directory, by the engine's rule (HostCache): $XDG_CACHE_HOME only when it is
# an absolute path, else ~/.cache; then melange-runner.
function Get-MelangeCacheRoot {
    $base = if ($env:XDG_CACHE_HOME -and [IO.Path]::IsPathRooted($env:XDG_CACHE_HOME)) { $env:XDG_CACHE_HOME } else { Join-Path $HOME '.cache' }
    Join-Path $base 'melange-runner'
}

# Waits until a condition holds (a process gone, a file removed), failing after $TimeoutSeconds.
function Wait-Until {
    param([Parameter(Mandatory)][scriptblock]$Condition, [int]$TimeoutSeconds = 20, [string]$Because = 'the condition')
    $deadline = [DateTime]::UtcNow.AddSeconds($TimeoutSeconds)
    while (-not (& $Condition)) {
        if ([DateTime]::UtcNow -gt $deadline) { throw "Timed out after $TimeoutSeconds s waiting for $Because." }
        Start-Sleep -Milliseconds 100
    }
}

# Runs a script file in another pwsh (-File, as an Azure Pipelines pwsh step does) with extra
# environment variables ($null removes one), and returns its exit code and its standard output
# exactly as written (bytes decoded as UTF-8, line endings kept).
function Invoke-ChildPwshFile {
    param([Parameter(Mandatory)][string]$Script, [hashtable]$Environment = @{}, [string[]]$ArgumentList = @())
    $file = Join-Path ([IO.Path]::GetTempPath()) "melange-child-$PID-$([guid]::NewGuid().ToString('n')).ps1"
    Set-Content -LiteralPath $file -Value $Script
    try {
        $host_ = [Environment]::ProcessPath
        $start = [Diagnostics.ProcessStartInfo]::new($host_)
        if ([IO.Path]::GetFileName($host_) -eq 'dotnet') { $start.ArgumentList.Add((Join-Path $PSHOME 'pwsh.dll')) }
        foreach ($a in @('-NoProfile', '-NonInteractive', '-File', $file) + $ArgumentList) { $start.ArgumentList.Add($a) }
        $start.RedirectStandardOutput = $true
        $start.RedirectStandardError = $true
        $start.UseShellExecute = $false
        $start.Environment['NO_COLOR'] = '1'
        foreach ($name in 'TF_BUILD', 'MELANGE_AZURE_PIPELINES') { $null = $start.Environment.Remove($name) }
        foreach ($k in $Environment.Keys) {
            if ($null -eq $Environment[$k]) { $null = $start.Environment.Remove($k) } else { $start.Environment[$k] = $Environment[$k] }
        }
        $p = [Diagnostics.Process]::Start($start)
        $stderr = $p.StandardError.ReadToEndAsync()
        $stdout = $p.StandardOutput.BaseStream
        $buffer = [IO.MemoryStream]::new()
        $stdout.CopyTo($buffer)
        $p.WaitForExit()
        [pscustomobject]@{ ExitCode = $p.ExitCode; StdOut = [Text.Encoding]::UTF8.GetString($buffer.ToArray()); StdErr = $stderr.Result }
    } finally {
        Remove-Item -LiteralPath $file -ErrorAction Ignore
    }
}

# The qemu processes this pwsh started (its children), so that a test counts its own pods' VMs
# and not every qemu on the host.
function Get-ChildQemu {
    Get-ChildItem /proc -Directory | Where-Object Name -Match '^\d+$' | Where-Object {
        $stat = Get-Content -LiteralPath "/proc/$($_.Name)/stat" -Raw -ErrorAction Ignore
        $stat -and $stat -match '\(qemu-system-[^)]*\) \S+ (\d+) ' -and [int]$Matches[1] -eq $PID
    } | ForEach-Object { [int]$_.Name }
}

# An OCI image layout around a real layer (default: the busybox rootfs), whose config sets Env and
# architecture; -Platform also names the platform in the index, as multi-arch indexes do.
function New-OciLayout {
    param([Parameter(Mandatory)][string]$Dir, [string[]]$Env = @(), [string]$Architecture = 'amd64', [string]$Layer = (Get-TestRootfs), [switch]$Platform, [string]$WorkingDir, [string]$User)
    $blobs = New-Item -ItemType Directory -Force (Join-Path $Dir 'blobs/sha256')
    function Add-Blob([byte[]]$Bytes) {
        $hex = [Convert]::ToHexString([Security.Cryptography.SHA256]::HashData($Bytes)).ToLowerInvariant()
        [IO.File]::WriteAllBytes((Join-Path $blobs $hex), $Bytes)
        @{ digest = "sha256:$hex"; size = $Bytes.Length }
    }
    function Add-Json($Object) { Add-Blob ([Text.Encoding]::UTF8.GetBytes(($Object | ConvertTo-Json -Depth 8 -Compress))) }
    $layerBlob = Add-Blob ([IO.File]::ReadAllBytes($Layer))
    $imageConfig = @{ Env = $Env }
    if ($WorkingDir) { $imageConfig.WorkingDir = $WorkingDir }
    if ($User) { $imageConfig.User = $User }
    $config = Add-Json @{ architecture = $Architecture; os = 'linux'; rootfs = @{ type = 'layers'; diff_ids = @() }; config = $imageConfig }
    $manifest = Add-Json @{
        schemaVersion = 2; mediaType = 'application/vnd.oci.image.manifest.v1+json'
        config = @{ mediaType = 'application/vnd.oci.image.config.v1+json'; digest = $config.digest; size = $config.size }
        layers = @(@{ mediaType = 'application/vnd.oci.image.layer.v1.tar+gzip'; digest = $layerBlob.digest; size = $layerBlob.size })
    }
    $descriptor = @{ mediaType = 'application/vnd.oci.image.manifest.v1+json'; digest = $manifest.digest; size = $manifest.size }
    if ($Platform) { $descriptor.platform = @{ architecture = $Architecture; os = 'linux' } }
    Set-Content -LiteralPath (Join-Path $Dir 'oci-layout') -Value '{"imageLayoutVersion":"1.0.0"}' -NoNewline
    @{ schemaVersion = 2; manifests = @($descriptor) } | ConvertTo-Json -Depth 8 -Compress | Set-Content -LiteralPath (Join-Path $Dir 'index.json') -NoNewline
    $Dir
}

# Raw tar building for the hostile corpus (HostileImage.Tests.ps1, DockerHostile.Tests.ps1):
# what System.Formats.Tar refuses to write (raw name bytes, .., NUL, PAX records of any kind).
function Oct([string]$Digits) { [Convert]::ToInt32($Digits, 8) }

# One ustar header block (512 bytes) for raw name bytes: what System.Formats.Tar cannot write
# (names with invalid UTF-8).
function New-Header([byte[]]$Name, [char]$Type, [long]$Size, [int]$Mode = 420, [byte[]]$Link = @()) {
    $h = [byte[]]::new(512)
    [Array]::Copy($Name, $h, $Name.Length)
    $ascii = [Text.Encoding]::ASCII
    $put = { param($text, $at) $b = $ascii.GetBytes($text); [Array]::Copy($b, 0, $h, $at, $b.Length) }
    & $put ([Convert]::ToString($Mode, 8).PadLeft(7, '0')) 100
    & $put '0000000' 108
    & $put '0000000' 116
    & $put ([Convert]::ToString($Size, 8).PadLeft(11, '0')) 124
    & $put '14000000000' 136
    $h[156] = [byte]$Type
    if ($Link.Length) { [Array]::Copy($Link, 0, $h, 157, $Link.Length) }
    & $put "ustar`0" 257
    & $put '00' 263
    for ($i = 148; $i -lt 156; $i++) { $h[$i] = 32 }
    $sum = 0; foreach ($b in $h) { $sum += $b }
    & $put (([Convert]::ToString($sum, 8).PadLeft(6, '0')) + "`0 ") 148
    $h
}

# A tar from raw entries: @{ Name = [byte[]]; Type = '0'|'2'|'5'; Data = [byte[]]; Pax = @{ key = [byte[]] }; Mode }.
function New-RawTar([string]$Path, [object[]]$Entries) {
    $out = [IO.MemoryStream]::new()
    $pad = { param([long]$n) if ($n % 512) { $z = [byte[]]::new(512 - $n % 512); $out.Write($z, 0, $z.Length) } }
    foreach ($e in $Entries) {
        if ($e.Pax) {
            $records = [IO.MemoryStream]::new()
            foreach ($k in $e.Pax.Keys) {
                $body = [byte[]]([Text.Encoding]::UTF8.GetBytes(" $k=") + $e.Pax[$k] + [byte[]](10))
                $len = $body.Length + 1
                while (("$len").Length + $body.Length -ne $len) { $len = ("$len").Length + $body.Length }
                $lb = [Text.Encoding]::ASCII.GetBytes("$len")
                $records.Write($lb, 0, $lb.Length); $records.Write($body, 0, $body.Length)
            }
            $bytes = $records.ToArray()
            $hdr = New-Header ([Text.Encoding]::ASCII.GetBytes('PaxHeaders/x')) 'x' $bytes.Length
            $out.Write($hdr, 0, 512); $out.Write($bytes, 0, $bytes.Length); & $pad $bytes.Length
        }
        [byte[]]$data = @(); if ($e.Data) { $data = $e.Data }
        [byte[]]$link = @(); if ($e.Link) { $link = $e.Link }
        $mode = if ($e.Mode) { $e.Mode } else { Oct '644' }
        $hdr = New-Header ([byte[]]$e.Name) ([char]$e.Type) $data.Length $mode $link
        $out.Write($hdr, 0, 512); $out.Write($data, 0, $data.Length); & $pad $data.Length
    }
    $out.Write([byte[]]::new(1024), 0, 1024)
    [IO.File]::WriteAllBytes($Path, $out.ToArray())
    Get-Item $Path
}

function Bytes([string]$Text) { [Text.Encoding]::UTF8.GetBytes($Text) }
