# Help for every cmdlet: what Get-Help -Full shows comes from docs/cmdlets/*.md through
# tools/New-MamlHelp.ps1, and it must cover every parameter the cmdlets really have.
# A parameter added to a cmdlet without a "### -Name" entry in its page fails here.

BeforeDiscovery {
    Import-Module (Join-Path $PSScriptRoot ../../MelangeRunner.psd1) -Force
    $common = [System.Management.Automation.PSCmdlet]::CommonParameters
    $cmdlets = foreach ($c in Get-Command -Module MelangeRunner -CommandType Cmdlet | Sort-Object Name) {
        @{
            Name       = $c.Name
            Parameters = @($c.Parameters.Keys | Where-Object { -not $common.Contains($_) } | Sort-Object)
        }
    }
    $pages = foreach ($p in Get-ChildItem (Join-Path $PSScriptRoot ../../docs/cmdlets) -Filter '*-*.md' | Sort-Object Name) {
        @{ Name = $p.BaseName; Path = $p.FullName }
    }
}

BeforeAll {
    Import-Module (Join-Path $PSScriptRoot ../../MelangeRunner.psd1) -Force
    $script:Common = [System.Management.Automation.PSCmdlet]::CommonParameters
    $script:Generator = Join-Path $PSScriptRoot ../../tools/New-MamlHelp.ps1
    $script:Docs = Join-Path $PSScriptRoot ../../docs/cmdlets
    $script:Exported = @(Get-Command -Module MelangeRunner -CommandType Cmdlet).Name

    # The text of a MAML description as Get-Help returns it (an array of paragraphs).
    function Get-HelpText($Description) {
        (@($Description) | Where-Object { $_ } | ForEach-Object { $_.Text }) -join "`n"
    }

    # "Name!@0" style signatures of a parameter set: ! when mandatory, @n for a position.
    function Get-CommandSetSignature($ParameterSet) {
        $parts = foreach ($p in $ParameterSet.Parameters) {
            if ($script:Common.Contains($p.Name)) { continue }
            # DontShow parameters stay out of the help syntax (tab completion does not offer them either).
            if ($p.Attributes.Where({ $_ -is [System.Management.Automation.ParameterAttribute] -and $_.DontShow }).Count) { continue }
            $p.Name + $(if ($p.IsMandatory) { '!' }) + $(if ($p.Position -ge 0) { "@$($p.Position)" })
        }
        (@($parts) | Sort-Object) -join ' '
    }

    function Get-HelpSetSignature($SyntaxItem) {
        $parts = foreach ($p in @($SyntaxItem.parameter)) {
            if (-not $p) { continue }
            $p.name + $(if ($p.required -eq 'true') { '!' }) + $(if ($p.position -notin 'named', '') { "@$($p.position)" })
        }
        (@($parts) | Sort-Object) -join ' '
    }
}

