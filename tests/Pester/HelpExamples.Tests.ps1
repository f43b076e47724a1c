# Help a user finds (issue 9, item 5): every help example runs as written, the about topic
# exists, every cmdlet has a HelpUri, and the manifest has ProjectUri and ReleaseNotes.
#
# The examples are read from docs/cmdlets/*.md, the source of Get-Help's text, because there the
# code (```powershell) and the sample output (```) are apart; each one is checked to be what
# Get-Help shows. Each runs in a fresh runspace, in a fresh directory, with the variables the
# pages assume ($img, $images, $pod, $pods) made only when the code uses them without setting
# them, and with the files they name (./rootfs.tar.gz, ./ws, ./src, an OCI layout, ...).
# An example passes when it neither throws nor writes to the error stream. Examples that
# cannot run here are skipped with the reason shown, never silently: a VM where qemu is not
# usable, an interactive terminal, docker and the network.

BeforeDiscovery {
    $docs = Join-Path $PSScriptRoot ../../docs/cmdlets
    $examples = foreach ($page in Get-ChildItem $docs -Filter '*-*.md' | Sort-Object Name) {
        $text = (Get-Content -Raw -LiteralPath $page.FullName) -replace "`r`n", "`n"
        $section = [regex]::Match($text, '(?ms)^## EXAMPLES\n(.*?)^## PARAMETERS').Groups[1].Value
        $number = 0
        foreach ($part in [regex]::Split($section, '(?m)^### ') | Select-Object -Skip 1) {
            $number++
            $title = ($part -split "`n", 2)[0].Trim()
            $blocks = @([regex]::Matches($part, '(?ms)^```powershell\n(.*?)^```') | ForEach-Object { $_.Groups[1].Value.TrimEnd() })
            $code = $blocks -join "`n"
            $skip = if ($code -match 'Enter-MelangePod') { 'it needs an interactive terminal (Enter-MelangePod is tested under a PTY by its own tests)' }
            elseif ($code -match '(?m)^\s*docker ') { 'it needs docker and the network (docker save of a registry image)' }
            @{
                Cmdlet = $page.BaseName; Number = $number; Title = $title; Code = $code; FirstBlock = $blocks[0]
                NeedsQemu = [bool]($code -match '\bqemu\b|New-MelangeInitramfs'); Skip = $skip
            }
        }
    }
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $script:Rootfs = Get-TestRootfs
    $script:OldTmp = $env:TMPDIR
    $script:Tmp = (New-Item -ItemType Directory -Force (Join-Path ([IO.Path]::GetTempPath()) "melange-examples-$PID")).FullName
    $script:QemuUsable = Test-MelangeRunner qemu
    $script:QemuReason = (Get-MelangeRunner qemu).Reason


    # The files the pages name, in a fresh directory per example.
    function New-ExampleDirectory {
        $dir = New-Item -ItemType Directory (Join-Path $script:Tmp ([guid]::NewGuid().ToString('n')))
        Copy-Item $script:Rootfs (Join-Path $dir 'rootfs.tar.gz')
        sh -c "gzip -dc '$($script:Rootfs)' | zstd -q -o '$dir/downloaded-layer.tar.zst'"
        # An index that offers the busybox layer for linux/arm64 (the example only imports it).
        $null = New-OciLayout (Join-Path $dir 'wolfi-base-oci') @('PATH=/usr/bin:/bin') -Architecture arm64 -Layer $script:Rootfs -Platform
        foreach ($d in 'ws', 'ws/build', 'src', 'staging', 'pipeline/apk-cache') { $null = New-Item -ItemType Directory -Force (Join-Path $dir $d) }
        # A build script and the logs Export-MelangeWorkspace -ExtraFile names, as a real workspace has them.
        Set-Content (Join-Path $dir 'ws/build.sh') "#!/bin/sh`nmkdir -p melange-out/pkg && echo built > melange-out/pkg/file"
        Set-Content (Join-Path $dir 'ws/configure') "#!/bin/sh`necho configured > config.log"
        chmod +x (Join-Path $dir 'ws/build.sh') (Join-Path $dir 'ws/configure')
        Set-Content (Join-Path $dir 'ws/config.log') 'configure log'
        Set-Content (Join-Path $dir 'ws/build/test-suite.log') 'tests passed'
        $dir.FullName
    }

    # Runs an example in a new runspace; returns the errors it wrote or threw.
    function Invoke-Example([string]$Code, [bool]$Qemu, [string]$Dir, [int]$TimeoutSeconds) {
        $runner = if ($Qemu) { 'qemu' } else { 'bubblewrap' }
        # Only what the example uses before it sets it itself.
        $uses = { param($name) $Code -match "\`$$name\b" -and $Code -notmatch "(?m)^\s*\`$$name\s*=" }
        $prelude = @(
            if ((& $uses 'img') -or (& $uses 'images') -or (& $uses 'pod') -or (& $uses 'pods')) {
                "`$img = Import-MelangeImage ./rootfs.tar.gz $runner"
                # make, for the examples that build: the busybox image has none.
                if (-not $Qemu) { 'Set-Content -LiteralPath (Join-Path $img.Ref usr/bin/make) "#!/bin/sh`necho make `$*"; chmod +x (Join-Path $img.Ref usr/bin/make)' }
            }
            if (& $uses 'images') { '$images = @($img)' }
            if (& $uses 'pod') { '$pod = $img | Start-MelangePod -WorkspaceDir ./ws' }
            if (& $uses 'pods') { '$pods = @($img | Start-MelangePod) + @($img | Start-MelangePod)' }
        ) -join "`n"
        $env:BUILD_ARTIFACTSTAGINGDIRECTORY = Join-Path $Dir 'staging'
        $env:BUILD_SOURCESDIRECTORY = Join-Path $Dir 'ws'
        $env:PIPELINE_WORKSPACE = Join-Path $Dir 'pipeline'
        $ps = [powershell]::Create()
        try {
            $null = $ps.AddScript("Import-Module '$($script:ModuleManifest)'; Set-Location -LiteralPath '$Dir'; `$ErrorActionPreference = 'Continue'").AddStatement()
            $null = $ps.AddScript($prelude + "`n" + $Code)
            $out = [System.Management.Automation.PSDataCollection[psobject]]::new()
            $async = $ps.BeginInvoke([System.Management.Automation.PSDataCollection[psobject]]::new(), $out)
            $thrown = $null
            if (-not $async.AsyncWaitHandle.WaitOne([TimeSpan]::FromSeconds($TimeoutSeconds))) {
                $ps.Stop()
                $thrown = "the example did not finish within $TimeoutSeconds s"
            } else {
                try { $null = $ps.EndInvoke($async) } catch { $thrown = $_.Exception.InnerException ?? $_.Exception }
            }
            @(@($thrown | Where-Object { $_ }) + @($ps.Streams.Error) | ForEach-Object { "$_" })
        } finally {
            $ps.Runspace.Dispose()   # closing it stops the pods it started
            $ps.Dispose()
        }
    }
}

