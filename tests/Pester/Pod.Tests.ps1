BeforeDiscovery {
    # Skipped only where bwrap is genuinely absent; CI installs it.
    $noBwrap = -not (Get-Command bwrap -ErrorAction Ignore)
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    if (Get-Command bwrap -ErrorAction Ignore) {
        $script:img = Import-MelangeImage -Path (Get-TestRootfs) -Runner bubblewrap
    }
}

AfterAll {
    if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
}

Describe 'A bubblewrap pod' -Skip:$noBwrap {
    BeforeAll {
        $script:ws = Join-Path $TestDrive 'ws'
        $script:pod = $script:img | Start-MelangePod -WorkspaceDir $script:ws -Environment ([ordered]@{ SOURCE_DATE_EPOCH = '0'; GREETING = 'hello' })
    }
    AfterAll {
        if ($script:pod) { $script:pod | Stop-MelangePod }
    }

    It 'starts from the image through the pipeline' {
        $script:pod | Should -BeOfType ([MelangeRunner.Pod])
        $script:pod.Runner | Should -Be 'bubblewrap'
        $script:pod.State | Should -Be 'Running'
        $script:pod.ImageRef | Should -Be $script:img.Ref
        $script:pod.Config.Environment['GREETING'] | Should -Be 'hello'
        Test-Path $script:ws | Should -BeTrue
    }

    It 'streams stdout lines as output objects' {
        $lines = $script:pod | Invoke-MelangePod -Command sh, -c, 'echo one; echo two; printf three'
        $lines | Should -Be @('one', 'two', 'three')
        $LASTEXITCODE | Should -Be 0
    }

    It 'runs in the workspace as the build user with the pod environment' {
        $out = $script:pod | Invoke-MelangePod sh, -c, 'echo "$(pwd) $(id -u):$(id -g) $GREETING $SOURCE_DATE_EPOCH"'
        $out | Should -Be '/home/build 1000:1000 hello 0'
    }

    It 'sets per-call environment over the pod''s' {
        $out = $script:pod | Invoke-MelangePod -Command sh, -c, 'echo $GREETING $EXTRA' -Environment @{ GREETING = 'bye'; EXTRA = 'x' }
        $out | Should -Be 'bye x'
    }

    It 'gives a command end of file on standard input' {
        $script:pod | Invoke-MelangePod -Command sh, -c, 'cat; echo "read $?"' | Should -Be 'read 0'
    }

    It 'shows stderr on the information stream tagged stderr, not as errors' {
        $out = $script:pod | Invoke-MelangePod -Command sh, -c, 'echo out; echo err >&2' -InformationVariable info -ErrorVariable errs 6>$null
        $out | Should -Be 'out'
        $errs | Should -BeNullOrEmpty
        ($info | Where-Object { $_.Tags -contains 'stderr' }).MessageData.Message | Should -Be 'err'
    }

    It 'turns a non-zero exit into an ErrorRecord with the exit code and sets $LASTEXITCODE' {
        $out = $script:pod | Invoke-MelangePod -Command sh, -c, 'echo before; exit 7' -ErrorVariable errs -ErrorAction SilentlyContinue
        $out | Should -Be 'before'
        $LASTEXITCODE | Should -Be 7
        $errs.Count | Should -Be 1
        $errs[0].FullyQualifiedErrorId | Should -BeLike 'CommandFailed,*'
        $errs[0].Exception.ExitCode | Should -Be 7
        $errs[0].CategoryInfo.Category | Should -Be 'InvalidResult'
        $errs[0].TargetObject.Id | Should -Be $script:pod.Id
        { $script:pod | Invoke-MelangePod -Command false -ErrorAction Stop } | Should -Throw -ErrorId 'CommandFailed,*'
    }

    It 'writes into the bind-mounted workspace' {
        $script:pod | Invoke-MelangePod -Command sh, -c, 'mkdir -p melange-out/hello && echo hi > melange-out/hello/greeting'
        Get-Content (Join-Path $script:ws 'melange-out/hello/greeting') | Should -Be 'hi'
    }

    It 'has no network unless asked' {
        # /proc/net/dev lists the interfaces of the sandbox's own network namespace.
        $out = $script:pod | Invoke-MelangePod -Command sh, -c, 'tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " "'
        $out | Should -Be 'lo'
    }

    It 'gives the Docker default capabilities to the build user' {
        $capEff = $script:pod | Invoke-MelangePod -Command sh, -c, 'grep CapEff /proc/self/status | cut -f2'
        # CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP
        $capEff | Should -Be '00000000a80425fb'
    }

    It 'reads the release data of the image' {
        $data = $script:pod | Get-MelangeReleaseData
        $data | Should -BeOfType ([MelangeRunner.ReleaseData])
        $data.ID | Should -Be 'melange-demo'
        $data.Name | Should -Be 'MelangeRunner demo'
        $data.VersionID | Should -Be '1.0'
        $data.PrettyName | Should -Be 'MelangeRunner demo (busybox)'
    }

    It 'shows the exact bwrap command line on -Verbose' {
        $verbose = $script:pod | Invoke-MelangePod -Command true -Verbose 4>&1 | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] }
        $line = ($verbose.Message | Where-Object { $_ -like 'Running: *bwrap --bind *' })
        $line | Should -Not -BeNullOrEmpty
        $line | Should -BeLike "Running: *bwrap --bind $($script:img.Ref) / --bind $($script:ws) /home/build --unshare-pid *--new-session --unshare-net --setenv PATH $([MelangeRunner.Defaults]::Path) --setenv SOURCE_DATE_EPOCH 0 --setenv GREETING hello true"
    }

    It 'enters the pod interactively, without --new-session, and sets $LASTEXITCODE' {
        $verbose = $script:pod | Enter-MelangePod -Command sh, -c, 'echo entered > entered.txt; exit 4' -Verbose 4>&1
        $LASTEXITCODE | Should -Be 4
        Get-Content (Join-Path $script:ws 'entered.txt') | Should -Be 'entered'
        $line = $verbose.Message | Where-Object { $_ -like 'Running: *bwrap --bind *' }
        $line | Should -Not -BeLike '*--new-session*'
    }

    It 'ends the sandboxed process tree at once when stopped (Ctrl+C)' {
        $marker = "mr-stop-$(Get-Random)"
        $result = Invoke-AndStop -Pod $script:pod -Script "echo started; sleep 300 && echo $marker; sleep 301 # $marker" -WhileRunning {
            @(Get-ProcessByMarker $marker).Count | Should -BeGreaterThan 0
        }
        $result.FirstLine | Should -Be 'started'
        $result.StopSeconds | Should -BeLessThan 10
        $result.State | Should -BeIn @('Stopped', 'Completed')
        @(Get-ProcessByMarker $marker).Count | Should -Be 0
    }
}