Describe 'Help of <Name>' -ForEach $cmdlets {
    BeforeAll {
        $command = Get-Command $Name
        $help = Get-Help $Name -Full
        $helpParameters = @($help.parameters.parameter | Where-Object { $_ })
    }

    It 'comes from the MAML file (a written synopsis, not the generated syntax)' {
        $synopsis = "$($help.Synopsis)".Trim()
        $synopsis | Should -Not -BeNullOrEmpty
        # Without MAML help, Get-Help makes the synopsis from the syntax: "Name [-Param] <T> ...".
        $synopsis | Should -Not -BeLike "$Name*" -Because 'Get-Help found no MAML help for the cmdlet; PowerShell looks for MelangeRunner.PowerShell.dll-Help.xml in the module base directory (where MelangeRunner.psd1 is) or its culture folder (en-US), not next to the assembly in bin/'
        $synopsis | Should -Not -Match '\[<CommonParameters>\]'
    }

    It 'has a description' {
        Get-HelpText $help.description | Should -Not -BeNullOrEmpty
    }

    It 'has at least one example with code' {
        $examples = @($help.examples.example | Where-Object { $_ })
        $examples.Count | Should -BeGreaterThan 0
        foreach ($e in $examples) { "$($e.code)".Trim() | Should -Not -BeNullOrEmpty -Because "example '$($e.title)' needs code" }
    }

    It 'describes -<_>' -ForEach $Parameters -AllowNullOrEmptyForEach {
        $documented = $helpParameters | Where-Object name -EQ $_
        $documented | Should -Not -BeNullOrEmpty -Because "-$_ is a parameter of $Name; add '### -$_' with a description and a yaml block to docs/cmdlets/$Name.md"
        Get-HelpText $documented.description | Should -Not -BeNullOrEmpty -Because "-$_ needs a description in docs/cmdlets/$Name.md"
    }

    It 'documents no parameter the cmdlet does not have' {
        $extra = @($helpParameters.name | Where-Object { -not $command.Parameters.ContainsKey($_) })
        $extra | Should -BeNullOrEmpty -Because "docs/cmdlets/$Name.md documents parameters that $Name does not have"
    }

    It 'gives each parameter its real type, aliases and pipeline input' {
        # Collected first and asserted once: every mismatch of the page is listed together.
        $problems = foreach ($p in $helpParameters) {
            $meta = $command.Parameters[$p.name]
            if (-not $meta) { continue }
            if ($p.type.name -ne $meta.ParameterType.Name) { "-$($p.name): Type is '$($p.type.name)', the cmdlet has $($meta.ParameterType.Name)" }
            $aliases = (@("$($p.aliases)" -split ',\s*' | Where-Object { $_ -and $_ -ne 'none' } | Sort-Object) -join ', ')
            $realAliases = (@($meta.Aliases | Sort-Object) -join ', ')
            if ($aliases -ne $realAliases) { "-$($p.name): Aliases are '$aliases', the cmdlet has '$realAliases'" }
            $sets = @($meta.ParameterSets.Values)
            $byValue = [bool]($sets.Where({ $_.ValueFromPipeline }).Count)
            $byName = [bool]($sets.Where({ $_.ValueFromPipelineByPropertyName }).Count)
            if (("$($p.pipelineInput)" -match 'ByValue') -ne $byValue) { "-$($p.name): 'Accept pipeline input' should $(if (-not $byValue) { 'not ' })say ByValue" }
            if (("$($p.pipelineInput)" -match 'ByPropertyName') -ne $byName) { "-$($p.name): 'Accept pipeline input' should $(if (-not $byName) { 'not ' })say ByPropertyName" }
        }
        @($problems) | Should -BeNullOrEmpty -Because "the yaml blocks of docs/cmdlets/$Name.md must match the cmdlet"
    }

    It 'has one syntax per parameter set, with the right mandatory and positional parameters' {
        $expected = @($command.ParameterSets | ForEach-Object { Get-CommandSetSignature $_ } | Sort-Object)
        $actual = @($help.syntax.syntaxItem | Where-Object { $_ } | ForEach-Object { Get-HelpSetSignature $_ } | Sort-Object)
        $actual | Should -Be $expected -Because "the SYNTAX blocks and yaml Required/Position of docs/cmdlets/$Name.md must match the cmdlet (Name! = mandatory, @n = position)"
    }
}

Describe 'Cmdlet pages' {
    It '<Name>.md is the page of an exported cmdlet' -ForEach $pages {
        $script:Exported | Should -Contain $Name -Because "docs/cmdlets/$Name.md documents a cmdlet the module does not export"
    }

    It 'every exported cmdlet has a page' {
        $missing = @($script:Exported | Where-Object { -not (Test-Path (Join-Path $script:Docs "$_.md")) })
        $missing | Should -BeNullOrEmpty
    }
}

