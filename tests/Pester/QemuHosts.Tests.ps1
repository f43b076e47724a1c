# The qemu runner's accelerator on the hosts users bring: as this host is, with its /dev/kvm
# hidden, with KVM pinned, and with evidence that wrongly says KVM works.
BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $noQemu = -not (Test-MelangeRunner -Name qemu)
    $kvmHere = -not $noQemu -and (Get-MelangeRunner -Name qemu).Accelerator -eq 'kvm'
    # unshare and mount, as root, hide /dev/kvm in a private mount namespace (util-linux).
    $noUnshare = -not (Get-Command unshare -ErrorAction Ignore) -or (& id -u) -ne '0'
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    if (Test-MelangeRunner -Name qemu) { $script:img = Import-MelangeImage -Path (Get-TestRootfs) -Runner qemu }

    function Invoke-WithEnvironment([hashtable]$Variables, [scriptblock]$Script) {
        $saved = @{}
        foreach ($k in $Variables.Keys) { $saved[$k] = [Environment]::GetEnvironmentVariable($k); [Environment]::SetEnvironmentVariable($k, $Variables[$k]) }
        try { & $Script } finally { foreach ($k in $saved.Keys) { [Environment]::SetEnvironmentVariable($k, $saved[$k]) } }
    }

}

AfterAll {
    if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
}

Describe 'The accelerator decision' -Skip:$noQemu {
    It 'is shown by Get-MelangeRunner, with the reason when it is TCG' {
        $info = Get-MelangeRunner -Name qemu
        $info.Accelerator | Should -BeIn 'kvm', 'tcg'
        if ($info.Accelerator -eq 'tcg') { $info.Reason | Should -Match 'TCG' }
    }

    It 'is shown by Get-MelangePodPlan with its reason, and -Accelerator tcg pins it' {
        $auto = $script:img | Get-MelangePodPlan -Config (New-MelangePodConfig)
        $auto.Accelerator | Should -Be (Get-MelangeRunner -Name qemu).Accelerator
        $auto.AcceleratorReason | Should -Not -BeNullOrEmpty
        $tcg = $script:img | Get-MelangePodPlan -Config (New-MelangePodConfig -Accelerator tcg)
        $tcg.Accelerator | Should -Be 'tcg'
        $tcg.AcceleratorReason | Should -Match '-Accelerator tcg'
        $tcg.Arguments[[array]::IndexOf($tcg.Arguments, '-accel') + 1] | Should -Be 'tcg,thread=multi'
        @($tcg.Arguments | Where-Object { $_ -eq '-accel' }).Count | Should -Be 1
    }

    It 'takes MELANGE_QEMU_ACCELERATOR, under -Accelerator' {
        Invoke-WithEnvironment @{ MELANGE_QEMU_ACCELERATOR = 'tcg' } {
            ($script:img | Get-MelangePodPlan -Config (New-MelangePodConfig)).AcceleratorReason | Should -Match 'MELANGE_QEMU_ACCELERATOR=tcg'
            (New-MelangePodConfig -Accelerator auto).Accelerator | Should -Be 'auto'
        }
    }

    It 'refuses a MELANGE_QEMU_ACCELERATOR that is not an accelerator' {
        Invoke-WithEnvironment @{ MELANGE_QEMU_ACCELERATOR = 'hvf' } {
            { $script:img | Start-MelangePod -ErrorAction Stop } | Should -Throw -ErrorId 'InvalidAccelerator,*'
        }
    }

    It 'fails at once, starting nothing, when KVM is pinned where it cannot run guests' -Skip:$kvmHere {
        $watch = [Diagnostics.Stopwatch]::StartNew()
        $err = $null
        try { $script:img | Start-MelangePod -Accelerator kvm -ErrorAction Stop } catch { $err = $_ }
        $watch.Elapsed.TotalSeconds | Should -BeLessThan 10
        $err.FullyQualifiedErrorId | Should -BeLike 'KvmUnavailable,*'
        $err.CategoryInfo.Category | Should -Be 'ResourceUnavailable'
        $err.Exception.Message | Should -Match '-Accelerator kvm asks for KVM, but'
        $err.ErrorDetails.RecommendedAction | Should -Match '-Accelerator tcg'
        @(Get-ChildQemu).Count | Should -Be 0
        Invoke-WithEnvironment @{ MELANGE_QEMU_ACCELERATOR = 'kvm' } {
            (Get-MelangeRunner -Name qemu).IsUsable | Should -BeFalse
            { $script:img | Start-MelangePod -ErrorAction Stop } | Should -Throw -ErrorId 'KvmUnavailable,*'
        }
    }
}

