//! API view to [`Domain`]: KubeVirt's defaults, validation, and resolution of
//! sizes, host paths and the boot source. Every problem is collected; a
//! `Domain` comes out only when there is none.
//!
//! Defaults follow KubeVirt: `hypervisor: libvirt`, `architecture: amd64`,
//! one socket/core/thread (or vCPUs from `resources` CPU limits/requests),
//! CPU model `host-model` (`host-passthrough` on arm64), memory from
//! `resources.requests.memory` (then `limits.memory`) when `memory.guest` is
//! absent, ACPI on, EFI secure boot on when `efi` is given (which then needs
//! `features.smm`), serial console on, `terminationGracePeriodSeconds: 30`,
//! disk bus `virtio`, cdrom bus `sata` (`scsi` off amd64) and read-only, lun
//! bus `scsi`. Two launcher-specific choices:
//!
//! - `autoattachGraphicsDevice` defaults to true (KubeVirt's VNC) only on
//!   libvirt; Cloud Hypervisor has no graphics, so there an absent field means
//!   none and only an explicit `true` is refused.
//! - No pod network interface is attached by default: networking is not
//!   implemented yet, and declared interfaces or networks are refused.
//!
//! Local-run conventions:
//!
//! - Relative host paths (`hostDisk.path`, `kernelBoot.container.kernelPath`
//!   and `initrdPath` without `image`) are relative to
//!   [`LoadOptions::base_dir`] (the spec file's directory).
//! - A `containerDisk` volume named `NAME` is read from the unpacked image file
//!   `<LoadOptions::container_disk_dir>/NAME/disk.img` (raw) or
//!   `.../NAME/disk.qcow2` (qcow2); the format comes from the file name, never
//!   from probing the content. The image is not pulled.
//! - `kernelBoot.container.image` (kernel inside a container image) is not
//!   supported for local runs yet.
//! - Without `metadata.uid`, the uid is a UUID v5 of `<namespace>/<name>`
//!   (namespace default `default`) in the namespace [`uid_namespace`], so it is
//!   stable across runs. The SMBIOS firmware UUID defaults to the uid.

use crate::api;
use crate::error::SpecErrors;
use crate::launch_security;
use crate::parse::{unsupported_volume_kind, Parsed};
use crate::quantity::{parse_bytes, parse_cpus, Quantity};
use crate::{
    Architecture, Boot, Clock, Cpu, CpuModel, Devices, Disk, DiskBus, DiskDevice, DiskSource,
    Domain, Features, Firmware, Hypervisor, ImageFormat, LoadOptions, Memory, SpecFeature,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// KubeVirt's default `terminationGracePeriodSeconds`.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: u64 = 30;
/// Namespace used when `metadata.namespace` is absent.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Upper bound of vCPUs accepted (above any current hypervisor's limit); it
/// keeps the topology products far from overflow.
pub const MAX_VCPUS: u32 = 4096;
/// Hugepage sizes KubeVirt accepts.
pub const HUGEPAGE_SIZES: &[(&str, u64)] = &[("2Mi", 2 << 20), ("1Gi", 1 << 30)];

/// The UUID namespace in which uids are derived from `<namespace>/<name>`.
pub fn uid_namespace() -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        b"https://kubevirt.io/ch-launcher/vmi-uid",
    )
}

/// The uid a VMI without `metadata.uid` gets.
pub fn derived_uid(namespace: &str, name: &str) -> String {
    Uuid::new_v5(&uid_namespace(), format!("{namespace}/{name}").as_bytes()).to_string()
}

