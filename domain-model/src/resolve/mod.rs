//! API view to [`Domain`]: KubeVirt's defaults, validation, and resolution of
//! sizes, host paths and the boot source. Every problem is collected; a
//! `Domain` comes out only when there is none. A value that had a type error
//! was left out by [`crate::parse`]; what would follow from its absence is
//! not reported again.
//!
//! Defaults follow KubeVirt (pkg/defaults, the API's SetDefaults_*):
//! `hypervisor: libvirt`, `architecture: amd64`; one socket/core/thread (a
//! count of 0 is unset), or sockets from `resources` CPU limits, then
//! requests, when no topology is given; CPU model `host-model`
//! (`host-passthrough` on arm64); guest memory from `memory.guest`, else a
//! non-zero `resources.requests.memory`, else a non-zero `limits.memory`,
//! else the hugepage size (setGuestMemory); ACPI on, except on s390x where it
//! is off unless `features.acpi.enabled: true` (setS390xDefaultFeatures); EFI
//! secure boot on when `efi` is given (which then needs `features.smm`, except
//! with TDX; on arm64 EFI without secure boot is the default and BIOS does not
//! exist); serial console on; `terminationGracePeriodSeconds: 30`; input type
//! `tablet` on bus `usb`; a cdrom is read-only; a volume that no disk names
//! gets a `disk: {}` (SetDefaultVolumeDisk). Disk bus on libvirt: `sata` on
//! amd64 for disk, cdrom and lun, `virtio` on arm64 and s390x (a cdrom gets
//! `scsi` there, since KubeVirt refuses the virtio cdrom its own default
//! would make).
//!
//! Launcher-specific choices:
//!
//! - On Cloud Hypervisor, whose only disk is virtio-blk, a disk without a bus
//!   gets `virtio`.
//! - `autoattachGraphicsDevice` defaults to true (KubeVirt's VNC) only on
//!   libvirt; Cloud Hypervisor has no graphics, so there an absent field means
//!   none and only an explicit `true` is refused.
//! - No pod network interface is attached by default: KubeVirt's virt-api
//!   webhook adds the default one to the VMI before a launcher sees it, so a
//!   VMI without interfaces gets no NIC here (as a local spec would expect).
//! - An interface without `macAddress` gets one derived from the uid and its
//!   name (locally administered), so that it is the same on every start.
//! - Hotplug maximums are not defaulted: KubeVirt sets `maxSockets` (sockets
//!   x the cluster's hotplug ratio, 4) and `memory.maxGuest` (guest x 4) only
//!   under the cluster's `LiveUpdate` rollout strategy, which a local run has
//!   no cluster to ask; here hotplug happens only when the spec sets them.
//! - Bounds KubeVirt does not have: `terminationGracePeriodSeconds` at most
//!   [`MAX_TERMINATION_GRACE_PERIOD_SECONDS`] (one year; the launcher waits
//!   that long on a real clock), guest memory and `maxGuest` at most
//!   [`MAX_GUEST_MEMORY`] (16 TiB), vCPUs at most [`MAX_VCPUS`].
//! - The SMBIOS firmware UUID defaults to the VMI uid (a UUID, or a UUID v5
//!   of it) where KubeVirt picks a random one for a bare VMI, so that it stays
//!   the same across restarts of the same spec.
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
//!   stable across runs.
//! - Pod resources other than `cpu` and `memory` (`ephemeral-storage`,
//!   `hugepages-<size>`, `<domain>/<name>` device plugins) are accepted and
//!   have no effect, like the placement fields: in KubeVirt they size the
//!   launcher's pod, never the VM.

mod boot;
mod devices;
mod machine;
mod network;
pub use network::{format_mac, parse_mac};
pub use storage::qcow2_or_raw;
mod storage;

