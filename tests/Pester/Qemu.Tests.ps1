# What only the qemu runner does: the VM's state (SSH endpoints and clients, processes, files),
# key secrecy and host key pinning, the real PTY, plans, the cache share, and the ways a VM fails
# to start or dies. The contract that every runner shares (run, environment, users, export, stop)
# is PodContract.Tests.ps1.

BeforeDiscovery {
    # Real VMs: skipped only where qemu or a kernel is genuinely absent (CI installs qemu and
    # runs tools/Get-MelangeKernel.ps1).
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $noQemu = -not (Test-MelangeRunner -Name qemu)
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    if (Test-MelangeRunner -Name qemu) {
        $script:img = Import-MelangeImage -Path (Get-TestRootfs) -Runner qemu
    }
}

AfterAll {
    if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
}

Describe 'A qemu pod' -Skip:$noQemu {
    BeforeAll {
        $script:ws = Join-Path $TestDrive 'ws'
        $null = New-Item -ItemType Directory -Force $script:ws
        Set-Content (Join-Path $script:ws 'seed.txt') 'from the host'
        $script:pod = $script:img | Start-MelangePod -WorkspaceDir $script:ws -Memory 1Gi -Cpu 2 -RunAs build -Environment @{ GREETING = 'hello' }
    }
    AfterAll {
        if ($script:pod) { $script:pod | Stop-MelangePod }
    }

    It 'boots and wraps the VM''s state' {
        $script:pod.Runner | Should -Be 'qemu'
        $script:pod.State | Should -Be 'Running'
        $script:pod.QemuPid | Should -BeGreaterThan 0
        Get-Process -Id $script:pod.QemuPid | Should -Not -BeNullOrEmpty
        $script:pod.SshAddress | Should -Match '^127\.0\.0\.1:\d+$'
        $script:pod.SshControlAddress | Should -Match '^127\.0\.0\.1:\d+$'
        $script:pod.BuildClient.IsConnected | Should -BeTrue
        $script:pod.ControlClient.IsConnected | Should -BeTrue
        $script:pod.ControlBuildClient.IsConnected | Should -BeTrue
        $script:pod.BuildClient.User | Should -Be 'build'
        $script:pod.ControlClient.Role | Should -Be 'control'
        $script:pod.BuildClient.Address | Should -Be $script:pod.SshAddress
        $script:pod.ControlClient.Address | Should -Be $script:pod.SshControlAddress
        $script:pod.ControlClient.User | Should -Be 'root'
    }

    It 'keeps the guest clock at the host''s, at the host''s rate (tsc_early_khz under TCG: docs/microvm.md#clock)' {
        $h0 = [DateTimeOffset]::UtcNow.ToUnixTimeMilliseconds() / 1000
        $r = $script:pod.ControlClient.Run('date +%s; sleep 10; date +%s')
        $h1 = [DateTimeOffset]::UtcNow.ToUnixTimeMilliseconds() / 1000
        $r.ExitCode | Should -Be 0
        $g = $r.Output.Trim() -split '\s+' | ForEach-Object { [double]$_ }
        $g[0] | Should -BeGreaterOrEqual ([math]::Floor($h0) - 2)
        $g[1] | Should -BeLessOrEqual ([math]::Ceiling($h1) + 1)
        ($g[1] - $g[0]) | Should -BeLessOrEqual ([math]::Ceiling($h1 - $h0) + 1)
        ($g[1] - $g[0]) | Should -BeGreaterOrEqual 9
    }

    It 'never shows key material, formatted or as JSON' {
        $json = $script:pod | ConvertTo-Json -Depth 6 -WarningAction SilentlyContinue
        $text = ($script:pod | Format-List * | Out-String) + ($script:pod | Format-Table | Out-String)
        foreach ($shown in $json, $text) {
            $shown | Should -Not -Match 'PRIVATE KEY|PrivateKey|AuthenticationMethods|KeyFiles'
        }
        $json | Should -Match '"Role": "build"'
    }

    It 'copies the workspace in, owned by the RunAs user' {
        # The host's files, copied into the VM and handed to the user the steps log in as.
        $script:pod | Invoke-MelangePod -Command sh, -c, 'echo "$(id -u) $(pwd) $(stat -c %u seed.txt) $(cat seed.txt)"' |
            Should -Be '1000 /home/build 1000 from the host'
    }

    It 'enters the VM on a real PTY with the system ssh client' {
        if (-not (Get-Command ssh -ErrorAction Ignore)) { Set-ItResult -Skipped -Because 'the OpenSSH client (openssh-client) is not installed' }
        $script:pod | Enter-MelangePod -Command sh, -c, 'tty > pty.txt; echo "$GREETING" >> pty.txt; exit 3'
        $LASTEXITCODE | Should -Be 3
        $lines = $script:pod | Invoke-MelangePod -Command cat, pty.txt
        $lines[0] | Should -Match '^/dev/pts/\d+$'
        $lines[1] | Should -Be 'hello'
        @(Get-ChildItem ([IO.Path]::GetTempPath()) -Filter 'melange-ssh-*' -ErrorAction Ignore) | Should -BeNullOrEmpty -Because 'the key and known_hosts files are deleted'
    }

    It 'shows the launch in a plan without starting anything' {
        $plan = $script:img | Get-MelangePodPlan -Memory 1Gi -Cpu 1
        $plan.Runner | Should -Be 'qemu'
        $plan.FileName | Should -Be 'qemu-system-x86_64'
        @($plan.Arguments | Where-Object { $_ -eq '-accel' }).Count | Should -Be 1
        $plan.Cpus | Should -Be 1
        $plan.MemoryKiB | Should -Be 1048576
        $plan.KernelCommandLine | Should -Match 'console=hvc0 .*panic=-1.* melange_qemu_runner=1'
    }

    It 'stops the VM and leaves nothing behind' {
        $qemuPid = $script:pod.QemuPid
        # The files this pod's qemu was given: the scratch disk, and the initramfs (already gone once the VM is up).
        $argv = (Get-Content -LiteralPath "/proc/$qemuPid/cmdline" -Raw) -split "`0"
        $disk = ($argv | Where-Object { $_ -like 'if=none,id=disk0,*' }) -replace '^.*,file=', ''
        $initrd = $argv[[array]::IndexOf($argv, '-initrd') + 1]
        Test-Path -LiteralPath $disk | Should -BeFalse -Because 'qemu holds the scratch disk open; its path is unlinked once the VM is up'
        Test-Path -LiteralPath $initrd | Should -BeFalse -Because 'the initramfs that held the host key is deleted once the VM is up'
        (Get-ChildItem "/proc/$qemuPid/fd" | Where-Object { $_.LinkTarget -eq "$disk (deleted)" }) | Should -Not -BeNullOrEmpty
        $script:pod | Stop-MelangePod
        $script:pod.State | Should -Be 'Stopped'
        Get-Process -Id $qemuPid -ErrorAction Ignore | Should -BeNullOrEmpty
        Test-Path -LiteralPath $script:img.Ref | Should -BeTrue -Because 'the image outlives its pods'
        { $script:pod | Stop-MelangePod } | Should -Not -Throw
        $script:pod = $null
    }
}

