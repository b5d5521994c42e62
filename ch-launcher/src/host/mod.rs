//! What this host can run: confidential-computing support (SEV, SEV-ES,
//! SEV-SNP, TDX, IBM Z Secure Execution) and the SEV parameters a guest needs,
//! learnt either from a recorded `virsh domcapabilities` document
//! ([`domcaps`]) or from the kernel directly ([`probe`]), and turned into the
//! node labels KubeVirt schedules on ([`labels`]).
//!
//! Both sources produce the same [`HostCapabilities`], so translation code
//! (the libvirt renderer needs `cbitpos` and `reducedPhysBits`) and the CLI
//! never care where the facts came from.

pub mod cpu;
pub mod domcaps;
pub mod labels;
pub mod probe;

use domain_model::LaunchSecurity;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Confidential-computing facts about one host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct HostCapabilities {
    /// Where the facts came from: `domcapabilities <file>`, `libvirt`, or
    /// `native probe`.
    pub source: String,
    /// Architecture as libvirt names it (`x86_64`, `s390x`, `aarch64`).
    pub arch: Option<String>,
    /// The QEMU binary libvirt would run; unknown for the native probe.
    pub emulator: Option<String>,
    pub machine: Option<String>,
    /// libvirt's domain type (`kvm`, `qemu`).
    pub domain_type: Option<String>,
    /// AMD SEV is available (`<sev supported='yes'>`, or kvm_amd's `sev`
    /// parameter on): what the `kubevirt.io/sev` label says, as KubeVirt's
    /// node-labeller decides it, whether or not the parameters are known.
    pub sev_supported: bool,
    /// The parameters every SEV/SEV-ES/SEV-SNP guest must use; `None` when
    /// SEV is not available or the source did not report `cbitpos` and
    /// `reducedPhysBits` (then nothing can be rendered for an SEV guest).
    pub sev: Option<SevParameters>,
    pub sev_es: bool,
    pub sev_snp: bool,
    pub tdx: bool,
    /// IBM Z Secure Execution (libvirt's `s390-pv`).
    pub secure_execution: bool,
    /// Intel SGX as libvirt reports it; `None` when the source does not say
    /// (the native probe does not look).
    pub sgx: Option<bool>,
    /// libvirt's `<launchSecurity><enum name='sectype'>` values, as listed.
    pub launch_security_types: Vec<String>,
    /// Firmware kinds libvirt offers (`bios`, `efi`).
    pub firmware: Vec<String>,
    /// Firmware images libvirt knows about.
    pub loaders: Vec<String>,
    /// KVM's supported VM types (`KVM_CAP_VM_TYPES`), native probe only;
    /// `None` when not asked or the kernel predates the capability.
    pub kvm_vm_types: Option<Vec<String>>,
    /// Things the probe could not find out, so a "not supported" can be told
    /// apart from "could not look".
    pub notes: Vec<String>,
}

/// The SEV parameters a guest's `<launchSecurity>` has to repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SevParameters {
    /// Position of the encryption bit in a page-table entry.
    pub cbitpos: u32,
    /// Physical address bits lost to memory encryption.
    pub reduced_phys_bits: u32,
    /// Concurrent SEV guests (0 when unknown).
    pub max_guests: u32,
    /// Concurrent SEV-ES guests (0 when unknown or SEV-ES is unavailable).
    pub max_es_guests: u32,
}

impl HostCapabilities {
    /// Why `ls` cannot run here, naming the missing host feature; `None`
    /// when the host has everything the launch-security kind needs.
    pub fn unsupported(&self, ls: &LaunchSecurity) -> Option<String> {
        let have = labels::node_labels(self);
        let missing: Vec<String> = labels::node_selector(Some(ls))
            .into_keys()
            .filter(|label| !have.contains_key(label))
            .collect();
        if missing.is_empty() {
            return None;
        }
        Some(format!(
            "{} cannot run on this host ({}): it lacks {}",
            launch_security_name(ls),
            self.source,
            missing.join(", ")
        ))
    }
}

/// The user-facing name of a launch-security kind.
pub fn launch_security_name(ls: &LaunchSecurity) -> &'static str {
    match ls {
        LaunchSecurity::Sev {
            encrypted_state: true,
            ..
        } => "SEV-ES",
        LaunchSecurity::Sev { .. } => "SEV",
        LaunchSecurity::SevSnp { .. } => "SEV-SNP",
        LaunchSecurity::Tdx => "TDX",
        LaunchSecurity::SecureExecution => "IBM Z Secure Execution",
    }
}

