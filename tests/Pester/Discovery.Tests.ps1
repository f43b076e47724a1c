# Discovery (issue 9, item 2): Get-MelangePod lists the session's pods, Get-MelangeImage the
# imported images on disk, including those an earlier session (another process) left behind,
# and both feed the existing cmdlets. Imports here go to a private TMPDIR so that listing and
# removing "every image" never touches images of other test runs on the machine.

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $script:Rootfs = Get-TestRootfs
    $script:OldTmp = $env:TMPDIR
    $script:Tmp = (New-Item -ItemType Directory -Force (Join-Path ([IO.Path]::GetTempPath()) "melange-discovery-$PID")).FullName
    $env:TMPDIR = $script:Tmp


    # A directory that looks like an image directory but must not be listed.
    function New-FakeImageDir([string]$Name, [string]$Mode = '700', [switch]$WithMetadata) {
        $dir = New-Item -ItemType Directory -Force (Join-Path $script:Tmp $Name)
        $null = New-Item -ItemType Directory -Force (Join-Path $dir 'rootfs')
        if ($WithMetadata) {
            @{ Version = 1; Runner = 'bubblewrap'; Arch = 'x86_64'; Source = '/fake'; SourceKind = 'layer-tar'; Env = @(); ImportedAt = '2026-01-01T00:00:00Z' } |
                ConvertTo-Json | Set-Content -LiteralPath (Join-Path $dir 'image.json')
        }
        chmod $Mode $dir.FullName
        $dir.FullName
    }
}

AfterAll {
    Get-MelangePod | Stop-MelangePod
    $env:TMPDIR = $script:OldTmp
    Remove-Item -Recurse -Force $script:Tmp -ErrorAction Ignore
}

Describe 'Get-MelangePod' {
    BeforeAll {
        $script:img = Import-MelangeImage -LiteralPath $script:Rootfs -Runner bubblewrap
    }
    AfterAll {
        Get-MelangePod | Stop-MelangePod
        $script:img | Remove-MelangeImage -Confirm:$false
    }

    It 'finds a pod whose object was discarded, as the same live object' {
        $script:img | Start-MelangePod | Out-Null
        $pods = @(Get-MelangePod)
        $pods.Count | Should -Be 1
        $pods[0] | Should -BeOfType ([MelangeRunner.Pod])
        $pods[0].State | Should -Be 'Running'
        # The live object: a command run through it reaches the pod.
        $pods[0] | Invoke-MelangePod -Command echo, found | Should -Be 'found'
        $pods[0] | Stop-MelangePod
        @(Get-MelangePod).Count | Should -Be 0
    }

    It 'filters by id (exact and wildcard), runner and state, in start order' {
        $a = $script:img | Start-MelangePod
        $b = $script:img | Start-MelangePod
        try {
            (Get-MelangePod).Id | Should -Be @($a.Id, $b.Id)
            [object]::ReferenceEquals((Get-MelangePod -Id $b.Id), $b) | Should -BeTrue
            (Get-MelangePod $a.Id.ToUpperInvariant()).Id | Should -Be $a.Id
            @(Get-MelangePod -Id 'melange-*').Count | Should -Be 2
            @(Get-MelangePod -Id ($a.Id.Substring(0, 12) + '*')).Id | Should -Contain $a.Id
            @(Get-MelangePod -Runner qemu).Count | Should -Be 0
            @(Get-MelangePod -Runner bubblewrap -State Running).Count | Should -Be 2
            @(Get-MelangePod -State Stopped).Count | Should -Be 0
            @(Get-MelangePod -Id 'nomatch*').Count | Should -Be 0
        } finally {
            $a, $b | Stop-MelangePod
        }
    }

    It 'reports an unknown id as PodNotFound, and a pattern that matches nothing as nothing' {
        $out = Get-MelangePod -Id melange-000000000000 -ErrorVariable err -ErrorAction SilentlyContinue
        $out | Should -BeNullOrEmpty
        $err.Count | Should -Be 1
        $err[0].FullyQualifiedErrorId | Should -Be 'PodNotFound,MelangeRunner.PowerShell.GetMelangePodCommand'
        $err[0].CategoryInfo.Category | Should -Be 'ObjectNotFound'
        $err[0].TargetObject | Should -Be 'melange-000000000000'
    }

    It 'feeds the pod cmdlets by pipeline' {
        $pod = $script:img | Start-MelangePod
        (Get-MelangePod -Id $pod.Id | Get-MelangeReleaseData).ID | Should -Not -BeNullOrEmpty
        $dest = Join-Path $TestDrive 'out'
        New-Item -ItemType Directory -Force (Join-Path $pod.WorkspaceDir 'melange-out') | Out-Null
        Set-Content (Join-Path $pod.WorkspaceDir 'melange-out/hello') 'hi'
        Get-MelangePod -Id $pod.Id | Export-MelangeWorkspace -Destination $dest | Out-Null
        Get-Content (Join-Path $dest 'melange-out/hello') | Should -Be 'hi'
        Get-MelangePod | Stop-MelangePod
        $pod.State | Should -Be 'Stopped'
        @(Get-MelangePod).Count | Should -Be 0
    }

    It 'does not list the pods of another runspace' {
        $ps = [powershell]::Create()
        try {
            $otherId = $ps.AddScript({
                    param($manifest, $img)
                    Import-Module $manifest
                    $img | Start-MelangePod | Out-Null
                    (Get-MelangePod).Id
                }).AddArgument($script:ModuleManifest).AddArgument($script:img).Invoke()
            $otherId | Should -Not -BeNullOrEmpty
            @(Get-MelangePod).Id | Should -Not -Contain $otherId[0]
        } finally {
            # Closing that runspace stops its pod.
            $ps.Runspace.Dispose()
            $ps.Dispose()
        }
    }
}