Describe 'A qemu pod that dies' -Skip:$noQemu {
    It 'fails a running command quickly when the guest powers off' {
        $pod = $script:img | Start-MelangePod -Memory 512Mi -Cpu 1
        try {
            $watch = [Diagnostics.Stopwatch]::StartNew()
            { $pod | Invoke-MelangePod -Command sh, -c, 'echo o > /proc/sysrq-trigger; sleep 600' -ErrorAction Stop } |
                Should -Throw -ErrorId 'VmLost,*'
            # melange's keepalive bound is 3 × 30 s plus a 10 s request timeout.
            $watch.Elapsed.TotalSeconds | Should -BeLessThan 100
            $pod.State | Should -Be 'Failed'
            { $pod | Invoke-MelangePod -Command true -ErrorAction Stop } | Should -Throw -ErrorId 'PodNotRunning,*'
        } finally {
            $pod | Stop-MelangePod
        }
        $pod.State | Should -Be 'Stopped'
    }
}

Describe 'A qemu pod with a cache directory' -Skip:$noQemu {
    It 'sees the host cache read-only under an overlay (its modules loaded on demand)' {
        $cache = Join-Path $TestDrive 'cache'
        $null = New-Item -ItemType Directory -Force $cache
        Set-Content (Join-Path $cache 'seed') 'cached on the host'
        $pod = $script:img | Start-MelangePod -CacheDir $cache -Memory 512Mi -Cpu 1
        try {
            $pod | Invoke-MelangePod -Command sh, -c, 'cat /var/cache/melange/seed && echo made-in-vm > /var/cache/melange/added && cat /var/cache/melange/added' |
                Should -Be @('cached on the host', 'made-in-vm')
            # melange without virtiofs: 9p read-only plus an overlay, so the VM's writes stay in the VM.
            Test-Path -LiteralPath (Join-Path $cache 'added') | Should -BeFalse
            $pod | Invoke-MelangePod -Command sh, -c, 'grep " /var/cache/melange " /proc/mounts | cut -d" " -f3' | Should -Be 'overlay'
        } finally {
            $pod | Stop-MelangePod
        }
    }
}

