# qemu pods restored from a booted template (QEMU_USE_TEMPLATE=1, docs/microvm.md#templates): built on
# first use and reused, rebuilt when corrupt or when its inputs change, the cold-boot fallbacks, the
# isolation of two pods of one template (host keys, boot_id, the first RNG read, clocks), a build in a
# restored pod, and kill -9 / Ctrl+C during a restore or a template build leave nothing behind.
# Real VMs, at most two of this file's at once.

BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $noQemu = -not (Test-MelangeRunner -Name qemu)
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    if (Test-MelangeRunner -Name qemu) {
        $script:img = Import-MelangeImage -Path (Get-TestRootfs) -Runner qemu
    }
    $script:savedTemplate = $env:QEMU_USE_TEMPLATE
    $env:QEMU_USE_TEMPLATE = '1'
    $script:templates = Join-Path (Get-MelangeCacheRoot) 'template'

    # Starts a pod with -Verbose captured: the pod, the verbose lines, the start path line(s) and the template key.
    function Start-TemplatePod {
        param([hashtable]$Parameters = @{})
        $verbose = [Collections.Generic.List[string]]::new()
        $p = @{ Memory = '1Gi'; Cpu = 2 }
        foreach ($k in $Parameters.Keys) { $p[$k] = $Parameters[$k] }
        $pod = $script:img | Start-MelangePod @p -Verbose 4>&1 | ForEach-Object {
            if ($_ -is [Management.Automation.VerboseRecord]) { $verbose.Add($_.Message) } else { $_ }
        }
        $path = ($verbose | Where-Object { $_ -like 'qemu: start path:*' }) -join ' | '
        $key = if ($path -match 'template ([0-9a-f]{24})') { $Matches[1] }
        [pscustomobject]@{ Pod = $pod; Verbose = $verbose; Path = $path; Key = $key }
    }
    function Invoke-Control($Pod, [string]$Command) {
        $r = $Pod.ControlClient.Run($Command)
        $r.ExitCode | Should -Be 0 -Because "$Command said $($r.Error)"
        $r.Output.Trim()
    }
}

AfterAll {
    $env:QEMU_USE_TEMPLATE = $script:savedTemplate
    if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
}

