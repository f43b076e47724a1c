using Xunit;

namespace MelangeRunner.Tests;

public class SizeParserTests
{
    [Theory]
    [InlineData("1Ki", 1)]
    [InlineData("1024Ki", 1024)]
    [InlineData("1Mi", 1024)]
    [InlineData("4Gi", 4L * 1024 * 1024)]
    [InlineData("1Ti", 1024L * 1024 * 1024)]
    [InlineData("1K", 0)]          // 1000 bytes rounds down to 0 KiB, as melange's integer division does
    [InlineData("2048K", 2000)]
    [InlineData("1M", 976)]
    [InlineData("1m", 976)]
    [InlineData("1G", 976562)]
    [InlineData("1g", 976562)]
    [InlineData("1T", 976562500)]
    [InlineData("1t", 976562500)]
    [InlineData("2048B", 2)]
    [InlineData("50Gi", 50L * 1024 * 1024)]
    public void ParsesMelangeUnits(string value, long expectedKiB) =>
        Assert.Equal(expectedKiB, SizeParser.ParseToKiB(value));

    [Theory]
    [InlineData("")]
    [InlineData("1024")]      // no unit
    [InlineData("Gi")]        // no number
    [InlineData("1.5Gi")]     // not whole
    [InlineData("-1Gi")]
    [InlineData("1 Gi")]
    [InlineData("1GB")]       // not a melange unit
    [InlineData("1gi")]
    [InlineData("1KiB")]
    [InlineData("99999999999999999999Gi")]
    [InlineData("9999999999Ti")]
    public void RejectsAnythingElseNamingTheAcceptedUnits(string value)
    {
        var e = Assert.Throws<MelangeException>(() => SizeParser.ParseToKiB(value, "memory size"));
        Assert.Equal("InvalidSize", e.ErrorId);
        Assert.Equal(ErrorKind.InvalidArgument, e.Kind);
        Assert.Contains("memory size", e.Message);
        Assert.Contains("Ki, Mi, Gi, Ti, K, M, G, T, k, m, g, t, B", e.Fix);
    }

    [Fact]
    public void UnitsAreBinary()
    {
        Assert.Equal(1024, Units.KB);
        Assert.Equal(1048576, Units.MB);
        Assert.Equal(1073741824, Units.GB);
        Assert.Equal(1099511627776, Units.TB);
    }

    [Fact]
    public void ConfigValidationChecksSizes()
    {
        var e = Assert.Throws<MelangeException>(() => new PodConfig { Memory = "lots" }.Validate());
        Assert.Contains("Memory", e.Message);
        new PodConfig { Memory = "2Gi", Disk = "50Gi", CPU = "2" }.Validate();
    }

    [Theory]
    [InlineData(4294967296L, "4Gi")]
    [InlineData(1610612736L, "1536Mi")]
    [InlineData(1000L, "1000B")]
    [InlineData(0L, "0B")]
    [InlineData(1099511627776L, "1Ti")]
    public void FromBytes_IsTheLargestExactBinaryUnit_AndParsesBack(long bytes, string expected)
    {
        Assert.Equal(expected, SizeParser.FromBytes(bytes));
        Assert.Equal(bytes, SizeParser.ParseToBytes(SizeParser.FromBytes(bytes)));
    }

    [Fact]
    public void FromBytes_RefusesNegative() =>
        Assert.Equal("InvalidSize", Assert.Throws<MelangeException>(() => SizeParser.FromBytes(-1)).ErrorId);
}
