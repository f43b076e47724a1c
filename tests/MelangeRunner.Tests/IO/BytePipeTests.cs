using System.Formats.Tar;
using MelangeRunner.IO;
using MelangeRunner.Tests.Tar;
using Xunit;

namespace MelangeRunner.Tests;

/// <summary>The workspace export pipe: no deadlock whatever the sizes, prompt cancellation, nothing left running.</summary>
public class BytePipeTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    [Fact]
    public void AZeroLengthReadReturnsAtOnceAndIsNotTheEnd()
    {
        var pipe = new BytePipe(16);
        using var writer = pipe.Writer(CancellationToken.None);
        writer.Write(new byte[] { 1, 2, 3 });
        Assert.Equal(0, pipe.Read(Span<byte>.Empty, CancellationToken.None)); // data buffered, writer live
        var buf = new byte[8];
        Assert.Equal(3, pipe.Read(buf, CancellationToken.None));
        Assert.Equal(0, pipe.Read(Span<byte>.Empty, CancellationToken.None)); // empty, writer live: still not a wait
        pipe.CompleteWriting(null);
        Assert.Equal(0, pipe.Read(buf, CancellationToken.None));
    }

    [Fact]
    public async Task TheWritersFailureSurfacesAtTheEndOfTheData()
    {
        var pipe = new BytePipe(16);
        pipe.Writer(CancellationToken.None).Write(new byte[] { 9 });
        pipe.CompleteWriting(new InvalidOperationException("walker failed"));
        var buf = new byte[4];
        Assert.Equal(1, pipe.Read(buf, CancellationToken.None));
        Assert.Equal("walker failed", Assert.Throws<InvalidOperationException>(() => pipe.Read(buf, CancellationToken.None)).Message);
        await Assert.ThrowsAsync<InvalidOperationException>(async () => await pipe.ReadAsync(buf, CancellationToken.None));
    }

    [Fact]
    public async Task CancellingEndsABlockedRead()
    {
        var pipe = new BytePipe(4);
        using var cts = new CancellationTokenSource();
        var read = Task.Run(() => pipe.Read(new byte[1], cts.Token)); // empty, writer live: waits
        Assert.False(read.IsCompleted);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => read.WaitAsync(Bound));
    }

    [Fact]
    public async Task CancellingEndsABlockedWrite()
    {
        var pipe = new BytePipe(4);
        using var cts = new CancellationTokenSource();
        var write = Task.Run(() => pipe.Writer(cts.Token).Write(new byte[64])); // fills the pipe, then waits
        while (pipe.Buffered < 4) await Task.Yield();
        Assert.False(write.IsCompleted);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => write.WaitAsync(Bound));
    }

    [Fact]
    public async Task ClosingTheReaderFailsAWriterBlockedOnAFullPipe()
    {
        var pipe = new BytePipe(8);
        var write = Task.Run(() => pipe.Writer(CancellationToken.None).Write(new byte[1000]));
        while (pipe.Buffered < 8) await Task.Yield();
        pipe.CloseReading();
        await Assert.ThrowsAsync<IOException>(() => write.WaitAsync(Bound));
    }

    [Fact]
    public async Task BytesArriveInOrderWhateverTheChunking()
    {
        var data = new byte[3_000_001];
        new Random(5).NextBytes(data);
        var pipe = new BytePipe(4096);
        var producer = Task.Run(async () =>
        {
            var w = pipe.Writer(CancellationToken.None);
            var rng = new Random(6);
            for (int i = 0; i < data.Length;)
            {
                int n = Math.Min(rng.Next(0, 10_000), data.Length - i);
                if (i % 2 == 0) w.Write(data, i, n); else await w.WriteAsync(data.AsMemory(i, n));
                i += n;
            }
            pipe.CompleteWriting(null);
        });
        var got = new MemoryStream();
        var buf = new byte[7000];
        var r = new Random(7);
        int k;
        while ((k = r.Next(3) == 0 ? pipe.Read(buf.AsSpan(0, r.Next(0, buf.Length)), CancellationToken.None) : await pipe.ReadAsync(buf.AsMemory(0, r.Next(1, buf.Length)), CancellationToken.None)) > 0 || !producer.IsCompleted || pipe.Buffered > 0)
            got.Write(buf, 0, k);
        await producer.WaitAsync(Bound);
        Assert.Equal(data, got.ToArray());
    }
}

