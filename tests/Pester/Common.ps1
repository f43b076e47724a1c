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
