using System.Runtime.InteropServices;

namespace MelangeRunner.Native;

/// <summary>
/// What statx reports about a path (never following a final symlink). The kernel's
/// struct statx has the same layout on every architecture, unlike struct stat, which is
/// why it is used here.
/// </summary>
public readonly record struct FileStatus(ulong Device, ulong Inode, uint Mode, uint Uid, uint Gid, uint LinkCount, long Size,
    long MTimeSeconds, uint MTimeNanoseconds, uint RDevMajor, uint RDevMinor)
{
    public const uint TypeMask = 0xF000; // S_IFMT
    public uint FileType => Mode & TypeMask;
    public uint Permissions => Mode & 0xFFF;
    public bool IsDirectory => FileType == Libc.S_IFDIR;
    public bool IsRegular => FileType == Libc.S_IFREG;
    public bool IsSymlink => FileType == Libc.S_IFLNK;
}

/// <summary>P/Invoke to the C library for what .NET does not offer without following symlinks.</summary>
public static unsafe class Libc
{
    public const uint S_IFIFO = 0x1000, S_IFCHR = 0x2000, S_IFDIR = 0x4000, S_IFBLK = 0x6000, S_IFREG = 0x8000, S_IFLNK = 0xA000, S_IFSOCK = 0xC000;
    public const int AT_FDCWD = -100;
    public const int AT_SYMLINK_NOFOLLOW = 0x100;
    public const int ENOENT = 2, EPERM = 1, EEXIST = 17, ENOTDIR = 20, EISDIR = 21, ENODATA = 61, ERANGE = 34, ENOTSUP = 95, ENOTEMPTY = 39, EACCES = 13, ENAMETOOLONG = 36;
    private const uint STATX_BASIC_STATS = 0x7FF;

    // struct statx is 256 bytes; the offsets below are fixed by the kernel ABI on all architectures.
    [StructLayout(LayoutKind.Explicit, Size = 256)]
    private struct StatxBuf
    {
        [FieldOffset(16)] public uint Nlink;
        [FieldOffset(20)] public uint Uid;
        [FieldOffset(24)] public uint Gid;
        [FieldOffset(28)] public ushort Mode;
        [FieldOffset(32)] public ulong Ino;
        [FieldOffset(40)] public ulong Size;
        [FieldOffset(112)] public long MtimeSec;
        [FieldOffset(120)] public uint MtimeNsec;
        [FieldOffset(128)] public uint RdevMajor;
        [FieldOffset(132)] public uint RdevMinor;
        [FieldOffset(136)] public uint DevMajor;
        [FieldOffset(140)] public uint DevMinor;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec { public long Sec; public long Nsec; } // 64-bit Linux: time_t and long are both 8 bytes

