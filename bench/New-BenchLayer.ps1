<#
.SYNOPSIS
Generates a realistic image layer for the import benchmark, as layer.tar.gz and layer.tar.zst.

.DESCRIPTION
Writes a rootfs-like tree (deterministic: fixed seed) and packs it with GNU tar, then
compresses the same tar with gzip (-6, the default) and zstd (-3, the default):

- a few thousand small files (200 B to 48 KiB, log-distributed; about two thirds text-like
  and compressible, one third random bytes) spread over a few hundred directories, as in
  /usr/lib, /usr/share and /etc;
- a hundred medium files (128 KiB to 1 MiB, mixed);
- large files: incompressible ones (random bytes, like already-compressed assets) and
  compressible ones (structured, ELF-/log-like data that compresses about 3:1);
- symlinks (relative and absolute), a few hard links, an empty file and empty directories,
  executable modes and a file owned by uid 1000.

The uncompressed tar is about -SizeMB MB. Outputs an object with the paths and sizes; the
caller deletes -Directory.

.EXAMPLE
./bench/New-BenchLayer.ps1 -Directory /tmp/bench -SizeMB 300
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)]
    [string]$Directory,

    [ValidateRange(20, 100000)]
    [int]$SizeMB = 300
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

if (-not ('MelangeBench.LayerData' -as [type])) {
    Add-Type -TypeDefinition @'
using System;
using System.IO;
using System.Text;
namespace MelangeBench {
public static class LayerData {
    static readonly string[] Words = (
        "the of and to in is for on that with as by at from this be are or it an which " +
        "lib usr share include config module package version build install error warning " +
        "function return static const struct void int char size_t uint32_t buffer length " +
        "path file directory symbol section header offset value default option enable " +
        "disable kernel process thread signal memory socket stream format parse write read").Split(' ');

    // Text-like bytes: words, punctuation, newlines, numbers (compresses about 3:1 with gzip).
    public static void FillText(Random r, byte[] buf, int len) {
        int i = 0;
        while (i < len) {
            string w = Words[r.Next(Words.Length)];
            if (r.Next(8) == 0) w = r.Next(100000).ToString();
            for (int k = 0; k < w.Length && i < len; k++) buf[i++] = (byte)w[k];
            if (i < len) buf[i++] = (byte)(r.Next(12) == 0 ? '\n' : (r.Next(10) == 0 ? ',' : ' '));
        }
    }

    // Binary but structured: small-range integers, zero runs, repeated records (like code/data sections).
    public static void FillStructured(Random r, byte[] buf, int len) {
        int i = 0;
        while (i < len) {
            int kind = r.Next(4);
            int n = Math.Min(len - i, 16 + r.Next(240));
            if (kind == 0) { Array.Clear(buf, i, n); }
            else if (kind == 1) { r.NextBytes(buf.AsSpan(i, n)); for (int k = 0; k < n; k++) buf[i + k] &= 0x0F; }
            else if (kind == 2 && i >= 512) { Buffer.BlockCopy(buf, i - 256 - r.Next(256), buf, i, Math.Min(n, 256)); n = Math.Min(n, 256); }
            else { r.NextBytes(buf.AsSpan(i, n)); for (int k = 0; k < n; k++) buf[i + k] = (byte)(0x40 | (buf[i + k] & 0x1F)); }
            i += n;
        }
    }

    static readonly byte[] Buffer1M = new byte[1 << 20];

    public static void WriteFile(string path, long size, int kind, int seed) {
        var r = new Random(seed);
        var buf = Buffer1M;
        using var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
        long left = size;
        while (left > 0) {
            int n = (int)Math.Min(left, buf.Length);
            if (kind == 0) r.NextBytes(buf.AsSpan(0, n));
            else if (kind == 1) FillText(r, buf, n);
            else FillStructured(r, buf, n);
            fs.Write(buf, 0, n);
            left -= n;
        }
    }
}
}
'@
}

$tree = Join-Path $Directory 'tree'
$null = New-Item -ItemType Directory -Force -Path $tree
$rng = [Random]::new(20260101)
$budget = [long]$SizeMB * 1MB

# Directories: a rootfs skeleton and a few hundred package directories under it.
$tops = 'usr/lib', 'usr/share/doc', 'usr/share/locale', 'usr/include', 'usr/bin', 'etc', 'opt/app/lib', 'var/lib/apk'
$dirs = [System.Collections.Generic.List[string]]::new()
foreach ($t in $tops) {
    for ($d = 0; $d -lt 40; $d++) {
        $sub = "$t/pkg$d"
        if ($rng.Next(3) -eq 0) { $sub += "/sub$($rng.Next(4))" }
        $dirs.Add($sub)
        $null = New-Item -ItemType Directory -Force -Path (Join-Path $tree $sub)
    }
}
foreach ($e in 'tmp', 'run', 'home/build', 'var/empty', 'proc', 'sys', 'dev') {
    $null = New-Item -ItemType Directory -Force -Path (Join-Path $tree $e)
}

$written = 0L
$files = [System.Collections.Generic.List[string]]::new()
$seed = 1

