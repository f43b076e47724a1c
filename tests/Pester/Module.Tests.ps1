BeforeDiscovery {
    $noBwrap = -not (Get-Command bwrap -ErrorAction Ignore)
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
}

Describe 'The module' {
    It 'exports every cmdlet of the contract' {
        $expected = 'Get-MelangeRunner', 'Test-MelangeRunner', 'New-MelangePodConfig', 'Import-MelangeImage',
            'Remove-MelangeImage', 'Get-MelangePodPlan', 'Start-MelangePod', 'Invoke-MelangePod', 'Enter-MelangePod',
            'Export-MelangeWorkspace', 'Get-MelangeReleaseData', 'Stop-MelangePod'
        $exported = (Get-Module MelangeRunner).ExportedCmdlets.Keys
        foreach ($name in $expected) { $exported | Should -Contain $name }
    }

    It 'uses approved verbs only' {
        $approved = (Get-Verb).Verb
        foreach ($c in (Get-Command -Module MelangeRunner)) { $approved | Should -Contain $c.Verb }
    }

    It 'exposes melange''s constants' {
        [MelangeRunner.Defaults]::WorkspaceDir | Should -Be '/home/build'
        [MelangeRunner.Defaults]::CacheDir | Should -Be '/var/cache/melange'
        [MelangeRunner.Defaults]::ResolvConfPath | Should -Be '/etc/resolv.conf'
        [MelangeRunner.Units]::KB | Should -Be 1024
        [MelangeRunner.Units]::MB | Should -Be 1048576
        [MelangeRunner.Units]::GB | Should -Be 1073741824
        [MelangeRunner.Units]::TB | Should -Be 1099511627776
        [MelangeRunner.Runners]::Bubblewrap | Should -Be 'bubblewrap'
        [MelangeRunner.Runners]::Qemu | Should -Be 'qemu'
    }

    It 'loads its dependencies in its own AssemblyLoadContext' {
        [System.Runtime.Loader.AssemblyLoadContext]::GetLoadContext([MelangeRunner.Pod].Assembly).Name | Should -Be 'Default'
        # No public member hands out an SSH.NET type: resolve the engine's reference to it as the runtime would.
        $sshNet = [MelangeRunner.Pod].Assembly.GetReferencedAssemblies() | Where-Object Name -eq 'Renci.SshNet'
        $sshClient = [System.Runtime.Loader.AssemblyLoadContext]::Default.LoadFromAssemblyName($sshNet).GetType('Renci.SshNet.SshClient', $true)
        $sshClient.FullName | Should -Be 'Renci.SshNet.SshClient'
        [System.Runtime.Loader.AssemblyLoadContext]::GetLoadContext($sshClient.Assembly).Name | Should -Be 'MelangeRunner'
    }

    It 'imports where an older Microsoft.Extensions.Logging.Abstractions is already loaded' {
        $old = Join-Path ([Environment]::GetFolderPath('UserProfile')) '.nuget/packages/microsoft.extensions.logging.abstractions/6.0.0/lib/net6.0/Microsoft.Extensions.Logging.Abstractions.dll'
        if ($env:NUGET_PACKAGES) { $old = Join-Path $env:NUGET_PACKAGES 'microsoft.extensions.logging.abstractions/6.0.0/lib/net6.0/Microsoft.Extensions.Logging.Abstractions.dll' }
        Test-Path $old | Should -BeTrue -Because 'build.ps1 Test restores tools/test-packages, which downloads version 6.0.0'
        $script = @"
`$ErrorActionPreference = 'Stop'
Add-Type -Path '$old'
Import-Module '$script:ModuleManifest'
# SSH.NET's client needs Logging.Abstractions 8: constructing one loads it in the module's context.
`$sshNet = [MelangeRunner.Pod].Assembly.GetReferencedAssemblies() | Where-Object Name -eq 'Renci.SshNet'
`$sshClient = [System.Runtime.Loader.AssemblyLoadContext]::Default.LoadFromAssemblyName(`$sshNet).GetType('Renci.SshNet.SshClient', `$true)
`$client = [Activator]::CreateInstance(`$sshClient, [object[]]@('127.0.0.1', 'root', 'x'))
`$client.Dispose()
[AppDomain]::CurrentDomain.GetAssemblies() | Where-Object { `$_.GetName().Name -eq 'Microsoft.Extensions.Logging.Abstractions' } |
    ForEach-Object { '{0} {1}' -f `$_.GetName().Version.Major, [System.Runtime.Loader.AssemblyLoadContext]::GetLoadContext(`$_).Name }
"@
        $pwsh = Join-Path $PSHOME 'pwsh'
        $output = & $pwsh -NoProfile -NonInteractive -Command $script 2>&1
        $LASTEXITCODE | Should -Be 0 -Because ($output -join "`n")
        $output | Should -Contain '6 Default'
        $output | Should -Contain '8 MelangeRunner'
    }
}

Describe 'Get-MelangeRunner and Test-MelangeRunner' {
    It 'lists every runner with their usability' {
        $runners = Get-MelangeRunner
        $runners.Name | Should -Be @('bubblewrap', 'qemu', 'docker')
        $runners[0] | Should -BeOfType ([MelangeRunner.RunnerInfo])
        foreach ($r in $runners) {
            if (-not $r.IsUsable) { $r.Reason | Should -Not -BeNullOrEmpty }
        }
    }

    It 'finds bwrap usable here' -Skip:$noBwrap {
        (Get-MelangeRunner -Name bubblewrap).IsUsable | Should -BeTrue
        Test-MelangeRunner -Name bubblewrap | Should -BeTrue
    }

    It 'says why bubblewrap is unusable when bwrap is not on PATH' {
        $saved = $env:PATH
        try {
            $env:PATH = '/nonexistent'
            $info = Get-MelangeRunner -Name bubblewrap
            $info.IsUsable | Should -BeFalse
            $info.Reason | Should -Match 'apt-get install bubblewrap'
            Test-MelangeRunner bubblewrap | Should -BeFalse
        } finally {
            $env:PATH = $saved
        }
    }

    It 'gives melange''s guidance when the uid map cannot be set up' {
        # A bwrap that fails the way a host restricting user namespaces makes it fail.
        $fake = Join-Path $TestDrive 'fakebin'
        $null = New-Item -ItemType Directory -Force $fake
        Set-Content -Path "$fake/bwrap" -Value "#!/bin/sh`necho 'bwrap: setting up uid map: Permission denied' >&2`nexit 1"
        chmod +x "$fake/bwrap"
        $saved = $env:PATH
        try {
            $env:PATH = "${fake}:$saved"
            $info = Get-MelangeRunner -Name bubblewrap
            $info.IsUsable | Should -BeFalse
            $info.Reason | Should -Match 'setting up uid map'
            $info.Reason | Should -Match 'apparmor_restrict_unprivileged_userns'
        } finally {
            $env:PATH = $saved
        }
    }

    It 'refuses an unknown runner name' {
        # -Name takes wildcards (issue 9), so an unknown name is reported by the cmdlet, not by a ValidateSet.
        { Get-MelangeRunner -Name lxc -ErrorAction Stop } | Should -Throw -ErrorId 'UnknownRunner,MelangeRunner.PowerShell.GetMelangeRunnerCommand'
    }
}
