BeforeDiscovery {
    # Skipped only where bwrap is genuinely absent; CI installs it.
    $noBwrap = -not (Get-Command bwrap -ErrorAction Ignore)
    # A setuid-root file in a layer and a second host user need root to make.
    $notRoot = (& id -u) -ne '0' -or -not (Get-Command useradd -ErrorAction Ignore) -or -not (Get-Command runuser -ErrorAction Ignore)
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')

    # The demo rootfs unpacked into a fresh directory, changed by $Change (run there), packed
    # again as one layer tar with GNU tar (so with a './' entry carrying the directory's mode).
    function New-ChangedRootfs([string]$Name, [scriptblock]$Change) {
        $dir = Join-Path $TestDrive $Name
        $null = New-Item -ItemType Directory -Path $dir
        & tar -xzf (Get-TestRootfs) -C $dir
        if ($LASTEXITCODE) { throw "tar -x failed for $Name" }
        Push-Location $dir
        try { & $Change } finally { Pop-Location }
        $tar = Join-Path $TestDrive "$Name.tar"
        & tar --numeric-owner -C $dir -cf $tar .
        if ($LASTEXITCODE) { throw "tar -c failed for $Name" }
        $tar
    }

    # Runs a program as another host user, returning its output and exit status. runuser, not
    # setpriv: setpriv's exec here still traversed a 0700 root directory after --reuid.
    function Invoke-AsUser([string]$User, [string[]]$Argv) {
        $out = & runuser -u $User -- @Argv 2>&1
        [pscustomobject]@{ Output = @($out | ForEach-Object { "$_" }); Status = $LASTEXITCODE }
    }

    # Runs $Script with TMPDIR (which Path.GetTempPath reads on each call) pointing at $Dir.
    function Invoke-WithTemp([string]$Dir, [scriptblock]$Script) {
        $old = $env:TMPDIR
        $env:TMPDIR = $Dir
        try { & $Script } finally { $env:TMPDIR = $old }
    }

    function Write-Text([string]$Path, [string]$Text) {
        $Path = Join-Path (Get-Location).ProviderPath $Path # .NET's current directory is not PowerShell's
        $null = New-Item -ItemType Directory -Force -Path (Split-Path $Path)
        [IO.File]::WriteAllText($Path, $Text)
    }
}

