# The docker runner (issue 11) against a real engine: the one at DOCKER_HOST, else the default
# socket (.ci/run starts a dockerd when none answers). Skipped, with the reason, when no engine
# answers. Inspections go through the docker CLI, which reads the same DOCKER_HOST.
BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $script:dockerInfo = Get-MelangeRunner -Name docker
    $noDocker = -not $script:dockerInfo.IsUsable
    $noCli = -not (Get-Command docker -ErrorAction Ignore)
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    function Get-Inspect([string]$Id) { (docker inspect $Id | ConvertFrom-Json)[0] }
    function Get-DockerLeftovers {
        @(docker ps -aq --filter 'label=dev.chainguard.melange.runner-owner') + @(Get-ChildItem ([IO.Path]::GetTempPath()) -Filter 'melange-docker-import-*' -ErrorAction Ignore) | Where-Object { $_ }
    }
}

Describe 'The docker runner without an engine' {
    BeforeEach { $script:saved = $env:DOCKER_HOST }
    AfterEach { $env:DOCKER_HOST = $script:saved }

    It 'is named by [MelangeRunner.Runners]::Docker' {
        [MelangeRunner.Runners]::Docker | Should -Be 'docker'
        [MelangeRunner.Runners]::All | Should -Contain 'docker'
    }

    It 'is not usable when <Name> answers nothing, and the reason says what to start' -TestCases @(
        @{ Name = 'a missing socket'; Hostname = 'unix:///nonexistent/docker.sock' }
        @{ Name = 'a closed TCP port'; Hostname = 'tcp://127.0.0.1:1' }
    ) {
        $env:DOCKER_HOST = $Hostname
        $watch = [Diagnostics.Stopwatch]::StartNew()
        $info = Get-MelangeRunner -Name docker
        $watch.Elapsed.TotalSeconds | Should -BeLessThan 10
        $info.IsUsable | Should -BeFalse
        $info.Reason | Should -Match ([regex]::Escape("DOCKER_HOST=$Hostname"))
        $info.Reason | Should -Match 'Start'
        Test-MelangeRunner -Name docker | Should -BeFalse
    }

    It 'fails an import within seconds with DockerEngineUnavailable (ConnectionError), naming DOCKER_HOST' {
        $env:DOCKER_HOST = 'tcp://127.0.0.1:1'
        $watch = [Diagnostics.Stopwatch]::StartNew()
        $null = Import-MelangeImage -Path (Get-TestRootfs) -Runner docker -ErrorVariable err -ErrorAction SilentlyContinue
        $watch.Elapsed.TotalSeconds | Should -BeLessThan 10
        $err[0].FullyQualifiedErrorId | Should -BeLike 'DockerEngineUnavailable,*'
        $err[0].CategoryInfo.Category | Should -Be 'ConnectionError'
        $err[0].ErrorDetails.Message | Should -Match 'DOCKER_HOST=tcp://127.0.0.1:1'
        $err[0].ErrorDetails.RecommendedAction | Should -Match 'Start the engine'
        @(Get-ChildItem ([IO.Path]::GetTempPath()) -Filter 'melange-docker-import-*').Count | Should -Be 0
    }
}

