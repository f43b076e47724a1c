using MelangeRunner.Bubblewrap;
using MelangeRunner.Images;
using MelangeRunner.Native;
using MelangeRunner.Tests.Tar;
using Xunit;

namespace MelangeRunner.Tests.Images;

/// <summary>
/// Reads of image files resolve the image's symlinks inside the image, as the sandbox would,
/// both through openat2 and through the walk used on kernels without it.
/// </summary>
public class ImageRootTests
{
    // true: the walk that kernels without openat2 get, forced on; false: openat2.
    public static TheoryData<bool> Methods => new() { false, true };

    /// <summary>A scratch directory holding "outside" (a stand-in for host files) and the image "root".</summary>
    private sealed class Layout : IDisposable
    {
        public readonly TempTree Tree = new();
        public string Root => Tree.PathOf("root");
        public string Outside => Tree.PathOf("outside");

        public Layout()
        {
            Directory.CreateDirectory(Root);
            Directory.CreateDirectory(Outside);
            File.WriteAllText(Path.Combine(Outside, "shadow"), "HOST SECRET");
        }

        public void File_(string rel, string text)
        {
            var p = Path.Combine(Root, rel);
            Directory.CreateDirectory(Path.GetDirectoryName(p)!);
            File.WriteAllText(p, text);
        }

        public void Link(string rel, string target)
        {
            var p = Path.Combine(Root, rel);
            Directory.CreateDirectory(Path.GetDirectoryName(p)!);
            File.CreateSymbolicLink(p, target);
        }

        public void Dispose() => Tree.Dispose();
    }

    private static bool Unavailable(RootedResolve m) => m == RootedResolve.Openat2 && !RootedPath.Openat2Available;

    private static RootedOpenResult Open(string root, string path, RootedResolve m)
    {
        var r = RootedPath.OpenFile(root, path, out var h, m);
        h?.Dispose();
        return r;
    }

    private static string? Read(Layout l, string path, RootedResolve m) => ImageRoot.ReadText(l.Root, path, ImageRoot.MaxTextBytes, m);

    [Theory, MemberData(nameof(Methods))]
    public void AnAbsoluteDirectoryLinkToTheHostPathResolvesInsideTheRoot(bool walk)
    {
        var m = walk ? RootedResolve.Walk : RootedResolve.Openat2;
        if (Unavailable(m)) return;
        using var l = new Layout();
        // /etc -> /etc: the host would follow it to its own /etc; inside the root it is a loop.
        l.Link("etc", "/etc");
        Assert.Equal(RootedOpenResult.SymlinkLoop, Open(l.Root, "/etc/passwd", m));
        Assert.Null(Read(l, "/etc/passwd", m));
        // An absolute link to a host path that the image also has reads the image's copy.
        l.Link("hostlink", l.Outside);
        Assert.Equal(RootedOpenResult.NotFound, Open(l.Root, "hostlink/shadow", m));
        l.File_(l.Outside.TrimStart('/') + "/shadow", "image copy");
        Assert.Equal("image copy", Read(l, "hostlink/shadow", m));
    }

    [Theory, MemberData(nameof(Methods))]
    public void AbsoluteAndRelativeLinksResolveAsInTheSandbox(bool walk)
    {
        var m = walk ? RootedResolve.Walk : RootedResolve.Openat2;
        if (Unavailable(m)) return;
        using var l = new Layout();
        l.File_("usr/lib/os-release", "ID=image");
        l.Link("etc/os-release", "../usr/lib/os-release");
        l.Link("etc2", "/usr/lib");
        l.Link("usr/lib/self", ".");
        Assert.Equal("ID=image", Read(l, "/etc/os-release", m));
        Assert.Equal("ID=image", Read(l, "etc/os-release", m));
        Assert.Equal("ID=image", Read(l, "/etc2/os-release", m));
        Assert.Equal("ID=image", Read(l, "/etc2/self/self/../lib/os-release", m));
    }

    [Theory, MemberData(nameof(Methods))]
    public void DotDotStopsAtTheRoot(bool walk)
    {
        var m = walk ? RootedResolve.Walk : RootedResolve.Openat2;
        if (Unavailable(m)) return;
        using var l = new Layout();
        // ../outside/shadow from the root would be the host's file; inside, .. of / is /.
        Assert.Null(Read(l, "../outside/shadow", m));
        l.Link("etc/shadow", "../../../../../../../../outside/shadow");
        Assert.Equal(RootedOpenResult.NotFound, Open(l.Root, "/etc/shadow", m));
        l.File_("outside/shadow", "in image");
        Assert.Equal("in image", Read(l, "/etc/shadow", m));
        Assert.Equal("in image", Read(l, "/../../outside/../outside/shadow", m));
    }

    [Theory, MemberData(nameof(Methods))]
    public void AbsoluteLinksToHostFilesStayInside(bool walk)
    {
        var m = walk ? RootedResolve.Walk : RootedResolve.Openat2;
        if (Unavailable(m)) return;
        using var l = new Layout();
        l.Link("etc/shadow", Path.Combine(l.Outside, "shadow"));
        l.Link("etc/hostshadow", "/etc/shadow");
        Assert.Equal(RootedOpenResult.NotFound, Open(l.Root, "/etc/shadow", m));
        // /etc/hostshadow -> /etc/shadow -> <outside>/shadow: a chain, each hop inside the root.
        Assert.Equal(RootedOpenResult.NotFound, Open(l.Root, "/etc/hostshadow", m));
        Assert.True(File.Exists(Path.Combine(l.Root, "etc/shadow")), "the plain path would have reached the host file");
    }

