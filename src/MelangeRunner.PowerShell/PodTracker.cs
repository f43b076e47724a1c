using System.Collections.Concurrent;
using System.Management.Automation.Runspaces;

namespace MelangeRunner.PowerShell;

/// <summary>
/// The live pods of each runspace, so that removing the module or closing the runspace
/// (or ending the process) stops them instead of leaving VMs behind.
/// </summary>
internal static class PodTracker
{
    private static readonly ConcurrentDictionary<Guid, ConcurrentDictionary<string, Pod>> PodsByRunspace = new();

    static PodTracker()
    {
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            foreach (var runspaceId in PodsByRunspace.Keys) StopAll(runspaceId);
        };
    }

    public static void Add(Pod pod)
    {
        var runspace = Runspace.DefaultRunspace;
        var id = runspace?.InstanceId ?? Guid.Empty;
        var pods = PodsByRunspace.GetOrAdd(id, key =>
        {
            if (runspace is not null)
                runspace.StateChanged += (_, e) =>
                {
                    if (e.RunspaceStateInfo.State is RunspaceState.Closing or RunspaceState.Closed or RunspaceState.Broken)
                        StopAll(key);
                };
            return new ConcurrentDictionary<string, Pod>();
        });
        pods[pod.Id] = pod;
    }

    public static void Remove(Pod pod)
    {
        foreach (var pods in PodsByRunspace.Values) pods.TryRemove(pod.Id, out _);
    }

    /// <summary>
    /// The live pods (of any runspace) started from <paramref name="image"/>. Refs are compared as
    /// full paths: the same image may come from Import-MelangeImage or from Get-MelangeImage.
    /// </summary>
    public static IReadOnlyList<Pod> RunningPodsOf(ImageInfo image)
    {
        var target = FullPath(image.Ref);
        return PodsByRunspace.Values.SelectMany(p => p.Values)
            .Where(p => FullPath(p.ImageRef) == target && p.State is PodState.Running or PodState.Starting).ToList();
    }

    private static string FullPath(string path) => Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));

    /// <summary>The pods started in the current runspace (Get-MelangePod), in the order they started.</summary>
    public static IReadOnlyList<Pod> InCurrentRunspace() =>
        PodsByRunspace.TryGetValue(Runspace.DefaultRunspace?.InstanceId ?? Guid.Empty, out var pods)
            ? pods.Values.OrderBy(p => p.StartedAt ?? DateTimeOffset.MaxValue).ThenBy(p => p.Id, StringComparer.Ordinal).ToList()
            : Array.Empty<Pod>();

    public static void StopAllInCurrentRunspace() => StopAll(Runspace.DefaultRunspace?.InstanceId ?? Guid.Empty);

    private static void StopAll(Guid runspaceId)
    {
        if (!PodsByRunspace.TryRemove(runspaceId, out var pods)) return;
        foreach (var pod in pods.Values)
        {
            try { pod.Dispose(); }
            catch (Exception) { /* best effort while tearing down; each pod cleans up independently */ }
        }
    }
}
