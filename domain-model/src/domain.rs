//! The one hypervisor-neutral model of a VM. Every backend reads only this.
//!
//! A `Domain` is produced by `crate::resolve` from a validated API view: sizes
//! are in bytes, paths are absolute, the CPU topology is complete and the boot
//! source is decided. Elements that came from a list in the spec keep the spec
//! path they came from (`spec_path`), so that a backend can name the field when
//! it has to refuse something.

use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// Which hypervisor runs the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hypervisor {
    CloudHypervisor,
    Libvirt,
}

impl Hypervisor {
    /// The name used in `spec.hypervisor` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Hypervisor::CloudHypervisor => "cloud-hypervisor",
            Hypervisor::Libvirt => "libvirt",
        }
    }
}

impl std::fmt::Display for Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Hypervisor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cloud-hypervisor" => Ok(Hypervisor::CloudHypervisor),
            "libvirt" => Ok(Hypervisor::Libvirt),
            other => Err(format!(
                "unknown hypervisor {other:?}: expected \"cloud-hypervisor\" or \"libvirt\""
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Amd64,
    Arm64,
    S390x,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Domain {
    pub name: String,
    pub namespace: String,
    /// `metadata.uid`, or a stable UUID derived from namespace and name.
    pub uid: String,
    pub hypervisor: Hypervisor,
    pub architecture: Architecture,
    pub cpu: Cpu,
    pub memory: Memory,
    pub firmware: Firmware,
    pub boot: Boot,
    pub disks: Vec<Disk>,
    pub devices: Devices,
    pub features: Features,
    pub clock: Option<Clock>,
    pub launch_security: Option<LaunchSecurity>,
    pub termination_grace_period: Duration,
    /// `spec.startStrategy: Paused`: create the VM but do not run its vCPUs.
    pub start_paused: bool,
    /// Computed: can this VM be live-migrated, and if not, why.
    pub live_migratable: MigrationCondition,
    /// `spec.domain.machine.type`, when given (`q35`, `pc-q35-8.2`...).
    pub machine_type: Option<String>,
}

impl Domain {
    /// Whether the machine type is the architecture's one modern machine
    /// family (`q35` on amd64, `virt` on arm64, `s390-ccw-virtio` on s390x),
    /// or none was given: what Cloud Hypervisor's single machine stands for.
    pub fn machine_is_default_family(&self) -> bool {
        let Some(t) = self.machine_type.as_deref() else {
            return true;
        };
        match self.architecture {
            Architecture::Amd64 => t == "q35" || t.starts_with("pc-q35-"),
            Architecture::Arm64 => t == "virt" || t.starts_with("virt-"),
            Architecture::S390x => t.starts_with("s390-ccw-virtio"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cpu {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
    /// Upper bound of sockets for CPU hotplug; equals `sockets` when absent.
    pub max_sockets: u32,
    pub model: CpuModel,
    /// `dedicatedCpuPlacement`: each vCPU pinned to its own CPU of the
    /// pod's cpuset.
    pub dedicated: bool,
    /// `spec.domain.cpu.features`, in spec order, names unique.
    pub features: Vec<CpuFeature>,
}

/// One CPU feature the spec adds to or takes from the CPU model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuFeature {
    /// The feature as QEMU and libvirt name it (`avx2`, `vmx`, ...).
    pub name: String,
    pub policy: CpuFeaturePolicy,
    /// `spec.domain.cpu.features[N]`.
    pub spec_path: String,
}

/// KubeVirt's (and libvirt's) CPU feature policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuFeaturePolicy {
    /// The guest gets the feature whether or not the host CPU has it.
    Force,
    /// The guest gets the feature; the VM does not start unless the host
    /// has it. KubeVirt's default.
    Require,
    /// The guest gets the feature if the host has it.
    Optional,
    /// The guest does not get the feature.
    Disable,
    /// The VM does not start if the host has the feature.
    Forbid,
}

impl CpuFeaturePolicy {
    /// Every policy, as written in a spec.
    pub const ALL: [CpuFeaturePolicy; 5] = [
        CpuFeaturePolicy::Force,
        CpuFeaturePolicy::Require,
        CpuFeaturePolicy::Optional,
        CpuFeaturePolicy::Disable,
        CpuFeaturePolicy::Forbid,
    ];

    /// The name used in specs and in libvirt's XML.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuFeaturePolicy::Force => "force",
            CpuFeaturePolicy::Require => "require",
            CpuFeaturePolicy::Optional => "optional",
            CpuFeaturePolicy::Disable => "disable",
            CpuFeaturePolicy::Forbid => "forbid",
        }
    }

    /// Whether the guest is meant to see the feature.
    pub fn enables(self) -> bool {
        matches!(
            self,
            CpuFeaturePolicy::Force | CpuFeaturePolicy::Require | CpuFeaturePolicy::Optional
        )
    }
}

impl std::fmt::Display for CpuFeaturePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Cpu {
    /// vCPUs the guest boots with.
    pub fn vcpus(&self) -> u32 {
        self.sockets * self.cores * self.threads
    }
    /// vCPUs the guest may grow to.
    pub fn max_vcpus(&self) -> u32 {
        self.max_sockets * self.cores * self.threads
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuModel {
    /// KubeVirt's default: `host-model`.
    HostModel,
    HostPassthrough,
    /// A named QEMU CPU model such as `Skylake-Server`.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memory {
    /// Guest-visible memory at boot, in bytes.
    pub guest: u64,
    /// Upper bound for memory hotplug, in bytes; `None` means no hotplug.
    pub max_guest: Option<u64>,
    /// Back guest memory with hugepages of this size in bytes.
    pub hugepage_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Firmware {
    /// SMBIOS system UUID: `firmware.uuid`, else derived from the VMI uid (a
    /// launcher choice so that it is stable across restarts; KubeVirt gives a
    /// bare VMI a random one).
    pub uuid: String,
    /// SMBIOS system serial number.
    pub serial: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Boot {
    /// Direct kernel boot (`firmware.kernelBoot`).
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: Option<String>,
        /// `kernelBoot.container.image` of a local run: `kernel` and
        /// `initrd` are paths inside this image until the launcher has
        /// pulled it (and made them host paths in its cache).
        #[serde(skip_serializing_if = "Option::is_none")]
        image: Option<ImageRef>,
    },
    /// `firmware.bootloader.efi`.
    Efi {
        secure_boot: bool,
        /// `efi.persistent`: keep NVRAM across boots.
        persistent: bool,
    },
    /// Legacy BIOS (`firmware.bootloader.bios`, or nothing given).
    Bios,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disk {
    /// `spec.domain.devices.disks[i]`, or `spec.volumes[j]` for the default
    /// disk KubeVirt adds for a volume that no disk names.
    pub spec_path: String,
    pub name: String,
    pub device: DiskDevice,
    pub bus: DiskBus,
    pub readonly: bool,
    pub serial: Option<String>,
    pub boot_order: Option<u32>,
    pub options: DiskOptions,
    pub source: DiskSource,
}

/// `cache`, `io`, `shareable`, `blockSize` of a disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiskOptions {
    /// `none`, `writethrough` or `writeback`.
    pub cache: Option<String>,
    /// `native` or `threads`.
    pub io: Option<String>,
    pub shareable: bool,
    /// `blockSize.custom`: logical and physical sector sizes in bytes.
    pub block_size: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskDevice {
    Disk,
    Cdrom,
    Lun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    Virtio,
    Sata,
    Scsi,
    Usb,
}

impl DiskBus {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskBus::Virtio => "virtio",
            DiskBus::Sata => "sata",
            DiskBus::Scsi => "scsi",
            DiskBus::Usb => "usb",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskSource {
    /// `spec.volumes[j]`.
    pub spec_path: String,
    /// Absolute path of the image file on the host.
    pub path: PathBuf,
    pub format: ImageFormat,
    /// Create a sparse raw image of this many bytes if the file is missing
    /// (`hostDisk.type: DiskOrCreate`).
    pub create_with_capacity: Option<u64>,
    /// A block device (a block-mode PVC), not an image file.
    pub block_device: bool,
    /// An image the launcher makes at every start in the ephemeral disk
    /// directory and removes when the VM is gone.
    pub generated: Option<Generated>,
}

/// What a launcher-made disk image holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Generated {
    /// `emptyDisk`: a sparse raw image of `capacity` bytes, blank at every
    /// start.
    Empty { capacity: u64 },
    /// `cloudInitNoCloud` (volume id `cidata`) and `cloudInitConfigDrive`
    /// (`config-2`): an ISO 9660 image with Rock Ridge and Joliet names, as
    /// KubeVirt makes with xorrisofs, holding `files`.
    CloudInit {
        label: String,
        files: Vec<GeneratedFile>,
    },
    /// `containerDisk`: a qcow2 overlay whose backing file is the image, so
    /// that the image is never written and the guest's writes last as long
    /// as the VM.
    Overlay {
        backing: PathBuf,
        backing_format: ImageFormat,
    },
    /// `containerDisk` of a local run with no unpacked image at hand: the
    /// launcher pulls `image` into its cache before the VM starts and turns
    /// this into an [`Generated::Overlay`] of the disk it found there.
    ImageOverlay { image: ImageRef },
    /// `configMap`, `secret`, `downwardAPI`, `serviceAccount`: the files of
    /// the directory Kubernetes mounted, as read at start, in an ISO 9660
    /// image with volume id `label` (as KubeVirt makes for them); `dir`
    /// absent is an empty image when `optional`.
    IsoFromDir {
        dir: PathBuf,
        label: String,
        optional: bool,
    },
}

/// An image in an OCI registry and a file in it, as a `containerDisk` or
/// `kernelBoot.container` names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRef {
    /// The reference as the spec gives it (`registry/repository:tag`,
    /// `@sha256:...`; Docker Hub's defaults apply).
    pub image: String,
    /// `containerDisk.path`: the disk inside the image; `None` is
    /// KubeVirt's rule, the one file under `/disk/`.
    pub path: Option<String>,
    pub pull_policy: PullPolicy,
    /// `imagePullSecret`: a `kubernetes.io/dockerconfigjson` Secret, read
    /// where the pod mounts Secrets (`<mounts>/secret/<name>/.dockerconfigjson`).
    pub pull_secret: Option<PathBuf>,
}

/// `imagePullPolicy`, defaulted as Kubernetes does: `Always` for `:latest`
/// or no tag, else `IfNotPresent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// Kubernetes' default for an image reference.
    pub fn default_for(image: &str) -> PullPolicy {
        if image.contains('@') {
            return PullPolicy::IfNotPresent;
        }
        // The tag is after the last ':' that follows the last '/' (a ':'
        // before it is a registry port).
        let last = image.rsplit('/').next().unwrap_or(image);
        match last.rsplit_once(':') {
            Some((_, "latest")) | None => PullPolicy::Always,
            Some(_) => PullPolicy::IfNotPresent,
        }
    }

    /// Kubernetes' spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// One file of a launcher-made cloud-init image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GeneratedFile {
    /// `/`-separated, relative to the image's root.
    pub path: String,
    pub contents: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Devices {
    /// A virtio-rng device fed from the host's `/dev/urandom`.
    pub rng: bool,
    /// The serial console relayed to `virt-serial0` (`autoattachSerialConsole`).
    pub serial_console: bool,
    /// Devices other backends can emulate but a given one may refuse; each
    /// keeps its spec path so the refusal can name it.
    pub graphics: Option<SpecFeature>,
    pub inputs: Vec<Input>,
    /// Network interfaces, in spec order.
    pub interfaces: Vec<Interface>,
    /// Directories shared with the guest over virtio-fs.
    pub filesystems: Vec<Filesystem>,
}

/// `spec.domain.devices.filesystems[i]` with its volume's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filesystem {
    pub spec_path: String,
    /// The volume's name: the mount tag the guest mounts
    /// (`mount -t virtiofs <name> /mnt`).
    pub name: String,
    /// What is shared: the volume's directory as the pod mounts it.
    pub source_dir: PathBuf,
}

/// `spec.domain.devices.interfaces[i]` with its `spec.networks[j]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub spec_path: String,
    pub name: String,
    /// `macAddress`, else one derived from the VMI uid and the interface
    /// name (locally administered, stable across restarts).
    pub mac: String,
    /// `virtio` (KubeVirt's default), or a libvirt model such as `e1000`.
    pub model: String,
    pub binding: Binding,
    /// `pciAddress` (`0000:81:01.0`), where the backend can place it.
    pub pci_address: Option<String>,
    pub boot_order: Option<u32>,
    pub dhcp: DhcpExtras,
}

/// How an interface reaches the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Binding {
    /// The guest gets `guest` in `cidr` from the launcher's DHCP server, with
    /// `gateway` (the in-pod bridge) as its router; its traffic leaves with
    /// the pod's address (NAT) and `ports` come in to it (all when empty).
    Masquerade {
        cidr: String,
        prefix: u8,
        gateway: std::net::Ipv4Addr,
        guest: std::net::Ipv4Addr,
        ports: Vec<PortForward>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortForward {
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `dhcpOptions`: what the launcher's DHCP server adds to its answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DhcpExtras {
    pub boot_file_name: Option<String>,
    pub tftp_server_name: Option<String>,
    pub ntp_servers: Vec<std::net::Ipv4Addr>,
    /// Options 224-254 with their text values.
    pub private_options: Vec<(u8, String)>,
}

/// A spec element that only matters by its presence and name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpecFeature {
    pub spec_path: String,
    /// What it is, e.g. `vnc` (graphics) or `e1000` (interface model).
    pub kind: String,
}

/// `spec.domain.devices.inputs[i]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Input {
    pub spec_path: String,
    pub kind: InputKind,
    pub bus: InputBus,
}

/// KubeVirt's input types (only `tablet` exists in `kubevirt.io/v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    Tablet,
}

impl InputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::Tablet => "tablet",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputBus {
    Usb,
    Virtio,
}

impl InputBus {
    pub fn as_str(self) -> &'static str {
        match self {
            InputBus::Usb => "usb",
            InputBus::Virtio => "virtio",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Features {
    /// `domain.features.acpi` (KubeVirt enables ACPI unless told otherwise).
    pub acpi: bool,
    /// `domain.features.smm`.
    pub smm: bool,
}

/// `spec.domain.clock`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Clock {
    /// `spec.domain.clock`.
    pub spec_path: String,
    pub offset: ClockOffset,
    /// Timers the spec configured, in the order hpet, kvm, pit, rtc, hyperv.
    pub timers: Vec<Timer>,
}

impl Clock {
    /// The spec path of one timer, e.g. `spec.domain.clock.timer.rtc`.
    pub fn timer_path(&self, timer: &Timer) -> String {
        format!("{}.timer.{}", self.spec_path, timer.name.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ClockOffset {
    /// `clock.utc`, with `offsetSeconds` (0 when absent or no clock given).
    Utc { adjustment_seconds: i64 },
    /// `clock.timezone`, e.g. `Europe/Paris`.
    Timezone { name: String },
}

/// One of `clock.timer.{hpet,kvm,pit,rtc,hyperv}`, with the options the spec
/// set (`None`: not set, the hypervisor's default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timer {
    pub name: TimerName,
    /// `present` (KubeVirt's default when the timer is given: true).
    pub present: Option<bool>,
    pub tick_policy: Option<TickPolicy>,
    /// `rtc` only.
    pub track: Option<TimerTrack>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimerName {
    Hpet,
    Kvm,
    Pit,
    Rtc,
    Hyperv,
}

impl TimerName {
    /// KubeVirt's name, as in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            TimerName::Hpet => "hpet",
            TimerName::Kvm => "kvm",
            TimerName::Pit => "pit",
            TimerName::Rtc => "rtc",
            TimerName::Hyperv => "hyperv",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TickPolicy {
    Delay,
    Catchup,
    Merge,
    Discard,
}

impl TickPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TickPolicy::Delay => "delay",
            TickPolicy::Catchup => "catchup",
            TickPolicy::Merge => "merge",
            TickPolicy::Discard => "discard",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimerTrack {
    Guest,
    Wall,
}

impl TimerTrack {
    pub fn as_str(self) -> &'static str {
        match self {
            TimerTrack::Guest => "guest",
            TimerTrack::Wall => "wall",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LaunchSecurity {
    /// AMD SEV, or SEV-ES when `encrypted_state`.
    Sev {
        encrypted_state: bool,
        dh_cert: Option<String>,
        session: Option<String>,
        attestation: bool,
    },
    /// AMD SEV-SNP. `host_data`: the launcher extension `snp.hostData`,
    /// validated: 64 lowercase hex characters (32 bytes).
    SevSnp { host_data: Option<String> },
    /// Intel TDX.
    Tdx,
    /// IBM Z Secure Execution (protected virtualization).
    SecureExecution,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationCondition {
    pub live_migratable: bool,
    /// KubeVirt's reason when not migratable, e.g. `SEVNotLiveMigratable`.
    pub reason: Option<String>,
    pub message: Option<String>,
}

#[cfg(test)]
mod pull_policy_tests {
    use super::PullPolicy;

    #[test]
    fn default_pull_policy_is_kubernetes_rule() {
        for (image, want) in [
            ("quay.io/containerdisks/fedora", PullPolicy::Always),
            ("quay.io/containerdisks/fedora:latest", PullPolicy::Always),
            ("localhost:5000/disk", PullPolicy::Always),
            ("localhost:5000/disk:v1", PullPolicy::IfNotPresent),
            ("disk@sha256:0123", PullPolicy::IfNotPresent),
        ] {
            assert_eq!(PullPolicy::default_for(image), want, "{image}");
        }
    }
}
