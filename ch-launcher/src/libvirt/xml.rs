//! The subset of libvirt's domain XML (<https://libvirt.org/formatdomain.html>)
//! that the launcher writes, as serde types.
//!
//! quick-xml's serializer escapes every value, so user data (names, paths,
//! serials, kernel command lines) can never change the document's structure.
//! Field names follow quick-xml's conventions: `@name` is an attribute,
//! `$text` is element text. Optional elements are skipped when `None`; an
//! empty marker element such as `<acpi/>` is `Option<Empty>`.

use serde::Serialize;

/// An element with neither attributes nor content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename = "domain")]
pub struct DomainXml {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub name: String,
    pub uuid: String,
    #[serde(rename = "maxMemory", skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<MaxMemory>,
    pub memory: SizeInBytes,
    #[serde(rename = "currentMemory")]
    pub current_memory: SizeInBytes,
    #[serde(rename = "memoryBacking", skip_serializing_if = "Option::is_none")]
    pub memory_backing: Option<MemoryBacking>,
    pub vcpu: Vcpu,
    pub sysinfo: Sysinfo,
    pub os: Os,
    pub features: FeaturesXml,
    pub cpu: CpuXml,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockXml>,
    pub on_poweroff: &'static str,
    pub on_reboot: &'static str,
    pub on_crash: &'static str,
    pub devices: DevicesXml,
    #[serde(rename = "launchSecurity", skip_serializing_if = "Option::is_none")]
    pub launch_security: Option<LaunchSecurityXml>,
}

/// `<launchSecurity type='sev|sev-snp|tdx'>`; which children apply depends on
/// the type (see `launch_security`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LaunchSecurityXml {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cbitpos: Option<u32>,
    #[serde(rename = "reducedPhysBits", skip_serializing_if = "Option::is_none")]
    pub reduced_phys_bits: Option<u32>,
    /// Hexadecimal, `0x...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(rename = "dhCert", skip_serializing_if = "Option::is_none")]
    pub dh_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// SEV-SNP host data, base64.
    #[serde(rename = "hostData", skip_serializing_if = "Option::is_none")]
    pub host_data: Option<String>,
    #[serde(
        rename = "quoteGenerationService",
        skip_serializing_if = "Option::is_none"
    )]
    pub quote_generation_service: Option<QuoteGenerationService>,
}

impl LaunchSecurityXml {
    /// The element with only its type set.
    pub fn of_kind(kind: &'static str) -> Self {
        LaunchSecurityXml {
            kind,
            cbitpos: None,
            reduced_phys_bits: None,
            policy: None,
            dh_cert: None,
            session: None,
            host_data: None,
            quote_generation_service: None,
        }
    }
}

/// TDX: where QEMU sends the guest's quote requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuoteGenerationService {
    #[serde(rename = "@path")]
    pub path: String,
}

/// `<driver iommu='on'/>` of a virtio device: DMA through the guest-visible
/// IOMMU path, which confidential guests need to see the device at all.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceDriver {
    #[serde(rename = "@iommu")]
    pub iommu: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeInBytes {
    #[serde(rename = "@unit")]
    pub unit: &'static str,
    #[serde(rename = "$text")]
    pub value: u64,
}

