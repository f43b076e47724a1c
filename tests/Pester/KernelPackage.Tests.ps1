# A kernel as melange users have it: Debian's linux-image package unpacked with dpkg -x, with
# QEMU_KERNEL_IMAGE=<tree>/boot/vmlinuz-<version> and QEMU_KERNEL_MODULES=<tree>/lib/modules/<version>.
# The package ships no modules.dep (its postinst runs depmod); the tests also delete the other
# modules.* files, as a package built elsewhere may lack them.

BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $noQemu = -not (Test-MelangeRunner -Name qemu)
    $noDpkg = -not (Get-Command dpkg -CommandType Application -ErrorAction Ignore) -or -not (Get-Command apt-get -CommandType Application -ErrorAction Ignore)
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')

    # The package of the kernel that tools/Get-MelangeKernel.ps1 fetched, else apt's current one.
    function Get-KernelPackageName {
        $marker = Get-ChildItem (Join-Path (Get-MelangeCacheRoot) 'kernel/x86_64/*/melange-kernel.json') -ErrorAction Ignore |
            Sort-Object LastWriteTime -Descending | Select-Object -First 1
        if ($marker) { return (Get-Content -Raw $marker | ConvertFrom-Json).package }
        foreach ($line in & apt-cache depends linux-image-amd64 2>$null) {
            if ($line -match '^\s*\|?Depends:\s+(linux-image-\d\S*-amd64)\s*$') { return $Matches[1] }
        }
        throw 'No kernel package known: run dotnet pwsh ./tools/Get-MelangeKernel.ps1 (or apt-get update) first.'
    }

    # qemu processes this PowerShell started (qemu runs under setsid, still our child).

    # Starts a pod with the two variables set (and $Also), restoring them all afterwards; returns
    # the pod (or the error) and the engine's Verbose messages.
    function Start-PackagePod([string]$Tree, [hashtable]$Also = @{}, [string]$Memory = '1Gi') {
        $vars = @{
            QEMU_KERNEL_IMAGE   = (Get-Item (Join-Path $Tree 'boot/vmlinuz-*')).FullName
            QEMU_KERNEL_MODULES = (Get-Item (Join-Path $Tree 'lib/modules/*')).FullName
        }
        foreach ($name in $Also.Keys) { $vars[$name] = $Also[$name] }
        $saved = @{}
        foreach ($name in $vars.Keys) { $saved[$name] = [Environment]::GetEnvironmentVariable($name) }
        $verbose = [Collections.Generic.List[string]]::new()
        $result = [pscustomobject]@{ Pod = $null; Error = $null; Verbose = $verbose; Seconds = 0 }
        $watch = [Diagnostics.Stopwatch]::StartNew()
        try {
            foreach ($name in $vars.Keys) { [Environment]::SetEnvironmentVariable($name, $vars[$name]) }
            $script:img | Start-MelangePod -Memory $Memory -Verbose 4>&1 | ForEach-Object {
                if ($_ -is [System.Management.Automation.VerboseRecord]) { $verbose.Add($_.Message) } else { $result.Pod = $_ }
            }
        } catch {
            $result.Error = $_
        } finally {
            $result.Seconds = $watch.Elapsed.TotalSeconds
            foreach ($name in $saved.Keys) { [Environment]::SetEnvironmentVariable($name, $saved[$name]) }
        }
        $result
    }
}