    [Theory, MemberData(nameof(Methods))]
    public void LoopsAndLongChainsStopAtFortyLinks(bool walk)
    {
        var m = walk ? RootedResolve.Walk : RootedResolve.Openat2;
        if (Unavailable(m)) return;
        using var l = new Layout();
        l.Link("a", "b");
        l.Link("b", "/a");
        Assert.Equal(RootedOpenResult.SymlinkLoop, Open(l.Root, "a", m));
        // A chain of exactly 40 links resolves (the kernel's limit); 41 is a loop.
        l.File_("target", "end");
        for (int i = 0; i < 41; i++) l.Link("l" + i, i == 40 ? "target" : "l" + (i + 1));
        Assert.Equal("end", Read(l, "l1", m));
        Assert.Equal(RootedOpenResult.SymlinkLoop, Open(l.Root, "l0", m));
    }

    [Theory, MemberData(nameof(Methods))]
    public void DanglingLinksDirectoriesFifosAndFilesInThePathAreNotRead(bool walk)
    {
        var m = walk ? RootedResolve.Walk : RootedResolve.Openat2;
        if (Unavailable(m)) return;
        using var l = new Layout();
        l.Link("etc/passwd", "/nonexistent/passwd");
        Assert.Equal(RootedOpenResult.NotFound, Open(l.Root, "/etc/passwd", m));
        Assert.Equal(RootedOpenResult.NotFound, Open(l.Root, "/etc/missing", m));
        Assert.Equal(RootedOpenResult.NotRegularFile, Open(l.Root, "/etc", m));
        Assert.Equal(RootedOpenResult.NotRegularFile, Open(l.Root, "/", m));
        // A FIFO is never opened for reading (that would hang until a writer came).
        Assert.Equal(0, Libc.Mkfifo(Path.Combine(l.Root, "etc/os-release"), 0x1A4));
        Assert.Equal(RootedOpenResult.NotRegularFile, Open(l.Root, "/etc/os-release", m));
        l.File_("etc/group", "g");
        Assert.Equal(RootedOpenResult.NotFound, Open(l.Root, "/etc/group/x", m));
        Assert.Equal(RootedOpenResult.NotFound, RootedPath.OpenFile(l.Tree.PathOf("no-such-root"), "/etc/group", out _, m));
    }

    [Theory, MemberData(nameof(Methods))]
    public async Task ALinkSwappedInDuringReadsNeverLeadsOutside(bool walk)
    {
        var m = walk ? RootedResolve.Walk : RootedResolve.Openat2;
        if (Unavailable(m)) return;
        using var l = new Layout();
        // A build step flips /d between a directory and a symlink to the host directory while
        // the host reads /d/shadow: every read sees the image's file or none, never the host's.
        var real = Path.Combine(l.Root, "d");
        var spare = Path.Combine(l.Root, "d.real");
        var link = Path.Combine(l.Root, "d.link");
        Directory.CreateDirectory(spare);
        File.WriteAllText(Path.Combine(spare, "shadow"), "image");
        File.CreateSymbolicLink(link, l.Outside);
        Rename(spare, real);
        using var stop = new CancellationTokenSource();
        var flipper = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                // rename(2) swaps atomically: d is always either the directory or the link.
                Rename(real, spare);
                Rename(link, real);
                Rename(real, link);
                Rename(spare, real);
            }
        });
        try
        {
            for (int i = 0; i < 3000; i++)
                Assert.NotEqual("HOST SECRET", Read(l, "/d/shadow", m));
        }
        finally
        {
            stop.Cancel();
            await flipper;
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "rename", SetLastError = true)]
    private static extern int rename_(string from, string to);

    // rename(2) itself: File.Move refuses a symlink to a directory.
    private static void Rename(string from, string to) =>
        Assert.True(rename_(from, to) == 0, $"rename {from} {to}: errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");

    [Fact]
    public void AFileLargerThanTheLimitIsAnError()
    {
        using var l = new Layout();
        l.File_("etc/passwd", new string('x', 100));
        var e = Assert.Throws<MelangeException>(() => ImageRoot.ReadText(l.Root, "/etc/passwd", 99));
        Assert.Equal("ImageFileTooLarge", e.ErrorId);
        Assert.Equal(new string('x', 100), ImageRoot.ReadText(l.Root, "/etc/passwd", 100));
    }

    [Fact]
    public void PasswdLookupUsesTheImagesPasswdThroughItsSymlinks()
    {
        using var l = new Layout();
        l.Link("etc", "/usr/etc");
        l.File_("usr/etc/passwd", "builder:x:1234:2345::/home/build:/bin/sh\n");
        var resolved = GuestUsers.ResolveInImage(PodSpec.From(new PodConfig { RunAs = "builder" }), l.Root);
        Assert.Equal("1234", resolved.RunAsUID);
        Assert.Equal("2345", resolved.RunAsGID);
    }

    [Fact]
    public void PasswdLookupNeverReadsTheHostsPasswd()
    {
        using var l = new Layout();
        // The host has root and daemon; an image whose /etc is the host's must not find daemon.
        Assert.Contains("\ndaemon:", "\n" + File.ReadAllText("/etc/passwd"));
        l.Link("etc", "/etc");
        var e = Assert.Throws<MelangeException>(() => GuestUsers.ResolveInImage(PodSpec.From(new PodConfig { RunAs = "daemon" }), l.Root));
        Assert.Equal("UnknownUser", e.ErrorId);
        // A numeric RunAs needs no passwd at all.
        Assert.Equal("4321", GuestUsers.ResolveInImage(PodSpec.From(new PodConfig { RunAs = "4321" }), l.Root).RunAsUID);
    }
}
