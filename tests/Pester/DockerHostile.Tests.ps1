# The hostile tar corpus through the docker path (issue 11): layers built to attack the host
# through Import-MelangeImage -Runner docker, and builds that write hostile workspaces for
# Export-MelangeWorkspace to read back through the engine's archive API. Skipped when no
# engine answers.
BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $noDocker = -not (Test-MelangeRunner -Name docker) -or -not (Get-Command docker -ErrorAction Ignore)
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')

    # An OCI layout of the busybox rootfs with one more (hostile) layer on top, so that a pod can
    # start from it and look at what the hostile layer did.
    function New-TwoLayerOci([string]$Dir, [string]$Upper) {
        $blobs = New-Item -ItemType Directory -Force (Join-Path $Dir 'blobs/sha256')
        $add = {
            param([byte[]]$Bytes)
            $hex = [Convert]::ToHexString([Security.Cryptography.SHA256]::HashData($Bytes)).ToLowerInvariant()
            [IO.File]::WriteAllBytes((Join-Path $blobs $hex), $Bytes)
            @{ digest = "sha256:$hex"; size = $Bytes.Length }
        }
        $l1 = & $add ([IO.File]::ReadAllBytes((Get-TestRootfs)))
        $l2 = & $add ([IO.File]::ReadAllBytes($Upper))
        $cfg = & $add (Bytes (@{ architecture = 'amd64'; os = 'linux'; rootfs = @{ type = 'layers'; diff_ids = @() }; config = @{} } | ConvertTo-Json -Compress -Depth 5))
        $man = & $add (Bytes (@{ schemaVersion = 2; mediaType = 'application/vnd.oci.image.manifest.v1+json'
                    config = @{ mediaType = 'application/vnd.oci.image.config.v1+json'; digest = $cfg.digest; size = $cfg.size }
                    layers = @(@{ mediaType = 'application/vnd.oci.image.layer.v1.tar+gzip'; digest = $l1.digest; size = $l1.size },
                        @{ mediaType = 'application/vnd.oci.image.layer.v1.tar'; digest = $l2.digest; size = $l2.size }) } | ConvertTo-Json -Compress -Depth 6))
        Set-Content -LiteralPath (Join-Path $Dir 'oci-layout') -Value '{"imageLayoutVersion":"1.0.0"}' -NoNewline
        @{ schemaVersion = 2; manifests = @(@{ mediaType = 'application/vnd.oci.image.manifest.v1+json'; digest = $man.digest; size = $man.size }) } |
            ConvertTo-Json -Depth 6 -Compress | Set-Content -LiteralPath (Join-Path $Dir 'index.json') -NoNewline
        $Dir
    }

    # Every path under $Root except those under $Except: to prove that nothing was written beside a destination.
    function Get-Tree([string]$Root, [string]$Except) {
        Get-ChildItem -LiteralPath $Root -Recurse -Force -ErrorAction Ignore | Where-Object { -not $_.FullName.StartsWith($Except) } | ForEach-Object FullName | Sort-Object
    }
}

Describe 'Import-MelangeImage -Runner docker with a hostile layer' -Skip:$noDocker {
    BeforeAll {
        $deep = (1..2000 | ForEach-Object { 'd' }) -join '/'
        $script:layer = New-RawTar (Join-Path $TestDrive 'hostile.tar') @(
            @{ Name = (Bytes '../../escape-dotdot'); Type = '0'; Data = (Bytes 'x') }
            @{ Name = (Bytes '/escape-absolute'); Type = '0'; Data = (Bytes 'x') }
            @{ Name = (Bytes 'evil-root'); Type = '2'; Link = (Bytes '/') }
            @{ Name = (Bytes 'evil-root/etc/escape-through-symlink'); Type = '0'; Data = (Bytes 'x') }
            @{ Name = (Bytes 'hl-host'); Type = '1'; Link = (Bytes '/etc/shadow') }
            @{ Name = (Bytes '.wh...'); Type = '0' }
            @{ Name = (Bytes 'etc/.wh.passwd'); Type = '0' }
            @{ Name = (Bytes 'placeholder'); Type = '0'; Pax = [ordered]@{ path = [byte[]](Bytes '..') + [byte[]](0) + (Bytes 'x') } }
            @{ Name = (Bytes 'deep'); Type = '5'; Pax = [ordered]@{ path = (Bytes $deep) } }
            @{ Name = [byte[]](Bytes 'bad-') + [byte[]](0xff, 0xfe); Type = '0'; Data = (Bytes 'x') }
            @{ Name = (Bytes 'etc/kept-by-the-layer'); Type = '0'; Data = (Bytes 'ok') }
        )
        $script:before = Get-Tree ([IO.Path]::GetTempPath()) '/nothing'
        $oci = New-TwoLayerOci (Join-Path $TestDrive 'oci') $script:layer
        $script:img = Import-MelangeImage -LiteralPath $oci -Runner docker -WarningVariable warned -WarningAction SilentlyContinue
        $script:warned = $warned
        $script:pod = Start-MelangePod -Image $script:img -Runner docker
    }
    AfterAll {
        if ($script:pod) { $script:pod | Stop-MelangePod }
        if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
    }

    It 'imports the image, warning about each entry it dropped' {
        $script:img.Ref | Should -Match '^melange-runner/image:'
        "$script:warned" | Should -Match '\.\.'
    }

    It 'keeps no entry that escapes the root, and writes nothing through a symlink' {
        $listing = $script:pod | Invoke-MelangePod -Command sh, -c, 'ls -a / /etc; [ -e /escape-dotdot ] && echo FOUND-dotdot; [ -e /etc/escape-through-symlink ] && echo FOUND-symlink; true'
        $listing | Should -Not -Contain 'FOUND-dotdot'
        $listing | Should -Not -Contain 'FOUND-symlink'
        $script:pod | Invoke-MelangePod 'cat /etc/kept-by-the-layer' | Should -Be 'ok'
        # The whiteout of etc/passwd in the upper layer is applied: the file is gone in the image.
        $script:pod | Invoke-MelangePod -Command sh, -c, '[ -e /etc/passwd ] && echo present || echo whited-out' | Should -Be 'whited-out'
    }

    It 'links nothing to a host file, and leaves nothing in the host''s temporary directory' {
        $script:pod | Invoke-MelangePod -Command sh, -c, '[ -e /hl-host ] && cat /hl-host | head -c 0; [ -s /hl-host ] && echo HAS-DATA || echo no-data' | Should -Not -Be 'HAS-DATA'
        $after = Get-Tree ([IO.Path]::GetTempPath()) '/nothing' | Where-Object { $_ -notmatch 'melange-workspace-' }
        @($after | Where-Object { $_ -match 'escape' -and $_ -notin $script:before -and -not $_.StartsWith($TestDrive) }).Count | Should -Be 0
        @(Get-ChildItem ([IO.Path]::GetTempPath()) -Filter 'melange-docker-import-*').Count | Should -Be 0
        Test-Path '/escape-absolute' | Should -BeFalse
    }
}

