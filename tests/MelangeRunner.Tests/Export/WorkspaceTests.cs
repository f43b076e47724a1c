using Xunit;

namespace MelangeRunner.Tests;

public class WorkspaceTests
{
    [Theory]
    [InlineData("LICENSE", true)]
    [InlineData("LICENCE.txt", true)]
    [InlineData("license.md", true)]
    [InlineData("COPYING", true)]
    [InlineData("COPYING.LIB", true)]
    [InlineData("NOTICE", true)]
    [InlineData("LICENSE-APACHE", true)]
    [InlineData("UNLICENSE", true)]
    [InlineData("licenses.go", false)]
    [InlineData("README", false)]
    [InlineData("mylicense", false)]
    public void RecognisesLicenseFileNames(string name, bool expected) => Assert.Equal(expected, Workspace.IsLicenseFileName(name));

    [Theory]
    [InlineData("/etc/passwd")]
    [InlineData("../x")]
    [InlineData("a/../../x")]
    [InlineData("")]
    public void RefusesExtraFilesOutsideTheWorkspace(string name)
    {
        var e = Assert.Throws<MelangeException>(() => Workspace.ValidateExtraFiles(new[] { name }));
        Assert.Equal("BadExtraFile", e.ErrorId);
    }

    [Fact]
    public void NormalisesExtraFiles() =>
        Assert.Equal(new[] { "config.log", "sub/x" }, Workspace.ValidateExtraFiles(new[] { "./config.log", "sub/x", "config.log" }));

    [Fact]
    public void FindsLicenseFilesOutsideMelangeOut()
    {
        var dir = Directory.CreateTempSubdirectory("mr-ws-").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(dir, "melange-out/pkg"));
            Directory.CreateDirectory(Path.Combine(dir, "src/vendor"));
            File.WriteAllText(Path.Combine(dir, "LICENSE"), "x");
            File.WriteAllText(Path.Combine(dir, "src/vendor/COPYING"), "x");
            File.WriteAllText(Path.Combine(dir, "melange-out/pkg/LICENSE"), "x");
            File.WriteAllText(Path.Combine(dir, "README"), "x");
            Assert.Equal(new[] { "LICENSE", "src/vendor/COPYING" }, Workspace.FindLicenseFiles(dir));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Theory]
    [InlineData("plain", "plain")]
    [InlineData("a b", "'a b'")]
    [InlineData("it's", "'it'\"'\"'s'")]
    [InlineData("", "''")]
    [InlineData("$HOME", "'$HOME'")]
    public void QuotesForTheShell(string word, string expected) => Assert.Equal(expected, ShellQuote.Quote(word));
}