Describe 'Pods from a template' -Skip:$noQemu {
    BeforeAll {
        $script:ws = Join-Path $TestDrive 'ws'
        $null = New-Item -ItemType Directory -Force $script:ws
        Set-Content (Join-Path $script:ws 'hello.c') '#include <stdio.h>
int main(void) { puts("compiled in a restored pod"); return 0; }'
        Set-Content (Join-Path $script:ws 'seed.txt') 'from the host'

        # A: makes sure that a template for these inputs exists; then it is removed, and B builds it anew, C reuses it.
        $a = Start-TemplatePod
        $script:firstPath = $a.Path
        $a.Pod | Stop-MelangePod
        $script:key = $a.Key
        if ($script:key) { Remove-Item -Recurse -Force (Join-Path $script:templates $script:key) -ErrorAction Ignore }
        $script:b = Start-TemplatePod @{ WorkspaceDir = $script:ws }
        $script:c = Start-TemplatePod
    }
    AfterAll {
        foreach ($x in $script:b, $script:c) { if ($x.Pod) { $x.Pod | Stop-MelangePod } }
    }

    It 'restores from a template built on first use, then reuses it' {
        $script:firstPath | Should -Match 'restore from template [0-9a-f]{24}'
        $script:b.Path | Should -Match "restore from template $($script:key) \(built for this start"
        $script:b.Verbose | Should -Contain "qemu: template $($script:key): building (no template was built for these inputs yet)"
        $script:c.Path | Should -Match "restore from template $($script:key) \(reused"
        $script:b.Pod.State | Should -Be 'Running'
        $script:c.Pod.State | Should -Be 'Running'
    }

    It 'keeps the template read-only, with a manifest of its key and sha256s, and unchanged by its pods' {
        $dir = Join-Path $script:templates $script:key
        foreach ($f in 'ram', 'state', 'initramfs.cpio', 'manifest.json') {
            (& stat -c %a (Join-Path $dir $f)) | Should -Be '444'
        }
        $m = Get-Content -Raw (Join-Path $dir 'manifest.json') | ConvertFrom-Json
        $m.Key | Should -Be $script:key
        $m.StateSha256 | Should -Be (Get-FileHash -Algorithm SHA256 (Join-Path $dir 'state')).Hash.ToLowerInvariant()
        # The pods run and write (their keys, their RAM): MAP_PRIVATE keeps all of it out of the file.
        $ramBefore = (Get-FileHash -Algorithm SHA256 (Join-Path $dir 'ram')).Hash
        foreach ($x in $script:b, $script:c) { $null = Invoke-Control $x.Pod 'dd if=/dev/urandom of=/dev/shm/fill bs=1M count=32 2>/dev/null && rm /dev/shm/fill' }
        $pub = (Invoke-Control $script:b.Pod 'cut -d" " -f2 /etc/ssh/ssh_host_ed25519_key.pub')
        & grep -q -a -F $pub (Join-Path $dir 'ram')
        $LASTEXITCODE | Should -Be 1 -Because 'the pod''s host key is not in the template''s RAM file'
        (Get-FileHash -Algorithm SHA256 (Join-Path $dir 'ram')).Hash | Should -Be $ramBefore
        $m.RamSha256 | Should -Match '^[0-9a-f]{64}$'
    }

    It 'gives two pods of one template different host keys, boot ids and first RNG reads' {
        $keys = foreach ($x in $script:b, $script:c) { Invoke-Control $x.Pod 'cat /etc/ssh/ssh_host_ed25519_key.pub' }
        $keys[0] | Should -Match '^ssh-ed25519 '
        $keys[0] | Should -Not -Be $keys[1]
        $boot = foreach ($x in $script:b, $script:c) { Invoke-Control $x.Pod 'cat /proc/sys/kernel/random/boot_id' }
        $boot[0] | Should -Match '^[0-9a-f-]{36}$'
        $boot[0] | Should -Not -Be $boot[1]
        # The first read of /dev/urandom after the restore (by the init, right after the kernel's
        # vmgenid reseed): later samples would differ even with a shared CRNG state.
        $first = foreach ($x in $script:b, $script:c) { Invoke-Control $x.Pod 'cat /run/melange-first-random' }
        $first[0] | Should -Match '^[0-9a-f]{2}( [0-9a-f]{2}){15}$'
        $first[0] | Should -Not -Be $first[1]
        foreach ($x in $script:b, $script:c) {
            Invoke-Control $x.Pod 'dmesg' | Should -Match 'crng reseeded due to virtual machine fork'
        }
    }

    It 'sets the clock of each pod to the host''s, and it keeps time' {
        foreach ($x in $script:b, $script:c) {
            $before = [DateTimeOffset]::UtcNow.ToUnixTimeMilliseconds() / 1000
            $guest = [double](Invoke-Control $x.Pod 'date +%s')
            $after = [DateTimeOffset]::UtcNow.ToUnixTimeMilliseconds() / 1000
            $guest | Should -BeGreaterOrEqual ([math]::Floor($before) - 1)
            $guest | Should -BeLessOrEqual ([math]::Ceiling($after) + 1)
        }
        # Drift over ~10 s of guest time: the guest's elapsed wall clock against the host's.
        $h0 = [DateTimeOffset]::UtcNow.ToUnixTimeMilliseconds() / 1000
        $out = Invoke-Control $script:b.Pod 'date +%s; sleep 10; date +%s'
        $h1 = [DateTimeOffset]::UtcNow.ToUnixTimeMilliseconds() / 1000
        $g = $out -split '\s+' | ForEach-Object { [double]$_ }
        ($g[1] - $g[0]) | Should -BeLessOrEqual ([math]::Ceiling($h1 - $h0) + 1)
        ($g[1] - $g[0]) | Should -BeGreaterOrEqual 9
    }

    It 'runs a build in a restored pod: copy-in, a step (a C compile where the image has a compiler), export' {
        $pod = $script:b.Pod
        $pod | Invoke-MelangePod -Command sh, -c, 'mkdir -p melange-out && o=melange-out/out.txt && cat seed.txt > $o && if command -v cc >/dev/null; then cc -o hello hello.c && ./hello >> $o; else echo "no compiler in the image" >> $o; fi && uname -r >> $o' | Out-Null
        $out = Join-Path $TestDrive 'export'
        $pod | Export-MelangeWorkspace -Destination $out | Out-Null
        $text = Get-Content (Join-Path $out 'melange-out/out.txt')
        $text[0] | Should -Be 'from the host'
        $text[1] | Should -Match 'compiled in a restored pod|no compiler in the image'
        $text[2] | Should -Match '^\d+\.\d+'
    }
}