AfterAll {
    $env:TMPDIR = $script:OldTmp
    Remove-Item Env:BUILD_ARTIFACTSTAGINGDIRECTORY, Env:BUILD_SOURCESDIRECTORY, Env:PIPELINE_WORKSPACE -ErrorAction Ignore
    Remove-Item -Recurse -Force $script:Tmp -ErrorAction Ignore
}

Describe 'Help example <Cmdlet> #<Number>: <Title>' -ForEach $examples {
    BeforeAll {
        # The process environment is shared: examples set variables ($env:TESTING, QEMU_BASE_INITRAMFS).
        $script:SavedEnv = [Environment]::GetEnvironmentVariables()
        $env:TMPDIR = $script:Tmp
    }
    AfterAll {
        # Whatever the example left: its images (in the private TMPDIR) and the environment.
        Get-MelangeImage | Remove-MelangeImage -Confirm:$false -ErrorAction SilentlyContinue
        foreach ($name in @([Environment]::GetEnvironmentVariables().Keys)) { if (-not $script:SavedEnv.Contains($name)) { [Environment]::SetEnvironmentVariable($name, $null) } }
        foreach ($e in $script:SavedEnv.GetEnumerator()) { [Environment]::SetEnvironmentVariable($e.Key, $e.Value) }
    }

    It 'is the code Get-Help shows' {
        $help = (Get-Help $Cmdlet -Full).examples.example[$Number - 1]
        ("$($help.code)" -replace "`r`n", "`n").StartsWith($FirstBlock.Trim()) | Should -BeTrue -Because "Get-Help $Cmdlet example $Number should show the page's code"
    }

    It 'runs as written' {
        if ($Skip) { Set-ItResult -Skipped -Because $Skip; return }
        if ($NeedsQemu -and -not $script:QemuUsable) { Set-ItResult -Skipped -Because "it needs the qemu runner, not usable here: $($script:QemuReason)"; return }
        $dir = New-ExampleDirectory
        $errors = Invoke-Example -Code $Code -Qemu $NeedsQemu -Dir $dir -TimeoutSeconds $(if ($NeedsQemu) { 600 } else { 120 })
        $errors | Should -BeNullOrEmpty -Because "docs/cmdlets/$Cmdlet.md example $Number must run as written"
    }
}

Describe 'Help a user finds' {
    It 'Get-Help about_MelangeRunner shows the topic, with concepts, runners, environment variables, cleanup and Azure Pipelines' {
        $topic = Get-Help about_MelangeRunner | Out-String
        foreach ($word in 'CONCEPTS', 'RUNNERS', 'ENVIRONMENT VARIABLES', 'CLEANUP GUARANTEES', 'AZURE PIPELINES', 'QEMU_KERNEL_IMAGE', 'MELANGE_QEMU_ACCELERATOR', 'TESTING', 'Get-MelangePod', 'Get-MelangeImage') {
            $topic | Should -Match ([regex]::Escape($word))
        }
        Test-Path -LiteralPath (Join-Path (Get-Module MelangeRunner).ModuleBase 'en-US/about_MelangeRunner.help.txt') | Should -BeTrue
    }

    It 'every cmdlet has a HelpUri to its page, under the manifest''s ProjectUri' {
        $project = (Import-PowerShellDataFile $script:ModuleManifest).PrivateData.PSData.ProjectUri
        $project | Should -Match '^https://'
        foreach ($c in Get-Command -Module MelangeRunner -CommandType Cmdlet) {
            $c.HelpUri | Should -Be "$project/blob/main/docs/cmdlets/$($c.Name).md" -Because "$($c.Name) needs HelpUri"
        }
    }

    It 'the manifest has ReleaseNotes and exports the discovery cmdlets' {
        $data = Import-PowerShellDataFile $script:ModuleManifest
        $data.PrivateData.PSData.ReleaseNotes | Should -Not -BeNullOrEmpty
        $data.CmdletsToExport | Should -Contain 'Get-MelangePod'
        $data.CmdletsToExport | Should -Contain 'Get-MelangeImage'
    }
}
