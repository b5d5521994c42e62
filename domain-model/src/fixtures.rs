//! Test fixtures: the one way tests build a [`Domain`] by hand.
//!
//! [`domain`] is the tiny test guest (direct kernel boot, serial console,
//! nothing else); tests change what they are about with the `with_*` methods
//! or by setting fields, so each test shows only what differs. Compiled for
//! this crate's own tests and, for other crates, behind the `fixtures` cargo
//! feature (enabled from their `[dev-dependencies]`).

use crate::{
    Architecture, Boot, Cpu, CpuFeature, CpuFeaturePolicy, CpuModel, Devices, Disk, DiskBus,
    DiskDevice, DiskSource, Domain, Features, Firmware, Hypervisor, ImageFormat, LaunchSecurity,
    Memory, MigrationCondition,
};
use std::path::PathBuf;
use std::time::Duration;

/// The fixture's `metadata.uid`, also its SMBIOS UUID.
pub const UID: &str = "5f0c3a3e-8c1b-4a57-9d7e-0a0b0c0d0e0f";

/// Guest memory of [`domain`]: 64 MiB.
pub const GUEST_MEMORY: u64 = 64 << 20;

/// The tiny test guest `default/tiny` under Cloud Hypervisor: one vCPU
/// (host-model), 64 MiB, direct kernel boot of `/images/guest.elf`, a serial
/// console, ACPI, no disks, live migratable, 30 s grace period.
pub fn domain() -> Domain {
    Domain {
        name: "tiny".into(),
        namespace: "default".into(),
        uid: UID.into(),
        hypervisor: Hypervisor::CloudHypervisor,
        architecture: Architecture::Amd64,
        cpu: Cpu {
            sockets: 1,
            cores: 1,
            threads: 1,
            max_sockets: 1,
            model: CpuModel::HostModel,
            features: Vec::new(),
            dedicated: false,
        },
        memory: Memory {
            guest: GUEST_MEMORY,
            max_guest: None,
            hugepage_size: None,
        },
        firmware: Firmware {
            uuid: UID.into(),
            serial: None,
        },
        boot: kernel_boot("/images/guest.elf"),
        disks: Vec::new(),
        devices: Devices {
            rng: false,
            serial_console: true,
            graphics: None,
            inputs: Vec::new(),
            interfaces: Vec::new(),
            filesystems: Vec::new(),
        },
        features: Features {
            acpi: true,
            smm: false,
        },
        clock: None,
        launch_security: None,
        termination_grace_period: Duration::from_secs(30),
        start_paused: false,
        live_migratable: MigrationCondition {
            live_migratable: true,
            reason: None,
            message: None,
        },
        machine_type: None,
    }
}

/// Direct kernel boot of `kernel`, without initrd or command line.
pub fn kernel_boot(kernel: impl Into<PathBuf>) -> Boot {
    Boot::Kernel {
        kernel: kernel.into(),
        initrd: None,
        cmdline: None,
        image: None,
    }
}

/// EFI boot with stateless (non-persistent) variables.
pub fn efi_boot(secure_boot: bool) -> Boot {
    Boot::Efi {
        secure_boot,
        persistent: false,
    }
}

/// A writable raw virtio disk `name`, the `index`th in the spec (the spec
/// paths of the disk and of its volume follow the index).
pub fn disk(index: usize, name: &str, path: impl Into<PathBuf>) -> Disk {
    Disk {
        spec_path: format!("spec.domain.devices.disks[{index}]"),
        name: name.into(),
        device: DiskDevice::Disk,
        bus: DiskBus::Virtio,
        readonly: false,
        serial: None,
        boot_order: None,
        options: Default::default(),
        source: DiskSource {
            spec_path: format!("spec.volumes[{index}]"),
            path: path.into(),
            format: ImageFormat::Raw,
            create_with_capacity: None,
            block_device: false,
            generated: None,
        },
    }
}

/// AMD SEV (SEV-ES with `encrypted_state`) with KubeVirt's defaults.
pub fn sev(encrypted_state: bool) -> LaunchSecurity {
    LaunchSecurity::Sev {
        encrypted_state,
        dh_cert: None,
        session: None,
        attestation: false,
    }
}

/// AMD SEV-SNP without host data.
pub fn snp() -> LaunchSecurity {
    LaunchSecurity::SevSnp { host_data: None }
}

/// Builder-style variations of a fixture [`Domain`].
impl Domain {
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Sets `metadata.uid` and the SMBIOS UUID, which KubeVirt derives from it.
    pub fn with_uid(mut self, uid: &str) -> Self {
        self.uid = uid.into();
        self.firmware.uuid = uid.into();
        self
    }

    pub fn with_hypervisor(mut self, hypervisor: Hypervisor) -> Self {
        self.hypervisor = hypervisor;
        self
    }

    pub fn with_cpu_model(mut self, model: CpuModel) -> Self {
        self.cpu.model = model;
        self
    }

    /// `spec.domain.cpu.features` as (name, policy), each at its index.
    pub fn with_cpu_features(mut self, features: &[(&str, CpuFeaturePolicy)]) -> Self {
        self.cpu.features = features
            .iter()
            .enumerate()
            .map(|(i, (name, policy))| CpuFeature {
                name: (*name).to_string(),
                policy: *policy,
                spec_path: format!("spec.domain.cpu.features[{i}]"),
            })
            .collect();
        self
    }

    pub fn with_boot(mut self, boot: Boot) -> Self {
        self.boot = boot;
        self
    }

    pub fn with_disks(mut self, disks: Vec<Disk>) -> Self {
        self.disks = disks;
        self
    }

    pub fn with_launch_security(mut self, launch_security: LaunchSecurity) -> Self {
        self.launch_security = Some(launch_security);
        self
    }

    pub fn with_smm(mut self) -> Self {
        self.features.smm = true;
        self
    }

    pub fn with_grace_period(mut self, grace: Duration) -> Self {
        self.termination_grace_period = grace;
        self
    }

    pub fn not_live_migratable(mut self) -> Self {
        self.live_migratable.live_migratable = false;
        self
    }
}

/// A virtio masquerade interface `name` on the pod network, the `index`th
/// in the spec, with KubeVirt's default addresses.
pub fn interface(index: usize, name: &str) -> crate::Interface {
    crate::Interface {
        spec_path: format!("spec.domain.devices.interfaces[{index}]"),
        name: name.to_string(),
        mac: format!("02:00:00:00:00:{:02x}", index + 1),
        model: "virtio".to_string(),
        binding: crate::Binding::Masquerade {
            cidr: "10.0.2.0/24".to_string(),
            prefix: 24,
            gateway: std::net::Ipv4Addr::new(10, 0, 2, 1),
            guest: std::net::Ipv4Addr::new(10, 0, 2, 2),
            ports: Vec::new(),
        },
        pci_address: None,
        boot_order: None,
        dhcp: crate::DhcpExtras::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::check_support;

    #[test]
    fn fixture_domain_is_supported_by_both_hypervisors() {
        for hypervisor in [Hypervisor::CloudHypervisor, Hypervisor::Libvirt] {
            let d = domain().with_hypervisor(hypervisor);
            assert_eq!(check_support(&d), Ok(()), "{hypervisor:?}");
        }
    }

    #[test]
    fn with_uid_sets_the_smbios_uuid_too() {
        let d = domain().with_uid("0d6f2b8e-3c1a-4e55-9a0b-7c2d1e4f5a6b");
        assert_eq!(d.uid, "0d6f2b8e-3c1a-4e55-9a0b-7c2d1e4f5a6b");
        assert_eq!(d.firmware.uuid, d.uid);
    }
}
