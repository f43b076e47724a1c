<#
.SYNOPSIS
Fetches Debian's standard Linux kernel for the qemu runner into the user's cache.

.DESCRIPTION
The qemu runner boots a kernel: QEMU_KERNEL_IMAGE if set, else /boot/vmlinuz, else the
kernel that this script put in the cache. This script:

  1. resolves Debian's meta package for the architecture (linux-image-amd64 on x86_64,
     linux-image-arm64 on aarch64) to the versioned package it depends on
     (e.g. linux-image-6.1.0-57-amd64) with `apt-cache depends`. Never the `cloud` flavour:
     it has no 9p, which the runner needs for the workspace.
  2. downloads that package with `apt-get download` (no install, nothing on the host
     changes). When apt has no package lists and this runs as root, it runs
     `apt-get update` first; otherwise it says what to run.
  3. unpacks it with `dpkg -x` into
       ${XDG_CACHE_HOME:-~/.cache}/melange-runner/kernel/<arch>/<version>/
     (boot/vmlinuz-<version> and lib/modules/<version>), writes melange-kernel.json there
     (the marker the runner looks for), and deletes the .deb.
  4. writes lib/modules/<version>/modules.dep, which the package does not ship (its
     postinst runs depmod): with depmod when kmod is installed, else through the engine.
  5. on x86_64, extracts the uncompressed ELF kernel (boot/vmlinux-<version>, booted
     through its PVH entry: about 3 s less per boot under TCG) once, through the built
     module (bin/, see build.ps1); it needs xz (xz-utils). When the module is not built,
     nothing is lost: the runner does steps 4 and 5 at the first boot, once, at the same place.

It is idempotent: when the current kernel is already in the cache, nothing is downloaded.
The output is the path of the kernel image (boot/vmlinuz-<version>).

.PARAMETER Arch
x86_64 or aarch64 (amd64 and arm64 are accepted too). Default: the host's. A foreign
architecture needs `dpkg --add-architecture <arch>` and `apt-get update` first.

.PARAMETER CacheDirectory
The cache root (default ${XDG_CACHE_HOME:-~/.cache}/melange-runner). The runner only
looks in the default place.

.PARAMETER Force
Download and unpack again even when the kernel is already cached.

.PARAMETER NoExtract
Do not extract the uncompressed kernel now (the runner does it at the first boot).

.EXAMPLE
dotnet pwsh ./tools/Get-MelangeKernel.ps1