use crate::api;
use crate::error::{FieldError, SpecErrors};
use crate::launch_security;
use crate::parse::{is_at_or_under, Parsed};
use crate::quantity::{parse_bytes, parse_cpus, Quantity};
use crate::{
    Architecture, Boot, Clock, ClockOffset, Cpu, CpuFeature, CpuFeaturePolicy, CpuModel, Devices,
    Disk, DiskBus, DiskDevice, DiskSource, Domain, Features, Firmware, Hypervisor, ImageFormat,
    Input, InputBus, InputKind, LoadOptions, Memory, SpecFeature, TickPolicy, Timer, TimerName,
    TimerTrack,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// KubeVirt's default `terminationGracePeriodSeconds`.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: u64 = 30;
/// Upper bound of `terminationGracePeriodSeconds` (one year). KubeVirt takes
/// any int64; a cap keeps `Instant::now() + grace` far from overflow, and a
/// grace period longer than a year is a mistake in a local run.
pub const MAX_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 365 * 24 * 60 * 60;
/// Upper bound of guest memory and `maxGuest` (16 TiB): above what the
/// hypervisors' x86 and arm64 guests address today, and far from overflow.
pub const MAX_GUEST_MEMORY: u64 = 16 << 40;
/// Longest disk serial, as KubeVirt's disk admitter (`maxStrLen`).
pub const MAX_DISK_SERIAL_LEN: usize = 256;
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

/// A uid names the VM's directory under the private dir, so it may hold
/// only letters, digits, `-`, `_` and `.` (and is not `.` or `..`).
pub fn check_uid(uid: &str) -> Result<(), String> {
    let safe = !uid.is_empty()
        && uid.len() <= 128
        && uid != "."
        && uid != ".."
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if safe {
        Ok(())
    } else {
        Err(format!(
            "{uid:?} is not a valid uid: use letters, digits, '-', '_' and '.' (a UUID is usual)"
        ))
    }
}

/// The uid a VMI without `metadata.uid` gets.
pub fn derived_uid(namespace: &str, name: &str) -> String {
    Uuid::new_v5(&uid_namespace(), format!("{namespace}/{name}").as_bytes()).to_string()
}

pub fn resolve(parsed: Parsed, opts: &LoadOptions) -> Result<Domain, SpecErrors> {
    let (domain, errors) = resolve_partial(parsed, opts);
    match domain {
        Partial::Complete(d) if errors.is_empty() => Ok(d),
        _ => Err(non_empty(errors)),
    }
}

/// What [`resolve_partial`] could build.
#[derive(Debug)]
pub enum Partial {
    /// Every section resolved (there may still be errors elsewhere).
    Complete(Domain),
    /// Memory or the boot source did not resolve. Their place is taken by
    /// placeholders that no hypervisor refuses (a kernel boot, no hotplug,
    /// no hugepages), so that the support check can still look at every
    /// other section; never run or rendered.
    ForSupportCheckOnly(Domain),
}

impl Partial {
    pub fn domain(&self) -> &Domain {
        match self {
            Partial::Complete(d) | Partial::ForSupportCheckOnly(d) => d,
        }
    }
}

/// Resolves as much as possible: every problem found, and a `Domain` built
/// from what resolved. Problems that only follow from a type error (a value
/// parse left out) are not repeated.
pub fn resolve_partial(parsed: Parsed, opts: &LoadOptions) -> (Partial, SpecErrors) {
    let Parsed {
        vmi,
        unknown,
        type_errors,
        left_out,
    } = parsed;
    let mut skipped: Vec<String> = unknown.iter().map(|e| e.path.clone()).collect();
    skipped.extend(left_out.iter().cloned());
    let mut r = Resolver {
        opts,
        errors: SpecErrors(unknown),
        unknown_paths: skipped,
    };
    // An absent required section is one problem: what resolution then says
    // about the defaults standing in for it is dropped like the consequences
    // of a type error.
    let mut absent = SpecErrors::default();
    let spec_default = api::VmiSpec::default();
    let spec = match &vmi.spec {
        Some(spec) => spec,
        None => {
            absent.push("spec", "required: the VirtualMachineInstance's spec");
            &spec_default
        }
    };
    let domain_default = api::DomainSpec::default();
    let domain = match &spec.domain {
        Some(domain) => domain,
        None if vmi.spec.is_none() => &domain_default,
        None => {
            absent.push(
                "spec.domain",
                "required: the VM's domain (at least memory.guest or resources.requests.memory)",
            );
            &domain_default
        }
    };

    let (name, namespace, uid) = r.metadata(&vmi.metadata);
    let hypervisor = r.hypervisor(spec.hypervisor.as_deref());
    let architecture = r.architecture(spec.architecture.as_deref());
    let cpu = r.cpu(domain.cpu.as_ref(), domain.resources.as_ref(), architecture);
    let memory = r.memory(domain.memory.as_ref(), domain.resources.as_ref());
    r.other_resources(domain.resources.as_ref());
    let features = r.features(domain.features.as_ref(), architecture);
    let firmware = r.firmware(domain.firmware.as_ref(), &uid);
    // TDX needs no SMM for secure boot; SEV and SEV-SNP refuse secure boot
    // with a message of their own, so the SMM hint would only mislead.
    let smm_exempt = domain
        .launch_security
        .as_ref()
        .is_some_and(|ls| ls.tdx.is_some() || ls.sev.is_some() || ls.snp.is_some());
    let boot = r.boot(
        domain.firmware.as_ref(),
        features.smm,
        architecture,
        smm_exempt,
    );
    let shared: BTreeSet<String> = domain
        .devices
        .filesystems
        .iter()
        .map(|f| f.name.clone())
        .collect();
    let sources = r.volumes(
        &spec.volumes,
        &storage::CloudInitIdentity {
            name: &name,
            namespace: &namespace,
            uid: &uid,
            uuid: &firmware.uuid,
            hostname: &name,
        },
        &shared,
    );
    let disks = r.disks(
        &domain.devices.disks,
        &spec.volumes,
        &sources,
        architecture,
        hypervisor,
    );
    let mut devices = r.devices(&domain.devices, hypervisor);
    devices.filesystems = r.filesystems(
        &domain.devices.filesystems,
        &spec.volumes,
        &domain.devices.disks,
    );
    devices.interfaces = r.interfaces(&domain.devices.interfaces, &spec.networks, &uid);
    if domain.devices.autoattach_pod_interface == Some(true) && domain.devices.interfaces.is_empty()
    {
        r.err(
            "spec.domain.devices.autoattachPodInterface",
            "the launcher adds no interface of its own (KubeVirt's virt-api does, before a \
             launcher sees the VMI); declare it: interfaces: [{name: default, masquerade: {}}] \
             with networks: [{name: default, pod: {}}]",
        );
    }
    let clock = r.clock(domain.clock.as_ref());
    let termination_grace_period = r.grace_period(spec.termination_grace_period_seconds);
    let start_paused = r.start_strategy(spec.start_strategy.as_deref());
    let launch_security = domain.launch_security.as_ref().and_then(|ls| {
        let ctx = launch_security::Context {
            architecture,
            boot: boot.as_ref(),
            smm: features.smm,
            cpu_hotplug: cpu.max_sockets > cpu.sockets,
            start_paused,
            feature_gates: &opts.feature_gates,
        };
        launch_security::resolve(ls, &ctx, &mut r.errors)
    });
    let live_migratable = crate::migration::condition(&spec.volumes, launch_security.as_ref());
    let machine_type = r.machine_type(domain.machine.as_ref());

    let Resolver { mut errors, .. } = r;
    // Whatever resolution said at or below a value with a type error follows
    // from that value having been left out.
    let skip = |e: &FieldError| left_out.iter().any(|t| is_at_or_under(&e.path, t));
    errors
        .0
        .retain(|e| !skip(e) && !absent.0.iter().any(|a| is_at_or_under(&e.path, &a.path)));
    absent.0.retain(|e| !skip(e));
    let mut all = type_errors;
    all.append(&mut absent.0);
    all.append(&mut errors.0);
    let errors = SpecErrors(all);

    let complete = boot.is_some() && memory.is_some();
    let d = Domain {
        name,
        namespace,
        uid,
        hypervisor,
        architecture,
        cpu,
        memory: memory.unwrap_or(Memory {
            guest: 0,
            max_guest: None,
            hugepage_size: None,
        }),
        firmware,
        boot: boot.unwrap_or(Boot::Kernel {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: None,
            image: None,
        }),
        disks,
        devices,
        features,
        clock,
        launch_security,
        termination_grace_period,
        start_paused,
        live_migratable,
        machine_type,
    };
    let partial = if complete {
        Partial::Complete(d)
    } else {
        Partial::ForSupportCheckOnly(d)
    };
    (partial, errors)
}

/// An `Err` is never empty: memory and boot are only missing after an error
/// was recorded, and this keeps it so should that ever change.
pub(crate) fn non_empty(mut errors: SpecErrors) -> SpecErrors {
    if errors.is_empty() {
        errors.push("spec.domain", "boot source or memory could not be resolved");
    }
    errors
}

struct Resolver<'a> {
    opts: &'a LoadOptions,
    errors: SpecErrors,
    /// Paths already reported as unknown or unsupported keys or as type
    /// errors: what is below them was not read.
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
                if let Err(message) = check_uid(uid) {
                    self.err("metadata.uid", message);
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

    /// KubeVirt reads 0 as "not set" for topology counts.
    fn count(value: Option<u32>) -> Option<u32> {
        value.filter(|&v| v != 0)
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
        let path = "spec.terminationGracePeriodSeconds";
        match seconds {
            None => Duration::from_secs(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS),
            Some(s) if s < 0 => {
                self.err(path, "must not be negative");
                Duration::from_secs(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS)
            }
            Some(s) if s > MAX_TERMINATION_GRACE_PERIOD_SECONDS => {
                self.err(
                    path,
                    format!(
                        "{s} seconds is more than a local launcher can wait: at most \
                         {MAX_TERMINATION_GRACE_PERIOD_SECONDS} (one year)"
                    ),
                );
                Duration::from_secs(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS)
            }
            Some(s) => Duration::from_secs(s.unsigned_abs()),
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

    /// `spec.domain.machine.type`: a QEMU machine name (letters, digits,
    /// `.`, `-`, `_`); empty means the default.
    fn machine_type(&mut self, machine: Option<&api::Machine>) -> Option<String> {
        let t = machine?.machine_type.as_deref().filter(|t| !t.is_empty())?;
        let valid = t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid {
            self.err(
                "spec.domain.machine.type",
                format!("{t:?} is not a machine type (letters, digits, '.', '-', '_')"),
            );
            return None;
        }
        Some(t.to_string())
    }
}
