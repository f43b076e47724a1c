# Tab completion (issue 9, item 4), through TabExpansion2 as a user's Tab key reaches it.

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $script:OldTmp = $env:TMPDIR
    $script:Tmp = (New-Item -ItemType Directory -Force (Join-Path ([IO.Path]::GetTempPath()) "melange-completion-$PID")).FullName
    $env:TMPDIR = $script:Tmp
    $script:img = Import-MelangeImage -LiteralPath (Get-TestRootfs) -Runner bubblewrap

    # The completion texts for the input with the cursor at its end.
    function Complete([string]$InputScript) {
        @((TabExpansion2 -inputScript $InputScript -cursorColumn $InputScript.Length).CompletionMatches | ForEach-Object CompletionText)
    }
}

AfterAll {
    Get-MelangePod | Stop-MelangePod
    $script:img | Remove-MelangeImage -Confirm:$false
    $env:TMPDIR = $script:OldTmp
    Remove-Item -Recurse -Force $script:Tmp -ErrorAction Ignore
}

Describe 'Argument completion' {
    It '-Arch offers x86_64 and aarch64' {
        Complete 'Start-MelangePod -Arch ' | Should -Be @('x86_64', 'aarch64')
        Complete 'Import-MelangeImage ./x.tar bubblewrap -Arch a' | Should -Be @('aarch64')
        Complete 'New-MelangeInitramfs -OutputPath x -Arch x' | Should -Be @('x86_64')
    }

    It '-CapAdd/-CapDrop offer capability names, with or without CAP_' {
        $net = Complete 'Start-MelangePod -CapAdd net_'
        $net | Should -Contain 'CAP_NET_ADMIN'
        $net | Should -Contain 'CAP_NET_RAW'
        $net | Should -Not -Contain 'CAP_CHOWN'
        Complete 'New-MelangePodConfig -CapDrop CAP_SYS_AD' | Should -Be @('CAP_SYS_ADMIN')
        Complete 'Get-MelangePodPlan -CapDrop al' | Should -Be @('ALL')
        (Complete 'Start-MelangePod -CapAdd ').Count | Should -Be ([MelangeRunner.Capability]::Known.Count + 1)
    }

    It '-RunAs offers the users of the image''s /etc/passwd once -Image is bound, not the host''s' {
        $expected = @(Get-Content -LiteralPath (Join-Path $script:img.Ref 'etc/passwd') | ForEach-Object { ($_ -split ':')[0] })
        $expected | Should -Contain 'build'
        $users = Complete 'Start-MelangePod -Image $img -RunAs '
        $users | Should -Be $expected
        $users | Should -Not -Contain 'daemon' -Because 'the host has a daemon user, the busybox image does not'
        Complete 'Get-MelangePodPlan -Image $img -RunAs bu' | Should -Be @('build')
    }

    It '-Memory/-Disk offer size examples, and units after digits' {
        $sizes = Complete 'Start-MelangePod -Memory '
        foreach ($s in '512Mi', '1Gi', '2Gi', '4Gi') { $sizes | Should -Contain $s }
        (Complete 'New-MelangePodConfig -Disk 20')[0] | Should -Be '20Gi'
        Complete 'Import-MelangeImage ./x bubblewrap -MaximumSize 6' | Should -Contain '6Gi'
    }

    It 'Get-MelangePod -Id offers the session''s pod ids; -Pod completes to an expression that binds the pod' {
        $pod = Start-MelangePod $script:img
        try {
            Complete 'Get-MelangePod -Id ' | Should -Be @($pod.Id)
            Complete ('Get-MelangePod ' + $pod.Id.Substring(0, 10)) | Should -Be @($pod.Id)
            $expr = @(Complete 'Stop-MelangePod -Pod ')
            $expr | Should -Be @("(Get-MelangePod -Id $($pod.Id))")
            Complete 'Export-MelangeWorkspace -Pod mel' | Should -Be $expr
            $release = Invoke-Expression "Get-MelangeReleaseData -Pod $($expr[0])"
            $release.ID | Should -Not -BeNullOrEmpty
        } finally {
            $pod | Stop-MelangePod
        }
        Complete 'Get-MelangePod -Id ' | Should -BeNullOrEmpty
    }

    It 'Get-MelangeRunner -Name, which takes wildcards, still completes runner names' {
        Complete 'Get-MelangeRunner -Name q' | Should -Be @('qemu')
        Complete 'Get-MelangeRunner ' | Should -Be @('bubblewrap', 'qemu', 'docker')
    }
}
