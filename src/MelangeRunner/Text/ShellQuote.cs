namespace MelangeRunner;

/// <summary>POSIX shell quoting, for command lines shown to users and sent over SSH.</summary>
public static class ShellQuote
{
    /// <summary>Quotes one word so that sh reads it back unchanged.</summary>
    public static string Quote(string word)
    {
        if (word.Length > 0 && word.All(c => char.IsAsciiLetterOrDigit(c) || "@%+=:,./_-".Contains(c)))
            return word;
        return "'" + word.Replace("'", "'\"'\"'") + "'";
    }

    public static string Join(IEnumerable<string> words) => string.Join(' ', words.Select(Quote));
}
