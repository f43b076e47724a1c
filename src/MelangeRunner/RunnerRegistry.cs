using MelangeRunner.Bubblewrap;
using MelangeRunner.Qemu;

namespace MelangeRunner;

/// <summary>The runners this engine has, by name.</summary>
public static class RunnerRegistry
{
    private static readonly Dictionary<string, Lazy<IRunner>> ByName = new(StringComparer.OrdinalIgnoreCase)
    {
        [Runners.Bubblewrap] = new(() => new BubblewrapRunner()),
        [Runners.Qemu] = new(() => new QemuRunner()),
        [Runners.Docker] = new(() => new Docker.DockerRunner()),
    };

    /// <summary>The runner called <paramref name="name"/>; an unknown name is an error listing the known ones.</summary>
    public static IRunner Get(string name)
    {
        if (ByName.TryGetValue(name ?? "", out var runner)) return runner.Value;
        throw new MelangeException(ErrorKind.InvalidArgument, "UnknownRunner",
            $"'{name}' is not a runner.", $"Use one of: {string.Join(", ", Runners.All)}.", name);
    }
}
