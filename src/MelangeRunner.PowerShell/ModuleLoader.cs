using System.Management.Automation;
using System.Reflection;
using System.Runtime.Loader;

namespace MelangeRunner.PowerShell;

/// <summary>
/// Loads the engine and its third-party dependencies (SSH.NET, SharpCompress, BouncyCastle,
/// Microsoft.Extensions.Logging.Abstractions) into an AssemblyLoadContext of the module's
/// own, so that other versions already loaded in the session do not clash with them.
/// </summary>
public sealed class ModuleLoader : IModuleAssemblyInitializer, IModuleAssemblyCleanup
{
    private const string EngineAssemblyName = "MelangeRunner";

    private static readonly string LibDirectory =
        Path.Combine(Path.GetDirectoryName(typeof(ModuleLoader).Assembly.Location)!, "lib");

    private static readonly DependencyLoadContext Context = new(LibDirectory);

    public void OnImport()
    {
        AssemblyLoadContext.Default.Resolving += ResolveEngine;
        // Load it now, so that [MelangeRunner.Defaults] works before the first cmdlet runs.
        Context.LoadFromAssemblyName(new AssemblyName(EngineAssemblyName));
    }

    public void OnRemove(PSModuleInfo module)
    {
        PodTracker.StopAllInCurrentRunspace();
        AssemblyLoadContext.Default.Resolving -= ResolveEngine;
    }

    // Only the engine is redirected: everything it references then resolves inside Context.
    private static Assembly? ResolveEngine(AssemblyLoadContext defaultContext, AssemblyName name) =>
        name.Name == EngineAssemblyName ? Context.LoadFromAssemblyName(name) : null;

    private sealed class DependencyLoadContext : AssemblyLoadContext
    {
        private readonly string _directory;

        public DependencyLoadContext(string directory) : base("MelangeRunner", isCollectible: false)
        {
            _directory = directory;
        }

        protected override Assembly? Load(AssemblyName assemblyName)
        {
            var path = Path.Combine(_directory, assemblyName.Name + ".dll");
            // Framework assemblies (System.*) are not in lib/ and come from the default context.
            return File.Exists(path) ? LoadFromAssemblyPath(path) : null;
        }
    }
}