impl SizeInBytes {
    pub fn bytes(value: u64) -> Self {
        SizeInBytes { unit: "b", value }
    }
    pub fn kib(value: u64) -> Self {
        SizeInBytes { unit: "KiB", value }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaxMemory {
    #[serde(rename = "@slots")]
    pub slots: u32,
    #[serde(rename = "@unit")]
    pub unit: &'static str,
    #[serde(rename = "$text")]
    pub value: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryBacking {
    pub hugepages: Hugepages,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hugepages {
    pub page: HugePage,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HugePage {
    #[serde(rename = "@size")]
    pub size: u64,
    #[serde(rename = "@unit")]
    pub unit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vcpu {
    #[serde(rename = "@placement")]
    pub placement: &'static str,
    /// vCPUs online at boot when fewer than the maximum.
    #[serde(rename = "@current", skip_serializing_if = "Option::is_none")]
    pub current: Option<u32>,
    #[serde(rename = "$text")]
    pub max: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sysinfo {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub system: SysinfoSystem,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SysinfoSystem {
    pub entry: Vec<SysinfoEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SysinfoEntry {
    #[serde(rename = "@name")]
    pub name: &'static str,
    #[serde(rename = "$text")]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Os {
    #[serde(rename = "type")]
    pub os_type: OsType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loader: Option<Loader>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvram: Option<Nvram>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    pub smbios: Smbios,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OsType {
    #[serde(rename = "@arch")]
    pub arch: &'static str,
    #[serde(rename = "@machine")]
    pub machine: String,
    #[serde(rename = "$text")]
    pub value: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Loader {
    #[serde(rename = "@readonly")]
    pub readonly: &'static str,
    #[serde(rename = "@secure")]
    pub secure: &'static str,
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@format", skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(rename = "@stateless", skip_serializing_if = "Option::is_none")]
    pub stateless: Option<&'static str>,
    #[serde(rename = "$text")]
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Nvram {
    #[serde(rename = "@template")]
    pub template: String,
    #[serde(rename = "$text")]
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Smbios {
    #[serde(rename = "@mode")]
    pub mode: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeaturesXml {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acpi: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smm: Option<State>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pmu: Option<State>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct State {
    #[serde(rename = "@state")]
    pub state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuXml {
    #[serde(rename = "@mode")]
    pub mode: &'static str,
    #[serde(rename = "@match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<CpuModelXml>,
    pub topology: Topology,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub feature: Vec<CpuFeatureXml>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numa: Option<Numa>,
}

/// `<feature policy='require' name='avx2'/>` inside `<cpu>`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuFeatureXml {
    #[serde(rename = "@policy")]
    pub policy: &'static str,
    #[serde(rename = "@name")]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuModelXml {
    #[serde(rename = "@fallback")]
    pub fallback: &'static str,
    #[serde(rename = "$text")]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    #[serde(rename = "@sockets")]
    pub sockets: u32,
    #[serde(rename = "@cores")]
    pub cores: u32,
    #[serde(rename = "@threads")]
    pub threads: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Numa {
    pub cell: Vec<NumaCell>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NumaCell {
    #[serde(rename = "@id")]
    pub id: u32,
    #[serde(rename = "@cpus")]
    pub cpus: String,
    #[serde(rename = "@memory")]
    pub memory: u64,
    #[serde(rename = "@unit")]
    pub unit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClockXml {
    #[serde(rename = "@offset")]
    pub offset: &'static str,
    #[serde(rename = "@timezone", skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Seconds added to UTC (`offset='utc'` only).
    #[serde(rename = "@adjustment", skip_serializing_if = "Option::is_none")]
    pub adjustment: Option<i64>,
    pub timer: Vec<Timer>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timer {
    #[serde(rename = "@name")]
    pub name: &'static str,
    #[serde(rename = "@present", skip_serializing_if = "Option::is_none")]
    pub present: Option<&'static str>,
    #[serde(rename = "@tickpolicy", skip_serializing_if = "Option::is_none")]
    pub tickpolicy: Option<String>,
    #[serde(rename = "@track", skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DevicesXml {
    pub disk: Vec<DiskXml>,
    pub controller: Vec<Controller>,
    pub interface: Vec<InterfaceXml>,
    pub serial: Vec<SerialXml>,
    pub console: Vec<ConsoleXml>,
    pub input: Vec<InputXml>,
    pub graphics: Vec<GraphicsXml>,
    pub video: Vec<VideoXml>,
    pub rng: Vec<RngXml>,
    pub memballoon: Memballoon,
    pub memory: Vec<MemoryDevice>,
}

/// `<interface type='ethernet'>` on a tap the launcher made
/// (`managed='no'`: libvirt opens it and leaves it alone), as KubeVirt does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InterfaceXml {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub mac: MacXml,
    pub target: InterfaceTarget,
    pub model: InterfaceModel,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootOrder>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<PciAddressXml>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<Alias>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MacXml {
    #[serde(rename = "@address")]
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InterfaceTarget {
    #[serde(rename = "@dev")]
    pub dev: String,
    #[serde(rename = "@managed")]
    pub managed: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InterfaceModel {
    #[serde(rename = "@type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PciAddressXml {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@domain")]
    pub domain: String,
    #[serde(rename = "@bus")]
    pub bus: String,
    #[serde(rename = "@slot")]
    pub slot: String,
    #[serde(rename = "@function")]
    pub function: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskXml {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@device")]
    pub device: &'static str,
    pub driver: DiskDriver,
    pub source: DiskSourceXml,
    pub target: DiskTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shareable: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootOrder>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blockio: Option<BlockIo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<Alias>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskDriver {
    #[serde(rename = "@name")]
    pub name: &'static str,
    #[serde(rename = "@type")]
    pub format: &'static str,
    #[serde(rename = "@iommu", skip_serializing_if = "Option::is_none")]
    pub iommu: Option<&'static str>,
    #[serde(rename = "@cache", skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    #[serde(rename = "@io", skip_serializing_if = "Option::is_none")]
    pub io: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockIo {
    #[serde(rename = "@logical_block_size")]
    pub logical: u32,
    #[serde(rename = "@physical_block_size")]
    pub physical: u32,
}

/// `file=` for image files, `dev=` for block devices (LUN pass-through).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskSourceXml {
    #[serde(rename = "@file", skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(rename = "@dev", skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskTarget {
    #[serde(rename = "@dev")]
    pub dev: String,
    #[serde(rename = "@bus")]
    pub bus: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootOrder {
    #[serde(rename = "@order")]
    pub order: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alias {
    #[serde(rename = "@name")]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Controller {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@index")]
    pub index: u32,
    #[serde(rename = "@model")]
    pub model: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<DeviceDriver>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SerialXml {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub source: UnixSource,
    pub log: ChardevLog,
    pub target: SerialTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnixSource {
    #[serde(rename = "@mode")]
    pub mode: &'static str,
    #[serde(rename = "@path")]
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChardevLog {
    #[serde(rename = "@file")]
    pub file: String,
    #[serde(rename = "@append")]
    pub append: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SerialTarget {
    #[serde(rename = "@port")]
    pub port: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsoleXml {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub target: ConsoleTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsoleTarget {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@port")]
    pub port: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputXml {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@bus")]
    pub bus: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<Alias>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<DeviceDriver>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphicsXml {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    pub listen: GraphicsListen,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphicsListen {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@socket")]
    pub socket: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoXml {
    pub model: VideoModel,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoModel {
    #[serde(rename = "@type")]
    pub kind: &'static str,
    #[serde(rename = "@heads")]
    pub heads: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RngXml {
    #[serde(rename = "@model")]
    pub model: &'static str,
    pub backend: RngBackend,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<DeviceDriver>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RngBackend {
    #[serde(rename = "@model")]
    pub model: &'static str,
    #[serde(rename = "$text")]
    pub source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memballoon {
    #[serde(rename = "@model")]
    pub model: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<DeviceDriver>,
}

/// A virtio-mem device: the hotpluggable part of guest memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryDevice {
    #[serde(rename = "@model")]
    pub model: &'static str,
    pub target: MemoryTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryTarget {
    pub size: SizeInBytes,
    pub node: u32,
    pub block: SizeInBytes,
    pub requested: SizeInBytes,
}
