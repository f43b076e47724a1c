# The pod contract (CONTRACT.md), written once and run against every runner (issue 10, item 6).
#
# Each row of $runners below is one runner. A third runner joins by adding a row, and needs
# nothing else here:
#
#   @{
#       Runner               = 'docker'            # the -Runner name
#       AbsentBecause        = <$null, or why the runner cannot run on this host>
#                              # the ONLY reason a row is skipped; CI installs every runner, so
#                              # set it only for a runner that is genuinely not installed.
#       TestImage            = { Get-TestRootfs }  # a path that Import-MelangeImage -Runner takes
#       PodParameters        = @{ }                # added to every Start-MelangePod (a VM's size)
#       DefaultUser          = '1000:1000'         # `id -u`:`id -g` of a pod started without -RunAs
#       NoEnterBecause       = <$null, or why Enter-MelangePod cannot run here (a missing client)>
#       CountProcesses       = { param($Pod, [string]$Marker) <how many of the pod's processes
#                                have $Marker in their command line> }
#       # What legitimately differs between runners ($true: the contract tests it):
#       SharesWorkspace      = $true   # the host's -WorkspaceDir is the pod's /home/build, live
#                                      # (false: copied in at start, read back by Export-MelangeWorkspace)
#       BindsMounts          = $true   # -Mount binds host paths (and refuses a missing source)
#       IsolatesNetwork      = $true   # no network but loopback unless -Networking
#       EnforcesCapabilities = $true   # the build user has the Docker default set, plus -CapAdd, minus -CapDrop
#       HonoursRunAsIds      = $true   # -RunAsUid and -RunAsGid set the ids of the steps
#   }
#
# (OtherRunner, the runner whose images a row's runner must refuse, is filled in from the other rows.)
#
# Behaviour only one runner has stays in its own file: Bubblewrap.Tests.ps1 (the bwrap command
# line, plans) and Qemu.Tests.ps1 (SSH endpoints and clients, host key pinning, the VM's
# processes and files, kernel and initramfs failures). Tests use public cmdlets and members only.
# Set-up cost: one long-lived pod per runner for most tests (a VM boots in ~5 s under TCG), one
# fresh pod for -RunAs, a config object and a workspace of its own, one in a child pwsh for
# Remove-Module, and (only where a flag says the runner honours them) one per option.

BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $runners = @(
        @{
            Runner               = 'bubblewrap'
            AbsentBecause        = if (-not (Get-Command bwrap -ErrorAction Ignore)) { 'bwrap (bubblewrap) is not installed' }
            TestImage            = { Get-TestRootfs }
            PodParameters        = @{}
            # melange: the build user 1000 when no RunAsUID is given and the host is root or not.
            DefaultUser          = '1000:1000'
            NoEnterBecause       = $null
            # The sandbox's processes are host processes.
            CountProcesses       = { param($Pod, [string]$Marker) @(Get-ProcessByMarker $Marker).Count }
            SharesWorkspace      = $true
            BindsMounts          = $true
            IsolatesNetwork      = $true
            EnforcesCapabilities = $true
            HonoursRunAsIds      = $true
        }
        @{
            Runner               = 'qemu'
            # CI installs qemu and runs tools/Get-MelangeKernel.ps1.
            AbsentBecause        = if (-not (Test-MelangeRunner -Name qemu)) { "qemu cannot run here: $((Get-MelangeRunner -Name qemu).Reason)" }
            TestImage            = { Get-TestRootfs }
            PodParameters        = @{ Memory = '1Gi'; Cpu = 2 }
            # melange logs in as root when no RunAs is given.
            DefaultUser          = '0:0'
            NoEnterBecause       = if (-not (Get-Command ssh -ErrorAction Ignore)) { 'the OpenSSH client (openssh-client) is not installed' }
            # The VM's processes are counted inside it; '[x]yz' keeps the counting command itself out.
            CountProcesses       = {
                param($Pod, [string]$Marker)
                $pattern = "[$($Marker[0])]$($Marker.Substring(1))"
                [int]($Pod | Invoke-MelangePod -Command sh, -c, "ps -o args | grep -c -e '$pattern' || true")
            }
            SharesWorkspace      = $false
            BindsMounts          = $false
            IsolatesNetwork      = $false
            EnforcesCapabilities = $false
            HonoursRunAsIds      = $false
        }
        @{
            Runner               = 'docker'
            # CI installs docker.io and starts dockerd when no engine answers.
            AbsentBecause        = if (-not (Test-MelangeRunner -Name docker)) { "no Docker engine answers: $((Get-MelangeRunner -Name docker).Reason)" }
            TestImage            = { Get-TestRootfs }
            PodParameters        = @{}
            # As melange's docker runner: root unless RunAs (or the image's User) says otherwise.
            DefaultUser          = '0:0'
            NoEnterBecause       = if (-not (Get-Command docker -ErrorAction Ignore)) { 'the docker CLI is not installed' }
            # The container's processes are counted inside it, as for qemu.
            CountProcesses       = {
                param($Pod, [string]$Marker)
                $pattern = "[$($Marker[0])]$($Marker.Substring(1))"
                [int]($Pod | Invoke-MelangePod -Command sh, -c, "ps -o args | grep -c -e '$pattern' || true")
            }
            # The workspace is copied in at start and read back through the archive API.
            SharesWorkspace      = $false
            BindsMounts          = $true
            IsolatesNetwork      = $true
            EnforcesCapabilities = $true
            HonoursRunAsIds      = $true
        }
    )
    # Every row also knows another runner, for the image that its runner must refuse.
    foreach ($row in $runners) {
        $row.OtherRunner = @($runners.Runner | Where-Object { $_ -ne $row.Runner })[0]
    }
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
}