Describe 'Export-MelangeWorkspace from a docker pod whose build is hostile' -Skip:$noDocker {
    BeforeAll {
        $script:img = Import-MelangeImage -Path (Get-TestRootfs) -Runner docker
        $script:pod = Start-MelangePod -Image $script:img -Runner docker
    }
    AfterAll {
        if ($script:pod) { $script:pod | Stop-MelangePod }
        if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
    }

    It 'writes nothing outside the destination, whatever melange-out holds (<Name>)' -TestCases @(
        @{ Name = 'symlinks out, absolute and relative, and a file next to them'; Script = 'mkdir -p melange-out/d && ln -s /etc melange-out/abs && ln -s ../../../../../../../../tmp melange-out/up && echo ok > melange-out/d/f' }
        @{ Name = 'a hard link to a file outside melange-out'; Script = 'mkdir -p melange-out && ln /etc/passwd melange-out/hl && echo ok > melange-out/f' }
        @{ Name = 'a fifo and a character device'; Script = 'mkdir -p melange-out && mkfifo melange-out/fifo && mknod melange-out/null c 1 3 && echo ok > melange-out/f' }
        @{ Name = 'names with a newline, invalid UTF-8 and a leading dash'; Script = 'mkdir -p melange-out && printf x > "melange-out/new
line" && printf x > "melange-out/$(printf "\377\376")" && printf x > melange-out/-rf && echo ok > melange-out/f' }
        @{ Name = 'melange-out itself a symlink to /'; Script = 'rm -rf melange-out && ln -s / melange-out'; Link = '/' }
        @{ Name = 'a tree 300 levels deep'; Script = 'mkdir -p melange-out && cd melange-out && i=0; while [ $i -lt 300 ]; do mkdir d && cd d; i=$((i+1)); done; echo deep > f' }
    ) {
        $script:pod | Invoke-MelangePod 'rm -rf melange-out' | Out-Null
        $script:pod | Invoke-MelangePod $Script | Out-Null
        $LASTEXITCODE | Should -Be 0
        $base = (New-Item -ItemType Directory (Join-Path $TestDrive ([Guid]::NewGuid().ToString('N')))).FullName
        Set-Content (Join-Path $base 'victim') 'original'
        $dest = Join-Path $base 'dest'
        $before = Get-Tree $base $dest
        $null = $script:pod | Export-MelangeWorkspace -Destination $dest -WarningAction SilentlyContinue -ErrorAction SilentlyContinue
        Get-Tree $base $dest | Should -Be $before
        Get-Content (Join-Path $base 'victim') | Should -Be 'original'
        Get-ChildItem -LiteralPath $dest -Recurse -Force -ErrorAction Ignore | ForEach-Object {
            $_.FullName | Should -BeLike "$dest/*"
            if ($_.LinkTarget) { $_.Attributes.HasFlag([IO.FileAttributes]::ReparsePoint) | Should -BeTrue }
        }
        if ($Link) { (Get-Item -LiteralPath (Join-Path $dest 'melange-out')).LinkTarget | Should -Be $Link -Because 'a link is exported as a link, not followed' }
        if (Test-Path -LiteralPath (Join-Path $dest 'melange-out/f')) { Get-Content (Join-Path $dest 'melange-out/f') | Should -Be 'ok' }
        # .NET's recursive enumeration (Pester's TestDrive clean-up) would follow a link to / into /proc.
        Get-ChildItem -LiteralPath $dest -Recurse -Force -Attributes ReparsePoint -ErrorAction Ignore | ForEach-Object { [IO.File]::Delete($_.FullName) }
    }

    It 'refuses an extra file that leaves the workspace' {
        $null = $script:pod | Export-MelangeWorkspace -Destination (Join-Path $TestDrive 'x') -ExtraFile '../../etc/shadow' -ErrorVariable err -ErrorAction SilentlyContinue
        $err | Should -Not -BeNullOrEmpty
        Test-Path (Join-Path $TestDrive 'etc') | Should -BeFalse
    }
}