Describe 'Imported images are out of reach of other host users' -Skip:($noBwrap -or $notRoot) {
    BeforeAll {
        # The layer: a setuid-root copy of id, and a './' entry of mode 0777.
        $script:layer = New-ChangedRootfs 'suid' {
            $null = New-Item -ItemType Directory -Force -Path usr/local/bin
            Copy-Item /usr/bin/id usr/local/bin/suid-id
            & chown 0:0 usr/local/bin/suid-id
            & chmod 4755 usr/local/bin/suid-id
            & chmod 0777 .
        }
        $script:user = "mr-iso-$PID"
        & useradd --no-create-home --no-user-group --shell /usr/sbin/nologin $script:user
        if ($LASTEXITCODE) { throw "useradd $script:user failed" }
        # Images are made in a temporary directory that every user may search (this host's /tmp
        # is 0700, which would hide any layout): only the image's own directory may stop them.
        $script:shared = "/var/tmp/melange-iso-$PID"
        $null = New-Item -ItemType Directory -Path $script:shared
        & chmod 0755 $script:shared
        $script:img = Invoke-WithTemp $script:shared { Import-MelangeImage -Path $script:layer -Runner bubblewrap }
        $script:suid = Join-Path $script:img.Ref 'usr/local/bin/suid-id'
        $script:private = Split-Path $script:img.Ref
    }
    AfterAll {
        if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false -ErrorAction Continue }
        & userdel $script:user 2>$null
        if ($script:shared) { Remove-Item -Recurse -Force -LiteralPath $script:shared -ErrorAction Continue }
    }

    It 'keeps a setuid-root program of the image from another user whatever the ./ entry says, while a non-root build user''s pod works' {
        # The inputs are what the attack needs: a 0777 './' entry and a setuid-root file.
        (& tar -tvf $script:layer | Select-Object -First 1) | Should -BeLike 'drwxrwxrwx 0/0 * ./'
        (Get-Item $script:suid).UnixMode | Should -Be '-rwsr-xr-x'
        (Get-Item $script:suid).User | Should -Be 'root'
        # The other user can search the temporary directory the image is made in, so only the image's own directory can stop them.
        $script:img.Ref | Should -BeLike "$script:shared/*"
        (Invoke-AsUser $script:user '/usr/bin/test', '-x', $script:shared).Status | Should -Be 0
        $run = Invoke-AsUser $script:user $script:suid, '-u'
        $run.Output -join "`n" | Should -Not -Match '^0$' -Because 'euid 0 on the host would be a privilege escalation'
        $run.Status | Should -Not -Be 0
        $run.Output -join "`n" | Should -Match 'Permission denied'
        (Get-Item $script:private).UnixMode | Should -Be 'drwx------'

        $pod = $script:img | Start-MelangePod -RunAs build
        try {
            $out = $pod | Invoke-MelangePod -Command sh, -c, 'id -u; ls /'
            $out[0] | Should -Be '1000'
            $out | Should -Contain 'bin'
            $out | Should -Contain 'etc'
        } finally {
            $pod | Stop-MelangePod
        }
    }

    It 'starts no pod from a rootfs that other users can reach' {
        & chmod 0755 $script:private
        try {
            { $script:img | Start-MelangePod -ErrorAction Stop } | Should -Throw -ErrorId 'ImageNotPrivate,*'
        } finally {
            & chmod 0700 $script:private
        }
    }

    It 'keeps the qemu runner''s flattened tar private too' {
        $tarImg = Invoke-WithTemp $script:shared { Import-MelangeImage -Path $script:layer -Runner qemu }
        try {
            (Get-Item $tarImg.Ref).UnixMode | Should -Be '-rw-------'
            (Get-Item (Split-Path $tarImg.Ref)).UnixMode | Should -Be 'drwx------'
            $read = Invoke-AsUser $script:user '/usr/bin/head', '-c', '1', $tarImg.Ref
            $read.Status | Should -Not -Be 0
            $read.Output -join "`n" | Should -Match 'Permission denied'
        } finally {
            $tarImg | Remove-MelangeImage -Confirm:$false
        }
        Test-Path (Split-Path $tarImg.Ref) | Should -BeFalse -Because 'Remove-MelangeImage deletes the private directory'
    }

    It 'deletes the whole private directory on Remove-MelangeImage' {
        $other = Invoke-WithTemp $script:shared { Import-MelangeImage -Path $script:layer -Runner bubblewrap }
        $dir = Split-Path $other.Ref
        (Get-Item $dir).Name | Should -BeLike 'melange-guest-*'
        $other | Remove-MelangeImage -Confirm:$false
        Test-Path $dir | Should -BeFalse
    }
}

