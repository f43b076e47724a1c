<#
.SYNOPSIS
Rewrites citations of the out-of-tree design notes (MICROVM.md, TOOLING.md) to the pages in
docs/ that replace them (docs/microvm.md, docs/hosts.md).

.DESCRIPTION
The repository used to cite two files that live outside it, shared/spec/MICROVM.md and
shared/spec/TOOLING.md, often by pitfall number ("MICROVM.md pitfall 7", or just
"pitfall 7" in the qemu code). Their content now lives in docs/microvm.md and docs/hosts.md,
with one anchor per pitfall (#pitfall-1 … #pitfall-11) and per section. This script is a
pure text substitution that points every such citation at the new pages:

  in source files (.cs, .ps1, .sh, the guest scripts, …)
      MICROVM.md pitfall 7        -> docs/microvm.md#pitfall-7
      pitfall 7                   -> docs/microvm.md#pitfall-7
      MICROVM.md measured …       -> docs/microvm.md#measurements measured …
      TOOLING.md                  -> docs/hosts.md (#hide-kvm where it cites hiding /dev/kvm)
  in markdown files (*.md), the same as relative links, e.g. in docs/benchmarks.md
      MICROVM.md pitfall 3        -> [microvm.md, pitfall 3](microvm.md#pitfall-3)
      pitfall 9                   -> [pitfall 9](microvm.md#pitfall-9)

It is idempotent: the new forms are lower-case and hyphenated, and the patterns are
case-sensitive where it matters, so a second run changes nothing. It prints one line per
change (file:line, old -> new) and a summary. docs/microvm.md and docs/hosts.md themselves,
this script and its test (tests/Pester/DocCitations.Tests.ps1) are never edited. Files that are not valid UTF-8 text are skipped; a UTF-8
BOM and the line endings are kept.

.PARAMETER Path
Files or directories to rewrite (directories recursively), relative to -Root or absolute.
Default: src, tests, docs, tools, bench, .ci, README.md and build.ps1.

.PARAMETER Root
The repository root (where docs/ is); links in markdown files are made relative to its docs/.
Default: the parent of this script's directory.

.EXAMPLE
dotnet pwsh ./tools/Update-DocCitations.ps1 -WhatIf
Shows what would change in the whole tree, writing nothing.

.EXAMPLE
dotnet pwsh ./tools/Update-DocCitations.ps1 -Path docs, README.md
Rewrites the documentation only.
#>
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Position = 0)]
    [string[]]$Path = @('src', 'tests', 'docs', 'tools', 'bench', '.ci', 'README.md', 'build.ps1'),

    [string]$Root = (Split-Path -Parent $PSScriptRoot)
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$Root = [IO.Path]::GetFullPath($Root)
$DocsDir = Join-Path $Root 'docs'
$SkipDirectories = @('.git', 'bin', 'obj', 'artifacts', 'out', 'TestResults', 'node_modules')
# The pages the citations now point at cite themselves by anchor; this script and its test hold
# the old forms on purpose.
$SkipFiles = @(
    (Join-Path $DocsDir 'microvm.md'),
    (Join-Path $DocsDir 'hosts.md'),
    [IO.Path]::GetFullPath($PSCommandPath),
    (Join-Path $Root 'tests/Pester/DocCitations.Tests.ps1')
)

# What the old files are called in citations: MICROVM.md, shared/spec/MICROVM.md, ../../shared/spec/MICROVM.md.
$Microvm = '(?:(?:\.\./)*shared/spec/)?MICROVM\.md'
$Tooling = '(?:(?:\.\./)*shared/spec/)?TOOLING\.md'
# A list of pitfall numbers after "pitfall(s)": "7", "#7", "3 and 8", "3, 8 and 11".
$Numbers = '#?(?<n>\d+)(?<more>(?:(?:,\s*|\s+and\s+)#?\d+)*)'

# ---------------------------------------------------------------------------------------------
# How a citation is written in one file: markdown gets relative links, everything else paths.

function New-Style([string]$File) {
    $markdown = $File.EndsWith('.md', [StringComparison]::OrdinalIgnoreCase)
    $rel = [IO.Path]::GetRelativePath([IO.Path]::GetDirectoryName($File), $DocsDir).Replace('\', '/')
    $prefix = if ($rel -eq '.') { '' } else { "$rel/" }
    [pscustomobject]@{
        Markdown = $markdown
        Prefix   = $prefix                                   # docs/ relative to the file
        Label    = if ($prefix -eq '') { '' } else { 'docs/' } # link text: microvm.md inside docs/, else docs/microvm.md
    }
}

# A reference to PAGE (microvm.md, hosts.md) at ANCHOR ('' for the page), shown as TEXT in markdown.
function Format-Ref($Style, [string]$Page, [string]$Anchor, [string]$Text, [switch]$Plain) {
    $hash = if ($Anchor) { "#$Anchor" } else { '' }
    if (-not $Style.Markdown) { return "docs/$Page$hash" }
    if ($Plain) { return "$($Style.Prefix)$Page$hash" }
    if (-not $Text) { $Text = "$($Style.Label)$Page" }
    "[$Text]($($Style.Prefix)$Page$hash)"
}

function Get-PitfallNumbers([Text.RegularExpressions.Match]$M) {
    @($M.Groups['n'].Value) + @([regex]::Matches($M.Groups['more'].Value, '\d+') | ForEach-Object { $_.Value })
}

# "3", "3 and 8", "3, 8 and 11" from items.
function Join-Words([string[]]$Items) {
    if ($Items.Count -le 1) { return $Items -join '' }
    ($Items[0..($Items.Count - 2)] -join ', ') + ' and ' + $Items[-1]
}

# ---------------------------------------------------------------------------------------------
# The rules, tried in order at each position of a file's text. Each evaluator gets the match and
# the file's style and returns the replacement.

$Rules = @(
    @{
        # docs/architecture.md's introduction: "`shared/spec/MICROVM.md` ([…](…), next to this repository, not inside it)".
        Name    = 'out-of-tree note'
        Pattern = "``?$Microvm``?\s*\(\[[^\]]*\]\([^)]*MICROVM\.md\),\s+next\s+to\s+this\s+repository,\s+not\s+inside\s+it\)"
        Replace = { param($m, $s) Format-Ref $s 'microvm.md' '' }
    }
    @{
        # A markdown link whose target is one of the old files: the new page (the old anchors do not carry over).
        Name    = 'link'
        Pattern = '\[(?<text>[^\]]*)\]\((?:\.\./)*(?:shared/spec/)?(?<file>MICROVM|TOOLING)\.md(?:#[^)]*)?\)'
        Replace = {
            param($m, $s)
            $page = if ($m.Groups['file'].Value -eq 'MICROVM') { 'microvm.md' } else { 'hosts.md' }
            $text = $m.Groups['text'].Value -creplace $Microvm, "$($s.Label)microvm.md" -creplace $Tooling, "$($s.Label)hosts.md"
            Format-Ref $s $page '' $text
        }
    }
    @{
        # "The numbers are MICROVM.md's" (the pitfall table's caption).
        Name    = 'pitfall numbering'
        Pattern = "The numbers are $Microvm's"
        Replace = { param($m, $s) 'The numbers are those of ' + (Format-Ref $s 'microvm.md' 'pitfalls') }
    }
    @{
        # "(MICROVM.md: guest crypto)": the SSH throughput figure.
        Name    = 'measured (throughput)'
        Pattern = "$Microvm(?<rest>:\s*guest crypto)"
        Replace = { param($m, $s) (Format-Ref $s 'microvm.md' 'measurements') + $m.Groups['rest'].Value }
    }
    @{
        # "MICROVM.md measured …" / "MICROVM.md's measured …".
        Name    = 'measured'
        Pattern = "$Microvm(?:'s)?(?<rest> measured)"
        Replace = { param($m, $s) (Format-Ref $s 'microvm.md' 'measurements') + $m.Groups['rest'].Value }
    }
    @{
        # The guest init's header: "see docs and shared/spec/MICROVM.md".
        Name    = 'see docs'
        Pattern = "see docs and $Microvm"
        Replace = { param($m, $s) 'see ' + (Format-Ref $s 'microvm.md' '') }
    }
    @{
        # "As TOOLING.md shows: opening /dev/kvm …": the /dev/null bind over /dev/kvm.
        Name    = 'hide /dev/kvm'
        Pattern = "$Tooling(?<rest> shows: opening /dev/kvm)"
        Replace = { param($m, $s) (Format-Ref $s 'hosts.md' 'hide-kvm') + $m.Groups['rest'].Value }
    }
    @{
        # "MICROVM.md pitfall 7", "MICROVM.md's pitfall 8", "MICROVM.md pitfalls 3 and 8".
        Name    = 'named pitfall'
        Pattern = "$Microvm(?:'s)?,? [Pp]itfalls? $Numbers"
        Replace = {
            param($m, $s)
            $n = @(Get-PitfallNumbers $m)
            if (-not $s.Markdown) { return Join-Words @($n | ForEach-Object { Format-Ref $s 'microvm.md' "pitfall-$_" }) }
            if ($n.Count -eq 1) { return Format-Ref $s 'microvm.md' "pitfall-$($n[0])" "$($s.Label)microvm.md, pitfall $($n[0])" }
            "$($s.Label)microvm.md pitfalls " + (Join-Words @($n | ForEach-Object { Format-Ref $s 'microvm.md' "pitfall-$_" $_ }))
        }
    }
    @{
        # A bare "pitfall 9" (the qemu code and architecture.md number MICROVM.md's pitfalls without
        # naming it). Not inside a link's text or after an anchor: the rewritten forms stay as they are.
        Name    = 'bare pitfall'
        Pattern = '(?<![\[\w#/-])(?<word>[Pp]itfalls?) ' + $Numbers + '(?![\w\]])(?!\]\()'
        Replace = {
            param($m, $s)
            $n = @(Get-PitfallNumbers $m)
            if (-not $s.Markdown) { return Join-Words @($n | ForEach-Object { Format-Ref $s 'microvm.md' "pitfall-$_" }) }
            if ($n.Count -eq 1) { return Format-Ref $s 'microvm.md' "pitfall-$($n[0])" "$($m.Groups['word'].Value) $($n[0])" }
            "$($m.Groups['word'].Value) " + (Join-Words @($n | ForEach-Object { Format-Ref $s 'microvm.md' "pitfall-$_" $_ }))
        }
    }
    @{
        # Anything else naming the old files: the new page. Inside `code`, [text] or (target) a
        # plain path, so that markdown syntax is not broken.
        Name    = 'file'
        Pattern = "(?<file>$Microvm|$Tooling)"
        Replace = {
            param($m, $s)
            $page = if ($m.Value -cmatch 'MICROVM') { 'microvm.md' } else { 'hosts.md' }
            $before = if ($m.Index -gt 0) { $script:Text[$m.Index - 1] } else { ' ' }
            $after = if ($m.Index + $m.Length -lt $script:Text.Length) { $script:Text[$m.Index + $m.Length] } else { ' ' }
            $inside = "$before" -match '[`\[(/]' -or "$after" -match '[`\])]'
            Format-Ref $s $page '' -Plain:$inside
        }
    }
)

# All rules as one alternation, in order; a rule's own groups (n, more, rest…) are shared by name.
$Combined = [regex]::new((@(for ($i = 0; $i -lt $Rules.Count; $i++) { "(?<r$i>$($Rules[$i].Pattern))" }) -join '|'),
    [Text.RegularExpressions.RegexOptions]::CultureInvariant)

# ---------------------------------------------------------------------------------------------

function Get-TargetFile {
    # pwsh -File passes "a,b" as one string: split it, as a caller of -Command would get.
    foreach ($p in @($Path | ForEach-Object { $_ -split ',' } | ForEach-Object { $_.Trim() } | Where-Object { $_ })) {
        $full = if ([IO.Path]::IsPathRooted($p)) { $p } else { Join-Path $Root $p }
        if (Test-Path -LiteralPath $full -PathType Leaf) { [IO.Path]::GetFullPath($full); continue }
        if (-not (Test-Path -LiteralPath $full -PathType Container)) { Write-Verbose "Not found, skipped: $p"; continue }
        $stack = [Collections.Generic.Stack[string]]::new()
        $stack.Push([IO.Path]::GetFullPath($full))
        while ($stack.Count -gt 0) {
            $dir = $stack.Pop()
            foreach ($d in [IO.Directory]::GetDirectories($dir)) {
                if ($SkipDirectories -notcontains [IO.Path]::GetFileName($d) -and -not ([IO.File]::GetAttributes($d) -band [IO.FileAttributes]::ReparsePoint)) { $stack.Push($d) }
            }
            [IO.Directory]::GetFiles($dir) | Sort-Object
        }
    }
}

$strictUtf8 = [Text.UTF8Encoding]::new($false, $true)
$changedFiles = 0
$changeCount = 0
$seen = [Collections.Generic.HashSet[string]]::new()

foreach ($file in Get-TargetFile) {
    if (-not $seen.Add($file) -or $SkipFiles -contains $file) { continue }
    $info = [IO.FileInfo]::new($file)
    if ($info.Length -gt 4MB -or $info.LinkTarget) { continue }
    $bytes = [IO.File]::ReadAllBytes($file)
    if ([Array]::IndexOf($bytes, [byte]0) -ge 0) { continue } # binary
    $bom = $bytes.Length -ge 3 -and $bytes[0] -eq 0xEF -and $bytes[1] -eq 0xBB -and $bytes[2] -eq 0xBF
    try { $script:Text = $strictUtf8.GetString($bytes, ($bom ? 3 : 0), $bytes.Length - ($bom ? 3 : 0)) }
    catch [Text.DecoderFallbackException] { Write-Verbose "Not UTF-8, skipped: $file"; continue }
    if ($script:Text -cnotmatch 'MICROVM\.md|TOOLING\.md|[Pp]itfalls? #?\d') { continue }

    $style = New-Style $file
    $relative = [IO.Path]::GetRelativePath($Root, $file).Replace('\', '/')
    $changes = [Collections.Generic.List[object]]::new()
    # One pass over the original text: at each position the first rule that matches wins, and
    # line numbers (and the context the last rule looks at) are the original file's.
    $evaluator = [Text.RegularExpressions.MatchEvaluator] {
        param($m)
        $rule = $null
        for ($i = 0; $i -lt $Rules.Count; $i++) { if ($m.Groups["r$i"].Success) { $rule = $Rules[$i]; break } }
        $new = & $rule.Replace $m $style
        if ($new -cne $m.Value) {
            $line = 1 + ([regex]::Matches($script:Text.Substring(0, $m.Index), "`n")).Count
            $changes.Add([pscustomobject]@{ Line = $line; Rule = $rule.Name; Old = $m.Value; New = $new })
        }
        $new
    }
    $script:Text = $Combined.Replace($script:Text, $evaluator)
    if ($changes.Count -eq 0) { continue }

    $changedFiles++
    $changeCount += $changes.Count
    foreach ($c in $changes) {
        "{0}:{1}: [{2}] {3} -> {4}" -f $relative, $c.Line, $c.Rule, ($c.Old -replace '\s*\n\s*', ' '), ($c.New -replace '\s*\n\s*', ' ')
    }
    if ($PSCmdlet.ShouldProcess($relative, "Rewrite $($changes.Count) citation(s)")) {
        $out = [Text.UTF8Encoding]::new($bom).GetPreamble() + [Text.UTF8Encoding]::new($false).GetBytes($script:Text)
        [IO.File]::WriteAllBytes($file, [byte[]]$out)
    }
}

$verb = if ($WhatIfPreference) { 'would change' } else { 'changed' }
"Update-DocCitations: $changeCount citation(s) $verb in $changedFiles file(s)."
