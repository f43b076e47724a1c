using MelangeRunner.Tests.Tar;
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

    [Fact]
    public void ReadFromImageFollowsTheImagesLinksInsideTheImage()
    {
        using var t = new TempTree();
        var root = t.Dir("root");
        // /etc -> /etc would be the host's os-release to a plain read; inside the image it is a loop.
        File.CreateSymbolicLink(Path.Combine(root, "etc"), "/etc");
        Assert.True(File.Exists(Path.Combine(root, "etc/os-release")), "the host has an os-release for a plain read to find");
        Assert.Null(ReleaseData.ReadFromImage(root));
        Directory.CreateDirectory(Path.Combine(root, "usr/lib"));
        File.WriteAllText(Path.Combine(root, "usr/lib/os-release"), "ID=fallback\n");
        Assert.Equal("fallback", ReleaseData.ReadFromImage(root)!.ID);
        // /etc/os-release wins when it resolves inside the image: etc -> /srv/etc, an absolute link.
        File.Delete(Path.Combine(root, "etc"));
        File.CreateSymbolicLink(Path.Combine(root, "etc"), "/srv/etc");
        Directory.CreateDirectory(Path.Combine(root, "srv/etc"));
        File.CreateSymbolicLink(Path.Combine(root, "srv/etc/os-release"), "../../../../../../opt/os-release");
        Directory.CreateDirectory(Path.Combine(root, "opt"));
        File.WriteAllText(Path.Combine(root, "opt/os-release"), "ID=inimage\n");
        Assert.Equal("inimage", ReleaseData.ReadFromImage(root)!.ID);
    }
}
