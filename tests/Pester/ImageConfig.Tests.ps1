# What an image's config brings to its steps: an OCI layout's Env layers under the pod's
# -Environment and the call's, on both runners (and melange's PATH where nothing sets one).
BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'Common.ps1')
    $runners = @(
        @{ Runner = 'bubblewrap'; Skip = -not (Test-MelangeRunner -Name bubblewrap) }
        @{ Runner = 'qemu'; Skip = -not (Test-MelangeRunner -Name qemu) }
    )
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'Common.ps1')

}

Describe 'An OCI image whose config sets Env, in a <Runner> pod' -ForEach $runners {
    BeforeAll {
        if ($Skip) { return }
        $layout = New-OciLayout (Join-Path $TestDrive "oci-$Runner") @('PATH=/opt/image/bin:/usr/bin:/bin', 'FROM_IMAGE=image', 'SHADOWED=image')
        $script:img = Import-MelangeImage -Path $layout -Runner $Runner
        $script:pod = $script:img | Start-MelangePod -Memory 1Gi -Environment @{ SHADOWED = 'pod' }
    }
    AfterAll {
        if ($script:pod) { $script:pod | Stop-MelangePod }
        if ($script:img) { $script:img | Remove-MelangeImage -Confirm:$false }
    }

    It 'shows the config''s Env on the ImageInfo' -Skip:$Skip {
        $script:img.SourceKind | Should -Be 'oci-layout'
        $script:img.Env | Should -Be @('PATH=/opt/image/bin:/usr/bin:/bin', 'FROM_IMAGE=image', 'SHADOWED=image')
    }

    It 'gives every step the image''s Env, under the pod''s and the call''s' -Skip:$Skip {
        $script:pod | Invoke-MelangePod -Command sh, -c, 'echo "$PATH|$FROM_IMAGE|$SHADOWED"' |
            Should -Be '/opt/image/bin:/usr/bin:/bin|image|pod'
        $script:pod | Invoke-MelangePod -Command sh, -c, 'echo "$FROM_IMAGE|$SHADOWED"' -Environment @{ FROM_IMAGE = 'call'; SHADOWED = 'call' } |
            Should -Be 'call|call'
    }
}
