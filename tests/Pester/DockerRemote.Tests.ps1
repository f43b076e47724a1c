# A remote engine (issue 11, point 7): DOCKER_HOST=tcp://127.0.0.1:<port> reaching a second
# dockerd that this file starts, with its own data root, exec root, pidfile and socket, no
# bridge, in network and mount namespaces of its own (so that it does not touch the first
# engine's docker0 or mounts), and a loopback TCP forwarder (socat) in front of its socket:
# what a remote engine looks like. Both are stopped at the end; nothing of them is left.
BeforeDiscovery {
    $why = if ((& id -u) -ne '0') { 'it needs root (a second dockerd)' }
    elseif (-not (Get-Command dockerd -ErrorAction Ignore)) { 'dockerd is not installed (apt-get install docker.io)' }
    elseif (-not (Get-Command docker -ErrorAction Ignore)) { 'the docker CLI is not installed' }
    elseif (-not (Get-Command socat -ErrorAction Ignore)) { 'socat (the loopback forwarder) is not installed' }
    elseif (-not (Get-Command unshare -ErrorAction Ignore)) { 'unshare (util-linux) is not installed' }
    $noRemote = [bool]$why
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    function Stop-Started([Diagnostics.Process]$Process, [int]$GraceSeconds = 20) {
        if (-not $Process -or $Process.HasExited) { return }
        $null = & kill -TERM $Process.Id 2>$null
        if (-not $Process.WaitForExit($GraceSeconds * 1000)) { $Process.Kill($true); $null = $Process.WaitForExit(5000) }
    }
}

Describe 'The docker runner against a remote engine (DOCKER_HOST=tcp://…)' -Skip:$noRemote {
    BeforeAll {
        $script:savedHost = $env:DOCKER_HOST
        $script:root = (New-Item -ItemType Directory (Join-Path ([IO.Path]::GetTempPath()) "melange-remote-dockerd-$PID")).FullName
        $script:sock = Join-Path $script:root 'docker.sock'
        $start = [Diagnostics.ProcessStartInfo]::new('unshare')
        foreach ($a in '-n', '-m', '--propagation', 'private', 'dockerd',
            '--data-root', "$script:root/data", '--exec-root', "$script:root/exec", '--pidfile', "$script:root/dockerd.pid",
            '--bridge', 'none', '--iptables=false', '--ip-masq=false', '-H', "unix://$script:sock") { $start.ArgumentList.Add($a) }
        $start.RedirectStandardOutput = $true
        $start.RedirectStandardError = $true
        $script:dockerd = [Diagnostics.Process]::Start($start)
        $script:log = [Collections.Concurrent.ConcurrentQueue[string]]::new()
        $null = Register-ObjectEvent -InputObject $script:dockerd -EventName ErrorDataReceived -MessageData $script:log -Action { if ($EventArgs.Data) { $Event.MessageData.Enqueue($EventArgs.Data) } }
        $script:dockerd.BeginErrorReadLine()
        $script:dockerd.BeginOutputReadLine()
        try {
            Wait-Until { (Test-Path $script:sock) -and $(docker -H "unix://$script:sock" version *> $null; $LASTEXITCODE -eq 0) -or $script:dockerd.HasExited } -TimeoutSeconds 60 -Because 'the second dockerd to answer'
        }
        catch { throw "The second dockerd did not answer: $(@($script:log.ToArray()) | Select-Object -Last 20 | Out-String)" }
        if ($script:dockerd.HasExited) { throw "The second dockerd exited: $(@($script:log.ToArray()) | Select-Object -Last 20 | Out-String)" }

        $listener = [Net.Sockets.TcpListener]::new([Net.IPAddress]::Loopback, 0)
        $listener.Start(); $script:port = $listener.LocalEndpoint.Port; $listener.Stop()
        $script:socat = Start-Process socat -ArgumentList "TCP-LISTEN:$($script:port),bind=127.0.0.1,reuseaddr,fork", "UNIX-CONNECT:$($script:sock)" -PassThru
        Wait-Until { try { $c = [Net.Sockets.TcpClient]::new('127.0.0.1', $script:port); $c.Dispose(); $true } catch { $false } } -TimeoutSeconds 10 -Because 'the forwarder to listen'
        $env:DOCKER_HOST = "tcp://127.0.0.1:$($script:port)"
    }
    AfterAll {
        $env:DOCKER_HOST = $script:savedHost
        Stop-Started $script:socat 5
        Stop-Started $script:dockerd 30
        Get-EventSubscriber | Where-Object SourceObject -eq $script:dockerd | Unregister-Event
        if ($script:root) { Remove-Item -Recurse -Force -LiteralPath $script:root -ErrorAction Ignore }
        @(Get-ProcessByMarker $script:root).Count | Should -Be 0 -Because 'the second engine and its containerd are stopped'
    }

    It 'is usable through DOCKER_HOST, and runs a whole pod there, not in the local engine' {
        Test-MelangeRunner -Name docker | Should -BeTrue
        $img = Import-MelangeImage -Path (Get-TestRootfs) -Runner docker
        try {
            docker -H "unix://$script:sock" image inspect $img.Ref *> $null; $LASTEXITCODE | Should -Be 0
            (Get-MelangePodPlan -Image $img -Runner docker).Endpoint | Should -Be "tcp://127.0.0.1:$($script:port)"
            $ws = (New-Item -ItemType Directory (Join-Path $TestDrive 'ws')).FullName
            Set-Content (Join-Path $ws 'in.txt') 'copied over TCP'
            $pod = Start-MelangePod -Image $img -Runner docker -WorkspaceDir $ws
            try {
                @(docker -H "unix://$script:sock" ps -q --filter "name=$($pod.Id)").Count | Should -Be 1
                $pod | Invoke-MelangePod 'cat in.txt; mkdir -p melange-out/p && echo remote > melange-out/p/f' | Should -Be 'copied over TCP'
                $dest = Join-Path $TestDrive 'out'
                $null = $pod | Export-MelangeWorkspace -Destination $dest
                Get-Content (Join-Path $dest 'melange-out/p/f') | Should -Be 'remote'
                ($pod | Get-MelangeReleaseData).ID | Should -Be 'melange-demo'
                $null = $pod | Invoke-MelangePod 'sleep 300' -Timeout '00:00:02' -ErrorAction SilentlyContinue -ErrorVariable err
                $err[0].FullyQualifiedErrorId | Should -BeLike 'CommandTimedOut,*'
            }
            finally { $pod | Stop-MelangePod }
            @(docker -H "unix://$script:sock" ps -aq).Count | Should -Be 0
        }
        finally { $img | Remove-MelangeImage -Confirm:$false }
        @(docker -H "unix://$script:sock" images -q melange-runner/image).Count | Should -Be 0
    }
}
