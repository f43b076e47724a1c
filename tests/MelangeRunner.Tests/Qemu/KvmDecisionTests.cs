using MelangeRunner.Qemu;
using Xunit;

namespace MelangeRunner.Tests.Qemu;

/// <summary>The accelerator decision on host facts recorded from the hosts users bring.</summary>
public class KvmDecisionTests
{
    // /proc/cpuinfo flags lines, shortened, as recorded.
    private const string KvmPvmHost = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr hypervisor lahf_lm abm\n";
    private const string IntelBareMetal = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx smx est tm2 ssse3\n";
    private const string AmdBareMetal = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr svm extapic cr8_legacy\n";

    [Fact]
    public void A_kvm_pvm_host_whose_device_opens_and_whose_qemu_starts_runs_TCG()
    {
        // This project's own machine kind: /dev/kvm opens, qemu starts a paused KVM vCPU, guests never boot.
        var facts = new KvmHostFacts(true, true, KvmHostFacts.CpuInfoShowsVirtualization(KvmPvmHost), "kvm_pvm");
        var d = KvmDecision.Decide(facts, qemuStarted: true);
        Assert.False(d.Usable);
        Assert.Contains("kvm_pvm", d.Reason);
    }

    [Fact]
    public void A_CPU_without_vmx_or_svm_runs_TCG_even_when_qemu_starts()
    {
        var d = KvmDecision.Decide(new KvmHostFacts(true, true, KvmHostFacts.CpuInfoShowsVirtualization(KvmPvmHost), null), qemuStarted: true);
        Assert.False(d.Usable);
        Assert.Contains("vmx or svm", d.Reason);
    }

    [Fact]
    public void No_device_runs_TCG()
    {
        var d = KvmDecision.Decide(new KvmHostFacts(false, true, true, null), qemuStarted: null);
        Assert.False(d.Usable);
        Assert.Contains("/dev/kvm", d.Reason);
    }

    [Fact]
    public void Hardware_virtualization_needs_qemu_to_start_a_vcpu_too()
    {
        // The nested host where qemu aborts on MSR 0x10a: flags say yes, qemu says no.
        var facts = new KvmHostFacts(true, true, KvmHostFacts.CpuInfoShowsVirtualization(IntelBareMetal), null);
        Assert.True(KvmDecision.Decide(facts, qemuStarted: null).Usable); // worth probing
        Assert.False(KvmDecision.Decide(facts, qemuStarted: false).Usable);
        Assert.True(KvmDecision.Decide(facts, qemuStarted: true).Usable);
    }

    [Theory]
    [InlineData(IntelBareMetal, true)]
    [InlineData(AmdBareMetal, true)]
    [InlineData(KvmPvmHost, false)]
    [InlineData("", false)]
    [InlineData("flags\t\t: fpu svm_lock vmxe\n", false)] // whole words only
    public void Cpu_flags_are_read_as_words(string cpuinfo, bool expected) =>
        Assert.Equal(expected, KvmHostFacts.CpuInfoShowsVirtualization(cpuinfo));

    [Fact]
    public void Arm_hosts_have_no_flag_to_read_and_rely_on_the_qemu_probe()
    {
        var facts = new KvmHostFacts(true, false, false, null);
        Assert.True(KvmDecision.Decide(facts, qemuStarted: true).Usable);
        Assert.False(KvmDecision.Decide(facts, qemuStarted: false).Usable);
    }
}

/// <summary>-Accelerator over MELANGE_QEMU_ACCELERATOR over the host's evidence.</summary>
public class AcceleratorChoiceTests
{
    private static readonly KvmDecision Works = new(true, "works");
    private static readonly KvmDecision Broken = new(false, "/dev/kvm is served by the software hypervisor module kvm_pvm");

    private static Func<KvmDecision> Evidence(KvmDecision d, List<string>? asked = null) => () => { asked?.Add("asked"); return d; };

    [Theory]
    [InlineData(null, null, "kvm", false)]
    [InlineData("auto", "auto", "kvm", false)]
    [InlineData("tcg", null, "tcg", true)]
    [InlineData(null, "tcg", "tcg", true)]
    [InlineData("kvm", "tcg", "kvm", true)] // the parameter wins over the environment
    [InlineData("TCG", null, "tcg", true)]
    public void Precedence_where_KVM_works(string? config, string? env, string expected, bool pinned)
    {
        var c = AcceleratorChoice.Decide(config, env, "x86_64", "x86_64", Evidence(Works));
        Assert.Equal(expected, c.Accelerator);
        Assert.Equal(pinned, c.Pinned);
    }

    [Fact]
    public void Auto_follows_the_evidence_and_says_why()
    {
        var c = AcceleratorChoice.Decide(null, null, "x86_64", "x86_64", Evidence(Broken));
        Assert.Equal("tcg", c.Accelerator);
        Assert.Contains("kvm_pvm", c.Reason);
        Assert.False(c.Pinned);
    }

    [Fact]
    public void Tcg_asks_no_evidence()
    {
        var asked = new List<string>();
        var c = AcceleratorChoice.Decide("tcg", null, "x86_64", "x86_64", Evidence(Works, asked));
        Assert.Equal("tcg", c.Accelerator);
        Assert.Contains("-Accelerator tcg", c.Reason);
        Assert.Empty(asked);
    }

    [Theory]
    [InlineData("kvm", null, "-Accelerator kvm")]
    [InlineData(null, "kvm", "MELANGE_QEMU_ACCELERATOR=kvm")]
    public void Kvm_where_KVM_cannot_run_guests_is_an_error_naming_the_source_and_the_reason(string? config, string? env, string source)
    {
        var e = Assert.Throws<MelangeException>(() => AcceleratorChoice.Decide(config, env, "x86_64", "x86_64", Evidence(Broken)));
        Assert.Equal("KvmUnavailable", e.ErrorId);
        Assert.Equal(ErrorKind.ResourceUnavailable, e.Kind);
        Assert.Contains(source, e.Message);
        Assert.Contains("kvm_pvm", e.Message);
        Assert.Contains("-Accelerator tcg", e.Fix);
    }

    [Fact]
    public void A_foreign_guest_is_TCG_and_KVM_for_it_is_an_error()
    {
        Assert.Equal("tcg", AcceleratorChoice.Decide(null, null, "aarch64", "x86_64", Evidence(Works)).Accelerator);
        var e = Assert.Throws<MelangeException>(() => AcceleratorChoice.Decide("kvm", null, "aarch64", "x86_64", Evidence(Works)));
        Assert.Contains("aarch64", e.Message);
    }

    [Theory]
    [InlineData("hvf")]
    [InlineData("kvm,tcg")]
    public void Other_values_are_refused(string value)
    {
        var e = Assert.Throws<MelangeException>(() => AcceleratorChoice.Normalize(value, "MELANGE_QEMU_ACCELERATOR"));
        Assert.Equal("InvalidAccelerator", e.ErrorId);
        Assert.Contains("MELANGE_QEMU_ACCELERATOR", e.Message);
    }
}
