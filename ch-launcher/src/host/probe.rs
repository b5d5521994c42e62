//! Confidential-computing support read from the kernel, without libvirt.
//!
//! Sources, each of which the kernel only turns on when the hardware and
//! firmware really work: the KVM module parameters in sysfs
//! (`kvm_amd` `sev`/`sev_es`/`sev_snp`, `kvm_intel` `tdx`), the s390
//! Ultravisor's `/sys/firmware/uv/prot_virt_host`, and KVM's
//! `KVM_CAP_VM_TYPES`, which on kernels that have it lists the VM types KVM
//! will create. When the kernel reports VM types, a feature also needs its
//! type there. SEV guests need the C-bit position, which comes from CPUID
//! leaf 0x8000001F as QEMU and libvirt take it.
//!
//! The sysfs root and the KVM device are fields so tests can point the probe
//! at a synthesized tree.

use super::{HostCapabilities, SevParameters};
use std::path::{Path, PathBuf};

/// `KVM_CAP_VM_TYPES` (linux/kvm.h).
const KVM_CAP_VM_TYPES: u64 = 235;

/// KVM's x86 VM types (arch/x86/include/uapi/asm/kvm.h), by bit number in
/// the `KVM_CAP_VM_TYPES` mask.
const VM_TYPES: [(u32, &str); 6] = [
    (0, "default"),
    (1, "sw-protected"),
    (2, "sev"),
    (3, "sev-es"),
    (4, "sev-snp"),
    (5, "tdx"),
];
const KVM_X86_SEV_VM: u32 = 2;
const KVM_X86_SEV_ES_VM: u32 = 3;
const KVM_X86_SNP_VM: u32 = 4;
const KVM_X86_TDX_VM: u32 = 5;

/// What CPUID leaf 0x8000001F (encrypted memory capabilities) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevCpuid {
    /// EBX[5:0].
    pub cbitpos: u32,
    /// ECX: number of encrypted guests supported at once.
    pub max_encrypted_guests: u32,
    /// EDX: lowest ASID of a plain SEV guest; lower ones are for SEV-ES.
    pub min_sev_asid: u32,
}

/// The native probe and where it looks.
#[derive(Debug, Clone)]
pub struct NativeProbe {
    /// Normally `/sys`.
    pub sysfs: PathBuf,
    /// Normally `/dev/kvm`; `None` skips the `KVM_CAP_VM_TYPES` query.
    pub kvm_device: Option<PathBuf>,
    /// Reads CPUID leaf 0x8000001F; `None` when the CPU has no such leaf.
    pub sev_cpuid: fn() -> Option<SevCpuid>,
}

impl Default for NativeProbe {
    fn default() -> Self {
        NativeProbe {
            sysfs: PathBuf::from("/sys"),
            kvm_device: Some(PathBuf::from("/dev/kvm")),
            sev_cpuid: cpuid_8000_001f,
        }
    }
}

