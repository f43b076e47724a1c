# What only the bubblewrap runner does: the bwrap command line (melange's argument order), its
# plans, and users that a sandbox runs without a login shell. The contract that every runner
# shares (run, environment, users, mounts, capabilities, network, export, stop) is
# PodContract.Tests.ps1.

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
        # Not made here: the pod makes it.
        $script:ws = Join-Path $TestDrive 'ws'
        $script:pod = $script:img | Start-MelangePod -WorkspaceDir $script:ws -Environment ([ordered]@{ SOURCE_DATE_EPOCH = '0'; GREETING = 'hello' })
    }
    AfterAll {
        if ($script:pod) { $script:pod | Stop-MelangePod }
    }

    It 'makes the workspace directory it is given, bound at /home/build' {
        Test-Path $script:ws -PathType Container | Should -BeTrue
        $script:pod | Invoke-MelangePod -Command sh, -c, 'echo bound > bound.txt'
        Get-Content (Join-Path $script:ws 'bound.txt') | Should -Be 'bound'
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
        $line | Should -Not -BeNullOrEmpty
        $line | Should -Not -BeLike '*--new-session*'
    }
}

Describe 'Bubblewrap users' -Skip:$noBwrap {
    It 'resolves -RunAs by name from the image''s /etc/passwd' {
        # nobody's shell is /bin/false: a sandbox needs no login shell (a VM's SSH log-in does).
        $pod = $script:img | Start-MelangePod -RunAs nobody
        try {
            $pod.RunAsUID | Should -Be '65534'
            $pod | Invoke-MelangePod -Command sh, -c, 'echo $(id -u):$(id -g)' | Should -Be '65534:65534'
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
        $plan.FileName | Should -Be 'bwrap'
        $plan.Arguments | Should -Not -Contain '--unshare-net'
    }
}
