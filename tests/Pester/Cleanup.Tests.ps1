# What every way of ending PowerShell leaves behind: nothing. docs/cleanup.md is the table
# (phase x signal x runner) that these tests fill in.
BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $noQemu = -not (Test-MelangeRunner -Name qemu)
    $noBwrap = -not (Test-MelangeRunner -Name bubblewrap)
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')

    # The per-pod files a qemu or bubblewrap pod makes in the temp directory (images excluded: they outlive a session by design).
    function Get-PodLeftover([string]$Directory) {
        Get-ChildItem -LiteralPath $Directory -Force -ErrorAction Ignore |
            Where-Object Name -Match '^melange-(initramfs|disk|workspace|virtiofsd|ssh|extrafiles)-' |
            ForEach-Object FullName
    }


    function Test-ProcessAlive([int]$Id) { Test-Path "/proc/$Id" }

    # Field 5 of /proc/PID/stat, counted after the name's closing parenthesis.
    function Get-ProcessGroup([int]$Id) {
        $stat = Get-Content -LiteralPath "/proc/$Id/stat" -Raw
        [int](($stat.Substring($stat.LastIndexOf(')') + 2) -split ' ')[2])
    }

    # A child pwsh that starts a pod and says READY <qemu pid or 0> <workspace>, then waits to be killed.
    function Start-PodHolder([string]$Runner, [string]$TempDirectory, [string]$Then = 'Start-Sleep -Seconds 600') {
        $script = @"
`$ErrorActionPreference = 'Stop'
Import-Module '$script:ModuleManifest'
`$img = Import-MelangeImage -Path '$(Get-TestRootfs)' -Runner $Runner
`$pod = `$img | Start-MelangePod -Memory 1Gi
[Console]::Out.WriteLine("READY `$([int]`$pod.QemuPid) `$(`$pod.WorkspaceDir)")
[Console]::Out.Flush()
$Then
"@
        Start-ChildPwsh -Script $script -TempDirectory $TempDirectory
    }
}

Describe 'Ctrl+C during Start-MelangePod' -Tag qemu -Skip:$noQemu {
    It 'returns only once the VM is gone and its files are removed' {
        $img = Import-MelangeImage -Path (Get-TestRootfs) -Runner qemu
        $tmp = [IO.Path]::GetTempPath()
        $before = @(Get-PodLeftover $tmp)
        $ps = [powershell]::Create()
        try {
            $null = $ps.AddScript({
                    param($img, $manifest)
                    Import-Module $manifest
                    $img | Start-MelangePod -Memory 1Gi
                }).AddArgument($img).AddArgument($script:ModuleManifest)
            $null = $ps.BeginInvoke()
            # Stop once qemu runs: the boot is under way, with the disk and the keyed initramfs on disk.
            $qemu = $null
            Wait-Until -TimeoutSeconds 120 -Because 'qemu to start' -Condition { ($script:q = @(Get-ChildQemu)).Count -gt 0 }
            $qemu = $script:q[0]
            $ps.Stop()

            # No waiting here: the stop itself must have cleaned up.
            Test-ProcessAlive $qemu | Should -BeFalse -Because 'the VM must be gone when the stop returns'
            @(Get-PodLeftover $tmp | Where-Object { $_ -notin $before }) | Should -BeNullOrEmpty
            $ps.InvocationStateInfo.State | Should -Be 'Stopped'
        } finally {
            $ps.Dispose()
            $img | Remove-MelangeImage -Confirm:$false
        }
    }
}