Describe 'A qemu VM whose SSH server presents another host key' -Skip:$noQemu {
    BeforeAll {
        $script:oldBase = $env:QEMU_BASE_INITRAMFS
    }
    AfterAll {
        $env:QEMU_BASE_INITRAMFS = $script:oldBase
    }

    It 'is refused before any log-in, and the failed start leaves nothing behind' {
        if (-not (Get-Command ssh-keygen -ErrorAction Ignore)) { Set-ItResult -Skipped -Because 'ssh-keygen (openssh-client) is not installed' }
        # A base initramfs whose sshd_config points at an impostor key of its own: the VM boots
        # normally, but its SSH server is not the one whose key the runner generated and pinned.
        $dir = Join-Path $TestDrive 'impostor'
        $null = New-Item -ItemType Directory -Force (Join-Path $dir 'root/etc/ssh')
        # Without -KernelModules the base holds the modules of the kernel pods boot, as the runner's own does.
        $null = New-MelangeInitramfs -OutputPath (Join-Path $dir 'base.cpio')
        $config = & bash -c "cd '$dir' && cpio -i --quiet --to-stdout etc/ssh/sshd_config < base.cpio"
        $config | Should -Contain 'HostKey /etc/ssh/ssh_host_ed25519_key'
        ($config -replace '^HostKey .*', 'HostKey /etc/ssh/impostor_key') | Set-Content (Join-Path $dir 'root/etc/ssh/sshd_config')
        & ssh-keygen -q -t ed25519 -N '' -C impostor -f (Join-Path $dir 'root/etc/ssh/impostor_key')
        # The kernel unpacks concatenated archives in turn, later entries replacing earlier ones.
        & bash -c "cd '$dir/root' && find etc | cpio -o -H newc --quiet -R 0:0 > ../overlay.cpio && cd .. && cat base.cpio overlay.cpio > impostor.cpio"
        $LASTEXITCODE | Should -Be 0
        $env:QEMU_BASE_INITRAMFS = Join-Path $dir 'impostor.cpio'

        $qemuBefore = @(Get-ChildQemu)
        $tempBefore = @(Get-ChildItem ([IO.Path]::GetTempPath()) -Filter 'melange-*' -ErrorAction Ignore).Name
        $err = $null
        try {
            $script:img | Start-MelangePod -Memory 512Mi -Cpu 1 -ErrorAction Stop | Stop-MelangePod
        } catch {
            $err = $_
        }
        $err | Should -Not -BeNullOrEmpty -Because 'a server with another host key must be refused'
        $err.FullyQualifiedErrorId | Should -BeLike "HostKeyMismatch,*" -Because $err.Exception.Message
        $err.Exception.Message | Should -Match 'host key'
        $err.CategoryInfo.Category | Should -Be 'SecurityError'
        @(Get-ChildQemu) | Where-Object { $_ -notin $qemuBefore } | Should -BeNullOrEmpty
        @(Get-ChildItem ([IO.Path]::GetTempPath()) -Filter 'melange-*' -ErrorAction Ignore).Name | Where-Object { $_ -notin $tempBefore } |
            Should -BeNullOrEmpty -Because 'the disk, the initramfs copy and the workspace are removed'
    }
}

