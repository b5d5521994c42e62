//! What this host's KVM offers a guest CPU, and where KVM breaks its own word.
//!
//! Two facts, both read through `kvm-ioctls` in a scratch VM that never runs:
//!
//! - the CPUID KVM supports (`KVM_GET_SUPPORTED_CPUID`), which is the CPU a
//!   Cloud Hypervisor guest gets (CH passes it through, minus the knobs it
//!   has: AMX and nested virtualization), so a `require` or `forbid` of a
//!   feature can be checked before the VM is created;
//! - feature MSRs that KVM reports (`KVM_GET_MSR_FEATURE_INDEX_LIST`,
//!   `KVM_GET_MSRS` on `/dev/kvm`) but that a vCPU given that very CPUID
//!   refuses to take (`KVM_SET_MSRS` sets 0 entries). QEMU writes those MSRs
//!   when its CPU model carries the feature they belong to, and aborts when
//!   KVM refuses (`failed to set MSR 0x10a to 0x69` under nested KVM on some
//!   AMD hosts, for `arch-capabilities`). libvirt's `host-model` and
//!   `host-passthrough` carry such features, so a libvirt guest on such a host
//!   must have the feature disabled ([`CpuProbe::quirks`]).
//!
//! The probe's raw observations are kept as data ([`CpuProbe`], serializable)
//! so a recorded result reproduces a host's behaviour in tests; every decision
//! is derived from it by pure functions.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// What the probe saw on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuProbe {
    /// Where the facts came from (`KVM at /dev/kvm`, or a recording).
    pub source: String,
    /// CPUID vendor string from the supported CPUID (`AuthenticAMD`,
    /// `GenuineIntel`); `None` when leaf 0 is missing.
    pub vendor: Option<String>,
    /// `KVM_GET_SUPPORTED_CPUID`, as KVM returned it.
    pub cpuid: Vec<CpuidEntry>,
    /// Every feature MSR KVM reports, and whether a vCPU takes its value.
    pub feature_msrs: Vec<FeatureMsr>,
}

/// One CPUID leaf (and sub-leaf) with its four registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// A feature MSR as KVM reports it, and what a vCPU made of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureMsr {
    pub index: u32,
    /// The value `KVM_GET_MSRS` on the system fd gave.
    pub kvm_value: u64,
    /// Whether `KVM_SET_MSRS` on a vCPU set that value.
    pub vcpu_accepts_kvm_value: bool,
    /// Whether it set 0 instead; recorded only when the value was refused.
    pub vcpu_accepts_zero: Option<bool>,
}

/// A feature MSR the host's KVM reports but refuses, and the CPU feature
/// whose presence makes QEMU write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MsrQuirk {
    pub msr: u32,
    /// The MSR's architectural name (`IA32_ARCH_CAPABILITIES`).
    pub msr_name: &'static str,
    pub kvm_value: u64,
    /// The CPU feature, as QEMU and libvirt name it, whose removal keeps QEMU
    /// from writing the MSR; `None` when no feature governs it.
    pub feature: Option<&'static str>,
}

impl MsrQuirk {
    /// One sentence for logs and errors: what KVM does and what it breaks.
    pub fn explain(&self) -> String {
        format!(
            "this host's KVM reports MSR {:#x} ({}) as {:#x} but a vCPU refuses to take it, \
             so QEMU aborts (\"failed to set MSR {:#x}\") when the guest CPU has {}",
            self.msr,
            self.msr_name,
            self.kvm_value,
            self.msr,
            match self.feature {
                Some(f) => format!("the {f:?} feature"),
                None => "this MSR".to_string(),
            }
        )
    }
}

/// Feature MSRs QEMU writes, by index range: name, and the CPU feature that
/// governs them (QEMU writes the MSR only when the guest CPU has it).
const FEATURE_MSR_NAMES: &[(u32, u32, &str, Option<&str>)] = &[
    (0x8b, 0x8b, "IA32_UCODE_REV", None),
    (
        0x10a,
        0x10a,
        "IA32_ARCH_CAPABILITIES",
        Some("arch-capabilities"),
    ),
    (0xce, 0xce, "MSR_PLATFORM_INFO", None),
    (0x345, 0x345, "IA32_PERF_CAPABILITIES", Some("pdcm")),
    (0x480, 0x493, "IA32_VMX_*", Some("vmx")),
    (0xc001_1029, 0xc001_1029, "AMD DE_CFG", None),
];

