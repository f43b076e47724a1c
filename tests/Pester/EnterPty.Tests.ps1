BeforeDiscovery {
    # A real terminal: a child pwsh in a tmux pane enters a pod, keys are typed into the pane and
    # the pane is read back. Skipped only where tmux (or the runner) is genuinely absent; CI installs it.
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $noTmux = -not (Get-Command tmux -ErrorAction Ignore)
    $noBwrap = $noTmux -or -not (Get-Command bwrap -ErrorAction Ignore)
    $noQemu = $noTmux -or -not (Test-MelangeRunner -Name qemu) -or -not (Get-Command ssh -ErrorAction Ignore)
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    # The host TERM given to the child pwsh, and a different one in the pod's own environment:
    # the session must show the host's (it describes the real terminal), Invoke the pod's.
    $script:HostTerm = 'xterm-256color'
    $script:PodTerm = 'dumb'

    # Starts a tmux server of its own with one pane running a child pwsh that imports the
    # module, starts a pod on $Runner and enters it; the pane stays readable after it exits.
    function Start-PaneSession {
        param([Parameter(Mandatory)][string]$Runner, [string]$StartArgs = '', [string]$EnterArgs = '')
        # The server's socket lives in TestDrive, so that nothing is left in /tmp/tmux-UID.
        $name = "mr-pty-$(Get-Random)"
        $socket = Join-Path $TestDrive $name
        $child = Join-Path $TestDrive "$name.ps1"
        Set-Content -LiteralPath $child -Value @"
`$ErrorActionPreference = 'Stop'
Import-Module '$($script:ModuleManifest)'
`$img = Import-MelangeImage -Path '$(Get-TestRootfs)' -Runner $Runner
`$pod = `$img | Start-MelangePod $StartArgs -Environment @{ TERM = '$($script:PodTerm)' }
try {
    Write-Host 'MR-READY'
    `$pod | Enter-MelangePod $EnterArgs
    Write-Host "MR-RC=`$LASTEXITCODE"
    & stty -a
    Write-Host "MR-INVOKE-TERM=`$(`$pod | Invoke-MelangePod -Command sh, -c, 'echo `$TERM')"
} finally {
    `$pod | Stop-MelangePod
    `$img | Remove-MelangeImage -Confirm:`$false
    Write-Host 'MR-DONE'
}
"@
        $pwsh = [Environment]::ProcessPath
        $argv = @($pwsh)
        if ([IO.Path]::GetFileName($pwsh) -eq 'dotnet') { $argv += Join-Path $PSHOME 'pwsh.dll' }
        $argv += '-NoProfile', '-File', $child
        & tmux -S $socket -f /dev/null new-session -d -s pty -x 100 -y 30 env "TERM=$($script:HostTerm)" @argv
        if ($LASTEXITCODE) { throw "tmux new-session failed ($LASTEXITCODE)" }
        & tmux -S $socket set-option -t pty remain-on-exit on
        $socket
    }

    # The whole pane, history included, with each line's padding removed.
    function Get-Pane([string]$Socket) { ((& tmux -S $Socket capture-pane -p -J -S - -E - -t pty) | ForEach-Object TrimEnd) -join "`n" }

    # Polls the pane until a line matches $Pattern and returns the match, or fails with what the pane shows.
    function Wait-Pane {
        param([string]$Socket, [string]$Pattern, [int]$TimeoutSeconds = 60)
        $deadline = [DateTime]::UtcNow.AddSeconds($TimeoutSeconds)
        while ($true) {
            $pane = Get-Pane $Socket
            $m = [regex]::Match($pane, "(?m)$Pattern")
            if ($m.Success) { return $m }
            # The child has finished: what is not there yet never will be.
            if ($pane -match '(?m)^MR-DONE$') { throw "No line matching '$Pattern'; the child has ended. The pane shows:`n$pane" }
            if ([DateTime]::UtcNow -gt $deadline) { throw "No line matching '$Pattern' within $TimeoutSeconds s; the pane shows:`n$pane" }
            Start-Sleep -Milliseconds 100
        }
    }

    function Send-Line([string]$Socket, [string]$Line) { & tmux -S $Socket send-keys -t pty -l $Line; & tmux -S $Socket send-keys -t pty Enter }

    function Get-WindowSize([string]$Socket) { (& tmux -S $Socket display-message -p -t pty '#{window_height} #{window_width}').Trim() }

    # The checks shared by both runners, up to the exit: a PTY, TERM, the size, a resize, the exit status, the terminal restored.
    function Assert-PtySession {
        param([string]$Socket, [int]$ReadyTimeout)
        $null = Wait-Pane $Socket '^MR-READY$' -TimeoutSeconds $ReadyTimeout
        Send-Line $Socket 'echo "MR-TTY=$(tty)"; echo "MR-FD0=$(readlink /proc/self/fd/0)"; echo "MR-TERM=$TERM"; echo "MR-SIZE=$(stty size)"'
        $tty = (Wait-Pane $Socket '^MR-TTY=(\S+)$' 120).Groups[1].Value
        $fd0 = (Wait-Pane $Socket '^MR-FD0=(\S*)$').Groups[1].Value
        (Wait-Pane $Socket '^MR-TERM=(\S*)$').Groups[1].Value | Should -Be $script:HostTerm
        (Wait-Pane $Socket '^MR-SIZE=(.*)$').Groups[1].Value | Should -Be (Get-WindowSize $Socket)

        & tmux -S $Socket resize-window -t pty -x 90 -y 25
        $resized = Get-WindowSize $Socket
        $resized | Should -Be '25 90'
        Send-Line $Socket 'echo "MR-RESIZED=$(stty size)"'
        (Wait-Pane $Socket '^MR-RESIZED=(.*)$').Groups[1].Value | Should -Be $resized

        # The program leaves its terminal raw without echo: the host's must come back as it was.
        Send-Line $Socket 'stty raw -echo; exit 7'
        $null = Wait-Pane $Socket '^MR-RC=7$'
        $null = Wait-Pane $Socket '^MR-DONE$' 120
        $pane = Get-Pane $Socket
        $pane | Should -Match '(?m)(^|\s)icanon(\s|;|$)' -Because 'stty -a after the session shows canonical mode'
        $pane | Should -Match '(?m)(^|\s)echo(\s|;|$)' -Because 'stty -a after the session shows echo on'
        $pane | Should -Match "(?m)^MR-INVOKE-TERM=$($script:PodTerm)$" -Because 'Invoke-MelangePod keeps the pod''s own TERM'
        [pscustomobject]@{ Tty = $tty; Fd0 = $fd0 }
    }
}

Describe 'Enter-MelangePod on a terminal, bubblewrap' -Skip:$noBwrap {
    AfterEach { if ($script:socket) { & tmux -S $script:socket kill-server 2>$null; $script:socket = $null } }

    It 'runs bwrap on a PTY of its own with the host TERM, the window size and resizes, returns the status and restores the terminal' {
        $script:socket = Start-PaneSession -Runner bubblewrap
        $paneTty = (& tmux -S $script:socket display-message -p -t pty '#{pane_tty}').Trim()
        $seen = Assert-PtySession -Socket $script:socket -ReadyTimeout 120
        # bwrap binds the session's terminal at /dev/console (its /dev/pts is the sandbox's own
        # instance); what it is shows through the descriptor: a new PTY, not the pane's own.
        $seen.Tty | Should -Be '/dev/console'
        $seen.Fd0 | Should -Match '^/dev/pts/\d+$'
        $seen.Fd0 | Should -Not -Be $paneTty -Because 'the sandbox must not share (and so be able to inject into) the caller''s terminal'
    }

    It 'restores the terminal and returns 128+9 when the shell is killed, and Ctrl+C reaches the shell''s job' {
        $script:socket = Start-PaneSession -Runner bubblewrap -EnterArgs '-Verbose'
        $null = Wait-Pane $script:socket '^MR-READY$' -TimeoutSeconds 120
        # -Verbose shows the command run: the launcher, script, and bwrap inside it, still without
        # --new-session. The pipeline thread writes it while the session starts: it may follow the prompt.
        $running = (Wait-Pane $script:socket 'VERBOSE: Running: (.*)$').Groups[1].Value
        $running | Should -Match "^\S*/env --default-signal \S*/script -q -e -c 'exec \S*/env --default-signal bwrap --bind .*' /dev/null$"
        $running | Should -Not -Match '--new-session'
        # The process that prints the marker is the one that sleeps: Ctrl+C cannot come before it runs.
        Send-Line $script:socket "sh -c 'echo MR-IN; exec sleep 300'"
        $null = Wait-Pane $script:socket '^MR-IN$'
        & tmux -S $script:socket send-keys -t pty C-c
        Send-Line $script:socket 'echo "MR-INT=$?"'
        (Wait-Pane $script:socket '^MR-INT=(\d+)$').Groups[1].Value | Should -Be '130'
        Send-Line $script:socket 'stty raw -echo; kill -9 $$'
        $null = Wait-Pane $script:socket '^MR-RC=137$'
        $null = Wait-Pane $script:socket '^MR-DONE$' 120
        $pane = Get-Pane $script:socket
        $pane | Should -Match '(?m)(^|\s)icanon(\s|;|$)'
        $pane | Should -Match '(?m)(^|\s)echo(\s|;|$)'
        $pane | Should -Match "(?m)^MR-INVOKE-TERM=$($script:PodTerm)$"
    }
}

Describe 'Enter-MelangePod on a terminal, bubblewrap, with a command' -Skip:$noBwrap {
    AfterEach { if ($script:socket) { & tmux -S $script:socket kill-server 2>$null; $script:socket = $null } }

    It 'passes every argument through script''s command line unchanged, with the host TERM, and its status' {
        # Quotes, $, backquotes, a backslash and a space: script runs one sh command line, so the
        # quoting of the bwrap vector inside it must be exact.
        $script:socket = Start-PaneSession -Runner bubblewrap -EnterArgs @'
-Command sh, -c, 'printf "<%s>" "$@" "$TERM"; echo; exit 5', sh, 'it''s', 'a "b" $c;`d`', 'x\y z'
'@
        $null = Wait-Pane $script:socket '^MR-DONE$' 120
        $pane = Get-Pane $script:socket
        $pane | Should -Match ('(?m)^' + [regex]::Escape("<it's><a `"b`" `$c;``d``><x\y z><$($script:HostTerm)>") + '$')
        $pane | Should -Match '(?m)^MR-RC=5$'
    }
}

Describe 'Enter-MelangePod without a terminal, bubblewrap' -Skip:(-not (Get-Command bwrap -ErrorAction Ignore)) {
    It 'runs bwrap directly on the redirected streams, says so on -Verbose, and returns the status' {
        # A child pwsh whose standard input is a pipe, as in CI, whatever runs these tests.
        $child = Start-ChildPwsh -Script @"
`$ErrorActionPreference = 'Stop'
Import-Module '$($script:ModuleManifest)'
`$img = Import-MelangeImage -Path '$(Get-TestRootfs)' -Runner bubblewrap
`$pod = `$img | Start-MelangePod -Environment @{ TERM = '$($script:PodTerm)' }
try {
    `$pod | Enter-MelangePod -Command sh, -c, 'echo "MR-TERM=`$TERM"; exit 3' -Verbose 4>&1 | ForEach-Object { "MR-V: `$_" }
    "MR-RC=`$LASTEXITCODE"
} finally { `$pod | Stop-MelangePod; `$img | Remove-MelangeImage -Confirm:`$false }
"@
        try {
            $read = $child.StandardOutput.ReadToEndAsync()
            $read.Wait([TimeSpan]::FromSeconds(120)) | Should -BeTrue -Because 'the child ends'
            $out = $read.Result
        } finally { if (-not $child.HasExited) { $child.Kill($true) } }
        $out | Should -Match '(?m)^MR-RC=3\s*$'
        $out | Should -Match "(?m)^MR-TERM=$($script:PodTerm)\s*$" -Because 'without a terminal the host TERM is not put in'
        $out | Should -Match '(?m)^MR-V: Standard input is not a terminal: bwrap runs on the caller''s streams'
        $running = [regex]::Match($out, '(?m)^MR-V: Running: (.*?)\s*$').Groups[1].Value
        $running | Should -Match '^\S*/env --default-signal bwrap --bind '
        $running | Should -Not -Match 'script|--new-session'
    }
}

Describe 'Enter-MelangePod on a terminal, qemu' -Skip:$noQemu {
    AfterEach { if ($script:socket) { & tmux -S $script:socket kill-server 2>$null; $script:socket = $null } }

    It 'gives the SSH session a PTY with the host TERM over the pod''s, the window size and resizes, returns the status and restores the terminal' {
        $script:socket = Start-PaneSession -Runner qemu -StartArgs '-Memory 1Gi -RunAs build'
        $seen = Assert-PtySession -Socket $script:socket -ReadyTimeout 300
        $seen.Tty | Should -Match '^/dev/pts/\d+$'
        $seen.Fd0 | Should -Be $seen.Tty
    }
}
