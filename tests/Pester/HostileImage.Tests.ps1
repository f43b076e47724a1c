# Hostile images (issue 7): layers built here to attack the host through Import-MelangeImage,
# and a hard fault during Export-MelangeWorkspace. Each test fails on the code before the fix.
BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')

    $script:IsRoot = (id -u) -eq '0'

    # A private TMPDIR with a sibling that must survive, so that what the import does next to its
    # own directory can be seen (and cannot touch the real /tmp).
    function New-PrivateTemp {
        $dir = Join-Path $TestDrive ("tmp-" + [Guid]::NewGuid().ToString('N').Substring(0, 8))
        $null = New-Item -ItemType Directory -Path (Join-Path $dir 'sibling')
        Set-Content -LiteralPath (Join-Path $dir 'sibling/victim') -Value 'original'
        chmod 0755 $dir
        $dir
    }

    function Get-Meta([string]$Path) { stat -c '%a %u:%g' $Path } # mode and owner (the import's own directory changes the mtime)

    function Get-Xattr([string]$Path, [string]$Name) { [MelangeRunner.Native.Libc]::LGetXattr($Path, $Name) }

    $script:savedTmp = $env:TMPDIR
}

AfterAll {
    $env:TMPDIR = $script:savedTmp
}

Describe 'Import-MelangeImage with a hostile layer' {
    AfterEach {
        $env:TMPDIR = $script:savedTmp
        if ($img) { $img | Remove-MelangeImage -Confirm:$false; $img = $null }
    }

    It 'a whiteout named ".." deletes nothing next to the image (".wh...")' {
        if (-not $script:IsRoot) { Set-ItResult -Skipped -Because 'the report was made importing as root' }
        $tmp = New-PrivateTemp
        $layer = New-RawTar (Join-Path $TestDrive 'wh-dotdot.tar') @(
            @{ Name = (Bytes '.wh...'); Type = '0' }
        )
        $before = Get-Meta $tmp
        $env:TMPDIR = $tmp
        $img = Import-MelangeImage -Path $layer -Runner bubblewrap -WarningVariable warned -WarningAction SilentlyContinue
        $env:TMPDIR = $script:savedTmp
        Get-Content -LiteralPath (Join-Path $tmp 'sibling/victim') | Should -Be 'original'
        Get-Meta $tmp | Should -Be $before
        "$warned" | Should -Match "'\.wh\.\.\.'.*'\.\.' component"
    }

    It 'a NUL in a PAX path does not reach the directory above the image ("..\0x")' {
        if (-not $script:IsRoot) { Set-ItResult -Skipped -Because 'chown needs root' }
        $tmp = New-PrivateTemp
        $layer = New-RawTar (Join-Path $TestDrive 'nul-path.tar') @(
            @{ Name = (Bytes 'placeholder'); Type = '5'; Mode = (Oct '777')
                Pax = [ordered]@{ path = [byte[]](Bytes '..') + [byte[]](0) + (Bytes 'x'); uid = (Bytes '4321'); gid = (Bytes '4321'); 'SCHILY.xattr.user.evil' = (Bytes 'yes') } }
        )
        $before = Get-Meta $tmp
        $env:TMPDIR = $tmp
        $img = Import-MelangeImage -Path $layer -Runner bubblewrap -WarningVariable warned -WarningAction SilentlyContinue
        $env:TMPDIR = $script:savedTmp
        Get-Meta $tmp | Should -Be $before
        Get-Xattr $tmp 'user.evil' | Should -BeNullOrEmpty
        "$warned" | Should -Match 'NUL byte'
    }

    It 'a "./" entry leaves the image root as the importer made it (0755, not the tar''s mode, owner, xattrs or time)' {
        $layer = New-RawTar (Join-Path $TestDrive 'root-entry.tar') @(
            @{ Name = (Bytes './'); Type = '5'; Mode = (Oct '777'); Pax = [ordered]@{ uid = (Bytes '4321'); 'SCHILY.xattr.user.evil' = (Bytes 'yes') } }
            @{ Name = (Bytes './etc/'); Type = '5'; Mode = (Oct '755') }
            @{ Name = (Bytes './etc/os-release'); Type = '0'; Data = (Bytes "ID=root-test`n") }
        )
        $img = Import-MelangeImage -Path $layer -Runner bubblewrap
        Get-Content (Join-Path $img.Ref 'etc/os-release') | Should -Be 'ID=root-test'
        $uid = id -u
        stat -c '%a %u' $img.Ref | Should -Be "755 $uid"
        stat -c '%Y' $img.Ref | Should -Not -Be '1610612736' # the headers' mtime (octal 14000000000)
        Get-Xattr $img.Ref 'user.evil' | Should -BeNullOrEmpty
    }

    It 'a path of 100,000 levels is skipped with a warning instead of ending PowerShell' {
        $tmp = New-PrivateTemp
        $deep = ('a/' * 100000) + 'f'
        $layer = New-RawTar (Join-Path $TestDrive 'deep.tar') @(
            @{ Name = (Bytes 'placeholder'); Type = '0'; Data = (Bytes 'deep'); Pax = @{ path = (Bytes $deep) } }
            @{ Name = (Bytes 'ok'); Type = '0'; Data = (Bytes 'ok') }
        )
        # In a child process: before the fix the stack overflow ended the whole process.
        $script = "Import-Module '$ModuleManifest'; `$env:TMPDIR = '$tmp'; `$i = Import-MelangeImage -Path '$($layer.FullName)' -Runner bubblewrap -WarningVariable w -WarningAction SilentlyContinue; 'ok=' + (Get-Content (Join-Path `$i.Ref ok)); 'deep=' + (Test-Path (Join-Path `$i.Ref a)); 'warning=' + `$w; `$i | Remove-MelangeImage -Confirm:`$false"
        $output = & (Join-Path $PSHOME 'pwsh') -NoProfile -NonInteractive -Command $script 2>&1
        $LASTEXITCODE | Should -Be 0 -Because "$output"
        $output | Should -Contain 'ok=ok'
        $output | Should -Contain 'deep=False'
        "$output" | Should -Match 'longer than 4095 bytes'
        @(Get-ChildItem -LiteralPath $tmp -Force).Name | Should -Be @('sibling') # nothing left behind
    }

    It 'two names that differ only in invalid UTF-8 bytes are refused, not merged into one file' {
        $layer = New-RawTar (Join-Path $TestDrive 'latin1.tar') @(
            @{ Name = [byte[]](Bytes 'n') + [byte[]](0xFF); Type = '0'; Data = (Bytes 'first') }
            @{ Name = [byte[]](Bytes 'n') + [byte[]](0xFE); Type = '0'; Data = (Bytes 'second') }
            @{ Name = (Bytes "real-$([char]0xFFFD)"); Type = '0'; Data = (Bytes 'a real U+FFFD') }
        )
        $img = Import-MelangeImage -Path $layer -Runner bubblewrap -WarningVariable warned -WarningAction SilentlyContinue
        @(Get-ChildItem -LiteralPath $img.Ref -Force).Name | Should -Be @("real-$([char]0xFFFD)")
        @($warned | Where-Object { "$_" -match 'not valid UTF-8' }).Count | Should -Be 2
    }

    It 'a NUL in a symlink target is refused (the C call would cut it)' {
        $layer = New-RawTar (Join-Path $TestDrive 'nul-link.tar') @(
            @{ Name = (Bytes 's'); Type = '2'; Pax = @{ linkpath = [byte[]](Bytes '/etc/passwd') + [byte[]](0) + (Bytes 'x') } }
            @{ Name = (Bytes 'h'); Type = '1'; Pax = @{ linkpath = [byte[]](Bytes 'ok') + [byte[]](0) + (Bytes 'x') } }
            @{ Name = (Bytes 'ok'); Type = '0'; Data = (Bytes 'ok') }
        )
        $img = Import-MelangeImage -Path $layer -Runner bubblewrap -WarningVariable warned -WarningAction SilentlyContinue
        Test-Path -LiteralPath (Join-Path $img.Ref 's') | Should -BeFalse
        (Get-Item -LiteralPath (Join-Path $img.Ref 's') -Force -ErrorAction Ignore) | Should -BeNullOrEmpty
        Test-Path -LiteralPath (Join-Path $img.Ref 'h') | Should -BeFalse
        "$warned" | Should -Match "'s'.*symlink target contains a NUL byte"
        "$warned" | Should -Match "'h'.*hard link"
    }
}