fn msr_name(index: u32) -> (&'static str, Option<&'static str>) {
    FEATURE_MSR_NAMES
        .iter()
        .find(|(lo, hi, _, _)| (*lo..=*hi).contains(&index))
        .map(|(_, _, name, feature)| (*name, *feature))
        .unwrap_or(("a feature MSR", None))
}

/// CPUID registers, for the feature table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// x86 CPU features as QEMU and libvirt name them, with the CPUID bit that
/// announces each: (name, leaf, sub-leaf, register, bit). Features that live
/// in MSRs rather than CPUID (`rdctl-no`, `mds-no`, ...) are not here.
const CPUID_FEATURES: &[(&str, u32, u32, Reg, u8)] = {
    use Reg::*;
    &[
        // Leaf 1, EDX.
        ("fpu", 1, 0, Edx, 0),
        ("vme", 1, 0, Edx, 1),
        ("de", 1, 0, Edx, 2),
        ("pse", 1, 0, Edx, 3),
        ("tsc", 1, 0, Edx, 4),
        ("msr", 1, 0, Edx, 5),
        ("pae", 1, 0, Edx, 6),
        ("mce", 1, 0, Edx, 7),
        ("cx8", 1, 0, Edx, 8),
        ("apic", 1, 0, Edx, 9),
        ("sep", 1, 0, Edx, 11),
        ("mtrr", 1, 0, Edx, 12),
        ("pge", 1, 0, Edx, 13),
        ("mca", 1, 0, Edx, 14),
        ("cmov", 1, 0, Edx, 15),
        ("pat", 1, 0, Edx, 16),
        ("pse36", 1, 0, Edx, 17),
        ("clflush", 1, 0, Edx, 19),
        ("ds", 1, 0, Edx, 21),
        ("acpi", 1, 0, Edx, 22),
        ("mmx", 1, 0, Edx, 23),
        ("fxsr", 1, 0, Edx, 24),
        ("sse", 1, 0, Edx, 25),
        ("sse2", 1, 0, Edx, 26),
        ("ss", 1, 0, Edx, 27),
        ("ht", 1, 0, Edx, 28),
        ("tm", 1, 0, Edx, 29),
        ("pbe", 1, 0, Edx, 31),
        // Leaf 1, ECX.
        ("pni", 1, 0, Ecx, 0),
        ("pclmuldq", 1, 0, Ecx, 1),
        ("dtes64", 1, 0, Ecx, 2),
        ("monitor", 1, 0, Ecx, 3),
        ("ds_cpl", 1, 0, Ecx, 4),
        ("vmx", 1, 0, Ecx, 5),
        ("smx", 1, 0, Ecx, 6),
        ("est", 1, 0, Ecx, 7),
        ("tm2", 1, 0, Ecx, 8),
        ("ssse3", 1, 0, Ecx, 9),
        ("cid", 1, 0, Ecx, 10),
        ("fma", 1, 0, Ecx, 12),
        ("cx16", 1, 0, Ecx, 13),
        ("xtpr", 1, 0, Ecx, 14),
        ("pdcm", 1, 0, Ecx, 15),
        ("pcid", 1, 0, Ecx, 17),
        ("dca", 1, 0, Ecx, 18),
        ("sse4.1", 1, 0, Ecx, 19),
        ("sse4.2", 1, 0, Ecx, 20),
        ("x2apic", 1, 0, Ecx, 21),
        ("movbe", 1, 0, Ecx, 22),
        ("popcnt", 1, 0, Ecx, 23),
        ("tsc-deadline", 1, 0, Ecx, 24),
        ("aes", 1, 0, Ecx, 25),
        ("xsave", 1, 0, Ecx, 26),
        ("avx", 1, 0, Ecx, 28),
        ("f16c", 1, 0, Ecx, 29),
        ("rdrand", 1, 0, Ecx, 30),
        ("hypervisor", 1, 0, Ecx, 31),
        // Leaf 6, EAX.
        ("arat", 6, 0, Eax, 2),
        // Leaf 7.0, EBX.
        ("fsgsbase", 7, 0, Ebx, 0),
        ("tsc_adjust", 7, 0, Ebx, 1),
        ("sgx", 7, 0, Ebx, 2),
        ("bmi1", 7, 0, Ebx, 3),
        ("hle", 7, 0, Ebx, 4),
        ("avx2", 7, 0, Ebx, 5),
        ("smep", 7, 0, Ebx, 7),
        ("bmi2", 7, 0, Ebx, 8),
        ("erms", 7, 0, Ebx, 9),
        ("invpcid", 7, 0, Ebx, 10),
        ("rtm", 7, 0, Ebx, 11),
        ("mpx", 7, 0, Ebx, 14),
        ("avx512f", 7, 0, Ebx, 16),
        ("avx512dq", 7, 0, Ebx, 17),
        ("rdseed", 7, 0, Ebx, 18),
        ("adx", 7, 0, Ebx, 19),
        ("smap", 7, 0, Ebx, 20),
        ("avx512ifma", 7, 0, Ebx, 21),
        ("clflushopt", 7, 0, Ebx, 23),
        ("clwb", 7, 0, Ebx, 24),
        ("intel-pt", 7, 0, Ebx, 25),
        ("avx512pf", 7, 0, Ebx, 26),
        ("avx512er", 7, 0, Ebx, 27),
        ("avx512cd", 7, 0, Ebx, 28),
        ("sha-ni", 7, 0, Ebx, 29),
        ("avx512bw", 7, 0, Ebx, 30),
        ("avx512vl", 7, 0, Ebx, 31),
        // Leaf 7.0, ECX.
        ("avx512vbmi", 7, 0, Ecx, 1),
        ("umip", 7, 0, Ecx, 2),
        ("pku", 7, 0, Ecx, 3),
        ("waitpkg", 7, 0, Ecx, 5),
        ("avx512vbmi2", 7, 0, Ecx, 6),
        ("gfni", 7, 0, Ecx, 8),
        ("vaes", 7, 0, Ecx, 9),
        ("vpclmulqdq", 7, 0, Ecx, 10),
        ("avx512vnni", 7, 0, Ecx, 11),
        ("avx512bitalg", 7, 0, Ecx, 12),
        ("avx512-vpopcntdq", 7, 0, Ecx, 14),
        ("la57", 7, 0, Ecx, 16),
        ("rdpid", 7, 0, Ecx, 22),
        ("cldemote", 7, 0, Ecx, 25),
        ("movdiri", 7, 0, Ecx, 27),
        ("movdir64b", 7, 0, Ecx, 28),
        ("sgxlc", 7, 0, Ecx, 30),
        ("pks", 7, 0, Ecx, 31),
        // Leaf 7.0, EDX.
        ("avx512-4vnniw", 7, 0, Edx, 2),
        ("avx512-4fmaps", 7, 0, Edx, 3),
        ("fsrm", 7, 0, Edx, 4),
        ("avx512-vp2intersect", 7, 0, Edx, 8),
        ("md-clear", 7, 0, Edx, 10),
        ("serialize", 7, 0, Edx, 14),
        ("tsx-ldtrk", 7, 0, Edx, 16),
        ("pconfig", 7, 0, Edx, 18),
        ("arch-lbr", 7, 0, Edx, 19),
        ("amx-bf16", 7, 0, Edx, 22),
        ("avx512-fp16", 7, 0, Edx, 23),
        ("amx-tile", 7, 0, Edx, 24),
        ("amx-int8", 7, 0, Edx, 25),
        ("spec-ctrl", 7, 0, Edx, 26),
        ("stibp", 7, 0, Edx, 27),
        ("flush-l1d", 7, 0, Edx, 28),
        ("arch-capabilities", 7, 0, Edx, 29),
        ("core-capability", 7, 0, Edx, 30),
        ("ssbd", 7, 0, Edx, 31),
        // Leaf 7.1, EAX.
        ("avx-vnni", 7, 1, Eax, 4),
        ("avx512-bf16", 7, 1, Eax, 5),
        ("fzrm", 7, 1, Eax, 10),
        ("fsrs", 7, 1, Eax, 11),
        ("fsrc", 7, 1, Eax, 12),
        ("amx-fp16", 7, 1, Eax, 21),
        ("avx-ifma", 7, 1, Eax, 23),
        // Leaf 0xD.1, EAX.
        ("xsaveopt", 0xd, 1, Eax, 0),
        ("xsavec", 0xd, 1, Eax, 1),
        ("xgetbv1", 0xd, 1, Eax, 2),
        ("xsaves", 0xd, 1, Eax, 3),
        // Leaf 0x8000_0001, ECX.
        ("lahf_lm", 0x8000_0001, 0, Ecx, 0),
        ("cmp_legacy", 0x8000_0001, 0, Ecx, 1),
        ("svm", 0x8000_0001, 0, Ecx, 2),
        ("extapic", 0x8000_0001, 0, Ecx, 3),
        ("cr8legacy", 0x8000_0001, 0, Ecx, 4),
        ("abm", 0x8000_0001, 0, Ecx, 5),
        ("sse4a", 0x8000_0001, 0, Ecx, 6),
        ("misalignsse", 0x8000_0001, 0, Ecx, 7),
        ("3dnowprefetch", 0x8000_0001, 0, Ecx, 8),
        ("osvw", 0x8000_0001, 0, Ecx, 9),
        ("ibs", 0x8000_0001, 0, Ecx, 10),
        ("xop", 0x8000_0001, 0, Ecx, 11),
        ("skinit", 0x8000_0001, 0, Ecx, 12),
        ("wdt", 0x8000_0001, 0, Ecx, 13),
        ("lwp", 0x8000_0001, 0, Ecx, 15),
        ("fma4", 0x8000_0001, 0, Ecx, 16),
        ("tce", 0x8000_0001, 0, Ecx, 17),
        ("nodeid_msr", 0x8000_0001, 0, Ecx, 19),
        ("tbm", 0x8000_0001, 0, Ecx, 21),
        ("topoext", 0x8000_0001, 0, Ecx, 22),
        ("perfctr_core", 0x8000_0001, 0, Ecx, 23),
        ("perfctr_nb", 0x8000_0001, 0, Ecx, 24),
        // Leaf 0x8000_0001, EDX.
        ("syscall", 0x8000_0001, 0, Edx, 11),
        ("nx", 0x8000_0001, 0, Edx, 20),
        ("mmxext", 0x8000_0001, 0, Edx, 22),
        ("fxsr_opt", 0x8000_0001, 0, Edx, 25),
        ("pdpe1gb", 0x8000_0001, 0, Edx, 26),
        ("rdtscp", 0x8000_0001, 0, Edx, 27),
        ("lm", 0x8000_0001, 0, Edx, 29),
        ("3dnowext", 0x8000_0001, 0, Edx, 30),
        ("3dnow", 0x8000_0001, 0, Edx, 31),
        // Leaf 0x8000_0007, EDX.
        ("invtsc", 0x8000_0007, 0, Edx, 8),
        // Leaf 0x8000_0008, EBX.
        ("clzero", 0x8000_0008, 0, Ebx, 0),
        ("xsaveerptr", 0x8000_0008, 0, Ebx, 2),
        ("wbnoinvd", 0x8000_0008, 0, Ebx, 9),
        ("ibpb", 0x8000_0008, 0, Ebx, 12),
        ("ibrs", 0x8000_0008, 0, Ebx, 14),
        ("amd-stibp", 0x8000_0008, 0, Ebx, 15),
        ("amd-ssbd", 0x8000_0008, 0, Ebx, 24),
        ("virt-ssbd", 0x8000_0008, 0, Ebx, 25),
        ("amd-no-ssb", 0x8000_0008, 0, Ebx, 26),
        // Leaf 0x8000_000A, EDX: SVM features.
        ("npt", 0x8000_000a, 0, Edx, 0),
        ("lbrv", 0x8000_000a, 0, Edx, 1),
        ("svm-lock", 0x8000_000a, 0, Edx, 2),
        ("nrip-save", 0x8000_000a, 0, Edx, 3),
        ("tsc-scale", 0x8000_000a, 0, Edx, 4),
        ("vmcb-clean", 0x8000_000a, 0, Edx, 5),
        ("flushbyasid", 0x8000_000a, 0, Edx, 6),
        ("decodeassists", 0x8000_000a, 0, Edx, 7),
        ("pause-filter", 0x8000_000a, 0, Edx, 10),
        ("pfthreshold", 0x8000_000a, 0, Edx, 12),
        ("avic", 0x8000_000a, 0, Edx, 13),
        ("v-vmsave-vmload", 0x8000_000a, 0, Edx, 15),
        ("vgif", 0x8000_000a, 0, Edx, 16),
        // Leaf 0x8000_0021, EAX.
        ("no-nested-data-bp", 0x8000_0021, 0, Eax, 0),
        ("lfence-always-serializing", 0x8000_0021, 0, Eax, 2),
        ("null-sel-clr-base", 0x8000_0021, 0, Eax, 6),
        ("auto-ibrs", 0x8000_0021, 0, Eax, 8),
    ]
};

