//! What each hypervisor can provide, in one table ([`Feature::support`]), and
//! the two views over it: [`check_support`] (errors for the chosen
//! hypervisor) and [`explain`] (every feature a `Domain` uses, with each
//! hypervisor's answer, for `validate --explain`).

use crate::error::SpecErrors;
use crate::{
    Architecture, Boot, ClockOffset, CpuModel, DiskBus, DiskDevice, Domain, Hypervisor,
    LaunchSecurity,
};
use serde::Serialize;

/// Every hypervisor, in the order `explain` lists them.
pub const HYPERVISORS: &[Hypervisor] = &[Hypervisor::CloudHypervisor, Hypervisor::Libvirt];

/// A capability a spec can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    VirtioDisk,
    CdromDisk,
    LunDisk,
    SataDiskBus,
    ScsiDiskBus,
    UsbDiskBus,
    CdromOnVirtioBus,
    ReadonlySataDisk,
    LunOffScsiBus,
    DiskBootOrder,
    DiskCacheWritethrough,
    DiskIoMode,
    ShareableDisk,
    DiskBlockSize,
    Virtiofs,
    DedicatedCpus,
    Rng,
    SerialConsole,
    Graphics,
    InputDevice,
    VirtioNic,
    EmulatedNic,
    NicPciAddress,
    NicBootOrder,
    HostCpuModel,
    NamedCpuModel,
    CpuFeature,
    CpuHotplug,
    MemoryHotplug,
    Hugepages,
    KernelBoot,
    EfiBoot,
    EfiSecureBoot,
    EfiPersistentVars,
    BiosBoot,
    Smm,
    AcpiDisabled,
    ClockOffset,
    ClockTimers,
    Arm64,
    S390x,
    Sev,
    SevEs,
    SevSnp,
    Tdx,
    TdxMemoryHotplug,
    SevMemoryHotplug,
    SecureExecution,
    /// A machine type outside the architecture's modern family (`pc`,
    /// `pc-i440fx-*` on amd64).
    OtherMachineType,
}

impl Feature {
    /// How an error names the feature, and whether that name is plural.
    pub fn noun(self) -> (&'static str, bool) {
        use Feature::*;
        match self {
            VirtioDisk => ("virtio disks", true),
            CdromDisk => ("cdrom disks", true),
            LunDisk => ("lun disks", true),
            SataDiskBus => ("the sata disk bus", false),
            ScsiDiskBus => ("the scsi disk bus", false),
            UsbDiskBus => ("the usb disk bus", false),
            CdromOnVirtioBus => ("a cdrom on the virtio bus", false),
            ReadonlySataDisk => ("a read-only sata disk", false),
            LunOffScsiBus => ("a lun on a bus other than scsi", false),
            DiskBootOrder => ("disk boot order", false),
            DiskCacheWritethrough => ("the writethrough disk cache", false),
            DiskIoMode => ("choosing a disk's I/O mode (io)", false),
            ShareableDisk => ("shareable disks", true),
            DiskBlockSize => ("custom disk block sizes", true),
            Virtiofs => ("virtio-fs filesystems", true),
            DedicatedCpus => ("dedicated CPU placement", false),
            Rng => ("the virtio RNG device", false),
            SerialConsole => ("the serial console", false),
            Graphics => ("graphics (VNC) devices", true),
            InputDevice => ("input devices", true),
            VirtioNic => ("virtio network interfaces", true),
            EmulatedNic => ("an emulated network interface", false),
            NicPciAddress => ("a network interface's PCI address", false),
            NicBootOrder => ("network boot (an interface's bootOrder)", false),
            HostCpuModel => ("the host CPU model", false),
            NamedCpuModel => ("a named CPU model", false),
            CpuFeature => ("a CPU feature policy", false),
            CpuHotplug => ("CPU hotplug", false),
            MemoryHotplug => ("memory hotplug", false),
            Hugepages => ("hugepages", true),
            KernelBoot => ("direct kernel boot", false),
            EfiBoot => ("EFI boot", false),
            EfiSecureBoot => ("EFI secure boot", false),
            EfiPersistentVars => ("persistent EFI variables", true),
            BiosBoot => ("BIOS boot", false),
            Smm => ("SMM", false),
            AcpiDisabled => ("turning ACPI off", false),
            ClockOffset => ("a guest clock offset or timezone", false),
            ClockTimers => ("timer configuration", false),
            Arm64 => ("the arm64 architecture", false),
            S390x => ("the s390x architecture", false),
            Sev => ("AMD SEV", false),
            SevEs => ("AMD SEV-ES", false),
            SevSnp => ("AMD SEV-SNP", false),
            Tdx => ("Intel TDX", false),
            TdxMemoryHotplug => ("memory hotplug with TDX", false),
            SevMemoryHotplug => ("memory hotplug with SEV", false),
            SecureExecution => ("IBM Z Secure Execution", false),
            OtherMachineType => ("this machine type", false),
        }
    }

