<#
.SYNOPSIS
    Turns the cmdlet pages in docs/cmdlets (one markdown file per cmdlet) into one MAML help file.

.DESCRIPTION
    Binary (C#) cmdlets get Get-Help text only from a MAML file named
    <assembly>.dll-Help.xml (here MelangeRunner.PowerShell.dll-Help.xml). For a module
    imported through its manifest, Get-Help looks for it in the module base (the directory
    of MelangeRunner.psd1) and its culture folder (en-US/), not next to an assembly in a
    subdirectory such as bin/. This script writes that file from the markdown pages, so the
    pages are the single source of the help text.

    Each page follows a fixed, platyPS-like layout:

      # Verb-Noun                 the title; must equal the file name (Verb-Noun.md)
      ## SYNOPSIS                 one paragraph (required)
      ## SYNTAX                   ### <SetName> [(Default)] + one fenced block with the syntax
                                  line (required; __AllParameterSets for a single set)
      ## DESCRIPTION              paragraphs, "- " bullet lists, fenced code (required)
      ## EXAMPLES                 ### Example N: title + fenced code (consecutive fences are
                                  one code block) + remarks (required, at least one)
      ## PARAMETERS               ### -Name + description + a fenced ```yaml block with
                                    Type, Parameter Sets ((All) or set names), Aliases,
                                    Accepted values, Required, Position (n or Named),
                                    Default value, Accept pipeline input,
                                    Accept wildcard characters, Hidden (True for a DontShow
                                    parameter, which no syntax block names)
                                  (several yaml blocks when Required/Position differ between
                                  sets); ### CommonParameters is allowed and ignored
      ## INPUTS / ## OUTPUTS      ### TypeName + text (### None when there is none)
      ## NOTES                    paragraphs
      ## RELATED LINKS            "- [text](target)" lines

    Inline markdown (`code`, **bold**, [text](link)) becomes plain text; soft line breaks
    inside a paragraph are joined. The syntax block decides which parameters belong to which
    parameter set and in what order Get-Help lists them; the yaml block gives type,
    position, required, aliases and pipeline input. A page that breaks the layout (a missing
    section, a parameter named in a syntax block without a "### -Name" entry or the reverse,
    a yaml block without Type/Parameter Sets/Required/Position) is an error that names the
    file and the problem. The output depends only on the pages (files read in ordinal name
    order, UTF-8 without BOM, LF line ends), so two runs give byte-identical files.

.PARAMETER DocsPath
    The directory with the Verb-Noun.md pages. Files that are not named Verb-Noun.md
    (README.md, for instance) are ignored.

.PARAMETER OutputPath
    The MAML file to write. Default: en-US/MelangeRunner.PowerShell.dll-Help.xml at the
    repository root, where Get-Help finds it for the MelangeRunner.psd1 manifest.

.PARAMETER PassThru
    Write the FileInfo of the generated file.

.EXAMPLE
    ./tools/New-MamlHelp.ps1 -DocsPath ./docs/cmdlets -OutputPath ./en-US/MelangeRunner.PowerShell.dll-Help.xml