public class WorkspaceTarTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    private static string MakeWorkspace(TempTree t, params int[] sizes)
    {
        var ws = t.Dir("ws");
        var pkg = Path.Combine(ws, Workspace.OutputDir, "pkg");
        Directory.CreateDirectory(pkg);
        for (int i = 0; i < sizes.Length; i++)
        {
            var b = new byte[sizes[i]];
            new Random(i).NextBytes(b);
            File.WriteAllBytes(Path.Combine(pkg, $"f{i:d3}"), b);
        }
        return ws;
    }

    /// <summary>Reads the tar as the extractor does: headers, each entry's data, a zero-length read at each entry's end.</summary>
    private static Dictionary<string, byte[]> ReadAll(Stream tar)
    {
        var files = new Dictionary<string, byte[]>();
        using var reader = new TarReader(tar, leaveOpen: true);
        while (reader.GetNextEntry(copyData: false) is { } e)
        {
            if (e.EntryType != TarEntryType.RegularFile) continue;
            var ms = new MemoryStream();
            e.DataStream?.CopyTo(ms);
            e.DataStream?.ReadExactly(Span<byte>.Empty);
            files[e.Name] = ms.ToArray();
        }
        return files;
    }

    [Theory]
    [InlineData(new[] { 10, 200 * 1024 })]
    [InlineData(new[] { 0, 0, 1, 511, 512, 513, 65535, 65536, 65537, 1048575, 1048576, 1048577, 0 })]
    public async Task ASmallFileFollowedByMoreThanThePipeHoldsDoesNotDeadlock(int[] sizes)
    {
        using var t = new TempTree();
        var ws = MakeWorkspace(t, sizes);
        var files = await Task.Run(() =>
        {
            using var tar = Workspace.TarOfHostDirectory(ws, Array.Empty<string>(), NullEventSink.Instance, CancellationToken.None);
            return ReadAll(tar);
        }).WaitAsync(Bound);
        for (int i = 0; i < sizes.Length; i++)
            Assert.Equal(File.ReadAllBytes(Path.Combine(ws, Workspace.OutputDir, "pkg", $"f{i:d3}")), files[$"{Workspace.OutputDir}/pkg/f{i:d3}"]);
    }

    [Fact]
    public async Task ACancelledExportEndsTheReaderAndTheProducer()
    {
        using var t = new TempTree();
        var ws = MakeWorkspace(t, 10, 8 * 1024 * 1024);
        using var cts = new CancellationTokenSource();
        var tar = (Workspace.ProducerStream)Workspace.TarOfHostDirectory(ws, Array.Empty<string>(), NullEventSink.Instance, cts.Token);
        var buf = new byte[512];
        Assert.Equal(512, tar.Read(buf)); // the producer is running and will fill the pipe
        cts.Cancel();
        // Reading stops at once (a full pipe or an empty one alike), and disposing leaves no producer.
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Task.Run(() => { while (tar.Read(buf) > 0) { } }).WaitAsync(Bound));
        await Task.Run(tar.Dispose).WaitAsync(Bound);
        Assert.True(tar.Producer.IsCompleted);
    }

    [Fact]
    public async Task AReaderThatLeavesEarlyDoesNotLeaveTheProducerBlocked()
    {
        using var t = new TempTree();
        var ws = MakeWorkspace(t, 10, 8 * 1024 * 1024);
        var tar = (Workspace.ProducerStream)Workspace.TarOfHostDirectory(ws, Array.Empty<string>(), NullEventSink.Instance, CancellationToken.None);
        Assert.Equal(100, tar.Read(new byte[100]));
        await Task.Run(tar.Dispose).WaitAsync(Bound);
        Assert.True(tar.Producer.IsCompleted);
    }

    [Fact]
    public void ProgressIsNotReportedForZeroLengthReads()
    {
        var sink = new CollectingSink();
        using var s = new ProgressStream(new MemoryStream(new byte[10]), sink, "x");
        for (int i = 0; i < 100; i++) Assert.Equal(0, s.Read(Array.Empty<byte>(), 0, 0));
        Assert.Empty(sink.Reports);
        Assert.Equal(10, s.Read(new byte[20], 0, 20));
        Assert.Equal(0, s.Read(new byte[20], 0, 20));
        Assert.Single(sink.Reports); // the end of the data, reported once
    }
}
