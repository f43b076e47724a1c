# docs/microvm.md and docs/hosts.md replace the out-of-tree MICROVM.md and TOOLING.md: their
# anchors must be there for every citation, and tools/Update-DocCitations.ps1 must rewrite the
# old citations, once. No module import: these are text checks. The script never edits this
# file, which holds the old forms on purpose.

BeforeAll {
    $script:RepoRoot = (Resolve-Path (Join-Path $PSScriptRoot '../..')).Path
    $script:Script = Join-Path $script:RepoRoot 'tools/Update-DocCitations.ps1'
    $script:Pages = @{
        'microvm.md' = Get-Content -Raw (Join-Path $script:RepoRoot 'docs/microvm.md')
        'hosts.md'   = Get-Content -Raw (Join-Path $script:RepoRoot 'docs/hosts.md')
    }
    function Get-Anchors([string]$Text) { @([regex]::Matches($Text, '<a id="([^"]+)"></a>') | ForEach-Object { $_.Groups[1].Value }) }
    function Invoke-Rewrite([string]$Root, [string[]]$Path) {
        $out = & $script:Script -Root $Root -Path $Path
        @($out)
    }
}

Describe 'docs/microvm.md and docs/hosts.md' {
    It 'numbers the pitfalls 1 to 11 as MICROVM.md did, one anchor each, in order' {
        $pitfalls = @(Get-Anchors $script:Pages['microvm.md'] | Where-Object { $_ -like 'pitfall-*' })
        $pitfalls | Should -Be @(1..11 | ForEach-Object { "pitfall-$_" })
        foreach ($n in 1..11) { $script:Pages['microvm.md'] | Should -Match "<a id=`"pitfall-$n`"></a>\r?\n### $n\. " }
    }

    It 'has no anchor twice' {
        foreach ($page in $script:Pages.Keys) {
            $anchors = Get-Anchors $script:Pages[$page]
            @($anchors | Group-Object | Where-Object Count -gt 1 | ForEach-Object Name) | Should -BeNullOrEmpty -Because "$page repeats them"
        }
    }

    It 'has the anchor of every citation in the repository' {
        $files = Get-ChildItem -Recurse -File -Path (@('src', 'tests', 'docs', 'tools', 'bench', '.ci') | ForEach-Object { Join-Path $script:RepoRoot $_ }) -ErrorAction Ignore |
            Where-Object { $_.FullName -notmatch '[\\/](bin|obj)[\\/]' }
        $files = @($files) + @(Get-Item (Join-Path $script:RepoRoot 'README.md'))
        $missing = foreach ($f in $files) {
            $text = Get-Content -Raw -LiteralPath $f.FullName -ErrorAction Ignore
            if (-not $text) { continue }
            foreach ($m in [regex]::Matches($text, '(?<page>microvm|hosts)\.md#(?<anchor>[a-z0-9]+(?:-[a-z0-9]+)*)(?![\w-])')) {
                $page = "$($m.Groups['page'].Value).md"
                if ((Get-Anchors $script:Pages[$page]) -notcontains $m.Groups['anchor'].Value) { "$($f.Name): $($m.Value)" }
            }
        }
        @($missing) | Should -BeNullOrEmpty
    }
}

Describe 'tools/Update-DocCitations.ps1' {
    BeforeEach {
        $script:Root = Join-Path ([IO.Path]::GetTempPath()) "melange-citations-$PID-$([guid]::NewGuid().ToString('N'))"
        $null = New-Item -ItemType Directory -Path (Join-Path $script:Root 'docs/cmdlets'), (Join-Path $script:Root 'src')
    }
    AfterEach { Remove-Item -Recurse -Force $script:Root -ErrorAction Ignore }

    It 'rewrites each citation form, in source files as paths and in markdown as relative links' {
        Set-Content -LiteralPath (Join-Path $script:Root 'src/a.cs') -Value @(
            '/// (MICROVM.md pitfall 9): qemu accepts', '// given once: pitfall 10', '# see docs and shared/spec/MICROVM.md).',
            '# As TOOLING.md shows: opening /dev/kvm then succeeds')
        Set-Content -LiteralPath (Join-Path $script:Root 'docs/b.md') -Value @(
            'capabilities (MICROVM.md pitfall 3).', "but brings MICROVM.md's pitfall 8. That", 'MICROVM.md measured qemu exiting', 'listens: pitfall 9).')
        Set-Content -LiteralPath (Join-Path $script:Root 'docs/cmdlets/C.md') -Value 'the rate (MICROVM.md measured about 17 MB/s).'
        $out = Invoke-Rewrite $script:Root 'src', 'docs'
        $out[-1] | Should -Be 'Update-DocCitations: 9 citation(s) changed in 3 file(s).'
        Get-Content (Join-Path $script:Root 'src/a.cs') | Should -Be @(
            '/// (docs/microvm.md#pitfall-9): qemu accepts', '// given once: docs/microvm.md#pitfall-10', '# see docs/microvm.md).',
            '# As docs/hosts.md#hide-kvm shows: opening /dev/kvm then succeeds')
        Get-Content (Join-Path $script:Root 'docs/b.md') | Should -Be @(
            'capabilities ([microvm.md, pitfall 3](microvm.md#pitfall-3)).', 'but brings [microvm.md, pitfall 8](microvm.md#pitfall-8). That',
            '[microvm.md](microvm.md#measurements) measured qemu exiting', 'listens: [pitfall 9](microvm.md#pitfall-9)).')
        Get-Content (Join-Path $script:Root 'docs/cmdlets/C.md') | Should -Be 'the rate ([docs/microvm.md](../microvm.md#measurements) measured about 17 MB/s).'
        $out | Should -Contain 'src/a.cs:2: [bare pitfall] pitfall 10 -> docs/microvm.md#pitfall-10'
    }

    It 'changes nothing the second time, and nothing with -WhatIf' {
        $file = Join-Path $script:Root 'docs/b.md'
        Set-Content -LiteralPath $file -Value 'See MICROVM.md pitfalls 3 and 8, `MICROVM.md`, and TOOLING.md.'
        $null = & $script:Script -Root $script:Root -Path docs -WhatIf
        Get-Content $file | Should -Be 'See MICROVM.md pitfalls 3 and 8, `MICROVM.md`, and TOOLING.md.'
        $null = Invoke-Rewrite $script:Root 'docs'
        $once = Get-Content -Raw $file
        $once | Should -Not -MatchExactly 'MICROVM|TOOLING'
        @(Invoke-Rewrite $script:Root 'docs')[-1] | Should -Be 'Update-DocCitations: 0 citation(s) changed in 0 file(s).'
        Get-Content -Raw $file | Should -Be $once
    }

    It 'leaves no citation of the old files in a copy of this repository' {
        foreach ($d in 'src', 'tests', 'docs', 'tools', 'bench') {
            Copy-Item -Recurse -Force -Path (Join-Path $script:RepoRoot $d) -Destination $script:Root -Exclude bin, obj
        }
        Copy-Item (Join-Path $script:RepoRoot 'README.md') $script:Root
        $null = & (Join-Path $script:Root 'tools/Update-DocCitations.ps1') -Root $script:Root
        $left = Get-ChildItem -Recurse -File $script:Root | Where-Object Name -notin 'Update-DocCitations.ps1', 'DocCitations.Tests.ps1' |
            Select-String -CaseSensitive -Pattern 'MICROVM\.md|TOOLING\.md' | ForEach-Object { "$($_.Path):$($_.LineNumber)" }
        @($left) | Should -BeNullOrEmpty
    }
}
