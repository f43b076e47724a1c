<#
.SYNOPSIS
Makes a small, real rootfs layer (.tar.gz) from the host's busybox-static.

.DESCRIPTION
The demo and the tests need an image without a network: this writes a gzip-compressed
layer tar holding /bin/busybox with every applet linked where busybox says it belongs,
/etc/passwd and /etc/group with root and a build user (1000), /etc/os-release, and the
directories a build expects (/home/build owned by the build user, /tmp with the sticky bit).

.PARAMETER OutputPath
Where to write the .tar.gz.

.PARAMETER Busybox
The static busybox binary to use (Debian/Ubuntu package busybox-static).

.EXAMPLE
./tools/New-DemoRootfs.ps1 -OutputPath ./rootfs.tar.gz
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)]
    [string]$OutputPath,

    [string]$Busybox = '/bin/busybox'
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

if (-not (Test-Path -LiteralPath $Busybox -PathType Leaf)) {
    throw "busybox was not found at $Busybox. Install it with: sudo apt-get install -y busybox-static"
}
# A dynamically linked busybox would need the host's libraries inside the image.
$elf = [System.IO.File]::ReadAllBytes($Busybox)
$interp = [System.Text.Encoding]::ASCII.GetString($elf, 0, [Math]::Min($elf.Length, 4096))
if ($interp -match 'ld-linux|ld-musl') {
    throw "$Busybox is not statically linked. Install busybox-static: sudo apt-get install -y busybox-static"
}

$OutputPath = $ExecutionContext.SessionState.Path.GetUnresolvedProviderPathFromPSPath($OutputPath)
$mtime = [DateTimeOffset]::FromUnixTimeSeconds(0)

# PowerShell has no octal literals.
function Oct([string]$Digits) { [Convert]::ToInt32($Digits, 8) }

function New-Entry([System.Formats.Tar.TarEntryType]$Type, [string]$Name, [int]$Mode, [int]$Uid = 0, [int]$Gid = 0) {
    $entry = [System.Formats.Tar.PaxTarEntry]::new($Type, $Name)
    $entry.Mode = [System.IO.UnixFileMode]$Mode
    $entry.Uid = $Uid
    $entry.Gid = $Gid
    $entry.ModificationTime = $mtime
    $entry
}

$stream = [System.IO.File]::Create($OutputPath)
try {
    $gzip = [System.IO.Compression.GZipStream]::new($stream, [System.IO.Compression.CompressionLevel]::Optimal)
    $writer = [System.Formats.Tar.TarWriter]::new($gzip, [System.Formats.Tar.TarEntryFormat]::Pax, $false)
    try {
        $dirs = [ordered]@{
            'bin/' = (Oct '755'); 'sbin/' = (Oct '755'); 'usr/' = (Oct '755'); 'usr/bin/' = (Oct '755'); 'usr/sbin/' = (Oct '755')
            'etc/' = (Oct '755'); 'home/' = (Oct '755'); 'root/' = (Oct '700'); 'tmp/' = (Oct '1777'); 'var/' = (Oct '755')
            'var/cache/' = (Oct '755'); 'dev/' = (Oct '755'); 'proc/' = (Oct '555'); 'sys/' = (Oct '555'); 'lib/' = (Oct '755')
        }
        foreach ($d in $dirs.GetEnumerator()) {
            $writer.WriteEntry((New-Entry Directory $d.Key $d.Value))
        }
        $writer.WriteEntry((New-Entry Directory 'home/build/' (Oct '755') 1000 1000))

        $bin = New-Entry RegularFile 'bin/busybox' (Oct '755')
        $data = [System.IO.File]::OpenRead($Busybox)
        try {
            $bin.DataStream = $data
            $writer.WriteEntry($bin)
        } finally {
            $data.Dispose()
        }

        # busybox knows where each applet belongs (/bin/sh, /usr/bin/awk, /sbin/ifconfig…).
        foreach ($applet in (& $Busybox --list-full | Sort-Object -Unique)) {
            if ($applet -eq 'bin/busybox') { continue }
            $link = New-Entry SymbolicLink $applet (Oct '777')
            $link.LinkName = '/bin/busybox'
            $writer.WriteEntry($link)
        }

        $files = [ordered]@{
            'etc/passwd'     = "root:x:0:0:root:/root:/bin/sh`nbuild:x:1000:1000:build:/home/build:/bin/sh`nnobody:x:65534:65534:nobody:/nonexistent:/bin/false`n"
            'etc/group'      = "root:x:0:`nbuild:x:1000:`nnogroup:x:65534:`n"
            'etc/os-release' = "# A busybox image made by MelangeRunner's tools/New-DemoRootfs.ps1`nID=melange-demo`nNAME=`"MelangeRunner demo`"`nPRETTY_NAME=`"MelangeRunner demo (busybox)`"`nVERSION_ID=1.0`nHOME_URL=`"https://github.com/chainguard-dev/melange`"`n"
        }
        foreach ($f in $files.GetEnumerator()) {
            $entry = New-Entry RegularFile $f.Key (Oct '644')
            $entry.DataStream = [System.IO.MemoryStream]::new([System.Text.Encoding]::UTF8.GetBytes($f.Value))
            $writer.WriteEntry($entry)
        }
    } finally {
        $writer.Dispose()
        $gzip.Dispose()
    }
} catch {
    $stream.Dispose()
    Remove-Item -LiteralPath $OutputPath -Force -ErrorAction SilentlyContinue
    throw
} finally {
    $stream.Dispose()
}
Get-Item -LiteralPath $OutputPath
