//! The subset of `kubevirt.io/v1` `VirtualMachineInstance` this launcher
//! reads, as written by the user (no defaults applied).
//!
//! Field names follow the KubeVirt API. A key that is not a field here is not
//! dropped: [`crate::parse`] reports it as an error with its full path. Lists
//! whose elements are refused as a whole (network interfaces, networks) are
//! kept as raw JSON so the refusal can name each element.

use crate::quantity::Quantity;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstance {
    /// Checked on the raw document before deserialization.
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Required; `None` only when absent, which resolution reports. Required
    /// fields below default the same way, so that a type error that removes
    /// one does not stop deserialization of everything else.
    #[serde(default)]
    pub spec: Option<VmiSpec>,
    /// Observed state written by the cluster; not part of what is asked for.
    #[serde(default)]
    pub status: Option<Value>,
}

/// Kubernetes object metadata. Fields the API server maintains are accepted
/// because a VMI handed over by virt-handler carries them; they do not change
/// the VM.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub generate_name: Option<String>,
    pub resource_version: Option<String>,
    pub generation: Option<i64>,
    pub creation_timestamp: Option<Value>,
    pub deletion_timestamp: Option<Value>,
    pub deletion_grace_period_seconds: Option<i64>,
    pub finalizers: Option<Vec<String>>,
    pub owner_references: Option<Vec<Value>>,
    pub managed_fields: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmiSpec {
    /// Launcher extension: `cloud-hypervisor` or `libvirt`.
    pub hypervisor: Option<String>,
    pub architecture: Option<String>,
    /// Required; `None` only when absent.
    #[serde(default)]
    pub domain: Option<DomainSpec>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub networks: Vec<Network>,
    pub termination_grace_period_seconds: Option<i64>,
    pub start_strategy: Option<String>,
    // Placement fields: Kubernetes already acted on them when it scheduled
    // the launcher's pod, so they have nothing left to ask of the VM.
    pub node_selector: Option<BTreeMap<String, String>>,
    pub affinity: Option<Value>,
    pub tolerations: Option<Vec<Value>>,
    pub topology_spread_constraints: Option<Vec<Value>>,
    pub scheduler_name: Option<String>,
    pub priority_class_name: Option<String>,
    pub eviction_strategy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainSpec {
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    pub resources: Option<Resources>,
    pub firmware: Option<Firmware>,
    #[serde(default)]
    pub devices: Devices,
    pub features: Option<Features>,
    pub clock: Option<Clock>,
    pub launch_security: Option<LaunchSecurity>,
    /// `spec.domain.machine`: the emulated machine (KubeVirt's webhook
    /// fills in `q35` on amd64).
    pub machine: Option<Machine>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    #[serde(rename = "type")]
    pub machine_type: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    pub sockets: Option<u32>,
    pub cores: Option<u32>,
    pub threads: Option<u32>,
    pub max_sockets: Option<u32>,
    pub model: Option<String>,
    pub dedicated_cpu_placement: Option<bool>,
    pub isolate_emulator_thread: Option<bool>,
    /// `spec.domain.cpu.features`: CPU features to add to or take from the
    /// model, each with a libvirt-style policy.
    pub features: Option<Vec<CpuFeature>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuFeature {
    /// The feature as QEMU and libvirt name it (`avx2`, `vmx`, ...).
    pub name: Option<String>,
    /// `force`, `require` (KubeVirt's default), `optional`, `disable` or
    /// `forbid`.
    pub policy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    pub guest: Option<Quantity>,
    pub max_guest: Option<Quantity>,
    pub hugepages: Option<Hugepages>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hugepages {
    #[serde(default)]
    pub page_size: Quantity,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub requests: Option<ResourceList>,
    pub limits: Option<ResourceList>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceList {
    pub memory: Option<Quantity>,
    pub cpu: Option<Quantity>,
    /// Pod resources that size the launcher's pod, not the VM
    /// (`ephemeral-storage`, `hugepages-2Mi`, device plugins, ...); kept so
    /// that they can be reported as having no effect rather than as typos.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Firmware {
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub bootloader: Option<Bootloader>,
    pub kernel_boot: Option<KernelBoot>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bootloader {
    pub bios: Option<Bios>,
    pub efi: Option<Efi>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Bios {}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Efi {
    pub secure_boot: Option<bool>,
    pub persistent: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelBoot {
    pub kernel_args: Option<String>,
    pub container: Option<KernelBootContainer>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelBootContainer {
    pub image: Option<String>,
    pub kernel_path: Option<String>,
    pub initrd_path: Option<String>,
    pub image_pull_policy: Option<String>,
    pub image_pull_secret: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Devices {
    #[serde(default)]
    pub disks: Vec<Disk>,
    pub rng: Option<Rng>,
    pub autoattach_serial_console: Option<bool>,
    pub autoattach_graphics_device: Option<bool>,
    #[serde(default)]
    pub inputs: Vec<Input>,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    pub autoattach_pod_interface: Option<bool>,
    #[serde(default)]
    pub filesystems: Vec<Filesystem>,
}

/// `spec.domain.devices.filesystems[i]`: a volume shared with the guest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filesystem {
    #[serde(default)]
    pub name: String,
    pub virtiofs: Option<Value>,
}

/// `spec.domain.devices.interfaces[i]`. The binding methods other than
/// `masquerade` are kept as raw JSON: resolution refuses them by name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    #[serde(default)]
    pub name: String,
    pub masquerade: Option<Value>,
    pub bridge: Option<Value>,
    pub sriov: Option<Value>,
    pub macvtap: Option<Value>,
    pub passt: Option<Value>,
    pub slirp: Option<Value>,
    pub binding: Option<Value>,
    pub mac_address: Option<String>,
    pub model: Option<String>,
    pub pci_address: Option<String>,
    pub boot_order: Option<u32>,
    #[serde(default)]
    pub ports: Vec<Port>,
    pub dhcp_options: Option<DhcpOptions>,
    pub tag: Option<String>,
    pub acpi_index: Option<u32>,
    pub state: Option<String>,
}

/// `interfaces[i].ports[j]`: a port forwarded to a masquerade guest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<i64>,
}

/// `interfaces[i].dhcpOptions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpOptions {
    pub boot_file_name: Option<String>,
    pub tftp_server_name: Option<String>,
    #[serde(default)]
    pub ntp_servers: Vec<String>,
    #[serde(default)]
    pub private_options: Vec<DhcpPrivateOption>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhcpPrivateOption {
    pub option: Option<i64>,
    pub value: Option<String>,
}

/// `spec.networks[i]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    #[serde(default)]
    pub name: String,
    pub pod: Option<PodNetwork>,
    pub multus: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodNetwork {
    #[serde(rename = "vmNetworkCIDR")]
    pub vm_network_cidr: Option<String>,
    #[serde(rename = "vmIPv6NetworkCIDR")]
    pub vm_ipv6_network_cidr: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Rng {}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Input {
    #[serde(default)]
    pub name: String,
    /// KubeVirt defaults an empty type to `tablet`.
    #[serde(default, rename = "type")]
    pub kind: String,
    pub bus: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    #[serde(default)]
    pub name: String,
    pub disk: Option<DiskTarget>,
    pub cdrom: Option<DiskTarget>,
    pub lun: Option<DiskTarget>,
    pub serial: Option<String>,
    pub boot_order: Option<u32>,
    pub cache: Option<String>,
    pub io: Option<String>,
    pub shareable: Option<bool>,
    pub block_size: Option<BlockSize>,
}

/// `disks[i].blockSize`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockSize {
    pub custom: Option<CustomBlockSize>,
    pub match_volume: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomBlockSize {
    pub logical: Option<u32>,
    pub physical: Option<u32>,
}

/// The body of `disk`, `cdrom` and `lun`: the fields this launcher reads are
/// the same for all three.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskTarget {
    pub bus: Option<String>,
    pub readonly: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    pub acpi: Option<FeatureState>,
    pub smm: Option<FeatureState>,
}

/// KubeVirt's `FeatureState`: present means enabled unless `enabled: false`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FeatureState {
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Clock {
    pub utc: Option<ClockOffsetUtc>,
    pub timezone: Option<String>,
    pub timer: Option<Timers>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClockOffsetUtc {
    pub offset_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timers {
    pub hpet: Option<Timer>,
    pub kvm: Option<Timer>,
    pub pit: Option<Timer>,
    pub rtc: Option<Timer>,
    pub hyperv: Option<Timer>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timer {
    pub present: Option<bool>,
    pub tick_policy: Option<String>,
    pub track: Option<String>,
}

/// `launchSecurity: {}` (no kind) is IBM Z Secure Execution.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchSecurity {
    pub sev: Option<Sev>,
    pub snp: Option<Snp>,
    pub tdx: Option<Tdx>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sev {
    pub policy: Option<SevPolicy>,
    pub attestation: Option<SevAttestation>,
    pub session: Option<String>,
    pub dh_cert: Option<String>,
    /// The SEV-SNP enablement proposal's spelling of `snp: {}`.
    pub secure_nested_paging: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SevPolicy {
    pub encrypted_state: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SevAttestation {}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snp {
    /// Launcher extension (KubeVirt's `snp` has no field): 32 bytes as 64 hex
    /// characters that the SEV-SNP attestation report carries (Cloud
    /// Hypervisor's `payload.host_data`, libvirt's `hostData`).
    pub host_data: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Tdx {}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    #[serde(default)]
    pub name: String,
    pub host_disk: Option<HostDisk>,
    pub container_disk: Option<ContainerDisk>,
    pub empty_disk: Option<EmptyDisk>,
    pub cloud_init_no_cloud: Option<CloudInitSource>,
    pub cloud_init_config_drive: Option<CloudInitSource>,
    pub persistent_volume_claim: Option<PvcSource>,
    pub data_volume: Option<DataVolumeSource>,
    pub ephemeral: Option<EphemeralSource>,
    pub config_map: Option<ProjectedSource>,
    pub secret: Option<ProjectedSource>,
    #[serde(rename = "downwardAPI")]
    pub downward_api: Option<DownwardApiSource>,
    pub service_account: Option<ServiceAccountSource>,
    pub sysprep: Option<SysprepSource>,
}

/// `sysprep`: a ConfigMap or Secret holding `autounattend.xml` or
/// `unattend.xml` for Windows setup.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SysprepSource {
    pub config_map: Option<LocalObjectReference>,
    pub secret: Option<LocalObjectReference>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LocalObjectReference {
    #[serde(default)]
    pub name: String,
}

/// `persistentVolumeClaim`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    #[serde(default)]
    pub claim_name: String,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub hotpluggable: bool,
}

/// `dataVolume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSource {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub hotpluggable: bool,
}

/// `ephemeral`: a PVC behind a copy-on-write overlay.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralSource {
    pub persistent_volume_claim: Option<PvcSource>,
}

/// `configMap` and `secret` (the Secret's name is `secretName`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectedSource {
    pub name: Option<String>,
    pub secret_name: Option<String>,
    #[serde(default)]
    pub optional: bool,
    pub volume_label: Option<String>,
}

/// `downwardAPI`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DownwardApiSource {
    pub fields: Option<Value>,
    pub volume_label: Option<String>,
}

/// `serviceAccount`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountSource {
    pub service_account_name: Option<String>,
}

/// `emptyDisk`: a blank disk for the life of the VM.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDisk {
    pub capacity: Option<Quantity>,
}

/// `cloudInitNoCloud` and `cloudInitConfigDrive`: the same fields, two of
/// cloud-init's data sources.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudInitSource {
    pub user_data: Option<String>,
    pub user_data_base64: Option<String>,
    pub network_data: Option<String>,
    pub network_data_base64: Option<String>,
    pub secret_ref: Option<serde_json::Value>,
    pub network_data_secret_ref: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostDisk {
    #[serde(default)]
    pub path: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    pub capacity: Option<Quantity>,
    pub shared: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDisk {
    #[serde(default)]
    pub image: String,
    /// The disk inside the image (KubeVirt: the one file under `/disk/`).
    pub path: Option<String>,
    pub image_pull_policy: Option<String>,
    pub image_pull_secret: Option<String>,
}

/// Volume kinds of `kubevirt.io/v1` this launcher does not implement yet, so
/// that their error says "not supported yet" rather than "unknown field".
pub const UNSUPPORTED_VOLUME_KINDS: &[&str] = &["downwardMetrics", "memoryDump"];