/// Whether `name` is a CPUID feature this table knows.
pub fn is_known_cpuid_feature(name: &str) -> bool {
    CPUID_FEATURES.iter().any(|f| f.0 == name)
}

impl CpuProbe {
    /// Whether KVM offers `name` to a guest; `None` when `name` is not a
    /// CPUID feature the table knows.
    pub fn kvm_offers(&self, name: &str) -> Option<bool> {
        let &(_, leaf, subleaf, reg, bit) = CPUID_FEATURES.iter().find(|f| f.0 == name)?;
        let entry = self
            .cpuid
            .iter()
            .find(|e| e.function == leaf && e.index == subleaf);
        Some(entry.is_some_and(|e| {
            let value = match reg {
                Reg::Eax => e.eax,
                Reg::Ebx => e.ebx,
                Reg::Ecx => e.ecx,
                Reg::Edx => e.edx,
            };
            value & (1 << bit) != 0
        }))
    }

    /// Feature MSRs KVM reports but a vCPU refuses: the host quirks.
    pub fn quirks(&self) -> Vec<MsrQuirk> {
        self.feature_msrs
            .iter()
            .filter(|m| !m.vcpu_accepts_kvm_value && m.kvm_value != 0)
            .map(|m| {
                let (msr_name, feature) = msr_name(m.index);
                MsrQuirk {
                    msr: m.index,
                    msr_name,
                    kvm_value: m.kvm_value,
                    feature,
                }
            })
            .collect()
    }

