BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')

    function Oct([string]$Digits) { [Convert]::ToInt32($Digits, 8) }

    # Writes a layer tar from entry descriptions: @{ Type; Name; Link; Data; Mode }.
    function New-LayerTar([string]$Path, [object[]]$Entries) {
        $stream = [IO.File]::Create($Path)
        $writer = [System.Formats.Tar.TarWriter]::new($stream, [System.Formats.Tar.TarEntryFormat]::Pax, $false)
        try {
            foreach ($e in $Entries) {
                $entry = [System.Formats.Tar.PaxTarEntry]::new([System.Formats.Tar.TarEntryType]$e.Type, $e.Name)
                $entry.Mode = [IO.UnixFileMode]($(if ($e.Mode) { $e.Mode } else { Oct '644' }))
                if ($e.Link) { $entry.LinkName = $e.Link }
                if ($e.Type -eq 'RegularFile') {
                    $entry.DataStream = [IO.MemoryStream]::new([Text.Encoding]::UTF8.GetBytes("$($e.Data)"))
                }
                if ($e.Type -eq 'CharacterDevice') { $entry.DeviceMajor = 1; $entry.DeviceMinor = 3 }
                $writer.WriteEntry($entry)
            }
        } finally {
            $writer.Dispose()
            $stream.Dispose()
        }
        Get-Item $Path
    }
}

