# New-MelangeInitramfs and Get-MelangeMicrovmConfig: the qemu runner's base initramfs built
# from the host (busybox-static, openssh-server, e2fsprogs, tar), read back with GNU cpio.

BeforeAll { . (Join-Path $PSScriptRoot 'Common.ps1') }

Describe 'Get-MelangeMicrovmConfig' {
    It 'returns melange''s default config with the built-in init' {
        $c = Get-MelangeMicrovmConfig
        $c | Should -BeOfType ([MelangeRunner.MicrovmConfig])
        $c.Package | Should -Be 'melange-runner-init'
        $c.Repositories.Count | Should -Be 0
        $c.AdditionalPackages.Count | Should -Be 0
        $c.ExtraKeys.Count | Should -Be 0
    }

    It 'returns a new object each time' {
        $a = Get-MelangeMicrovmConfig
        $a.AdditionalPackages.Add('strace')
        (Get-MelangeMicrovmConfig).AdditionalPackages.Count | Should -Be 0
    }
}

Describe 'New-MelangeInitramfs' {
    BeforeAll {
        $script:Dir = Join-Path ([IO.Path]::GetTempPath()) "melange-initramfs-pester-$PID"
        $null = New-Item -ItemType Directory -Force $script:Dir
        $script:Missing = @(
            @{ Path = '/bin/busybox'; Package = 'busybox-static' }
            @{ Path = '/usr/sbin/sshd'; Package = 'openssh-server' }
            @{ Path = '/sbin/mke2fs'; Package = 'e2fsprogs' }
            @{ Path = '/usr/bin/cpio'; Package = 'cpio' }
        ) | Where-Object { -not (Test-Path $_.Path) }
    }
    AfterAll { Remove-Item -Recurse -Force $script:Dir -ErrorAction Ignore }

    It 'writes a cpio archive with the init, busybox, sshd, GNU tar and the loader' {
        if ($script:Missing) { Set-ItResult -Skipped -Because "not installed: $($script:Missing.Package -join ', ')"; return }
        $out = Join-Path $script:Dir 'initramfs.cpio'
        $progress = @()
        $file = New-MelangeInitramfs -OutputPath $out -Verbose 4>&1 | ForEach-Object {
            if ($_ -is [System.Management.Automation.VerboseRecord]) { $progress += $_ } else { $_ }
        }
        $file | Should -BeOfType ([System.IO.FileInfo])
        $file.FullName | Should -Be $out
        $file.Length | Should -BeGreaterThan 1MB
        ($progress.Message -join "`n") | Should -Match 'Wrote the initramfs'

        $names = @(& cpio -it --quiet -F $out)
        $LASTEXITCODE | Should -Be 0
        $names | Should -Contain 'init'
        $names[0] | Should -Be '.'
        # Paths as the guest sees them: merged /usr hosts have bin -> usr/bin, so follow links.
        $listing = & cpio -itv --quiet -F $out
        $links = @{}
        foreach ($l in $listing) { if ($l -match '^l\S+\s.*\s(\S+) -> (\S+)$') { $links[$Matches[1]] = $Matches[2] } }
        function Resolve-Guest([string]$Path) {
            $parts = [System.Collections.Generic.List[string]]($Path.Trim('/') -split '/')
            $cur = [System.Collections.Generic.List[string]]::new()
            for ($i = 0; $i -lt $parts.Count; $i++) {
                $next = (@($cur) + $parts[$i]) -join '/'
                if ($links.ContainsKey($next) -and $i -lt $parts.Count) {
                    $t = $links[$next]
                    if ($t.StartsWith('/')) { $cur.Clear() }
                    $rest = @($parts | Select-Object -Skip ($i + 1))
                    $parts = [System.Collections.Generic.List[string]](@($t.Trim('/') -split '/' | Where-Object { $_ }) + $rest)
                    $i = -1
                    continue
                }
                if ($parts[$i] -eq '..') { $cur.RemoveAt($cur.Count - 1) } elseif ($parts[$i] -ne '.') { $cur.Add($parts[$i]) }
            }
            $cur -join '/'
        }
        foreach ($p in '/bin/busybox', '/usr/sbin/sshd', '/bin/tar', '/sbin/mke2fs', '/bin/sh', '/etc/ssh/sshd_config') {
            $names | Should -Contain (Resolve-Guest $p) -Because "$p must be in the initramfs"
        }
        $loader = [MelangeRunner.Qemu.Initramfs.ElfReader]::Read('/usr/sbin/sshd').Interpreter
        $names | Should -Contain (Resolve-Guest $loader) -Because "the loader $loader must be in the initramfs"
        $listing | Where-Object { $_ -match ' dev/console$' } | Should -Match '^crw-------'
    }

    It 'gives an ErrorRecord when the output directory does not exist' {
        $out = Join-Path $script:Dir 'no/such/dir/initramfs.cpio'
        $result = New-MelangeInitramfs -OutputPath $out -ErrorVariable err -ErrorAction SilentlyContinue
        $result | Should -BeNullOrEmpty
        $err.Count | Should -Be 1
        $err[0].FullyQualifiedErrorId | Should -BeLike 'OutputDirectoryNotFound*'
        $err[0].CategoryInfo.Category | Should -Be 'ObjectNotFound'
        $err[0].TargetObject | Should -Be $out
        $err[0].ErrorDetails.RecommendedAction | Should -Not -BeNullOrEmpty
        Test-Path $out | Should -BeFalse
    }

    It 'gives an ErrorRecord for an unknown or foreign -Arch' -ForEach @(
        @{ Arch = 'pdp11'; Id = 'UnknownArchitecture' }
        @{ Arch = 's390x'; Id = 'UnsupportedArchitecture' }
        @{ Arch = $(if ([System.Runtime.InteropServices.RuntimeInformation]::OSArchitecture -eq 'X64') { 'aarch64' } else { 'x86_64' }); Id = 'ArchitectureMismatch' }
    ) {
        $out = Join-Path $script:Dir "arch-$Arch.cpio"
        $null = New-MelangeInitramfs -OutputPath $out -Arch $Arch -ErrorVariable err -ErrorAction SilentlyContinue
        $err.Count | Should -Be 1
        $err[0].FullyQualifiedErrorId | Should -BeLike "$Id*"
        $err[0].CategoryInfo.Category | Should -Be 'InvalidArgument'
        $err[0].Exception.Message | Should -Match ([regex]::Escape($Arch))
        Test-Path $out | Should -BeFalse
    }

    It 'warns that -Repository and -ExtraKey are not used, and stops on a bad -KernelModules' {
        $out = Join-Path $script:Dir 'km.cpio'
        $null = New-MelangeInitramfs -OutputPath $out -Repository https://packages.wolfi.dev/os -KernelModules (Join-Path $script:Dir 'nope') -ErrorVariable err -ErrorAction SilentlyContinue -WarningVariable warn -WarningAction SilentlyContinue
        $err[0].FullyQualifiedErrorId | Should -BeLike 'KernelModulesNotFound*'
        if ($script:Missing) { return }
        $null = New-MelangeInitramfs -OutputPath $out -Repository https://packages.wolfi.dev/os -ExtraKey k.pub -WarningVariable warn -WarningAction SilentlyContinue
        ($warn -join "`n") | Should -Match 'Repositories'
        ($warn -join "`n") | Should -Match 'ExtraKeys'
    }

    It 'gives an ErrorRecord naming an additional package that is not installed' {
        if ($script:Missing) { Set-ItResult -Skipped -Because "not installed: $($script:Missing.Package -join ', ')"; return }
        $null = New-MelangeInitramfs -OutputPath (Join-Path $script:Dir 'p.cpio') -AdditionalPackage 'no-such-package-xyz' -ErrorVariable err -ErrorAction SilentlyContinue
        $err[0].FullyQualifiedErrorId | Should -BeLike 'AdditionalPackageNotFound*'
        $err[0].Exception.Message | Should -Match 'no-such-package-xyz'
    }
}

Describe 'New-MelangeInitramfs from a config object' {
    It 'takes Get-MelangeMicrovmConfig from the pipeline, with parameters over it' {
        $config = Get-MelangeMicrovmConfig
        $config.AdditionalPackages.Add('cpio')
        $out = Join-Path $TestDrive 'from-config.cpio'
        $file = $config | New-MelangeInitramfs -OutputPath $out
        $file.FullName | Should -Be $out
        $listing = @(& cpio -it --quiet -F $out)
        $listing | Should -Contain 'usr/bin/cpio'
        $config.AdditionalPackages | Should -Be @('cpio') -Because 'the caller''s config object is not changed'
    }
}
