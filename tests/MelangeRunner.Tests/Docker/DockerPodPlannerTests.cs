#nullable disable
using System.Text.Json;
using MelangeRunner.Docker;
using Xunit;

namespace MelangeRunner.Tests.Docker;

public class DockerPodPlannerTests
{
    private static readonly ImageInfo Image = new() { Runner = Runners.Docker, Ref = "melange-runner/image:0123456789abcdef", Arch = "x86_64", Source = "/x.tar", Env = new[] { "FOO=image" } };

    private static string Joined(string[] args) => " " + string.Join(' ', args) + " ";

    [Fact]
    public void KeepsUpAndRunsLdconfigFirstAsMelange()
    {
        var r = DockerPodPlanner.CreateRequest(PodSpec.From(new PodConfig()), Image);
        Assert.Equal(new[] { "/bin/sh", "-c", "[ -x /sbin/ldconfig ] && /sbin/ldconfig /lib || true\nwhile true; do sleep 5; done" }, r.Cmd);
        Assert.Equal(Image.Ref, r.Image);
        Assert.Empty(r.Entrypoint);
    }

    [Fact]
    public void CarriesMelangesLabels()
    {
        var r = DockerPodPlanner.CreateRequest(PodSpec.From(new PodConfig { PackageName = "hello" }), Image);
        Assert.Equal("true", r.Labels["dev.chainguard.melange"]);
        Assert.Equal("hello", r.Labels["dev.chainguard.melange.package"]);
        Assert.Contains(":", r.Labels["dev.chainguard.melange.runner-owner"]);
    }

    [Fact]
    public void NoNetworkUnlessNetworking()
    {
        Assert.Equal("none", DockerPodPlanner.CreateRequest(PodSpec.From(new PodConfig()), Image).HostConfig.NetworkMode);
        var on = DockerPodPlanner.CreateRequest(PodSpec.From(new PodConfig { Capabilities = new Capabilities { Networking = true } }), Image);
        Assert.Null(on.HostConfig.NetworkMode);
        Assert.DoesNotContain("--network", DockerPodPlanner.RunArguments(on));
        Assert.Contains(" --network none ", Joined(DockerPodPlanner.RunArguments(DockerPodPlanner.CreateRequest(PodSpec.From(new PodConfig()), Image))));
    }

    [Fact]
    public void CapabilitiesAreDockersDefaultsPlusAddMinusDrop()
    {
        var r = DockerPodPlanner.CreateRequest(PodSpec.From(new PodConfig { Capabilities = new Capabilities { Add = new[] { "net_admin" }, Drop = new[] { "CAP_CHOWN" } } }), Image);
        Assert.Equal(new[] { "ALL" }, r.HostConfig.CapDrop);
        Assert.Contains("CAP_NET_ADMIN", r.HostConfig.CapAdd);
        Assert.DoesNotContain("CAP_CHOWN", r.HostConfig.CapAdd);
        Assert.Contains("CAP_SETUID", r.HostConfig.CapAdd);
        var none = DockerPodPlanner.CreateRequest(PodSpec.From(new PodConfig { Capabilities = new Capabilities { Drop = new[] { "ALL" } } }), Image);
        Assert.Empty(none.HostConfig.CapAdd);
    }

    [Fact]
    public void CpuAndMemoryLimitsComeFromTheConfig()
    {
        var r = DockerPodPlanner.CreateRequest(PodSpec.From(new PodConfig { CPU = "2", Memory = "512Mi" }), Image);
        Assert.Equal(2_000_000_000L, r.HostConfig.NanoCPUs);
        Assert.Equal(512L << 20, r.HostConfig.Memory);
        Assert.Equal(512L << 20, r.HostConfig.MemorySwap);
        var args = Joined(DockerPodPlanner.RunArguments(r));
        Assert.Contains(" --cpus 2 ", args);
        Assert.Contains(" --memory 536870912b ", args);
        var unlimited = DockerPodPlanner.CreateRequest(PodSpec.From(new PodConfig()), Image);
        Assert.Equal(0, unlimited.HostConfig.NanoCPUs);
        Assert.Equal(0, unlimited.HostConfig.Memory);
    }

    [Fact]
    public void EnvironmentIsTheStepEnvironment()
    {
        var config = new PodConfig();
        config.Environment["FOO"] = "config";
        config.Environment["BAR"] = "x y";
        var r = DockerPodPlanner.CreateRequest(PodSpec.From(config), Image);
        Assert.Contains("FOO=config", r.Env);
        Assert.Contains("BAR=x y", r.Env);
        Assert.Contains("PATH=" + Defaults.Path, r.Env);
    }

    [Fact]
    public void TheWorkspaceIsNotBoundButTheCacheAndMountsAre()
    {
        var config = new PodConfig { WorkspaceDir = "/tmp/ws", CacheDir = "/tmp/cache", Mounts = { new BindMount("/src", "/dst"), new BindMount("/etc/resolv.conf", "/etc/resolv.conf") } };
        var mounts = DockerPodPlanner.CreateRequest(PodSpec.From(config), Image).HostConfig.Mounts;
        Assert.DoesNotContain(mounts, m => m.Source == "/tmp/ws");
        Assert.Contains(mounts, m => m.Source == "/tmp/cache" && m.Target == Defaults.CacheDir && m.Type == "bind");
        Assert.Contains(mounts, m => m.Source == "/src" && m.Target == "/dst");
        Assert.DoesNotContain(mounts, m => m.Source == "/etc/resolv.conf");
    }

    [Theory]
    [InlineData(null, null, null, null)]
    [InlineData("65535", null, null, "65535")]
    [InlineData("65535", "1000", null, "65535:1000")]
    [InlineData(null, null, "build", "build")]
    [InlineData("12", null, "build", "12")]
    public void ExecUserFollowsRunAs(string uid, string gid, string runAs, string expected) =>
        Assert.Equal(expected, DockerPodPlanner.ExecUser(PodSpec.From(new PodConfig { RunAsUID = uid, RunAsGID = gid, RunAs = runAs })));

    [Theory]
    [InlineData(null, true)]
    [InlineData("", true)]
    [InlineData("root", true)]
    [InlineData("0", true)]
    [InlineData("0:1000", true)]
    [InlineData("root:wheel", true)]
    [InlineData("build", false)]
    [InlineData("1000:0", false)]
    [InlineData("rooted", false)]
    public void KnowsRoot(string user, bool root) => Assert.Equal(root, DockerPodPlanner.IsRoot(user));

    [Fact]
    public void ThePlanIsTheCreateRequestAsJsonAndTheDockerRunLine()
    {
        var plan = DockerPodPlanner.Plan(PodSpec.From(new PodConfig { PackageName = "p", CPU = "1", Memory = "1Gi" }), Image);
        Assert.Equal("docker", plan.Runner);
        Assert.Equal("docker", plan.FileName);
        Assert.Equal("run", plan.Arguments[0]);
        Assert.Equal(1, plan.Cpus);
        Assert.Equal(1L << 20, plan.MemoryKiB);
        using var json = JsonDocument.Parse(plan.CreateRequest!);
        Assert.Equal(Image.Ref, json.RootElement.GetProperty("Image").GetString());
        Assert.Equal("none", json.RootElement.GetProperty("HostConfig").GetProperty("NetworkMode").GetString());
        Assert.Equal("p", json.RootElement.GetProperty("Labels").GetProperty("dev.chainguard.melange.package").GetString());
        Assert.Contains(Image.Ref + " /bin/sh -c", plan.CommandLine);
    }
}