    /// A recorded probe (the JSON `host cpu --json` prints).
    pub fn load(path: &Path) -> Result<CpuProbe, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the CPU probe {}: {e}", path.display()))?;
        let mut probe: CpuProbe = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a CPU probe recording: {e}", path.display()))?;
        probe.source = format!("recorded {} ({})", path.display(), probe.source);
        Ok(probe)
    }
}

/// The MSR QEMU names in `failed to set MSR 0x10a to 0x69`, with its name and
/// the feature that governs it, for the hint on a QEMU that died anyway.
pub fn refused_msr_in(text: &str) -> Option<(u32, &'static str, Option<&'static str>)> {
    let rest = &text[text.find("failed to set MSR 0x")? + "failed to set MSR 0x".len()..];
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    let index = u32::from_str_radix(&hex, 16).ok()?;
    let (name, feature) = msr_name(index);
    Some((index, name, feature))
}

/// The KVM device the launcher probes.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// The CPU facts for a launch: a recording when one is given
/// (`--cpu-probe FILE`), else a probe of this host's KVM.
pub fn for_launch(recorded: Option<&Path>) -> Result<CpuProbe, String> {
    match recorded {
        Some(path) => CpuProbe::load(path),
        None => probe(Path::new(KVM_DEVICE)).map_err(|e| e.to_string()),
    }
}