#>
#Requires -Version 7.4
[CmdletBinding()]
param(
    [Parameter(Position = 0)]
    [string] $DocsPath = (Join-Path $PSScriptRoot '../docs/cmdlets'),

    [Parameter(Position = 1)]
    [string] $OutputPath = (Join-Path $PSScriptRoot '../en-US/MelangeRunner.PowerShell.dll-Help.xml'),

    [switch] $PassThru
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

$script:NsMaml = 'http://schemas.microsoft.com/maml/2004/10'
$script:NsCommand = 'http://schemas.microsoft.com/maml/dev/command/2004/10'
$script:NsDev = 'http://schemas.microsoft.com/maml/dev/2004/10'
$script:NsMsHelp = 'http://msdn.microsoft.com/mshelp'
$script:CurrentFile = ''

function Fail([string] $Message) {
    throw "${script:CurrentFile}: $Message"
}

function Test-Fence([string] $Line) { $Line.TrimStart().StartsWith('```') }

# Splits a comma-separated yaml value into trimmed, non-empty items (no pipelines: this runs often).
function Split-List([string] $Value) {
    $items = [System.Collections.Generic.List[string]]::new()
    foreach ($item in $Value.Split(',')) {
        $t = $item.Trim()
        if ($t.Length -gt 0) { $items.Add($t) }
    }
    , $items.ToArray()
}

# Splits lines into sections at headings of the given level ('## ' or '### '), ignoring
# headings inside fenced code. Returns the lines before the first heading and the sections.
function Split-Heading($Lines, [string] $Prefix) {
    $preamble = [System.Collections.Generic.List[string]]::new()
    $sections = [System.Collections.Generic.List[object]]::new()
    $current = $null
    $inFence = $false
    foreach ($line in $Lines) {
        if ($line.TrimStart().StartsWith('```')) { $inFence = -not $inFence }
        if (-not $inFence -and $line.StartsWith($Prefix)) {
            $current = [pscustomobject]@{ Title = $line.Substring($Prefix.Length).Trim(); Lines = [System.Collections.Generic.List[string]]::new() }
            $sections.Add($current)
            continue
        }
        if ($null -eq $current) { $preamble.Add($line) } else { $current.Lines.Add($line) }
    }
    if ($inFence) { Fail "a fenced code block (```) is not closed" }
    [pscustomobject]@{ Preamble = $preamble.ToArray(); Sections = $sections.ToArray() }
}

# Inline markdown to plain text: `code`, **bold**, *em*, [text](link), \escapes.
function ConvertFrom-Inline([string] $Text) {
    $t = [regex]::Replace($Text, '\[([^\]]+)\]\([^)]*\)', '$1')
    $t = [regex]::Replace($t, '\*\*([^*]+)\*\*', '$1')
    $t = [regex]::Replace($t, '(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])', '$1')
    $t = $t.Replace('`', '')
    $t = [regex]::Replace($t, '\\([\\`*_\[\]()#<>|-])', '$1')
    $t
}

# Blocks of text: paragraphs (lines joined with spaces), one block per list item, fenced
# code kept line by line (indented by four spaces so it stands out in Get-Help).
function ConvertTo-Paragraph($Lines) {
    $paras = [System.Collections.Generic.List[string]]::new()
    $buffer = [System.Collections.Generic.List[string]]::new()
    $code = $null
    foreach ($line in $Lines) {
        $isFence = $line.TrimStart().StartsWith('```')
        $isItem = $false
        if ($null -eq $code -and -not $isFence) {
            $t = $line.TrimStart()
            # The regex only for lines that can be list items (it is the costly part of this loop).
            if ($t.Length -gt 1 -and ($t[0] -eq '-' -or $t[0] -eq '*' -or [char]::IsDigit($t[0]))) { $isItem = $t -match '^([-*]|\d+\.)\s+' }
        }
        # A paragraph ends at a blank line, a fence or a list item.
        if ($buffer.Count -gt 0 -and $null -eq $code -and ($isFence -or $isItem -or $line.Trim().Length -eq 0)) {
            $joined = [System.Text.StringBuilder]::new()
            foreach ($b in $buffer) {
                if ($joined.Length -gt 0) { $null = $joined.Append(' ') }
                $null = $joined.Append($b.Trim())
            }
            $paras.Add((ConvertFrom-Inline $joined.ToString()))
            $buffer.Clear()
        }
        if ($isFence) {
            if ($null -eq $code) {
                $code = [System.Collections.Generic.List[string]]::new()
            } else {
                if ($code.Count -gt 0) {
                    $indented = foreach ($c in $code) { ('    ' + $c).TrimEnd() }
                    $paras.Add(($indented -join "`n"))
                }
                $code = $null
            }
            continue
        }
        if ($null -ne $code) { $code.Add($line); continue }
        if ($line.Trim().Length -eq 0) { continue }
        # A list item keeps its marker so the list still reads as a list.
        if ($isItem) { $buffer.Add(($line.Trim() -replace '^\*\s+', '- ')); continue }
        $buffer.Add($line)
    }
    if ($buffer.Count -gt 0) {
        $paras.Add((ConvertFrom-Inline ((@(foreach ($b in $buffer) { $b.Trim() })) -join ' ')))
    }
    , $paras.ToArray()
}

function Get-FencedBlock($Lines) {
    $blocks = [System.Collections.Generic.List[object]]::new()
    $current = $null
    foreach ($line in $Lines) {
        if ($line.TrimStart().StartsWith('```')) {
            if ($null -eq $current) {
                $current = [pscustomobject]@{ Info = $line.Trim().Substring(3).Trim(); Lines = [System.Collections.Generic.List[string]]::new() }
            } else {
                $blocks.Add($current)
                $current = $null
            }
            continue
        }
        if ($null -ne $current) { $current.Lines.Add($line) }
    }
    , $blocks.ToArray()
}

function Read-ParameterYaml($Lines) {
    $values = [ordered]@{}
    foreach ($line in $Lines) {
        if ($line.Trim().Length -eq 0) { continue }
        $i = $line.IndexOf(':')
        if ($i -lt 1) { Fail "the yaml line '$line' is not 'Key: value'" }
        $values[$line.Substring(0, $i).Trim()] = $line.Substring($i + 1).Trim()
    }
    foreach ($key in 'Type', 'Parameter Sets', 'Required', 'Position') {
        if (-not $values.Contains($key)) { Fail "a parameter's yaml block has no '$key'" }
    }
    $sets = Split-List $values['Parameter Sets']
    $aliases = if ($values.Contains('Aliases') -and $values['Aliases'] -ne 'None') { Split-List $values['Aliases'] } else { , [string[]]::new(0) }
    $accepted = if ($values.Contains('Accepted values') -and $values['Accepted values'] -ne 'None') { Split-List $values['Accepted values'] } else { , [string[]]::new(0) }
    $required = $values['Required']
    if ($required -notin 'True', 'False') { Fail "Required must be True or False, not '$required'" }
    $position = $values['Position']
    if ($position -ne 'Named' -and $position -notmatch '^\d+$') { Fail "Position must be a number or Named, not '$position'" }
    $pipeline = if ($values.Contains('Accept pipeline input')) { $values['Accept pipeline input'] } else { 'False' }
    $wildcard = if ($values.Contains('Accept wildcard characters')) { $values['Accept wildcard characters'] } else { 'False' }
    $default = if ($values.Contains('Default value')) { $values['Default value'] } else { 'None' }
    $hidden = $values.Contains('Hidden') -and $values['Hidden'] -eq 'True'
    [pscustomobject]@{
        Type = $values['Type']; Sets = $sets; Aliases = $aliases; AcceptedValues = $accepted
        Required = $required -eq 'True'; Position = $position; DefaultValue = $default
        PipelineInput = $pipeline; Globbing = $wildcard -eq 'True'; Hidden = $hidden
    }
}

function Read-CommandPage([string] $Path) {
    $script:CurrentFile = $Path
    $lines = [System.IO.File]::ReadAllLines($Path)
    # Optional front matter (--- ... ---) is ignored.
    if ($lines.Count -gt 0 -and $lines[0].Trim() -eq '---') {
        $end = [array]::IndexOf($lines, '---', 1)
        if ($end -lt 0) { Fail 'the front matter (---) is not closed' }
        $lines = $lines[($end + 1)..($lines.Count - 1)]
    }
    $top = Split-Heading $lines '## '
    $titleLine = $null
    foreach ($line in $top.Preamble) { if ($line.StartsWith('# ')) { $titleLine = $line; break } }
    if (-not $titleLine) { Fail "there is no '# Verb-Noun' title" }
    $name = $titleLine.Substring(2).Trim()
    $expected = [System.IO.Path]::GetFileNameWithoutExtension($Path)
    if ($name -ne $expected) { Fail "the title '$name' does not match the file name '$expected'" }

    $sections = @{}
    foreach ($s in $top.Sections) {
        $key = $s.Title.ToUpperInvariant()
        if ($sections.ContainsKey($key)) { Fail "the section '## $key' appears twice" }
        $sections[$key] = $s.Lines.ToArray()
    }
    foreach ($required in 'SYNOPSIS', 'SYNTAX', 'DESCRIPTION', 'EXAMPLES', 'PARAMETERS') {
        if (-not $sections.ContainsKey($required)) { Fail "the section '## $required' is missing" }
    }

    $synopsis = ConvertTo-Paragraph $sections['SYNOPSIS']
    if ($synopsis.Count -eq 0) { Fail 'the SYNOPSIS is empty' }

    # SYNTAX: ### SetName [(Default)] + one fenced syntax line per set.
    $syntax = [System.Collections.Generic.List[object]]::new()
    foreach ($s in (Split-Heading $sections['SYNTAX'] '### ').Sections) {
        $setName = ($s.Title -replace '\s*\(Default\)\s*$', '').Trim()
        $block = Get-FencedBlock $s.Lines.ToArray()
        if ($block.Count -ne 1) { Fail "the syntax of set '$setName' must be one fenced block" }
        $text = (@(foreach ($l in $block[0].Lines) { $l.Trim() })) -join ' '
        if (-not $text.StartsWith("$name ") -and $text -ne $name) { Fail "the syntax of set '$setName' does not start with '$name'" }
        $names = foreach ($m in [regex]::Matches($text.Substring($name.Length), '(?<![\w<])-(\w+)')) { $m.Groups[1].Value }
        $syntax.Add([pscustomobject]@{ Name = $setName; Parameters = @($names) })
    }
    if ($syntax.Count -eq 0) { Fail "SYNTAX has no '### SetName' with a fenced block" }

    # PARAMETERS: ### -Name + description + yaml block(s).
    $parameters = [System.Collections.Generic.List[object]]::new()
    foreach ($s in (Split-Heading $sections['PARAMETERS'] '### ').Sections) {
        if ($s.Title -eq 'CommonParameters') { continue }
        if ($s.Title -notmatch '^-(\w+)$') { Fail "the parameter heading '### $($s.Title)' is not '### -Name'" }
        $pname = $Matches[1]
        $yaml = @((Get-FencedBlock $s.Lines.ToArray()).Where({ $_.Info -eq 'yaml' }))
        if ($yaml.Count -eq 0) { Fail "the parameter -$pname has no yaml block" }
        $textLines = [System.Collections.Generic.List[string]]::new()
        $inFence = $false
        foreach ($line in $s.Lines) {
            if ($line.Trim() -eq '```yaml') { $inFence = $true; continue }
            if ($inFence) { if ($line.TrimStart().StartsWith('```')) { $inFence = $false }; continue }
            $textLines.Add($line)
        }
        $description = ConvertTo-Paragraph $textLines.ToArray()
        if ($description.Count -eq 0) { Fail "the parameter -$pname has no description" }
        $variants = foreach ($y in $yaml) { Read-ParameterYaml $y.Lines.ToArray() }
        $parameters.Add([pscustomobject]@{ Name = $pname; Description = $description; Variants = @($variants) })
    }
    $byName = @{}
    foreach ($p in $parameters) {
        if ($byName.ContainsKey($p.Name)) { Fail "the parameter -$($p.Name) is documented twice" }
        $byName[$p.Name] = $p
    }
    foreach ($set in $syntax) {
        foreach ($pn in $set.Parameters) {
            if (-not $byName.ContainsKey($pn)) { Fail "the syntax of set '$($set.Name)' names -$pn, which has no '### -$pn' under PARAMETERS" }
        }
    }
    foreach ($p in $parameters) {
        $used = $false
        foreach ($set in $syntax) { if ($set.Parameters -contains $p.Name) { $used = $true } }
        # A hidden parameter (DontShow) is left out of the help syntax, as tab completion leaves it out.
        if (-not $used -and -not $p.Variants[0].Hidden) { Fail "the parameter -$($p.Name) appears in no syntax block" }
    }

    # EXAMPLES: ### title + code fences + remarks.
    $examples = [System.Collections.Generic.List[object]]::new()
    foreach ($s in (Split-Heading $sections['EXAMPLES'] '### ').Sections) {
        $codeLines = [System.Collections.Generic.List[string]]::new()
        $rest = [System.Collections.Generic.List[string]]::new()
        $inFence = $false
        $codeDone = $false
        foreach ($line in $s.Lines) {
            if (-not $codeDone) {
                if ($line.TrimStart().StartsWith('```')) {
                    if ($inFence) { $inFence = $false } else {
                        $inFence = $true
                        if ($codeLines.Count -gt 0) { $codeLines.Add('') }
                    }
                    continue
                }
                if ($inFence) { $codeLines.Add($line); continue }
                if ($line.Trim().Length -eq 0) { continue }
                $codeDone = $true
            }
            $rest.Add($line)
        }
        if ($codeLines.Count -eq 0) { Fail "the example '$($s.Title)' has no fenced code" }
        $examples.Add([pscustomobject]@{ Title = $s.Title; Code = ($codeLines -join "`n").TrimEnd(); Remarks = ConvertTo-Paragraph $rest.ToArray() })
    }
    if ($examples.Count -eq 0) { Fail "EXAMPLES has no '### Example' with fenced code" }

    $typed = {
        param([string] $section)
        $list = [System.Collections.Generic.List[object]]::new()
        if (-not $sections.ContainsKey($section)) { return , $list.ToArray() }
        $split = Split-Heading $sections[$section] '### '
        foreach ($s in $split.Sections) {
            $list.Add([pscustomobject]@{ Type = $s.Title; Description = ConvertTo-Paragraph $s.Lines.ToArray() })
        }
        $pre = ConvertTo-Paragraph $split.Preamble
        if ($split.Sections.Count -eq 0 -and $pre.Count -gt 0) {
            $list.Add([pscustomobject]@{ Type = $pre[0]; Description = $(if ($pre.Count -gt 1) { , [string[]]$pre[1..($pre.Count - 1)] } else { , [string[]]::new(0) }) })
        }
        , $list.ToArray()
    }

    $links = [System.Collections.Generic.List[object]]::new()
    if ($sections.ContainsKey('RELATED LINKS')) {
        foreach ($line in $sections['RELATED LINKS']) {
            if ($line -match '^\s*(?:[-*]\s+)?\[([^\]]+)\]\(([^)]*)\)') {
                # Links to other pages become names (Get-Help shows them); web links keep their URI.
                $uri = if ($Matches[2] -match '^https?://') { $Matches[2] } else { '' }
                $links.Add([pscustomobject]@{ Text = $Matches[1]; Uri = $uri })
            }
        }
    }

    [pscustomobject]@{
        Name        = $name
        Synopsis    = $synopsis
        Description = ConvertTo-Paragraph $sections['DESCRIPTION']
        Syntax      = $syntax.ToArray()
        Parameters  = $parameters.ToArray()
        Examples    = $examples.ToArray()
        Inputs      = & $typed 'INPUTS'
        Outputs     = & $typed 'OUTPUTS'
        Notes       = if ($sections.ContainsKey('NOTES')) { ConvertTo-Paragraph $sections['NOTES'] } else { @() }
        Links       = $links.ToArray()
    }
}

# --- MAML writing -------------------------------------------------------------------------

function Write-Paragraphs([System.Xml.XmlWriter] $W, $Paragraphs) {
    $W.WriteStartElement('maml', 'description', $script:NsMaml)
    foreach ($p in $Paragraphs) { $W.WriteElementString('maml', 'para', $script:NsMaml, $p) }
    $W.WriteEndElement()
}

# The yaml variant of a parameter that applies to a set ('(All)' applies to every set).
function Get-Variant($Parameter, [string] $SetName) {
    foreach ($v in $Parameter.Variants) { if ($v.Sets -contains $SetName) { return $v } }
    foreach ($v in $Parameter.Variants) { if ($v.Sets -contains '(All)') { return $v } }
    $Parameter.Variants[0]
}

function Write-Parameter([System.Xml.XmlWriter] $W, $Parameter, $Variant, [bool] $InSyntax) {
    $isSwitch = $Variant.Type -eq 'SwitchParameter'
    $W.WriteStartElement('command', 'parameter', $script:NsCommand)
    $W.WriteAttributeString('required', $Variant.Required.ToString().ToLowerInvariant())
    $W.WriteAttributeString('variableLength', $Variant.Type.EndsWith('[]').ToString().ToLowerInvariant())
    $W.WriteAttributeString('globbing', $Variant.Globbing.ToString().ToLowerInvariant())
    $W.WriteAttributeString('pipelineInput', $Variant.PipelineInput)
    $W.WriteAttributeString('position', $(if ($Variant.Position -eq 'Named') { 'named' } else { $Variant.Position }))
    $W.WriteAttributeString('aliases', $(if ($Variant.Aliases.Count) { $Variant.Aliases -join ', ' } else { 'none' }))
    $W.WriteElementString('maml', 'name', $script:NsMaml, $Parameter.Name)
    Write-Paragraphs $W $Parameter.Description
    if ($InSyntax -and $Variant.AcceptedValues.Count) {
        $W.WriteStartElement('command', 'parameterValueGroup', $script:NsCommand)
        foreach ($a in $Variant.AcceptedValues) {
            $W.WriteStartElement('command', 'parameterValue', $script:NsCommand)
            $W.WriteAttributeString('required', 'false')
            $W.WriteAttributeString('command', 'variableLength', $script:NsCommand, 'false')
            $W.WriteString($a)
            $W.WriteEndElement()
        }
        $W.WriteEndElement()
    }
    if (-not ($InSyntax -and ($isSwitch -or $Variant.AcceptedValues.Count))) {
        $W.WriteStartElement('command', 'parameterValue', $script:NsCommand)
        $W.WriteAttributeString('required', (-not $isSwitch).ToString().ToLowerInvariant())
        $W.WriteAttributeString('variableLength', $Variant.Type.EndsWith('[]').ToString().ToLowerInvariant())
        $W.WriteString($Variant.Type)
        $W.WriteEndElement()
    }
    $W.WriteStartElement('dev', 'type', $script:NsDev)
    $W.WriteElementString('maml', 'name', $script:NsMaml, $Variant.Type)
    $W.WriteElementString('maml', 'uri', $script:NsMaml, '')
    $W.WriteEndElement()
    $W.WriteElementString('dev', 'defaultValue', $script:NsDev, $Variant.DefaultValue)
    $W.WriteEndElement()
}

function Write-TypeList([System.Xml.XmlWriter] $W, [string] $ListName, [string] $ItemName, $Items) {
    $W.WriteStartElement('command', $ListName, $script:NsCommand)
    foreach ($item in $Items) {
        $W.WriteStartElement('command', $ItemName, $script:NsCommand)
        $W.WriteStartElement('dev', 'type', $script:NsDev)
        $W.WriteElementString('maml', 'name', $script:NsMaml, $item.Type)
        $W.WriteEndElement()
        Write-Paragraphs $W $item.Description
        $W.WriteEndElement()
    }
    $W.WriteEndElement()
}

function Write-Command([System.Xml.XmlWriter] $W, $Page) {
    $verb, $noun = $Page.Name -split '-', 2
    $W.WriteStartElement('command', 'command', $script:NsCommand)
    $W.WriteAttributeString('xmlns', 'maml', $null, $script:NsMaml)
    $W.WriteAttributeString('xmlns', 'command', $null, $script:NsCommand)
    $W.WriteAttributeString('xmlns', 'dev', $null, $script:NsDev)
    $W.WriteAttributeString('xmlns', 'MSHelp', $null, $script:NsMsHelp)

    $W.WriteStartElement('command', 'details', $script:NsCommand)
    $W.WriteElementString('command', 'name', $script:NsCommand, $Page.Name)
    $W.WriteElementString('command', 'verb', $script:NsCommand, $verb)
    $W.WriteElementString('command', 'noun', $script:NsCommand, $noun)
    Write-Paragraphs $W $Page.Synopsis
    $W.WriteEndElement()

    Write-Paragraphs $W $Page.Description

    $byName = @{}
    foreach ($p in $Page.Parameters) { $byName[$p.Name] = $p }

    $W.WriteStartElement('command', 'syntax', $script:NsCommand)
    foreach ($set in $Page.Syntax) {
        $W.WriteStartElement('command', 'syntaxItem', $script:NsCommand)
        $W.WriteElementString('maml', 'name', $script:NsMaml, $Page.Name)
        foreach ($pn in $set.Parameters) {
            $p = $byName[$pn]
            Write-Parameter $W $p (Get-Variant $p $set.Name) $true
        }
        $W.WriteEndElement()
    }
    $W.WriteEndElement()

    $W.WriteStartElement('command', 'parameters', $script:NsCommand)
    foreach ($p in $Page.Parameters) { Write-Parameter $W $p $p.Variants[0] $false }
    $W.WriteEndElement()

    Write-TypeList $W 'inputTypes' 'inputType' $Page.Inputs
    Write-TypeList $W 'returnValues' 'returnValue' $Page.Outputs

    $W.WriteStartElement('maml', 'alertSet', $script:NsMaml)
    $W.WriteStartElement('maml', 'alert', $script:NsMaml)
    foreach ($n in $Page.Notes) { $W.WriteElementString('maml', 'para', $script:NsMaml, $n) }
    $W.WriteEndElement()
    $W.WriteEndElement()

    $W.WriteStartElement('command', 'examples', $script:NsCommand)
    foreach ($e in $Page.Examples) {
        $W.WriteStartElement('command', 'example', $script:NsCommand)
        $W.WriteElementString('maml', 'title', $script:NsMaml, "---------- $($e.Title) ----------")
        $W.WriteElementString('dev', 'code', $script:NsDev, $e.Code)
        $W.WriteStartElement('dev', 'remarks', $script:NsDev)
        foreach ($r in $e.Remarks) { $W.WriteElementString('maml', 'para', $script:NsMaml, $r) }
        $W.WriteEndElement()
        $W.WriteEndElement()
    }
    $W.WriteEndElement()

    $W.WriteStartElement('command', 'relatedLinks', $script:NsCommand)
    foreach ($l in $Page.Links) {
        $W.WriteStartElement('maml', 'navigationLink', $script:NsMaml)
        $W.WriteElementString('maml', 'linkText', $script:NsMaml, $l.Text)
        $W.WriteElementString('maml', 'uri', $script:NsMaml, $l.Uri)
        $W.WriteEndElement()
    }
    $W.WriteEndElement()

    $W.WriteEndElement()
}

# --- main --------------------------------------------------------------------------------

$docs = $ExecutionContext.SessionState.Path.GetUnresolvedProviderPathFromPSPath($DocsPath)
if (-not [System.IO.Directory]::Exists($docs)) { throw "The docs directory '$DocsPath' does not exist." }
$files = [string[]]@(foreach ($f in [System.IO.Directory]::GetFiles($docs, '*.md')) {
        if ([System.IO.Path]::GetFileName($f) -cmatch '^[A-Z][a-zA-Z]+-[A-Z][a-zA-Z]+\.md$') { $f }
    })
[array]::Sort($files, [System.StringComparer]::Ordinal)
if ($files.Count -eq 0) { throw "No Verb-Noun.md pages in $docs." }

$pages = foreach ($f in $files) { Read-CommandPage $f }

$out = $ExecutionContext.SessionState.Path.GetUnresolvedProviderPathFromPSPath($OutputPath)
$dir = [System.IO.Path]::GetDirectoryName($out)
if ($dir) { $null = [System.IO.Directory]::CreateDirectory($dir) }

$settings = [System.Xml.XmlWriterSettings]::new()
$settings.Indent = $true
$settings.IndentChars = '  '
$settings.NewLineChars = "`n"
$settings.NewLineHandling = [System.Xml.NewLineHandling]::Replace
$settings.Encoding = [System.Text.UTF8Encoding]::new($false)

# Written to a temporary file first, so a failure never leaves a half-written help file.
$temp = "$out.tmp"
$writer = [System.Xml.XmlWriter]::Create($temp, $settings)
try {
    $writer.WriteStartDocument()
    $writer.WriteStartElement('helpItems', 'http://msh')
    $writer.WriteAttributeString('schema', 'maml')
    foreach ($page in $pages) { Write-Command $writer $page }
    $writer.WriteEndElement()
    $writer.WriteEndDocument()
} finally {
    $writer.Dispose()
}
[System.IO.File]::Move($temp, $out, $true)
Write-Verbose "Wrote help for $($pages.Count) cmdlets to $out"
if ($PassThru) { Get-Item -LiteralPath $out }