Describe 'PowerShell killed while it holds a <Runner> pod' -ForEach @(
    @{ Runner = 'qemu'; Skip = $noQemu }
    @{ Runner = 'bubblewrap'; Skip = $noBwrap }
) {
    BeforeEach {
        $script:tmp = (New-Item -ItemType Directory -Force (Join-Path $TestDrive "tmp-$Runner-$([guid]::NewGuid().ToString('N').Substring(0, 8))")).FullName
    }

    It 'with SIGKILL: the <Runner> pod''s processes end within seconds and its files go' -Skip:$Skip {
        $child = Start-PodHolder -Runner $Runner -TempDirectory $script:tmp
        try {
            $ready = Wait-ChildLine -Process $child -Pattern '^READY '
            $fields = $ready -split ' ', 3
            $qemu = [int]$fields[1]
            $workspace = $fields[2]
            if ($Runner -eq 'qemu') {
                Test-ProcessAlive $qemu | Should -BeTrue
                # Out of pwsh's process group: the terminal's Ctrl+C, sent to that whole group, must not end the VM.
                Get-ProcessGroup $qemu | Should -Not -Be (Get-ProcessGroup $child.Id)
            }
            Test-Path $workspace | Should -BeTrue

            $child.Kill() # SIGKILL: no .NET handler runs
            $child.WaitForExit()

            if ($Runner -eq 'qemu') { Wait-Until -Because "qemu $qemu to end" -Condition { -not (Test-ProcessAlive $qemu) } }
            Wait-Until -Because 'the per-pod files to be removed' -Condition { -not (Get-PodLeftover $script:tmp) }
            Test-Path $workspace | Should -BeFalse
        } finally {
            if (-not $child.HasExited) { $child.Kill() }
            $child.Dispose()
        }
    }

    It 'with SIGTERM: the <Runner> pod is stopped and its files go' -Skip:$Skip {
        $child = Start-PodHolder -Runner $Runner -TempDirectory $script:tmp
        try {
            $ready = Wait-ChildLine -Process $child -Pattern '^READY '
            $fields = $ready -split ' ', 3
            $qemu = [int]$fields[1]
            $null = & kill -TERM $child.Id
            $child.WaitForExit(60000) | Should -BeTrue
            if ($Runner -eq 'qemu') { Wait-Until -Because "qemu $qemu to end" -Condition { -not (Test-ProcessAlive $qemu) } }
            Wait-Until -Because 'the per-pod files to be removed' -Condition { -not (Get-PodLeftover $script:tmp) }
            Test-Path $fields[2] | Should -BeFalse
        } finally {
            if (-not $child.HasExited) { $child.Kill() }
            $child.Dispose()
        }
    }
}

