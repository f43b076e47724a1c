using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace MelangeRunner.Native;

/// <summary>How <see cref="RootedPath.OpenFile"/> resolves a path inside its root.</summary>
internal enum RootedResolve
{
    /// <summary>openat2 when the kernel has it (Linux 5.6+), else the walk.</summary>
    Auto,
    /// <summary>openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) only (fails where the kernel lacks it).</summary>
    Openat2,
    /// <summary>The component-by-component walk, as on kernels without openat2.</summary>
    Walk,
}

/// <summary>What opening a path inside a root found.</summary>
internal enum RootedOpenResult
{
    Opened,
    /// <summary>No such file, a dangling link, or a component that is not a directory.</summary>
    NotFound,
    /// <summary>It exists but is a directory, FIFO, socket or device: never opened for reading.</summary>
    NotRegularFile,
    /// <summary>More than 40 symlinks on the way (a loop), as the kernel's ELOOP.</summary>
    SymlinkLoop,
    /// <summary>A directory on the way may not be searched, or the file not read, by this process.</summary>
    AccessDenied,
}

/// <summary>
/// Opens a file relative to a root directory as a process chrooted there would: symlinks,
/// absolute or relative, are resolved inside the root and <c>..</c> stops at it, so a hostile
/// image's <c>/etc -&gt; /etc</c> or <c>../../../etc/shadow</c> never reaches the host's files.
/// </summary>
/// <remarks>
/// Security rule: every read of an image file on the host goes through here. Both methods are
/// race-free against a build step that swaps a directory for a symlink while we resolve:
/// openat2 resolves in the kernel (which returns EAGAIN on a racing rename), and the walk only
/// ever moves through file descriptors it opened with O_NOFOLLOW, keeping its own stack of
/// parent descriptors for <c>..</c> rather than asking the file system for the parent. The final
/// file is opened O_PATH (no side effects, even on a FIFO or device), checked to be a regular
/// file, and only then re-opened for reading through /proc/self/fd, which is the same inode.
/// </remarks>
internal static unsafe class RootedPath
{
    /// <summary>The kernel's MAXSYMLINKS.</summary>
    public const int MaxSymlinks = 40;

    /// <summary>Directories the walk holds open at once (the path depth); deeper paths are NotFound.</summary>
    public const int MaxDepth = 512;

    private const int O_RDONLY = 0, O_NOCTTY = 0x100, O_CLOEXEC = 0x80000, O_PATH = 0x200000;
    private static readonly int O_NOFOLLOW = Libc.O_NOFOLLOW;
    private const ulong RESOLVE_NO_MAGICLINKS = 0x02, RESOLVE_IN_ROOT = 0x10;
    private const long SYS_openat2 = 437; // the same number on x86_64 and aarch64 (new syscalls share one table)
    private const int EPERM = 1, ENOENT = 2, EINTR = 4, EAGAIN = 11, EACCES = 13, ENOTDIR = 20, EINVAL = 22, ENAMETOOLONG = 36, ENOSYS = 38, ELOOP = 40, E2BIG = 7;

    [StructLayout(LayoutKind.Sequential)]
    private struct OpenHow { public ulong Flags; public ulong Mode; public ulong Resolve; }

