# Hard faults in ordinary builds: exports of any shape finish (or stop when asked), steps get
# default signal dispositions, and a cut compressed layer is a clear CorruptImage error.
BeforeDiscovery {
    $noBwrap = -not (Get-Command bwrap -ErrorAction Ignore)
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    if (Get-Command bwrap -ErrorAction Ignore) {
        $script:img = Import-MelangeImage -Path (Get-TestRootfs) -Runner bubblewrap
    }

    if (-not ('MelangeHostileSignals' -as [type])) {
        Add-Type -TypeDefinition @'
using System.Management.Automation;
using System.Threading;
public static class MelangeHostileSignals
{
    // Set when a PowerShell instance writes its first progress record (C#: a scriptblock
    // handler would run on the instance's own thread).
    public static ManualResetEventSlim OnFirstProgress(PSDataCollection<ProgressRecord> collection)
    {
        var signal = new ManualResetEventSlim(false);
        collection.DataAdded += (sender, e) => signal.Set();
        return signal;
    }
}
'@
    }

    # Runs $Script (with $Arguments) in another PowerShell instance that has the module, and
    # gives up after $TimeoutSeconds instead of hanging the test run: a deadlocked engine would
    # not even stop, so the instance is only asked to stop, not waited for.
    function Invoke-Bounded {
        param([scriptblock]$Script, [object[]]$Arguments = @(), [int]$TimeoutSeconds = 90)
        $ps = [powershell]::Create()
        $null = $ps.AddScript('param($m) Import-Module $m; $ErrorActionPreference = "Stop"').AddArgument($script:ModuleManifest).AddStatement()
        $null = $ps.AddScript($Script.ToString())
        foreach ($a in $Arguments) { $null = $ps.AddArgument($a) }
        $async = $ps.BeginInvoke()
        if (-not $async.AsyncWaitHandle.WaitOne([TimeSpan]::FromSeconds($TimeoutSeconds))) {
            $null = $ps.BeginStop($null, $null)
            throw "Did not finish within $TimeoutSeconds s."
        }
        try {
            $out = $ps.EndInvoke($async)
            if ($ps.Streams.Error.Count -gt 0) { throw $ps.Streams.Error[0] }
            $out
        } finally { $ps.Dispose() }
    }

    # relative path -> SHA-256 (and type) of every file and directory under a tree.
    function Get-TreeDigest([string]$Root) {
        Get-ChildItem -LiteralPath $Root -Recurse -Force | Sort-Object FullName | ForEach-Object {
            $rel = [IO.Path]::GetRelativePath($Root, $_.FullName)
            if ($_.PSIsContainer) { "$rel/" } else { "$rel $($_.Length) $((Get-FileHash -LiteralPath $_.FullName -Algorithm SHA256).Hash)" }
        }
    }

    function New-RandomFile([string]$Path, [long]$Size, [int]$Seed) {
        $null = New-Item -ItemType Directory -Force (Split-Path $Path)
        $rng = [Random]::new($Seed)
        $buf = [byte[]]::new([Math]::Min($Size, 1MB))
        $fs = [IO.File]::Create($Path)
        try {
            for ($left = $Size; $left -gt 0; $left -= $n) {
                $n = [int][Math]::Min($left, $buf.Length)
                $rng.NextBytes($buf)
                $fs.Write($buf, 0, $n)
            }
        } finally { $fs.Dispose() }
    }

    # The hex signal sets of /proc/<pid>/status lines ("SigIgn:\t0000000000001000"), as numbers.
    function ConvertFrom-SigLine([string[]]$Lines, [string]$Name) {
        $line = $Lines | Where-Object { $_ -match "^${Name}:\s*[0-9a-f]+$" } | Select-Object -First 1
        $line | Should -Not -BeNullOrEmpty -Because "/proc status has a $Name line"
        [Convert]::ToUInt64(($line -split ':\s*')[1], 16)
    }
}

AfterAll {
    if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
}