Describe 'A kernel from an unpacked linux-image package' -Skip:($noQemu -or $noDpkg) {
    BeforeAll {
        $script:img = Import-MelangeImage -Path (Get-TestRootfs) -Runner qemu
        $package = Get-KernelPackageName
        $deb = Get-ChildItem "/var/cache/apt/archives/$($package)_*.deb" -ErrorAction Ignore | Select-Object -First 1
        if (-not $deb) {
            Push-Location $TestDrive
            try { $null = & apt-get download $package 2>&1; if ($LASTEXITCODE -ne 0) { throw "apt-get download $package failed ($LASTEXITCODE)." } }
            finally { Pop-Location }
            $deb = Get-Item (Join-Path $TestDrive "$($package)_*.deb")
        }
        $script:Tree = Join-Path $TestDrive 'pkg'
        & dpkg -x $deb.FullName $script:Tree
        if ($LASTEXITCODE -ne 0) { throw "dpkg -x $($deb.FullName) failed ($LASTEXITCODE)." }
        $script:Modules = (Get-Item (Join-Path $script:Tree 'lib/modules/*')).FullName
        $script:Version = Split-Path -Leaf $script:Modules
        Get-ChildItem (Join-Path $script:Modules 'modules.*') | Remove-Item
        $script:TreeBytes = (Get-ChildItem -Recurse -File $script:Modules | Measure-Object Length -Sum).Sum
    }
    AfterAll {
        if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
    }

    It 'boots it with only the modules the guest needs, and leaves the tree as it was' {
        $before = @(Get-ChildItem -Recurse -Name $script:Modules)
        $start = Start-PackagePod $script:Tree
        try {
            $start.Error | Should -BeNullOrEmpty
            $start.Pod | Invoke-MelangePod -Command uname, -r | Should -Be $script:Version
        } finally {
            if ($start.Pod) { $start.Pod | Stop-MelangePod }
        }
        # The size the engine wrote before it deleted the per-pod copy.
        $line = $start.Verbose | Where-Object { $_ -match '^Per-pod initramfs \S+ \((\d+) bytes\)' } | Select-Object -First 1
        $line | Should -Not -BeNullOrEmpty
        $null = $line -match '\((\d+) bytes\)'
        $size = [long]$Matches[1]
        Write-Host "per-pod initramfs: $([math]::Round($size / 1MB, 1)) MiB; the package's module tree: $([math]::Round($script:TreeBytes / 1MB)) MiB; started in $([math]::Round($start.Seconds, 1)) s"
        $size | Should -BeLessThan 64MB
        $size | Should -BeLessThan ($script:TreeBytes / 8)
        ($start.Verbose | Where-Object { $_ -like "Kernel modules $($script:Version), by group*" }) | Should -Match 'virtio_console.*'
        @(Get-ChildItem -Recurse -Name $script:Modules) | Should -Be $before
    }

    It 'fails naming a module the tree lacks, within seconds, without starting qemu' {
        # A hard-linked copy with one dependency of the guest's modules gone (virtio needs virtio_ring).
        $broken = Join-Path $TestDrive 'broken'
        & cp -al $script:Tree $broken
        $LASTEXITCODE | Should -Be 0
        Remove-Item (Join-Path $broken "lib/modules/$($script:Version)/kernel/drivers/virtio/virtio_ring.ko")

        $start = Start-PackagePod $broken
        if ($start.Pod) { $start.Pod | Stop-MelangePod }

        $start.Pod | Should -BeNullOrEmpty
        $start.Error | Should -Not -BeNullOrEmpty
        $start.Error.FullyQualifiedErrorId | Should -BeLike 'KernelModuleMissing,*'
        $start.Error.Exception.Message | Should -Match 'virtio_ring'
        $start.Seconds | Should -BeLessThan 30
        $start.Verbose | Where-Object { $_ -match 'Running: .*qemu-system' } | Should -BeNullOrEmpty
        Get-ChildQemu | Should -BeNullOrEmpty
    }

    It 'says, when the VM dies before SSH answers, how large its initramfs was for the guest''s memory' {
        # A base built from the package's tree (its modules derived without modules.dep), then
        # an empty module list appended over the base's: the guest gets no console and no disks.
        $dir = Join-Path $TestDrive 'nolist'
        $null = New-Item -ItemType Directory -Force $dir
        $base = New-MelangeInitramfs -OutputPath (Join-Path $dir 'base.cpio') -KernelModules $script:Modules
        # lib/modules/… or, on a merged-/usr host, usr/lib/modules/….
        $list = @(& cpio -it --quiet -F $base.FullName) | Where-Object { $_ -like "*lib/modules/$($script:Version)/melange-modules.load" }
        $list | Should -Not -BeNullOrEmpty
        $null = New-Item -ItemType Directory -Force (Join-Path $dir "root/$(Split-Path $list)")
        Set-Content (Join-Path $dir "root/$list") '# nothing'
        & bash -c "cd '$dir/root' && find . -type f | cpio -o -H newc --quiet -R 0:0 > ../empty.cpio && cd .. && cat base.cpio empty.cpio > nolist.cpio"
        $LASTEXITCODE | Should -Be 0

        $start = Start-PackagePod $script:Tree -Memory 512Mi -Also @{ QEMU_BASE_INITRAMFS = (Join-Path $dir 'nolist.cpio'); QEMU_KERNEL_MODULES = $null }
        if ($start.Pod) { $start.Pod | Stop-MelangePod }

        $start.Error | Should -Not -BeNullOrEmpty
        $start.Error.FullyQualifiedErrorId | Should -BeLike 'VmExited,*' -Because $start.Error.Exception.Message
        $mib = [math]::Round((Get-Item (Join-Path $dir 'nolist.cpio')).Length / 1MB, 1)
        $start.Error.Exception.Message | Should -Match ('The initramfs was ' + [regex]::Escape("$mib") + '(\.\d)? MiB for 512 MiB of guest memory')
        $start.Seconds | Should -BeLessThan 60
        Get-ChildQemu | Should -BeNullOrEmpty
    }
}