    /// The table: `Err(reason)` when `hypervisor` cannot provide the feature.
    pub fn support(self, hypervisor: Hypervisor) -> Result<(), &'static str> {
        use Feature::*;
        match hypervisor {
            Hypervisor::Libvirt => match self {
                CdromOnVirtioBus => {
                    Err("QEMU cannot attach a cdrom to the virtio bus; use sata or scsi")
                }
                ReadonlySataDisk => {
                    Err("QEMU cannot make a sata disk read-only; use virtio or scsi, or a cdrom")
                }
                LunOffScsiBus => Err("a LUN needs the scsi bus"),
                DedicatedCpus => Err(
                    "vCPU pinning from the pod's cpuset is built for Cloud Hypervisor only so far",
                ),
                Virtiofs => Err(
                    "the launcher runs virtiofsd for Cloud Hypervisor only so far; libvirt's \
                     own virtiofsd handling is not wired up",
                ),
                TdxMemoryHotplug | SevMemoryHotplug => Err(
                    "memory hotplug (virtio-mem) does not work with encrypted guest memory: \
                     QEMU cannot discard it",
                ),
                _ => Ok(()),
            },
            Hypervisor::CloudHypervisor => match self {
                CdromDisk | LunDisk | SataDiskBus | ScsiDiskBus | UsbDiskBus => {
                    Err("Cloud Hypervisor has only virtio-blk disks")
                }
                Graphics => Err("Cloud Hypervisor has no graphics devices"),
                InputDevice => Err("Cloud Hypervisor has no input devices"),
                EmulatedNic => Err("Cloud Hypervisor has only virtio-net interfaces"),
                NicPciAddress => Err("Cloud Hypervisor places its PCI devices itself"),
                NicBootOrder => Err("Cloud Hypervisor's firmware has no network boot (PXE)"),
                NamedCpuModel => Err("Cloud Hypervisor always gives the guest the host CPU"),
                EfiSecureBoot => Err("Cloud Hypervisor's EFI firmware has no secure boot"),
                EfiPersistentVars => Err("Cloud Hypervisor has no persistent EFI variable store"),
                Smm => Err("Cloud Hypervisor does not emulate SMM"),
                AcpiDisabled => Err("Cloud Hypervisor always exposes ACPI"),
                ClockOffset | ClockTimers => {
                    Err("Cloud Hypervisor's guest clock and timers are fixed")
                }
                S390x | SecureExecution => Err("Cloud Hypervisor does not run on s390x"),
                OtherMachineType => Err(
                    "Cloud Hypervisor has one machine, a modern PCIe one that KubeVirt's \
                     q35 (amd64) or virt (arm64) stands for; it emulates no other",
                ),
                Sev | SevEs => Err("Cloud Hypervisor supports SEV-SNP but not SEV or SEV-ES"),
                TdxMemoryHotplug => Err("Cloud Hypervisor TDX guests cannot hotplug memory"),
                // CH has no boot order of its own, but its firmware tries the
                // disks in PCI order, which the translation sorts by bootOrder.
                DiskBootOrder => Ok(()),
                DiskCacheWritethrough => Err(
                    "Cloud Hypervisor has the host page cache (writeback, its default) or \
                     O_DIRECT (cache: none), no writethrough",
                ),
                DiskIoMode => Err(
                    "Cloud Hypervisor picks its own asynchronous I/O engine (io_uring or AIO)",
                ),
                ShareableDisk => Err(
                    "Cloud Hypervisor locks each disk image for one VM; it cannot share one",
                ),
                DiskBlockSize => Err("Cloud Hypervisor has no per-disk block size setting"),
                // Refused through their parts (cdrom, lun, sata) already.
                CdromOnVirtioBus | ReadonlySataDisk | LunOffScsiBus => Ok(()),
                // Which policies hold depends on the feature and on what the
                // host's KVM offers: checked when the VM is translated.
                CpuFeature => Ok(()),
                VirtioDisk | Rng | SerialConsole | HostCpuModel | CpuHotplug | MemoryHotplug
                | Hugepages | KernelBoot | EfiBoot | Arm64 | SevSnp | Tdx | SevMemoryHotplug | VirtioNic
                | Virtiofs
                | DedicatedCpus
                // rust-hypervisor-firmware boots the disk (see the firmware crate).
                | BiosBoot => {
                    Ok(())
                }
            },
        }
    }
}