    [DllImport("libc", EntryPoint = "statx", SetLastError = true)]
    private static extern int statx_(int dirfd, string path, int flags, uint mask, StatxBuf* buf);
    [DllImport("libc", EntryPoint = "lchown", SetLastError = true)]
    private static extern int lchown_(string path, uint owner, uint group);
    [DllImport("libc", EntryPoint = "chmod", SetLastError = true)]
    private static extern int chmod_(string path, uint mode);
    [DllImport("libc", EntryPoint = "lsetxattr", SetLastError = true)]
    private static extern int lsetxattr_(string path, string name, byte* value, nuint size, int flags);
    [DllImport("libc", EntryPoint = "llistxattr", SetLastError = true)]
    private static extern nint llistxattr_(string path, byte* list, nuint size);
    [DllImport("libc", EntryPoint = "lgetxattr", SetLastError = true)]
    private static extern nint lgetxattr_(string path, string name, byte* value, nuint size);
    [DllImport("libc", EntryPoint = "mknod", SetLastError = true)]
    private static extern int mknod_(string path, uint mode, ulong dev);
    [DllImport("libc", EntryPoint = "mkfifo", SetLastError = true)]
    private static extern int mkfifo_(string path, uint mode);
    [DllImport("libc", EntryPoint = "utimensat", SetLastError = true)]
    private static extern int utimensat_(int dirfd, string path, Timespec* times, int flags);
    [DllImport("libc", EntryPoint = "link", SetLastError = true)]
    private static extern int link_(string oldpath, string newpath);
    [DllImport("libc", EntryPoint = "symlink", SetLastError = true)]
    private static extern int symlink_(string target, string linkpath);
    [DllImport("libc", EntryPoint = "unlink", SetLastError = true)]
    private static extern int unlink_(string path);
    [DllImport("libc", EntryPoint = "mkdir", SetLastError = true)]
    private static extern int mkdir_(string path, uint mode);
    [DllImport("libc", EntryPoint = "readlink", SetLastError = true)]
    private static extern nint readlink_(string path, byte* buf, nuint size);
    [DllImport("libc", EntryPoint = "open", SetLastError = true)]
    private static extern int open_(string path, int flags, uint mode);
    [DllImport("libc", EntryPoint = "write", SetLastError = true)]
    private static extern nint write_(int fd, byte* buf, nuint count);
    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int kill_(int pid, int signal);
    [DllImport("libc", EntryPoint = "close", SetLastError = true)]
    private static extern int close_(int fd);
    [DllImport("libc", EntryPoint = "fchown", SetLastError = true)]
    private static extern int fchown_(int fd, uint owner, uint group);
    [DllImport("libc", EntryPoint = "fchmod", SetLastError = true)]
    private static extern int fchmod_(int fd, uint mode);
    [DllImport("libc", EntryPoint = "futimens", SetLastError = true)]
    private static extern int futimens_(int fd, Timespec* times);
    [DllImport("libc", EntryPoint = "rmdir", SetLastError = true)]
    private static extern int rmdir_(string path);
    [DllImport("libc", EntryPoint = "rename", SetLastError = true)]
    private static extern int rename_(string oldpath, string newpath);
    [DllImport("libc", EntryPoint = "lseek", SetLastError = true)]
    private static extern long lseek_(int fd, long offset, int whence);
    [DllImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    private static extern int ftruncate_(int fd, long length);
    [DllImport("libc", EntryPoint = "geteuid")]
    private static extern uint geteuid_();
    [DllImport("libc", EntryPoint = "umask")]
    private static extern uint umask_(uint mask);

    private static int Errno => Marshal.GetLastPInvokeError();

    public static bool IsRoot { get; } = geteuid_() == 0;

    /// <summary>lstat via statx; returns null when the path does not exist (or a parent is not a directory).</summary>
    public static FileStatus? LStat(string path)
    {
        StatxBuf b;
        if (statx_(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &b) != 0)
        {
            int e = Errno;
            if (e is ENOENT or ENOTDIR) return null;
            throw Error("statx", path, e);
        }
        return ToStatus(b);
    }

    /// <summary>fstat via statx(fd, "", AT_EMPTY_PATH): the file a descriptor (an O_PATH one too) refers to.</summary>
    public static FileStatus FStat(int fd, string pathForErrors)
    {
        StatxBuf b;
        if (statx_(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &b) != 0) throw Error("statx", pathForErrors, Errno);
        return ToStatus(b);
    }

    private const int AT_EMPTY_PATH = 0x1000;

    private static FileStatus ToStatus(in StatxBuf b) =>
        new(((ulong)b.DevMajor << 32) | b.DevMinor, b.Ino, b.Mode, b.Uid, b.Gid, b.Nlink, (long)b.Size, b.MtimeSec, b.MtimeNsec, b.RdevMajor, b.RdevMinor);

    /// <summary>Returns 0 or the errno.</summary>
    public static int LChown(string path, uint uid, uint gid) => lchown_(path, uid, gid) == 0 ? 0 : Errno;

    /// <summary>chmod (follows symlinks: callers only use it on paths they have just verified are not symlinks).</summary>
    public static int Chmod(string path, uint mode) => chmod_(path, mode & 0xFFF) == 0 ? 0 : Errno;

    public static int Mknod(string path, uint mode, uint major, uint minor) => mknod_(path, mode, MakeDev(major, minor)) == 0 ? 0 : Errno;
    public static int Mkfifo(string path, uint mode) => mkfifo_(path, mode & 0xFFF) == 0 ? 0 : Errno;
    public static int Link(string existing, string newPath) => link_(existing, newPath) == 0 ? 0 : Errno; // Linux link() never follows a symlink `existing`
    public static int Symlink(string target, string linkPath) => symlink_(target, linkPath) == 0 ? 0 : Errno;
    public static int Unlink(string path) => unlink_(path) == 0 ? 0 : Errno;
    public static int Rmdir(string path) => rmdir_(path) == 0 ? 0 : Errno;
    public static int Mkdir(string path, uint mode) => mkdir_(path, mode & 0xFFF) == 0 ? 0 : Errno;
    public static uint Umask(uint mask) => umask_(mask);

    private const int O_WRONLY = 1, O_CREAT = 0x40, O_EXCL = 0x80, O_CLOEXEC = 0x80000; // the same on x86_64 and aarch64

    /// <summary>O_NOFOLLOW differs: 0400000 in asm-generic (x86_64), 0100000 on arm64.</summary>
    internal static readonly int O_NOFOLLOW = RuntimeInformation.ProcessArchitecture is Architecture.Arm64 ? 0x8000 : 0x20000;

    /// <summary>
    /// Creates a new file for writing (O_CREAT|O_EXCL|O_NOFOLLOW: never opens an existing
    /// file nor follows a symlink). Returns the descriptor, or -errno.
    /// </summary>
    public static int CreateExclusive(string path, uint mode)
    {
        int fd = open_(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode & 0xFFF);
        return fd >= 0 ? fd : -Errno;
    }

    /// <summary>Writes the whole span; returns 0 or the errno.</summary>
    public static int WriteAll(int fd, ReadOnlySpan<byte> data)
    {
        fixed (byte* p = data)
        {
            int done = 0;
            while (done < data.Length)
            {
                nint n = write_(fd, p + done, (nuint)(data.Length - done));
                if (n < 0) { int e = Errno; if (e == 4 /* EINTR */) continue; return e; }
                done += (int)n;
            }
        }
        return 0;
    }

    public static int Close(int fd) => close_(fd) == 0 ? 0 : Errno;

    /// <summary>open(2) of an existing file with <paramref name="flags"/>; the descriptor, or -1.</summary>
    public static int OpenExisting(string path, int flags) => open_(path, flags, 0);

    /// <summary>ioctl(2) with an integer argument; its result (-1 on error).</summary>
    public static int Ioctl(int fd, nuint request, nint argument) => ioctl_(fd, request, argument);

    [DllImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static extern int ioctl_(int fd, nuint request, nint argument);

    /// <summary>isatty(3): whether the descriptor is a terminal.</summary>
    public static bool IsTerminal(int fd) => isatty_(fd) == 1;

    [DllImport("libc", EntryPoint = "isatty", SetLastError = true)]
    private static extern int isatty_(int fd);

    public const int SIGTERM = 15;

    /// <summary>kill(2); returns 0 or the errno.</summary>
    public static int Kill(int pid, int signal) => kill_(pid, signal) == 0 ? 0 : Errno;
    public static int FChown(int fd, uint uid, uint gid) => fchown_(fd, uid, gid) == 0 ? 0 : Errno;
    public static int FChmod(int fd, uint mode) => fchmod_(fd, mode & 0xFFF) == 0 ? 0 : Errno;

    /// <summary>rename(2): replaces a non-directory at <paramref name="newPath"/> atomically (a symlink there is replaced, not followed). Returns 0 or the errno.</summary>
    public static int Rename(string oldPath, string newPath) => rename_(oldPath, newPath) == 0 ? 0 : Errno;

    /// <summary>Moves the file offset forward without writing: the skipped range stays a hole. Returns 0 or the errno.</summary>
    public static int SkipForward(int fd, long count) => lseek_(fd, count, 1 /* SEEK_CUR */) >= 0 ? 0 : Errno;

    /// <summary>lseek(2) SEEK_DATA: the next offset at or after <paramref name="offset"/> that holds data, or -1 (ENXIO: none).</summary>
    public static long SeekData(int fd, long offset) => lseek_(fd, offset, 3 /* SEEK_DATA */);

    /// <summary>lseek(2) SEEK_HOLE: the next hole at or after <paramref name="offset"/> (the end of the file counts as one), or -1.</summary>
    public static long SeekHole(int fd, long offset) => lseek_(fd, offset, 4 /* SEEK_HOLE */);

    public static int FTruncate(int fd, long length) => ftruncate_(fd, length) == 0 ? 0 : Errno;

    public static int FSetTimes(int fd, long seconds, long nanoseconds)
    {
        Timespec* t = stackalloc Timespec[2];
        t[0] = new Timespec { Sec = seconds, Nsec = nanoseconds };
        t[1] = t[0];
        return futimens_(fd, t) == 0 ? 0 : Errno;
    }

    /// <summary>Sets atime and mtime of the path itself (a symlink is not followed).</summary>
    public static int SetTimes(string path, long seconds, long nanoseconds)
    {
        Timespec* t = stackalloc Timespec[2];
        t[0] = new Timespec { Sec = seconds, Nsec = nanoseconds };
        t[1] = t[0];
        return utimensat_(AT_FDCWD, path, t, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : Errno;
    }

    public static int LSetXattr(string path, string name, ReadOnlySpan<byte> value)
    {
        fixed (byte* p = value)
            return lsetxattr_(path, name, p, (nuint)value.Length, 0) == 0 ? 0 : Errno;
    }

    /// <summary>Names of the extended attributes of the path itself (empty when the file system has none).</summary>
    public static List<string> LListXattr(string path)
    {
        var names = new List<string>();
        nint n = llistxattr_(path, null, 0);
        if (n < 0) { int e = Errno; if (e is ENOTSUP) return names; throw Error("llistxattr", path, e); }
        if (n == 0) return names;
        var buf = new byte[n + 256];
        fixed (byte* p = buf) n = llistxattr_(path, p, (nuint)buf.Length);
        if (n < 0) throw Error("llistxattr", path, Errno);
        int start = 0;
        for (int i = 0; i < n; i++)
            if (buf[i] == 0) { if (i > start) names.Add(System.Text.Encoding.UTF8.GetString(buf, start, i - start)); start = i + 1; }
        return names;
    }

    /// <summary>The raw value of an extended attribute, or null when absent.</summary>
    public static byte[]? LGetXattr(string path, string name)
    {
        nint n = lgetxattr_(path, name, null, 0);
        if (n < 0) { int e = Errno; if (e is ENODATA or ENOTSUP) return null; throw Error("lgetxattr", path, e); }
        var buf = new byte[n];
        fixed (byte* p = buf) n = lgetxattr_(path, name, p, (nuint)buf.Length);
        if (n < 0) throw Error("lgetxattr", path, Errno);
        return n == buf.Length ? buf : buf[..(int)n];
    }

    public static string ReadLink(string path)
    {
        var buf = new byte[4096];
        nint n;
        fixed (byte* p = buf) n = readlink_(path, p, (nuint)buf.Length);
        if (n < 0) throw Error("readlink", path, Errno);
        return System.Text.Encoding.UTF8.GetString(buf, 0, (int)n);
    }

    /// <summary>glibc's makedev encoding of a dev_t.</summary>
    public static ulong MakeDev(uint major, uint minor) =>
        ((ulong)(major & 0xFFFFF000) << 32) | ((ulong)(major & 0xFFF) << 8) | ((ulong)(minor & 0xFFFFFF00) << 12) | (minor & 0xFF);

    public static string StrError(int errno) => Marshal.GetPInvokeErrorMessage(errno);

    public static IOException Error(string call, string path, int errno) =>
        new($"{call}({path}) failed: {StrError(errno)} (errno {errno})", errno);
}