Describe 'Import-MelangeImage bounds what a layer may expand to' {
    AfterEach {
        $env:TMPDIR = $script:savedTmp
        if ($img) { $img | Remove-MelangeImage -Confirm:$false; $img = $null }
    }

    It 'stops a small zstd layer that expands past -MaximumSize with ImageTooLarge, leaving nothing' -ForEach @(
        @{ Size = '16Mi' }, @{ Size = 16MB }
    ) {
        if (-not (Get-Command zstd -ErrorAction Ignore)) { Set-ItResult -Skipped -Because 'zstd is not installed' }
        $tmp = New-PrivateTemp
        $bomb = Join-Path $TestDrive 'bomb.tar.zst'
        if (-not (Test-Path $bomb)) {
            # 256 MiB of zeros in one file: a few KiB compressed.
            sh -c "mkdir -p '$TestDrive/bomb' && truncate -s 256M '$TestDrive/bomb/zeros' && tar -C '$TestDrive/bomb' -cf - zeros | zstd -q -19 -o '$bomb'"
        }
        (Get-Item $bomb).Length | Should -BeLessThan 100KB
        $env:TMPDIR = $tmp
        $err = $null
        $img = Import-MelangeImage -Path $bomb -Runner bubblewrap -MaximumSize $Size -ErrorVariable err -ErrorAction SilentlyContinue
        $env:TMPDIR = $script:savedTmp
        $img | Should -BeNullOrEmpty
        $err[0].FullyQualifiedErrorId | Should -BeLike 'ImageTooLarge,*'
        $err[0].CategoryInfo.Category | Should -Be 'InvalidData'
        $err[0].Exception.Message | Should -Match '16 MiB'
        @(Get-ChildItem -LiteralPath $tmp -Force).Name | Should -Be @('sibling')
    }

    It 'refuses a -MaximumSize that is not a size' {
        { Import-MelangeImage -Path (Get-TestRootfs) -Runner bubblewrap -MaximumSize 'lots' } |
            Should -Throw -ErrorId 'InvalidSize,MelangeRunner.PowerShell.ImportMelangeImageCommand'
    }

    It 'imports the busybox rootfs within an explicit bound' {
        $img = Import-MelangeImage -Path (Get-TestRootfs) -Runner bubblewrap -MaximumSize 1Gi
        Test-Path (Join-Path $img.Ref 'bin/busybox') | Should -BeTrue
    }

    It 'keeps a file with holes sparse' {
        $src = Join-Path $TestDrive 'holes'
        $null = New-Item -ItemType Directory -Force $src
        # 64 MiB, of which 8 KiB are data in the middle: GNU tar stores the zeros (no -S).
        sh -c "truncate -s 64M '$src/disk.img' && printf 'middle' | dd of='$src/disk.img' bs=1 seek=33554432 conv=notrunc status=none"
        $layer = Join-Path $TestDrive 'holes.tar'
        tar -C $src -cf $layer disk.img
        $img = Import-MelangeImage -Path $layer -Runner bubblewrap
        $file = Join-Path $img.Ref 'disk.img'
        (Get-Item $file).Length | Should -Be 64MB
        [int](stat -c '%b' $file) * 512 | Should -BeLessThan 1MB # allocated bytes
        $fs = [IO.File]::OpenRead($file)
        try {
            $fs.Position = 33554432
            $buf = [byte[]]::new(6); $null = $fs.Read($buf, 0, 6)
            [Text.Encoding]::ASCII.GetString($buf) | Should -Be 'middle'
        } finally { $fs.Dispose() }
    }

    It 'refuses GNU sparse entries (tar -S) with SparseTarEntry instead of a wrong file' -ForEach @(
        @{ Format = 'gnu' }, @{ Format = 'posix' }
    ) {
        $src = Join-Path $TestDrive "sparse-$Format"
        $null = New-Item -ItemType Directory -Force $src
        sh -c "truncate -s 8M '$src/sparse' && printf 'x' | dd of='$src/sparse' bs=1 seek=4194304 conv=notrunc status=none"
        $layer = Join-Path $TestDrive "sparse-$Format.tar"
        tar -S "--format=$Format" -C $src -cf $layer sparse
        $tmp = New-PrivateTemp
        $env:TMPDIR = $tmp
        $err = $null
        $img = Import-MelangeImage -Path $layer -Runner bubblewrap -ErrorVariable err -ErrorAction SilentlyContinue
        $env:TMPDIR = $script:savedTmp
        $img | Should -BeNullOrEmpty
        $err[0].FullyQualifiedErrorId | Should -BeLike 'SparseTarEntry,*'
        $err[0].Exception.Message | Should -Match "'sparse'"
        @(Get-ChildItem -LiteralPath $tmp -Force).Name | Should -Be @('sibling')
    }
}