/// The CPU quirks of the host libvirt's QEMU runs on: from the recording
/// when one is given, else a probe of this host's KVM when `uri` is local.
/// Without them the guest CPU is rendered as the spec says, with a warning.
pub fn libvirt_quirks(
    domain: &domain_model::Domain,
    uri: &str,
    recorded: Option<&Path>,
) -> Vec<MsrQuirk> {
    if domain.architecture != domain_model::Architecture::Amd64 {
        return Vec::new();
    }
    if recorded.is_none() && !libvirt_uri_is_local(uri) {
        tracing::warn!(
            uri,
            "libvirt runs on another host: its KVM's CPU quirks are not probed"
        );
        return Vec::new();
    }
    match for_launch(recorded) {
        Ok(probe) => probe.quirks(),
        Err(e) => {
            tracing::warn!("{e}; the guest CPU is not adjusted for this host's KVM");
            Vec::new()
        }
    }
}

/// The facts a Cloud Hypervisor Domain's CPU feature policies are checked
/// against (CH gives the guest the host's CPU): `None` when the spec lists
/// no features. Without a probe, `required` (a run) is an error; a dry run
/// only warns and leaves the policies unchecked.
pub fn for_cloud_hypervisor(
    domain: &domain_model::Domain,
    recorded: Option<&Path>,
    required: bool,
) -> Result<Option<CpuProbe>, String> {
    if domain.cpu.features.is_empty() {
        return Ok(None);
    }
    match for_launch(recorded) {
        Ok(probe) => Ok(Some(probe)),
        Err(e) if required => Err(format!(
            "{e}: spec.domain.cpu.features cannot be checked against this host"
        )),
        Err(e) => {
            tracing::warn!("{e}; spec.domain.cpu.features are not checked");
            Ok(None)
        }
    }
}

