using Xunit;

namespace MelangeRunner.Tests;

public class PodSpecTests
{
    [Fact]
    public void FromNormalisesWithoutChangingTheConfig()
    {
        var config = new PodConfig { Accelerator = "TCG", Memory = "2Gi", CPU = "3", Capabilities = new Capabilities { Add = new[] { "net_admin" } } };
        config.Validate();
        Assert.Equal(new[] { "net_admin" }, config.Capabilities.Add); // Validate only checks
        Assert.Equal("TCG", config.Accelerator);
        var spec = PodSpec.From(config);
        Assert.Equal(new[] { "CAP_NET_ADMIN" }, spec.Capabilities.Add);
        Assert.Equal("tcg", spec.Accelerator);
        Assert.Equal(2L * 1024 * 1024, spec.MemoryKiB);
        Assert.Equal(3, spec.CpuCount);
        Assert.Equal("auto", PodSpec.From(new PodConfig()).Accelerator);
    }

    [Fact]
    public void LaterEditsOfTheConfigDoNotReachTheSpec()
    {
        var config = new PodConfig();
        config.Environment["A"] = "1";
        config.Mounts.Add(new BindMount("/src", "/dst"));
        var spec = PodSpec.From(config);
        config.Environment["A"] = "2";
        config.Mounts.Clear();
        Assert.Equal("1", spec.StepEnvironment(null, null)["A"]);
        Assert.Single(spec.Mounts);
        var back = spec.ToConfig();
        Assert.Equal("1", back.Environment["A"]);
    }

    [Theory]
    [InlineData("BadCpu", "CPU", "0")]
    [InlineData("InvalidSize", "Memory", "lots")]
    [InlineData("InvalidAccelerator", "Accelerator", "hvf")]
    public void FromNamesTheFirstWrongField(string errorId, string field, string value)
    {
        var config = new PodConfig();
        typeof(PodConfig).GetProperty(field)!.SetValue(config, value);
        Assert.Equal(errorId, Assert.Throws<MelangeException>(() => PodSpec.From(config)).ErrorId);
    }
}

public class LicenseFileRuleTests
{
    [Theory]
    [InlineData("LICENSE", true)]
    [InlineData("sub/COPYING.md", true)]
    [InlineData("melange-out/pkg/LICENSE", false)]
    [InlineData(".git/COPYING", false)]
    [InlineData("src/main.c", false)]
    public void OneRuleForBothRunners(string path, bool expected) => Assert.Equal(expected, Workspace.IsLicenseFile(path));
}
