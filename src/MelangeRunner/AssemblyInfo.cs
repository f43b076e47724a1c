// The runners drive Linux tools (bwrap, qemu) and Linux file semantics: the engine is Linux-only.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]
