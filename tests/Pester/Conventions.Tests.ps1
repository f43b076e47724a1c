# Conventions (issue 9, item 3): sizes as PowerShell numbers, positional binding where a pod or
# image comes first, Stop-MelangePod -PassThru, wildcards on Get-MelangeRunner -Name, and
# Import-MelangeImage's -Path (wildcards) and -LiteralPath (none). Imports go to a private TMPDIR.

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $script:Rootfs = Get-TestRootfs
    $script:OldTmp = $env:TMPDIR
    $script:Tmp = (New-Item -ItemType Directory -Force (Join-Path ([IO.Path]::GetTempPath()) "melange-conventions-$PID")).FullName
    $env:TMPDIR = $script:Tmp
    $script:img = Import-MelangeImage -LiteralPath $script:Rootfs -Runner bubblewrap
}

AfterAll {
    Get-MelangePod | Stop-MelangePod
    Get-MelangeImage | Remove-MelangeImage -Confirm:$false
    $env:TMPDIR = $script:OldTmp
    Remove-Item -Recurse -Force $script:Tmp -ErrorAction Ignore
}

Describe 'Sizes' {
    It 'take PowerShell numbers of bytes as well as melange strings' {
        (New-MelangePodConfig -Memory 4GB).Memory | Should -Be '4Gi'
        (New-MelangePodConfig -Disk ([long]1073741824)).Disk | Should -Be '1Gi'
        (New-MelangePodConfig -Memory 1.5GB).Memory | Should -Be '1536Mi'
        (New-MelangePodConfig -Memory ([int]1000)).Memory | Should -Be '1000B'
        (New-MelangePodConfig -Memory 512Mi).Memory | Should -Be '512Mi'
        $pod = Start-MelangePod -Image $script:img -Memory 2GB -Disk 20GB
        try { $pod.Config.Memory, $pod.Config.Disk | Should -Be @('2Gi', '20Gi') } finally { $pod | Stop-MelangePod }
        $big = Import-MelangeImage -LiteralPath $script:Rootfs -Runner bubblewrap -MaximumSize 1KB -ErrorVariable err -ErrorAction SilentlyContinue
        $big | Should -BeNullOrEmpty
        $err[0].FullyQualifiedErrorId | Should -BeLike 'ImageTooLarge,*'
    }

    It 'refuse a fraction of a byte or a negative number when binding, and a string that is no melange size' {
        { New-MelangePodConfig -Memory 0.5 } | Should -Throw -ErrorId 'ParameterArgumentTransformationError,MelangeRunner.PowerShell.NewMelangePodConfigCommand'
        { New-MelangePodConfig -Disk (-1GB) } | Should -Throw -ErrorId 'ParameterArgumentTransformationError,MelangeRunner.PowerShell.NewMelangePodConfigCommand'
        { New-MelangePodConfig -Memory '4GB' } | Should -Throw -ErrorId 'InvalidSize,MelangeRunner.PowerShell.NewMelangePodConfigCommand'
    }
}

Describe 'Positional binding' {
    It 'binds the image first: Start-MelangePod $img, Get-MelangePodPlan $img, Remove-MelangeImage $img' {
        (Get-MelangePodPlan $script:img).Runner | Should -Be 'bubblewrap'
        $pod = Start-MelangePod $script:img
        $pod.State | Should -Be 'Running'
        Stop-MelangePod $pod
        $pod.State | Should -Be 'Stopped'
        $extra = Import-MelangeImage $script:Rootfs bubblewrap
        $extra.Runner | Should -Be 'bubblewrap'
        Remove-MelangeImage $extra -Confirm:$false
        Test-Path -LiteralPath $extra.Ref | Should -BeFalse
    }

    It 'binds the pod first: Get-MelangeReleaseData $pod, Export-MelangeWorkspace $pod ./out, and piped forms still work' {
        $pod = Start-MelangePod $script:img
        try {
            (Get-MelangeReleaseData $pod).ID | Should -Not -BeNullOrEmpty
            $null = New-Item -ItemType Directory -Force (Join-Path $pod.WorkspaceDir 'melange-out')
            Set-Content (Join-Path $pod.WorkspaceDir 'melange-out/f') 'x'
            Push-Location $TestDrive
            try {
                (Export-MelangeWorkspace $pod ./out1).FullName | Should -Be (Join-Path $TestDrive 'out1')
                ($pod | Export-MelangeWorkspace ./out2).FullName | Should -Be (Join-Path $TestDrive 'out2')
                (Export-MelangeWorkspace $pod -AsTarPath ./w.tar).Name | Should -Be 'w.tar'
            } finally { Pop-Location }
            Get-Content (Join-Path $TestDrive 'out1/melange-out/f') | Should -Be 'x'
            Get-Content (Join-Path $TestDrive 'out2/melange-out/f') | Should -Be 'x'
        } finally {
            Stop-MelangePod $pod
        }
    }
}