Describe 'a <Runner> pod' -ForEach $runners {
    BeforeAll {
        if (-not $AbsentBecause) { $script:img = Import-MelangeImage -Path (& $TestImage) -Runner $Runner }
    }
    AfterAll {
        if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
        $script:img = $null
    }

    It 'can run on this host' {
        if ($AbsentBecause) { Set-ItResult -Skipped -Because $AbsentBecause }
        Test-MelangeRunner -Name $Runner | Should -BeTrue -Because (Get-MelangeRunner -Name $Runner).Reason
    }

    Context 'running' -Skip:([bool]$AbsentBecause) {
        BeforeAll {
            $script:ws = Join-Path $TestDrive "ws-$Runner"
            $null = New-Item -ItemType Directory -Force $script:ws
            Set-Content (Join-Path $script:ws 'seed.txt') 'from the host'
            $script:pod = $script:img | Start-MelangePod -WorkspaceDir $script:ws -Environment ([ordered]@{ SOURCE_DATE_EPOCH = '0'; GREETING = 'hello' }) @PodParameters
            # What the export tests read back.
            $script:pod | Invoke-MelangePod -Command sh, -c, @'
set -e
mkdir -p melange-out/pkg/usr/bin melange-out/pkg/etc melange-out/pkg/lib
printf '#!/bin/sh\necho hi\n' > melange-out/pkg/usr/bin/tool
chmod 4755 melange-out/pkg/usr/bin/tool
ln melange-out/pkg/usr/bin/tool melange-out/pkg/usr/bin/tool-hardlink
ln -s tool melange-out/pkg/usr/bin/tool-symlink
echo conf > melange-out/pkg/etc/app.conf
chmod 0640 melange-out/pkg/etc/app.conf
chmod 0750 melange-out/pkg/lib
echo Apache-2.0 > LICENSE
echo log > build.log
echo secret > not-exported.txt
'@
        }
        AfterAll {
            if ($script:pod) { $script:pod | Stop-MelangePod }
            $script:pod = $null
        }

        It 'starts from the image through the pipeline' {
            $script:pod | Should -BeOfType ([MelangeRunner.Pod])
            $script:pod.Runner | Should -Be $Runner
            $script:pod.State | Should -Be 'Running'
            $script:pod.ImageRef | Should -Be $script:img.Ref
            $script:pod.Config.Environment['GREETING'] | Should -Be 'hello'
            $script:pod.WorkspaceDir | Should -Be $script:ws
            (Get-MelangePod -Id $script:pod.Id) | Should -Be $script:pod
        }

        It 'streams stdout lines as output objects' {
            $lines = $script:pod | Invoke-MelangePod -Command sh, -c, 'echo one; echo two; printf three'
            $lines | Should -Be @('one', 'two', 'three')
            $LASTEXITCODE | Should -Be 0
        }

        It 'runs in the workspace as the default user (<DefaultUser>), who owns it, with the pod environment' {
            $out = $script:pod | Invoke-MelangePod sh, -c, 'echo "$(pwd) $(id -u):$(id -g) $(stat -c %u:%g seed.txt) $(cat seed.txt) $GREETING $SOURCE_DATE_EPOCH"'
            $out | Should -Be "/home/build $DefaultUser $DefaultUser from the host hello 0"
        }

        It 'sets per-call environment over the pod''s' {
            $out = $script:pod | Invoke-MelangePod -Command sh, -c, 'echo $GREETING $EXTRA' -Environment @{ GREETING = 'bye'; EXTRA = 'x' }
            $out | Should -Be 'bye x'
        }

        It 'passes the environment and arguments exactly' {
            $weird = "it's `"quoted`" `$HOME; a b`nline2"
            $out = $script:pod | Invoke-MelangePod -Command sh, -c, 'printf "[%s]\n" "$GREETING" "$X" "$1"', sh, $weird -Environment @{ X = 'a=b c' }
            $out | Should -Be @('[hello]', '[a=b c]', "[it's `"quoted`" `$HOME; a b", 'line2]')
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

        It 'writes into the workspace, which the host sees at once only where the runner shares it (<SharesWorkspace>)' {
            $script:pod | Invoke-MelangePod -Command sh, -c, 'mkdir -p melange-out/hello && echo hi > melange-out/hello/greeting'
            $script:pod | Invoke-MelangePod -Command cat, melange-out/hello/greeting | Should -Be 'hi'
            $onHost = Join-Path $script:ws 'melange-out/hello/greeting'
            Test-Path $onHost | Should -Be $SharesWorkspace
            if ($SharesWorkspace) { Get-Content $onHost | Should -Be 'hi' }
        }

        It 'reads the release data of the image (not of a VM''s initramfs)' {
            $data = $script:pod | Get-MelangeReleaseData
            $data | Should -BeOfType ([MelangeRunner.ReleaseData])
            $data.ID | Should -Be 'melange-demo'
            $data.Name | Should -Be 'MelangeRunner demo'
            $data.VersionID | Should -Be '1.0'
            $data.PrettyName | Should -Be 'MelangeRunner demo (busybox)'
        }

        It 'exports melange-out with modes, symlinks and hard links, plus extra and license files' {
            $out = Join-Path $TestDrive "export-$Runner"
            $dir = $script:pod | Export-MelangeWorkspace -Destination $out -ExtraFile build.log
            $dir | Should -BeOfType ([IO.DirectoryInfo])
            $dir.FullName | Should -Be $out
            $bin = Join-Path $out 'melange-out/pkg/usr/bin'
            Get-Content "$bin/tool" | Should -Be @('#!/bin/sh', 'echo hi')
            (Get-Item "$bin/tool").UnixMode | Should -Be '-rwsr-xr-x'
            (Get-Item "$bin/tool-symlink").LinkTarget | Should -Be 'tool'
            (stat -c %i "$bin/tool") | Should -Be (stat -c %i "$bin/tool-hardlink")
            (Get-Item (Join-Path $out 'melange-out/pkg/etc/app.conf')).UnixMode | Should -Be '-rw-r-----'
            (Get-Item (Join-Path $out 'melange-out/pkg/lib')).UnixMode | Should -Be 'drwxr-x---'
            Get-Content (Join-Path $out 'LICENSE') | Should -Be 'Apache-2.0'
            Get-Content (Join-Path $out 'build.log') | Should -Be 'log'
            Test-Path (Join-Path $out 'not-exported.txt') | Should -BeFalse
            Test-Path (Join-Path $out 'seed.txt') | Should -BeFalse
        }

        It 'writes one tar with -AsTarPath' {
            $tar = Join-Path $TestDrive "export-$Runner.tar"
            $file = $script:pod | Export-MelangeWorkspace -AsTarPath $tar
            $file | Should -BeOfType ([IO.FileInfo])
            $file.FullName | Should -Be $tar
            $listing = tar -tvf $tar
            $LASTEXITCODE | Should -Be 0
            # One of the two names is the setuid file, the other a hard link to it: which comes first
            # is the order the pod's file system lists the directory in (a VM's ext4: hash order).
            $bin = 'melange-out/pkg/usr/bin'
            $regular = @($listing | Where-Object { $_ -match "^-rwsr-xr-x .* $bin/(tool|tool-hardlink)$" })
            $regular.Count | Should -Be 1 -Because ($listing -join "`n")
            $first = ($regular[0] -split ' ')[-1]
            $second = if ($first -eq "$bin/tool") { "$bin/tool-hardlink" } else { "$bin/tool" }
            ($listing | Where-Object { $_ -like "* $second link to $first" }) | Should -Not -BeNullOrEmpty -Because ($listing -join "`n")
            ($listing | Where-Object { $_ -match ' LICENSE$' }) | Should -Not -BeNullOrEmpty
            ($listing | Where-Object { $_ -match ' seed\.txt$' }) | Should -BeNullOrEmpty
            @(Get-ChildItem $TestDrive -Filter "export-$Runner.tar.partial-*").Count | Should -Be 0
        }

        It 'refuses an extra file outside the workspace' {
            $script:pod | Export-MelangeWorkspace -Destination (Join-Path $TestDrive "x-$Runner") -ExtraFile '../../etc/passwd' -ErrorVariable errs -ErrorAction SilentlyContinue
            $errs[0].FullyQualifiedErrorId | Should -BeLike 'BadExtraFile,*'
            $errs[0].CategoryInfo.Category | Should -Be 'InvalidArgument'
        }

        It 'ends the running command at once when stopped (Ctrl+C)' {
            # A random sleep is this test's marker: the shell's command line and the sleep's both carry it.
            $marker = "sleep $(Get-Random -Minimum 100000 -Maximum 999999)"
            $result = Invoke-AndStop -Pod $script:pod -Script "echo started; $marker; $marker" -WhileRunning {
                & $CountProcesses $script:pod $marker | Should -BeGreaterThan 0 -Because 'the command runs until stopped'
            }
            $result.FirstLine | Should -Be 'started'
            $result.StopSeconds | Should -BeLessThan 10
            $result.State | Should -BeIn @('Stopped', 'Completed')
            & $CountProcesses $script:pod $marker | Should -Be 0 -Because 'stopping the pipeline ends the command''s whole process tree before Stop() returns'
            $script:pod.State | Should -Be 'Running' -Because 'stopping a command leaves the pod running'
        }

        It 'enters the pod with -Command, in the workspace with the pod environment, and sets $LASTEXITCODE' {
            if ($NoEnterBecause) { Set-ItResult -Skipped -Because $NoEnterBecause }
            $script:pod | Enter-MelangePod -Command sh, -c, 'echo "entered $GREETING" > entered.txt; exit 4'
            $LASTEXITCODE | Should -Be 4
            $script:pod | Invoke-MelangePod -Command cat, /home/build/entered.txt | Should -Be 'entered hello'
        }

        It 'refuses to remove an image that a live pod uses' {
            $script:img | Remove-MelangeImage -Confirm:$false -ErrorVariable errs -ErrorAction SilentlyContinue
            $errs[0].FullyQualifiedErrorId | Should -BeLike 'ImageInUse,*'
            @(Get-MelangeImage -Runner $Runner).Ref | Should -Contain $script:img.Ref
        }

        if ($IsolatesNetwork) {
            It 'has no network unless asked' {
                # /proc/net/dev lists the interfaces of the pod's own network namespace.
                $out = $script:pod | Invoke-MelangePod -Command sh, -c, 'tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " "'
                $out | Should -Be 'lo'
            }
        }

        if ($EnforcesCapabilities) {
            It 'gives the Docker default capabilities to the build user' {
                $capEff = $script:pod | Invoke-MelangePod -Command sh, -c, 'grep CapEff /proc/self/status | cut -f2'
                # CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP
                $capEff | Should -Be '00000000a80425fb'
            }
        }

        # Last: the pod stops here.
        It 'stops when disposed; then refuses commands, exports and release data, and stopping again is harmless' {
            $script:pod.Dispose()
            $script:pod.State | Should -Be 'Stopped'
            Get-MelangePod -State Running | Where-Object Id -EQ $script:pod.Id | Should -BeNullOrEmpty
            { $script:pod | Stop-MelangePod } | Should -Not -Throw
            $script:pod.State | Should -Be 'Stopped'
            { $script:pod | Invoke-MelangePod -Command true } | Should -Throw -ErrorId 'PodNotRunning,*'
            { $script:pod | Export-MelangeWorkspace -Destination (Join-Path $TestDrive "after-$Runner") } | Should -Throw -ErrorId 'PodNotRunning,*'
            { $script:pod | Get-MelangeReleaseData } | Should -Throw -ErrorId 'PodNotRunning,*'
            @(Get-MelangeImage -Runner $Runner).Ref | Should -Contain $script:img.Ref -Because 'the image outlives its pods'
            $script:pod = $null
        }
    }

    # A user other than the runner's default, so that the test tells -RunAs from the default.
    Context 'started from a config object as -RunAs <User>, in a workspace of its own' -Skip:([bool]$AbsentBecause) -ForEach @(
        @(@{ User = 'root'; Ids = '0:0' }, @{ User = 'build'; Ids = '1000:1000' }) | Where-Object { $_.Ids -ne $DefaultUser }
    ) {
        BeforeAll {
            $script:config = New-MelangePodConfig -Environment @{ A = '1'; B = '2' } -Memory 2Gi -PackageName demo
            $script:userPod = $script:img | Start-MelangePod -Config $script:config -Environment @{ B = 'override' } -RunAs $User @PodParameters
            $script:ownWs = $script:userPod.WorkspaceDir
        }
        AfterAll {
            if ($script:userPod) { $script:userPod | Stop-MelangePod }
            $script:userPod = $null
        }

        It 'takes a config object, with parameters over it' {
            $script:config | Should -BeOfType ([MelangeRunner.PodConfig])
            $script:config.Memory | Should -Be '2Gi'
            $script:userPod | Invoke-MelangePod -Command sh, -c, 'echo $A$B' | Should -Be '1override'
            $script:userPod.Config.PackageName | Should -Be 'demo'
            $script:config.Environment['B'] | Should -Be '2' -Because 'the caller''s config is not changed'
            $script:config.RunAs | Should -BeNullOrEmpty -Because 'the caller''s config is not changed'
        }

        It 'runs as <User> (<Ids>), resolved from the image''s /etc/passwd, in the workspace it owns' {
            $uid = $Ids.Split(':')[0]
            $script:userPod | Invoke-MelangePod -Command sh, -c, 'echo "$(id -u):$(id -g) $(pwd) $(stat -c %u .)"' |
                Should -Be "$Ids /home/build $uid"
        }

        It 'makes its own workspace when none is given, and honours -WhatIf on Stop-MelangePod' {
            $script:ownWs | Should -Not -BeNullOrEmpty
            Test-Path $script:ownWs | Should -BeTrue
            $script:userPod | Stop-MelangePod -WhatIf
            $script:userPod.State | Should -Be 'Running'
            $script:userPod | Invoke-MelangePod -Command true
            $LASTEXITCODE | Should -Be 0
        }

        It 'stops, removing the workspace it made' {
            $script:userPod | Stop-MelangePod
            $script:userPod.State | Should -Be 'Stopped'
            Test-Path $script:ownWs | Should -BeFalse
            $script:userPod = $null
        }
    }

    Context 'options' -Skip:([bool]$AbsentBecause) {
        if ($HonoursRunAsIds) {
            It 'uses -RunAsUid and -RunAsGid' {
                $pod = $script:img | Start-MelangePod -RunAsUid 4242 -RunAsGid 4343 @PodParameters
                try {
                    $pod | Invoke-MelangePod -Command sh, -c, 'echo $(id -u):$(id -g)' | Should -Be '4242:4343'
                } finally {
                    $pod | Stop-MelangePod
                }
            }
        }

        if ($EnforcesCapabilities) {
            It 'adds and drops capabilities' {
                $pod = $script:img | Start-MelangePod -CapAdd NET_ADMIN -CapDrop CAP_NET_RAW, chown @PodParameters
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
        }

        if ($IsolatesNetwork) {
            It 'shares the network with -Networking' {
                $pod = $script:img | Start-MelangePod -Networking @PodParameters
                try {
                    $ifaces = $pod | Invoke-MelangePod -Command sh, -c, 'tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " "'
                    @($ifaces).Count | Should -BeGreaterThan 1
                    $pod.Config.Capabilities.Networking | Should -BeTrue
                } finally {
                    $pod | Stop-MelangePod
                }
            }
        }

        if ($BindsMounts) {
            It 'binds extra mounts, relative sources from the current location' {
                $src = Join-Path $TestDrive "mountsrc-$Runner"
                $null = New-Item -ItemType Directory -Force $src
                Set-Content (Join-Path $src 'data.txt') 'mounted'
                Push-Location $TestDrive
                try {
                    $pod = $script:img | Start-MelangePod -Mount "./mountsrc-${Runner}:/opt/src" @PodParameters
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

            It 'says which mount source is missing' {
                $missing = Join-Path $TestDrive 'no-such-dir'
                $script:img | Start-MelangePod -Mount "${missing}:/opt/src" @PodParameters -ErrorVariable errs -ErrorAction SilentlyContinue
                $errs.Count | Should -Be 1
                $errs[0].FullyQualifiedErrorId | Should -BeLike 'MountSourceNotFound,*'
                $errs[0].CategoryInfo.Category | Should -Be 'ObjectNotFound'
                $errs[0].Exception.Message | Should -Match ([regex]::Escape($missing))
            }
        }
    }

    Context 'bad input' -Skip:([bool]$AbsentBecause) {
        It 'names the accepted units for a bad size' {
            # The string '4GB' is no melange unit; the PowerShell number 4GB is bytes (Conventions.Tests.ps1).
            { $script:img | Start-MelangePod -Memory '4GB' -ErrorAction Stop } | Should -Throw -ErrorId 'InvalidSize,*'
            # A bad parameter value stops the cmdlet, as a parameter validation error does.
            $err = { $script:img | Start-MelangePod -Disk lots -ErrorAction SilentlyContinue } | Should -Throw -ErrorId 'InvalidSize,*' -PassThru
            $err.CategoryInfo.Category | Should -Be 'InvalidArgument'
            $err.ErrorDetails.RecommendedAction | Should -Match 'Ki, Mi, Gi, Ti'
        }

        It 'refuses an image imported for another runner (<OtherRunner>)' {
            $other = Import-MelangeImage -Path (& $TestImage) -Runner $OtherRunner
            try {
                $other | Start-MelangePod -Runner $Runner -ErrorVariable errs -ErrorAction SilentlyContinue
                $errs[0].FullyQualifiedErrorId | Should -BeLike 'WrongImageRunner,*'
                $errs[0].CategoryInfo.Category | Should -Be 'InvalidArgument'
            } finally {
                $other | Remove-MelangeImage -Confirm:$false
            }
        }
    }

    Context 'when the module is removed' -Skip:([bool]$AbsentBecause) {
        It 'stops the runspace''s live pods when the module is removed' {
            # Another pwsh, with a TMPDIR of its own: its image, pod and workspace all live under it.
            $tmp = (New-Item -ItemType Directory -Force (Join-Path $TestDrive "child-tmp-$Runner")).FullName
            $podArgs = ($PodParameters.GetEnumerator() | ForEach-Object { "-$($_.Key) '$($_.Value)'" }) -join ' '
            $script = @"
`$ErrorActionPreference = 'Stop'
Import-Module '$script:ModuleManifest'
`$img = Import-MelangeImage -Path '$(& $TestImage)' -Runner $Runner
`$pod = `$img | Start-MelangePod $podArgs
`$ws = `$pod.WorkspaceDir
Remove-Module MelangeRunner
'{0} {1}' -f `$pod.State, (Test-Path `$ws)
# The image goes too: an engine's images are not under TMPDIR.
Import-Module '$script:ModuleManifest'
`$img | Remove-MelangeImage -Confirm:`$false
"@
            $child = Invoke-ChildPwshFile -Script $script -Environment @{ TMPDIR = $tmp }
            $child.ExitCode | Should -Be 0 -Because "$($child.StdOut)$($child.StdErr)"
            $child.StdOut.Trim() | Should -Be 'Stopped False'
        }
    }
}

Describe 'New-MelangePodConfig' {
    It 'refuses a mount that is not SOURCE:DESTINATION' {
        { New-MelangePodConfig -Mount 'nocolon' -ErrorAction Stop } | Should -Throw -ErrorId 'BadMount,*'
    }
}