impl NativeProbe {
    pub fn probe(&self) -> HostCapabilities {
        let mut notes = Vec::new();
        let vm_types = self.kvm_vm_types(&mut notes);
        // Without KVM_CAP_VM_TYPES (older kernels) the module parameters
        // are all there is.
        let kvm_allows = |bit: u32, what: &str, notes: &mut Vec<String>| match vm_types {
            None => true,
            Some(mask) if mask & (1 << bit) != 0 => true,
            Some(_) => {
                notes.push(format!(
                    "{what} is enabled in the KVM module but KVM does not offer its VM type"
                ));
                false
            }
        };

        let sev_supported = self.param_on("module/kvm_amd/parameters/sev", &mut notes)
            && kvm_allows(KVM_X86_SEV_VM, "SEV", &mut notes);
        let mut sev = None;
        if sev_supported {
            match (self.sev_cpuid)() {
                Some(cpuid) => sev = Some(sev_parameters(cpuid)),
                None => notes.push(
                    "SEV is enabled in kvm_amd but CPUID leaf 0x8000001F is unavailable, so the \
                     C-bit position is unknown: an SEV guest cannot be rendered from this probe"
                        .to_string(),
                ),
            }
        }
        let sev_es = sev_supported
            && self.param_on("module/kvm_amd/parameters/sev_es", &mut notes)
            && kvm_allows(KVM_X86_SEV_ES_VM, "SEV-ES", &mut notes);
        let sev_snp = sev_es
            && self.param_on("module/kvm_amd/parameters/sev_snp", &mut notes)
            && kvm_allows(KVM_X86_SNP_VM, "SEV-SNP", &mut notes);
        let tdx = self.param_on("module/kvm_intel/parameters/tdx", &mut notes)
            && kvm_allows(KVM_X86_TDX_VM, "TDX", &mut notes);
        let secure_execution = self.param_on("firmware/uv/prot_virt_host", &mut notes);

        let mut launch_security_types = Vec::new();
        for (on, name) in [
            (sev_supported, "sev"),
            (sev_snp, "sev-snp"),
            (tdx, "tdx"),
            (secure_execution, "s390-pv"),
        ] {
            if on {
                launch_security_types.push(name.to_string());
            }
        }

        HostCapabilities {
            source: "native probe".to_string(),
            // Rust names x86_64, aarch64 and s390x as libvirt does.
            arch: Some(std::env::consts::ARCH.to_string()),
            sev_supported,
            sev,
            sev_es,
            sev_snp,
            tdx,
            secure_execution,
            launch_security_types,
            kvm_vm_types: vm_types.map(vm_type_names),
            notes,
            ..HostCapabilities::default()
        }
    }

    /// Whether a sysfs flag reads as on (`Y` or `1`). A missing file means
    /// the module or feature is absent; any other failure is noted.
    fn param_on(&self, relative: &str, notes: &mut Vec<String>) -> bool {
        let path = self.sysfs.join(relative);
        match std::fs::read_to_string(&path) {
            Ok(value) => matches!(value.trim(), "Y" | "y" | "1"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                notes.push(format!("cannot read {}: {e}", path.display()));
                false
            }
        }
    }

    fn kvm_vm_types(&self, notes: &mut Vec<String>) -> Option<u32> {
        let device = self.kvm_device.as_deref()?;
        let kvm = match open_kvm_for_vm_types(device) {
            Ok(kvm) => kvm,
            Err(message) => {
                notes.push(message);
                return None;
            }
        };
        // 0 means the kernel does not know the capability; otherwise the
        // default VM type's bit is always set.
        match kvm.check_extension_raw(KVM_CAP_VM_TYPES) {
            mask if mask > 0 => u32::try_from(mask).ok(),
            _ => None,
        }
    }
}

fn open_kvm_for_vm_types(device: &Path) -> Result<kvm_ioctls::Kvm, String> {
    open_kvm(device).map_err(|e| {
        format!(
            "cannot open {} to ask KVM for its VM types: {e}",
            device.display()
        )
    })
}

/// Opens the KVM device at `device`.
pub(super) fn open_kvm(device: &Path) -> Result<kvm_ioctls::Kvm, kvm_ioctls::Error> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(device.as_os_str().as_bytes())
        .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
    kvm_ioctls::Kvm::new_with_path(&path)
}

/// libvirt's counting, so the native probe and `virsh domcapabilities`
/// agree: every ASID below `min_sev_asid` is for SEV-ES guests.
/// `reducedPhysBits` is 1 because that is what QEMU reports and expects.
fn sev_parameters(cpuid: SevCpuid) -> SevParameters {
    SevParameters {
        cbitpos: cpuid.cbitpos,
        reduced_phys_bits: 1,
        max_guests: (cpuid.max_encrypted_guests + 1).saturating_sub(cpuid.min_sev_asid),
        max_es_guests: cpuid.min_sev_asid.saturating_sub(1),
    }
}

fn vm_type_names(mask: u32) -> Vec<String> {
    let mut names: Vec<String> = VM_TYPES
        .iter()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, name)| (*name).to_string())
        .collect();
    let known: u32 = VM_TYPES.iter().map(|(bit, _)| 1 << bit).sum();
    for bit in 0..32 {
        if mask & !known & (1 << bit) != 0 {
            names.push(format!("type-{bit}"));
        }
    }
    names
}