# Large files: ~30% of the budget incompressible, ~40% compressible.
$largeRandom = [long]($budget * 0.30); $largeStructured = [long]($budget * 0.40)
$i = 0
while ($largeRandom -gt 0) {
    $size = [Math]::Min($largeRandom, 48MB)
    $p = "opt/app/lib/blob$i.pak"
    [MelangeBench.LayerData]::WriteFile((Join-Path $tree $p), $size, 0, $seed++); $files.Add($p)
    $largeRandom -= $size; $written += $size; $i++
}
$i = 0
while ($largeStructured -gt 0) {
    $size = [Math]::Min($largeStructured, 24MB)
    $p = "usr/lib/libbig$i.so.1.0"
    [MelangeBench.LayerData]::WriteFile((Join-Path $tree $p), $size, 2, $seed++); $files.Add($p)
    $largeStructured -= $size; $written += $size; $i++
}

Write-Verbose "large done $([DateTime]::Now.ToString("HH:mm:ss.f"))"
# Medium files: 100, 128 KiB to 1 MiB.
for ($m = 0; $m -lt 100; $m++) {
    $size = 128KB + $rng.Next(896KB)
    $p = "$($dirs[$rng.Next($dirs.Count)])/medium$m.$(('so', 'dat', 'mo', 'bin')[$m % 4])"
    [MelangeBench.LayerData]::WriteFile((Join-Path $tree $p), $size, $m % 3, $seed++); $files.Add($p)
    $written += $size
}

# Small files fill the rest (a few thousand), log-distributed 200 B .. 48 KiB.
$s = 0
while ($written -lt $budget) {
    $size = [long][Math]::Exp([Math]::Log(200) + $rng.NextDouble() * ([Math]::Log(48KB) - [Math]::Log(200)))
    $kind = if ($rng.Next(3) -eq 0) { 0 } else { 1 }
    $p = "$($dirs[$rng.Next($dirs.Count)])/f$s.$(('h', 'py', 'conf', 'txt', 'so', 'pc')[$s % 6])"
    [MelangeBench.LayerData]::WriteFile((Join-Path $tree $p), $size, $kind, $seed++); $files.Add($p)
    $written += $size; $s++
}
$null = New-Item -ItemType File -Force -Path (Join-Path $tree 'etc/empty.conf')

# Modes: executables in usr/bin, one file owned by the build user.
$exec = [IO.UnixFileMode]'UserRead, UserWrite, UserExecute, GroupRead, GroupExecute, OtherRead, OtherExecute'
Get-ChildItem -LiteralPath (Join-Path $tree 'usr/bin') -Recurse -File | ForEach-Object { [IO.File]::SetUnixFileMode($_.FullName, $exec) }
& chown 1000:1000 (Join-Path $tree 'home/build')

Write-Verbose "small done $([DateTime]::Now.ToString("HH:mm:ss.f"))"
# Symlinks (relative and absolute, to files and directories) and hard links.
for ($k = 0; $k -lt 500; $k++) {
    $target = $files[$rng.Next($files.Count)]
    $linkDir = $dirs[$rng.Next($dirs.Count)]
    $link = Join-Path $tree "$linkDir/link$k"
    $to = if ($k % 3 -eq 0) { "/$target" } else { [IO.Path]::GetRelativePath((Join-Path $tree $linkDir), (Join-Path $tree $target)) }
    $null = [IO.File]::CreateSymbolicLink($link, $to)
}
$null = [IO.Directory]::CreateSymbolicLink((Join-Path $tree 'lib'), 'usr/lib')
for ($k = 0; $k -lt 20; $k++) {
    $target = $files[100 + $rng.Next($files.Count - 100)]
    & ln (Join-Path $tree $target) (Join-Path $tree "usr/lib/hardlink$k")
}

Write-Verbose "tree done $([DateTime]::Now.ToString("HH:mm:ss.f"))"
# Pack (no ./ prefix, as in OCI layers) and compress the same tar both ways.
$tar = Join-Path $Directory 'layer.tar'
$names = @(Get-ChildItem -LiteralPath $tree -Force -Name)
& tar -C $tree --sort=name -cf $tar @names
if ($LASTEXITCODE) { throw "tar failed ($LASTEXITCODE)" }
$gz = "$tar.gz"; $zst = "$tar.zst"
# gzip and zstd at their default levels, side by side (gzip is single-threaded).
$gzip = Start-Process -FilePath sh -ArgumentList '-c', '"gzip -6 -c \"$1\" > \"$1.gz\""', 'sh', $tar -NoNewWindow -PassThru
& zstd -q -3 -f $tar -o $zst
if ($LASTEXITCODE) { throw "zstd failed ($LASTEXITCODE)" }
$gzip.WaitForExit()
if ($gzip.ExitCode) { throw "gzip failed ($($gzip.ExitCode))" }
Write-Verbose "compressed $([DateTime]::Now.ToString("HH:mm:ss.f"))"

# Entry counts by type, from GNU tar's listing (first character of the mode column).
$types = @{}
& tar -tvf $tar | ForEach-Object { $types[$_[0]] = 1 + [int]$types[$_[0]] }
$stats = [pscustomobject]@{
    Tar         = $tar
    TarBytes    = (Get-Item $tar).Length
    Gzip        = $gz
    GzipBytes   = (Get-Item $gz).Length
    Zstd        = $zst
    ZstdBytes   = (Get-Item $zst).Length
    Files       = [int]$types[[char]'-']
    Directories = [int]$types[[char]'d']
    Symlinks    = [int]$types[[char]'l']
    HardLinks   = [int]$types[[char]'h']
}
Remove-Item -LiteralPath $tree -Recurse -Force
Remove-Item -LiteralPath $tar -Force
$stats
