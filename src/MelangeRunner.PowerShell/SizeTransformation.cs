using System.Globalization;
using System.Management.Automation;

namespace MelangeRunner.PowerShell;

/// <summary>
/// Lets a size parameter take a PowerShell number of bytes (4GB, [long]1073741824, 1.5GB) as well
/// as melange's size strings: a number becomes the size string of the same byte count ("4Gi"),
/// a string passes through unchanged for the engine to validate (InvalidSize).
/// </summary>
[AttributeUsage(AttributeTargets.Property | AttributeTargets.Field)]
public sealed class SizeTransformationAttribute : ArgumentTransformationAttribute
{
    public override object Transform(EngineIntrinsics engineIntrinsics, object inputData)
    {
        var value = inputData is PSObject p ? p.BaseObject : inputData;
        switch (value)
        {
            case null or string:
                return value!;
            case int or long or short or byte or uint or ulong or ushort or sbyte:
                return FromWhole(Convert.ToDecimal(value, CultureInfo.InvariantCulture), value);
            case double or float or decimal:
                var number = Convert.ToDecimal(value, CultureInfo.InvariantCulture);
                if (number != decimal.Truncate(number))
                    throw new ArgumentTransformationMetadataException(
                        $"The size {value} is not a whole number of bytes. Write a whole number of bytes (4GB) or a size string such as 1536Mi.");
                return FromWhole(number, value);
            default:
                return value;
        }
    }

    private static string FromWhole(decimal bytes, object original)
    {
        if (bytes < 0 || bytes > long.MaxValue)
            throw new ArgumentTransformationMetadataException(
                $"The size {original} is not a byte count from 0 to {long.MaxValue}. Write a size such as 4GB or 4Gi.");
        return SizeParser.FromBytes((long)bytes);
    }
}