Describe 'Export-MelangeWorkspace of any sizes and counts (bubblewrap)' -Skip:$noBwrap {
    BeforeAll {
        $script:ws = Join-Path $TestDrive 'ws'
        $script:pod = $script:img | Start-MelangePod -WorkspaceDir $script:ws
        $script:out = Join-Path $script:ws 'melange-out'
    }
    AfterAll {
        if ($script:pod) { $script:pod | Stop-MelangePod }
    }
    BeforeEach {
        if (Test-Path $script:out) { Remove-Item -Recurse -Force $script:out }
        $null = New-Item -ItemType Directory $script:out
    }

    It 'exports <Name> byte for byte' -TestCases @(
        @{ Name = 'a 10-byte file then a 200 KB file'; Sizes = @(10, 200KB) }
        @{ Name = 'sizes around tar blocks, the pipe buffer and the copy chunk'; Sizes = @(1, 511, 512, 513, (64KB - 1), 64KB, (64KB + 1), (1MB - 1), 1MB, (1MB + 1), 3) }
        @{ Name = '0-byte files between and after others'; Sizes = @(0, 10, 0, 0, 300KB, 0) }
        @{ Name = 'a 50 MB file followed by small ones'; Sizes = @(50MB, 7, 0, 100KB) }
    ) {
        param($Name, $Sizes)
        for ($i = 0; $i -lt $Sizes.Count; $i++) { New-RandomFile (Join-Path $script:out ('pkg/f{0:d3}' -f $i)) $Sizes[$i] $i }
        $dest = Join-Path $TestDrive ("dest-" + [guid]::NewGuid().ToString('N'))
        $dir = Invoke-Bounded { param($pod, $d) $pod | Export-MelangeWorkspace -Destination $d } $script:pod, $dest
        $dir.FullName | Should -Be $dest
        Get-TreeDigest (Join-Path $dest 'melange-out') | Should -Be (Get-TreeDigest $script:out)
    }

    It 'exports thousands of small files byte for byte' {
        $rng = [Random]::new(7)
        for ($i = 0; $i -lt 3000; $i++) {
            $dir = Join-Path $script:out ('pkg/d{0}' -f ($i % 10))
            if ($i -lt 10) { $null = New-Item -ItemType Directory -Force $dir }
            $bytes = [byte[]]::new($rng.Next(0, 700))
            $rng.NextBytes($bytes)
            [IO.File]::WriteAllBytes((Join-Path $dir "f$i"), $bytes)
        }
        $dest = Join-Path $TestDrive 'dest-many'
        $null = Invoke-Bounded { param($pod, $d) $pod | Export-MelangeWorkspace -Destination $d } $script:pod, $dest
        Get-TreeDigest (Join-Path $dest 'melange-out') | Should -Be (Get-TreeDigest $script:out)
    }

    It 'writes the same bytes with -AsTarPath' {
        New-RandomFile (Join-Path $script:out 'pkg/small') 10 1
        New-RandomFile (Join-Path $script:out 'pkg/large') 200KB 2
        $tar = Join-Path $TestDrive 'ws.tar'
        $null = Invoke-Bounded { param($pod, $t) $pod | Export-MelangeWorkspace -AsTarPath $t } $script:pod, $tar
        $x = Join-Path $TestDrive 'untarred'
        $null = New-Item -ItemType Directory $x
        tar -xf $tar -C $x
        $LASTEXITCODE | Should -Be 0
        Get-TreeDigest (Join-Path $x 'melange-out') | Should -Be (Get-TreeDigest $script:out)
    }

    It 'stops within seconds when stopped (Ctrl+C) during a large export, leaving nothing reading the workspace' {
        New-RandomFile (Join-Path $script:out 'pkg/a-small') 10 3
        $big = Join-Path $script:out 'pkg/b-big'
        # 4 GiB, sparse: reading it is fast, and the export cannot finish before the stop.
        $fs = [IO.File]::Create($big); $fs.SetLength(4GB); $fs.Dispose()
        $dest = Join-Path $TestDrive 'dest-stopped'
        $ps = [powershell]::Create()
        $stopped = $false
        try {
            $null = $ps.AddScript({
                    param($pod, $dest, $manifest)
                    Import-Module $manifest
                    $pod | Export-MelangeWorkspace -Destination $dest
                }).AddArgument($script:pod).AddArgument($dest).AddArgument($script:ModuleManifest)
            $exporting = [MelangeHostileSignals]::OnFirstProgress($ps.Streams.Progress)
            $async = $ps.BeginInvoke()
            $exporting.Wait([TimeSpan]::FromSeconds(60)) | Should -BeTrue -Because 'the export reports progress once it moves data'
            $watch = [Diagnostics.Stopwatch]::StartNew()
            $stop = $ps.BeginStop($null, $null)
            $stopped = $stop.AsyncWaitHandle.WaitOne([TimeSpan]::FromSeconds(30))
            $stopped | Should -BeTrue -Because 'Stop() returns'
            $watch.Elapsed.TotalSeconds | Should -BeLessThan 10
            $ps.InvocationStateInfo.State | Should -Be 'Stopped'
            # The producer closed the file it was reading: no task is left behind reading it.
            $open = Get-ChildItem "/proc/$PID/fd" | Where-Object { $_.LinkTarget -eq $big }
            $open | Should -BeNullOrEmpty
        } finally {
            if ($stopped) { $ps.Dispose() } # disposing a pipeline that did not stop would hang here too
            Remove-Item -Force $big
        }
    }
}