pub fn resolve(parsed: Parsed, opts: &LoadOptions) -> Result<Domain, SpecErrors> {
    let Parsed { vmi, unknown } = parsed;
    let unknown_paths: Vec<String> = unknown.iter().map(|e| e.path.clone()).collect();
    let mut r = Resolver {
        opts,
        errors: SpecErrors(unknown),
        unknown_paths,
    };
    let spec = &vmi.spec;
    let domain = &spec.domain;

    let (name, namespace, uid) = r.metadata(&vmi.metadata);
    let hypervisor = r.hypervisor(spec.hypervisor.as_deref());
    let architecture = r.architecture(spec.architecture.as_deref());
    let cpu = r.cpu(domain.cpu.as_ref(), domain.resources.as_ref(), architecture);
    let memory = r.memory(domain.memory.as_ref(), domain.resources.as_ref());
    let features = r.features(domain.features.as_ref());
    let firmware = r.firmware(domain.firmware.as_ref(), &uid);
    let boot = r.boot(domain.firmware.as_ref(), features.smm);
    let sources = r.volumes(&spec.volumes);
    let disks = r.disks(&domain.devices.disks, &spec.volumes, &sources, architecture);
    let devices = r.devices(&domain.devices, hypervisor);
    r.networks(&spec.networks);
    let clock = r.clock(domain.clock.as_ref());
    let termination_grace_period = r.grace_period(spec.termination_grace_period_seconds);
    let start_paused = r.start_strategy(spec.start_strategy.as_deref());
    let launch_security = domain.launch_security.as_ref().and_then(|ls| {
        let ctx = launch_security::Context {
            architecture,
            boot: boot.as_ref(),
            smm: features.smm,
            start_paused,
            feature_gates: &opts.feature_gates,
        };
        launch_security::resolve(ls, &ctx, &mut r.errors)
    });
    let live_migratable = crate::migration::condition(&spec.volumes, launch_security.as_ref());

    let Resolver { mut errors, .. } = r;
    match (boot, memory) {
        (Some(boot), Some(memory)) if errors.is_empty() => Ok(Domain {
            name,
            namespace,
            uid,
            hypervisor,
            architecture,
            cpu,
            memory,
            firmware,
            boot,
            disks,
            devices,
            features,
            clock,
            launch_security,
            termination_grace_period,
            start_paused,
            live_migratable,
        }),
        _ => {
            // Boot and memory are only missing after an error was recorded;
            // this keeps an `Err` non-empty should that ever change.
            if errors.is_empty() {
                errors.push("spec.domain", "boot source or memory could not be resolved");
            }
            Err(errors)
        }
    }
}

struct Resolver<'a> {
    opts: &'a LoadOptions,
    errors: SpecErrors,
    /// Paths already reported as unknown or unsupported keys.
    unknown_paths: Vec<String>,
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|label| is_dns_label(label, 63))
}