Describe 'The cold-boot fallbacks and rebuilds' -Skip:$noQemu {
    It 'cold-boots a virtiofs pod, saying why' {
        $saved = $env:QEMU_USE_VIRTIOFS
        $env:QEMU_USE_VIRTIOFS = '1'
        try {
            $x = Start-TemplatePod @{ CacheDir = (New-Item -ItemType Directory -Force (Join-Path $TestDrive 'cache')).FullName }
            try {
                $x.Path | Should -Match 'cold boot \(the cache goes over virtiofs'
                $x.Pod.State | Should -Be 'Running'
            } finally { $x.Pod | Stop-MelangePod }
        } finally { $env:QEMU_USE_VIRTIOFS = $saved }
    }

    It 'cold-boots when QEMU_USE_TEMPLATE is not set' {
        $env:QEMU_USE_TEMPLATE = $null
        try {
            $x = Start-TemplatePod
            try { $x.Path | Should -Be 'qemu: start path: cold boot (QEMU_USE_TEMPLATE is not set)' } finally { $x.Pod | Stop-MelangePod }
        } finally { $env:QEMU_USE_TEMPLATE = '1' }
    }

    It 'rebuilds a corrupt template, and cold-boots (and discards it) when a template fails to restore' {
        $x = Start-TemplatePod
        $x.Pod | Stop-MelangePod
        $dir = Join-Path $script:templates $x.Key
        # Truncated state: caught by the cheap check at start, rebuilt.
        & chmod 0644 (Join-Path $dir 'state'); [IO.File]::WriteAllBytes((Join-Path $dir 'state'), [byte[]]@(1, 2, 3))
        $y = Start-TemplatePod
        $y.Pod | Stop-MelangePod
        $y.Verbose | Should -Contain "qemu: template $($x.Key): building (state is missing or has the wrong size)"
        $y.Path | Should -Match 'built for this start'
        # Garbage of the right size: the restore fails, the pod cold-boots, the template goes.
        $state = Join-Path $dir 'state'
        $len = (Get-Item $state).Length
        & chmod 0644 $state; [IO.File]::WriteAllBytes($state, [byte[]]::new($len)); & chmod 0444 $state
        $z = Start-TemplatePod
        try {
            $z.Path | Should -Match "cold boot \(the restore from template $($x.Key) failed"
            $z.Pod.State | Should -Be 'Running'
            Test-Path $dir | Should -BeFalse
        } finally { $z.Pod | Stop-MelangePod }
    }

    It 'uses another template for another vCPU count (its inputs changed)' {
        $one = Start-TemplatePod @{ Cpu = 1; Memory = '768Mi' }
        try {
            $one.Path | Should -Match 'restore from template [0-9a-f]{24}'
            $one.Key | Should -Not -Be $script:key
            (Invoke-Control $one.Pod 'nproc') | Should -Be '1'
        } finally { $one.Pod | Stop-MelangePod }
    }

    It 'shows the start path in Get-MelangePodPlan without building anything' {
        $plan = $script:img | Get-MelangePodPlan -Memory 1Gi -Cpu 2
        $plan.StartPath | Should -Match '^restore from template [0-9a-f]{24}'
        $env:QEMU_USE_TEMPLATE = $null
        try { ($script:img | Get-MelangePodPlan -Memory 1Gi -Cpu 2).StartPath | Should -Be 'cold boot (QEMU_USE_TEMPLATE is not set)' }
        finally { $env:QEMU_USE_TEMPLATE = '1' }
    }
}