Describe 'Export-MelangeWorkspace after a hard fault' -Skip:(-not (Get-Command bwrap -ErrorAction Ignore)) {
    BeforeAll {
        $script:img = Import-MelangeImage -Path (Get-TestRootfs) -Runner bubblewrap
    }
    AfterAll {
        if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
    }

    It 'leaves no file that looks complete when the destination fills up mid-file' {
        if (-not $script:IsRoot) { Set-ItResult -Skipped -Because 'mounting a small tmpfs needs root' }
        $ws = Join-Path $TestDrive 'ws-full'
        $pod = $script:img | Start-MelangePod -WorkspaceDir $ws
        $dest = Join-Path $TestDrive 'small-fs'
        $null = New-Item -ItemType Directory -Force $dest
        mount -t tmpfs -o size=4m tmpfs $dest
        try {
            # 1.5 MiB stay free; b-big (1.75 MiB of random data: zeros would be holes) fills them in
            # its last 1 MiB read, so that the export fails with nothing of the tar left unread
            # (a writer blocked on the rest would be another bug: the export's pipe).
            sh -c "head -c 2621440 /dev/zero > '$dest/filler'"
            $pod | Invoke-MelangePod -Command sh, -c, 'mkdir -p melange-out && head -c 4096 /dev/urandom > melange-out/a-small && head -c 1835008 /dev/urandom > melange-out/b-big'
            $err = $null
            $pod | Export-MelangeWorkspace -Destination $dest -ErrorVariable err -ErrorAction SilentlyContinue
            $err | Should -Not -BeNullOrEmpty
            "$err" | Should -Match 'No space left'
            (Get-FileHash (Join-Path $dest 'melange-out/a-small')).Hash | Should -Be (Get-FileHash (Join-Path $ws 'melange-out/a-small')).Hash
            Test-Path (Join-Path $dest 'melange-out/b-big') | Should -BeFalse
            @(Get-ChildItem -LiteralPath (Join-Path $dest 'melange-out') -Force).Name | Should -Be @('a-small') # no partial file either
        } finally {
            umount $dest
            $pod | Stop-MelangePod
        }
    }
}
