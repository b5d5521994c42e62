//! What Cloud Hypervisor refuses, each with the field path, the feature and
//! the hypervisor; libvirt takes the same specs.

mod common;

use common::{ok, Fixture};
use domain_model::support::{explain, Feature};
use domain_model::{check_support, Hypervisor};
use serde_json::json;

/// A spec that Cloud Hypervisor can run: kernel boot, virtio disk, rng.
fn ch_base() -> serde_json::Value {
    json!({"spec": {"hypervisor": "cloud-hypervisor", "domain": {
        "firmware": {"kernelBoot": {"container": {"kernelPath": "vmlinuz"}}},
        "devices": {"rng": {}, "disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}}]}},
        "volumes": [{"name": "rootdisk", "containerDisk": {"image": "i"}}]}})
}

fn with(patch: serde_json::Value) -> serde_json::Value {
    let mut v = ch_base();
    common::merge(&mut v, &patch);
    v
}

#[test]
fn a_virtio_kernel_boot_spec_is_supported_by_cloud_hypervisor() {
    let f = Fixture::new();
    let mut d = ok(f.resolve(ch_base()));
    assert_eq!(check_support(&d), Ok(()));
    d.hypervisor = Hypervisor::Libvirt;
    assert_eq!(check_support(&d), Ok(()));
}

#[test]
fn cloud_hypervisor_refuses_each_unsupported_feature_by_path() {
    let f = Fixture::new();
    let disk = |d: serde_json::Value| json!({"spec": {"domain": {"devices": {"disks": [d]}}}});
    let efi = |e: serde_json::Value| json!({"spec": {"domain": {"firmware": {"kernelBoot": null, "bootloader": {"efi": e}}}}});
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (
            disk(json!({"name": "rootdisk", "disk": null, "cdrom": {}})),
            "spec.domain.devices.disks[0].cdrom",
            "cdrom disks are not supported by cloud-hypervisor",
        ),
        (
            disk(json!({"name": "rootdisk", "disk": {"bus": "sata"}})),
            "spec.domain.devices.disks[0].disk.bus",
            "the sata disk bus is not supported by cloud-hypervisor",
        ),
        (
            disk(json!({"name": "rootdisk", "disk": {"bus": "scsi"}})),
            "spec.domain.devices.disks[0].disk.bus",
            "the scsi disk bus is not supported by cloud-hypervisor",
        ),
        (
            disk(json!({"name": "rootdisk", "disk": {"bus": "usb"}})),
            "spec.domain.devices.disks[0].disk.bus",
            "the usb disk bus is not supported by cloud-hypervisor",
        ),
        (
            json!({"spec": {"domain": {"devices": {"autoattachGraphicsDevice": true}}}}),
            "spec.domain.devices.autoattachGraphicsDevice",
            "graphics (VNC) devices are not supported by cloud-hypervisor",
        ),
        (
            json!({"spec": {"domain": {"devices": {"inputs": [{"name": "t", "type": "tablet"}]}}}}),
            "spec.domain.devices.inputs[0]",
            "input devices are not supported by cloud-hypervisor",
        ),
        (
            json!({"spec": {"domain": {"cpu": {"model": "Skylake-Server"}}}}),
            "spec.domain.cpu.model",
            "CPU model \"Skylake-Server\" is not supported by cloud-hypervisor",
        ),
        (
            json!({"spec": {"domain": {"clock": {"timezone": "Europe/Berlin"}}}}),
            "spec.domain.clock.timezone",
            "a guest clock offset or timezone is not supported by cloud-hypervisor",
        ),
        (
            json!({"spec": {"domain": {"clock": {"utc": {"offsetSeconds": 60}}}}}),
            "spec.domain.clock.utc.offsetSeconds",
            "a guest clock offset or timezone is not supported by cloud-hypervisor",
        ),
        (
            json!({"spec": {"domain": {"clock": {"timer": {"hpet": {"present": false}}}}}}),
            "spec.domain.clock.timer",
            "timer configuration is not supported by cloud-hypervisor",
        ),
        (
            json!({"spec": {"domain": {"features": {"smm": {}}}}}),
            "spec.domain.features.smm",
            "SMM is not supported by cloud-hypervisor",
        ),
        (
            json!({"spec": {"domain": {"features": {"acpi": {"enabled": false}}}}}),
            "spec.domain.features.acpi",
            "turning ACPI off is not supported by cloud-hypervisor",
        ),
        (
            efi(json!({"secureBoot": false, "persistent": true})),
            "spec.domain.firmware.bootloader.efi.persistent",
            "persistent EFI variables are not supported by cloud-hypervisor",
        ),
        (
            json!({"spec": {"architecture": "s390x", "domain": {"cpu": {"model": "host-model"}}}}),
            "spec.architecture",
            "the s390x architecture is not supported by cloud-hypervisor",
        ),
        (
            json!({"spec": {"domain": {"launchSecurity": {"sev": {}}, "firmware": {"kernelBoot": null, "bootloader": {"efi": {"secureBoot": false}}}}}}),
            "spec.domain.launchSecurity.sev",
            "AMD SEV is not supported by cloud-hypervisor",
        ),
        (
            json!({"spec": {"domain": {"launchSecurity": {"sev": {"policy": {"encryptedState": true}}}, "firmware": {"kernelBoot": null, "bootloader": {"efi": {"secureBoot": false}}}}}}),
            "spec.domain.launchSecurity.sev.policy.encryptedState",
            "AMD SEV-ES is not supported by cloud-hypervisor",
        ),
    ];
    for (patch, path, message) in cases {
        let d = ok(f.resolve(with(patch.clone())));
        let e = check_support(&d).expect_err(path);
        let got: Vec<String> = e.0.iter().map(|x| x.to_string()).collect();
        assert_eq!(got.len(), 1, "patch {patch}: {got:?}");
        // The table's reason follows the message.
        assert!(
            got[0].starts_with(&format!("{path}: {message}: ")),
            "patch {patch}: {got:?}"
        );
        let mut on_libvirt = d.clone();
        on_libvirt.hypervisor = Hypervisor::Libvirt;
        assert_eq!(check_support(&on_libvirt), Ok(()), "libvirt refused {path}");
    }
}

#[test]
fn efi_secure_boot_on_cloud_hypervisor_names_secure_boot_and_the_smm_it_needs() {
    let f = Fixture::new();
    let d = ok(
        f.resolve(with(json!({"spec": {"domain": {"features": {"smm": {}},
        "firmware": {"kernelBoot": null, "bootloader": {"efi": {}}}}}}))),
    );
    let got: Vec<String> = check_support(&d)
        .unwrap_err()
        .0
        .iter()
        .map(|x| x.to_string())
        .collect();
    assert_eq!(
        got,
        vec![
            "spec.domain.firmware.bootloader.efi.secureBoot: EFI secure boot is not supported by \
             cloud-hypervisor: Cloud Hypervisor's EFI firmware has no secure boot",
            "spec.domain.features.smm: SMM is not supported by cloud-hypervisor: Cloud Hypervisor \
             does not emulate SMM",
        ]
    );
}

#[test]
fn secure_execution_on_cloud_hypervisor_names_both_the_architecture_and_launch_security() {
    let f = Fixture::new();
    let d = ok(f.resolve(with(json!({"spec": {"architecture": "s390x",
        "domain": {"launchSecurity": {}}}}))));
    let e = check_support(&d).unwrap_err();
    let paths: Vec<&str> = e.0.iter().map(|x| x.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["spec.architecture", "spec.domain.launchSecurity"],
        "{e}"
    );
    assert!(e.0[1]
        .message
        .contains("IBM Z Secure Execution is not supported by cloud-hypervisor"));
}

#[test]
fn virtio_interfaces_run_on_both_and_what_cloud_hypervisor_lacks_is_named() {
    let f = Fixture::new();
    // Resolution leaves the backend's limits to check_support.
    let mut d = ok(f.resolve(with(
        json!({"spec": {"hypervisor": "libvirt", "domain": {"devices": {
        "autoattachGraphicsDevice": false,
        "interfaces": [
            {"name": "default", "masquerade": {}},
            {"name": "second", "masquerade": {}, "model": "e1000"},
            {"name": "third", "masquerade": {}, "pciAddress": "0000:00:09.0", "bootOrder": 2}]}},
        "networks": [{"name": "default", "pod": {}}, {"name": "second", "pod": {}},
            {"name": "third", "pod": {}}]}}),
    )));
    d.hypervisor = Hypervisor::CloudHypervisor;
    let e = check_support(&d).unwrap_err();
    let got: Vec<String> = e.0.iter().map(|x| x.to_string()).collect();
    assert_eq!(
        got,
        vec![
            "spec.domain.devices.interfaces[2].pciAddress: a network interface's PCI address is \
             not supported by cloud-hypervisor: Cloud Hypervisor places its PCI devices itself",
            "spec.domain.devices.interfaces[2].bootOrder: network boot (an interface's \
             bootOrder) is not supported by cloud-hypervisor: Cloud Hypervisor's firmware has \
             no network boot (PXE)",
            "spec.domain.devices.interfaces[1].model: emulated network interface model \
             \"e1000\" is not supported by cloud-hypervisor: Cloud Hypervisor has only \
             virtio-net interfaces",
        ]
    );
    // libvirt renders all three.
    d.hypervisor = Hypervisor::Libvirt;
    assert!(check_support(&d).is_ok());
}

#[test]
fn tdx_on_cloud_hypervisor_refuses_memory_hotplug() {
    let f = Fixture::new();
    let opts = domain_model::LoadOptions {
        feature_gates: domain_model::gates::FeatureGates::parse("WorkloadEncryptionTDX")
            .unwrap()
            .enabled(),
        ..f.opts()
    };
    let text = common::spec(with(json!({"spec": {"domain": {
        "memory": {"guest": "64Mi", "maxGuest": "128Mi"},
        "launchSecurity": {"tdx": {}},
        "firmware": {"kernelBoot": null, "bootloader": {"efi": {"secureBoot": false}}}}}})));
    let d = domain_model::resolve_str(&text, &opts).unwrap();
    let e = check_support(&d).unwrap_err();
    let got: Vec<String> = e.0.iter().map(|x| x.to_string()).collect();
    assert_eq!(
        got,
        vec![
            "spec.domain.memory.maxGuest: memory hotplug with TDX is not supported by \
             cloud-hypervisor: Cloud Hypervisor TDX guests cannot hotplug memory",
        ]
    );
}

#[test]
fn explain_lists_every_used_feature_with_each_hypervisors_answer() {
    let f = Fixture::new();
    let d = ok(f.resolve(with(
        json!({"spec": {"domain": {"cpu": {"model": "Haswell"},
        "memory": {"guest": "1Gi", "hugepages": {"pageSize": "2Mi"}}}}}),
    )));
    let table = explain(&d);
    let features: Vec<Feature> = table.iter().map(|f| f.feature).collect();
    assert_eq!(
        features,
        vec![
            Feature::Hugepages,
            Feature::KernelBoot,
            Feature::VirtioDisk,
            Feature::Rng,
            Feature::SerialConsole,
            Feature::NamedCpuModel,
        ]
    );
    let named = table.last().unwrap();
    assert_eq!(named.spec_path, "spec.domain.cpu.model");
    assert!(!named.supported_by(Hypervisor::CloudHypervisor));
    assert!(named.supported_by(Hypervisor::Libvirt));
    let ch = &named.hypervisors[0];
    assert_eq!(ch.hypervisor, Hypervisor::CloudHypervisor);
    assert!(ch.reason.as_deref().is_some_and(|r| r.contains("host CPU")));
    assert!(table[..5]
        .iter()
        .all(|f| f.supported_by(Hypervisor::CloudHypervisor)));
    // Serializable for `validate --explain --json`.
    let json = serde_json::to_value(&table).unwrap();
    assert_eq!(json[5]["feature"], "named-cpu-model");
}

#[test]
fn kubevirts_default_q35_machine_runs_on_both_backends_and_i440fx_only_on_libvirt() {
    let f = Fixture::new();
    let machine = |t: &str| with(json!({"spec": {"domain": {"machine": {"type": t}}}}));
    for t in ["q35", "pc-q35-rhel9.4.0", "pc-q35-7.2"] {
        let d = ok(f.resolve(machine(t)));
        assert_eq!(d.machine_type.as_deref(), Some(t));
        assert_eq!(check_support(&d), Ok(()), "{t} on Cloud Hypervisor");
    }
    let mut d = ok(f.resolve(machine("pc-i440fx-7.2")));
    let refused = check_support(&d).expect_err("i440fx is not Cloud Hypervisor's machine");
    assert_eq!(refused.0[0].path, "spec.domain.machine.type");
    assert!(
        refused.0[0]
            .message
            .contains("Cloud Hypervisor has one machine"),
        "{}",
        refused.0[0].message
    );
    d.hypervisor = Hypervisor::Libvirt;
    assert_eq!(check_support(&d), Ok(()));
    let bad = common::err(f.resolve(machine("q35; rm")));
    assert_eq!(common::paths(&bad), vec!["spec.domain.machine.type"]);
}

#[test]
fn disk_options_run_on_libvirt_and_cloud_hypervisor_names_what_it_lacks() {
    let f = Fixture::new();
    let mut d = ok(f.resolve(with(
        json!({"spec": {"hypervisor": "libvirt", "domain": {"devices": {
        "autoattachGraphicsDevice": false,
        "disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}, "cache": "writethrough",
            "io": "native", "shareable": true,
            "blockSize": {"custom": {"logical": 512, "physical": 4096}}}]}}}}),
    )));
    assert_eq!(d.disks[0].options.block_size, Some((512, 4096)));
    assert!(check_support(&d).is_ok(), "libvirt renders every option");
    d.hypervisor = Hypervisor::CloudHypervisor;
    let e = check_support(&d).unwrap_err();
    let got: Vec<&str> = e.0.iter().map(|x| x.path.as_str()).collect();
    assert_eq!(
        got,
        [
            "spec.domain.devices.disks[0].cache",
            "spec.domain.devices.disks[0].io",
            "spec.domain.devices.disks[0].shareable",
            "spec.domain.devices.disks[0].blockSize",
        ]
    );
    // cache: none and writeback are what CH has.
    let d = ok(f.resolve(with(json!({"spec": {"domain": {"devices": {
        "disks": [{"name": "rootdisk", "disk": {"bus": "virtio"}, "cache": "none"}]}}}}))));
    assert!(check_support(&d).is_ok());
}

#[test]
fn malformed_disk_options_name_their_field() {
    let f = Fixture::new();
    for (disk, path) in [
        (
            json!({"cache": "unsafe"}),
            "spec.domain.devices.disks[0].cache",
        ),
        (json!({"io": "uring"}), "spec.domain.devices.disks[0].io"),
        (
            json!({"blockSize": {"custom": {"logical": 4096, "physical": 512}}}),
            "spec.domain.devices.disks[0].blockSize.custom",
        ),
        (
            json!({"blockSize": {"custom": {"logical": 1000, "physical": 4096}}}),
            "spec.domain.devices.disks[0].blockSize.custom",
        ),
        (
            json!({"blockSize": {"matchVolume": {}}}),
            "spec.domain.devices.disks[0].blockSize.matchVolume",
        ),
    ] {
        let mut entry = json!({"name": "rootdisk", "disk": {"bus": "virtio"}});
        common::merge(&mut entry, &disk);
        let e = common::err(f.resolve(with(
            json!({"spec": {"domain": {"devices": {"disks": [entry]}}}}),
        )));
        assert_eq!(common::paths(&e), [path], "{e}");
    }
}
