# What Invoke-MelangePod writes for the Azure Pipelines agent, byte for byte, as a pwsh -File
# step's standard output; and the documented way for such a step to exit with the pod's status.
BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $noBwrap = -not (Get-Command bwrap -ErrorAction Ignore)
    $noQemu = -not (Test-MelangeRunner -Name qemu)
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $script:rootfs = Get-TestRootfs
    # One pod, three steps: one writing to stdout, one to stderr (separate steps: the two streams of
    # one step are read apart, so their relative order is not defined), and a failing one with a named group.
    $script:steps = @'
param($Manifest, $Rootfs, $Runner)
Import-Module $Manifest
$img = Import-MelangeImage -Path $Rootfs -Runner $Runner
$pod = $img | Start-MelangePod
try {
    $pod | Invoke-MelangePod 'echo out'
    $pod | Invoke-MelangePod 'echo err >&2'
    $pod | Invoke-MelangePod -LogGroup 'step;1]' -ErrorAction SilentlyContinue -- sh -c 'echo "100%"; exit 3'
} finally {
    $pod | Stop-MelangePod
    $img | Remove-MelangeImage -Confirm:$false
}
exit $LASTEXITCODE
'@
    $script:args_ = @($script:ModuleManifest, $script:rootfs, 'bubblewrap')
}

Describe 'Azure Pipelines logging commands' -Skip:$noBwrap {
    It 'wraps each command in a group and reports a failure as an error issue, in order with the output' {
        $r = Invoke-ChildPwshFile -Script $script:steps -Environment @{ TF_BUILD = 'True' } -ArgumentList $script:args_
        $expected = "##[group]echo out`n" +
            "out`n" +
            "##[endgroup]`n" +
            "##[group]echo err >&2`n" +
            "err`n" +
            "##[endgroup]`n" +
            "##[group]step;1]`n" +
            "100%`n" +
            "##[endgroup]`n" +
            "##vso[task.logissue type=error]sh -c 'echo `"100%AZP25`"; exit 3' failed with exit code 3`n"
        $r.StdOut | Should -BeExactly $expected -Because $r.StdErr
        $r.ExitCode | Should -Be 3
    }

    It 'writes nothing for the agent outside it' {
        $r = Invoke-ChildPwshFile -Script $script:steps -ArgumentList $script:args_
        $r.StdOut | Should -BeExactly "out`nerr`n100%`n" -Because $r.StdErr
        $r.ExitCode | Should -Be 3
    }

    It 'is forced off by MELANGE_AZURE_PIPELINES=0 and on by MELANGE_AZURE_PIPELINES=1' {
        $off = Invoke-ChildPwshFile -Script $script:steps -Environment @{ TF_BUILD = 'True'; MELANGE_AZURE_PIPELINES = '0' } -ArgumentList $script:args_
        $off.StdOut | Should -BeExactly "out`nerr`n100%`n" -Because $off.StdErr
        $on = Invoke-ChildPwshFile -Script $script:steps -Environment @{ MELANGE_AZURE_PIPELINES = '1' } -ArgumentList $script:args_
        $on.StdOut | Should -Match '(?m)^##\[group\]echo err >&2$'
        $on.StdOut | Should -Match '(?m)^##vso\[task\.logissue type=error\]'
    }

    It 'repeats -Verbose lines as ##[debug] lines, right after them' {
        $script = @'
param($Manifest, $Rootfs, $Runner)
Import-Module $Manifest
$img = Import-MelangeImage -Path $Rootfs -Runner $Runner
$pod = $img | Start-MelangePod
try { $pod | Invoke-MelangePod -Verbose 'echo hi' } finally { $pod | Stop-MelangePod; $img | Remove-MelangeImage -Confirm:$false }
'@
        $r = Invoke-ChildPwshFile -Script $script -Environment @{ TF_BUILD = 'True' } -ArgumentList $script:args_
        $lines = $r.StdOut -split "`n"
        $lines[0] | Should -BeExactly '##[group]echo hi'
        $lines[1] | Should -Match '^VERBOSE: Running: .*bwrap .*/bin/sh -c .echo hi.$'
        $lines[2] | Should -BeExactly ('##[debug]' + $lines[1].Substring('VERBOSE: '.Length))
        $lines[3..5] | Should -BeExactly @('hi', '##[endgroup]', '')
    }

    It 'lets a pwsh -File step exit with the pod''s status under $ErrorActionPreference = ''Stop'' (trap)' {
        $script = @'
param($Manifest, $Rootfs, $Runner)
$ErrorActionPreference = 'Stop'
trap { exit ($LASTEXITCODE ? $LASTEXITCODE : 1) }
Import-Module $Manifest
$img = Import-MelangeImage -Path $Rootfs -Runner $Runner
$pod = $img | Start-MelangePod
try { $pod | Invoke-MelangePod 'exit 7'; 'not reached' } finally { $pod | Stop-MelangePod; $img | Remove-MelangeImage -Confirm:$false }
'@
        $r = Invoke-ChildPwshFile -Script $script -ArgumentList $script:args_
        $r.ExitCode | Should -Be 7
        $r.StdOut | Should -Not -Match 'not reached'
    }
}

Describe 'A pwsh -File step on a qemu pod' -Skip:$noQemu {
    It 'exits with the pod''s status, with and without $ErrorActionPreference = ''Stop''' {
        $script = @'
param($Manifest, $Rootfs, $Runner)
trap { exit ($LASTEXITCODE ? $LASTEXITCODE : 1) }
Import-Module $Manifest
$img = Import-MelangeImage -Path $Rootfs -Runner $Runner
$pod = $img | Start-MelangePod -Memory 1Gi
try {
    $pod | Invoke-MelangePod 'exit 5' -ErrorAction Continue 2>$null
    "continue:$LASTEXITCODE"
    $ErrorActionPreference = 'Stop'
    $pod | Invoke-MelangePod 'exit 6'
    'not reached'
} finally { $pod | Stop-MelangePod; $img | Remove-MelangeImage -Confirm:$false }
'@
        $r = Invoke-ChildPwshFile -Script $script -Environment @{ TF_BUILD = 'True' } -ArgumentList @($script:ModuleManifest, $script:rootfs, 'qemu')
        $r.StdOut | Should -Match '(?m)^continue:5$'
        $r.StdOut | Should -Match "(?m)^##vso\[task\.logissue type=error\]exit 6 failed with exit code 6$"
        $r.StdOut | Should -Not -Match 'not reached'
        $r.ExitCode | Should -Be 6
    }
}