    [DllImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static extern long syscall_openat2(long number, int dirfd, byte* path, OpenHow* how, nuint size);
    [DllImport("libc", EntryPoint = "openat", SetLastError = true)]
    private static extern int openat_(int dirfd, byte* path, int flags, uint mode);
    [DllImport("libc", EntryPoint = "readlinkat", SetLastError = true)]
    private static extern nint readlinkat_(int dirfd, byte* path, byte* buf, nuint size);
    [DllImport("libc", EntryPoint = "close", SetLastError = true)]
    private static extern int close_(int fd);

    private static int Errno => Marshal.GetLastPInvokeError();

    // Set once openat2 is found missing (ENOSYS) or filtered (a seccomp profile's EPERM).
    private static volatile bool s_noOpenat2;

    /// <summary>Whether this kernel answered openat2 (false after the first ENOSYS/EPERM).</summary>
    public static bool Openat2Available => !s_noOpenat2;

    /// <summary>
    /// Opens the regular file at <paramref name="path"/> (absolute or relative: both are taken
    /// from <paramref name="root"/>) for reading. <paramref name="handle"/> is set only for
    /// <see cref="RootedOpenResult.Opened"/>. The root itself is trusted and opened as given.
    /// </summary>
    public static RootedOpenResult OpenFile(string root, string path, out SafeFileHandle? handle, RootedResolve method = RootedResolve.Auto)
    {
        handle = null;
        int rootFd = Open(Libc.AT_FDCWD, root, O_PATH | O_CLOEXEC);
        if (rootFd < 0)
        {
            int e = -rootFd;
            return e is ENOENT or ENOTDIR ? RootedOpenResult.NotFound : e == EACCES ? RootedOpenResult.AccessDenied : throw Error("open", root, e);
        }
        try
        {
            if (TypeOf(rootFd, root) != Libc.S_IFDIR) return RootedOpenResult.NotFound;
            int fd = -1;
            var result = RootedOpenResult.NotFound;
            bool resolved = false;
            if (method != RootedResolve.Walk && !s_noOpenat2)
                resolved = TryOpenat2(rootFd, path, out result, out fd);
            if (!resolved)
            {
                if (method == RootedResolve.Openat2) throw new PlatformNotSupportedException("openat2 is not available on this kernel.");
                result = WalkOpen(rootFd, path, out fd);
            }
            if (result != RootedOpenResult.Opened) return result;
            try
            {
                if (TypeOf(fd, path) != Libc.S_IFREG) return RootedOpenResult.NotRegularFile;
                // Re-open the O_PATH descriptor itself: the kernel hands back the same inode, so
                // nothing can be swapped in between the type check and the read.
                int readFd = Open(Libc.AT_FDCWD, "/proc/self/fd/" + fd, O_RDONLY | O_NOCTTY | O_CLOEXEC);
                if (readFd == -EACCES) return RootedOpenResult.AccessDenied; // a 0000 file of a non-root import
                if (readFd < 0) throw Error("reopen", path, -readFd);
                handle = new SafeFileHandle(readFd, ownsHandle: true);
                return RootedOpenResult.Opened;
            }
            finally { close_(fd); }
        }
        finally { close_(rootFd); }
    }

    /// <summary>False when openat2 cannot be used here (then the caller walks).</summary>
    private static bool TryOpenat2(int rootFd, string path, out RootedOpenResult result, out int fd)
    {
        var how = new OpenHow { Flags = (ulong)(O_PATH | O_CLOEXEC), Resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
        var bytes = CString(path.Length == 0 ? "." : path);
        fd = -1;
        result = RootedOpenResult.NotFound;
        for (int attempt = 0; attempt < 16; attempt++)
        {
            long r;
            fixed (byte* p = bytes) r = syscall_openat2(SYS_openat2, rootFd, p, &how, (nuint)sizeof(OpenHow));
            if (r >= 0) { fd = (int)r; result = RootedOpenResult.Opened; return true; }
            int e = Errno;
            if (e is EINTR or EAGAIN) continue; // EAGAIN: a rename raced the lookup, and the kernel asks for a retry
            if (e is ENOSYS or EPERM) // missing, or a seccomp profile that answers unknown syscalls with EPERM
            {
                s_noOpenat2 = true;
                return false;
            }
            if (e is EINVAL or E2BIG) return false; // a kernel that does not know these flags
            result = Map(e, path);
            return true;
        }
        return false; // kept racing: the walk, which needs no retry, decides
    }

    /// <summary>
    /// The resolution without openat2: one component at a time from descriptors opened
    /// O_PATH|O_NOFOLLOW; a symlink's target is spliced in front of what is left (an absolute
    /// target restarts at the root), <c>..</c> pops the directory stack and stops at the root,
    /// and more than <see cref="MaxSymlinks"/> links is a loop. Names stay bytes: a link target
    /// need not be UTF-8.
    /// </summary>
    private static RootedOpenResult WalkOpen(int rootFd, string path, out int fileFd)
    {
        fileFd = -1;
        var dirs = new List<int> { rootFd }; // dirs[0] is the caller's; the rest are ours to close
        var todo = new Stack<byte[]>();
        Push(todo, Encoding.UTF8.GetBytes(path));
        int links = 0;
        try
        {
            while (todo.Count > 0)
            {
                var name = todo.Pop();
                if (name is [(byte)'.']) continue;
                if (name is [(byte)'.', (byte)'.'])
                {
                    if (dirs.Count > 1) { close_(dirs[^1]); dirs.RemoveAt(dirs.Count - 1); }
                    continue;
                }
                int fd = OpenAt(dirs[^1], name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
                if (fd < 0) return Map(-fd, path);
                uint type;
                try { type = TypeOf(fd, path); }
                catch { close_(fd); throw; }
                if (type == Libc.S_IFLNK)
                {
                    byte[] target;
                    try { target = ReadLink(fd, path); }
                    finally { close_(fd); }
                    if (++links > MaxSymlinks) return RootedOpenResult.SymlinkLoop;
                    if (target.Length == 0) return RootedOpenResult.NotFound; // the kernel's ENOENT
                    if (target[0] == (byte)'/')
                    {
                        for (int i = dirs.Count - 1; i > 0; i--) close_(dirs[i]);
                        dirs.RemoveRange(1, dirs.Count - 1);
                    }
                    Push(todo, target);
                    continue;
                }
                if (type == Libc.S_IFDIR)
                {
                    if (dirs.Count >= MaxDepth) { close_(fd); return RootedOpenResult.NotFound; }
                    dirs.Add(fd);
                    continue;
                }
                if (todo.Count > 0) { close_(fd); return RootedOpenResult.NotFound; } // "file/more" is ENOTDIR
                fileFd = fd;
                return RootedOpenResult.Opened;
            }
            return RootedOpenResult.NotRegularFile; // the path ends at a directory
        }
        finally
        {
            for (int i = dirs.Count - 1; i > 0; i--) close_(dirs[i]);
        }
    }

    /// <summary>Pushes the non-empty components so that the first one is popped first.</summary>
    private static void Push(Stack<byte[]> todo, byte[] path)
    {
        int end = path.Length;
        for (int i = path.Length - 1; i >= -1; i--)
        {
            if (i >= 0 && path[i] != (byte)'/') continue;
            if (end - i - 1 > 0) todo.Push(path[(i + 1)..end]);
            end = i;
        }
    }

    private static RootedOpenResult Map(int errno, string path) => errno switch
    {
        ENOENT or ENOTDIR or ENAMETOOLONG => RootedOpenResult.NotFound,
        ELOOP => RootedOpenResult.SymlinkLoop,
        EACCES => RootedOpenResult.AccessDenied,
        _ => throw Error("open", path, errno),
    };

    /// <summary>A descriptor, or minus the errno.</summary>
    private static int Open(int dirFd, string name, int flags) => OpenAt(dirFd, CString(name), flags);

    /// <summary>Like <see cref="Open"/> for a name given as bytes (with or without its NUL).</summary>
    private static int OpenAt(int dirFd, byte[] name, int flags)
    {
        var bytes = name.Length > 0 && name[^1] == 0 ? name : [.. name, (byte)0];
        while (true)
        {
            int fd;
            fixed (byte* p = bytes) fd = openat_(dirFd, p, flags, 0);
            if (fd >= 0) return fd;
            int e = Errno;
            if (e != EINTR) return -e;
        }
    }

    private static uint TypeOf(int fd, string what) => Libc.FStat(fd, what).FileType;

    private static byte[] ReadLink(int fd, string what)
    {
        var buf = new byte[4096]; // PATH_MAX: a longer target cannot exist
        byte empty = 0;
        nint n;
        fixed (byte* p = buf) n = readlinkat_(fd, &empty, p, (nuint)buf.Length);
        if (n < 0) throw Error("readlinkat", what, Errno);
        return buf[..(int)n];
    }

    private static byte[] CString(string s)
    {
        var bytes = new byte[Encoding.UTF8.GetByteCount(s) + 1];
        Encoding.UTF8.GetBytes(s, 0, s.Length, bytes, 0);
        return bytes;
    }

    private static IOException Error(string call, string path, int errno) =>
        new($"{call} '{path}' failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).", errno);
}