/// Why host capabilities could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read domain capabilities {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot parse domain capabilities {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("cannot print the host capabilities as JSON: {0}")]
    Encode(String),
    #[error("{0}")]
    Probe(String),
}

/// Host capabilities from a recorded `virsh domcapabilities` file when one is
/// given, otherwise from the native probe of this host.
pub fn capabilities(domcapabilities: Option<&Path>) -> Result<HostCapabilities, HostError> {
    match domcapabilities {
        Some(path) => domcaps::load(path),
        None => Ok(probe::NativeProbe::default().probe()),
    }
}

/// `ch-launcher host labels`: the node labels, one `key=value` per line.
pub fn labels_command(domcapabilities: Option<&Path>) -> Result<String, HostError> {
    let caps = capabilities(domcapabilities)?;
    Ok(labels::to_lines(&labels::node_labels(&caps)))
}

/// `ch-launcher host capabilities`: everything detected, as pretty JSON,
/// with the CPU probe's findings under `cpu`.
pub fn capabilities_command(
    domcapabilities: Option<&Path>,
    cpu_probe: Option<&Path>,
) -> Result<String, HostError> {
    let caps = capabilities(domcapabilities)?;
    let mut value = serde_json::to_value(&caps).map_err(|e| HostError::Encode(e.to_string()))?;
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("cpu".into(), cpu_summary(cpu_probe));
    }
    let mut json =
        serde_json::to_string_pretty(&value).map_err(|e| HostError::Encode(e.to_string()))?;
    json.push('\n');
    Ok(json)
}

/// The CPU probe's findings as JSON: source, vendor and quirks, or the error.
fn cpu_summary(cpu_probe: Option<&Path>) -> serde_json::Value {
    match cpu::for_launch(cpu_probe) {
        Ok(probe) => serde_json::json!({
            "source": probe.source,
            "vendor": probe.vendor,
            "quirks": probe.quirks().iter().map(|q| serde_json::json!({
                "msr": format!("{:#x}", q.msr),
                "msr_name": q.msr_name,
                "kvm_value": format!("{:#x}", q.kvm_value),
                "feature": q.feature,
                "explanation": q.explain(),
            })).collect::<Vec<_>>(),
        }),
        Err(e) => serde_json::json!({ "error": e }),
    }
}

/// `ch-launcher host cpu`: the quirks in words, or (`json`) the whole probe
/// as a recording for `--cpu-probe`.
pub fn cpu_command(cpu_probe: Option<&Path>, json: bool) -> Result<String, HostError> {
    let probe = cpu::for_launch(cpu_probe).map_err(HostError::Probe)?;
    if json {
        let mut text =
            serde_json::to_string_pretty(&probe).map_err(|e| HostError::Encode(e.to_string()))?;
        text.push('\n');
        return Ok(text);
    }
    let mut out = format!(
        "source: {}\nvendor: {}\n",
        probe.source,
        probe.vendor.as_deref().unwrap_or("unknown")
    );
    let quirks = probe.quirks();
    if quirks.is_empty() {
        out.push_str("quirks: none (every feature MSR KVM reports is accepted by a vCPU)\n");
    }
    for q in quirks {
        let fix = match q.feature {
            Some(f) => format!("libvirt guests get {f:?} disabled"),
            None => "no CPU feature governs it".to_string(),
        };
        out.push_str(&format!("quirk: {}; {fix}\n", q.explain()));
    }
    Ok(out)
}

/// The CPUs this launcher may run on: its cgroup v2 `cpuset.cpus.effective`
/// (what a pod with dedicated CPUs gets from the kubelet's CPU manager),
/// else its scheduler affinity.
pub fn pod_cpuset() -> Result<Vec<u32>, String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if let Some(path) = cgroup.lines().find_map(|l| l.strip_prefix("0::")) {
        let file = std::path::Path::new("/sys/fs/cgroup")
            .join(path.trim_start_matches('/'))
            .join("cpuset.cpus.effective");
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Ok(cpus) = parse_cpu_list(text.trim()) {
                if !cpus.is_empty() {
                    return Ok(cpus);
                }
            }
        }
    }
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most the size given into `set`.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the set within its size.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .map(|c| c as u32)
        .collect())
}

/// A kernel CPU list: `0-3,8,10-11`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} in CPU list {text:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod cpuset_tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_ranges_and_singles() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11").unwrap(),
            [0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<u32>::new());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(
            !pod_cpuset().unwrap().is_empty(),
            "this process runs on some CPU"
        );
    }
}
