using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace MelangeRunner.Ssh;

/// <summary>SSH wire encoding (RFC 4251 §5) for keys: strings, mpints, and fingerprints.</summary>
internal static class SshWire
{
    /// <summary>The OpenSSH fingerprint of a public key blob: "SHA256:" and unpadded base64.</summary>
    public static string Fingerprint(ReadOnlySpan<byte> publicKeyBlob)
        => "SHA256:" + Convert.ToBase64String(SHA256.HashData(publicKeyBlob)).TrimEnd('=');

    /// <summary>The key type named at the start of a public key blob ("ssh-ed25519", …).</summary>
    public static string AlgorithmOf(ReadOnlySpan<byte> publicKeyBlob)
    {
        if (publicKeyBlob.Length < 4)
            throw new ArgumentException("Not an SSH public key blob: too short.", nameof(publicKeyBlob));
        var length = BinaryPrimitives.ReadUInt32BigEndian(publicKeyBlob);
        if (length == 0 || length > 64 || 4 + length > publicKeyBlob.Length)
            throw new ArgumentException("Not an SSH public key blob: bad key type length.", nameof(publicKeyBlob));
        var name = Encoding.ASCII.GetString(publicKeyBlob.Slice(4, (int)length));
        if (!name.All(c => c > ' ' && c < 0x7F))
            throw new ArgumentException("Not an SSH public key blob: bad key type.", nameof(publicKeyBlob));
        return name;
    }

    internal sealed class Writer
    {
        private byte[] _buffer = new byte[256];
        public int Length { get; private set; }

        private void Ensure(int extra)
        {
            if (Length + extra <= _buffer.Length) return;
            var bigger = new byte[Math.Max(_buffer.Length * 2, Length + extra)];
            _buffer.AsSpan(0, Length).CopyTo(bigger);
            CryptographicOperations.ZeroMemory(_buffer); // may have held private material
            _buffer = bigger;
        }

        public void UInt32(uint value)
        {
            Ensure(4);
            BinaryPrimitives.WriteUInt32BigEndian(_buffer.AsSpan(Length), value);
            Length += 4;
        }

        public void Raw(ReadOnlySpan<byte> bytes)
        {
            Ensure(bytes.Length);
            bytes.CopyTo(_buffer.AsSpan(Length));
            Length += bytes.Length;
        }

        public void String(ReadOnlySpan<byte> bytes)
        {
            UInt32((uint)bytes.Length);
            Raw(bytes);
        }

        public void String(string ascii) => String(Encoding.ASCII.GetBytes(ascii));

        /// <summary>An unsigned big-endian integer as an mpint: no leading zeros, a 0x00 if the top bit is set.</summary>
        public void MPInt(ReadOnlySpan<byte> unsignedBigEndian)
        {
            var start = 0;
            while (start < unsignedBigEndian.Length && unsignedBigEndian[start] == 0) start++;
            var value = unsignedBigEndian[start..];
            var pad = value.Length > 0 && (value[0] & 0x80) != 0 ? 1 : 0;
            UInt32((uint)(value.Length + pad));
            if (pad == 1) Raw([0]);
            Raw(value);
        }

        /// <summary>A copy of what was written; the working buffer is zeroed.</summary>
        public byte[] ToArrayAndClear()
        {
            var result = _buffer.AsSpan(0, Length).ToArray();
            CryptographicOperations.ZeroMemory(_buffer);
            Length = 0;
            return result;
        }
    }
}