impl Resolver<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(path, message);
    }

    fn metadata(&mut self, meta: &api::ObjectMeta) -> (String, String, String) {
        let name = match meta.name.as_deref() {
            None | Some("") => {
                self.err("metadata.name", "required: the VMI needs a name");
                String::new()
            }
            Some(n) if !is_dns_subdomain(n) => {
                self.err(
                    "metadata.name",
                    format!(
                        "{n:?} is not a valid name: use lowercase letters, digits, '-' and '.', \
                         starting and ending with a letter or digit (at most 253 characters)"
                    ),
                );
                n.to_string()
            }
            Some(n) => n.to_string(),
        };
        let namespace = match meta.namespace.as_deref() {
            None | Some("") => DEFAULT_NAMESPACE.to_string(),
            Some(ns) if !is_dns_label(ns, 63) => {
                self.err(
                    "metadata.namespace",
                    format!(
                        "{ns:?} is not a valid namespace: use lowercase letters, digits and '-' \
                         (at most 63 characters)"
                    ),
                );
                ns.to_string()
            }
            Some(ns) => ns.to_string(),
        };
        let uid = match meta.uid.as_deref() {
            None | Some("") => derived_uid(&namespace, &name),
            Some(uid) => {
                // The uid names a directory under the private dir.
                let safe = uid.len() <= 128
                    && uid != "."
                    && uid != ".."
                    && uid
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
                if !safe {
                    self.err(
                        "metadata.uid",
                        format!(
                            "{uid:?} is not a valid uid: use letters, digits, '-', '_' and '.' \
                             (a UUID is usual)"
                        ),
                    );
                }
                uid.to_string()
            }
        };
        (name, namespace, uid)
    }

    fn hypervisor(&mut self, spec: Option<&str>) -> Hypervisor {
        let from_spec = match spec {
            None => None,
            Some(s) => match s.parse::<Hypervisor>() {
                Ok(h) => Some(h),
                Err(e) => {
                    self.err("spec.hypervisor", e);
                    None
                }
            },
        };
        self.opts
            .hypervisor
            .or(from_spec)
            .unwrap_or(Hypervisor::Libvirt)
    }

    fn architecture(&mut self, spec: Option<&str>) -> Architecture {
        match spec {
            None | Some("") | Some("amd64") => Architecture::Amd64,
            Some("arm64") => Architecture::Arm64,
            Some("s390x") => Architecture::S390x,
            Some(other) => {
                self.err(
                    "spec.architecture",
                    format!("unknown architecture {other:?}: expected amd64, arm64 or s390x"),
                );
                Architecture::Amd64
            }
        }
    }

    fn count(&mut self, path: &str, value: Option<u32>) -> Option<u32> {
        match value {
            Some(0) => {
                self.err(path, "must be at least 1");
                Some(1)
            }
            v => v,
        }
    }

    fn quantity_bytes(&mut self, path: &str, q: &Quantity) -> Option<u64> {
        match parse_bytes(&q.0) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    fn cpu(
        &mut self,
        cpu: Option<&api::Cpu>,
        resources: Option<&api::Resources>,
        arch: Architecture,
    ) -> Cpu {
        let base = "spec.domain.cpu";
        let default = api::Cpu::default();
        let c = cpu.unwrap_or(&default);
        let sockets = self.count(&format!("{base}.sockets"), c.sockets);
        let cores = self.count(&format!("{base}.cores"), c.cores);
        let threads = self.count(&format!("{base}.threads"), c.threads);
        let max_sockets = self.count(&format!("{base}.maxSockets"), c.max_sockets);

        let res_cpus = self.resource_cpus(resources);
        let sockets = match (sockets, cores, threads) {
            (None, None, None) => res_cpus.unwrap_or(1),
            (s, _, _) => s.unwrap_or(1),
        };
        let (cores, threads) = (cores.unwrap_or(1), threads.unwrap_or(1));
        let max_sockets = match max_sockets {
            Some(m) if m < sockets => {
                self.err(
                    format!("{base}.maxSockets"),
                    format!("maxSockets ({m}) must not be less than sockets ({sockets})"),
                );
                sockets
            }
            Some(m) => m,
            None => sockets,
        };
        // u128: three u32 factors cannot overflow it.
        let total = u128::from(max_sockets) * u128::from(cores) * u128::from(threads);
        let (mut sockets, mut max_sockets, mut cores, mut threads) =
            (sockets, max_sockets, cores, threads);
        if total > u128::from(MAX_VCPUS) {
            self.err(
                base,
                format!(
                    "topology asks for {total} vCPUs (maxSockets or sockets x cores x threads); \
                     at most {MAX_VCPUS} are accepted"
                ),
            );
            (sockets, max_sockets, cores, threads) = (1, 1, 1, 1);
        }
        let model = match c.model.as_deref() {
            None | Some("") => match arch {
                Architecture::Arm64 => CpuModel::HostPassthrough,
                _ => CpuModel::HostModel,
            },
            Some("host-model") => CpuModel::HostModel,
            Some("host-passthrough") => CpuModel::HostPassthrough,
            Some(named) => CpuModel::Named(named.to_string()),
        };
        Cpu {
            sockets,
            cores,
            threads,
            max_sockets,
            model,
        }
    }

    /// vCPUs from `resources.limits.cpu`, else `requests.cpu`, as KubeVirt
    /// derives sockets when no topology is given.
    fn resource_cpus(&mut self, resources: Option<&api::Resources>) -> Option<u32> {
        let r = resources?;
        let (path, q) = match (
            r.limits.as_ref().and_then(|l| l.cpu.as_ref()),
            r.requests.as_ref().and_then(|l| l.cpu.as_ref()),
        ) {
            (Some(q), _) => ("spec.domain.resources.limits.cpu", q),
            (None, Some(q)) => ("spec.domain.resources.requests.cpu", q),
            (None, None) => return None,
        };
        match parse_cpus(&q.0) {
            Ok(0) => {
                self.err(path, "must be more than 0");
                None
            }
            Ok(n) if n > u64::from(MAX_VCPUS) => {
                self.err(path, format!("at most {MAX_VCPUS} vCPUs are accepted"));
                None
            }
            // Bounded by MAX_VCPUS just above.
            Ok(n) => Some(n as u32),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    fn memory(
        &mut self,
        memory: Option<&api::Memory>,
        resources: Option<&api::Resources>,
    ) -> Option<Memory> {
        let base = "spec.domain.memory";
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        let req_path = "spec.domain.resources.requests.memory";
        let lim_path = "spec.domain.resources.limits.memory";
        let request = requests
            .and_then(|r| r.memory.as_ref())
            .and_then(|q| self.quantity_bytes(req_path, q));
        let limit = limits
            .and_then(|r| r.memory.as_ref())
            .and_then(|q| self.quantity_bytes(lim_path, q));
        if let (Some(req), Some(lim)) = (request, limit) {
            if req > lim {
                self.err(
                    req_path,
                    format!(
                        "requests.memory ({req} bytes) must not exceed limits.memory ({lim} bytes)"
                    ),
                );
            }
        }
        let guest_path = format!("{base}.guest");
        let (guest, guest_from) = match memory.and_then(|m| m.guest.as_ref()) {
            Some(q) => (self.quantity_bytes(&guest_path, q), guest_path.clone()),
            None => match (request, limit) {
                (Some(r), _) => (Some(r), req_path.to_string()),
                (None, Some(l)) => (Some(l), lim_path.to_string()),
                (None, None) => {
                    let bad_quantity = requests.is_some_and(|r| r.memory.is_some())
                        || limits.is_some_and(|r| r.memory.is_some());
                    if !bad_quantity {
                        self.err(
                            &guest_path,
                            "guest memory is required: set spec.domain.memory.guest or \
                             spec.domain.resources.requests.memory",
                        );
                    }
                    return None;
                }
            },
        };
        let guest = guest?;
        if guest == 0 {
            self.err(&guest_from, "guest memory must be more than 0");
            return None;
        }
        if let Some(lim) = limit {
            if guest > lim && guest_from == guest_path {
                self.err(
                    &guest_path,
                    format!(
                        "guest memory ({guest} bytes) must not exceed limits.memory ({lim} bytes)"
                    ),
                );
            }
        }
        let max_path = format!("{base}.maxGuest");
        let max_guest = match memory.and_then(|m| m.max_guest.as_ref()) {
            None => None,
            Some(q) => match self.quantity_bytes(&max_path, q) {
                Some(max) if max < guest => {
                    self.err(
                        &max_path,
                        format!("maxGuest ({max} bytes) must not be less than guest memory ({guest} bytes)"),
                    );
                    None
                }
                Some(max) if max == guest => None,
                other => other,
            },
        };
        let page_path = format!("{base}.hugepages.pageSize");
        let hugepage_size = match memory.and_then(|m| m.hugepages.as_ref()) {
            None => None,
            Some(h) => match HUGEPAGE_SIZES
                .iter()
                .find(|(_, v)| parse_bytes(&h.page_size.0) == Ok(*v))
            {
                Some((_, size)) => {
                    for (path, bytes) in [(&guest_from, Some(guest)), (&max_path, max_guest)] {
                        if let Some(b) = bytes {
                            if b % size != 0 {
                                self.err(
                                    path.as_str(),
                                    format!(
                                        "{b} bytes is not a multiple of the hugepage size {}",
                                        h.page_size
                                    ),
                                );
                            }
                        }
                    }
                    Some(*size)
                }
                None => {
                    self.err(
                        &page_path,
                        format!(
                            "unsupported hugepage size {:?}: expected 2Mi or 1Gi",
                            h.page_size.0
                        ),
                    );
                    None
                }
            },
        };
        Some(Memory {
            guest,
            max_guest,
            hugepage_size,
        })
    }

    fn features(&mut self, features: Option<&api::Features>) -> Features {
        let acpi = features
            .and_then(|f| f.acpi.as_ref())
            .is_none_or(|s| s.enabled.unwrap_or(true));
        let smm = features
            .and_then(|f| f.smm.as_ref())
            .is_some_and(|s| s.enabled.unwrap_or(true));
        Features { acpi, smm }
    }

    fn firmware(&mut self, fw: Option<&api::Firmware>, uid: &str) -> Firmware {
        let uuid = match fw.and_then(|f| f.uuid.as_deref()) {
            Some(u) if !u.is_empty() => match Uuid::parse_str(u) {
                Ok(parsed) => parsed.hyphenated().to_string(),
                Err(e) => {
                    self.err(
                        "spec.domain.firmware.uuid",
                        format!("{u:?} is not a UUID: {e}"),
                    );
                    u.to_string()
                }
            },
            _ => match Uuid::parse_str(uid) {
                Ok(parsed) => parsed.hyphenated().to_string(),
                Err(_) => Uuid::new_v5(&uid_namespace(), uid.as_bytes()).to_string(),
            },
        };
        Firmware {
            uuid,
            serial: fw.and_then(|f| f.serial.clone()).filter(|s| !s.is_empty()),
        }
    }

    fn boot(&mut self, fw: Option<&api::Firmware>, smm: bool) -> Option<Boot> {
        let base = "spec.domain.firmware";
        let bootloader = fw.and_then(|f| f.bootloader.as_ref());
        let (bios, efi) = (
            bootloader.and_then(|b| b.bios.as_ref()),
            bootloader.and_then(|b| b.efi.as_ref()),
        );
        if bios.is_some() && efi.is_some() {
            self.err(format!("{base}.bootloader"), "set only one of bios or efi");
            return None;
        }
        if let Some(kb) = fw.and_then(|f| f.kernel_boot.as_ref()) {
            if efi.is_some() {
                self.err(
                    format!("{base}.kernelBoot"),
                    "kernel boot together with bootloader.efi is not supported yet",
                );
                return None;
            }
            return self.kernel_boot(kb);
        }
        match efi {
            Some(efi) => {
                let secure_boot = efi.secure_boot.unwrap_or(true);
                if secure_boot && !smm {
                    self.err(
                        format!("{base}.bootloader.efi.secureBoot"),
                        "EFI secure boot (on by default when efi is given) needs SMM: set \
                         spec.domain.features.smm: {} or secureBoot: false",
                    );
                }
                Some(Boot::Efi {
                    secure_boot,
                    persistent: efi.persistent.unwrap_or(false),
                })
            }
            None => Some(Boot::Bios),
        }
    }

    fn kernel_boot(&mut self, kb: &api::KernelBoot) -> Option<Boot> {
        let base = "spec.domain.firmware.kernelBoot";
        let Some(c) = kb.container.as_ref() else {
            self.err(
                format!("{base}.container"),
                "required: kernelBoot.container with kernelPath (and optionally initrdPath) \
                 names the kernel to boot",
            );
            return None;
        };
        let cbase = format!("{base}.container");
        if c.image.is_some() {
            self.err(
                format!("{cbase}.image"),
                "booting a kernel from a container image is not supported for local runs yet; \
                 omit image to read kernelPath and initrdPath as host paths (relative to the \
                 spec file)",
            );
            return None;
        }
        let mut ok = true;
        for (field, set) in [
            ("imagePullPolicy", c.image_pull_policy.is_some()),
            ("imagePullSecret", c.image_pull_secret.is_some()),
        ] {
            if set {
                self.err(
                    format!("{cbase}.{field}"),
                    "only applies together with image",
                );
                ok = false;
            }
        }
        let kernel = match c.kernel_path.as_deref() {
            Some(p) if !p.is_empty() => self.host_file(&format!("{cbase}.kernelPath"), p, "kernel"),
            _ => {
                self.err(
                    format!("{cbase}.kernelPath"),
                    "required: the kernel to boot, a host path (relative to the spec file)",
                );
                None
            }
        };
        let initrd = match c.initrd_path.as_deref() {
            None | Some("") => Ok(None),
            Some(p) => self
                .host_file(&format!("{cbase}.initrdPath"), p, "initrd")
                .map(Some)
                .ok_or(()),
        };
        match (kernel, initrd, ok) {
            (Some(kernel), Ok(initrd), true) => Some(Boot::Kernel {
                kernel,
                initrd,
                cmdline: kb.kernel_args.clone().filter(|a| !a.is_empty()),
            }),
            _ => None,
        }
    }

    fn absolute(&self, p: &str) -> PathBuf {
        let joined = self.opts.base_dir.join(p);
        std::path::absolute(&joined).unwrap_or(joined)
    }

    /// An existing regular file named by the spec.
    fn host_file(&mut self, path: &str, p: &str, what: &str) -> Option<PathBuf> {
        let abs = self.absolute(p);
        match std::fs::metadata(&abs) {
            Ok(m) if m.is_file() => Some(abs),
            Ok(_) => {
                self.err(
                    path,
                    format!("{what} {} is not a regular file", abs.display()),
                );
                None
            }
            Err(e) => {
                self.err(path, format!("cannot use {what} {}: {e}", abs.display()));
                None
            }
        }
    }

    fn volumes(&mut self, volumes: &[api::Volume]) -> Vec<Option<DiskSource>> {
        let mut names = BTreeSet::new();
        let mut out = Vec::with_capacity(volumes.len());
        for (i, v) in volumes.iter().enumerate() {
            let path = format!("spec.volumes[{i}]");
            // The name becomes a directory name for containerDisk images.
            let name_ok = is_dns_label(&v.name, 63);
            if !name_ok {
                self.err(
                    format!("{path}.name"),
                    format!(
                        "{:?} is not a valid volume name: use lowercase letters, digits and '-' \
                         (at most 63 characters)",
                        v.name
                    ),
                );
            } else if !names.insert(v.name.as_str()) {
                self.err(
                    format!("{path}.name"),
                    format!("duplicate volume name {:?}", v.name),
                );
            }
            let prefix = format!("{path}.");
            let has_other_key = self.unknown_paths.iter().any(|p| p.starts_with(&prefix));
            let source = match (&v.host_disk, &v.container_disk) {
                (Some(_), Some(_)) => {
                    self.err(
                        &path,
                        "set only one volume source (hostDisk or containerDisk)",
                    );
                    None
                }
                (Some(hd), None) if !has_other_key => self.host_disk(&path, hd),
                (None, Some(_)) if !name_ok => None,
                (None, Some(cd)) if !has_other_key => self.container_disk(&path, &v.name, cd),
                (None, None) if !has_other_key => {
                    self.err(&path, "no volume source: set hostDisk or containerDisk");
                    None
                }
                _ => None,
            };
            out.push(source);
        }
        out
    }

    fn host_disk(&mut self, path: &str, hd: &api::HostDisk) -> Option<DiskSource> {
        let base = format!("{path}.hostDisk");
        if hd.path.is_empty() {
            self.err(
                format!("{base}.path"),
                "required: the disk image's host path",
            );
            return None;
        }
        let abs = self.absolute(&hd.path);
        let create_with_capacity = match hd.kind.as_str() {
            "Disk" => {
                if hd.capacity.is_some() {
                    self.err(
                        format!("{base}.capacity"),
                        "capacity only applies to type DiskOrCreate",
                    );
                }
                match std::fs::metadata(&abs) {
                    Ok(m) if !m.is_dir() => None,
                    Ok(_) => {
                        self.err(
                            format!("{base}.path"),
                            format!("{} is a directory, not a disk image", abs.display()),
                        );
                        return None;
                    }
                    Err(e) => {
                        self.err(
                            format!("{base}.path"),
                            format!(
                                "cannot use disk image {}: {e} (type Disk needs an existing \
                                 image; DiskOrCreate creates one)",
                                abs.display()
                            ),
                        );
                        return None;
                    }
                }
            }
            "DiskOrCreate" => {
                let cap_path = format!("{base}.capacity");
                let Some(q) = hd.capacity.as_ref() else {
                    self.err(
                        &cap_path,
                        "required for type DiskOrCreate: the size of the image to create",
                    );
                    return None;
                };
                let bytes = self.quantity_bytes(&cap_path, q)?;
                if bytes == 0 {
                    self.err(&cap_path, "must be more than 0");
                    return None;
                }
                if abs.is_dir() {
                    self.err(
                        format!("{base}.path"),
                        format!("{} is a directory, not a disk image", abs.display()),
                    );
                    return None;
                }
                Some(bytes)
            }
            other => {
                self.err(
                    format!("{base}.type"),
                    format!("unknown hostDisk type {other:?}: expected Disk or DiskOrCreate"),
                );
                return None;
            }
        };
        Some(DiskSource {
            spec_path: path.to_string(),
            path: abs,
            // KubeVirt's hostDisk is always raw; probing a guest-writable image
            // for a format would let the guest choose it.
            format: ImageFormat::Raw,
            create_with_capacity,
        })
    }

    fn container_disk(
        &mut self,
        path: &str,
        name: &str,
        cd: &api::ContainerDisk,
    ) -> Option<DiskSource> {
        let base = format!("{path}.containerDisk");
        if cd.image.is_empty() {
            self.err(
                format!("{base}.image"),
                "required: the container disk image",
            );
            return None;
        }
        let dir = std::path::absolute(&self.opts.container_disk_dir)
            .unwrap_or_else(|_| self.opts.container_disk_dir.clone())
            .join(name);
        let candidates = [
            (dir.join("disk.img"), ImageFormat::Raw),
            (dir.join("disk.qcow2"), ImageFormat::Qcow2),
        ];
        let found: Vec<&(PathBuf, ImageFormat)> =
            candidates.iter().filter(|(p, _)| is_file(p)).collect();
        match found.as_slice() {
            [(file, format)] => Some(DiskSource {
                spec_path: path.to_string(),
                path: file.clone(),
                format: *format,
                create_with_capacity: None,
            }),
            [] => {
                self.err(
                    &base,
                    format!(
                        "no local image for containerDisk {:?}: containerDisk volumes are read \
                         from <container disk dir>/<volume name>/disk.img (raw) or disk.qcow2 \
                         (qcow2); put the unpacked image at {} or {}",
                        cd.image,
                        candidates[0].0.display(),
                        candidates[1].0.display()
                    ),
                );
                None
            }
            _ => {
                self.err(
                    &base,
                    format!(
                        "both {} and {} exist: keep only one so the format is unambiguous",
                        candidates[0].0.display(),
                        candidates[1].0.display()
                    ),
                );
                None
            }
        }
    }

    fn disks(
        &mut self,
        disks: &[api::Disk],
        volumes: &[api::Volume],
        sources: &[Option<DiskSource>],
        arch: Architecture,
    ) -> Vec<Disk> {
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        let mut boot_orders: BTreeMap<u32, usize> = BTreeMap::new();
        let mut used_by: BTreeMap<usize, usize> = BTreeMap::new();
        for (i, d) in disks.iter().enumerate() {
            let path = format!("spec.domain.devices.disks[{i}]");
            if d.name.is_empty() {
                self.err(
                    format!("{path}.name"),
                    "required: the name of the volume to use",
                );
            } else if !names.insert(d.name.as_str()) {
                // Disk names are volume names: a duplicate says it all.
                self.err(
                    format!("{path}.name"),
                    format!("duplicate disk name {:?}", d.name),
                );
                continue;
            }
            // Looked up first so that a disk with other errors still counts as
            // using its volume.
            let vol_index = volumes.iter().position(|v| v.name == d.name);
            match vol_index {
                None if !d.name.is_empty() => self.err(
                    format!("{path}.name"),
                    format!("no volume named {:?} in spec.volumes", d.name),
                ),
                None => {}
                Some(j) => {
                    used_by.insert(j, i);
                }
            }
            let targets: Vec<(DiskDevice, &str, &api::DiskTarget)> = [
                (DiskDevice::Disk, "disk", d.disk.as_ref()),
                (DiskDevice::Cdrom, "cdrom", d.cdrom.as_ref()),
                (DiskDevice::Lun, "lun", d.lun.as_ref()),
            ]
            .into_iter()
            .filter_map(|(dev, key, t)| t.map(|t| (dev, key, t)))
            .collect();
            let default_target = api::DiskTarget::default();
            let (device, key, target) = match targets.as_slice() {
                [] => (DiskDevice::Disk, "disk", &default_target),
                [one] => *one,
                _ => {
                    self.err(&path, "set only one of disk, cdrom or lun");
                    continue;
                }
            };
            let bus_path = format!("{path}.{key}.bus");
            let bus = match target.bus.as_deref() {
                None | Some("") => match (device, arch) {
                    (DiskDevice::Disk, _) => DiskBus::Virtio,
                    (DiskDevice::Cdrom, Architecture::Amd64) => DiskBus::Sata,
                    (DiskDevice::Cdrom, _) | (DiskDevice::Lun, _) => DiskBus::Scsi,
                },
                Some("virtio") => DiskBus::Virtio,
                Some("sata") => DiskBus::Sata,
                Some("scsi") => DiskBus::Scsi,
                Some("usb") => DiskBus::Usb,
                Some(other) => {
                    self.err(
                        &bus_path,
                        format!("unknown disk bus {other:?}: expected virtio, sata, scsi or usb"),
                    );
                    DiskBus::Virtio
                }
            };
            if device == DiskDevice::Cdrom && bus == DiskBus::Virtio {
                self.err(
                    &bus_path,
                    "a cdrom cannot use the virtio bus: use sata or scsi",
                );
            }
            let readonly = target.readonly.unwrap_or(device == DiskDevice::Cdrom);
            if let Some(serial) = &d.serial {
                let valid = !serial.is_empty()
                    && serial.len() <= 20
                    && serial
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b));
                if !valid {
                    self.err(
                        format!("{path}.serial"),
                        format!(
                            "{serial:?} is not a valid disk serial: 1 to 20 letters, digits, \
                             '_', '.', '+' or '-'"
                        ),
                    );
                }
            }
            if let Some(order) = d.boot_order {
                if order == 0 {
                    self.err(format!("{path}.bootOrder"), "must be at least 1");
                } else if let Some(first) = boot_orders.insert(order, i) {
                    self.err(
                        format!("{path}.bootOrder"),
                        format!("boot order {order} is already used by spec.domain.devices.disks[{first}]"),
                    );
                }
            }
            let Some(vol_index) = vol_index else { continue };
            if let Some(Some(source)) = sources.get(vol_index) {
                out.push(Disk {
                    spec_path: path,
                    name: d.name.clone(),
                    device,
                    bus,
                    readonly,
                    serial: d.serial.clone(),
                    boot_order: d.boot_order,
                    source: source.clone(),
                });
            }
        }
        for (j, v) in volumes.iter().enumerate() {
            let path = format!("spec.volumes[{j}]");
            let unsupported = self.unknown_paths.iter().any(|p| {
                p.starts_with(&format!("{path}.")) && unsupported_volume_kind(p).is_some()
            });
            let duplicate = volumes.iter().position(|w| w.name == v.name) != Some(j);
            if !used_by.contains_key(&j) && !unsupported && !duplicate {
                self.err(
                    path,
                    format!(
                        "volume {:?} is not used by any disk in spec.domain.devices.disks",
                        v.name
                    ),
                );
            }
        }
        out
    }

    fn devices(&mut self, devices: &api::Devices, hypervisor: Hypervisor) -> Devices {
        let base = "spec.domain.devices";
        let graphics_path = format!("{base}.autoattachGraphicsDevice");
        let graphics = match devices.autoattach_graphics_device {
            Some(false) => None,
            Some(true) => Some(()),
            None if hypervisor == Hypervisor::Libvirt => Some(()),
            None => None,
        }
        .map(|()| SpecFeature {
            spec_path: graphics_path,
            kind: "vnc".to_string(),
        });
        let mut inputs = Vec::new();
        let mut names = BTreeSet::new();
        for (i, input) in devices.inputs.iter().enumerate() {
            let path = format!("{base}.inputs[{i}]");
            if input.name.is_empty() {
                self.err(
                    format!("{path}.name"),
                    "required: a name for the input device",
                );
            } else if !names.insert(input.name.as_str()) {
                self.err(
                    format!("{path}.name"),
                    format!("duplicate input name {:?}", input.name),
                );
            }
            if input.kind != "tablet" {
                self.err(
                    format!("{path}.type"),
                    format!("unknown input type {:?}: expected tablet", input.kind),
                );
                continue;
            }
            let bus = match input.bus.as_deref() {
                None | Some("") | Some("usb") => "usb",
                Some("virtio") => "virtio",
                Some(other) => {
                    self.err(
                        format!("{path}.bus"),
                        format!("unknown input bus {other:?}: expected usb or virtio"),
                    );
                    continue;
                }
            };
            inputs.push(SpecFeature {
                spec_path: path,
                kind: format!("tablet:{bus}"),
            });
        }
        for (i, iface) in devices.interfaces.iter().enumerate() {
            let name = iface
                .get("name")
                .and_then(|n| n.as_str())
                .map(|n| format!(" {n:?}"))
                .unwrap_or_default();
            self.err(
                format!("{base}.interfaces[{i}]"),
                format!(
                    "network interface{name} is not supported yet (networking is not implemented); \
                     remove it"
                ),
            );
        }
        Devices {
            rng: devices.rng.is_some(),
            serial_console: devices.autoattach_serial_console.unwrap_or(true),
            graphics,
            inputs,
            interfaces: Vec::new(),
        }
    }

    fn networks(&mut self, networks: &[serde_json::Value]) {
        for (i, net) in networks.iter().enumerate() {
            let name = net
                .get("name")
                .and_then(|n| n.as_str())
                .map(|n| format!(" {n:?}"))
                .unwrap_or_default();
            self.err(
                format!("spec.networks[{i}]"),
                format!(
                    "network{name} is not supported yet (networking is not implemented); remove it"
                ),
            );
        }
    }

    fn clock(&mut self, clock: Option<&api::Clock>) -> Option<Clock> {
        let c = clock?;
        let base = "spec.domain.clock";
        let offset = match (&c.utc, &c.timezone) {
            (Some(_), Some(_)) => {
                self.err(base, "set only one of utc or timezone");
                "utc".to_string()
            }
            (None, Some(tz)) if tz.is_empty() => {
                self.err(format!("{base}.timezone"), "must not be empty");
                "utc".to_string()
            }
            (None, Some(tz)) => format!("timezone:{tz}"),
            (Some(utc), None) => match utc.offset_seconds {
                None | Some(0) => "utc".to_string(),
                Some(s) => format!("utc:{s:+}"),
            },
            (None, None) => "utc".to_string(),
        };
        let mut timers = Vec::new();
        if let Some(t) = &c.timer {
            for (name, timer) in [
                ("hpet", &t.hpet),
                ("kvm", &t.kvm),
                ("pit", &t.pit),
                ("rtc", &t.rtc),
                ("hyperv", &t.hyperv),
            ] {
                let Some(timer) = timer else { continue };
                let path = format!("{base}.timer.{name}");
                let mut text = name.to_string();
                if let Some(p) = timer.present {
                    text.push_str(&format!(",present={p}"));
                }
                if let Some(tp) = &timer.tick_policy {
                    if !["delay", "catchup", "merge", "discard"].contains(&tp.as_str()) {
                        self.err(
                            format!("{path}.tickPolicy"),
                            format!("unknown tick policy {tp:?}: expected delay, catchup, merge or discard"),
                        );
                    }
                    text.push_str(&format!(",tickPolicy={tp}"));
                }
                if let Some(track) = &timer.track {
                    if name != "rtc" {
                        self.err(format!("{path}.track"), "only the rtc timer has track");
                    } else if !["guest", "wall"].contains(&track.as_str()) {
                        self.err(
                            format!("{path}.track"),
                            format!("unknown track {track:?}: expected guest or wall"),
                        );
                    }
                    text.push_str(&format!(",track={track}"));
                }
                timers.push(text);
            }
        }
        Some(Clock {
            spec_path: base.to_string(),
            offset,
            timers,
        })
    }

    fn grace_period(&mut self, seconds: Option<i64>) -> Duration {
        match seconds {
            None => Duration::from_secs(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS),
            Some(s) => match u64::try_from(s) {
                Ok(s) => Duration::from_secs(s),
                Err(_) => {
                    self.err("spec.terminationGracePeriodSeconds", "must not be negative");
                    Duration::from_secs(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS)
                }
            },
        }
    }

    fn start_strategy(&mut self, strategy: Option<&str>) -> bool {
        match strategy {
            None | Some("") => false,
            Some("Paused") => true,
            Some(other) => {
                self.err(
                    "spec.startStrategy",
                    format!("unknown start strategy {other:?}: the only one is Paused"),
                );
                false
            }
        }
    }
}

fn is_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file())
}
