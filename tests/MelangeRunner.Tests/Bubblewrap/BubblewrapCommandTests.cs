using MelangeRunner.Bubblewrap;
using Xunit;

namespace MelangeRunner.Tests;

public class BubblewrapCommandTests
{
    private static string[] Build(PodConfig config, bool interactive = false, IReadOnlyDictionary<string, string>? env = null,
        bool hostIsRoot = true, IEnumerable<BindMount>? mounts = null, params string[] command)
    {
        var spec = PodSpec.From(config);
        return BubblewrapCommand.Build("/guest", mounts ?? spec.Mounts, spec, interactive, spec.BaseEnvironment(null, env), env,
            command.Length == 0 ? new[] { "true" } : command, hostIsRoot);
    }

    private static string Joined(string[] args) => " " + string.Join(' ', args) + " ";

    // melange's TestBubblewrapCmd cases.
    [Theory]
    [InlineData(null, null, "--unshare-user --uid 1000 --gid 1000")]
    [InlineData("65535", null, "--unshare-user --uid 65535 --gid 65535")]
    [InlineData("65535", "1000", "--unshare-user --uid 65535 --gid 1000")]
    public void UidAndGidFollowMelange(string? uid, string? gid, string expected)
    {
        var args = Build(new PodConfig { RunAsUID = uid, RunAsGID = gid });
        Assert.Contains(" " + expected + " ", Joined(args));
    }

    [Fact]
    public void RootStaysRootWithoutAUserNamespaceWhenBwrapIsRoot()
    {
        var args = Build(new PodConfig { RunAs = "root" });
        Assert.DoesNotContain("--unshare-user", args);
        Assert.DoesNotContain("--uid", args);
    }

    [Fact]
    public void RootWithoutHostRootMapsUidZeroInAUserNamespace()
    {
        var args = Build(new PodConfig { RunAs = "root" }, hostIsRoot: false);
        Assert.Contains(" --unshare-user --uid 0 --gid 0 ", Joined(args));
    }

    [Fact]
    public void RunAsUidWinsOverRunAs()
    {
        var args = Build(new PodConfig { RunAs = "root", RunAsUID = "42" });
        Assert.Contains(" --unshare-user --uid 42 --gid 42 ", Joined(args));
    }

    [Fact]
    public void RootIsBoundFirstThenEachMountInOrderThenTheFixedSandbox()
    {
        var mounts = new[] { new BindMount("/ws", "/home/build"), new BindMount("/cache", "/var/cache/melange") };
        var args = Build(new PodConfig(), mounts: mounts);
        var expectedPrefix = new[]
        {
            "--bind", "/guest", "/",
            "--bind", "/ws", "/home/build",
            "--bind", "/cache", "/var/cache/melange",
            "--unshare-pid", "--die-with-parent", "--dev", "/dev", "--proc", "/proc",
            "--ro-bind", "/sys", "/sys", "--chdir", "/home/build", "--clearenv",
        };
        Assert.Equal(expectedPrefix, args.Take(expectedPrefix.Length));
        Assert.Equal("true", args[^1]);
    }

    [Fact]
    public void NewSessionUnlessInteractive()
    {
        Assert.Contains("--new-session", Build(new PodConfig()));
        Assert.DoesNotContain("--new-session", Build(new PodConfig(), interactive: true));
    }

    [Fact]
    public void NetworkIsUnsharedUnlessNetworkingIsOn()
    {
        Assert.Contains("--unshare-net", Build(new PodConfig()));
        Assert.DoesNotContain("--unshare-net", Build(new PodConfig { Capabilities = new Capabilities { Networking = true } }));
    }

    [Fact]
    public void DefaultCapabilitiesAreDockersExactly()
    {
        var args = Build(new PodConfig());
        var drop = Array.IndexOf(args, "--cap-drop");
        Assert.Equal("ALL", args[drop + 1]);
        var added = args.Select((a, i) => (a, i)).Where(x => x.a == "--cap-add").Select(x => args[x.i + 1]).ToList();
        Assert.Equal(Capability.DefaultSet, added);
        Assert.True(args.Select((a, i) => (a, i)).Where(x => x.a == "--cap-add").All(x => x.i > drop), "every --cap-add comes after --cap-drop ALL");
    }

