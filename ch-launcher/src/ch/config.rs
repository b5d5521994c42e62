//! Pure translation of a [`Domain`] into Cloud Hypervisor's `vm.create` body.
//!
//! No I/O: host facts (which firmware file, which IGVM image) come in through
//! [`HostInputs`]. Everything the Domain asks for is either expressed in the
//! `VmConfig` or refused with a [`ConfigError`] naming the spec field, because
//! Cloud Hypervisor accepts (HTTP 204) and then silently ignores fields it does
//! not know or cannot honour.

use crate::host::cpu::CpuProbe;
use cloud_hypervisor_client::models::{
    ConsoleConfig, ConsoleMode, CpuFeatures, CpuTopology, CpusConfig, DiskConfig, ImageType,
    MemoryConfig, PayloadConfig, PlatformConfig, RngConfig, SerialConfig, VmConfig,
};
use domain_model::{
    Architecture, Boot, Domain, FieldError, ImageFormat, LaunchSecurity, SpecErrors,
};
use std::path::{Path, PathBuf};

/// Host facts the translation needs but must not look up itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInputs {
    /// Cloud Hypervisor firmware (`CLOUDHV.fd`, rust-hypervisor-firmware, or a
    /// TDX-capable TDVF) for EFI boot and for TDX.
    pub firmware: Option<PathBuf>,
    /// IGVM image for SEV-SNP guests (it carries the guest firmware).
    pub igvm: Option<PathBuf>,
    /// Where CH serves the serial port in its `Socket` mode (the launcher's
    /// default, see [`SerialMode`]); `None` asks for a PTY instead.
    pub serial_socket: Option<PathBuf>,
    /// The VM directory, where each filesystem's virtiofsd socket is
    /// ([`crate::virtiofs::socket_path`]); `None` in tests of the rest.
    pub vm_dir: Option<PathBuf>,
    /// The CPUs of the pod's cpuset (cgroup v2 `cpuset.cpus.effective`),
    /// for `dedicatedCpuPlacement`.
    pub dedicated_cpus: Option<Vec<u32>>,
    /// What this host's KVM offers a guest CPU, to check the spec's CPU
    /// feature policies against (CH passes the host CPU through). `None` in a
    /// dry run without a probe: the policies are then not checked.
    pub cpu: Option<CpuProbe>,
}

/// How Cloud Hypervisor hands the guest's serial port to the launcher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SerialMode {
    /// A unix socket CH listens on and the launcher connects to. CH holds
    /// output until the launcher connects, and what it wrote before it
    /// closes the socket (guest power-off) stays readable, so no byte is lost.
    #[default]
    Socket,
    /// A PTY. When CH closes it (guest power-off), the kernel discards what
    /// the launcher had not read yet: the guest's last output can be lost.
    Pty,
}

impl HostInputs {
    /// The files the `firmware` crate chose for a Cloud Hypervisor Domain.
    pub fn from_choice(choice: &firmware::Choice) -> Self {
        match choice {
            firmware::Choice::CloudHypervisor(sel) => match sel.kind {
                firmware::ChFirmwareKind::Igvm => HostInputs {
                    igvm: Some(sel.path.clone()),
                    ..HostInputs::default()
                },
                _ => HostInputs {
                    firmware: Some(sel.path.clone()),
                    ..HostInputs::default()
                },
            },
            firmware::Choice::NotNeeded { .. } | firmware::Choice::Qemu(_) => HostInputs::default(),
        }
    }
}

/// The entropy source CH reads for virtio-rng.
pub const RNG_SOURCE: &str = "/dev/urandom";

/// One thing in the Domain Cloud Hypervisor cannot do, or cannot be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// What the support table says Cloud Hypervisor cannot do.
    #[error("{}: {}", .0.path, .0.message)]
    Refused(FieldError),
    /// EFI boot (or TDX) without a firmware file from the host.
    #[error("{path}: booting from firmware needs a Cloud Hypervisor firmware path (CLOUDHV.fd or rust-hypervisor-firmware)")]
    FirmwareMissing { path: String },
    /// SEV-SNP without an IGVM image from the host.
    #[error("{path}: SEV-SNP on cloud-hypervisor needs an IGVM image path")]
    IgvmMissing { path: String },
    /// A value outside what Cloud Hypervisor's API can carry.
    #[error("{path}: {value} is out of range for cloud-hypervisor ({limit})")]
    OutOfRange {
        path: String,
        value: String,
        limit: String,
    },
    /// A CPU feature policy Cloud Hypervisor cannot keep on this host, or
    /// cannot keep at all.
    #[error("{path}: {message}")]
    CpuFeature { path: String, message: String },
    /// A host path that cannot be written into the JSON API.
    #[error("{path}: path {file:?} is not valid UTF-8")]
    NonUtf8Path { path: String, file: PathBuf },
}

impl ConfigError {
    /// The spec field the problem is about.
    pub fn path(&self) -> &str {
        match self {
            ConfigError::Refused(FieldError { path, .. })
            | ConfigError::FirmwareMissing { path }
            | ConfigError::IgvmMissing { path }
            | ConfigError::OutOfRange { path, .. }
            | ConfigError::CpuFeature { path, .. }
            | ConfigError::NonUtf8Path { path, .. } => path,
        }
    }
}

/// Every problem found while translating, in spec order; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", SpecErrors::from(self.clone()).to_string().trim_end())]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl From<ConfigErrors> for SpecErrors {
    fn from(errors: ConfigErrors) -> Self {
        SpecErrors(
            errors
                .0
                .iter()
                .map(|e| {
                    let full = e.to_string();
                    let message = full
                        .strip_prefix(&format!("{}: ", e.path()))
                        .unwrap_or(&full)
                        .to_string();
                    FieldError::new(e.path(), message)
                })
                .collect(),
        )
    }
}