Describe 'Interrupted restores and builds leave nothing behind' -Skip:$noQemu {
    It 'kill -9 of pwsh during a restore ends its qemu and removes its files' {
        $null = Start-TemplatePod | ForEach-Object { $_.Pod | Stop-MelangePod } # the template exists
        # The child's image outlives its kill by design (Get-MelangeImage finds it): keep it in TestDrive.
        $childTmp = (New-Item -ItemType Directory -Force (Join-Path $TestDrive "child-tmp-$([guid]::NewGuid().ToString('n'))")).FullName
        $child = Start-ChildPwsh -TempDirectory $childTmp -Script "`$env:QEMU_USE_TEMPLATE='1'; Import-Module '$($script:ModuleManifest)'; `$i = Import-MelangeImage -Path '$(Get-TestRootfs)' -Runner qemu; `$i | Start-MelangePod -Memory 1Gi -Cpu 2 -Verbose 4>&1 | ForEach-Object { [Console]::Out.WriteLine(`"`$_`"); [Console]::Out.Flush() }"
        try {
            $line = Wait-ChildLine -Process $child -Pattern 'Running: .*-incoming defer'
            $runDir = [regex]::Match($line, '/[^ ,]*melange-restore-[0-9a-f]+').Value
            $disk = [regex]::Match($line, 'file=(/[^ ,]*melange-disk-[0-9a-f]+\.img)').Groups[1].Value
            $runDir | Should -Not -BeNullOrEmpty
            Get-ProcessByMarker $runDir | Should -Not -BeNullOrEmpty
            & kill -9 $child.Id
            Wait-Until { -not (Get-ProcessByMarker $runDir) -and -not (Test-Path $runDir) -and -not (Test-Path $disk) } -TimeoutSeconds 30 -Because 'the reaper to end qemu and remove the run directory and the disk'
        } finally { if (-not $child.HasExited) { $child.Kill($true) } }
    }

    It 'Ctrl+C during a restore ends its qemu and removes its files' {
        $ps = [powershell]::Create()
        try {
            $null = $ps.AddScript({
                    param($img, $manifest) Import-Module $manifest; $env:QEMU_USE_TEMPLATE = '1'; $img | Start-MelangePod -Memory 1Gi -Cpu 2
                }).AddArgument($script:img).AddArgument($script:ModuleManifest)
            $async = $ps.BeginInvoke()
            $qemu = $null
            Wait-Until {
                $script:restoring = Get-ChildQemu | Where-Object { (Get-Content -Raw "/proc/$_/cmdline" -ErrorAction Ignore) -match 'melange-restore-' }
                $script:restoring
            } -TimeoutSeconds 120 -Because 'a restoring qemu'
            $qemu = @($script:restoring)[0]
            $runDir = [regex]::Match(((Get-Content -Raw "/proc/$qemu/cmdline") -replace "`0", ' '), '/[^ ,]*melange-restore-[0-9a-f]+').Value
            $ps.Stop()
            Wait-Until { -not (Test-Path "/proc/$qemu") -and -not (Test-Path $runDir) } -TimeoutSeconds 30 -Because 'qemu to end and the run directory to go'
            $ps.InvocationStateInfo.State | Should -Be 'Stopped'
        } finally { $ps.Dispose() }
    }

    It 'kill -9 of pwsh during a template build ends the template VM and removes the half-built template' {
        # Inputs no other test uses (so the template is built now): 1 vCPU, 640 MiB.
        # The child's image outlives its kill by design (Get-MelangeImage finds it): keep it in TestDrive.
        $childTmp = (New-Item -ItemType Directory -Force (Join-Path $TestDrive "child-tmp-$([guid]::NewGuid().ToString('n'))")).FullName
        $child = Start-ChildPwsh -TempDirectory $childTmp -Script "`$env:QEMU_USE_TEMPLATE='1'; Import-Module '$($script:ModuleManifest)'; `$i = Import-MelangeImage -Path '$(Get-TestRootfs)' -Runner qemu; `$i | Start-MelangePod -Memory 640Mi -Cpu 1 -Verbose 4>&1 | ForEach-Object { [Console]::Out.WriteLine(`"`$_`"); [Console]::Out.Flush() }"
        try {
            $line = Wait-ChildLine -Process $child -Pattern 'Running: .*memory-backend-file.*share=on'
            $tmp = [regex]::Match($line, 'mem-path=(/[^ ,]*\.tmp-[0-9a-f]+)/ram').Groups[1].Value
            $tmp | Should -Not -BeNullOrEmpty
            & kill -9 $child.Id
            Wait-Until { -not (Get-ProcessByMarker $tmp) -and -not (Test-Path $tmp) } -TimeoutSeconds 30 -Because 'the reaper to end the template VM and remove its directory'
        } finally { if (-not $child.HasExited) { $child.Kill($true) } }
    }
}