Describe 'A qemu VM whose init fails after its SSH server started' -Skip:$noQemu {
    It 'fails to start with the init''s reason, not a hang' {
        # The rootfs (about 2 MB) cannot fit on a 1 MiB scratch disk: the init's unpacking fails
        # after it started sshd, while the host waits for it to finish.
        $err = $null
        try {
            $script:img | Start-MelangePod -Disk 1Mi -Memory 512Mi -Cpu 1 -ErrorAction Stop | Stop-MelangePod
        } catch {
            $err = $_
        }
        $err | Should -Not -BeNullOrEmpty
        $err.FullyQualifiedErrorId | Should -BeLike 'VmExited,*' -Because $err.Exception.Message
        $err.Exception.Message | Should -Match 'FATAL: unpacking the rootfs'
    }
}

Describe 'A qemu pod for a -RunAs user that the image lacks' -Skip:$noQemu {
    It 'fails to start, naming the user, and leaves no VM behind' {
        $qemuBefore = @(Get-ChildQemu)
        $err = $null
        try {
            $script:img | Start-MelangePod -RunAs nosuchuser -Memory 512Mi -Cpu 1 -ErrorAction Stop | Stop-MelangePod
        } catch {
            $err = $_
        }
        $err.FullyQualifiedErrorId | Should -BeLike 'SshLoginFailed,*' -Because "$err"
        $err.Exception.Message | Should -Match "'nosuchuser'"
        $err.ErrorDetails.RecommendedAction | Should -Match 'nosuchuser.*/bin/sh'
        @(Get-ChildQemu) | Where-Object { $_ -notin $qemuBefore } | Should -BeNullOrEmpty
    }
}

Describe 'A qemu VM that cannot load its kernel modules' -Skip:$noQemu {
    BeforeAll {
        $script:oldBase = $env:QEMU_BASE_INITRAMFS
    }
    AfterAll {
        $env:QEMU_BASE_INITRAMFS = $script:oldBase
    }

    It 'fails to start with an error that points at the initramfs''s modules' {
        # An empty module list replaces the base's: the guest has no console, no disks, no network.
        $dir = Join-Path $TestDrive 'nomodules'
        $null = New-Item -ItemType Directory -Force $dir
        $null = New-MelangeInitramfs -OutputPath (Join-Path $dir 'base.cpio')
        $list = & bash -c "cd '$dir' && cpio -it --quiet < base.cpio | grep '/melange-modules.load$'"
        $list | Should -Not -BeNullOrEmpty
        $null = New-Item -ItemType Directory -Force (Join-Path $dir "root/$(Split-Path $list)")
        Set-Content (Join-Path $dir "root/$list") '# nothing'
        & bash -c "cd '$dir/root' && find . -type f | cpio -o -H newc --quiet -R 0:0 > ../empty.cpio && cd .. && cat base.cpio empty.cpio > nomodules.cpio"
        $LASTEXITCODE | Should -Be 0
        $env:QEMU_BASE_INITRAMFS = Join-Path $dir 'nomodules.cpio'
        $err = $null
        try {
            $script:img | Start-MelangePod -Memory 512Mi -Cpu 1 -ErrorAction Stop | Stop-MelangePod
        } catch {
            $err = $_
        }
        $err | Should -Not -BeNullOrEmpty
        $err.FullyQualifiedErrorId | Should -BeLike 'VmExited,*' -Because $err.Exception.Message
        $err.Exception.Message | Should -Match '\(nothing\)'
        $err.ErrorDetails.RecommendedAction | Should -Match 'virtio_console.*New-MelangeInitramfs'
    }
}