Describe 'PowerShell killed during a bubblewrap step' -Skip:$noBwrap {
    It 'with SIGKILL: the step''s processes end and the pod''s workspace goes' {
        $tmp = (New-Item -ItemType Directory -Force (Join-Path $TestDrive 'tmp-step')).FullName
        $id = [guid]::NewGuid().ToString('N')
        $marker = "melange-step-$id"
        # The marker is put together in the child, so that only the step's own command line holds it.
        $step = @"
`$pod | Invoke-MelangePod -Command sh, -c, ('sh -c ''sleep 600; : melange-step' + '-$id'' & echo STEP; wait')
"@
        $child = Start-PodHolder -Runner bubblewrap -TempDirectory $tmp -Then $step
        try {
            $ready = Wait-ChildLine -Process $child -Pattern '^READY '
            $null = Wait-ChildLine -Process $child -Pattern '^STEP$'
            @(Get-ProcessByMarker $marker).Count | Should -BeGreaterThan 0
            $child.Kill()
            $child.WaitForExit()
            Wait-Until -Because 'the step to end' -Condition { -not (Get-ProcessByMarker $marker) }
            Wait-Until -Because 'the workspace to be removed' -Condition { -not (Test-Path ($ready -split ' ', 3)[2]) }
        } finally {
            if (-not $child.HasExited) { $child.Kill() }
            $child.Dispose()
        }
    }
}

Describe 'Import-MelangeImage interrupted' -ForEach @(
    @{ Runner = 'bubblewrap'; Skip = $noBwrap; Prefix = 'melange-guest-' }
    @{ Runner = 'qemu'; Skip = $noQemu; Prefix = 'melange-rootfs-' }
) {
    BeforeAll {
        # An image that arrives slowly: a FIFO fed the first part of a real layer at once and the
        # rest a kilobyte at a time, so that the import is certainly mid-stream when it is stopped.
        function Start-SlowImage([string]$Fifo) {
            $null = & mkfifo $Fifo
            $feed = 'exec 3>"$1"; head -c 400000 "$2" 2>/dev/null >&3 || exit 0; size=$(stat -c %s "$2"); off=400000; ' +
                'while [ $off -lt $size ]; do tail -c +$((off + 1)) "$2" 2>/dev/null | head -c 1024 2>/dev/null >&3 || exit 0; off=$((off + 1024)); sleep 0.02; done; read _'
            $start = [Diagnostics.ProcessStartInfo]::new('/bin/sh')
            foreach ($a in '-c', $feed, 'feeder', $Fifo, (Get-TestRootfs)) { $start.ArgumentList.Add($a) }
            $start.RedirectStandardInput = $true
            $start.UseShellExecute = $false
            [Diagnostics.Process]::Start($start)
        }
        function Stop-SlowImage($Feeder, [string]$Fifo) {
            # A feeder still blocked opening the FIFO is released by opening it for reading.
            if (-not $Feeder.HasExited) { $Feeder.Kill(); $Feeder.WaitForExit() }
            $Feeder.Dispose()
        }
        function Get-ImportDir([string]$Directory, [string]$Prefix) { @(Get-ChildItem -LiteralPath $Directory -Directory -Filter "$Prefix*" -ErrorAction Ignore | ForEach-Object FullName) }
    }

    It 'with Ctrl+C: the partial <Runner> image is gone when the stop returns' -Skip:$Skip {
        $tmp = [IO.Path]::GetTempPath()
        $before = Get-ImportDir $tmp $Prefix
        $fifo = Join-Path $TestDrive "slow-$Runner.tar.gz"
        $feeder = Start-SlowImage $fifo
        $ps = [powershell]::Create()
        try {
            $null = $ps.AddScript({ param($path, $runner, $manifest) Import-Module $manifest; Import-MelangeImage -Path $path -Runner $runner }).
                AddArgument($fifo).AddArgument($Runner).AddArgument($script:ModuleManifest)
            $null = $ps.BeginInvoke()
            Wait-Until -TimeoutSeconds 60 -Because 'the import to start' -Condition { @(Get-ImportDir $tmp $Prefix | Where-Object { $_ -notin $before }).Count -gt 0 }
            $ps.Stop()
            @(Get-ImportDir $tmp $Prefix | Where-Object { $_ -notin $before }) | Should -BeNullOrEmpty
        } finally {
            $ps.Dispose()
            Stop-SlowImage $feeder $fifo
        }
    }

    It 'with SIGKILL of pwsh: the reaper removes the partial <Runner> image' -Skip:$Skip {
        $tmp = (New-Item -ItemType Directory -Force (Join-Path $TestDrive "tmp-import-$Runner")).FullName
        $fifo = Join-Path $TestDrive "slow-kill-$Runner.tar.gz"
        $feeder = Start-SlowImage $fifo
        $child = Start-ChildPwsh -TempDirectory $tmp -Script "Import-Module '$script:ModuleManifest'; Import-MelangeImage -Path '$fifo' -Runner $Runner"
        try {
            Wait-Until -TimeoutSeconds 60 -Because 'the import to start' -Condition { (Get-ImportDir $tmp $Prefix).Count -gt 0 }
            $child.Kill()
            $child.WaitForExit()
            Wait-Until -Because 'the partial image to be removed' -Condition { (Get-ImportDir $tmp $Prefix).Count -eq 0 }
        } finally {
            if (-not $child.HasExited) { $child.Kill() }
            $child.Dispose()
            Stop-SlowImage $feeder $fifo
        }
    }
}

Describe 'PowerShell killed during Export-MelangeWorkspace' -Skip:$noBwrap {
    It 'with SIGKILL: no partial file is left in the destination (<Form>)' -ForEach @(
        # Sparse files: quick to make, long to export. Into a directory the zeros become holes again
        # (fast), so that file is bigger; the tar file is written whole, so that one is smaller.
        @{ Form = '-Destination'; Size = '256G'; Export = '$pod | Export-MelangeWorkspace -Destination $dest' }
        @{ Form = '-AsTarPath'; Size = '4G'; Export = '$pod | Export-MelangeWorkspace -AsTarPath (Join-Path $dest out.tar)' }
    ) {
        $dest = (New-Item -ItemType Directory -Force (Join-Path $TestDrive "export-kill-$($Form.TrimStart('-'))")).FullName
        $ws = (New-Item -ItemType Directory -Force (Join-Path $TestDrive "export-kill-ws-$($Form.TrimStart('-'))")).FullName
        $null = New-Item -ItemType Directory -Force (Join-Path $ws 'melange-out/pkg')
        $null = & truncate -s $Size (Join-Path $ws 'melange-out/pkg/big')
        # The child's image outlives its kill by design (Get-MelangeImage finds it): keep it in TestDrive.
        $tmp = (New-Item -ItemType Directory -Force (Join-Path $TestDrive "export-kill-tmp-$($Form.TrimStart('-'))")).FullName
        $child = Start-ChildPwsh -TempDirectory $tmp -Script @"
`$ErrorActionPreference = 'Stop'
Import-Module '$script:ModuleManifest'
`$img = Import-MelangeImage -Path '$(Get-TestRootfs)' -Runner bubblewrap
`$pod = `$img | Start-MelangePod -WorkspaceDir '$ws'
`$dest = '$dest'
[Console]::Out.WriteLine('EXPORTING'); [Console]::Out.Flush()
$Export
"@
        try {
            $null = Wait-ChildLine -Process $child -Pattern '^EXPORTING$'
            Wait-Until -TimeoutSeconds 60 -Because 'the export to write' -Condition {
                @(Get-ChildItem -LiteralPath $dest -Recurse -Force -File -ErrorAction Ignore).Count -gt 0
            }
            $partial = @(Get-ChildItem -LiteralPath $dest -Recurse -Force -File | ForEach-Object FullName)
            $partial | Should -Match '\.melange-partial-|\.partial-'
            $child.Kill()
            $child.WaitForExit()
            Wait-Until -Because 'the partial file to be removed' -Condition { -not (Get-ChildItem -LiteralPath $dest -Recurse -Force -File) }
        } finally {
            if (-not $child.HasExited) { $child.Kill() }
            $child.Dispose()
        }
    }
}
