# A real Debian build image (debootstrap minbase + build-essential, made by
# tools/New-DebianRootfs.ps1 and cached): a C program compiled with the image's own gcc, cc1 and
# ld in a pod of each runner, with no -Environment at all.
BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $runners = @(
        @{ Runner = 'bubblewrap'; Skip = -not (Test-MelangeRunner -Name bubblewrap) }
        @{ Runner = 'qemu'; Skip = -not (Test-MelangeRunner -Name qemu) }
        @{ Runner = 'docker'; Skip = -not (Test-MelangeRunner -Name docker) }
    )
    # debootstrap needs root and is installed by .ci/run; without it there is no image to test.
    $noDebootstrap = -not (Get-Command debootstrap -ErrorAction Ignore) -or (& id -u) -ne '0'
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $script:debian = (& (Join-Path $script:RepoRoot 'tools/New-DebianRootfs.ps1')).FullName
}

Describe 'A Debian build image in a <Runner> pod' -ForEach $runners -Skip:$noDebootstrap {
    BeforeAll {
        if ($Skip) { return }
        $script:img = Import-MelangeImage -Path $script:debian -Runner $Runner
        $script:ws = (New-Item -ItemType Directory -Force (Join-Path $TestDrive "ws-$Runner")).FullName
        Set-Content -LiteralPath (Join-Path $script:ws 'hello.c') -Value @'
#include <stdio.h>
int main(void) { printf("hello from %s\n", __VERSION__); return 0; }
'@
        $script:pod = $script:img | Start-MelangePod -WorkspaceDir $script:ws -Memory 2Gi -RunAs build
    }
    AfterAll {
        if ($script:pod) { $script:pod | Stop-MelangePod }
        if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
    }

    It 'is Debian, by its own os-release' -Skip:$Skip {
        ($script:pod | Get-MelangeReleaseData).ID | Should -Be 'debian'
    }

    It 'has melange''s PATH with no -Environment' -Skip:$Skip {
        $script:pod | Invoke-MelangePod -Command sh, -c, 'echo "$PATH"' | Should -Be ([MelangeRunner.Defaults]::Path)
    }

    It 'compiles and runs C with the image''s gcc (cc1 found on PATH)' -Skip:$Skip {
        $out = $script:pod | Invoke-MelangePod -Command sh, -c, 'gcc -v -o hello hello.c 2>gcc.log && ./hello && grep -c "/cc1 " gcc.log && mkdir -p melange-out/hello/usr/bin && cp hello melange-out/hello/usr/bin/'
        $LASTEXITCODE | Should -Be 0
        $out[0] | Should -Match '^hello from \d+\.\d+'
        [int]$out[1] | Should -BeGreaterThan 0
        $dest = Join-Path $TestDrive "out-$Runner"
        $null = $script:pod | Export-MelangeWorkspace -Destination $dest
        (Get-Item (Join-Path $dest 'melange-out/hello/usr/bin/hello')).Length | Should -BeGreaterThan 1000
    }
}