    [Fact]
    public void CapabilitiesAddAndDrop()
    {
        var config = new PodConfig { Capabilities = new Capabilities { Add = new[] { "net_admin", "CAP_SYS_PTRACE" }, Drop = new[] { "NET_RAW", "cap_mknod" } } };
        var added = CapsAdded(Build(config));
        Assert.Contains("CAP_NET_ADMIN", added);
        Assert.Contains("CAP_SYS_PTRACE", added);
        Assert.DoesNotContain("CAP_NET_RAW", added);
        Assert.DoesNotContain("CAP_MKNOD", added);
        Assert.Contains("CAP_CHOWN", added);
    }

    [Fact]
    public void DropAllKeepsOnlyWhatIsAdded()
    {
        var config = new PodConfig { Capabilities = new Capabilities { Add = new[] { "NET_BIND_SERVICE" }, Drop = new[] { "ALL" } } };
        Assert.Equal(new[] { "CAP_NET_BIND_SERVICE" }, CapsAdded(Build(config)));
    }

    [Fact]
    public void UnknownCapabilityIsAnErrorNamingIt()
    {
        var config = new PodConfig { Capabilities = new Capabilities { Add = new[] { "CAP_FLY" } } };
        var e = Assert.Throws<MelangeException>(() => Build(config));
        Assert.Equal("UnknownCapability", e.ErrorId);
        Assert.Contains("CAP_FLY", e.Message);
    }

    [Fact]
    public void EnvironmentInOrderThenOverridesAfterIt()
    {
        var config = new PodConfig();
        config.Environment["B"] = "2";
        config.Environment["A"] = "1";
        var args = Build(config, env: new Dictionary<string, string> { ["A"] = "override", ["C"] = "3" });
        var setenvs = args.Select((a, i) => (a, i)).Where(x => x.a == "--setenv").Select(x => $"{args[x.i + 1]}={args[x.i + 2]}").ToList();
        Assert.Equal(new[] { "PATH=" + Defaults.Path, "B=2", "A=1", "A=override", "C=3" }, setenvs);
        // bwrap applies --setenv in order, so the override is what the command sees; all come after --clearenv.
        Assert.True(Array.IndexOf(args, "--setenv") > Array.IndexOf(args, "--clearenv"));
    }

    [Fact]
    public void CommandComesLastUnchanged()
    {
        var args = Build(new PodConfig(), command: new[] { "sh", "-c", "echo 'a b' $HOME" });
        Assert.Equal(new[] { "sh", "-c", "echo 'a b' $HOME" }, args[^3..]);
    }

    private static List<string> CapsAdded(string[] args) =>
        args.Select((a, i) => (a, i)).Where(x => x.a == "--cap-add").Select(x => args[x.i + 1]).ToList();
}

public class StepEnvironmentTests
{
    [Fact]
    public void MelangesPathThenTheImageThenThePodThenTheCall()
    {
        var config = new PodConfig();
        config.Environment["CC"] = "clang";
        var env = PodSpec.From(config).StepEnvironment(new[] { "PATH=/opt/tools/bin:/usr/bin", "CC=gcc", "LANG=C.UTF-8", "NOEQUALS" },
            new Dictionary<string, string> { ["LANG"] = "C" });
        Assert.Equal("/opt/tools/bin:/usr/bin", env["PATH"]);
        Assert.Equal("clang", env["CC"]);
        Assert.Equal("C", env["LANG"]);
        Assert.False(env.ContainsKey("NOEQUALS"));
    }

    [Fact]
    public void WithoutAnImagePathMelangesDefaultPathIsSet()
    {
        Assert.Equal("/usr/local/sbin:/usr/local/bin:/usr/bin:/usr/sbin:/sbin:/bin", PodSpec.From(new PodConfig()).StepEnvironment(null, null)["PATH"]);
    }

    [Fact]
    public void TheBwrapVectorLayersTheSameWay()
    {
        var config = new PodConfig();
        config.Environment["PATH"] = "/mine";
        var spec = PodSpec.From(config);
        var args = BubblewrapCommand.Build("/guest", spec.Mounts, spec, false, spec.BaseEnvironment(new[] { "PATH=/image", "LANG=C" }, null), null, new[] { "true" }, true);
        var setenvs = args.Select((a, i) => (a, i)).Where(x => x.a == "--setenv").Select(x => $"{args[x.i + 1]}={args[x.i + 2]}").ToList();
        Assert.Equal(new[] { "PATH=/image", "LANG=C", "PATH=/mine" }, setenvs); // bwrap applies them in order: /mine wins
        // melange's default only where nothing else names a PATH.
        Assert.DoesNotContain(PodSpec.From(new PodConfig()).BaseEnvironment(null, new Dictionary<string, string> { ["PATH"] = "/x" }), kv => kv.Key == "PATH");
    }
}
