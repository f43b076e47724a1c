// The module wraps a Linux-only engine.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]