Describe 'Signals in a bubblewrap step' -Skip:$noBwrap {
    BeforeAll {
        $script:sws = Join-Path $TestDrive 'sig-ws'
        $script:spod = $script:img | Start-MelangePod -WorkspaceDir $script:sws
    }
    AfterAll {
        if ($script:spod) { $script:spod | Stop-MelangePod }
    }

    It 'ends yes x | head -c 1 and a shell loop writing into a closed pipe (SIGPIPE has its default action)' {
        # busybox yes also stops on the write error; a shell loop only stops through SIGPIPE.
        $script = 'yes x | head -c 1; echo " yes-ended"; while :; do echo y; done 2>/dev/null | head -c 1; echo " loop-ended"'
        $out = Invoke-Bounded { param($pod, $s) $pod | Invoke-MelangePod -Command sh, -c, $s } $script:spod, $script -TimeoutSeconds 60
        $out | Should -Be @('x yes-ended', 'y loop-ended')
    }

    It 'gives the step and its children no ignored and no blocked signal' {
        # The command itself, then a child of a shell (the shell ignores SIGQUIT for itself
        # only, as bash does; its children get what it inherited).
        $own = $script:spod | Invoke-MelangePod -Command cat, /proc/self/status
        $child = $script:spod | Invoke-MelangePod -Command sh, -c, 'cat /proc/self/status; true'
        foreach ($l in @(, $own) + @(, $child)) {
            ConvertFrom-SigLine $l 'SigIgn' | Should -Be 0
            ConvertFrom-SigLine $l 'SigBlk' | Should -Be 0
        }
    }

    It 'gives an interactive step (Enter-MelangePod) default dispositions too' {
        # '; true' keeps busybox sh from exec'ing cat in its own place, with its own SIGQUIT ignore.
        $script:spod | Enter-MelangePod -Command sh, -c, 'cat /proc/self/status > status.txt; true'
        $LASTEXITCODE | Should -Be 0
        $l = Get-Content (Join-Path $script:sws 'status.txt')
        ConvertFrom-SigLine $l 'SigIgn' | Should -Be 0
        ConvertFrom-SigLine $l 'SigBlk' | Should -Be 0
    }

    It 'keeps melange''s bwrap vector in the plan and shows the launcher on -Verbose' {
        $plan = $script:img | Get-MelangePodPlan -Runner bubblewrap -Config (New-MelangePodConfig -WorkspaceDir $script:sws)
        $plan.FileName | Should -Be 'bwrap'
        $plan.Arguments[0] | Should -Be '--bind'
        $verbose = $script:spod | Invoke-MelangePod -Command true -Verbose 4>&1 | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] }
        $line = $verbose.Message | Where-Object { $_ -like 'Running: *' }
        $line | Should -BeLike "Running: /* --default-signal bwrap --bind $($script:img.Ref) / *"
        $launcher = ($line -split ' ')[1]
        & $launcher --default-signal true
        $LASTEXITCODE | Should -Be 0 -Because 'the launcher shown is one that supports --default-signal'
    }
}

Describe 'Import-MelangeImage of a truncated compressed layer' -Skip:$noBwrap {
    BeforeAll {
        # A private temporary directory, so that what an import leaves behind can be counted.
        $script:oldTmp = $env:TMPDIR
        $env:TMPDIR = Join-Path $TestDrive 'tmp'
        $null = New-Item -ItemType Directory $env:TMPDIR
        $script:layers = Join-Path $TestDrive 'layers'
        $null = New-Item -ItemType Directory $script:layers
        $tar = Join-Path $script:layers 'rootfs.tar'
        sh -c 'gzip -dc "$1" > "$2"' sh (Get-TestRootfs) $tar
        foreach ($c in @(@('gz', 'gzip'), @('xz', 'xz'), @('bz2', 'bzip2'), @('zst', 'zstd'))) {
            $full = "$tar.$($c[0])"
            sh -c '"$1" -c -q "$2" > "$3"' sh $c[1] $tar $full
            $LASTEXITCODE | Should -Be 0
            $bytes = [IO.File]::ReadAllBytes($full)
            [IO.File]::WriteAllBytes((Join-Path $script:layers "cut.tar.$($c[0])"), $bytes[0..([int]($bytes.Length * 0.6))])
        }
    }
    AfterAll {
        $env:TMPDIR = $script:oldTmp
    }

    It 'imports the whole .tar.<Ext> and refuses the cut one as CorruptImage (InvalidData), leaving no image directory' -TestCases @(
        @{ Ext = 'gz' }, @{ Ext = 'xz' }, @{ Ext = 'bz2' }, @{ Ext = 'zst' }
    ) {
        param($Ext)
        $whole = Import-MelangeImage -Path (Join-Path $script:layers "rootfs.tar.$Ext") -Runner bubblewrap
        $whole.SourceKind | Should -Be "layer-tar+$(@{ gz = 'gzip'; xz = 'xz'; bz2 = 'bzip2'; zst = 'zstd' }[$Ext])"
        $whole | Remove-MelangeImage -Confirm:$false
        $before = @(Get-ChildItem $env:TMPDIR).Count

        $cut = Join-Path $script:layers "cut.tar.$Ext"
        Import-MelangeImage -Path $cut -Runner bubblewrap -ErrorVariable errs -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
        $errs.Count | Should -Be 1
        $errs[0].FullyQualifiedErrorId | Should -BeLike 'CorruptImage,*'
        $errs[0].CategoryInfo.Category | Should -Be 'InvalidData'
        $errs[0].Exception.Message | Should -BeLike '*corrupt or truncated*'
        @(Get-ChildItem $env:TMPDIR).Count | Should -Be $before
    }
}