Describe 'Get-MelangeImage' {
    It 'lists an image imported in this session with the fields Import-MelangeImage returned' {
        $img = Import-MelangeImage -LiteralPath $script:Rootfs -Runner bubblewrap
        try {
            $listed = @(Get-MelangeImage -Ref $img.Ref)
            $listed.Count | Should -Be 1
            $listed[0] | Should -BeOfType ([MelangeRunner.ImageInfo])
            foreach ($p in 'Runner', 'Ref', 'Arch', 'Source', 'SourceKind') { $listed[0].$p | Should -Be $img.$p -Because $p }
            $meta = Join-Path (Split-Path $img.Ref) 'image.json'
            (Get-Item $meta).UnixMode | Should -Be '-rw-------'
        } finally {
            $img | Remove-MelangeImage -Confirm:$false
        }
        @(Get-MelangeImage -Ref $img.Ref).Count | Should -Be 0
    }

    It 'lists images an earlier session left behind (both runners, with Env), and Get-MelangeImage | Remove-MelangeImage removes them' {
        $oci = New-OciLayout (Join-Path $TestDrive 'oci') @('FROM_IMAGE=yes', 'PATH=/usr/bin:/bin') -Layer $script:Rootfs
        $script_ = @"
Import-Module '$($script:ModuleManifest)'
`$ErrorActionPreference = 'Stop'
(Import-MelangeImage -LiteralPath '$oci' -Runner bubblewrap).Ref
(Import-MelangeImage -LiteralPath '$($script:Rootfs)' -Runner qemu).Ref
'done'
"@
        $child = Start-ChildPwsh -Script $script_ -TempDirectory $script:Tmp
        try {
            $bwRef = Wait-ChildLine $child '^/'
            $qemuRef = Wait-ChildLine $child '^/'
            $null = Wait-ChildLine $child '^done$'
            $child.WaitForExit(60000) | Should -BeTrue
        } finally {
            if (-not $child.HasExited) { $child.Kill($true) }
        }

        $images = @(Get-MelangeImage)
        $bw = $images | Where-Object Ref -EQ $bwRef
        $bw.Runner | Should -Be 'bubblewrap'
        $bw.Arch | Should -Be 'x86_64'
        $bw.Source | Should -Be $oci
        $bw.SourceKind | Should -Be 'oci-layout'
        $bw.Env | Should -Be @('FROM_IMAGE=yes', 'PATH=/usr/bin:/bin')
        $q = $images | Where-Object Ref -EQ $qemuRef
        $q.Runner | Should -Be 'qemu'
        $q.Source | Should -Be $script:Rootfs
        @(Get-MelangeImage -Runner qemu).Ref | Should -Be @($qemuRef)
        @(Get-MelangeImage -Source '*oci').Ref | Should -Be @($bwRef)

        # A listed image starts pods like an imported one.
        $pod = Start-MelangePod $bw
        try {
            $pod | Invoke-MelangePod -Command sh, -c, 'echo $FROM_IMAGE' | Should -Be 'yes'
        } finally {
            $pod | Stop-MelangePod
        }

        Get-MelangeImage | Remove-MelangeImage -Confirm:$false
        Test-Path -LiteralPath (Split-Path $bwRef) | Should -BeFalse
        Test-Path -LiteralPath (Split-Path $qemuRef) | Should -BeFalse
        @(Get-MelangeImage).Count | Should -Be 0
    }

    It 'refuses to remove a listed image that a running pod uses (ImageInUse), and removes it once the pod stopped' {
        $img = Import-MelangeImage -LiteralPath $script:Rootfs -Runner bubblewrap
        $pod = Start-MelangePod $img
        try {
            Get-MelangeImage | Remove-MelangeImage -Confirm:$false -ErrorVariable err -ErrorAction SilentlyContinue
            $err.Count | Should -Be 1
            $err[0].FullyQualifiedErrorId | Should -BeLike 'ImageInUse,*'
            Test-Path -LiteralPath $img.Ref | Should -BeTrue
        } finally {
            $pod | Stop-MelangePod
        }
        Get-MelangeImage | Remove-MelangeImage -Confirm:$false
        Test-Path -LiteralPath (Split-Path $img.Ref) | Should -BeFalse
    }

    It 'skips, with a verbose reason, directories without metadata, not private, not a directory, or not owned by the current user' {
        $noMeta = New-FakeImageDir 'melange-guest-nometa1'
        $open = New-FakeImageDir 'melange-guest-open001' -Mode '755' -WithMetadata
        $valid = New-FakeImageDir 'melange-guest-valid01' -WithMetadata
        $link = Join-Path $script:Tmp 'melange-guest-link001'
        $null = New-Item -ItemType SymbolicLink -Path $link -Target $valid
        $foreign = New-FakeImageDir 'melange-guest-other01' -WithMetadata
        $isRoot = (id -u) -eq '0'
        if ($isRoot) { chown -R 1000:1000 $foreign }
        try {
            $listed = @(Get-MelangeImage -Verbose 4>&1)
            $verbose = @($listed | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] } | ForEach-Object Message)
            $images = @($listed | Where-Object { $_ -is [MelangeRunner.ImageInfo] })
            $images.Ref | Should -Be @((Join-Path $valid 'rootfs'))
            $verbose | Should -Contain "Skipped ${noMeta}: no image.json (an import in progress, or one made before images were recorded)"
            $verbose | Should -Contain "Skipped ${open}: other users can enter it (it is not 0700)"
            $verbose | Should -Contain "Skipped ${link}: not a directory"
            if ($isRoot) { $verbose | Should -Contain "Skipped ${foreign}: owned by uid 1000, not by you" }
        } finally {
            Remove-Item -Force $link
            Remove-Item -Recurse -Force $noMeta, $open, $valid, $foreign
        }
    }
}