/// Translates `domain` into the body of Cloud Hypervisor's `vm.create`.
pub fn vm_config(domain: &Domain, host: &HostInputs) -> Result<VmConfig, ConfigErrors> {
    // What Cloud Hypervisor can do is decided in one place, the support
    // table; a Domain that asks for more never reaches the builders below.
    let mut errors: Vec<ConfigError> = match domain_model::check_support(domain) {
        Ok(()) => Vec::new(),
        Err(refused) => refused.0.into_iter().map(ConfigError::Refused).collect(),
    };

    let cpus = cpus(domain, host, &mut errors);
    let mut memory = memory(domain, &mut errors);
    let mut payload = payload(domain, host, &mut errors);
    let disks = disks(domain, &mut errors);
    let serial = serial(domain, host, &mut errors);
    let mut platform = PlatformConfig {
        uuid: Some(domain.firmware.uuid.clone()),
        serial_number: domain.firmware.serial.clone(),
        ..PlatformConfig::new()
    };
    launch_security(domain, host, &mut payload, &mut platform, &mut errors);
    let net = nets(domain);
    let fs = filesystems(domain, host);
    if !fs.is_empty() {
        // vhost-user: virtiofsd maps the guest's memory.
        memory.shared = Some(true);
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(VmConfig {
        cpus: Some(cpus),
        memory: Some(memory),
        disks: (!disks.is_empty()).then_some(disks),
        net: (!net.is_empty()).then_some(net),
        fs: (!fs.is_empty()).then_some(fs),
        // Cloud Hypervisor adds a virtio-rng from /dev/urandom even when the
        // field is absent (its serde default); there is no way to leave it out.
        rng: domain
            .devices
            .rng
            .then(|| RngConfig::new(RNG_SOURCE.into())),
        serial: Some(serial),
        // CH's default virtio-console is `Tty`: the launcher's own terminal.
        console: Some(ConsoleConfig::new(ConsoleMode::Off)),
        // Makes guest panics visible as `guest:panic` events.
        pvpanic: Some(true),
        platform: Some(platform),
        ..VmConfig::new(payload)
    })
}

/// `vm_config` rendered as the pretty JSON sent to `vm.create` (`ch-launcher render`).
pub fn render_json(domain: &Domain, host: &HostInputs) -> Result<String, ConfigErrors> {
    let config = vm_config(domain, host)?;
    // Serializing plain data structs with string keys cannot fail.
    Ok(serde_json::to_string_pretty(&config).unwrap_or_default())
}

fn cpus(domain: &Domain, host: &HostInputs, errors: &mut Vec<ConfigError>) -> CpusConfig {
    let cpu = &domain.cpu;
    if domain.architecture == Architecture::Amd64 && cpu.threads > 2 {
        errors.push(ConfigError::OutOfRange {
            path: "spec.domain.cpu.threads".into(),
            value: cpu.threads.to_string(),
            limit: "at most 2 threads per core on x86_64".into(),
        });
    }
    let mut int = |path: &str, value: u32| {
        i32::try_from(value).unwrap_or_else(|_| {
            errors.push(ConfigError::OutOfRange {
                path: path.into(),
                value: value.to_string(),
                limit: format!("at most {}", i32::MAX),
            });
            0
        })
    };
    let boot_vcpus = int("spec.domain.cpu", cpu.vcpus());
    let max_vcpus = int("spec.domain.cpu.maxSockets", cpu.max_vcpus());
    // CH requires threads x cores x dies x packages == max_vcpus, so hotplug
    // capacity is expressed as extra packages (sockets).
    let topology = CpuTopology {
        threads_per_core: Some(int("spec.domain.cpu.threads", cpu.threads)),
        cores_per_die: Some(int("spec.domain.cpu.cores", cpu.cores)),
        dies_per_package: Some(1),
        packages: Some(int("spec.domain.cpu.maxSockets", cpu.max_sockets)),
    };
    let knobs = cpu_feature_knobs(domain, host.cpu.as_ref(), errors);
    let affinity = cpu
        .dedicated
        .then(|| pinning(cpu.max_vcpus(), host, errors));
    CpusConfig {
        topology: Some(topology),
        nested: knobs.nested,
        features: knobs.amx.map(|amx| CpuFeatures { amx: Some(amx) }),
        affinity,
        ..CpusConfig::new(boot_vcpus, max_vcpus)
    }
}

/// Cloud Hypervisor's CPU feature knobs: it gives the guest the CPUID KVM
/// supports, minus AMX unless `amx` is on and minus VMX/SVM when `nested` is
/// off; no other feature can be added or hidden.
#[derive(Debug, Default, PartialEq, Eq)]
struct CpuKnobs {
    amx: Option<bool>,
    nested: Option<bool>,
}

/// The AMX features CH's `amx` knob turns on and off together.
const AMX_FEATURES: &[&str] = &["amx-tile", "amx-int8", "amx-bf16", "amx-fp16"];
/// The features CH's `nested` knob governs.
const NESTED_FEATURES: &[&str] = &["vmx", "svm"];

fn cpu_feature_error(path: String, message: String) -> ConfigError {
    ConfigError::CpuFeature { path, message }
}

/// Sets a knob that several features share, refusing contradictions.
fn set_knob(
    knob: &mut Option<bool>,
    on: bool,
    f: &domain_model::CpuFeature,
    what: &str,
    errors: &mut Vec<ConfigError>,
) {
    let word = |on: bool| if on { "on" } else { "off" };
    match *knob {
        Some(was) if was != on => errors.push(cpu_feature_error(
            format!("{}.policy", f.spec_path),
            format!(
                "turning {:?} {} while another of {what} is turned {} (Cloud Hypervisor \
                 switches them together)",
                f.name,
                word(on),
                word(was),
            ),
        )),
        _ => *knob = Some(on),
    }
}

/// `spec.domain.cpu.features` in CH's terms. Each policy keeps its meaning:
/// `require`/`force` need the host to offer the feature (CH cannot invent
/// one), `disable` needs a knob or a host without it, `forbid` a host
/// without it, `optional` always holds.
fn cpu_feature_knobs(
    domain: &Domain,
    host: Option<&CpuProbe>,
    errors: &mut Vec<ConfigError>,
) -> CpuKnobs {
    use domain_model::CpuFeaturePolicy::*;
    let mut knobs = CpuKnobs::default();
    for f in &domain.cpu.features {
        let name = f.name.as_str();
        if !crate::host::cpu::is_known_cpuid_feature(name) {
            errors.push(cpu_feature_error(
                format!("{}.name", f.spec_path),
                format!(
                    "CPU feature {name:?} is not a CPUID feature the launcher can check, and \
                     Cloud Hypervisor takes no feature list: it gives the guest the host's CPUID"
                ),
            ));
            continue;
        }
        let offered = host.and_then(|h| h.kvm_offers(name));
        let knob = if AMX_FEATURES.contains(&name) {
            Some((&mut knobs.amx, "the AMX features"))
        } else if NESTED_FEATURES.contains(&name) {
            Some((&mut knobs.nested, "vmx/svm"))
        } else {
            None
        };
        let source = host.map(|h| h.source.as_str()).unwrap_or_default();
        match (f.policy, knob) {
            (Require | Force, knob) => {
                if offered == Some(false) {
                    errors.push(cpu_feature_error(
                        format!("{}.policy", f.spec_path),
                        format!(
                            "CPU feature {name:?} with policy {} on this host: its KVM ({source}) \
                             does not offer it, and Cloud Hypervisor can only pass the host's \
                             features through",
                            f.policy
                        ),
                    ));
                } else if let Some((knob, what)) = knob {
                    set_knob(knob, true, f, what, errors);
                }
            }
            (Optional, Some((knob, what))) => {
                if offered != Some(false) {
                    set_knob(knob, true, f, what, errors);
                }
            }
            (Optional, None) => {}
            (Disable, Some((knob, what))) => set_knob(knob, false, f, what, errors),
            (Disable | Forbid, _) if offered == Some(true) => errors.push(cpu_feature_error(
                format!("{}.policy", f.spec_path),
                format!(
                    "CPU feature {name:?} with policy {} on this host: its KVM ({source}) offers \
                     it and Cloud Hypervisor cannot hide it (only the AMX features and vmx/svm \
                     can be turned off)",
                    f.policy
                ),
            )),
            (Disable | Forbid, _) => {}
        }
    }
    knobs
}

fn bytes(path: &str, value: u64, errors: &mut Vec<ConfigError>) -> i64 {
    i64::try_from(value).unwrap_or_else(|_| {
        errors.push(ConfigError::OutOfRange {
            path: path.into(),
            value: format!("{value} bytes"),
            limit: format!("at most {} bytes", i64::MAX),
        });
        0
    })
}

/// `dedicatedCpuPlacement`: vCPU `i` (up to the hotplug maximum) on the
/// `i`th CPU of the pod's cpuset, one CPU each, as KubeVirt pins them.
fn pinning(
    vcpus: u32,
    host: &HostInputs,
    errors: &mut Vec<ConfigError>,
) -> Vec<cloud_hypervisor_client::models::CpuAffinity> {
    let path = "spec.domain.cpu.dedicatedCpuPlacement";
    let Some(cpus) = &host.dedicated_cpus else {
        errors.push(ConfigError::OutOfRange {
            path: path.into(),
            value: "true".into(),
            limit: "the pod's cpuset could not be read".into(),
        });
        return Vec::new();
    };
    if (cpus.len() as u64) < u64::from(vcpus) {
        errors.push(ConfigError::OutOfRange {
            path: path.into(),
            value: format!("{vcpus} vCPUs"),
            limit: format!(
                "a dedicated CPU each, and the pod's cpuset has {} ({:?})",
                cpus.len(),
                cpus
            ),
        });
        return Vec::new();
    }
    (0..vcpus)
        .map(|i| cloud_hypervisor_client::models::CpuAffinity {
            vcpu: i as i32,
            host_cpus: vec![cpus[i as usize] as i32],
        })
        .collect()
}

/// ACPI memory hotplug adds memory in sections of this size.
pub const ACPI_MEMORY_BLOCK: u64 = 128 << 20;

fn memory(domain: &Domain, errors: &mut Vec<ConfigError>) -> MemoryConfig {
    let mem = &domain.memory;
    let mut config = MemoryConfig::new(bytes("spec.domain.memory.guest", mem.guest, errors));
    if let Some(max) = mem.max_guest.filter(|max| *max > mem.guest) {
        config.hotplug_size = Some(bytes(
            "spec.domain.memory.maxGuest",
            max - mem.guest,
            errors,
        ));
        // Said, not defaulted: the resize rules depend on it (whole
        // sections, no unplug).
        config.hotplug_method = Some("Acpi".to_string());
    }
    if let Some(size) = mem.hugepage_size {
        let path = "spec.domain.memory.hugepages.pageSize";
        if !size.is_power_of_two() {
            errors.push(ConfigError::OutOfRange {
                path: path.into(),
                value: format!("{size} bytes"),
                limit: "a power of two".into(),
            });
        }
        config.hugepages = Some(true);
        config.hugepage_size = Some(bytes(path, size, errors));
    }
    config
}

fn path_str(spec_path: &str, file: &Path, errors: &mut Vec<ConfigError>) -> String {
    match file.to_str() {
        Some(s) => s.to_string(),
        None => {
            errors.push(ConfigError::NonUtf8Path {
                path: spec_path.into(),
                file: file.to_path_buf(),
            });
            String::new()
        }
    }
}

/// The serial port: off without `autoattachSerialConsole`, else a socket or
/// a PTY as [`HostInputs::serial_socket`] says.
fn serial(domain: &Domain, host: &HostInputs, errors: &mut Vec<ConfigError>) -> SerialConfig {
    if !domain.devices.serial_console {
        return SerialConfig::new(ConsoleMode::Off);
    }
    match &host.serial_socket {
        Some(socket) => SerialConfig {
            socket: Some(path_str(
                "spec.domain.devices.autoattachSerialConsole",
                socket,
                errors,
            )),
            ..SerialConfig::new(ConsoleMode::Socket)
        },
        None => SerialConfig::new(ConsoleMode::Pty),
    }
}

const EFI_PATH: &str = "spec.domain.firmware.bootloader.efi";
const BIOS_PATH: &str = "spec.domain.firmware.bootloader";

fn payload(domain: &Domain, host: &HostInputs, errors: &mut Vec<ConfigError>) -> PayloadConfig {
    let mut payload = PayloadConfig::new();
    // SEV-SNP boots from the IGVM image, which carries the firmware; CH
    // rejects a firmware next to it (see `launch_security`).
    let snp = matches!(domain.launch_security, Some(LaunchSecurity::SevSnp { .. }));
    match &domain.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
            // Pulled before a real run; a dry run shows the in-image paths.
            image: _,
        } => {
            let base = "spec.domain.firmware.kernelBoot.container";
            payload.kernel = Some(path_str(&format!("{base}.kernelPath"), kernel, errors));
            payload.initramfs = initrd
                .as_deref()
                .map(|p| path_str(&format!("{base}.initrdPath"), p, errors));
            payload.cmdline = cmdline.clone();
        }
        // Secure boot and persistent variables are refused by the table.
        // BIOS boot gets rust-hypervisor-firmware from the firmware crate.
        Boot::Efi { .. } | Boot::Bios => {
            let path = match domain.boot {
                Boot::Bios => BIOS_PATH,
                _ => EFI_PATH,
            };
            if !snp {
                match &host.firmware {
                    Some(fw) => payload.firmware = Some(path_str(path, fw, errors)),
                    None => errors.push(ConfigError::FirmwareMissing { path: path.into() }),
                }
            }
        }
    }
    payload
}

