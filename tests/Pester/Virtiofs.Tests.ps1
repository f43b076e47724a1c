# The qemu runner's cache over virtiofs (QEMU_USE_VIRTIOFS=1), with Debian 12's virtiofsd
# (/usr/lib/qemu/virtiofsd, from qemu-system-common). Real VMs, real virtiofsd.
BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $virtiofsd = @('/usr/libexec/virtiofsd', '/usr/lib/qemu/virtiofsd') | Where-Object { Test-Path $_ } | Select-Object -First 1
    # virtiofsd 7.2 sandboxes itself with namespaces: root only.
    $skip = -not (Test-MelangeRunner -Name qemu) -or -not $virtiofsd -or (& id -u) -ne '0'
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    if (Test-MelangeRunner -Name qemu) { $script:img = Import-MelangeImage -Path (Get-TestRootfs) -Runner qemu }
    $script:savedVirtiofs = $env:QEMU_USE_VIRTIOFS
    $env:QEMU_USE_VIRTIOFS = '1'

    function New-Cache([string]$Name) {
        $dir = (New-Item -ItemType Directory -Force (Join-Path $TestDrive $Name)).FullName
        Set-Content -LiteralPath (Join-Path $dir 'seed') -Value "seeded $Name" -NoNewline
        $dir
    }
}

AfterAll {
    $env:QEMU_USE_VIRTIOFS = $script:savedVirtiofs
    if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
}

Describe 'A qemu pod with QEMU_USE_VIRTIOFS=1 and a cache directory' -Skip:$skip {
    It 'shares the cache read-write: what a step writes is on the host after Stop-MelangePod, and virtiofsd is gone' {
        $cache = New-Cache 'cache-one'
        $socketsBefore = @(Get-ChildItem ([IO.Path]::GetTempPath()) -Filter 'melange-virtiofsd-*.sock' | ForEach-Object FullName)
        $pod = $script:img | Start-MelangePod -Memory 1Gi -CacheDir $cache
        try {
            $pod.VirtiofsdPid | Should -BeGreaterThan 0
            Test-Path "/proc/$($pod.VirtiofsdPid)" | Should -BeTrue
            $pod | Invoke-MelangePod -Command sh, -c, 'grep " /var/cache/melange " /proc/mounts | cut -d" " -f3; cat /var/cache/melange/seed; echo; echo written > /var/cache/melange/from-step; mkdir -p /var/cache/melange/sub/dir' |
                Should -Be 'virtiofs', 'seeded cache-one'
        } finally {
            $virtiofsd = $pod.VirtiofsdPid
            $pod | Stop-MelangePod
        }
        Get-Content -LiteralPath (Join-Path $cache 'from-step') | Should -Be 'written'
        Test-Path (Join-Path $cache 'sub/dir') -PathType Container | Should -BeTrue
        Test-Path "/proc/$virtiofsd" | Should -BeFalse
        @(Get-ChildItem ([IO.Path]::GetTempPath()) -Filter 'melange-virtiofsd-*.sock' | Where-Object FullName -NotIn $socketsBefore).Count | Should -Be 0
    }

    It 'runs two pods with caches at once' {
        $a = New-Cache 'cache-a'
        $b = New-Cache 'cache-b'
        $pods = @(
            $script:img | Start-MelangePod -Memory 1Gi -CacheDir $a
            $script:img | Start-MelangePod -Memory 1Gi -CacheDir $b
        )
        try {
            $pods[0].VirtiofsdPid | Should -Not -Be $pods[1].VirtiofsdPid
            $pods[0] | Invoke-MelangePod -Command sh, -c, 'cat /var/cache/melange/seed; echo; echo a > /var/cache/melange/mine' | Should -Be 'seeded cache-a'
            $pods[1] | Invoke-MelangePod -Command sh, -c, 'cat /var/cache/melange/seed; echo; echo b > /var/cache/melange/mine' | Should -Be 'seeded cache-b'
        } finally {
            $virtiofsds = $pods.VirtiofsdPid
            $pods | Stop-MelangePod
        }
        Get-Content (Join-Path $a 'mine') | Should -Be 'a'
        Get-Content (Join-Path $b 'mine') | Should -Be 'b'
        foreach ($v in $virtiofsds) { Test-Path "/proc/$v" | Should -BeFalse }
    }

    It 'leaves no qemu, no virtiofsd and no socket when the PowerShell holding it is killed with SIGKILL' {
        $tmp = (New-Item -ItemType Directory -Force (Join-Path $TestDrive 'tmp-virtiofs-kill')).FullName
        $cache = New-Cache 'cache-kill'
        $child = Start-ChildPwsh -TempDirectory $tmp -Script @"
`$ErrorActionPreference = 'Stop'
`$env:QEMU_USE_VIRTIOFS = '1'
Import-Module '$script:ModuleManifest'
`$img = Import-MelangeImage -Path '$(Get-TestRootfs)' -Runner qemu
`$pod = `$img | Start-MelangePod -Memory 1Gi -CacheDir '$cache'
[Console]::Out.WriteLine("READY `$(`$pod.QemuPid) `$(`$pod.VirtiofsdPid)")
[Console]::Out.Flush()
Start-Sleep -Seconds 600
"@
        try {
            $fields = (Wait-ChildLine -Process $child -Pattern '^READY ') -split ' '
            $qemu = [int]$fields[1]; $virtiofsd = [int]$fields[2]
            $virtiofsd | Should -BeGreaterThan 0
            @(Get-ChildItem $tmp -Filter 'melange-virtiofsd-*.sock').Count | Should -Be 1
            $child.Kill()
            $child.WaitForExit()
            Wait-Until -Because 'qemu and virtiofsd to end' -Condition { -not (Test-Path "/proc/$qemu") -and -not (Test-Path "/proc/$virtiofsd") }
            Wait-Until -Because 'the socket to be removed' -Condition { -not (Get-ChildItem $tmp -Filter 'melange-virtiofsd-*.sock') }
        } finally {
            if (-not $child.HasExited) { $child.Kill() }
            $child.Dispose()
        }
    }
}