Describe 'Stop-MelangePod -PassThru' {
    It 'returns the stopped pod, and nothing without it' {
        $a = Start-MelangePod $script:img
        $b = Start-MelangePod $script:img
        $out = $a | Stop-MelangePod -PassThru
        [object]::ReferenceEquals($out, $a) | Should -BeTrue
        $out.State | Should -Be 'Stopped'
        $b | Stop-MelangePod | Should -BeNullOrEmpty
    }
}

Describe 'Get-MelangeRunner -Name' {
    It 'takes wildcards, and reports an unknown name without wildcards' {
        (Get-MelangeRunner -Name q*).Name | Should -Be @('qemu')
        (Get-MelangeRunner 'B*', 'q*').Name | Should -Be @('bubblewrap', 'qemu')
        Get-MelangeRunner -Name 'x*' -ErrorVariable none | Should -BeNullOrEmpty
        $none.Count | Should -Be 0
        Get-MelangeRunner -Name lxc -ErrorVariable err -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
        $err[0].FullyQualifiedErrorId | Should -Be 'UnknownRunner,MelangeRunner.PowerShell.GetMelangeRunnerCommand'
        $err[0].CategoryInfo.Category | Should -Be 'ObjectNotFound'
    }
}

Describe 'Import-MelangeImage -Path and -LiteralPath' {
    BeforeAll {
        $script:Dir = New-Item -ItemType Directory -Force (Join-Path $TestDrive 'images')
        Copy-Item $script:Rootfs (Join-Path $script:Dir 'a.tar.gz')
        Copy-Item $script:Rootfs (Join-Path $script:Dir 'b.tar.gz')
        $script:Weird = Join-Path $script:Dir 'we[i]rd.tgz'
        [IO.File]::Copy($script:Rootfs, $script:Weird)
    }

    It '-Path expands wildcards and imports each match' {
        $imgs = @(Import-MelangeImage -Path (Join-Path $script:Dir '*.tar.gz') bubblewrap)
        try {
            $imgs.Source | Should -Be @((Join-Path $script:Dir 'a.tar.gz'), (Join-Path $script:Dir 'b.tar.gz'))
        } finally { $imgs | Remove-MelangeImage -Confirm:$false }
    }

    It '-Path that matches nothing is a clear ErrorRecord' {
        $pattern = Join-Path $script:Dir 'none*.gz'
        Import-MelangeImage -Path $pattern -Runner bubblewrap -ErrorVariable err -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
        $err.Count | Should -Be 1
        $err[0].FullyQualifiedErrorId | Should -Be 'ImagePathNotMatched,MelangeRunner.PowerShell.ImportMelangeImageCommand'
        $err[0].CategoryInfo.Category | Should -Be 'ObjectNotFound'
        $err[0].TargetObject | Should -Be $pattern
        "$($err[0])" | Should -BeLike "*$pattern*"
    }

    It '-LiteralPath takes [ ] as written; -Path takes them as a wildcard' {
        $img = Import-MelangeImage -LiteralPath $script:Weird -Runner bubblewrap
        try { $img.Source | Should -Be $script:Weird } finally { $img | Remove-MelangeImage -Confirm:$false }
        Import-MelangeImage -Path $script:Weird -Runner bubblewrap -ErrorVariable err -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
        $err[0].FullyQualifiedErrorId | Should -BeLike 'ImagePathNotMatched,*'
    }

    It 'binds Get-ChildItem output to -LiteralPath by property name' {
        $imgs = @(Get-ChildItem -LiteralPath $script:Dir | Import-MelangeImage -Runner bubblewrap)
        try {
            $imgs.Source | Sort-Object | Should -Be @((Join-Path $script:Dir 'a.tar.gz'), (Join-Path $script:Dir 'b.tar.gz'), $script:Weird)
        } finally { $imgs | Remove-MelangeImage -Confirm:$false }
        (Get-Command Import-MelangeImage).Parameters['LiteralPath'].Aliases | Should -Contain 'PSPath'
    }
}
