using System.Text;

namespace MelangeRunner.Docker;

/// <summary>Splits a byte stream into UTF-8 lines (LF, a trailing CR dropped) as they complete.</summary>
internal sealed class LineSplitter
{
    private readonly Action<string> _line;
    private readonly List<byte> _pending = new();

    public LineSplitter(Action<string> line) => _line = line;

    public void Add(ReadOnlySpan<byte> data)
    {
        while (data.Length > 0)
        {
            var nl = data.IndexOf((byte)'\n');
            if (nl < 0) { foreach (var b in data) _pending.Add(b); return; }
            foreach (var b in data[..nl]) _pending.Add(b);
            Emit();
            data = data[(nl + 1)..];
        }
    }

    /// <summary>The marker's value if the unfinished line is the marker (cancelled before its newline was read).</summary>
    public string? PeekMarker(string marker)
    {
        var text = Encoding.UTF8.GetString(_pending.ToArray());
        return text.StartsWith(marker, StringComparison.Ordinal) ? text[marker.Length..] : null;
    }

    public void Flush()
    {
        if (_pending.Count > 0) Emit();
    }

    private void Emit()
    {
        var count = _pending.Count;
        if (count > 0 && _pending[count - 1] == (byte)'\r') count--;
        var text = Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_pending)[..count]);
        _pending.Clear();
        _line(text);
    }
}
