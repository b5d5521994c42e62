//! API view to [`Domain`]: KubeVirt's defaults, validation, and resolution of
//! sizes, host paths and the boot source. Every problem is collected; a
//! `Domain` comes out only when there is none.
//!
//! Defaults follow KubeVirt: `hypervisor: libvirt`, `architecture: amd64`,
//! one socket/core/thread (or vCPUs from `resources` CPU limits/requests),
//! CPU model `host-model` (`host-passthrough` on arm64), memory from
//! `resources.requests.memory` (then `limits.memory`) when `memory.guest` is
//! absent, ACPI on, EFI secure boot on when `efi` is given (which then needs
//! `features.smm`; on arm64 EFI without secure boot is the default and BIOS
//! does not exist), serial console on, `terminationGracePeriodSeconds: 30`,
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

mod boot;
mod devices;
mod machine;
mod storage;

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
    let boot = r.boot(domain.firmware.as_ref(), features.smm, architecture);
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

    fn absolute(&self, p: &str) -> PathBuf {
        let joined = self.opts.base_dir.join(p);
        std::path::absolute(&joined).unwrap_or(joined)
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