Describe 'Images in the docker engine' -Skip:($noDocker -or $noCli) {
    It 'imports a layer tar, an OCI layout and a docker-save archive, each under a tag of its own, and removes them' {
        $oci = New-OciLayout -Dir (Join-Path $TestDrive 'oci') -Env 'FROM_IMAGE=oci value', 'PATH=/usr/bin:/bin' -WorkingDir /srv -User build
        $tar = Import-MelangeImage -Path (Get-TestRootfs) -Runner docker
        $layout = Import-MelangeImage -LiteralPath $oci -Runner docker
        $tar.Ref | Should -Match '^melange-runner/image:[0-9a-f]{16}$'
        $tar.Runner | Should -Be 'docker'
        $layout.Ref | Should -Not -Be $tar.Ref
        $layout.SourceKind | Should -Be 'oci-layout'
        $config = (docker image inspect $layout.Ref | ConvertFrom-Json)[0].Config
        $config.Env | Should -Contain 'FROM_IMAGE=oci value'
        $config.WorkingDir | Should -Be '/srv'
        $config.User | Should -Be 'build'
        # A docker save archive of what was just imported: the engine's own format back in.
        $save = Join-Path $TestDrive 'saved.tar'
        docker save -o $save $tar.Ref
        $saved = Import-MelangeImage -Path $save -Runner docker
        $saved.SourceKind | Should -Be 'docker-archive'
        foreach ($i in $tar, $layout, $saved) {
            docker image inspect $i.Ref *> $null; $LASTEXITCODE | Should -Be 0
            Remove-MelangeImage -Image $i -Confirm:$false
            docker image inspect $i.Ref *> $null; $LASTEXITCODE | Should -Not -Be 0
        }
        @(Get-ChildItem ([IO.Path]::GetTempPath()) -Filter 'melange-docker-import-*').Count | Should -Be 0
    }

    It 'lists the engine''s images of this module with Get-MelangeImage -Runner docker only, rebuilt from their labels' {
        $oci = New-OciLayout -Dir (Join-Path $TestDrive 'oci-listed') -Env 'LISTED=yes'
        $img = Import-MelangeImage -LiteralPath $oci -Runner docker
        try {
            $listed = @(Get-MelangeImage -Runner docker | Where-Object Ref -EQ $img.Ref)
            $listed.Count | Should -Be 1
            $listed[0].Runner | Should -Be 'docker'
            $listed[0].Source | Should -Be $img.Source
            $listed[0].Arch | Should -Be $img.Arch
            $listed[0].SourceKind | Should -Be 'oci-layout'
            $listed[0].Env | Should -Contain 'LISTED=yes'
            @(Get-MelangeImage | Where-Object Ref -EQ $img.Ref).Count | Should -Be 0 -Because 'the engine is shared: docker images are listed only when asked for'
            $pod = $listed[0] | Start-MelangePod
            try { $pod | Invoke-MelangePod 'echo $LISTED' | Should -Be 'yes' } finally { $pod | Stop-MelangePod }
            $listed[0] | Remove-MelangeImage -Confirm:$false
            @(Get-MelangeImage -Runner docker | Where-Object Ref -EQ $img.Ref).Count | Should -Be 0
        }
        finally { $img | Remove-MelangeImage -Confirm:$false -ErrorAction Ignore }
    }

    It 'gives concurrent imports of one file distinct tags (melange #2532)' {
        $manifest = $script:ModuleManifest
        $path = Get-TestRootfs
        $images = 1..3 | ForEach-Object -ThrottleLimit 3 -Parallel {
            Import-Module $using:manifest
            Import-MelangeImage -Path $using:path -Runner docker
        }
        @($images.Ref | Sort-Object -Unique).Count | Should -Be 3
        foreach ($i in $images) { docker image inspect $i.Ref *> $null; $LASTEXITCODE | Should -Be 0 }
        $images | Remove-MelangeImage -Confirm:$false
    }

    It 'leaves no image and no temporary directory when an import is stopped (Ctrl+C)' {
        # A layer big enough to be stopped mid-stream: 64 MiB of random bytes, gzip'ed (incompressible).
        $big = Join-Path $TestDrive 'big.tar.gz'
        $null = & sh -c "mkdir -p '$TestDrive/bigroot' && head -c 67108864 /dev/urandom > '$TestDrive/bigroot/blob' && tar -C '$TestDrive/bigroot' -czf '$big' ."
        $before = @(docker images -q melange-runner/image).Count
        $ps = [powershell]::Create()
        $null = $ps.AddScript('param($Manifest, $Path) Import-Module $Manifest; Import-MelangeImage -Path $Path -Runner docker').AddArgument($script:ModuleManifest).AddArgument($big)
        $async = $ps.BeginInvoke()
        Wait-Until { $ps.Streams.Progress.Count -gt 0 -or $async.IsCompleted } -TimeoutSeconds 30 -Because 'the import to start'
        $ps.Stop()
        $ps.Dispose()
        Wait-Until { @(docker images -q melange-runner/image).Count -eq $before } -TimeoutSeconds 20 -Because 'the partial image to be removed'
        @(Get-ChildItem ([IO.Path]::GetTempPath()) -Filter 'melange-docker-import-*').Count | Should -Be 0
    }

    It 'refuses a corrupt layer as CorruptImage and leaves no image behind' {
        $bytes = [IO.File]::ReadAllBytes((Get-TestRootfs))
        $cut = Join-Path $TestDrive 'cut.tar.gz'
        [IO.File]::WriteAllBytes($cut, $bytes[0..([int]($bytes.Length / 2))])
        $before = @(docker images -q melange-runner/image).Count
        $null = Import-MelangeImage -Path $cut -Runner docker -ErrorVariable err -ErrorAction SilentlyContinue
        $err[0].FullyQualifiedErrorId | Should -BeLike 'CorruptImage,*'
        @(docker images -q melange-runner/image).Count | Should -Be $before
        @(Get-ChildItem ([IO.Path]::GetTempPath()) -Filter 'melange-docker-import-*').Count | Should -Be 0
    }
}

