using System.Management.Automation;
using System.Reflection;
using System.Runtime.Loader;

namespace MelangeRunner.PowerShell;

/// <summary>
/// Loads the engine's third-party dependencies (SSH.NET, SharpCompress, BouncyCastle,
/// Microsoft.Extensions.Logging.Abstractions…) from bin/lib into an AssemblyLoadContext of
/// the module's own, so that other versions already loaded in the session do not clash.
/// The engine itself stays in the default context: PowerShell resolves type literals such
/// as [MelangeRunner.Defaults] only there.
/// </summary>
public sealed class ModuleLoader : IModuleAssemblyInitializer, IModuleAssemblyCleanup
{
    private const string EngineAssemblyName = "MelangeRunner";

    private static readonly string ModuleBinDirectory = Path.GetDirectoryName(typeof(ModuleLoader).Assembly.Location)!;

    private static readonly DependencyLoadContext Context = new(Path.Combine(ModuleBinDirectory, "lib"));

    public void OnImport()
    {
        AssemblyLoadContext.Default.Resolving += Resolve;
        // Load the engine now, so that [MelangeRunner.Defaults] works before the first cmdlet runs.
        _ = typeof(Defaults).Assembly;
    }

    public void OnRemove(PSModuleInfo module)
    {
        PodTracker.StopAllInCurrentRunspace();
        AssemblyLoadContext.Default.Resolving -= Resolve;
    }

    // Runs only for what the default context could not find itself: the engine next to this
    // assembly, and the dependencies in lib/ (which then resolve their own references in Context).
    private static Assembly? Resolve(AssemblyLoadContext defaultContext, AssemblyName name)
    {
        if (name.Name == EngineAssemblyName)
            return defaultContext.LoadFromAssemblyPath(Path.Combine(ModuleBinDirectory, EngineAssemblyName + ".dll"));
        return Context.Has(name) ? Context.LoadFromAssemblyName(name) : null;
    }

    private sealed class DependencyLoadContext : AssemblyLoadContext
    {
        private readonly string _directory;

        public DependencyLoadContext(string directory) : base("MelangeRunner", isCollectible: false)
        {
            _directory = directory;
        }

        public bool Has(AssemblyName name) => File.Exists(PathOf(name));

        private string PathOf(AssemblyName name) => Path.Combine(_directory, name.Name + ".dll");

        // Framework assemblies (System.*) are not in lib/ and come from the default context.
        protected override Assembly? Load(AssemblyName assemblyName) =>
            Has(assemblyName) ? LoadFromAssemblyPath(PathOf(assemblyName)) : null;
    }
}