/// One feature a `Domain` uses, where, and what each hypervisor says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeatureSupport {
    pub feature: Feature,
    /// How the feature is named in messages, e.g. `cdrom disks`.
    pub label: String,
    pub spec_path: String,
    pub hypervisors: Vec<HypervisorSupport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HypervisorSupport {
    pub hypervisor: Hypervisor,
    pub supported: bool,
    /// Why not, when not supported.
    pub reason: Option<String>,
}

impl FeatureSupport {
    pub fn supported_by(&self, hypervisor: Hypervisor) -> bool {
        self.hypervisors
            .iter()
            .any(|h| h.hypervisor == hypervisor && h.supported)
    }

    fn error_message(&self, hypervisor: Hypervisor) -> String {
        let (_, plural) = self.feature.noun();
        let verb = if plural { "are" } else { "is" };
        let reason = self
            .hypervisors
            .iter()
            .find(|h| h.hypervisor == hypervisor)
            .and_then(|h| h.reason.as_deref());
        match reason {
            Some(why) => format!("{} {verb} not supported by {hypervisor}: {why}", self.label),
            None => format!("{} {verb} not supported by {hypervisor}", self.label),
        }
    }
}

struct Use {
    feature: Feature,
    label: Option<String>,
    spec_path: String,
}

fn uses(domain: &Domain) -> Vec<Use> {
    let mut out = Vec::new();
    let mut add = |feature: Feature, spec_path: String| {
        out.push(Use {
            feature,
            label: None,
            spec_path,
        })
    };
    let d = domain;
    if !d.machine_is_default_family() {
        add(Feature::OtherMachineType, "spec.domain.machine.type".into());
    }
    match d.architecture {
        Architecture::Amd64 => {}
        Architecture::Arm64 => add(Feature::Arm64, "spec.architecture".into()),
        Architecture::S390x => add(Feature::S390x, "spec.architecture".into()),
    }
    let cpu_model_path = "spec.domain.cpu.model".to_string();
    let mut named_model = None;
    match &d.cpu.model {
        CpuModel::HostModel | CpuModel::HostPassthrough => {
            add(Feature::HostCpuModel, cpu_model_path)
        }
        CpuModel::Named(name) => named_model = Some(name.clone()),
    }
    let cpu_features: Vec<Use> = d
        .cpu
        .features
        .iter()
        .map(|f| Use {
            feature: Feature::CpuFeature,
            label: Some(format!("CPU feature {:?} with policy {}", f.name, f.policy)),
            spec_path: f.spec_path.clone(),
        })
        .collect();
    let tdx = matches!(d.launch_security, Some(LaunchSecurity::Tdx));
    if d.cpu.max_sockets > d.cpu.sockets {
        add(Feature::CpuHotplug, "spec.domain.cpu.maxSockets".into());
    }
    if d.memory.max_guest.is_some() {
        add(Feature::MemoryHotplug, "spec.domain.memory.maxGuest".into());
        let grows = d.memory.max_guest.is_some_and(|max| max > d.memory.guest);
        if grows && tdx {
            add(
                Feature::TdxMemoryHotplug,
                "spec.domain.memory.maxGuest".into(),
            );
        }
        if grows
            && matches!(
                d.launch_security,
                Some(LaunchSecurity::Sev { .. } | LaunchSecurity::SevSnp { .. })
            )
        {
            add(
                Feature::SevMemoryHotplug,
                "spec.domain.memory.maxGuest".into(),
            );
        }
    }
    if d.memory.hugepage_size.is_some() {
        add(
            Feature::Hugepages,
            "spec.domain.memory.hugepages.pageSize".into(),
        );
    }
    let fw = "spec.domain.firmware";
    match &d.boot {
        Boot::Kernel { .. } => add(Feature::KernelBoot, format!("{fw}.kernelBoot")),
        Boot::Efi {
            secure_boot,
            persistent,
        } => {
            add(Feature::EfiBoot, format!("{fw}.bootloader.efi"));
            if *secure_boot {
                add(
                    Feature::EfiSecureBoot,
                    format!("{fw}.bootloader.efi.secureBoot"),
                );
            }
            if *persistent {
                add(
                    Feature::EfiPersistentVars,
                    format!("{fw}.bootloader.efi.persistent"),
                );
            }
        }
        Boot::Bios => add(Feature::BiosBoot, format!("{fw}.bootloader")),
    }
    if d.features.smm {
        add(Feature::Smm, "spec.domain.features.smm".into());
    }
    // s390x has no ACPI at all: off is its default, not a request.
    if !d.features.acpi && d.architecture != Architecture::S390x {
        add(Feature::AcpiDisabled, "spec.domain.features.acpi".into());
    }
    if let Some(clock) = &d.clock {
        let field = match &clock.offset {
            ClockOffset::Utc {
                adjustment_seconds: 0,
            } => None,
            ClockOffset::Utc { .. } => Some("utc.offsetSeconds"),
            ClockOffset::Timezone { .. } => Some("timezone"),
        };
        if let Some(field) = field {
            add(Feature::ClockOffset, format!("{}.{field}", clock.spec_path));
        }
        if !clock.timers.is_empty() {
            add(Feature::ClockTimers, format!("{}.timer", clock.spec_path));
        }
    }
    for disk in &d.disks {
        let (feature, key) = match disk.device {
            DiskDevice::Disk => (None, "disk"),
            DiskDevice::Cdrom => (Some(Feature::CdromDisk), "cdrom"),
            DiskDevice::Lun => (Some(Feature::LunDisk), "lun"),
        };
        match feature {
            Some(f) => {
                add(f, format!("{}.{key}", disk.spec_path));
                if disk.device == DiskDevice::Cdrom && disk.bus == DiskBus::Virtio {
                    add(
                        Feature::CdromOnVirtioBus,
                        format!("{}.cdrom.bus", disk.spec_path),
                    );
                }
                if disk.device == DiskDevice::Lun && disk.bus != DiskBus::Scsi {
                    add(
                        Feature::LunOffScsiBus,
                        format!("{}.lun.bus", disk.spec_path),
                    );
                }
            }
            // A cdrom or lun is refused as a whole; its bus adds nothing.
            None => match disk.bus {
                DiskBus::Virtio => add(Feature::VirtioDisk, format!("{}.disk", disk.spec_path)),
                DiskBus::Sata => add(Feature::SataDiskBus, format!("{}.disk.bus", disk.spec_path)),
                DiskBus::Scsi => add(Feature::ScsiDiskBus, format!("{}.disk.bus", disk.spec_path)),
                DiskBus::Usb => add(Feature::UsbDiskBus, format!("{}.disk.bus", disk.spec_path)),
            },
        }
        if disk.device == DiskDevice::Disk && disk.readonly && disk.bus == DiskBus::Sata {
            add(
                Feature::ReadonlySataDisk,
                format!("{}.disk.readonly", disk.spec_path),
            );
        }
        if disk.boot_order.is_some() {
            add(
                Feature::DiskBootOrder,
                format!("{}.bootOrder", disk.spec_path),
            );
        }
        if disk.options.cache.as_deref() == Some("writethrough") {
            add(
                Feature::DiskCacheWritethrough,
                format!("{}.cache", disk.spec_path),
            );
        }
        if disk.options.io.is_some() {
            add(Feature::DiskIoMode, format!("{}.io", disk.spec_path));
        }
        if disk.options.shareable {
            add(
                Feature::ShareableDisk,
                format!("{}.shareable", disk.spec_path),
            );
        }
        if disk.options.block_size.is_some() {
            add(
                Feature::DiskBlockSize,
                format!("{}.blockSize", disk.spec_path),
            );
        }
    }
    if d.cpu.dedicated {
        add(
            Feature::DedicatedCpus,
            "spec.domain.cpu.dedicatedCpuPlacement".into(),
        );
    }
    for fs in &d.devices.filesystems {
        add(Feature::Virtiofs, format!("{}.virtiofs", fs.spec_path));
    }
    if d.devices.rng {
        add(Feature::Rng, "spec.domain.devices.rng".into());
    }
    if d.devices.serial_console {
        add(
            Feature::SerialConsole,
            "spec.domain.devices.autoattachSerialConsole".into(),
        );
    }
    if let Some(g) = &d.devices.graphics {
        add(Feature::Graphics, g.spec_path.clone());
    }
    for input in &d.devices.inputs {
        add(Feature::InputDevice, input.spec_path.clone());
    }
    let mut emulated = Vec::new();
    for nic in &d.devices.interfaces {
        if nic.model == "virtio" {
            add(Feature::VirtioNic, nic.spec_path.clone());
        } else {
            emulated.push(nic.clone());
        }
        if nic.pci_address.is_some() {
            add(
                Feature::NicPciAddress,
                format!("{}.pciAddress", nic.spec_path),
            );
        }
        if nic.boot_order.is_some() {
            add(
                Feature::NicBootOrder,
                format!("{}.bootOrder", nic.spec_path),
            );
        }
    }
    let ls = "spec.domain.launchSecurity";
    match &d.launch_security {
        None => {}
        Some(LaunchSecurity::Sev {
            encrypted_state: false,
            ..
        }) => add(Feature::Sev, format!("{ls}.sev")),
        Some(LaunchSecurity::Sev {
            encrypted_state: true,
            ..
        }) => add(Feature::SevEs, format!("{ls}.sev.policy.encryptedState")),
        Some(LaunchSecurity::SevSnp { .. }) => add(Feature::SevSnp, ls.into()),
        Some(LaunchSecurity::Tdx) => add(Feature::Tdx, format!("{ls}.tdx")),
        Some(LaunchSecurity::SecureExecution) => add(Feature::SecureExecution, ls.into()),
    }
    if let Some(name) = named_model {
        out.push(Use {
            feature: Feature::NamedCpuModel,
            label: Some(format!("CPU model {name:?}")),
            spec_path: "spec.domain.cpu.model".into(),
        });
    }
    out.extend(cpu_features);
    for nic in emulated {
        out.push(Use {
            feature: Feature::EmulatedNic,
            label: Some(format!("emulated network interface model {:?}", nic.model)),
            spec_path: format!("{}.model", nic.spec_path),
        });
    }
    out
}

/// Every feature `domain` uses, with each hypervisor's support.
pub fn explain(domain: &Domain) -> Vec<FeatureSupport> {
    uses(domain)
        .into_iter()
        .map(|u| FeatureSupport {
            feature: u.feature,
            label: u.label.unwrap_or_else(|| u.feature.noun().0.to_string()),
            spec_path: u.spec_path,
            hypervisors: HYPERVISORS
                .iter()
                .map(|&h| match u.feature.support(h) {
                    Ok(()) => HypervisorSupport {
                        hypervisor: h,
                        supported: true,
                        reason: None,
                    },
                    Err(reason) => HypervisorSupport {
                        hypervisor: h,
                        supported: false,
                        reason: Some(reason.to_string()),
                    },
                })
                .collect(),
        })
        .collect()
}

/// Every feature of `domain` that `domain.hypervisor` cannot provide, each as
/// an error naming the field, the feature and the hypervisor.
pub fn check_support(domain: &Domain) -> Result<(), SpecErrors> {
    let mut errors = SpecErrors::default();
    for f in explain(domain) {
        if !f.supported_by(domain.hypervisor) {
            errors.push(f.spec_path.clone(), f.error_message(domain.hypervisor));
        }
    }
    errors.into_result(())
}