Describe 'Image files are read inside the image root' -Skip:$noBwrap {
    # Each image also has its own /usr/lib/os-release, or a file where the link leads inside it.
    It 'reports the image''s os-release for <Name>, never the host''s' -ForEach @(
        @{ Name = 'an absolute /etc -> /etc'; Expected = 'image-usrlib'; Change = {
                Remove-Item -Recurse -Force etc; & ln -s /etc etc
                Write-Text usr/lib/os-release "ID=image-usrlib`nNAME=`"from usr/lib`"`n" } }
        @{ Name = 'a relative etc -> ../../../../../../etc'; Expected = 'image-usrlib'; Change = {
                Remove-Item -Recurse -Force etc; & ln -s ../../../../../../etc etc
                Write-Text usr/lib/os-release "ID=image-usrlib`n" } }
        @{ Name = 'etc/os-release -> ../../../../../../opt/image-release'; Expected = 'image-opt'; Change = {
                Remove-Item -Force etc/os-release; & ln -s ../../../../../../opt/image-release etc/os-release
                Write-Text opt/image-release "ID=image-opt`n" } }
        @{ Name = 'an absolute etc/os-release -> /srv/os-release'; Expected = 'image-srv'; Change = {
                Remove-Item -Force etc/os-release; & ln -s /srv/os-release etc/os-release
                Write-Text srv/os-release "ID=image-srv`n" } }
    ) {
        $tar = New-ChangedRootfs ('rel-' + ($Name -replace '[^a-z]', '')) $Change
        $img = Import-MelangeImage -Path $tar -Runner bubblewrap
        try {
            $pod = $img | Start-MelangePod
            try {
                $data = $pod | Get-MelangeReleaseData
                $data.ID | Should -Be $Expected
                # What the build itself sees agrees.
                ($pod | Invoke-MelangePod -Command sh, -c, 'if [ -r /etc/os-release ]; then . /etc/os-release; else . /usr/lib/os-release; fi; echo $ID') | Should -Be $Expected
            } finally { $pod | Stop-MelangePod }
        } finally { $img | Remove-MelangeImage -Confirm:$false }
    }

    It 'is NoOsRelease, not the host''s, for /etc -> /etc and for etc/os-release -> ../../../../etc/os-release' {
        Test-Path /etc/os-release | Should -BeTrue -Because 'the host has one to leak'
        $images = @(
            # No /usr/lib/os-release: inside the image /etc is a loop.
            New-ChangedRootfs 'none-hostetc' { Remove-Item -Recurse -Force etc; & ln -s /etc etc }
            # Inside the image the link leads to itself.
            New-ChangedRootfs 'none-selflink' { Remove-Item -Force etc/os-release; & ln -s ../../../../etc/os-release etc/os-release }
        )
        foreach ($tar in $images) {
            $img = Import-MelangeImage -Path $tar -Runner bubblewrap
            try {
                $pod = $img | Start-MelangePod
                try {
                    { $pod | Get-MelangeReleaseData -ErrorAction Stop } | Should -Throw -ErrorId 'NoOsRelease,*' -Because "of $tar"
                } finally { $pod | Stop-MelangePod }
            } finally { $img | Remove-MelangeImage -Confirm:$false }
        }
    }

    It 'looks a RunAs name up in the image''s passwd through a symlinked /etc' {
        $tar = New-ChangedRootfs 'passwd-usretc' {
            $null = New-Item -ItemType Directory -Force usr
            Move-Item etc usr/etc
            & ln -s /usr/etc etc
            Add-Content usr/etc/passwd "`nbuilder:x:1234:2345:builder:/home/build:/bin/sh"
        }
        $img = Import-MelangeImage -Path $tar -Runner bubblewrap
        try {
            $plan = $img | Get-MelangePodPlan -RunAs builder
            $at = [array]::IndexOf($plan.Arguments, '--uid')
            $plan.Arguments[$at + 1] | Should -Be '1234'
            $plan.Arguments[[array]::IndexOf($plan.Arguments, '--gid') + 1] | Should -Be '2345'
            $pod = $img | Start-MelangePod -RunAs builder
            try {
                $pod | Invoke-MelangePod -Command sh, -c, 'id -u' | Should -Be '1234'
            } finally { $pod | Stop-MelangePod }
        } finally { $img | Remove-MelangeImage -Confirm:$false }
    }

    It 'never finds a RunAs name in the host''s passwd through /etc -> /etc' {
        (Get-Content /etc/passwd) -match '^daemon:' | Should -Not -BeNullOrEmpty -Because 'the host has the user'
        $tar = New-ChangedRootfs 'passwd-hostetc' { Remove-Item -Recurse -Force etc; & ln -s /etc etc }
        $img = Import-MelangeImage -Path $tar -Runner bubblewrap
        try {
            { $img | Get-MelangePodPlan -RunAs daemon -ErrorAction Stop } | Should -Throw -ErrorId 'UnknownUser,*'
        } finally { $img | Remove-MelangeImage -Confirm:$false }
    }
}