fn launch_security(
    domain: &Domain,
    host: &HostInputs,
    payload: &mut PayloadConfig,
    platform: &mut PlatformConfig,
    errors: &mut Vec<ConfigError>,
) {
    const BASE: &str = "spec.domain.launchSecurity";
    // SEV, SEV-ES and Secure Execution are refused by the support table;
    // kernel boot and vCPU hotplug with TDX or SNP by domain-model's rules.
    match &domain.launch_security {
        None | Some(LaunchSecurity::Sev { .. } | LaunchSecurity::SecureExecution) => {}
        Some(LaunchSecurity::Tdx) => platform.tdx = Some(true),
        Some(LaunchSecurity::SevSnp { host_data }) => {
            let path = format!("{BASE}.snp");
            platform.sev_snp = Some(true);
            match &host.igvm {
                Some(igvm) => payload.igvm = Some(path_str(&path, igvm, errors)),
                None => errors.push(ConfigError::IgvmMissing { path: path.clone() }),
            }
            // domain-model validated it: 64 lowercase hex characters.
            payload.host_data = host_data.clone();
        }
    }
}

/// Each filesystem on the vhost-user socket of the virtiofsd the launcher
/// starts for it.
fn filesystems(
    domain: &Domain,
    host: &HostInputs,
) -> Vec<cloud_hypervisor_client::models::FsConfig> {
    let dir = host.vm_dir.clone().unwrap_or_default();
    domain
        .devices
        .filesystems
        .iter()
        .enumerate()
        .map(|(i, f)| cloud_hypervisor_client::models::FsConfig {
            tag: f.name.clone(),
            socket: crate::virtiofs::socket_path(&dir, i).display().to_string(),
            num_queues: 1,
            queue_size: 1024,
            id: Some(format!("fs-{}", f.name)),
            ..Default::default()
        })
        .collect()
}

