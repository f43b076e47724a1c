using System.Buffers.Binary;
using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;
using Org.BouncyCastle.Crypto.Parameters;
using Renci.SshNet;

namespace MelangeRunner.Ssh;

/// <summary>
/// An SSH key pair made in memory: the VM's host key (Ed25519, as melange's generateVMHostKey)
/// or the ephemeral client key (ECDSA P-256, as melange's generateSSHKeys). The private key
/// exists as a seed/scalar and as an unencrypted OpenSSH private key file image; both are
/// zeroed by <see cref="Dispose"/>. Copies that SSH.NET makes for itself
/// (<see cref="ToSshNetKey"/>) live as long as the objects that hold them.
/// </summary>
public sealed class SshKeyPair : IDisposable
{
    public const string Ed25519 = "ssh-ed25519";
    public const string EcdsaP256 = "ecdsa-sha2-nistp256";
    private const string Comment = "melange-runner";

    private readonly byte[] _privateScalar;   // Ed25519 seed (32) or ECDSA d (32)
    private readonly byte[] _openSshPrivateKey;
    private readonly byte[] _publicKeyBlob;
    private bool _disposed;

    private SshKeyPair(string algorithm, byte[] publicKeyBlob, byte[] privateScalar, byte[] openSshPrivateKey)
    {
        Algorithm = algorithm;
        _publicKeyBlob = publicKeyBlob;
        _privateScalar = privateScalar;
        _openSshPrivateKey = openSshPrivateKey;
        AuthorizedKeysLine = $"{algorithm} {Convert.ToBase64String(publicKeyBlob)} {Comment}";
        Fingerprint = SshWire.Fingerprint(publicKeyBlob);
    }

    /// <summary>A new Ed25519 key (BouncyCastle: .NET has no Ed25519).</summary>
    public static SshKeyPair GenerateEd25519()
    {
        var seed = new byte[32];
        RandomNumberGenerator.Fill(seed);
        var publicKey = new Ed25519PrivateKeyParameters(seed, 0).GeneratePublicKey().GetEncoded();

        var blob = new SshWire.Writer();
        blob.String(Ed25519);
        blob.String(publicKey);
        var publicKeyBlob = blob.ToArrayAndClear();

        var secret = new byte[64]; // OpenSSH keeps seed || public key
        seed.CopyTo(secret, 0);
        publicKey.CopyTo(secret, 32);
        try
        {
            var file = OpenSshPrivateKeyFile(publicKeyBlob, w =>
            {
                w.String(Ed25519);
                w.String(publicKey);
                w.String(secret);
            });
            return new SshKeyPair(Ed25519, publicKeyBlob, seed, file);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(secret);
        }
    }

    /// <summary>A new ECDSA key on NIST P-256 (.NET's ECDsa), melange's client key type.</summary>
    public static SshKeyPair GenerateEcdsaP256()
    {
        using var ecdsa = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var parameters = ecdsa.ExportParameters(includePrivateParameters: true);
        try
        {
            var q = new byte[65];
            q[0] = 0x04; // uncompressed point
            parameters.Q.X!.CopyTo(q, 1 + 32 - parameters.Q.X!.Length);
            parameters.Q.Y!.CopyTo(q, 33 + 32 - parameters.Q.Y!.Length);
            var d = new byte[32];
            parameters.D!.CopyTo(d, 32 - parameters.D!.Length);

            var blob = new SshWire.Writer();
            blob.String(EcdsaP256);
            blob.String("nistp256");
            blob.String(q);
            var publicKeyBlob = blob.ToArrayAndClear();

            var file = OpenSshPrivateKeyFile(publicKeyBlob, w =>
            {
                w.String(EcdsaP256);
                w.String("nistp256");
                w.String(q);
                w.MPInt(d);
            });
            return new SshKeyPair(EcdsaP256, publicKeyBlob, d, file);
        }
        finally
        {
            if (parameters.D is not null) CryptographicOperations.ZeroMemory(parameters.D);
        }
    }

    /// <summary>"ssh-ed25519" or "ecdsa-sha2-nistp256".</summary>
    public string Algorithm { get; }