#[cfg(target_arch = "x86_64")]
fn cpuid_8000_001f() -> Option<SevCpuid> {
    use std::arch::x86_64::__cpuid;
    const LEAF: u32 = 0x8000_001F;
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and only reads; older
    // toolchains still mark the intrinsic unsafe.
    let max_extended = unsafe { __cpuid(0x8000_0000) }.eax;
    if max_extended < LEAF {
        return None;
    }
    #[allow(unused_unsafe)]
    // SAFETY: as above; the leaf is within the maximum just read.
    let r = unsafe { __cpuid(LEAF) };
    // EAX bit 1: SEV.
    if r.eax & (1 << 1) == 0 {
        return None;
    }
    Some(SevCpuid {
        cbitpos: r.ebx & 0x3f,
        max_encrypted_guests: r.ecx,
        min_sev_asid: r.edx,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_8000_001f() -> Option<SevCpuid> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn epyc_cpuid() -> Option<SevCpuid> {
        Some(SevCpuid {
            cbitpos: 51,
            max_encrypted_guests: 509,
            min_sev_asid: 100,
        })
    }

    fn no_cpuid() -> Option<SevCpuid> {
        None
    }

    /// A sysfs tree holding only the given files.
    fn sysfs(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, value) in files {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, value).unwrap();
        }
        dir
    }

    fn probe(root: &Path, cpuid: fn() -> Option<SevCpuid>) -> HostCapabilities {
        NativeProbe {
            sysfs: root.to_path_buf(),
            kvm_device: None,
            sev_cpuid: cpuid,
        }
        .probe()
    }

    #[test]
    fn amd_host_with_snp_reports_sev_es_snp_and_cpuid_parameters() {
        let root = sysfs(&[
            ("module/kvm_amd/parameters/sev", "Y\n"),
            ("module/kvm_amd/parameters/sev_es", "Y\n"),
            ("module/kvm_amd/parameters/sev_snp", "Y\n"),
        ]);
        let caps = probe(root.path(), epyc_cpuid);
        assert_eq!(
            caps.sev,
            Some(SevParameters {
                cbitpos: 51,
                reduced_phys_bits: 1,
                max_guests: 410,
                max_es_guests: 99
            })
        );
        assert!(caps.sev_es && caps.sev_snp && !caps.tdx && !caps.secure_execution);
        assert_eq!(caps.launch_security_types, ["sev", "sev-snp"]);
        assert!(caps.notes.is_empty(), "{:?}", caps.notes);
    }

    #[test]
    fn older_kernel_integer_sev_parameter_counts() {
        let root = sysfs(&[
            ("module/kvm_amd/parameters/sev", "1\n"),
            ("module/kvm_amd/parameters/sev_es", "0\n"),
        ]);
        let caps = probe(root.path(), epyc_cpuid);
        assert!(caps.sev.is_some());
        assert!(!caps.sev_es && !caps.sev_snp);
    }

    #[test]
    fn snp_parameter_without_sev_es_is_not_snp() {
        let root = sysfs(&[
            ("module/kvm_amd/parameters/sev", "Y"),
            ("module/kvm_amd/parameters/sev_es", "N"),
            ("module/kvm_amd/parameters/sev_snp", "Y"),
        ]);
        let caps = probe(root.path(), epyc_cpuid);
        assert!(caps.sev.is_some() && !caps.sev_es && !caps.sev_snp);
    }

    #[test]
    fn sev_without_cpuid_leaf_is_supported_without_parameters_and_noted() {
        let root = sysfs(&[("module/kvm_amd/parameters/sev", "Y")]);
        let caps = probe(root.path(), no_cpuid);
        assert!(caps.sev_supported);
        assert_eq!(caps.sev, None);
        assert!(
            caps.notes.iter().any(|n| n.contains("0x8000001F")),
            "{:?}",
            caps.notes
        );
    }

    #[test]
    fn intel_host_with_tdx_module_reports_tdx_only() {
        let root = sysfs(&[
            ("module/kvm_intel/parameters/tdx", "Y\n"),
            ("module/kvm_intel/parameters/nested", "Y\n"),
        ]);
        let caps = probe(root.path(), no_cpuid);
        assert!(caps.tdx);
        assert!(caps.sev.is_none() && !caps.sev_snp && !caps.secure_execution);
        assert_eq!(caps.launch_security_types, ["tdx"]);
    }

    #[test]
    fn disabled_tdx_parameter_is_not_tdx() {
        let root = sysfs(&[("module/kvm_intel/parameters/tdx", "N\n")]);
        assert!(!probe(root.path(), no_cpuid).tdx);
    }

    #[test]
    fn s390_ultravisor_host_reports_secure_execution() {
        let root = sysfs(&[("firmware/uv/prot_virt_host", "1\n")]);
        let caps = probe(root.path(), no_cpuid);
        assert!(caps.secure_execution);
        assert_eq!(caps.launch_security_types, ["s390-pv"]);
        let root = sysfs(&[("firmware/uv/prot_virt_host", "0\n")]);
        assert!(!probe(root.path(), no_cpuid).secure_execution);
    }

    #[test]
    fn unreadable_parameter_is_noted_not_silently_false() {
        let root = sysfs(&[]);
        // A directory where a file is expected makes the read fail with
        // something other than "not found".
        fs::create_dir_all(root.path().join("module/kvm_intel/parameters/tdx")).unwrap();
        let caps = probe(root.path(), no_cpuid);
        assert!(!caps.tdx);
        assert!(
            caps.notes.iter().any(|n| n.contains("tdx")),
            "{:?}",
            caps.notes
        );
    }

    #[test]
    fn vm_type_mask_names_known_and_unknown_types() {
        assert_eq!(vm_type_names(0b1), ["default"]);
        assert_eq!(
            vm_type_names(0b11_1101 | 1 << 9),
            ["default", "sev", "sev-es", "sev-snp", "tdx", "type-9"]
        );
    }

    #[test]
    fn missing_kvm_device_is_noted() {
        let root = sysfs(&[]);
        let caps = NativeProbe {
            sysfs: root.path().to_path_buf(),
            kvm_device: Some(root.path().join("no-such-kvm")),
            sev_cpuid: no_cpuid,
        }
        .probe();
        assert_eq!(caps.kvm_vm_types, None);
        assert!(
            caps.notes.iter().any(|n| n.contains("no-such-kvm")),
            "{:?}",
            caps.notes
        );
    }

    /// This development host (nested KVM on Intel, no TDX module) has none of
    /// the features; a host whose CPU advertises one is skipped visibly.
    #[test]
    fn native_probe_on_this_host_reports_no_confidential_features() {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags: Vec<&str> = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .flat_map(|l| l.split_whitespace())
            .collect();
        if flags
            .iter()
            .any(|f| ["sev", "tdx_host_platform"].contains(f))
            || Path::new("/sys/firmware/uv").exists()
        {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                concat!(
                    "SKIP: this host's CPU advertises SEV, TDX or an Ultravisor",
                    "\n"
                )
                .as_bytes(),
            );
            return;
        }
        let caps = NativeProbe::default().probe();
        println!(
            "{}",
            serde_json::to_string_pretty(&caps).unwrap_or_default()
        );
        assert_eq!(caps.sev, None, "{caps:?}");
        assert!(!caps.sev_supported, "{caps:?}");
        assert!(!caps.sev_es && !caps.sev_snp && !caps.tdx && !caps.secure_execution);
        assert!(caps.launch_security_types.is_empty());
        assert!(super::super::labels::node_labels(&caps).is_empty());
        if let Some(types) = &caps.kvm_vm_types {
            for confidential in ["sev", "sev-es", "sev-snp", "tdx"] {
                assert!(!types.iter().any(|t| t == confidential), "{types:?}");
            }
        }
    }
}
