using System.Collections;
using System.Management.Automation;
using System.Management.Automation.Language;
using MelangeRunner.Images;

namespace MelangeRunner.PowerShell;

/// <summary>Shared matching: the word typed so far is a prefix (or a wildcard), case-insensitive.</summary>
internal static class Completion
{
    public static IEnumerable<CompletionResult> Matching(string? word, IEnumerable<string> values, Func<string, string>? tooltip = null)
    {
        var typed = Unquote(word);
        var pattern = WildcardPattern.ContainsWildcardCharacters(typed)
            ? new WildcardPattern(typed, WildcardOptions.IgnoreCase)
            : new WildcardPattern(WildcardPattern.Escape(typed) + "*", WildcardOptions.IgnoreCase);
        return values.Where(pattern.IsMatch).Select(v => new CompletionResult(v, v, CompletionResultType.ParameterValue, tooltip?.Invoke(v) ?? v));
    }

    /// <summary>The word without the quote the user opened it with.</summary>
    public static string Unquote(string? word) => (word ?? "").Trim('\'', '"');

    /// <summary>A bound parameter's value as the completer sees it (PowerShell evaluates safe expressions such as variables).</summary>
    public static object? Bound(IDictionary fakeBoundParameters, string name)
    {
        var value = fakeBoundParameters.Contains(name) ? fakeBoundParameters[name] : null;
        return value is PSObject p ? p.BaseObject : value;
    }
}

/// <summary>-Arch: the architectures the runners know.</summary>
public sealed class ArchCompleter : IArgumentCompleter
{
    internal static readonly string[] Values = { "x86_64", "aarch64" };

    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters) =>
        Completion.Matching(wordToComplete, Values);
}

/// <summary>-CapAdd/-CapDrop: Linux capability names (CAP_ prefix optional when typing) and ALL.</summary>
public sealed class CapabilityCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters)
    {
        var names = Capability.Known.Append("ALL").ToList();
        var typed = Completion.Unquote(wordToComplete);
        // "net_a" means CAP_NET_ADMIN as Capability.Normalize reads it, so complete it the same way.
        if (typed.Length > 0 && !typed.StartsWith("CAP_", StringComparison.OrdinalIgnoreCase) && !"ALL".StartsWith(typed, StringComparison.OrdinalIgnoreCase))
            typed = "CAP_" + typed;
        return Completion.Matching(typed, names,
            n => Capability.DefaultSet.Contains(n) ? $"{n} (in Docker's default set)" : n == "ALL" ? "every capability" : n);
    }
}

/// <summary>-Memory/-Disk/-MaximumSize: size strings in melange's units; a bare number gets the units appended.</summary>
public sealed class SizeCompleter : IArgumentCompleter
{
    internal static readonly string[] Examples = { "512Mi", "1Gi", "2Gi", "4Gi", "8Gi", "16Gi", "32Gi", "64Gi" };

    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters)
    {
        var typed = Completion.Unquote(wordToComplete);
        if (typed.Length > 0 && typed.All(char.IsAsciiDigit))
            return new[] { "Gi", "Mi", "Ti", "G", "M" }.Select(u => typed + u)
                .Select(v => new CompletionResult(v, v, CompletionResultType.ParameterValue, v));
        return Completion.Matching(typed, Examples);
    }
}

/// <summary>Runner names, where a parameter takes wildcards and so has no ValidateSet.</summary>
public sealed class RunnerNameCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters) =>
        Completion.Matching(wordToComplete, Runners.All);
}

/// <summary>-RunAs: the users of the image's /etc/passwd, once -Image is bound (read inside the image, never the host's).</summary>
public sealed class RunAsCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters)
    {
        var image = Completion.Bound(fakeBoundParameters, "Image") switch
        {
            ImageInfo i => i,
            object[] { Length: > 0 } a => (a[0] is PSObject p ? p.BaseObject : a[0]) as ImageInfo,
            _ => null,
        };
        if (image is null || image.Runner != Runners.Bubblewrap) return Array.Empty<CompletionResult>();
        string? passwd;
        try
        {
            passwd = ImageRoot.ReadText(image.Ref, "/etc/passwd");
        }
        catch (Exception e) when (e is MelangeException or IOException or UnauthorizedAccessException)
        {
            return Array.Empty<CompletionResult>();
        }
        var users = (passwd ?? "").Split('\n')
            .Select(l => l.Split(':'))
            .Where(f => f.Length >= 4 && f[0].Length > 0 && !f[0].StartsWith('#'))
            .ToDictionary(f => f[0], f => $"{f[0]} (uid {f[2]}, gid {f[3]})", StringComparer.Ordinal);
        return Completion.Matching(wordToComplete, users.Keys, u => users[u]);
    }
}

/// <summary>Get-MelangePod -Id: the ids of this session's pods.</summary>
public sealed class PodIdCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters)
    {
        var pods = PodTracker.InCurrentRunspace().ToDictionary(p => p.Id, StringComparer.Ordinal);
        return Completion.Matching(wordToComplete, pods.Keys, id => Describe(pods[id]));
    }

    internal static string Describe(Pod pod) => $"{pod.Id}: {pod.Runner}, {pod.State}, {pod.ImageRef}";
}

/// <summary>
/// -Pod: completes a pod id (or a prefix of one) to the expression <c>(Get-MelangePod -Id &lt;id&gt;)</c>,
/// which binds the live Pod object; the list shows the bare ids.
/// </summary>
public sealed class PodCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters)
    {
        var pods = PodTracker.InCurrentRunspace().ToDictionary(p => p.Id, StringComparer.Ordinal);
        return Completion.Matching(wordToComplete, pods.Keys).Select(r =>
            new CompletionResult($"(Get-MelangePod -Id {r.CompletionText})", r.CompletionText, CompletionResultType.ParameterValue, PodIdCompleter.Describe(pods[r.CompletionText])));
    }
}