/// Each interface on the tap the launcher made for it (`crate::net`); CH
/// opens it by name and leaves its addressing to the launcher.
fn nets(domain: &Domain) -> Vec<cloud_hypervisor_client::models::NetConfig> {
    domain
        .devices
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, nic)| cloud_hypervisor_client::models::NetConfig {
            tap: Some(crate::net::tap_name(i)),
            mac: Some(nic.mac.clone()),
            id: Some(format!("net-{}", nic.name)),
            ..Default::default()
        })
        .collect()
}

fn disks(domain: &Domain, errors: &mut Vec<ConfigError>) -> Vec<DiskConfig> {
    // CH has no boot order; its firmware tries disks in PCI order, which is
    // the order of this list. So disks with a bootOrder come first, by order.
    let mut ordered: Vec<_> = domain.disks.iter().collect();
    ordered.sort_by_key(|d| d.boot_order.unwrap_or(u32::MAX));

    let mut configs = Vec::with_capacity(ordered.len());
    for disk in ordered {
        // cdrom, lun and other buses are refused by the support table.
        // CH reserves ids starting with "__" for its own devices.
        if disk.name.starts_with("__") {
            errors.push(ConfigError::OutOfRange {
                path: format!("{}.name", disk.spec_path),
                value: format!("{:?}", disk.name),
                limit: "device ids must not start with \"__\"".into(),
            });
        }
        configs.push(DiskConfig {
            path: Some(path_str(&disk.source.spec_path, &disk.source.path, errors)),
            readonly: Some(disk.readonly),
            id: Some(disk.name.clone()),
            serial: disk.serial.clone(),
            // Explicit, so CH never guesses the format from the content.
            image_type: Some(match disk.source.format {
                ImageFormat::Raw => ImageType::Raw,
                ImageFormat::Qcow2 => ImageType::Qcow2,
            }),
            // Only the launcher's own overlays may have a backing file: one
            // named inside a guest-writable image would let the guest read
            // any host file.
            // cache: none is O_DIRECT; writeback is CH's default (the host
            // page cache); writethrough is refused by the support table.
            direct: (disk.options.cache.as_deref() == Some("none")).then_some(true),
            backing_files: matches!(
                disk.source.generated,
                Some(
                    domain_model::Generated::Overlay { .. }
                        | domain_model::Generated::ImageOverlay { .. }
                )
            )
            .then_some(true),
            ..DiskConfig::new()
        });
    }
    configs
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain_model::fixtures::{self, domain};
    use domain_model::{
        Clock, ClockOffset, Cpu, CpuModel, Disk, DiskBus, DiskDevice, Input, InputBus, InputKind,
        Memory, SpecFeature, Timer, TimerName,
    };

    const MIB: u64 = 1024 * 1024;

    fn disk(i: usize, name: &str, boot_order: Option<u32>) -> Disk {
        Disk {
            boot_order,
            ..fixtures::disk(i, name, format!("/disks/{name}.img"))
        }
    }

    fn efi_firmware() -> HostInputs {
        HostInputs {
            firmware: Some("/usr/share/cloud-hypervisor/CLOUDHV.fd".into()),
            igvm: None,
            serial_socket: None,
            vm_dir: None,
            dedicated_cpus: None,
            cpu: None,
        }
    }

    fn translate(d: &Domain) -> VmConfig {
        match vm_config(d, &HostInputs::default()) {
            Ok(c) => c,
            Err(e) => panic!("translation failed: {e}"),
        }
    }

    fn errors_of(d: &Domain, host: &HostInputs) -> Vec<ConfigError> {
        match vm_config(d, host) {
            Ok(c) => panic!("expected errors, got {c:?}"),
            Err(ConfigErrors(e)) => e,
        }
    }

    #[test]
    fn minimal_kernel_boot_matches_the_recorded_create_body_shape() {
        let json = serde_json::to_value(translate(&domain())).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "topology": {
                    "threads_per_core": 1, "cores_per_die": 1,
                    "dies_per_package": 1, "packages": 1}},
                "memory": {"size": 67108864},
                "payload": {"kernel": "/images/guest.elf"},
                "serial": {"mode": "Pty"},
                "console": {"mode": "Off"},
                "pvpanic": true,
                "platform": {"uuid": "5f0c3a3e-8c1b-4a57-9d7e-0a0b0c0d0e0f"}
            })
        );
    }

    #[test]
    fn cpu_topology_covers_hotplug_sockets() {
        let mut d = domain();
        d.cpu = Cpu {
            sockets: 2,
            cores: 4,
            threads: 2,
            max_sockets: 3,
            model: CpuModel::HostPassthrough,
            features: Vec::new(),
            dedicated: false,
        };
        let cpus = translate(&d).cpus.expect("cpus");
        assert_eq!((cpus.boot_vcpus, cpus.max_vcpus), (16, 24));
        assert_eq!(
            cpus.topology,
            Some(CpuTopology {
                threads_per_core: Some(2),
                cores_per_die: Some(4),
                dies_per_package: Some(1),
                packages: Some(3),
            })
        );
    }

    #[test]
    fn memory_hotplug_and_hugepages_are_translated() {
        let cases = [
            // (guest, max_guest, hugepage, hotplug_size, hugepages, hugepage_size)
            (64 * MIB, None, None, None, None, None),
            (64 * MIB, Some(64 * MIB), None, None, None, None),
            (64 * MIB, Some(192 * MIB), None, Some(128 * MIB), None, None),
            (
                1024 * MIB,
                None,
                Some(2 * MIB),
                None,
                Some(true),
                Some(2 * MIB),
            ),
        ];
        for (guest, max_guest, page, hotplug, huge, huge_size) in cases {
            let mut d = domain();
            d.memory = Memory {
                guest,
                max_guest,
                hugepage_size: page,
            };
            let m = translate(&d).memory.expect("memory");
            assert_eq!(m.size, guest as i64);
            assert_eq!(m.hotplug_size, hotplug.map(|v| v as i64), "{max_guest:?}");
            assert_eq!(m.hugepages, huge);
            assert_eq!(m.hugepage_size, huge_size.map(|v| v as i64));
        }
    }

    #[test]
    fn kernel_boot_carries_initramfs_and_cmdline() {
        let mut d = domain();
        d.boot = Boot::Kernel {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd".into()),
            cmdline: Some("console=ttyS0".into()),
            image: None,
        };
        let p = translate(&d).payload;
        assert_eq!(p.kernel.as_deref(), Some("/k/vmlinux"));
        assert_eq!(p.initramfs.as_deref(), Some("/k/initrd"));
        assert_eq!(p.cmdline.as_deref(), Some("console=ttyS0"));
        assert_eq!(p.firmware, None);
    }

    #[test]
    fn efi_boot_uses_the_host_firmware_or_says_it_is_missing() {
        let mut d = domain();
        d.boot = Boot::Efi {
            secure_boot: false,
            persistent: false,
        };
        let c = vm_config(&d, &efi_firmware()).expect("translates");
        assert_eq!(
            c.payload.firmware.as_deref(),
            Some("/usr/share/cloud-hypervisor/CLOUDHV.fd")
        );
        assert_eq!(c.payload.kernel, None);

        let errors = errors_of(&d, &HostInputs::default());
        assert_eq!(
            errors,
            vec![ConfigError::FirmwareMissing {
                path: EFI_PATH.into()
            }]
        );
        assert_eq!(
            errors[0].to_string(),
            "spec.domain.firmware.bootloader.efi: booting from firmware needs a Cloud \
Hypervisor firmware path (CLOUDHV.fd or rust-hypervisor-firmware)"
        );
    }

    #[test]
    fn bios_boot_boots_the_firmware_the_host_gives_with_no_kernel() {
        let mut d = domain();
        d.boot = Boot::Bios;
        let host = HostInputs {
            firmware: Some("/usr/share/cloud-hypervisor/hypervisor-fw".into()),
            ..HostInputs::default()
        };
        let c = vm_config(&d, &host).expect("translates");
        assert_eq!(
            c.payload.firmware.as_deref(),
            Some("/usr/share/cloud-hypervisor/hypervisor-fw")
        );
        assert_eq!(c.payload.kernel, None);
        let errors = errors_of(&d, &HostInputs::default());
        assert_eq!(
            errors,
            vec![ConfigError::FirmwareMissing {
                path: BIOS_PATH.into()
            }]
        );
    }

    #[test]
    fn disks_keep_name_readonly_serial_and_format_and_follow_boot_order() {
        let mut d = domain();
        let mut data = disk(0, "data", None);
        data.readonly = true;
        data.serial = Some("DATA-1".into());
        data.source.format = ImageFormat::Qcow2;
        d.disks = vec![data, disk(1, "root", Some(1)), disk(2, "scratch", None)];
        let disks = translate(&d).disks.expect("disks");
        let ids: Vec<_> = disks
            .iter()
            .map(|d| d.id.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(ids, ["root", "data", "scratch"]);
        assert_eq!(disks[1].path.as_deref(), Some("/disks/data.img"));
        assert_eq!(disks[1].readonly, Some(true));
        assert_eq!(disks[1].serial.as_deref(), Some("DATA-1"));
        assert_eq!(disks[1].image_type, Some(ImageType::Qcow2));
        assert_eq!(disks[0].image_type, Some(ImageType::Raw));
        assert_eq!(disks[0].readonly, Some(false));
        // A guest-written qcow2 may not name a backing file.
        assert_eq!(disks[1].backing_files, None);
    }

    #[test]
    fn cache_none_is_o_direct_and_overlays_alone_get_backing_files() {
        let mut d = domain();
        let mut direct = disk(0, "direct", None);
        direct.options.cache = Some("none".into());
        let mut overlay = disk(1, "overlay", None);
        overlay.source.format = ImageFormat::Qcow2;
        overlay.source.generated = Some(domain_model::Generated::Overlay {
            backing: "/images/base.img".into(),
            backing_format: ImageFormat::Raw,
        });
        d.disks = vec![direct, overlay];
        let disks = translate(&d).disks.expect("disks");
        assert_eq!(disks[0].direct, Some(true));
        assert_eq!(disks[0].backing_files, None);
        assert_eq!(disks[1].direct, None);
        assert_eq!(disks[1].backing_files, Some(true));
    }

    #[test]
    fn rng_serial_and_platform_follow_the_domain() {
        let mut d = domain();
        d.devices.rng = true;
        d.devices.serial_console = false;
        d.firmware.serial = Some("SN-42".into());
        let c = translate(&d);
        assert_eq!(c.rng, Some(RngConfig::new("/dev/urandom".into())));
        assert_eq!(c.serial, Some(SerialConfig::new(ConsoleMode::Off)));
        assert_eq!(c.console, Some(ConsoleConfig::new(ConsoleMode::Off)));
        let platform = c.platform.expect("platform");
        assert_eq!(platform.serial_number.as_deref(), Some("SN-42"));
        assert_eq!(platform.uuid.as_deref(), Some(d.firmware.uuid.as_str()));
        assert_eq!((platform.tdx, platform.sev_snp), (None, None));
    }

    #[test]
    fn tdx_sets_the_platform_flag_and_needs_firmware_and_fixed_cpus() {
        let mut d = domain();
        d.boot = Boot::Efi {
            secure_boot: false,
            persistent: false,
        };
        d.launch_security = Some(LaunchSecurity::Tdx);
        let c = vm_config(&d, &efi_firmware()).expect("translates");
        assert_eq!(c.platform.and_then(|p| p.tdx), Some(true));

        d.cpu.max_sockets = 2;
        d.memory.max_guest = Some(d.memory.guest * 2);
        assert_eq!(
            errors_of(&d, &HostInputs::default()),
            vec![
                ConfigError::Refused(FieldError::new(
                    "spec.domain.memory.maxGuest",
                    "memory hotplug with TDX is not supported by cloud-hypervisor: Cloud \
                     Hypervisor TDX guests cannot hotplug memory"
                )),
                ConfigError::FirmwareMissing {
                    path: EFI_PATH.into()
                },
            ]
        );
    }

    #[test]
    fn serial_console_is_chs_socket_when_the_host_names_one() {
        let host = HostInputs {
            serial_socket: Some("/run/p/uid/ch-serial.sock".into()),
            ..HostInputs::default()
        };
        let c = vm_config(&domain(), &host).expect("translates");
        let json = serde_json::to_value(c.serial).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"mode": "Socket", "socket": "/run/p/uid/ch-serial.sock"})
        );

        // Without autoattachSerialConsole there is no serial port at all.
        let mut d = domain();
        d.devices.serial_console = false;
        let c = vm_config(&d, &host).expect("translates");
        assert_eq!(c.serial, Some(SerialConfig::new(ConsoleMode::Off)));
    }

    #[test]
    fn options_put_the_serial_socket_in_the_vm_directory_unless_a_pty_is_chosen() {
        let paths = crate::paths::VmPaths::new(Path::new("/run/p"), "uid");
        let opts = super::super::ChOptions::default();
        assert_eq!(opts.serial, SerialMode::Socket);
        assert_eq!(
            opts.host_inputs(&paths).serial_socket,
            Some(PathBuf::from("/run/p/uid/ch-serial.sock"))
        );
        let pty = super::super::ChOptions {
            serial: SerialMode::Pty,
            ..opts
        };
        assert_eq!(pty.host_inputs(&paths).serial_socket, None);
    }

    #[test]
    fn host_inputs_take_the_firmware_crates_choice() {
        let choice = |kind, path: &str| {
            firmware::Choice::CloudHypervisor(firmware::ChSelection {
                kind,
                path: path.into(),
                reasons: vec![],
                expected_not_found: None,
            })
        };
        assert_eq!(
            HostInputs::from_choice(&choice(firmware::ChFirmwareKind::Igvm, "/fw/snp.igvm")),
            HostInputs {
                firmware: None,
                igvm: Some("/fw/snp.igvm".into()),
                serial_socket: None,
                vm_dir: None,
                dedicated_cpus: None,
                cpu: None,
            }
        );
        assert_eq!(
            HostInputs::from_choice(&choice(
                firmware::ChFirmwareKind::CloudHvEfi,
                "/fw/CLOUDHV.fd"
            )),
            HostInputs {
                firmware: Some("/fw/CLOUDHV.fd".into()),
                igvm: None,
                serial_socket: None,
                vm_dir: None,
                dedicated_cpus: None,
                cpu: None,
            }
        );
        let none = firmware::Choice::NotNeeded {
            reason: "direct kernel boot".into(),
        };
        assert_eq!(HostInputs::from_choice(&none), HostInputs::default());
    }

    #[test]
    fn sev_snp_boots_from_igvm_with_host_data() {
        let mut d = domain();
        d.boot = Boot::Efi {
            secure_boot: false,
            persistent: false,
        };
        let hex = "ab".repeat(32);
        d.launch_security = Some(LaunchSecurity::SevSnp {
            host_data: Some(hex.clone()),
        });
        let host = HostInputs {
            firmware: None,
            igvm: Some("/fw/snp.igvm".into()),
            serial_socket: None,
            vm_dir: None,
            dedicated_cpus: None,
            cpu: None,
        };
        let c = vm_config(&d, &host).expect("translates");
        assert_eq!(c.payload.igvm.as_deref(), Some("/fw/snp.igvm"));
        assert_eq!(c.payload.firmware, None);
        assert_eq!(c.payload.host_data, Some(hex));
        assert_eq!(c.platform.and_then(|p| p.sev_snp), Some(true));

        d.launch_security = Some(LaunchSecurity::SevSnp { host_data: None });
        assert_eq!(
            errors_of(&d, &HostInputs::default()),
            vec![ConfigError::IgvmMissing {
                path: "spec.domain.launchSecurity.snp".into()
            }]
        );
    }

    #[test]
    fn unsupported_features_are_refused_by_field() {
        type Mutate = fn(&mut Domain);
        let cases: &[(Mutate, &str, &str)] = &[
            (
                |d| {
                    d.launch_security = Some(LaunchSecurity::Sev {
                        encrypted_state: false,
                        dh_cert: None,
                        session: None,
                        attestation: false,
                    })
                },
                "spec.domain.launchSecurity.sev",
                "AMD SEV",
            ),
            (
                |d| {
                    d.launch_security = Some(LaunchSecurity::Sev {
                        encrypted_state: true,
                        dh_cert: None,
                        session: None,
                        attestation: false,
                    })
                },
                "spec.domain.launchSecurity.sev.policy.encryptedState",
                "AMD SEV-ES",
            ),
            (
                |d| d.launch_security = Some(LaunchSecurity::SecureExecution),
                "spec.domain.launchSecurity",
                "IBM Secure Execution",
            ),
            (
                |d| d.features.acpi = false,
                "spec.domain.features.acpi",
                "disabling ACPI on x86_64",
            ),
            (|d| d.features.smm = true, "spec.domain.features.smm", "SMM"),
            (
                |d| d.architecture = Architecture::S390x,
                "spec.architecture",
                "the s390x architecture",
            ),
            (
                |d| d.cpu.model = CpuModel::Named("Skylake-Server".into()),
                "spec.domain.cpu.model",
                "the named CPU model \"Skylake-Server\"",
            ),
            (
                |d| {
                    d.devices.graphics = Some(SpecFeature {
                        spec_path: "spec.domain.devices.autoattachGraphicsDevice".into(),
                        kind: "vga".into(),
                    })
                },
                "spec.domain.devices.autoattachGraphicsDevice",
                "graphics device \"vga\"",
            ),
            (
                |d| {
                    d.devices.inputs = vec![Input {
                        spec_path: "spec.domain.devices.inputs[0]".into(),
                        kind: InputKind::Tablet,
                        bus: InputBus::Usb,
                    }]
                },
                "spec.domain.devices.inputs[0]",
                "input device \"tablet:usb\"",
            ),
            (
                |d| {
                    let mut nic = fixtures::interface(0, "default");
                    nic.model = "e1000".into();
                    d.devices.interfaces = vec![nic];
                },
                "spec.domain.devices.interfaces[0].model",
                "emulated network interface model \"e1000\"",
            ),
            (
                |d| {
                    d.clock = Some(Clock {
                        spec_path: "spec.domain.clock".into(),
                        offset: ClockOffset::Timezone {
                            name: "Europe/Berlin".into(),
                        },
                        timers: vec![],
                    })
                },
                "spec.domain.clock.timezone",
                "clock timezone \"Europe/Berlin\"",
            ),
            (
                |d| {
                    d.clock = Some(Clock {
                        spec_path: "spec.domain.clock".into(),
                        offset: ClockOffset::Utc {
                            adjustment_seconds: -1800,
                        },
                        timers: vec![],
                    })
                },
                "spec.domain.clock.utc.offsetSeconds",
                "a UTC clock offset (-1800 seconds)",
            ),
            (
                |d| {
                    d.clock = Some(Clock {
                        spec_path: "spec.domain.clock".into(),
                        offset: ClockOffset::Utc {
                            adjustment_seconds: 0,
                        },
                        timers: vec![Timer {
                            name: TimerName::Hpet,
                            present: None,
                            tick_policy: None,
                            track: None,
                        }],
                    })
                },
                "spec.domain.clock.timer",
                "configuring clock timers (hpet)",
            ),
            (
                |d| {
                    let mut cd = disk(0, "cd", None);
                    cd.device = DiskDevice::Cdrom;
                    d.disks = vec![cd];
                },
                "spec.domain.devices.disks[0].cdrom",
                "cdrom devices (only virtio disks are)",
            ),
            (
                |d| {
                    let mut sata = disk(0, "root", None);
                    sata.bus = DiskBus::Sata;
                    d.disks = vec![sata];
                },
                "spec.domain.devices.disks[0].disk.bus",
                "the sata bus (only virtio is)",
            ),
            (
                |d| {
                    d.boot = Boot::Efi {
                        secure_boot: true,
                        persistent: false,
                    }
                },
                "spec.domain.firmware.bootloader.efi.secureBoot",
                "EFI secure boot",
            ),
            (
                |d| {
                    d.boot = Boot::Efi {
                        secure_boot: false,
                        persistent: true,
                    }
                },
                "spec.domain.firmware.bootloader.efi.persistent",
                "persistent EFI variables",
            ),
        ];
        for (mutate, path, feature) in cases {
            let mut d = domain();
            mutate(&mut d);
            let errors = errors_of(&d, &efi_firmware());
            assert_eq!(errors.len(), 1, "case {path} ({feature}): {errors:?}");
            assert_eq!(errors[0].path(), *path, "case {feature}");
            assert!(
                errors[0]
                    .to_string()
                    .contains("not supported by cloud-hypervisor"),
                "case {path}: {}",
                errors[0]
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_as_spec_errors() {
        let mut d = domain();
        d.features.smm = true;
        d.cpu.threads = 4;
        d.boot = Boot::Bios;
        let errors = errors_of(&d, &HostInputs::default());
        let spec: SpecErrors = ConfigErrors(errors).into();
        let paths: Vec<_> = spec.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.domain.features.smm",
                "spec.domain.cpu.threads",
                // No firmware from the host for the BIOS boot.
                "spec.domain.firmware.bootloader",
            ]
        );
        assert_eq!(
            spec.0[0].message,
            "SMM is not supported by cloud-hypervisor: Cloud Hypervisor does not emulate SMM"
        );
    }

    #[test]
    fn render_json_is_pretty_vm_create_body() {
        let text = render_json(&domain(), &HostInputs::default()).expect("renders");
        assert!(text.contains("\n  \"payload\": {\n"), "{text}");
        let back: VmConfig = serde_json::from_str(&text).expect("parses back");
        assert_eq!(back, translate(&domain()));
    }

    /// The AMD EPYC host recorded in `tests/data/cpu-probe/`: no vmx, svm
    /// offered, no AMX, arch-capabilities offered.
    fn amd_host() -> HostInputs {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/cpu-probe/amd-epyc-nested-arch-capabilities-refused.json");
        HostInputs {
            cpu: Some(CpuProbe::load(&path).unwrap()),
            ..HostInputs::default()
        }
    }

    /// Spec features as (name, policy).
    type Features = Vec<(&'static str, domain_model::CpuFeaturePolicy)>;

    fn with_features(features: &[(&str, domain_model::CpuFeaturePolicy)]) -> Domain {
        domain().with_cpu_features(features)
    }

    #[test]
    fn cpu_feature_policies_map_to_ch_knobs_or_hold_on_the_host() {
        use domain_model::CpuFeaturePolicy::*;
        let host = amd_host();
        let cases: Vec<(Features, Option<bool>, Option<bool>)> = vec![
            (vec![], None, None),
            (vec![("svm", Disable)], None, Some(false)),
            (vec![("vmx", Optional)], None, None),
            // The host has no AMX: disabling holds, optional does nothing.
            (vec![("amx-tile", Disable)], Some(false), None),
            (vec![("amx-tile", Optional)], None, None),
            // Present on the host, so these hold as CH passes them through.
            (
                vec![("sse2", Require), ("lm", Force), ("avx512f", Forbid)],
                None,
                None,
            ),
        ];
        for (features, amx, nested) in cases {
            let d = with_features(&features);
            let cpus = vm_config(&d, &host)
                .unwrap_or_else(|e| panic!("{features:?}: {e}"))
                .cpus
                .unwrap();
            assert_eq!(cpus.features.and_then(|f| f.amx), amx, "{features:?}");
            assert_eq!(cpus.nested, nested, "{features:?}");
        }
    }

    #[test]
    fn cpu_feature_policies_ch_cannot_keep_are_refused_at_their_path() {
        use domain_model::CpuFeaturePolicy::*;
        let host = amd_host();
        let cases: Vec<(Features, &str, &str)> = vec![
            (
                vec![("vmx", Require)],
                "spec.domain.cpu.features[0].policy",
                "does not offer it",
            ),
            (
                vec![("svm", Force)],
                "spec.domain.cpu.features[0].policy",
                "does not offer it",
            ),
            (
                vec![("amx-tile", Force)],
                "spec.domain.cpu.features[0].policy",
                "does not offer it",
            ),
            (
                vec![("sse2", Disable)],
                "spec.domain.cpu.features[0].policy",
                "cannot hide it",
            ),
            (
                vec![("sse2", Forbid)],
                "spec.domain.cpu.features[0].policy",
                "offers it",
            ),
            (
                vec![("rdctl-no", Require)],
                "spec.domain.cpu.features[0].name",
                "not a CPUID feature",
            ),
        ];
        for (features, path, needle) in cases {
            let d = with_features(&features);
            let errors = vm_config(&d, &host).unwrap_err();
            assert_eq!(errors.0.len(), 1, "{features:?}: {errors}");
            assert_eq!(errors.0[0].path(), path, "{features:?}");
            assert!(
                errors.0[0].to_string().contains(needle),
                "{features:?}: {}",
                errors.0[0]
            );
        }
    }

    #[test]
    fn without_a_probe_only_host_independent_rules_apply() {
        use domain_model::CpuFeaturePolicy::*;
        let d = with_features(&[("vmx", Require), ("amx-int8", Disable)]);
        let cpus = translate(&d).cpus.unwrap();
        assert_eq!(cpus.nested, Some(true));
        assert_eq!(cpus.features.and_then(|f| f.amx), Some(false));
        let d = with_features(&[("tsx-ctrl", Require)]);
        assert!(vm_config(&d, &HostInputs::default()).is_err());
        let d = with_features(&[("amx-tile", Require), ("amx-int8", Disable)]);
        let errors = vm_config(&d, &HostInputs::default()).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].path(), "spec.domain.cpu.features[1].policy");
        assert!(errors.0[0].to_string().contains("switches them together"));
    }
}