/// Whether a libvirt URI names this host's daemon (no host part), so that
/// probing this host's KVM tells what its QEMU will meet.
pub fn libvirt_uri_is_local(uri: &str) -> bool {
    match uri.split_once("://") {
        Some((_, rest)) => rest.starts_with('/'),
        None => false,
    }
}

/// Why the probe could not run.
#[derive(Debug, thiserror::Error)]
#[error("cannot probe the host CPU through {device}: {step}: {cause}")]
pub struct ProbeError {
    device: String,
    step: &'static str,
    cause: kvm_ioctls::Error,
}

/// Most CPUID entries `KVM_GET_SUPPORTED_CPUID` may return.
const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

/// Probes the KVM behind `device` (normally `/dev/kvm`): its supported CPUID
/// and, in a scratch VM with one vCPU given that CPUID, which feature MSR
/// values the vCPU takes. Nothing runs in the VM; it is closed on return.
#[cfg(target_arch = "x86_64")]
pub fn probe(device: &Path) -> Result<CpuProbe, ProbeError> {
    use kvm_bindings::{kvm_msr_entry, Msrs};
    let fail = |step: &'static str| {
        let device = device.display().to_string();
        move |source| ProbeError {
            device: device.clone(),
            step,
            cause: source,
        }
    };
    let kvm = super::probe::open_kvm(device).map_err(fail("open"))?;
    let cpuid = kvm
        .get_supported_cpuid(MAX_CPUID_ENTRIES)
        .map_err(fail("KVM_GET_SUPPORTED_CPUID"))?;
    let indices = kvm
        .get_msr_feature_index_list()
        .map_err(fail("KVM_GET_MSR_FEATURE_INDEX_LIST"))?;
    let entries: Vec<kvm_msr_entry> = indices
        .as_slice()
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut values = Vec::new();
    if !entries.is_empty() {
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| ProbeError {
            device: device.display().to_string(),
            step: "KVM_GET_MSRS",
            cause: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let read = kvm.get_msrs(&mut msrs).map_err(fail("KVM_GET_MSRS"))?;
        values = msrs.as_slice()[..read]
            .iter()
            .map(|e| (e.index, e.data))
            .collect();
    }
    let vm = kvm.create_vm().map_err(fail("KVM_CREATE_VM"))?;
    let vcpu = vm.create_vcpu(0).map_err(fail("KVM_CREATE_VCPU"))?;
    vcpu.set_cpuid2(&cpuid).map_err(fail("KVM_SET_CPUID2"))?;
    let takes = |index: u32, data: u64| -> Result<bool, ProbeError> {
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }])
        .map_err(|_| ProbeError {
            device: device.display().to_string(),
            step: "KVM_SET_MSRS",
            cause: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        Ok(vcpu.set_msrs(&msrs).map_err(fail("KVM_SET_MSRS"))? == 1)
    };
    let mut feature_msrs = Vec::with_capacity(values.len());
    for (index, kvm_value) in values {
        let accepted = takes(index, kvm_value)?;
        let zero = if accepted {
            None
        } else {
            Some(takes(index, 0)?)
        };
        feature_msrs.push(FeatureMsr {
            index,
            kvm_value,
            vcpu_accepts_kvm_value: accepted,
            vcpu_accepts_zero: zero,
        });
    }
    let cpuid: Vec<CpuidEntry> = cpuid
        .as_slice()
        .iter()
        .map(|e| CpuidEntry {
            function: e.function,
            index: e.index,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        })
        .collect();
    let vendor = cpuid.iter().find(|e| e.function == 0).map(|e| {
        let bytes: Vec<u8> = [e.ebx, e.edx, e.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    });
    Ok(CpuProbe {
        source: format!("KVM at {}", device.display()),
        vendor,
        cpuid,
        feature_msrs,
    })
}

/// Other architectures have neither CPUID nor these MSR quirks.
#[cfg(not(target_arch = "x86_64"))]
pub fn probe(device: &Path) -> Result<CpuProbe, ProbeError> {
    Ok(CpuProbe {
        source: format!("KVM at {} (not x86_64: nothing to probe)", device.display()),
        vendor: None,
        cpuid: Vec::new(),
        feature_msrs: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(name: &str) -> CpuProbe {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/cpu-probe")
            .join(name);
        CpuProbe::load(&path).unwrap()
    }

    #[test]
    fn recorded_amd_nested_host_refuses_arch_capabilities() {
        let probe = recorded("amd-epyc-nested-arch-capabilities-refused.json");
        let quirks = probe.quirks();
        assert_eq!(quirks.len(), 1, "{quirks:?}");
        assert_eq!(quirks[0].msr, 0x10a);
        assert_eq!(quirks[0].msr_name, "IA32_ARCH_CAPABILITIES");
        assert_eq!(quirks[0].feature, Some("arch-capabilities"));
        assert!(quirks[0].explain().contains("0x10a"));
        assert_eq!(probe.vendor.as_deref(), Some("AuthenticAMD"));
        // The recorded CPUID announces the feature the vCPU then refuses.
        assert_eq!(probe.kvm_offers("arch-capabilities"), Some(true));
    }

    #[test]
    fn recorded_host_that_takes_its_msrs_has_no_quirk() {
        let probe = recorded("amd-epyc-nested-msrs-accepted.json");
        assert!(probe.quirks().is_empty());
    }

    #[test]
    fn cpuid_lookup_reads_the_named_bit() {
        let probe = recorded("amd-epyc-nested-arch-capabilities-refused.json");
        // Every x86_64 CPU has long mode and SSE2.
        assert_eq!(probe.kvm_offers("lm"), Some(true));
        assert_eq!(probe.kvm_offers("sse2"), Some(true));
        // An AMD host has no VMX.
        assert_eq!(probe.kvm_offers("vmx"), Some(false));
        assert_eq!(probe.kvm_offers("no-such-feature"), None);
    }

    #[test]
    fn feature_names_are_unique() {
        let mut names: Vec<&str> = CPUID_FEATURES.iter().map(|f| f.0).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }

    #[test]
    fn qemu_msr_refusal_is_recognised() {
        let text = "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\nqemu: ...";
        assert_eq!(
            refused_msr_in(text),
            Some((0x10a, "IA32_ARCH_CAPABILITIES", Some("arch-capabilities")))
        );
        assert_eq!(refused_msr_in("no such text"), None);
    }

    /// The probe on this machine agrees with QEMU: a host whose vCPU refuses
    /// a feature MSR is one where QEMU aborts for that feature. Runs where
    /// `/dev/kvm` is usable; prints SKIP otherwise.
    #[test]
    fn probe_of_this_host_runs_and_explains_every_quirk() {
        let kvm = Path::new("/dev/kvm");
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(kvm)
            .is_err()
        {
            eprintln!("SKIP: /dev/kvm is not usable here");
            return;
        }
        let probe = probe(kvm).unwrap();
        assert!(!probe.cpuid.is_empty());
        assert_eq!(probe.kvm_offers("lm"), Some(true));
        for q in probe.quirks() {
            assert!(q.explain().contains(&format!("{:#x}", q.msr)));
        }
    }
}