.EXAMPLE
$env:QEMU_KERNEL_IMAGE = dotnet pwsh ./tools/Get-MelangeKernel.ps1 -Arch x86_64
#>
[CmdletBinding()]
[OutputType([string])]
param(
    [ValidateSet('x86_64', 'aarch64', 'amd64', 'arm64')]
    [string]$Arch,

    [string]$CacheDirectory,

    [switch]$Force,

    [switch]$NoExtract
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

function Invoke-Native {
    param([Parameter(Mandatory)][string]$FilePath, [string[]]$ArgumentList = @(), [switch]$Quiet)
    Write-Verbose "$FilePath $($ArgumentList -join ' ')"
    $out = & $FilePath @ArgumentList 2>&1
    if ($LASTEXITCODE -ne 0) {
        throw "'$FilePath $($ArgumentList -join ' ')' failed with exit code $LASTEXITCODE`n$($out -join "`n")"
    }
    if (-not $Quiet) { $out | ForEach-Object { Write-Verbose "$_" } }
    $out | Where-Object { $_ -is [string] }
}

# --- architecture ------------------------------------------------------------------------
if (-not $Arch) {
    $Arch = switch ([System.Runtime.InteropServices.RuntimeInformation]::OSArchitecture) {
        'X64' { 'x86_64' }
        'Arm64' { 'aarch64' }
        default { throw "This host's architecture ($_) has no Debian kernel that the qemu runner supports; give -Arch x86_64 or -Arch aarch64." }
    }
}
$Arch = @{ amd64 = 'x86_64'; arm64 = 'aarch64' }[$Arch] ?? $Arch
$debArch = @{ x86_64 = 'amd64'; aarch64 = 'arm64' }[$Arch]
$flavour = $debArch   # Debian's standard flavour is named after the architecture; not "cloud-<arch>".

foreach ($tool in 'apt-cache', 'apt-get', 'dpkg') {
    if (-not (Get-Command $tool -CommandType Application -ErrorAction Ignore)) {
        throw "'$tool' was not found: this script needs a Debian or Ubuntu host (apt and dpkg). Elsewhere, set QEMU_KERNEL_IMAGE (and QEMU_KERNEL_MODULES) to a kernel with virtio and 9p support."
    }
}
$hostDebArch = (& dpkg --print-architecture).Trim()
$pkgSuffix = if ($debArch -ne $hostDebArch) { ":$debArch" } else { '' }
$isRoot = (& id -u) -eq '0'

# --- cache location ----------------------------------------------------------------------
if (-not $CacheDirectory) {
    $xdg = $env:XDG_CACHE_HOME
    $base = if ($xdg -and [System.IO.Path]::IsPathRooted($xdg)) { $xdg } else { Join-Path ([Environment]::GetFolderPath('UserProfile')) '.cache' }
    $CacheDirectory = Join-Path $base 'melange-runner'
}
$archDir = Join-Path (Join-Path $CacheDirectory 'kernel') $Arch
$MarkerName = 'melange-kernel.json'

# --- resolve linux-image-<flavour> to linux-image-<version>-<flavour> ------------------------
$meta = "linux-image-$flavour"
function Resolve-KernelPackage {
    $lines = & apt-cache depends "$meta$pkgSuffix" 2>$null
    if ($LASTEXITCODE -ne 0 -or -not $lines) { return $null }
    foreach ($line in $lines) {
        # "  Depends: linux-image-6.1.0-57-amd64" (alternatives start with '|'; virtual ones are in <>).
        if ($line -match '^\s*\|?Depends:\s+(linux-image-(\S+))\s*$') {
            $name = $Matches[1] -replace ":$debArch$", ''
            $version = $Matches[2] -replace ":$debArch$", ''
            if ($version -notmatch "^\d.*-$flavour$") { continue }
            if ($version -match '-(cloud|rt)-') { continue }     # never the cloud (no 9p) or realtime flavour
            return [pscustomobject]@{ Package = $name; Version = $version }
        }
    }
    return $null
}

$resolved = Resolve-KernelPackage
if (-not $resolved) {
    if ($isRoot) {
        Write-Host "apt knows no '$meta' package: running apt-get update first."
        Invoke-Native apt-get -ArgumentList @('update', '-q') -Quiet | Out-Null
        $resolved = Resolve-KernelPackage
    }
    if (-not $resolved) {
        $cached = @(Get-ChildItem -Path $archDir -Directory -ErrorAction Ignore |
                Where-Object { Test-Path (Join-Path $_.FullName $MarkerName) } | Sort-Object Name -Descending)
        $run = if ($isRoot) { 'apt-get update' } else { 'sudo apt-get update' }
        $foreign = if ($pkgSuffix) { "sudo dpkg --add-architecture $debArch && " } else { '' }
        if (-not $cached) {
            throw "apt does not know the package '$meta$pkgSuffix' (no package lists?), so the kernel to fetch cannot be resolved. Run: $foreign$run, then run this script again."
        }
        Write-Warning "apt does not know '$meta$pkgSuffix' (run: $foreign$run to check for a newer kernel); using the cached $($cached[0].Name)."
        $resolved = [pscustomobject]@{ Package = "linux-image-$($cached[0].Name)"; Version = $cached[0].Name }
    }
}
$version = $resolved.Version
$entry = Join-Path $archDir $version
$image = Join-Path (Join-Path $entry 'boot') "vmlinuz-$version"
$marker = Join-Path $entry $MarkerName

# --- already there? -------------------------------------------------------------------------
if (-not $Force -and (Test-Path -LiteralPath $marker) -and (Test-Path -LiteralPath $image)) {
    Write-Host "The kernel $version ($($resolved.Package)) is already in the cache: $entry (nothing downloaded)."
}
else {
    $aptVersion = ((& apt-cache policy "$($resolved.Package)$pkgSuffix") -match '^\s*Candidate:' | Select-Object -First 1) -replace '^\s*Candidate:\s*', ''
    $null = New-Item -ItemType Directory -Force -Path $archDir
    $work = Join-Path $archDir ".fetch-$version-$PID"
    $null = New-Item -ItemType Directory -Force -Path $work
    try {
        Push-Location $work
        try {
            Write-Host "Downloading $($resolved.Package) $aptVersion ($debArch) with apt-get download…"
            $aptArgs = @('download', '-q')
            # As root, apt drops to the _apt user to download and warns when it cannot write here.
            if ($isRoot) { $aptArgs += @('-o', 'APT::Sandbox::User=root') }
            Invoke-Native apt-get -ArgumentList ($aptArgs + "$($resolved.Package)$pkgSuffix") | Out-Null
        }
        finally { Pop-Location }
        $deb = Get-ChildItem -LiteralPath $work -Filter '*.deb' | Select-Object -First 1
        if (-not $deb) { throw "apt-get download left no .deb in $work." }
        $debBytes = $deb.Length
        $staging = Join-Path $work 'root'
        Write-Host "Unpacking $($deb.Name) ($([math]::Round($debBytes / 1MB)) MB) with dpkg -x…"
        Invoke-Native dpkg -ArgumentList @('-x', $deb.FullName, $staging) | Out-Null
        Remove-Item -LiteralPath $deb.FullName -Force

        # Debian 13 moved the modules to /usr/lib/modules; the runner looks in lib/modules.
        $stagedImage = Join-Path (Join-Path $staging 'boot') "vmlinuz-$version"
        if (-not (Test-Path -LiteralPath $stagedImage)) { throw "The package $($resolved.Package) holds no boot/vmlinuz-$version." }
        $modules = Join-Path $staging "lib/modules/$version"
        if (-not (Test-Path -LiteralPath $modules) -and (Test-Path -LiteralPath (Join-Path $staging "usr/lib/modules/$version"))) {
            $null = New-Item -ItemType Directory -Force -Path (Join-Path $staging 'lib/modules')
            $null = New-Item -ItemType SymbolicLink -Path $modules -Target "../../usr/lib/modules/$version"
        }
        # The package ships no modules.dep (its postinst runs depmod); the guest's module order
        # comes from it. depmod when kmod is installed, else the engine writes it (below, or
        # the runner at the first boot).
        $depmod = Get-Command depmod -CommandType Application -ErrorAction Ignore
        if (-not $depmod) { $depmod = @('/usr/sbin/depmod', '/sbin/depmod') | Where-Object { Test-Path $_ } | Select-Object -First 1 }
        if ($depmod) { Invoke-Native "$depmod" -ArgumentList @('-b', $staging, $version) | Out-Null }
        $sha = (Get-FileHash -LiteralPath $stagedImage -Algorithm SHA256).Hash.ToLowerInvariant()
        [ordered]@{
            version        = $version
            arch           = $Arch
            debianArch     = $debArch
            package        = $resolved.Package
            packageVersion = $aptVersion
            image          = "boot/vmlinuz-$version"
            modules        = "lib/modules/$version"
            imageSha256    = $sha
            fetched        = [DateTime]::UtcNow.ToString('o')
        } | ConvertTo-Json | Set-Content -LiteralPath (Join-Path $staging $MarkerName) -Encoding utf8NoBOM

        # Replace the entry in one rename (an old, possibly partial, entry is moved aside first).
        if (Test-Path -LiteralPath $entry) {
            $old = Join-Path $work 'old'
            Move-Item -LiteralPath $entry -Destination $old
        }
        Move-Item -LiteralPath $staging -Destination $entry
        Write-Host "Cached the kernel $version in $entry"
    }
    finally {
        Remove-Item -LiteralPath $work -Recurse -Force -ErrorAction Ignore
    }
}

# --- modules.dep and the uncompressed ELF kernel, through the built module ----------------------------
$modulesDir = Join-Path $entry "lib/modules/$version"
$needDep = (Test-Path -LiteralPath $modulesDir) -and -not (Test-Path -LiteralPath (Join-Path $modulesDir 'modules.dep'))
$needElf = $Arch -eq 'x86_64' -and -not $NoExtract
if ($needDep -or $needElf) {
    $manifest = Join-Path (Split-Path -Parent $PSScriptRoot) 'MelangeRunner.psd1'
    $engine = Join-Path (Split-Path -Parent $PSScriptRoot) 'bin/MelangeRunner.dll'
    $loaded = $false
    if ((Test-Path -LiteralPath $manifest) -and (Test-Path -LiteralPath $engine)) {
        try {
            Import-Module $manifest -ErrorAction Stop
            $loaded = [bool]('MelangeRunner.Qemu.Kernel.VmlinuxExtractor' -as [type])
            if (-not $loaded) { Write-Warning 'The built module predates the kernel code (rebuild: dotnet pwsh ./build.ps1 Build).' }
        }
        catch { Write-Warning "Could not import the module ($($_.Exception.Message))." }
    }
    if (-not $loaded) {
        Write-Host 'The module is not built (dotnet pwsh ./build.ps1 Build): the runner does the rest at the first boot (modules.dep, the uncompressed kernel), once.'
    }
    else {
        if ($needDep) {
            try {
                $count = 0
                $text = [MelangeRunner.Qemu.Kernel.ModulesDep]::Generate($modulesDir, [ref]$count)
                $dep = Join-Path $modulesDir 'modules.dep'
                [IO.File]::WriteAllText("$dep.tmp-$PID", $text)
                Move-Item -LiteralPath "$dep.tmp-$PID" -Destination $dep -Force
                Write-Host "Wrote $dep ($count modules; no depmod on this host)."
            }
            catch { Write-Warning "Could not write $modulesDir/modules.dep ($($_.Exception.GetBaseException().Message)); the runner tries again at the first boot." }
        }
        if ($needElf) {
            $sw = [Diagnostics.Stopwatch]::StartNew()
            $vmlinux = [MelangeRunner.Qemu.Kernel.VmlinuxExtractor]::GetOrExtract($image, [MelangeRunner.NullEventSink]::Instance)
            if ($vmlinux) { Write-Host "Uncompressed kernel, booted directly through its PVH entry: $vmlinux ($([math]::Round($sw.Elapsed.TotalSeconds, 1)) s)" }
            else { Write-Warning "No bootable uncompressed kernel could be extracted from $image; the runner boots the compressed image (about 3 s slower under TCG)." }
        }
    }
}

$image
