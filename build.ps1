<#
.SYNOPSIS
Builds, tests, demonstrates and benchmarks MelangeRunner.

.DESCRIPTION
Tasks:
  Build  compiles the engine and the cmdlets into bin/ (where MelangeRunner.psd1 expects
         them; the engine and its dependencies go to bin/lib, loaded in the module's own
         AssemblyLoadContext) and generates the cmdlet help from docs/cmdlets.
  Test   Build, then the engine's xunit tests and the module's Pester tests; ends with the
         line "N passed, N failed, N skipped" and exits non-zero when anything failed.
  Demo   Build, then a demo build in a bubblewrap pod on a busybox image made here.
  Bench  Build, then the benchmarks under bench/ (results in docs/benchmarks.md).
Host packages that a task needs (bubblewrap, busybox-static) are installed with apt-get
when running as root, else the exact command to run is printed.

.EXAMPLE
dotnet tool restore; dotnet pwsh ./build.ps1 Test
#>
[CmdletBinding()]
param(
    [Parameter(Position = 0)]
    [ValidateSet('Build', 'Test', 'Demo', 'Bench')]
    [string]$Task = 'Build',

    [ValidateSet('Debug', 'Release')]
    [string]$Configuration = 'Release'
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
$Root = $PSScriptRoot
$Bin = Join-Path $Root 'bin'
$env:DOTNET_CLI_TELEMETRY_OPTOUT = '1'
$env:DOTNET_NOLOGO = '1'

# The host programs the tasks need (by path), and the Debian/Ubuntu package that provides each.
$HostPackages = [ordered]@{
    '/usr/bin/bwrap'              = 'bubblewrap'
    '/bin/busybox'                = 'busybox-static'
    '/usr/bin/qemu-system-x86_64' = 'qemu-system-x86'
    '/usr/sbin/sshd'              = 'openssh-server'
    '/usr/bin/ssh'                = 'openssh-client'
    '/sbin/mke2fs'                = 'e2fsprogs'
    '/bin/tar'                    = 'tar'
    '/usr/bin/cpio'               = 'cpio'
    '/usr/bin/zstd'               = 'zstd'
    '/usr/bin/xz'                 = 'xz-utils'
    '/bin/bzip2'                  = 'bzip2'
    '/usr/sbin/debootstrap'       = 'debootstrap'
    '/usr/bin/tmux'               = 'tmux'
    '/usr/bin/script'             = 'bsdutils'
}
$DemoPackages = '/usr/bin/bwrap', '/bin/busybox'
$TestPackages = @($HostPackages.Keys)

function Invoke-Native {
    param([Parameter(Mandatory)][string]$FilePath, [string[]]$ArgumentList = @())
    Write-Verbose "$FilePath $($ArgumentList -join ' ')"
    & $FilePath @ArgumentList
    if ($LASTEXITCODE -ne 0) { throw "'$FilePath $($ArgumentList -join ' ')' failed with exit code $LASTEXITCODE." }
}

function Install-HostPackage {
    param([string[]]$Path)
    $missing = @($Path | Where-Object { -not (Test-Path -LiteralPath $_) } | ForEach-Object { $HostPackages[$_] } | Select-Object -Unique)
    if (-not $missing) { return }
    $install = "apt-get install -y --no-install-recommends $($missing -join ' ')"
    $isRoot = (& id -u) -eq '0'
    if ($isRoot -and (Get-Command apt-get -ErrorAction Ignore)) {
        Write-Host "Installing $($missing -join ', ') ..."
        Invoke-Native apt-get @('update', '-qq')
        Invoke-Native sh @('-c', "DEBIAN_FRONTEND=noninteractive $install >/dev/null")
    } else {
        throw "Missing host packages: $($missing -join ', '). Install them with: sudo apt-get update && sudo $install"
    }
}

function Invoke-BuildTask {
    $null = New-Item -ItemType Directory -Force -Path $Bin
    $lib = Join-Path $Bin 'lib'
    # publish gathers the engine with its dependencies. The engine goes next to the cmdlet
    # assembly (default load context); its dependencies stay in bin/lib, which the module
    # loads in its own context (src/MelangeRunner.PowerShell/ModuleLoader.cs).
    Remove-Item -Recurse -Force $lib -ErrorAction Ignore
    Invoke-Native dotnet @('publish', "$Root/src/MelangeRunner/MelangeRunner.csproj", '-c', $Configuration, '-o', $lib, '--nologo', '-v', 'quiet')
    Move-Item -Force -Path (Join-Path $lib 'MelangeRunner.*') -Exclude '*.deps.json' -Destination $Bin
    Remove-Item -Force (Join-Path $lib 'MelangeRunner.deps.json'), (Join-Path $Bin 'MelangeRunner.deps.json') -ErrorAction Ignore
    $psOut = Join-Path $Root "artifacts/MelangeRunner.PowerShell/$Configuration"
    Invoke-Native dotnet @('build', "$Root/src/MelangeRunner.PowerShell/MelangeRunner.PowerShell.csproj", '-c', $Configuration, '-o', $psOut, '--nologo', '-v', 'quiet')
    Copy-Item -Force -Path (Join-Path $psOut 'MelangeRunner.PowerShell.dll') -Destination $Bin
    $helpScript = Join-Path $Root 'tools/New-MamlHelp.ps1'
    if (Test-Path $helpScript) {
        # Get-Help reads a binary module's help from en-US/ beside the manifest, not beside the assembly.
        & $helpScript -DocsPath (Join-Path $Root 'docs/cmdlets') -OutputPath (Join-Path $Root 'en-US/MelangeRunner.PowerShell.dll-Help.xml')
    }
    Write-Host "Built MelangeRunner into $Bin"
}

function Get-NuGetPackageRoot {
    if ($env:NUGET_PACKAGES) { return $env:NUGET_PACKAGES }
    Join-Path ([Environment]::GetFolderPath('UserProfile')) '.nuget/packages'
}

# What a test run could leave behind: the module's temporary files and directories, its host
# processes (qemu, virtiofsd, the reaper, bwrap), and the containers and images it made in a
# Docker engine (by the labels the docker runner sets).
function Get-MelangeLeftover {
    $tmp = [IO.Path]::GetTempPath()
    @(Get-ChildItem -LiteralPath $tmp -Filter 'melange-*' -Force -ErrorAction Ignore | ForEach-Object { "file $($_.FullName)" })
    @(Get-ChildItem /proc -Directory -ErrorAction Ignore | Where-Object Name -Match '^\d+$' | ForEach-Object {
            $cmd = (Get-Content -LiteralPath "/proc/$($_.Name)/cmdline" -Raw -ErrorAction Ignore) -replace "`0", ' '
            # This process's own reaper lives as long as this process does.
            $parent = ((Get-Content -LiteralPath "/proc/$($_.Name)/status" -ErrorAction Ignore) -match '^PPid:') -replace '\D', ''
            if ("$parent" -eq "$PID") { return }
            if ($cmd -match '^\S*(qemu-system|virtiofsd|bwrap)\b|melange-reaper') { "process $($_.Name) $($cmd.Substring(0, [Math]::Min(120, $cmd.Length)))" }
        })
    if ((Get-Command docker -ErrorAction Ignore) -and (& docker version --format '{{.Server.Version}}' 2>$null)) {
        @(& docker ps -aq --filter 'label=dev.chainguard.melange.runner-owner' 2>$null | ForEach-Object { "container $_" })
        @(& docker images -q --filter 'label=dev.chainguard.melange.runner-import' 2>$null | ForEach-Object { "image $_" })
    }
}

# What is there now and was not before the run, once clean-up that is still under way (a
# reaper whose pwsh was killed by a test) has had 30 s to finish.
function Wait-NoNewLeftover([string[]]$Before) {
    $deadline = [DateTime]::UtcNow.AddSeconds(30)
    while ($true) {
        $new = @(Get-MelangeLeftover | Where-Object { $_ -notin $Before -and $_ -notmatch "melange-tests-$PID" })
        if (-not $new -or [DateTime]::UtcNow -gt $deadline) { return $new }
        Start-Sleep -Milliseconds 500
    }
}

function Invoke-TestTask {
    Install-HostPackage $TestPackages
    Invoke-BuildTask
    # The qemu tests boot Debian's kernel: fetch it once (the README's documented step).
    & (Join-Path $Root 'tools/Get-MelangeKernel.ps1')
    Invoke-Native dotnet @('restore', "$Root/tools/test-packages/test-packages.csproj", '--nologo', '-v', 'quiet')

    # Engine tests (xunit); counts come from the TRX report.
    $results = Join-Path $Root 'artifacts/test-results'
    Remove-Item -Recurse -Force $results -ErrorAction Ignore
    & dotnet test "$Root/tests/MelangeRunner.Tests/MelangeRunner.Tests.csproj" -c $Configuration --nologo `
        --logger 'trx;LogFileName=engine.trx' --logger 'console;verbosity=normal' --results-directory $results
    $trx = [xml](Get-Content -Raw (Join-Path $results 'engine.trx'))
    $counters = $trx.TestRun.ResultSummary.Counters
    $engine = [pscustomobject]@{
        Passed  = [int]$counters.passed
        Failed  = [int]$counters.failed + [int]$counters.error + [int]$counters.timeout + [int]$counters.aborted
        Skipped = [int]$counters.notExecuted
    }

    $leftoversBefore = Get-MelangeLeftover

    # Module tests (Pester), in this process: one pwsh start for the whole suite. The tests
    # run as a user's session would, not under this script's strict mode.
    Set-StrictMode -Off
    $env:NO_COLOR = '1'
    $env:MELANGE_TEST_TMP = (New-Item -ItemType Directory -Path (Join-Path ([IO.Path]::GetTempPath()) "melange-tests-$PID") -Force).FullName
    Import-Module (Join-Path (Get-NuGetPackageRoot) 'pester/6.2.0/tools/Pester.psd1') -Force
    $config = New-PesterConfiguration
    $config.Run.Path = Join-Path $Root 'tests/Pester'
    $config.Run.PassThru = $true
    $config.Output.Verbosity = 'Detailed'
    $config.Output.RenderMode = 'Plaintext'
    $config.TestResult.Enabled = $true
    $config.TestResult.OutputPath = Join-Path $results 'pester.xml'
    try {
        $pester = Invoke-Pester -Configuration $config
    } finally {
        Remove-Item -Recurse -Force $env:MELANGE_TEST_TMP -ErrorAction Ignore
    }

    # Nothing left behind by the whole run: one more check, counted as a test. Pods a test left
    # running are stopped first, as removing the module (or the process exiting) stops them.
    try { Get-MelangePod | Stop-MelangePod } catch { Write-Host "Stopping the pods still running failed: $_" }
    $left = Wait-NoNewLeftover $leftoversBefore
    if ($left) {
        Write-Host "FAILED: the test run left behind:`n  $($left -join "`n  ")"
        # A pod a test never stopped holds its workspace until this process exits.
        try { foreach ($p in @(Get-MelangePod | Where-Object State -NE 'Stopped')) { Write-Host "  (a pod still $($p.State): $($p.Id), $($p.Runner), workspace $($p.WorkspaceDir))" } } catch { }
    } else { Write-Host 'The test run left no temporary files, processes, containers or images behind.' }

    # The failures again, last, where a CI log's tail shows them: the test, and its message.
    $failures = @(
        foreach ($r in @($trx.TestRun.Results.UnitTestResult | Where-Object outcome -In 'Failed', 'Error', 'Timeout', 'Aborted')) {
            "engine: $($r.testName)`n      $((("$($r.Output.ErrorInfo.Message)" -split "`n")[0..5] -join "`n      ").TrimEnd())"
        }
        foreach ($t in @($pester.Failed)) {
            $message = if ($t.ErrorRecord) { "$($t.ErrorRecord[0])" } else { '(no error of its own: its block failed, below)' }
            "module: $($t.ExpandedPath)`n      $((($message -split "`n")[0..5] -join "`n      ").TrimEnd())"
        }
        foreach ($b in @($pester.FailedBlocks) + @($pester.FailedContainers)) { "module: $($b.Name ?? $b.Item) failed in its set-up: $($b.ErrorRecord[0])" }
    )
    if ($failures) { Write-Host "Failed:`n  $($failures -join "`n  ")" }

    $passed = $engine.Passed + $pester.PassedCount + [int](-not $left)
    $failed = $engine.Failed + $pester.FailedCount + $pester.FailedBlocksCount + $pester.FailedContainersCount + [int][bool]$left
    $skipped = $engine.Skipped + $pester.SkippedCount
    Write-Host "engine (xunit): $($engine.Passed) passed, $($engine.Failed) failed, $($engine.Skipped) skipped"
    Write-Host "module (Pester): $($pester.PassedCount) passed, $($pester.FailedCount) failed, $($pester.SkippedCount) skipped"
    Write-Host "$passed passed, $failed failed, $skipped skipped"
    if ($failed -gt 0) { exit 1 }
}

function Invoke-DemoTask {
    Install-HostPackage $DemoPackages
    Invoke-BuildTask
    & (Join-Path $Root 'tools/Invoke-Demo.ps1')
}

function Invoke-BenchTask {
    Install-HostPackage $TestPackages
    Invoke-BuildTask
    & (Join-Path $Root 'bench/Invoke-Benchmarks.ps1')
}

switch ($Task) {
    'Build' { Invoke-BuildTask }
    'Test' { Invoke-TestTask }
    'Demo' { Invoke-DemoTask }
    'Bench' { Invoke-BenchTask }
}