Describe 'The help file' {
    It 'is where Get-Help finds it, and generated from the current pages' {
        $module = Get-Module MelangeRunner
        $fileName = [System.IO.Path]::GetFileName((Get-Command $script:Exported[0]).HelpFile)
        $candidates = @(
            (Join-Path $module.ModuleBase ([cultureinfo]::CurrentUICulture.Name))
            (Join-Path $module.ModuleBase 'en-US')
            $module.ModuleBase
        ) | ForEach-Object { Join-Path $_ $fileName } | Where-Object { Test-Path -LiteralPath $_ -PathType Leaf }
        $installed = @($candidates)[0]
        $installed | Should -Not -BeNullOrEmpty -Because "$fileName must be in $($module.ModuleBase) or its en-US folder for Get-Help to read it; the build writes it with tools/New-MamlHelp.ps1"

        $fresh = Join-Path $TestDrive 'fresh.xml'
        & $script:Generator -DocsPath $script:Docs -OutputPath $fresh
        (Get-FileHash -LiteralPath $fresh).Hash | Should -Be (Get-FileHash -LiteralPath $installed).Hash -Because 'the installed help must be regenerated after docs/cmdlets changes (run the build)'
    }
}

Describe 'New-MamlHelp.ps1' {
    BeforeAll {
        function New-Page([string] $Dir, [string] $Text) {
            $null = New-Item -ItemType Directory -Force $Dir
            Set-Content -LiteralPath (Join-Path $Dir 'Get-Thing.md') -Value $Text
        }
        $valid = @'
# Get-Thing

## SYNOPSIS
Gets a thing.

## SYNTAX

### __AllParameterSets
```
Get-Thing [-Name] <String> [<CommonParameters>]
```

## DESCRIPTION
Gets a **thing** by `name`.

## EXAMPLES

### Example 1: One thing
```powershell
Get-Thing a
```

Gets a.

## PARAMETERS

### -Name
The name.

```yaml
Type: String
Parameter Sets: (All)
Aliases: None

Required: True
Position: 0
Default value: None
Accept pipeline input: False
Accept wildcard characters: False
```

## INPUTS

### None

## OUTPUTS

### System.Object
The thing.
'@
    }

    It 'writes valid, deterministic MAML' {
        New-Page "$TestDrive/ok" $valid
        & $script:Generator -DocsPath "$TestDrive/ok" -OutputPath "$TestDrive/ok1.xml"
        & $script:Generator -DocsPath "$TestDrive/ok" -OutputPath "$TestDrive/ok2.xml"
        (Get-FileHash "$TestDrive/ok1.xml").Hash | Should -Be (Get-FileHash "$TestDrive/ok2.xml").Hash
        $xml = [xml](Get-Content -Raw "$TestDrive/ok1.xml")
        $ns = [System.Xml.XmlNamespaceManager]::new($xml.NameTable)
        $ns.AddNamespace('command', 'http://schemas.microsoft.com/maml/dev/command/2004/10')
        $ns.AddNamespace('maml', 'http://schemas.microsoft.com/maml/2004/10')
        $xml.SelectSingleNode('//command:details/command:name', $ns).InnerText | Should -Be 'Get-Thing'
        $xml.SelectSingleNode('//command:details/maml:description/maml:para', $ns).InnerText | Should -Be 'Gets a thing.'
        $xml.SelectSingleNode('/*/command:command/maml:description/maml:para', $ns).InnerText | Should -Be 'Gets a thing by name.'
        $xml.SelectSingleNode('//command:syntaxItem/command:parameter', $ns).position | Should -Be '0'
    }

    It 'refuses a syntax that names an undocumented parameter' {
        New-Page "$TestDrive/bad1" ($valid -replace '\[-Name\] <String>', '[-Name] <String> [-Extra]')
        { & $script:Generator -DocsPath "$TestDrive/bad1" -OutputPath "$TestDrive/bad1.xml" } |
            Should -Throw '*Get-Thing.md*-Extra*'
    }

    It 'refuses a page without examples' {
        New-Page "$TestDrive/bad2" ($valid -replace '(?s)## EXAMPLES.*?## PARAMETERS', '## PARAMETERS')
        { & $script:Generator -DocsPath "$TestDrive/bad2" -OutputPath "$TestDrive/bad2.xml" } |
            Should -Throw '*EXAMPLES*'
    }
}