Describe 'Pod options' -Skip:$noBwrap {
    It 'runs as root with -RunAs root' {
        $pod = $script:img | Start-MelangePod -RunAs root
        try {
            $pod | Invoke-MelangePod -Command id, -u | Should -Be '0'
        } finally {
            $pod | Stop-MelangePod
        }
    }

    It 'resolves -RunAs by name from the image''s /etc/passwd' {
        $pod = $script:img | Start-MelangePod -RunAs nobody
        try {
            $pod.RunAsUID | Should -Be '65534'
            $pod | Invoke-MelangePod -Command sh, -c, 'echo $(id -u):$(id -g)' | Should -Be '65534:65534'
        } finally {
            $pod | Stop-MelangePod
        }
    }

    It 'uses -RunAsUid and -RunAsGid' {
        $pod = $script:img | Start-MelangePod -RunAsUid 4242 -RunAsGid 4343
        try {
            $pod | Invoke-MelangePod -Command sh, -c, 'echo $(id -u):$(id -g)' | Should -Be '4242:4343'
        } finally {
            $pod | Stop-MelangePod
        }
    }

    It 'adds and drops capabilities' {
        $pod = $script:img | Start-MelangePod -CapAdd NET_ADMIN -CapDrop CAP_NET_RAW, chown
        try {
            $hex = $pod | Invoke-MelangePod -Command sh, -c, 'grep CapEff /proc/self/status | cut -f2'
            $caps = [Convert]::ToUInt64($hex, 16)
            ($caps -band (1 -shl 12)) | Should -Not -Be 0 -Because 'CAP_NET_ADMIN (12) was added'
            ($caps -band (1 -shl 13)) | Should -Be 0 -Because 'CAP_NET_RAW (13) was dropped'
            ($caps -band 1) | Should -Be 0 -Because 'CAP_CHOWN (0) was dropped'
        } finally {
            $pod | Stop-MelangePod
        }
    }

    It 'shares the network with -Networking' {
        $pod = $script:img | Start-MelangePod -Networking
        try {
            $ifaces = $pod | Invoke-MelangePod -Command sh, -c, 'tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " "'
            @($ifaces).Count | Should -BeGreaterThan 1
            $pod.Config.Capabilities.Networking | Should -BeTrue
        } finally {
            $pod | Stop-MelangePod
        }
    }

    It 'binds extra mounts, relative sources from the current location' {
        $src = Join-Path $TestDrive 'mountsrc'
        $null = New-Item -ItemType Directory -Force $src
        Set-Content (Join-Path $src 'data.txt') 'mounted'
        Push-Location $TestDrive
        try {
            $pod = $script:img | Start-MelangePod -Mount './mountsrc:/opt/src'
        } finally {
            Pop-Location
        }
        try {
            $pod.Config.Mounts[0].Source | Should -Be $src
            $pod | Invoke-MelangePod -Command cat, /opt/src/data.txt | Should -Be 'mounted'
        } finally {
            $pod | Stop-MelangePod
        }
    }

    It 'takes a config object, with parameters over it' {
        $config = New-MelangePodConfig -Environment @{ A = '1'; B = '2' } -Memory 2Gi -PackageName demo
        $config | Should -BeOfType ([MelangeRunner.PodConfig])
        $config.Memory | Should -Be '2Gi'
        $pod = $script:img | Start-MelangePod -Config $config -Environment @{ B = 'override' }
        try {
            $pod | Invoke-MelangePod -Command sh, -c, 'echo $A$B' | Should -Be '1override'
            $config.Environment['B'] | Should -Be '2' -Because 'the caller''s config is not changed'
        } finally {
            $pod | Stop-MelangePod
        }
    }

    It 'makes and removes its own workspace when none is given' {
        $pod = $script:img | Start-MelangePod
        $ws = $pod.WorkspaceDir
        Test-Path $ws | Should -BeTrue
        $pod | Stop-MelangePod
        Test-Path $ws | Should -BeFalse
    }

    It 'stops twice harmlessly, and refuses commands once stopped' {
        $pod = $script:img | Start-MelangePod
        $pod | Stop-MelangePod
        { $pod | Stop-MelangePod } | Should -Not -Throw
        $pod.State | Should -Be 'Stopped'
        { $pod | Invoke-MelangePod -Command true } | Should -Throw -ErrorId 'PodNotRunning,*'
    }

    It 'stops when disposed' {
        $pod = $script:img | Start-MelangePod
        $pod.Dispose()
        $pod.State | Should -Be 'Stopped'
    }

    It 'honours -WhatIf on Stop-MelangePod' {
        $pod = $script:img | Start-MelangePod
        try {
            $pod | Stop-MelangePod -WhatIf
            $pod.State | Should -Be 'Running'
        } finally {
            $pod | Stop-MelangePod
        }
    }

    It 'stops the runspace''s live pods when the module is removed' {
        $rootfs = Get-TestRootfs
        $script = @"
`$ErrorActionPreference = 'Stop'
Import-Module '$script:ModuleManifest'
`$img = Import-MelangeImage -Path '$rootfs' -Runner bubblewrap
`$pod = `$img | Start-MelangePod
`$ws = `$pod.WorkspaceDir
Remove-Module MelangeRunner
'{0} {1}' -f `$pod.State, (Test-Path `$ws)
[MelangeRunner.Workspace]::DeleteTree((Split-Path `$img.Ref)) # the image's private directory, with the rootfs in it
"@
        $pwsh = Join-Path $PSHOME 'pwsh'
        $out = & $pwsh -NoProfile -NonInteractive -Command $script 2>&1
        $LASTEXITCODE | Should -Be 0 -Because ($out -join "`n")
        $out | Should -Be 'Stopped False'
    }
}

Describe 'Export-MelangeWorkspace from a bubblewrap pod' -Skip:$noBwrap {
    BeforeAll {
        $script:exportWs = Join-Path $TestDrive 'export-ws'
        $script:exportPod = $script:img | Start-MelangePod -WorkspaceDir $script:exportWs
        $script:exportPod | Invoke-MelangePod -Command sh, -c, @'
set -e
mkdir -p melange-out/pkg/usr/bin melange-out/pkg/etc
printf '#!/bin/sh\necho hi\n' > melange-out/pkg/usr/bin/tool
chmod 4755 melange-out/pkg/usr/bin/tool
ln melange-out/pkg/usr/bin/tool melange-out/pkg/usr/bin/tool-hardlink
ln -s tool melange-out/pkg/usr/bin/tool-symlink
echo conf > melange-out/pkg/etc/app.conf
chmod 0640 melange-out/pkg/etc/app.conf
echo Apache-2.0 > LICENSE
echo log > build.log
echo secret > not-exported.txt
'@
    }
    AfterAll {
        $script:exportPod | Stop-MelangePod
    }

    It 'copies melange-out with modes, symlinks and hard links, plus extra and license files' {
        $out = Join-Path $TestDrive 'export-out'
        $dir = $script:exportPod | Export-MelangeWorkspace -Destination $out -ExtraFile build.log
        $dir | Should -BeOfType ([IO.DirectoryInfo])
        $dir.FullName | Should -Be $out
        $bin = Join-Path $out 'melange-out/pkg/usr/bin'
        (Get-Item "$bin/tool").UnixMode | Should -Be '-rwsr-xr-x'
        (Get-Item "$bin/tool-symlink").LinkTarget | Should -Be 'tool'
        (stat -c %i "$bin/tool") | Should -Be (stat -c %i "$bin/tool-hardlink")
        (Get-Item (Join-Path $out 'melange-out/pkg/etc/app.conf')).UnixMode | Should -Be '-rw-r-----'
        Get-Content (Join-Path $out 'LICENSE') | Should -Be 'Apache-2.0'
        Get-Content (Join-Path $out 'build.log') | Should -Be 'log'
        Test-Path (Join-Path $out 'not-exported.txt') | Should -BeFalse
    }

    It 'writes one tar with -AsTarPath' {
        $tar = Join-Path $TestDrive 'export.tar'
        $file = $script:exportPod | Export-MelangeWorkspace -AsTarPath $tar
        $file | Should -BeOfType ([IO.FileInfo])
        $listing = tar -tvf $tar
        $LASTEXITCODE | Should -Be 0
        ($listing | Where-Object { $_ -match '^-rwsr-xr-x .* melange-out/pkg/usr/bin/tool$' }) | Should -Not -BeNullOrEmpty
        ($listing | Where-Object { $_ -match 'melange-out/pkg/usr/bin/tool-hardlink link to melange-out/pkg/usr/bin/tool' }) | Should -Not -BeNullOrEmpty
        ($listing | Where-Object { $_ -match ' LICENSE$' }) | Should -Not -BeNullOrEmpty
        @(Get-ChildItem $TestDrive -Filter 'export.tar.partial-*').Count | Should -Be 0
    }

    It 'refuses an extra file outside the workspace' {
        $script:exportPod | Export-MelangeWorkspace -Destination (Join-Path $TestDrive 'x') -ExtraFile '../../etc/passwd' -ErrorVariable errs -ErrorAction SilentlyContinue
        $errs[0].FullyQualifiedErrorId | Should -BeLike 'BadExtraFile,*'
        $errs[0].CategoryInfo.Category | Should -Be 'InvalidArgument'
    }
}

Describe 'Bad input to Start-MelangePod' -Skip:$noBwrap {
    It 'names the accepted units for a bad size' {
        # The string '4GB' is no melange unit; the PowerShell number 4GB is bytes (Conventions.Tests.ps1).
        { $script:img | Start-MelangePod -Memory '4GB' -ErrorAction Stop } | Should -Throw -ErrorId 'InvalidSize,*'
        # A bad parameter value stops the cmdlet, as a parameter validation error does.
        $err = { $script:img | Start-MelangePod -Disk lots -ErrorAction SilentlyContinue } | Should -Throw -ErrorId 'InvalidSize,*' -PassThru
        $err.CategoryInfo.Category | Should -Be 'InvalidArgument'
        $err.ErrorDetails.RecommendedAction | Should -Match 'Ki, Mi, Gi, Ti'
    }

    It 'says which mount source is missing' {
        $missing = Join-Path $TestDrive 'no-such-dir'
        $script:img | Start-MelangePod -Mount "${missing}:/opt/src" -ErrorVariable errs -ErrorAction SilentlyContinue
        $errs.Count | Should -Be 1
        $errs[0].FullyQualifiedErrorId | Should -BeLike 'MountSourceNotFound,*'
        $errs[0].CategoryInfo.Category | Should -Be 'ObjectNotFound'
        $errs[0].Exception.Message | Should -Match ([regex]::Escape($missing))
    }

    It 'refuses a mount that is not SOURCE:DESTINATION' {
        { New-MelangePodConfig -Mount 'nocolon' -ErrorAction Stop } | Should -Throw -ErrorId 'BadMount,*'
    }

    It 'refuses an image imported for the other runner' {
        $qemuImage = Import-MelangeImage -Path (Get-TestRootfs) -Runner qemu
        try {
            $qemuImage | Start-MelangePod -Runner bubblewrap -ErrorVariable errs -ErrorAction SilentlyContinue
            $errs[0].FullyQualifiedErrorId | Should -BeLike 'WrongImageRunner,*'
        } finally {
            $qemuImage | Remove-MelangeImage -Confirm:$false
        }
    }

    It 'refuses to remove an image that a live pod uses' {
        $pod = $script:img | Start-MelangePod
        try {
            $script:img | Remove-MelangeImage -Confirm:$false -ErrorVariable errs -ErrorAction SilentlyContinue
            $errs[0].FullyQualifiedErrorId | Should -BeLike 'ImageInUse,*'
            Test-Path $script:img.Ref | Should -BeTrue
        } finally {
            $pod | Stop-MelangePod
        }
    }
}

Describe 'Get-MelangePodPlan' -Skip:$noBwrap {
    It 'shows the bwrap vector without running anything' {
        $ws = Join-Path $TestDrive 'planws'
        $plan = $script:img | Get-MelangePodPlan -WorkspaceDir $ws -Environment @{ K = 'V' } -RunAsUid 65535
        $plan | Should -BeOfType ([MelangeRunner.PodPlan])
        $plan.Runner | Should -Be 'bubblewrap'
        $plan.FileName | Should -Be 'bwrap'
        $plan.Arguments[0..5] | Should -Be @('--bind', $script:img.Ref, '/', '--bind', $ws, '/home/build')
        ($plan.Arguments -join ' ') | Should -BeLike '*--unshare-pid --die-with-parent --dev /dev --proc /proc --ro-bind /sys /sys --chdir /home/build --clearenv --unshare-user --uid 65535 --gid 65535 --cap-drop ALL*--new-session --unshare-net --setenv PATH /usr/local/sbin:/usr/local/bin:/usr/bin:/usr/sbin:/sbin:/bin --setenv K V*'
        Test-Path $ws | Should -BeFalse -Because 'a plan runs nothing and creates nothing'
    }

    It 'takes -Runner, -Config and -Image by name' {
        $config = New-MelangePodConfig -Networking
        $plan = Get-MelangePodPlan -Runner bubblewrap -Config $config -Image $script:img
        $plan.Arguments | Should -Not -Contain '--unshare-net'
    }
}