    /// <summary>The public key in SSH wire form (what a server presents as its host key).</summary>
    public byte[] PublicKeyBlob => (byte[])_publicKeyBlob.Clone();

    /// <summary>"ssh-ed25519 AAAA… melange-runner": one authorized_keys (or .pub) line, no newline.</summary>
    public string AuthorizedKeysLine { get; }

    /// <summary>"SHA256:…", as ssh-keygen -l prints it.</summary>
    public string Fingerprint { get; }

    /// <summary>
    /// The unencrypted OpenSSH private key file ("-----BEGIN OPENSSH PRIVATE KEY-----", 70-column
    /// base64, trailing newline), as ASCII bytes. This is the pair's own buffer, not a copy: it is
    /// zeroed by <see cref="Dispose"/>; do not modify it, and copy it only into files that are deleted securely.
    /// </summary>
    public byte[] OpenSshPrivateKey
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _openSshPrivateKey;
        }
    }

    /// <summary>The key for SSH.NET's public key authentication (parsed from the OpenSSH form).</summary>
    public IPrivateKeySource ToSshNetKey()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        using var stream = new MemoryStream(_openSshPrivateKey, writable: false);
        return new PrivateKeyFile(stream);
    }

    /// <summary>Zeroes the private material held by this object.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        CryptographicOperations.ZeroMemory(_privateScalar);
        CryptographicOperations.ZeroMemory(_openSshPrivateKey);
    }

    public override string ToString() => $"{Algorithm} {Fingerprint}"; // never the private key

    /// <summary>openssh-key-v1, unencrypted (PROTOCOL.key in OpenSSH), PEM-armoured.</summary>
    private static byte[] OpenSshPrivateKeyFile(byte[] publicKeyBlob, Action<SshWire.Writer> writePrivateKey)
    {
        var section = new SshWire.Writer();
        var check = RandomNumberGenerator.GetInt32(int.MaxValue);
        section.UInt32((uint)check);
        section.UInt32((uint)check);
        writePrivateKey(section);
        section.String(Comment);
        for (byte pad = 1; section.Length % 8 != 0; pad++) section.Raw([pad]);
        var privateSection = section.ToArrayAndClear();

        var body = new SshWire.Writer();
        body.Raw("openssh-key-v1\0"u8);
        body.String("none");
        body.String("none");
        body.String(ReadOnlySpan<byte>.Empty);
        body.UInt32(1);
        body.String(publicKeyBlob);
        body.String(privateSection);
        CryptographicOperations.ZeroMemory(privateSection);
        var raw = body.ToArrayAndClear();

        var base64 = new byte[Base64.GetMaxEncodedToUtf8Length(raw.Length)];
        try
        {
            Base64.EncodeToUtf8(raw, base64, out _, out var written);
            var header = "-----BEGIN OPENSSH PRIVATE KEY-----\n"u8;
            var footer = "-----END OPENSSH PRIVATE KEY-----\n"u8;
            var lines = (written + 69) / 70;
            var file = new byte[header.Length + written + lines + footer.Length];
            var at = 0;
            header.CopyTo(file);
            at += header.Length;
            for (var i = 0; i < written; i += 70)
            {
                var n = Math.Min(70, written - i);
                base64.AsSpan(i, n).CopyTo(file.AsSpan(at));
                at += n;
                file[at++] = (byte)'\n';
            }
            footer.CopyTo(file.AsSpan(at));
            return file;
        }
        finally
        {
            CryptographicOperations.ZeroMemory(raw);
            CryptographicOperations.ZeroMemory(base64);
        }
    }

    /// <summary>Parses an "algorithm base64 [comment]" line into a wire blob.</summary>
    public static byte[] ParsePublicKeyLine(string line)
    {
        var parts = line.Trim().Split(' ', 3, StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length < 2) throw new FormatException("Not an SSH public key line.");
        var blob = Convert.FromBase64String(parts[1]);
        if (SshWire.AlgorithmOf(blob) != parts[0]) throw new FormatException("The key type does not match the key blob.");
        return blob;
    }

    internal static string AuthorizedKeysLineOf(byte[] blob) => $"{SshWire.AlgorithmOf(blob)} {Convert.ToBase64String(blob)}";
}
