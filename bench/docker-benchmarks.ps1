<#
.SYNOPSIS
The docker runner (issue 11) against the raw tools, in one run: exec, start and export.

.DESCRIPTION
Against the engine at DOCKER_HOST, else /var/run/docker.sock, with the busybox demo image:

1. exec: -ExecCount x `Invoke-MelangePod true` (this warm session) against the same number of
   `docker exec <id> true` (the CLI, a process per call) and of raw Engine API execs made from
   this process with the same client library (Docker.DotNet.Enhanced, the module's own copy:
   create, start, read to the end, inspect); in alternating blocks of 10, per-call medians.
2. start: `Start-MelangePod -Runner docker` against `docker run -d --network none <image>
   /bin/sh -c <the same keep-alive>` (each removed again); median of -StartRounds alternating.
3. export: 100 MiB in melange-out (100 x 1 MiB of random bytes plus 400 small files):
   `Export-MelangeWorkspace -Destination` against `docker cp <id>:/home/build/melange-out <dir>`;
   median of -ExportRounds alternating, the first of each checked with diff -r.

Rewrites the block between the bench:docker markers of docs/benchmarks.md unless -NoUpdateDoc.
Everything it makes (pods, containers, the image, temporary directories) is removed at the end.
#>
[CmdletBinding()]
param(
    [int]$ExecCount = 50,
    [int]$StartRounds = 5,
    [int]$ExportRounds = 3,
    [switch]$NoUpdateDoc
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest
$ProgressPreference = 'SilentlyContinue'
$root = Split-Path -Parent $PSScriptRoot
Import-Module (Join-Path $root 'MelangeRunner.psd1') -Force
if (-not (Test-MelangeRunner -Name docker)) { throw "No Docker engine answers: $((Get-MelangeRunner -Name docker).Reason)" }
if (-not (Get-Command docker -ErrorAction Ignore)) { throw 'The benchmarks need the docker CLI on PATH.' }

function Get-Median([double[]]$Values) { $s = @($Values | Sort-Object); $n = $s.Count; if ($n % 2) { $s[[int][Math]::Floor($n / 2)] } else { ($s[$n / 2 - 1] + $s[$n / 2]) / 2 } }
function Get-Load { (Get-Content /proc/loadavg) -split ' ' | Select-Object -First 3 | Join-String -Separator ' ' }
function Measure-Seconds([scriptblock]$Block) { $w = [Diagnostics.Stopwatch]::StartNew(); $null = & $Block; $w.Elapsed.TotalSeconds }

$work = (New-Item -ItemType Directory (Join-Path ([IO.Path]::GetTempPath()) "melange-bench-docker-$PID")).FullName
$started = [DateTime]::UtcNow
$loadStart = Get-Load
$rows = [Collections.Generic.List[object]]::new()
$notes = [Collections.Generic.List[string]]::new()
$img = $null; $pod = $null; $client = $null
try {
    $rootfs = Join-Path $work 'rootfs.tar.gz'
    $null = & (Join-Path $root 'tools/New-DemoRootfs.ps1') -OutputPath $rootfs
    $img = Import-MelangeImage -Path $rootfs -Runner docker
    $keepAlive = "[ -x /sbin/ldconfig ] && /sbin/ldconfig /lib || true`nwhile true; do sleep 5; done"
    $pod = Start-MelangePod -Image $img -Runner docker
    $cid = (docker inspect -f '{{.Id}}' $pod.Id)

    # ---- 1. exec -------------------------------------------------------------------------
    # The raw Engine API exec: the module's own Docker.DotNet (in its AssemblyLoadContext), by reflection.
    $alc = [Runtime.Loader.AssemblyLoadContext]::All | Where-Object Name -eq 'MelangeRunner'
    $asm = $alc.Assemblies | Where-Object { $_.GetName().Name -eq 'Docker.DotNet' }
    $endpoint = if ($env:DOCKER_HOST) { $env:DOCKER_HOST } else { 'unix:///var/run/docker.sock' }
    $client = [Activator]::CreateInstance($asm.GetType('Docker.DotNet.DockerClientBuilder')).WithEndpoint([Uri]$endpoint).Build()
    $none = [Threading.CancellationToken]::None
    $createType = $asm.GetType('Docker.DotNet.Models.ContainerExecCreateParameters')
    $startType = $asm.GetType('Docker.DotNet.Models.ContainerExecStartParameters')
    $rawExec = {
        $p = [Activator]::CreateInstance($createType)
        $p.Cmd = [Collections.Generic.List[string]]@('true'); $p.AttachStdout = $true; $p.AttachStderr = $true
        $id = $client.Exec.CreateContainerExecAsync($cid, $p, $none).GetAwaiter().GetResult().ID
        $stream = $client.Exec.StartContainerExecAsync($id, [Activator]::CreateInstance($startType), $none).GetAwaiter().GetResult()
        $null = $stream.ReadOutputToEndAsync($none).GetAwaiter().GetResult(); $stream.Dispose()
        $code = $client.Exec.InspectContainerExecAsync($id, $none).GetAwaiter().GetResult().ExitCode
        if ($code -ne 0) { throw "raw exec exited $code" }
    }
    # Warm-up of each side.
    1..3 | ForEach-Object { $pod | Invoke-MelangePod true; docker exec $cid true; & $rawExec }
    $load0 = Get-Load
    $blocks = [Math]::Max(1, [int]($ExecCount / 10))
    $per = @{ mr = @(); cli = @(); api = @() }
    for ($b = 0; $b -lt $blocks; $b++) {
        $per.mr += (Measure-Seconds { for ($i = 0; $i -lt 10; $i++) { $pod | Invoke-MelangePod true } }) / 10
        $per.cli += (Measure-Seconds { for ($i = 0; $i -lt 10; $i++) { docker exec $cid true } }) / 10
        $per.api += (Measure-Seconds { for ($i = 0; $i -lt 10; $i++) { & $rawExec } }) / 10
    }
    $mr = Get-Median $per.mr; $cli = Get-Median $per.cli; $api = Get-Median $per.api
    $load1 = Get-Load
    $rows.Add([pscustomobject]@{ What = "exec: $($blocks * 10) x ``Invoke-MelangePod true`` vs ``docker exec <id> true`` (CLI; per call, blocks of 10 alternating)"; Mine = $mr; Raw = $cli; Unit = 'ms'; Load = "$load0 → $load1" })
    $rows.Add([pscustomobject]@{ What = "exec: ``Invoke-MelangePod true`` vs a raw Engine API exec from the same client in this process (create, start, read, inspect)"; Mine = $mr; Raw = $api; Unit = 'ms'; Load = "$load0 → $load1" })
    $notes.Add(("Exec per call in each block of 10 (ms): Invoke-MelangePod {0}; docker exec {1}; raw API {2}." -f (($per.mr | ForEach-Object { '{0:N1}' -f ($_ * 1000) }) -join ', '), (($per.cli | ForEach-Object { '{0:N1}' -f ($_ * 1000) }) -join ', '), (($per.api | ForEach-Object { '{0:N1}' -f ($_ * 1000) }) -join ', ')))

    # ---- 2. start ------------------------------------------------------------------------
    $load0 = Get-Load
    $s = @{ mr = @(); run = @() }
    for ($r = 0; $r -lt $StartRounds; $r++) {
        $p2 = $null
        $s.mr += Measure-Seconds { $script:p2 = Start-MelangePod -Image $img -Runner docker }
        $script:p2 | Stop-MelangePod
        $id = $null
        $s.run += Measure-Seconds { $script:id = docker run -d --network none --label dev.chainguard.melange.bench=1 $img.Ref /bin/sh -c $keepAlive }
        docker rm -f $script:id > $null
    }
    $load1 = Get-Load
    $rows.Add([pscustomobject]@{ What = "start: ``Start-MelangePod -Runner docker`` (create, start, copy the workspace in) vs ``docker run -d --network none <image> /bin/sh -c <keep-alive>`` (median of $StartRounds alternating)"; Mine = (Get-Median $s.mr); Raw = (Get-Median $s.run); Unit = 's'; Load = "$load0 → $load1" })
    $notes.Add(("Start, each round (s): Start-MelangePod {0}; docker run -d {1}." -f (($s.mr | ForEach-Object { '{0:N2}' -f $_ }) -join ', '), (($s.run | ForEach-Object { '{0:N2}' -f $_ }) -join ', ')))

    # ---- 3. export 100 MiB ---------------------------------------------------------------
    $pod | Invoke-MelangePod 'mkdir -p melange-out/big melange-out/small && i=0; while [ $i -lt 100 ]; do head -c 1048576 /dev/urandom > melange-out/big/f$i; i=$((i+1)); done; i=0; while [ $i -lt 400 ]; do echo "small file $i" > melange-out/small/s$i; i=$((i+1)); done; du -sk melange-out' | Out-Null
    $size = [long](($pod | Invoke-MelangePod 'du -sk melange-out | cut -f1'))
    $target = if (Test-Path /dev/shm) { '/dev/shm' } else { $work }
    $load0 = Get-Load
    $e = @{ mr = @(); cp = @() }
    for ($r = 0; $r -lt $ExportRounds; $r++) {
        $d1 = Join-Path $target "mr-bench-$PID-$r"; $d2 = Join-Path $target "cp-bench-$PID-$r"
        $e.mr += Measure-Seconds { $null = $pod | Export-MelangeWorkspace -Destination $d1 }
        $null = New-Item -ItemType Directory $d2
        $e.cp += Measure-Seconds { docker cp "$($cid):/home/build/melange-out" $d2 }
        if ($r -eq 0) { & diff -r (Join-Path $d1 'melange-out') (Join-Path $d2 'melange-out'); if ($LASTEXITCODE) { throw 'The two exports differ.' } }
        Remove-Item -Recurse -Force $d1, $d2
    }
    $load1 = Get-Load
    $rows.Add([pscustomobject]@{ What = "export $([Math]::Round($size / 1024)) MiB (500 files): ``Export-MelangeWorkspace -Destination`` vs ``docker cp <id>:/home/build/melange-out <dir>`` (median of $ExportRounds alternating)"; Mine = (Get-Median $e.mr); Raw = (Get-Median $e.cp); Unit = 's'; Load = "$load0 → $load1" })
    $notes.Add(("Export, each run (s): Export-MelangeWorkspace {0}; docker cp {1}; both into {2}, the first checked with diff -r." -f (($e.mr | ForEach-Object { '{0:N2}' -f $_ }) -join ', '), (($e.cp | ForEach-Object { '{0:N2}' -f $_ }) -join ', '), $target))
}
finally {
    if ($client) { $client.Dispose() }
    if ($pod) { $pod | Stop-MelangePod }
    docker ps -aq --filter label=dev.chainguard.melange.bench=1 | ForEach-Object { docker rm -f $_ > $null }
    if ($img) { $img | Remove-MelangeImage -Confirm:$false }
    Remove-Item -Recurse -Force $work -ErrorAction Ignore
}

$version = (docker version -f '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>$null)
$commit = (git -C $root rev-parse --short HEAD 2>$null)
$table = [Collections.Generic.List[string]]::new()
$table.Add('| measurement | MelangeRunner | raw (same run) | ratio | load (1/5/15 min) |')
$table.Add('| --- | ---: | ---: | ---: | --- |')
foreach ($r in $rows) {
    $fmt = if ($r.Unit -eq 'ms') { { param($v) '{0:N1} ms' -f ($v * 1000) } } else { { param($v) '{0:N2} s' -f $v } }
    $table.Add("| $($r.What) | $(& $fmt $r.Mine) | $(& $fmt $r.Raw) | $('{0:N2}x' -f ($r.Mine / $r.Raw)) | $($r.Load) |")
}
$block = @('<!-- bench:docker:start -->') + $table + @('') +
    @("- Date: $($started.ToString('yyyy-MM-dd HH:mm')) UTC. Machine: $(& nproc) CPUs. Engine: Docker $version at $(if ($env:DOCKER_HOST) { $env:DOCKER_HOST } else { 'unix:///var/run/docker.sock' }). Source measured: commit $commit.",
      "- Load average (1/5/15 min) at start $loadStart, at end $(Get-Load). The machine is shared: compare figures within a run.") +
    ($notes | ForEach-Object { "- $_" }) +
    @("- Whole docker part: $([Math]::Round(([DateTime]::UtcNow - $started).TotalSeconds)) s.", '', 'Reproduce: `dotnet tool restore && dotnet pwsh ./build.ps1 Build && dotnet pwsh bench/docker-benchmarks.ps1`', '<!-- bench:docker:end -->')
$block | Write-Output
if (-not $NoUpdateDoc) {
    $doc = Join-Path $root 'docs/benchmarks.md'
    $text = Get-Content -Raw $doc
    $new = $block -join "`n"
    $pattern = '(?s)<!-- bench:docker:start -->.*<!-- bench:docker:end -->'
    $text = if ($text -match $pattern) { [regex]::Replace($text, $pattern, { $new }) } else {
        $text.TrimEnd() + "`n`n# docker runner benchmarks`n`nThe docker runner (issue 11) against the docker CLI and the raw Engine API, all in one run`n(``bench/docker-benchmarks.ps1``). Ratios are MelangeRunner over the raw side.`n`n## docker: results`n`n" + $new + "`n"
    }
    Set-Content -LiteralPath $doc -Value $text -NoNewline
}
