using Xunit;

namespace MelangeRunner.Tests;

public class ReleaseDataTests
{
    [Fact]
    public void ParsesQuotesEscapesAndComments()
    {
        var text = """
            # a comment
              # an indented comment
            NAME="Wolfi"
            ID=wolfi
            PRETTY_NAME="Wolfi \"rolling\" \$HOME \\ \`x\`"
            VERSION_ID='20230201 $notexpanded'
            HOME_URL="https://wolfi.dev"
            BUG_REPORT_URL=https://github.com/wolfi-dev/os/issues

            EMPTY=
            not a line
            """;
        var data = ReleaseData.Parse(text.Replace("\n", "\r\n"));
        Assert.Equal("wolfi", data.ID);
        Assert.Equal("Wolfi", data.Name);
        Assert.Equal("Wolfi \"rolling\" $HOME \\ `x`", data.PrettyName);
        Assert.Equal("20230201 $notexpanded", data.VersionID);
        Assert.Equal("https://wolfi.dev", data.HomeURL);
        Assert.Equal("https://github.com/wolfi-dev/os/issues", data.BugReportURL);
        Assert.Equal("", data.Fields["EMPTY"]);
        Assert.False(data.Fields.ContainsKey("not a line"));
    }

    [Fact]
    public void UnknownBackslashEscapesAreKeptLiterally()
    {
        var data = ReleaseData.Parse("NAME=\"a\\nb\"\n");
        Assert.Equal("a\\nb", data.Name);
    }

    [Fact]
    public void MissingFieldsAreEmpty()
    {
        var data = ReleaseData.Parse("ID=alpine\n");
        Assert.Equal("", data.VersionID);
        Assert.Equal("alpine", data.ToString());
    }
}