Describe 'A docker pod' -Skip:($noDocker -or $noCli) {
    BeforeAll {
        $script:img = Import-MelangeImage -Path (Get-TestRootfs) -Runner docker
        $script:ws = (New-Item -ItemType Directory (Join-Path $TestDrive 'ws')).FullName
        Set-Content (Join-Path $script:ws 'input.txt') 'from the host'
        $script:pod = Start-MelangePod -Image $script:img -Runner docker -WorkspaceDir $script:ws -PackageName hello -Cpu 1 -Memory 256MB `
            -Environment ([ordered]@{ FROM_CONFIG = 'config'; OVERRIDDEN = 'config' }) -CapAdd NET_ADMIN -CapDrop NET_RAW
        $script:c = Get-Inspect $script:pod.Id
    }
    AfterAll {
        if ($script:pod) { $script:pod | Stop-MelangePod }
        if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
    }

    It 'is a running container that stays up, named after the pod, with melange''s labels' {
        $script:pod.Runner | Should -Be 'docker'
        $script:pod.State | Should -Be 'Running'
        $script:c.State.Running | Should -BeTrue
        $script:c.Name | Should -Be "/$($script:pod.Id)"
        $script:c.Config.Labels.'dev.chainguard.melange' | Should -Be 'true'
        $script:c.Config.Labels.'dev.chainguard.melange.package' | Should -Be 'hello'
        $script:c.Config.Cmd[-1] | Should -Match 'ldconfig'
    }

    It 'has no network, the Docker default capabilities + Add - Drop, and the CPU and memory limits' {
        $script:c.HostConfig.NetworkMode | Should -Be 'none'
        $script:c.HostConfig.CapDrop | Should -Be @('ALL')
        $script:c.HostConfig.CapAdd | Should -Contain 'CAP_NET_ADMIN'
        $script:c.HostConfig.CapAdd | Should -Contain 'CAP_SETUID'
        $script:c.HostConfig.CapAdd | Should -Not -Contain 'CAP_NET_RAW'
        $script:c.HostConfig.NanoCpus | Should -Be 1000000000
        $script:c.HostConfig.Memory | Should -Be 268435456
        $script:pod | Invoke-MelangePod 'cat /sys/class/net/*/operstate 2>/dev/null | wc -l; ls /sys/class/net' | Should -Be @('1', 'lo')
        # CapEff in hex: NET_ADMIN (12) present, NET_RAW (13) absent.
        $capEff = [Convert]::ToUInt64(($script:pod | Invoke-MelangePod -Command sh, -c, "sed -n 's/^CapEff:\s*//p' /proc/self/status"), 16)
        ($capEff -band (1 -shl 12)) | Should -Not -Be 0
        ($capEff -band (1 -shl 13)) | Should -Be 0
    }

    It 'runs steps in /home/build, with the workspace copied in, streaming stdout and stderr' {
        $info = $null
        $out = $script:pod | Invoke-MelangePod 'pwd; cat input.txt; echo to-stderr >&2; echo last' -InformationVariable info
        $out | Should -Be @('/home/build', 'from the host', 'last')
        @($info | Where-Object { $_.Tags -contains 'stderr' }).MessageData.Message | Should -Contain 'to-stderr'
    }

    It 'streams a step''s lines as they come, not at its end' {
        $ps = [powershell]::Create()
        $null = $ps.AddScript('param($Manifest, $Pod) Import-Module $Manifest; $Pod | Invoke-MelangePod "echo first; sleep 3; echo second"').AddArgument($script:ModuleManifest).AddArgument($script:pod)
        $output = [System.Management.Automation.PSDataCollection[psobject]]::new()
        $watch = [Diagnostics.Stopwatch]::StartNew()
        $async = $ps.BeginInvoke([System.Management.Automation.PSDataCollection[psobject]]::new(), $output)
        Wait-Until { $output.Count -gt 0 } -TimeoutSeconds 20 -Because 'the first line'
        $first = $watch.Elapsed.TotalSeconds
        $null = $ps.EndInvoke($async)
        $all = $watch.Elapsed.TotalSeconds
        $ps.Dispose()
        @($output) | Should -Be @('first', 'second')
        ($all - $first) | Should -BeGreaterThan 2 -Because 'the first line arrived while the step was still sleeping'
    }

    It 'gives steps the same environment as the other runners: default PATH, config, per-call overrides' {
        $out = $script:pod | Invoke-MelangePod -Command sh, -c, 'echo "$PATH|$FROM_CONFIG|$OVERRIDDEN"' -Environment @{ OVERRIDDEN = 'call' }
        $out | Should -Be "$([MelangeRunner.Defaults]::Path)|config|call"
    }

    It 'returns the exit status (CommandFailed, $LASTEXITCODE) and takes an argument vector unparsed' {
        $null = $script:pod | Invoke-MelangePod 'exit 7' -ErrorVariable err -ErrorAction SilentlyContinue
        $LASTEXITCODE | Should -Be 7
        $err[0].FullyQualifiedErrorId | Should -BeLike 'CommandFailed,*'
        $script:pod | Invoke-MelangePod -ArgumentList printf, '%s|', '-x', 'a b', '$HOME' | Should -Be '-x|a b|$HOME|'
    }

    It 'ends a step at -Timeout, in the container too, and the pod stays usable' {
        $watch = [Diagnostics.Stopwatch]::StartNew()
        $null = $script:pod | Invoke-MelangePod 'sleep 300; echo never' -Timeout '00:00:02' -ErrorVariable err -ErrorAction SilentlyContinue
        $watch.Elapsed.TotalSeconds | Should -BeLessThan 20
        $err[0].FullyQualifiedErrorId | Should -BeLike 'CommandTimedOut,*'
        Wait-Until { -not (($script:pod | Invoke-MelangePod 'ps -o args' ) -match '^sleep 300') } -TimeoutSeconds 10 -Because 'the step to end in the container'
        $script:pod | Invoke-MelangePod 'echo still here' | Should -Be 'still here'
    }

    It 'ends a step on Ctrl+C (PowerShell.Stop), in the container too' {
        $ps = [powershell]::Create()
        $null = $ps.AddScript('param($Manifest, $Pod) Import-Module $Manifest; $Pod | Invoke-MelangePod "echo started; sleep 301"').AddArgument($script:ModuleManifest).AddArgument($script:pod)
        $output = [System.Management.Automation.PSDataCollection[psobject]]::new()
        $async = $ps.BeginInvoke([System.Management.Automation.PSDataCollection[psobject]]::new(), $output)
        Wait-Until { $output.Count -gt 0 } -TimeoutSeconds 20 -Because 'the step to start'
        $watch = [Diagnostics.Stopwatch]::StartNew()
        $ps.Stop()
        $watch.Elapsed.TotalSeconds | Should -BeLessThan 15
        $ps.Dispose()
        Wait-Until { -not (($script:pod | Invoke-MelangePod 'ps -o args') -match '^sleep 301') } -TimeoutSeconds 10 -Because 'the step to end in the container'
    }

    It 'exports melange-out, extra files and license files through the archive API, owned by the exporter' {
        $script:pod | Invoke-MelangePod 'mkdir -p melange-out/hello/usr/bin sub && echo bin > melange-out/hello/usr/bin/hello && chmod 755 melange-out/hello/usr/bin/hello && ln -s hello melange-out/hello/usr/bin/link && echo MIT > LICENSE && echo c > sub/COPYING && echo x > extra.txt && chown -R 4242:4242 melange-out'
        $dest = Join-Path $TestDrive 'out'
        $dir = $script:pod | Export-MelangeWorkspace -Destination $dest -ExtraFile extra.txt
        $dir.FullName | Should -Be $dest
        Get-Content (Join-Path $dest 'melange-out/hello/usr/bin/hello') | Should -Be 'bin'
        (Get-Item (Join-Path $dest 'melange-out/hello/usr/bin/link')).LinkTarget | Should -Be 'hello'
        Get-Content (Join-Path $dest 'LICENSE') | Should -Be 'MIT'
        Get-Content (Join-Path $dest 'sub/COPYING') | Should -Be 'c'
        Get-Content (Join-Path $dest 'extra.txt') | Should -Be 'x'
        stat -c '%u' (Join-Path $dest 'melange-out/hello/usr/bin/hello') | Should -Be (id -u)
        stat -c '%a' (Join-Path $dest 'melange-out/hello/usr/bin/hello') | Should -Be '755'
        # Nothing the container wrote lands in the host workspace (no root-owned leftovers: melange #1647).
        (Get-ChildItem -Force $script:ws).Name | Should -Be @('input.txt')
        $tar = $script:pod | Export-MelangeWorkspace -AsTarPath (Join-Path $TestDrive 'ws.tar')
        (tar -tf $tar.FullName) | Should -Contain 'melange-out/hello/usr/bin/hello'
    }

    It 'runs Enter-MelangePod as an exec (docker exec -i, -t on a terminal) and returns its status' {
        $script:pod | Enter-MelangePod -Command sh, -c, 'exit 3'
        $LASTEXITCODE | Should -Be 3
    }

    It 'reads the release data of the image' {
        ($script:pod | Get-MelangeReleaseData).ID | Should -Be 'melange-demo'
    }
}

Describe 'A docker pod for the build user' -Skip:($noDocker -or $noCli) {
    BeforeAll {
        $script:img = Import-MelangeImage -Path (Get-TestRootfs) -Runner docker
    }
    AfterAll {
        if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
    }

    It 'runs steps as <RunAs><RunAsUid> and gives it the workspace' -TestCases @(
        @{ RunAs = 'build'; RunAsUid = $null; Expected = '1000:1000' }
        @{ RunAs = $null; RunAsUid = '4321'; Expected = '4321:0' }
    ) {
        $params = @{ Image = $script:img; Runner = 'docker' }
        if ($RunAs) { $params.RunAs = $RunAs }
        if ($RunAsUid) { $params.RunAsUid = $RunAsUid }
        $pod = Start-MelangePod @params
        try {
            $pod | Invoke-MelangePod 'echo "$(id -u):$(id -g)"; touch made-here && stat -c %u made-here' | Should -Be @($Expected, $Expected.Split(':')[0])
        }
        finally { $pod | Stop-MelangePod }
    }
}

Describe 'A docker pod of an image whose config names a user' -Skip:($noDocker -or $noCli) {
    It 'runs steps as the image''s User (build) and gives it the workspace; -RunAs root overrides it' {
        $oci = New-OciLayout -Dir (Join-Path $TestDrive 'oci-user') -User build -WorkingDir /tmp
        $img = Import-MelangeImage -LiteralPath $oci -Runner docker
        try {
            $pod = Start-MelangePod -Image $img
            try { $pod | Invoke-MelangePod 'id -u; pwd; touch x && stat -c %U x' | Should -Be @('1000', '/home/build', 'build') }
            finally { $pod | Stop-MelangePod }
            $pod = Start-MelangePod -Image $img -RunAs root
            try { $pod | Invoke-MelangePod 'id -u' | Should -Be '0' }
            finally { $pod | Stop-MelangePod }
        }
        finally { $img | Remove-MelangeImage -Confirm:$false }
    }
}

Describe 'Planning and stopping a docker pod' -Skip:($noDocker -or $noCli) {
    BeforeAll {
        $script:img = Import-MelangeImage -Path (Get-TestRootfs) -Runner docker
    }
    AfterAll {
        if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
    }

    It 'plans the container create request (JSON) and the equivalent docker run line' {
        $plan = Get-MelangePodPlan -Image $script:img -Runner docker -Cpu 2 -Memory 1GB -Networking
        $plan.Runner | Should -Be 'docker'
        $plan.FileName | Should -Be 'docker'
        $plan.Arguments[0] | Should -Be 'run'
        $plan.Cpus | Should -Be 2
        $plan.MemoryKiB | Should -Be 1048576
        $plan.CommandLine | Should -Match '--cpus 2 '
        $plan.CommandLine | Should -Not -Match '--network none'
        $request = $plan.CreateRequest | ConvertFrom-Json
        $request.Image | Should -Be $script:img.Ref
        $request.HostConfig.NanoCpus | Should -Be 2000000000
        $request.Labels.'dev.chainguard.melange' | Should -Be 'true'
        (Get-MelangePodPlan -Image $script:img -Runner docker).CommandLine | Should -Match '--network none'
    }

    It 'removes the container and its workspace on Stop-MelangePod, and leaves nothing after a failed start' {
        $pod = Start-MelangePod -Image $script:img -Runner docker
        $ws = $pod.WorkspaceDir
        docker inspect $pod.Id *> $null; $LASTEXITCODE | Should -Be 0
        $pod | Stop-MelangePod
        $pod.State | Should -Be 'Stopped'
        docker inspect $pod.Id *> $null; $LASTEXITCODE | Should -Not -Be 0
        Test-Path $ws | Should -BeFalse
        # A mount the engine creates but cannot start (a file onto the image's /etc directory):
        # the start fails, and no container stays.
        $before = @(docker ps -aq --filter 'label=dev.chainguard.melange.runner-owner').Count
        Set-Content -LiteralPath "$TestDrive/a-file" 'x'
        $null = Start-MelangePod -Image $script:img -Runner docker -Mount "$TestDrive/a-file:/etc" -ErrorVariable err -ErrorAction SilentlyContinue
        $err | Should -Not -BeNullOrEmpty
        $err[0].FullyQualifiedErrorId | Should -BeLike 'PodStartFailed,*'
        @(docker ps -aq --filter 'label=dev.chainguard.melange.runner-owner').Count | Should -Be $before
    }

    It 'refuses an image that is no longer in the engine as ImageRemoved' {
        $gone = Import-MelangeImage -Path (Get-TestRootfs) -Runner docker
        $gone | Remove-MelangeImage -Confirm:$false
        $null = Start-MelangePod -Image $gone -Runner docker -ErrorVariable err -ErrorAction SilentlyContinue
        $err[0].FullyQualifiedErrorId | Should -BeLike 'ImageRemoved,*'
    }
}

Describe 'A docker pod whose PowerShell is killed' -Skip:($noDocker -or $noCli) {
    It 'is removed by the next start (its owner label names a process that is gone)' {
        $script = "Import-Module '$($script:ModuleManifest)'; `$i = Import-MelangeImage -Path '$(Get-TestRootfs)' -Runner docker; `$p = Start-MelangePod -Image `$i; 'POD ' + `$p.Id + ' ' + `$i.Ref; Start-Sleep 600"
        # Kill($true) below ends the child's reaper too, so its workspace stays: keep it in TestDrive.
        $childTmp = (New-Item -ItemType Directory -Force (Join-Path $TestDrive 'killed-child-tmp')).FullName
        $child = Start-ChildPwsh -Script $script -TempDirectory $childTmp
        try {
            $line = Wait-ChildLine -Process $child -Pattern '^POD ' -TimeoutSeconds 120
            $id, $ref = ($line -split ' ')[1, 2]
            docker inspect $id *> $null; $LASTEXITCODE | Should -Be 0
        }
        finally { $child.Kill($true); $child.WaitForExit() }
        docker inspect $id *> $null; $LASTEXITCODE | Should -Be 0 -Because 'nothing in a killed process can remove its container'
        $img = Import-MelangeImage -Path (Get-TestRootfs) -Runner docker
        try {
            $verbose = $( $pod = Start-MelangePod -Image $img -Verbose ) 4>&1
            $pod | Stop-MelangePod
            "$verbose" | Should -Match "Removing container $($id.Substring(0, 0)).*which is gone" 
            docker inspect $id *> $null; $LASTEXITCODE | Should -Not -Be 0
        }
        finally {
            $img | Remove-MelangeImage -Confirm:$false
            docker rmi -f $ref *> $null
        }
    }
}