Describe 'A qemu pod whose host evidence wrongly says KVM works' -Skip:($noQemu -or $kvmHere) {
    It 'is booted again under TCG, with one warning that says why and how to pin it' {
        Invoke-WithEnvironment @{ MELANGE_TEST_ASSUME_KVM = '1' } {
            $all = $script:img | Start-MelangePod -Memory 1Gi -WarningVariable warnings -WarningAction SilentlyContinue -Verbose 4>&1
            $pod = $all | Where-Object { $_ -is [MelangeRunner.Pod] }
            $launches = @($all | Where-Object { $_ -is [Management.Automation.VerboseRecord] -and $_.Message -match '^Running: .*qemu-system' } | ForEach-Object Message)
            try {
                $launches.Count | Should -Be 2
                $launches[0] | Should -Match ' -accel kvm '
                $launches[1] | Should -Match ' -accel tcg,thread=multi '
                $pod.State | Should -Be 'Running'
                $pod | Invoke-MelangePod -Command uname, -s | Should -Be 'Linux'
                @($warnings).Count | Should -Be 1
                "$($warnings[0])" | Should -Match 'KVM did not boot the VM'
                "$($warnings[0])" | Should -Match '-Accelerator tcg'
            } finally {
                $pod | Stop-MelangePod
            }
        }
    }
}

Describe 'A qemu pod on a host whose /dev/kvm is hidden' -Skip:($noQemu -or $noUnshare) {
    It 'boots under TCG, says why, runs a command and cleans up' {
        $child = @"
`$ErrorActionPreference = 'Stop'
Import-Module '$script:ModuleManifest'
`$info = Get-MelangeRunner -Name qemu
`$img = Import-MelangeImage -Path '$(Get-TestRootfs)' -Runner qemu
`$pod = `$img | Start-MelangePod -Memory 1Gi
`$out = `$pod | Invoke-MelangePod -Command sh, -c, 'echo ok; ls /dev/kvm 2>&1 | wc -l'
`$pod | Stop-MelangePod
`$img | Remove-MelangeImage -Confirm:`$false
"RESULT `$(`$info.Accelerator) `$(`$out -join ',') `$(`$info.Reason)"
"@
        $pwshArgs = if ([IO.Path]::GetFileName([Environment]::ProcessPath) -eq 'dotnet') { @([Environment]::ProcessPath, (Join-Path $PSHOME 'pwsh.dll')) } else { @([Environment]::ProcessPath) }
        $quoted = ($pwshArgs + '-NoProfile', '-NonInteractive', '-Command', $child | ForEach-Object { "'" + ($_ -replace "'", "'\''") + "'" }) -join ' '
        # As docs/hosts.md#hide-kvm shows: opening /dev/kvm then succeeds, and every KVM ioctl fails.
        $output = & unshare -m --propagation private sh -c "mount --bind /dev/null /dev/kvm && exec $quoted" 2>&1
        $LASTEXITCODE | Should -Be 0 -Because ($output -join "`n")
        $result = @($output | Where-Object { "$_" -like 'RESULT *' })[-1]
        $result | Should -Match '^RESULT tcg ok,\d '
        $result | Should -Match '/dev/kvm is missing, cannot be opened read-write, or is not a KVM device'
    }
}

Describe 'A qemu VM that stops making progress before SSH answers' -Skip:$noQemu {
    It 'fails with VmStalled, what the host saw and no qemu left, instead of waiting out the boot timeout' {
        $ps = [powershell]::Create()
        try {
            $null = $ps.AddScript({
                    param($img, $manifest)
                    Import-Module $manifest
                    try { $img | Start-MelangePod -Memory 1Gi -Accelerator tcg -ErrorAction Stop } catch { $_ }
                }).AddArgument($script:img).AddArgument($script:ModuleManifest)
            $async = $ps.BeginInvoke()
            Wait-Until -TimeoutSeconds 120 -Because 'qemu to start' -Condition { ($script:q = @(Get-ChildQemu)).Count -gt 0 }
            $qemu = $script:q[0]
            $watch = [Diagnostics.Stopwatch]::StartNew()
            $null = & kill -STOP $qemu # a VM frozen in its boot: alive, silent
            $result = $ps.EndInvoke($async)
            $watch.Elapsed.TotalSeconds | Should -BeLessThan 90
            $err = @($result)[0]
            $err | Should -BeOfType ([Management.Automation.ErrorRecord])
            $err.FullyQualifiedErrorId | Should -BeLike 'VmStalled,*'
            $err.CategoryInfo.Category | Should -Be 'OperationTimeout'
            $err.Exception.Message | Should -Match 'silent for \d+ s'
            $err.Exception.Message | Should -Match 'accelerator tcg'
            Test-Path "/proc/$qemu" | Should -BeFalse
        } finally {
            $ps.Dispose()
        }
    }
}