Describe 'Import-MelangeImage' {
    It 'imports the busybox layer for bubblewrap, keeping links and modes' {
        $img = Import-MelangeImage -Path (Get-TestRootfs) -Runner bubblewrap
        try {
            $img | Should -BeOfType ([MelangeRunner.ImageInfo])
            $img.Runner | Should -Be 'bubblewrap'
            $img.Arch | Should -Not -BeNullOrEmpty
            $img.Source | Should -Be (Get-TestRootfs)
            (Get-Item (Join-Path $img.Ref 'bin/sh')).LinkTarget | Should -Be '/bin/busybox'
            (Get-Item (Join-Path $img.Ref 'tmp')).UnixFileMode.HasFlag([IO.UnixFileMode]::StickyBit) | Should -BeTrue
            (Get-Item (Join-Path $img.Ref 'bin/busybox')).UnixMode | Should -Be '-rwxr-xr-x'
        } finally {
            $img | Remove-MelangeImage -Confirm:$false
        }
        Test-Path $img.Ref | Should -BeFalse
    }

    It 'detects the compression by content, not by name' -ForEach @(
        @{ Tool = 'gzip' }, @{ Tool = 'zstd' }, @{ Tool = 'xz' }, @{ Tool = 'bzip2' }
    ) {
        if (-not (Get-Command $Tool -ErrorAction Ignore)) { Set-ItResult -Skipped -Because "$Tool is not installed" }
        $plain = New-LayerTar (Join-Path $TestDrive "layer-$Tool.tar") @(
            @{ Type = 'Directory'; Name = 'etc/'; Mode = (Oct '755') }
            @{ Type = 'RegularFile'; Name = 'etc/os-release'; Data = "ID=$Tool`n" }
        )
        $compressed = Join-Path $TestDrive "layer-$Tool.bin"
        sh -c "$Tool -c '$($plain.FullName)' > '$compressed'"
        $img = Import-MelangeImage -Path $compressed -Runner bubblewrap
        try {
            Get-Content (Join-Path $img.Ref 'etc/os-release') | Should -Be "ID=$Tool"
        } finally {
            $img | Remove-MelangeImage -Confirm:$false
        }
    }

    It 'takes paths from the pipeline by property name' {
        $imgs = Get-Item (Get-TestRootfs) | Import-MelangeImage -Runner bubblewrap
        try {
            @($imgs).Count | Should -Be 1
        } finally {
            $imgs | Remove-MelangeImage -Confirm:$false
        }
    }

    It 'reports progress while importing' {
        # Progress records cannot be redirected: read them from a PowerShell instance's streams.
        $ps = [powershell]::Create()
        try {
            $null = $ps.AddCommand('Import-Module').AddParameter('Name', $ModuleManifest).AddStatement()
            $null = $ps.AddCommand('Import-MelangeImage').AddParameter('Path', (Get-TestRootfs)).AddParameter('Runner', 'bubblewrap')
            $img = $ps.Invoke()
            $ps.HadErrors | Should -BeFalse
            $progress = @($ps.Streams.Progress)
            $progress.Count | Should -BeGreaterThan 0
            $progress[0].Activity | Should -Be 'Importing image'
            $progress[-1].RecordType | Should -Be 'Completed'
        } finally {
            $ps.Dispose()
            $img | Remove-MelangeImage -Confirm:$false
        }
    }

    It 'honours -WhatIf on Remove-MelangeImage' {
        $img = Import-MelangeImage -Path (Get-TestRootfs) -Runner bubblewrap
        $img | Remove-MelangeImage -WhatIf
        Test-Path $img.Ref | Should -BeTrue
        $img | Remove-MelangeImage -Confirm:$false
        Test-Path $img.Ref | Should -BeFalse
    }

    It 'writes one flattened rootfs tar for qemu' {
        $img = Import-MelangeImage -Path (Get-TestRootfs) -Runner qemu
        try {
            $img.Runner | Should -Be 'qemu'
            $img.Ref | Should -BeLike '*.tar'
            $listing = tar -tvf $img.Ref
            $LASTEXITCODE | Should -Be 0
            ($listing | Where-Object { $_ -match ' bin/sh -> /bin/busybox$' }) | Should -Not -BeNullOrEmpty
            ($listing | Where-Object { $_ -match '^drwxr-xr-x 1000/1000 .* home/build/?$' }) | Should -Not -BeNullOrEmpty
        } finally {
            $img | Remove-MelangeImage -Confirm:$false
        }
        Test-Path $img.Ref | Should -BeFalse
    }

    It 'says what is wrong with a missing path' {
        $missing = Join-Path $TestDrive 'nope.tar.gz'
        Import-MelangeImage -Path $missing -Runner bubblewrap -ErrorVariable errs -ErrorAction SilentlyContinue
        $errs.Count | Should -Be 1
        $errs[0].CategoryInfo.Category | Should -Be 'ObjectNotFound'
        $errs[0].TargetObject | Should -Be $missing
        $errs[0].ToString() | Should -Match 'nope.tar.gz'
    }

    It 'says what is wrong with a file that is no image' {
        $junk = Join-Path $TestDrive 'junk.bin'
        [IO.File]::WriteAllBytes($junk, [byte[]](1..200))
        Import-MelangeImage -Path $junk -Runner bubblewrap -ErrorVariable errs -ErrorAction SilentlyContinue
        $errs.Count | Should -Be 1
        $errs[0].CategoryInfo.Category | Should -Be 'InvalidData'
        $errs[0].ErrorDetails.RecommendedAction | Should -Not -BeNullOrEmpty
        @(Get-ChildItem ([IO.Path]::GetTempPath()) -Filter 'melange-guest-*' | Where-Object LastWriteTime -gt (Get-Date).AddSeconds(-30)).Count | Should -Be 0 -Because 'a failed import leaves no guest directory'
    }

    It 'refuses an unknown runner' {
        { Import-MelangeImage -Path (Get-TestRootfs) -Runner lxc } | Should -Throw -ErrorId 'ParameterArgumentValidationError,*'
    }
}

