# Invoke-MelangePod's command forms and -Timeout, on both runners.
BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $runners = @(
        @{ Runner = 'bubblewrap'; Skip = -not (Get-Command bwrap -ErrorAction Ignore) }
        @{ Runner = 'qemu'; Skip = -not (Test-MelangeRunner -Name qemu) }
    )
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
}

Describe 'Invoke-MelangePod on <Runner>' -ForEach $runners {
    BeforeAll {
        if ($Skip) { return }
        $script:img = Import-MelangeImage -Path (Get-TestRootfs) -Runner $Runner
        $script:pod = $script:img | Start-MelangePod -Memory 1Gi -Environment @{ GREETING = 'hello' }
    }
    AfterAll {
        if ($script:pod) { $script:pod | Stop-MelangePod }
        if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
    }

    It 'runs one string through /bin/sh -c' -Skip:$Skip {
        $script:pod | Invoke-MelangePod 'echo one && echo "$0" | tr a-z A-Z' | Should -Be @('one', '/BIN/SH')
        $LASTEXITCODE | Should -Be 0
        $script:pod | Invoke-MelangePod -Command 'exit 4' -ErrorAction SilentlyContinue
        $LASTEXITCODE | Should -Be 4
    }

    It 'takes the pod at position 0' -Skip:$Skip {
        Invoke-MelangePod $script:pod 'uname -s' | Should -Be 'Linux'
        Invoke-MelangePod $script:pod uname -s | Should -Be 'Linux'
    }

    It 'passes every word after -- to the command, -v, -e, -i and -c included' -Skip:$Skip {
        $script:pod | Invoke-MelangePod -- ls -v / | Should -Contain 'bin'
        Invoke-MelangePod $script:pod -- grep -e root /etc/passwd | Should -Match '^root:'
        $script:pod | Invoke-MelangePod -- env -i /bin/sh -c 'echo "[$GREETING]"' | Should -Be '[]'
        $script:pod | Invoke-MelangePod -- sh -c 'echo hi' | Should -Be 'hi'
    }

    It 'runs -ArgumentList without a shell, even as one word' -Skip:$Skip {
        $script:pod | Invoke-MelangePod -ArgumentList echo, '$GREETING', '-v' | Should -Be '$GREETING -v'
        $script:pod | Invoke-MelangePod -ArgumentList 'echo a && echo b' -ErrorAction SilentlyContinue -ErrorVariable failed | Should -BeNullOrEmpty
        $failed[0].FullyQualifiedErrorId | Should -BeLike 'CommandFailed,*'
    }

    It 'passes single-letter options to the command where they are written: ls -v, grep -e, env -i, sh -c' -Skip:$Skip {
        $script:pod | Invoke-MelangePod ls -v / | Should -Contain 'bin'
        $script:pod | Invoke-MelangePod grep -e root /etc/passwd | Should -Match '^root:'
        Invoke-MelangePod $script:pod grep -e root -c /etc/passwd | Should -Be '1'
        $script:pod | Invoke-MelangePod env -i /bin/sh -c 'echo "[$GREETING]"' | Should -Be '[]'
        $script:pod | Invoke-MelangePod sh -c 'echo hi' | Should -Be 'hi'
        # PowerShell's values stay in their place between the letters; upper case stays upper case.
        $file = '/etc/passwd'
        $script:pod | Invoke-MelangePod grep -E 'ro+t' $file -c | Should -Be '1'
        $script:pod | Invoke-MelangePod sh -c "echo $file" -v 2>$null | Should -Be '/etc/passwd'
        # -v is not -Verbose: no verbose record is written.
        $verbose = $script:pod | Invoke-MelangePod echo -v 4>&1 | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] }
        $verbose | Should -BeNullOrEmpty
    }

    It 'refuses a longer word that PowerShell would take as its own parameter, instead of running another command' -Skip:$Skip {
        # -Ti abbreviates -Timeout and -Lo -LogGroup: after the command's first word, meant for the command.
        { $script:pod | Invoke-MelangePod sort -Ti 5 /etc/passwd } | Should -Throw -ErrorId 'CommandArgumentTakenByPowerShell,*'
        { $script:pod | Invoke-MelangePod ls -Lo / } | Should -Throw -ErrorId 'CommandArgumentTakenByPowerShell,*'
        # A letter before the command is neither PowerShell's nor the command's.
        { Invoke-MelangePod $script:pod -t 5 sleep 1 } | Should -Throw -ErrorId 'CommandArgumentTakenByPowerShell,*'
        { $script:pod | Invoke-MelangePod -ArgumentList ls -l } | Should -Throw -ErrorId 'CommandArgumentTakenByPowerShell,*'
        # Full names and PowerShell's aliases after the command stay PowerShell's, and so does an
        # abbreviation before it.
        $script:pod | Invoke-MelangePod 'echo ok' -ErrorAction Stop -vb 4>$null | Should -Be 'ok'
        Invoke-MelangePod $script:pod -Ti 30 echo ok | Should -Be 'ok'
    }

    It 'ends a command that runs past -Timeout, with its process tree, and the pod stays usable' -Skip:$Skip {
        $marker = "mrtimeout$([guid]::NewGuid().ToString('n').Substring(0, 8))"
        $watch = [Diagnostics.Stopwatch]::StartNew()
        $out = $script:pod | Invoke-MelangePod -Timeout 2 "echo started; sleep 60 & sleep 61; : $marker" -ErrorAction SilentlyContinue -ErrorVariable timedOut
        $elapsed = $watch.Elapsed.TotalSeconds
        $out | Should -Be 'started'
        $timedOut.Count | Should -Be 1
        $timedOut[0].FullyQualifiedErrorId | Should -BeLike 'CommandTimedOut,*'
        $timedOut[0].CategoryInfo.Category | Should -Be 'OperationTimeout'
        $timedOut[0].Exception.Message | Should -Match '00:00:02'
        $timedOut[0].TargetObject | Should -Be $script:pod
        $LASTEXITCODE | Should -Be 124
        $elapsed | Should -BeGreaterOrEqual 2
        $elapsed | Should -BeLessThan 8 -Because "the step is ended at 2 s, not after its 60 s sleep (the rest is the kill, over SSH for qemu, on a loaded host)"
        if ($Runner -eq 'bubblewrap') {
            Wait-Until { -not (Get-ProcessByMarker $marker) } -TimeoutSeconds 5 -Because 'the sandbox tree to be gone'
        }
        # Nothing of the step is left in the pod (the background sleep 60 included), and the next command runs.
        Wait-Until { -not ($script:pod | Invoke-MelangePod 'ps -o args 2>/dev/null || ps' | Where-Object { $_ -match 'sleep 6[01]' }) } -TimeoutSeconds 8 -Because 'the step''s processes to end'
        $script:pod | Invoke-MelangePod 'echo again' | Should -Be 'again'
    }

    It 'takes -Timeout as a TimeSpan and lets a quick command finish' -Skip:$Skip {
        $script:pod | Invoke-MelangePod -Timeout ([TimeSpan]::FromSeconds(30)) 'echo quick' | Should -Be 'quick'
        $LASTEXITCODE | Should -Be 0
        { $script:pod | Invoke-MelangePod -Timeout '00:00:01' 'sleep 10' -ErrorAction Stop } | Should -Throw -ErrorId 'CommandTimedOut,*'
        { $script:pod | Invoke-MelangePod -Timeout -1 'true' } | Should -Throw -ErrorId 'InvalidTimeout,*'
    }
}
