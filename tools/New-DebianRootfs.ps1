<#
.SYNOPSIS
Makes a real Debian build image (debootstrap minbase + build-essential) as a rootfs .tar.gz.

.DESCRIPTION
The tests that compile C in a pod need a real toolchain image, not busybox: gcc, cc1, ld, make and
libc6-dev, with Debian's own paths. This runs debootstrap (Debian/Ubuntu package debootstrap) from
the mirror the host's apt already uses (read from /etc/apt/sources.list.d/*.sources or
/etc/apt/sources.list), adds a build user (1000) with a home, and writes the tree as a gzip layer tar
with numeric owners. It needs root (debootstrap does) and takes about two minutes on a 2-core
machine. With -CachePath, an existing file there is reused and a new one is written there.

.PARAMETER OutputPath
Where to write the .tar.gz. Defaults to the cache path.

.PARAMETER Suite
The Debian suite (default bookworm).

.PARAMETER Mirror
The mirror URL; default: the first one the host's apt sources give for the suite.

.EXAMPLE
./tools/New-DebianRootfs.ps1 -OutputPath ./debian-build.tar.gz
#>
[CmdletBinding()]
param(
    [string]$OutputPath,
    [string]$Suite = 'bookworm',
    [string]$Mirror
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

function Get-CacheRoot {
    $base = if ($env:XDG_CACHE_HOME -and [IO.Path]::IsPathRooted($env:XDG_CACHE_HOME)) { $env:XDG_CACHE_HOME } else { Join-Path $HOME '.cache' }
    Join-Path $base 'melange-runner/images'
}

# The mirror the host's apt uses for the suite: deb822 .sources first, then one-line sources.
function Get-AptMirror([string]$Suite) {
    foreach ($file in @(Get-ChildItem /etc/apt/sources.list.d -Filter '*.sources' -ErrorAction Ignore)) {
        foreach ($stanza in ((Get-Content -Raw $file.FullName) -split "\n\s*\n")) {
            $uris = [regex]::Match($stanza, '(?m)^URIs:\s*(\S+)').Groups[1].Value
            $suites = [regex]::Match($stanza, '(?m)^Suites:\s*(.+)$').Groups[1].Value -split '\s+'
            $types = [regex]::Match($stanza, '(?m)^Types:\s*(.+)$').Groups[1].Value -split '\s+'
            if ($uris -and $types -contains 'deb' -and $suites -contains $Suite) { return $uris }
        }
    }
    foreach ($line in @(Get-Content /etc/apt/sources.list -ErrorAction Ignore)) {
        if ($line -match "^\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+$Suite\s") { return $Matches[2] }
    }
    throw "No apt source for '$Suite' on this host; pass -Mirror."
}

$cache = Join-Path (Get-CacheRoot) "debian-$Suite-build-essential.tar.gz"
if (-not $OutputPath) { $OutputPath = $cache }
$OutputPath = [IO.Path]::GetFullPath($OutputPath, (Get-Location).Path)
if (Test-Path -LiteralPath $cache) {
    if ($OutputPath -ne $cache) { Copy-Item -LiteralPath $cache -Destination $OutputPath -Force }
    return Get-Item -LiteralPath $OutputPath
}
if ((& id -u) -ne '0') { throw 'debootstrap needs root: run this as root (sudo).' }
if (-not (Get-Command debootstrap -ErrorAction Ignore)) { throw 'debootstrap is not installed: sudo apt-get install -y debootstrap' }
if (-not $Mirror) { $Mirror = Get-AptMirror $Suite }

$root = Join-Path ([IO.Path]::GetTempPath()) "melange-debootstrap-$([guid]::NewGuid().ToString('N').Substring(0, 12))"
$partial = "$OutputPath.partial-$PID"
try {
    Write-Verbose "debootstrap --variant=minbase --include=build-essential $Suite $root $Mirror"
    & debootstrap --variant=minbase --include=build-essential $Suite $root $Mirror > (Join-Path ([IO.Path]::GetTempPath()) "melange-debootstrap-$PID.log")
    if ($LASTEXITCODE -ne 0) { throw "debootstrap failed (exit $LASTEXITCODE); see $([IO.Path]::GetTempPath())melange-debootstrap-$PID.log" }
    Remove-Item (Join-Path ([IO.Path]::GetTempPath()) "melange-debootstrap-$PID.log") -ErrorAction Ignore
    # The build user melange's runners use, with the home the workspace is mounted at.
    & chroot $root /usr/sbin/useradd --uid 1000 --user-group --create-home --home-dir /home/build --shell /bin/sh build
    if ($LASTEXITCODE -ne 0) { throw "useradd in the new rootfs failed (exit $LASTEXITCODE)" }
    # Caches that only make the image bigger.
    Remove-Item -Recurse -Force (Join-Path $root 'var/cache/apt/archives/*.deb'), (Join-Path $root 'var/lib/apt/lists/*') -ErrorAction Ignore
    $null = New-Item -ItemType Directory -Force (Split-Path $OutputPath)
    & tar -C $root --numeric-owner --xattrs --xattrs-include='*' -czf $partial .
    if ($LASTEXITCODE -ne 0) { throw "tar failed (exit $LASTEXITCODE)" }
    Move-Item -Force -LiteralPath $partial -Destination $OutputPath
    if ($OutputPath -ne $cache) {
        $null = New-Item -ItemType Directory -Force (Split-Path $cache)
        Copy-Item -LiteralPath $OutputPath -Destination $cache -Force
    }
} finally {
    Remove-Item -LiteralPath $partial -ErrorAction Ignore
    # debootstrap leaves nothing mounted on success; on failure, proc may still be.
    foreach ($m in 'proc', 'sys', 'dev/pts', 'dev') { if (Test-Path (Join-Path $root $m)) { & umount -l (Join-Path $root $m) 2>$null } }
    if (Test-Path -LiteralPath $root) { & rm -rf --one-file-system -- $root }
}
Get-Item -LiteralPath $OutputPath