Describe 'A hostile layer' {
    BeforeAll {
        # Everything outside the guest directory that the layer aims at; each must stay absent.
        $script:tag = "mr-hostile-$(Get-Random)"
        $script:outside = Join-Path ([IO.Path]::GetTempPath()) $script:tag
        $null = New-Item -ItemType Directory -Force $script:outside
        Set-Content (Join-Path $script:outside 'target') 'host file'
    }
    AfterAll {
        Remove-Item -Recurse -Force $script:outside -ErrorAction Ignore
    }

    It 'cannot write outside through <Name>' -ForEach @(
        @{ Name = 'an absolute path'; Entries = { @(@{ Type = 'RegularFile'; Name = "$outside/abs"; Data = 'x' }) }; Evil = 'abs' }
        @{ Name = 'a ../ path'; Entries = { @(@{ Type = 'RegularFile'; Name = "../$tag/dotdot"; Data = 'x' }) }; Evil = 'dotdot' }
        @{ Name = 'a/../../ path'; Entries = { @(@{ Type = 'RegularFile'; Name = "a/../../$tag/nested"; Data = 'x' }) }; Evil = 'nested' }
        @{ Name = 'a symlink to /'; Entries = { @(
                    @{ Type = 'SymbolicLink'; Name = 'root'; Link = '/' }
                    @{ Type = 'RegularFile'; Name = "root$outside/viaroot"; Data = 'x' }) }; Evil = 'viaroot'; Warn = { "root$outside/viaroot" } }
        @{ Name = 'a relative symlink out'; Entries = { @(
                    @{ Type = 'SymbolicLink'; Name = 'up'; Link = "../$tag" }
                    @{ Type = 'RegularFile'; Name = 'up/viaup'; Data = 'x' }) }; Evil = 'viaup'; Warn = { 'up/viaup' } }
        @{ Name = 'a symlink replacing a directory'; Entries = { @(
                    @{ Type = 'Directory'; Name = 'd/'; Mode = (Oct '755') }
                    @{ Type = 'SymbolicLink'; Name = 'd'; Link = $outside }
                    @{ Type = 'RegularFile'; Name = 'd/viad'; Data = 'x' }) }; Evil = 'viad'; Warn = { 'd/viad' } }
        @{ Name = 'a symlink then a file over it'; Entries = { @(
                    @{ Type = 'SymbolicLink'; Name = 'over'; Link = "$outside/target" }
                    @{ Type = 'RegularFile'; Name = 'over'; Data = 'overwritten' }) }; Evil = $null }
    ) {
        $entries = & $Entries
        $layer = New-LayerTar (Join-Path $TestDrive "hostile-$(Get-Random).tar") $entries
        $img = Import-MelangeImage -Path $layer.FullName -Runner bubblewrap -WarningVariable warnings -WarningAction SilentlyContinue
        try {
            if ($Evil) {
                Test-Path (Join-Path $outside $Evil) | Should -BeFalse
                $warned = if ($Warn) { & $Warn } else { $entries[-1].Name }
                ($warnings -join "`n") | Should -BeLike "*$warned*"
            }
            Get-Content (Join-Path $outside 'target') | Should -Be 'host file'
            @(Get-ChildItem $outside).Name | Should -Be @('target')
        } finally {
            $img | Remove-MelangeImage -Confirm:$false
        }
        Test-Path (Join-Path $outside 'target') | Should -BeTrue -Because 'removing the image does not follow its symlinks out'
    }

    It 'cannot hard-link to <Name>' -ForEach @(
        @{ Name = 'an absolute host file'; Link = '/etc/passwd' }
        @{ Name = 'a file outside via ..'; Link = "../$tag/target" }
    ) {
        $Link = $Link.Replace('$tag', $tag)
        $layer = New-LayerTar (Join-Path $TestDrive "hardlink-$(Get-Random).tar") @(
            @{ Type = 'HardLink'; Name = 'hl'; Link = $Link }
        )
        $before = (Get-Item /etc/passwd).LastWriteTimeUtc
        $img = Import-MelangeImage -Path $layer.FullName -Runner bubblewrap -WarningVariable warnings -WarningAction SilentlyContinue
        try {
            Test-Path (Join-Path $img.Ref 'hl') | Should -BeFalse
            ($warnings -join "`n") | Should -BeLike '*hl*'
        } finally {
            $img | Remove-MelangeImage -Confirm:$false
        }
        (Get-Item /etc/passwd).LastWriteTimeUtc | Should -Be $before
        Get-Content (Join-Path $outside 'target') | Should -Be 'host file'
    }
}
