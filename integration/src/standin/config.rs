//! The `vm.create` body as Cloud Hypervisor reads it: the same field names,
//! integer widths and serde defaults as CH's own `VmConfig`, so that a body CH
//! rejects is rejected here with the same serde message, and `vm.info` echoes
//! the config with the same defaults filled in.
//!
//! The sections the recordings show and the launcher sets (cpus, memory,
//! payload, consoles, platform, disks, net) are typed; the other device lists
//! (fs, pmem, vsock, ...) are kept as the JSON that was sent and echoed back
//! unchanged: the stand-in neither validates nor defaults them. Unknown fields
//! are ignored, as CH ignores them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Physical address bits CH assumes for PVH boots.
const DEFAULT_MAX_PHYS_BITS: u8 = 46;
const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;
const DEFAULT_RNG_SOURCE: &str = "/dev/urandom";
/// The debug console's default I/O port (0xe9).
const DEFAULT_DEBUG_CONSOLE_PORT: u16 = 0xe9;

fn default_true() -> bool {
    true
}

fn default_max_phys_bits() -> u8 {
    DEFAULT_MAX_PHYS_BITS
}

fn default_num_pci_segments() -> u16 {
    1
}

fn default_iommu_address_width_bits() -> u8 {
    64
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmConfig {
    #[serde(default)]
    pub cpus: CpusConfig,
    #[serde(default)]
    pub memory: MemoryConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PayloadConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_groups: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<NetConfig>>,
    #[serde(default)]
    pub rng: RngConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic_vhost_user: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmem: Option<Value>,
    #[serde(default)]
    pub serial: SerialConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub debug_console: DebugConsoleConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_devices: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vdpa: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Value>,
    #[serde(default)]
    pub pvpanic: bool,
    #[serde(default)]
    pub iommu: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa: Option<Value>,
    #[serde(default)]
    pub watchdog: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtc: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_segments: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Value>,
    #[serde(default)]
    pub landlock_enable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock_rules: Option<Value>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CpuFeatures {
    #[serde(default)]
    pub amx: bool,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub enum CoreScheduling {
    #[default]
    Vm,
    Vcpu,
    Off,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub enum CpuProfile {
    #[default]
    Host,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CpuTopology {
    pub threads_per_core: u16,
    pub cores_per_die: u16,
    pub dies_per_package: u16,
    pub packages: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CpusConfig {
    pub boot_vcpus: u32,
    pub max_vcpus: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<CpuTopology>,
    #[serde(default)]
    pub kvm_hyperv: bool,
    #[serde(default = "default_max_phys_bits")]
    pub max_phys_bits: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Value>,
    #[serde(default)]
    pub features: CpuFeatures,
    #[serde(default = "default_true")]
    pub nested: bool,
    #[serde(default)]
    pub core_scheduling: CoreScheduling,
    #[serde(default)]
    pub profile: CpuProfile,
}

impl Default for CpusConfig {
    fn default() -> Self {
        CpusConfig {
            boot_vcpus: 1,
            max_vcpus: 1,
            topology: None,
            kvm_hyperv: false,
            max_phys_bits: DEFAULT_MAX_PHYS_BITS,
            affinity: None,
            features: CpuFeatures::default(),
            nested: true,
            core_scheduling: CoreScheduling::default(),
            profile: CpuProfile::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HotplugMethod {
    #[default]
    Acpi,
    VirtioMem,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemoryConfig {
    pub size: u64,
    #[serde(default)]
    pub mergeable: bool,
    #[serde(default)]
    pub hotplug_method: HotplugMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplugged_size: Option<u64>,
    #[serde(default)]
    pub shared: bool,
    #[serde(default)]
    pub hugepages: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_size: Option<u64>,
    #[serde(default)]
    pub prefault: bool,
    #[serde(default)]
    pub reserve: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zones: Option<Value>,
    #[serde(default = "default_true")]
    pub thp: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: DEFAULT_MEMORY_BYTES,
            mergeable: false,
            hotplug_method: HotplugMethod::Acpi,
            hotplug_size: None,
            hotplugged_size: None,
            shared: false,
            hugepages: false,
            hugepage_size: None,
            prefault: false,
            reserve: false,
            zones: None,
            thp: true,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PayloadConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
}

/// Fields every PCI device config shares (flattened into its JSON object).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PciDeviceCommonConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub iommu: bool,
    #[serde(default)]
    pub pci_segment: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_device_id: Option<u8>,
}

fn default_disk_num_queues() -> usize {
    1
}

fn default_disk_queue_size() -> u16 {
    128
}

fn default_net_num_queues() -> usize {
    2
}

fn default_net_queue_size() -> u16 {
    256
}

/// A disk image's format, as CH detects it when the VM is built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    FlatVmdk,
    FixedVhd,
    Qcow2,
    Raw,
    Vhdx,
    #[default]
    Unknown,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub enum LockGranularity {
    #[default]
    ByteRange,
    Full,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskConfig {
    #[serde(flatten)]
    pub pci_common: PciDeviceCommonConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default)]
    pub direct: bool,
    #[serde(default = "default_disk_num_queues")]
    pub num_queues: usize,
    #[serde(default = "default_disk_queue_size")]
    pub queue_size: u16,
    #[serde(default)]
    pub vhost_user: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter_config: Option<Value>,
    #[serde(default)]
    pub disable_io_uring: bool,
    #[serde(default)]
    pub disable_aio: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_affinity: Option<Value>,
    #[serde(default)]
    pub backing_files: bool,
    #[serde(default = "default_true")]
    pub sparse: bool,
    #[serde(default)]
    pub image_type: ImageType,
    #[serde(default)]
    pub lock_granularity: LockGranularity,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub enum VhostMode {
    #[default]
    Client,
    Server,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetConfig {
    #[serde(flatten)]
    pub pci_common: PciDeviceCommonConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<std::net::IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    #[serde(default = "default_net_num_queues")]
    pub num_queues: usize,
    #[serde(default = "default_net_queue_size")]
    pub queue_size: u16,
    #[serde(default)]
    pub vhost_user: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<String>,
    #[serde(default)]
    pub vhost_mode: VhostMode,
    /// Descriptor numbers in a body mean nothing in this process; `vm.create`
    /// drops them (see [`VmConfig::from_body`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<Vec<i32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter_config: Option<Value>,
    #[serde(default = "default_true")]
    pub offload_tso: bool,
    #[serde(default = "default_true")]
    pub offload_ufo: bool,
    #[serde(default = "default_true")]
    pub offload_csum: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RngConfig {
    #[serde(flatten)]
    pub pci_common: PciDeviceCommonConfig,
    pub src: PathBuf,
}

impl Default for RngConfig {
    fn default() -> Self {
        RngConfig {
            pci_common: PciDeviceCommonConfig::default(),
            src: PathBuf::from(DEFAULT_RNG_SOURCE),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleOutputMode {
    Off,
    Pty,
    Tty,
    File,
    Socket,
    Null,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommonConsoleConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    pub mode: ConsoleOutputMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// The legacy 16550 serial port (COM1), the one the tiny guest talks to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SerialConfig {
    #[serde(flatten)]
    pub common: CommonConsoleConfig,
}

impl Default for SerialConfig {
    fn default() -> Self {
        SerialConfig {
            common: CommonConsoleConfig {
                file: None,
                mode: ConsoleOutputMode::Null,
                socket: None,
            },
        }
    }
}

/// The virtio-console device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConsoleConfig {
    #[serde(flatten)]
    pub common: CommonConsoleConfig,
    #[serde(default, flatten)]
    pub pci_common: PciDeviceCommonConfig,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            common: CommonConsoleConfig {
                file: None,
                mode: ConsoleOutputMode::Tty,
                socket: None,
            },
            pci_common: PciDeviceCommonConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DebugConsoleConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    pub mode: ConsoleOutputMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iobase: Option<u16>,
}

impl Default for DebugConsoleConfig {
    fn default() -> Self {
        DebugConsoleConfig {
            file: None,
            mode: ConsoleOutputMode::Off,
            iobase: Some(DEFAULT_DEBUG_CONSOLE_PORT),
        }
    }
}

/// `platform`; `tdx` and `sev_snp` exist only on builds with those features
/// (see [`PlatformConfig::apply_build_features`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlatformConfig {
    #[serde(default = "default_num_pci_segments")]
    pub num_pci_segments: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_segments: Option<Vec<u16>>,
    #[serde(default = "default_iommu_address_width_bits")]
    pub iommu_address_width_bits: u8,
    #[serde(
        default,
        alias = "serial_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub system_serial_number: Option<String>,
    #[serde(default, alias = "uuid", skip_serializing_if = "Option::is_none")]
    pub system_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oem_strings: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_product_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_sku_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_asset_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdx: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sev_snp: Option<Value>,
    #[serde(default)]
    pub iommufd: bool,
    /// A descriptor number in a JSON body means nothing in this process: CH
    /// keeps only the fact that one was given, as -1.
    #[serde(
        default,
        deserialize_with = "deserialize_invalid_fd",
        skip_serializing_if = "Option::is_none"
    )]
    pub iommufd_fd: Option<i32>,
    #[serde(default = "default_true")]
    pub vfio_p2p_dma: bool,
}

fn deserialize_invalid_fd<'de, D>(deserializer: D) -> Result<Option<i32>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let given: Option<i32> = Option::deserialize(deserializer)?;
    Ok(given.map(|_| -1))
}

impl PlatformConfig {
    /// A build without `tdx`/`sev_snp` has no such fields, so CH ignores them
    /// like any unknown field (recorded: `vm.create` still answers 204); a
    /// build with the feature reads a bool defaulting to false.
    pub fn apply_build_features(&mut self, features: &[String]) -> Result<(), String> {
        let has = |name: &str| features.iter().any(|f| f == name);
        self.tdx = feature_flag(self.tdx.take(), has("tdx"))?;
        self.sev_snp = feature_flag(self.sev_snp.take(), has("sev_snp"))?;
        Ok(())
    }
}

fn feature_flag(given: Option<Value>, built_in: bool) -> Result<Option<Value>, String> {
    if !built_in {
        return Ok(None);
    }
    match given {
        None => Ok(Some(Value::Bool(false))),
        Some(Value::Bool(b)) => Ok(Some(Value::Bool(b))),
        Some(other) => Err(format!(
            "invalid type: {}, expected a boolean",
            json_kind(&other)
        )),
    }
}

fn json_kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "sequence".to_string(),
        Value::Object(_) => "map".to_string(),
    }
}

impl VmConfig {
    /// Parses a `vm.create` body; the error text is serde_json's, as CH sends it.
    pub fn from_body(body: &[u8], features: &[String]) -> Result<VmConfig, String> {
        let mut config: VmConfig = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        // CH takes a net device's descriptors only over SCM_RIGHTS, never from
        // `vm.create`: numbers in the body are dropped.
        for net in config.net.iter_mut().flatten() {
            let _ignored = net.fds.take();
        }
        if let Some(platform) = config.platform.as_mut() {
            platform.apply_build_features(features)?;
        }
        Ok(config)
    }

    /// What `vm.info` reports as `memory_actual_size` for a VM without
    /// balloon or virtio-mem activity: the boot memory.
    pub fn memory_actual_size(&self) -> u64 {
        self.memory.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrongly_typed_memory_size_reports_serde_message_like_ch() {
        // The recorder sent `json.dumps` output, with a space after each colon.
        let err = VmConfig::from_body(br#"{"memory": {"size": "lots"}}"#, &[]).unwrap_err();
        assert_eq!(
            err,
            "invalid type: string \"lots\", expected u64 at line 1 column 26"
        );
    }

    #[test]
    fn defaults_match_recorded_vm_info() {
        let config = VmConfig::from_body(
            br#"{"cpus":{"boot_vcpus":1,"max_vcpus":2},"memory":{"size":67108864},"payload":{"kernel":"/k"},"serial":{"mode":"Socket","socket":"/s"},"console":{"mode":"Off"}}"#,
            &[],
        )
        .unwrap();
        let echoed = serde_json::to_value(&config).unwrap();
        let expected = serde_json::json!({
            "cpus": {"boot_vcpus": 1, "max_vcpus": 2, "kvm_hyperv": false, "max_phys_bits": 46,
                     "features": {"amx": false}, "nested": true, "core_scheduling": "Vm", "profile": "Host"},
            "memory": {"size": 67108864, "mergeable": false, "hotplug_method": "Acpi", "shared": false,
                       "hugepages": false, "prefault": false, "reserve": false, "thp": true},
            "payload": {"kernel": "/k"},
            "rng": {"pci_segment": 0, "src": "/dev/urandom"},
            "serial": {"mode": "Socket", "socket": "/s"},
            "console": {"mode": "Off", "pci_segment": 0},
            "debug_console": {"mode": "Off", "iobase": 233},
            "pvpanic": false, "iommu": false, "watchdog": false, "landlock_enable": false
        });
        assert_eq!(echoed, expected);
    }

    #[test]
    fn disk_and_net_defaults_match_ch() {
        let config = VmConfig::from_body(
            br#"{"disks":[{"path":"/d.img"}],"net":[{"mac":"52:54:00:12:34:56","fds":[3]}]}"#,
            &[],
        )
        .unwrap();
        let echoed = serde_json::to_value(&config).unwrap();
        assert_eq!(
            echoed["disks"],
            serde_json::json!([{"pci_segment": 0, "path": "/d.img", "readonly": false, "direct": false,
                "num_queues": 1, "queue_size": 128, "vhost_user": false, "disable_io_uring": false,
                "disable_aio": false, "backing_files": false, "sparse": true, "image_type": "Unknown",
                "lock_granularity": "ByteRange"}])
        );
        assert_eq!(
            echoed["net"],
            serde_json::json!([{"pci_segment": 0, "mac": "52:54:00:12:34:56", "num_queues": 2,
                "queue_size": 256, "vhost_user": false, "vhost_mode": "Client", "offload_tso": true,
                "offload_ufo": true, "offload_csum": true}])
        );
    }

    #[test]
    fn tdx_is_ignored_without_the_build_feature_and_kept_with_it() {
        let body = br#"{"payload":{"kernel":"/k"},"platform":{"tdx":true}}"#;
        let without = VmConfig::from_body(body, &["kvm".to_string()]).unwrap();
        assert_eq!(without.platform.as_ref().unwrap().tdx, None);
        let with = VmConfig::from_body(body, &["kvm".to_string(), "tdx".to_string()]).unwrap();
        assert_eq!(with.platform.as_ref().unwrap().tdx, Some(Value::Bool(true)));
    }
}
