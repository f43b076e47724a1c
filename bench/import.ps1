<#
.SYNOPSIS
Image import: Import-MelangeImage -Runner bubblewrap against GNU tar extracting the same
compressed layer into a fresh directory.

.DESCRIPTION
For each layer given (gzip and zstd), in this (warm) session: a warm-up of each side, then
-Rounds timed runs per side, alternating which side goes first. The tar side is
`tar -xzf` / `tar --zstd -xf` into a fresh directory on the same file system as the
importer's guest directory (-ExtractRoot, a tmpfs by default; the importer is pointed there
with TMPDIR). After every timed run the extracted tree is deleted (not timed). Then peak memory, in a fresh pwsh process per layer (bench/import-memory.ps1
under /usr/bin/time -v). Outputs one object per layer. Expects the module to be imported.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)][string[]]$Layer,
    [Parameter(Mandatory)][string]$WarmUpLayer,
    [int]$Rounds = 3,
    # Where both sides extract (the importer through TMPDIR). A tmpfs by default, so that the
    # figures are the tools' own cost and not the disk's (on a shared VM disk, writeback and
    # deletes of 300 MB trees swamp the difference); give a disk directory to include it.
    [string]$ExtractRoot = $(if (Test-Path /dev/shm) { '/dev/shm' } else { [IO.Path]::GetTempPath() })
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

function Get-Median([double[]]$Values) {
    $s = @($Values | Sort-Object)
    if ($s.Count % 2) { $s[[int][Math]::Floor($s.Count / 2)] } else { ($s[$s.Count / 2 - 1] + $s[$s.Count / 2]) / 2 }
}

$WorkRoot = Join-Path $ExtractRoot "melange-bench-import-$PID"
$null = New-Item -ItemType Directory -Force -Path $WorkRoot
$savedTmp = $env:TMPDIR
$env:TMPDIR = $WorkRoot
try {
    foreach ($path in $Layer) {
        $head = [byte[]]::new(4)
        $fs = [IO.File]::OpenRead($path); $null = $fs.Read($head, 0, 4); $fs.Dispose()
        $format = if ($head[0] -eq 0x1F -and $head[1] -eq 0x8B) { 'gzip' } elseif ($head[0] -eq 0x28 -and $head[1] -eq 0xB5) { 'zstd' } else { throw "Not gzip or zstd: $path" }
        [string[]]$tarArgs = if ($format -eq 'gzip') { @('-xzf') } else { @('--zstd', '-xf') }

        $runTar = {
            $dest = Join-Path $WorkRoot 'tar-out'
            $null = New-Item -ItemType Directory -Path $dest
            $sw = [Diagnostics.Stopwatch]::StartNew()
            & tar @tarArgs $path -C $dest
            $sw.Stop()
            if ($LASTEXITCODE) { throw "tar failed ($LASTEXITCODE)" }
            & rm -rf $dest
            $sw.Elapsed.TotalMilliseconds
        }
        $runImport = {
            $sw = [Diagnostics.Stopwatch]::StartNew()
            $img = Import-MelangeImage -Path $path -Runner bubblewrap
            $sw.Stop()
            if (-not $img.Ref.StartsWith($WorkRoot)) { throw "The image went to $($img.Ref), not under $WorkRoot" }
            & rm -rf $img.Ref
            $sw.Elapsed.TotalMilliseconds
        }

        $null = & $runImport; $null = & $runTar
        $mod = [Collections.Generic.List[double]]::new(); $raw = [Collections.Generic.List[double]]::new()
        for ($r = 0; $r -lt $Rounds; $r++) {
            if ($r % 2 -eq 0) { $mod.Add((& $runImport)); $raw.Add((& $runTar)) }
            else { $raw.Add((& $runTar)); $mod.Add((& $runImport)) }
            Write-Verbose ("{0} round {1}: Import-MelangeImage {2:N0} ms, tar {3:N0} ms" -f $format, $r, $mod[$r], $raw[$r])
        }

        # Peak memory in a fresh process: the whole process's peak (time -v) and the growth
        # over its baseline after the module is loaded (import-memory.ps1).
        [string[]]$pwshArgs = if ([IO.Path]::GetFileName([Environment]::ProcessPath) -eq 'dotnet') { @([Environment]::GetCommandLineArgs()[0]) } else { @() }
        $timeLog = Join-Path $WorkRoot 'time.log'
        $json = & /usr/bin/time -v -o $timeLog ([Environment]::ProcessPath) @pwshArgs -NoProfile -NonInteractive -File (Join-Path $PSScriptRoot 'import-memory.ps1') -Path $path -WarmUpLayer $WarmUpLayer
        if ($LASTEXITCODE) { throw "import-memory.ps1 failed ($LASTEXITCODE): $json" }
        $memory = "$json" | ConvertFrom-Json
        $maxRss = [long](((Get-Content $timeLog | Where-Object { $_ -match 'Maximum resident set size' }) -split ':')[1].Trim())

        $mMed = Get-Median $mod; $rMed = Get-Median $raw
        [pscustomobject]@{
            Benchmark          = "import-$format"
            Format             = $format
            Layer              = $path
            ExtractRoot        = $ExtractRoot
            LayerBytes         = (Get-Item $path).Length
            RawCommand         = "tar $($tarArgs -join ' ') <layer> -C <fresh dir>"
            ModuleMs           = @($mod)
            RawMs              = @($raw)
            ModuleMedian       = $mMed
            RawMedian          = $rMed
            Ratio              = $mMed / $rMed
            ProcessPeakKiB     = $maxRss
            BaselineKiB        = $memory.BaselineKiB
            ImportPeakKiB      = $memory.PeakDuringImportKiB
            GrowthKiB          = $memory.GrowthKiB
        }
    }
} finally {
    $env:TMPDIR = $savedTmp
    Remove-Item -LiteralPath $WorkRoot -Recurse -Force -ErrorAction Ignore
}
