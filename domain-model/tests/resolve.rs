//! Defaults, quantities, host paths and every validation rule of resolution,
//! each with the exact field path it reports.

mod common;

use common::{assert_only, err, ok, paths, spec, Fixture};
use domain_model::resolve::derived_uid;
use domain_model::{
    resolve_str, Architecture, Boot, ClockOffset, CpuModel, DiskBus, DiskDevice, Hypervisor,
    ImageFormat, InputBus, InputKind, LoadOptions, TickPolicy, Timer, TimerName, TimerTrack,
};
use serde_json::json;

#[test]
fn minimal_spec_gets_kubevirt_defaults() {
    let f = Fixture::new();
    let d = ok(f.resolve(json!({})));
    assert_eq!(d.namespace, "default");
    assert_eq!(d.uid, derived_uid("default", "testvm"));
    assert_eq!(d.firmware.uuid, d.uid, "firmware UUID defaults to the uid");
    assert_eq!(d.hypervisor, Hypervisor::Libvirt);
    assert_eq!(d.architecture, Architecture::Amd64);
    assert_eq!(
        (d.cpu.sockets, d.cpu.cores, d.cpu.threads, d.cpu.max_sockets),
        (1, 1, 1, 1)
    );
    assert_eq!(d.cpu.model, CpuModel::HostModel);
    assert_eq!(d.memory.guest, 64 << 20);
    assert_eq!(d.memory.max_guest, None);
    assert_eq!(d.boot, Boot::Bios);
    assert!(d.features.acpi);
    assert!(!d.features.smm);
    assert!(d.devices.serial_console);
    assert!(!d.devices.rng);
    assert_eq!(
        d.devices.graphics.as_ref().map(|g| g.kind.as_str()),
        Some("vnc")
    );
    assert_eq!(d.termination_grace_period.as_secs(), 30);
    assert!(!d.start_paused);
    assert!(d.live_migratable.live_migratable);
    assert!(d.launch_security.is_none());
}

#[test]
fn derived_uid_is_stable_and_depends_on_namespace_and_name() {
    let a = derived_uid("default", "vm");
    assert_eq!(a, derived_uid("default", "vm"));
    assert_ne!(a, derived_uid("other", "vm"));
    assert_ne!(a, derived_uid("default", "vm2"));
    assert_eq!(
        uuid::Uuid::parse_str(&a).map(|u| u.get_version_num()),
        Ok(5)
    );
    let f = Fixture::new();
    let d = ok(f.resolve(json!({"metadata": {"namespace": "ns1"}})));
    assert_eq!(d.uid, derived_uid("ns1", "testvm"));
}

#[test]
fn explicit_metadata_uid_and_firmware_uuid_are_kept() {
    let f = Fixture::new();
    let uid = "0b7c5a4e-1b8e-4a57-9c1c-6d3f0f0c2a11";
    let d = ok(f.resolve(json!({"metadata": {"uid": uid}})));
    assert_eq!((d.uid.as_str(), d.firmware.uuid.as_str()), (uid, uid));
    let fw = "5d307ca9-b3ef-428c-8861-06e72d69f223";
    let d = ok(f.resolve(json!({"metadata": {"uid": uid},
        "spec": {"domain": {"firmware": {"uuid": fw, "serial": "abc"}}}})));
    assert_eq!(d.firmware.uuid, fw);
    assert_eq!(d.firmware.serial.as_deref(), Some("abc"));
}

#[test]
fn defaults_table() {
    let f = Fixture::new();
    type Check = fn(&domain_model::Domain) -> bool;
    let cases: Vec<(&str, serde_json::Value, Check)> = vec![
        (
            "hypervisor from spec",
            json!({"spec": {"hypervisor": "cloud-hypervisor"}}),
            |d| d.hypervisor == Hypervisor::CloudHypervisor && d.devices.graphics.is_none(),
        ),
        (
            "arm64 defaults to host-passthrough",
            json!({"spec": {"architecture": "arm64"}}),
            |d| d.architecture == Architecture::Arm64 && d.cpu.model == CpuModel::HostPassthrough,
        ),
        ("s390x", json!({"spec": {"architecture": "s390x"}}), |d| {
            d.architecture == Architecture::S390x
        }),
        (
            "named cpu model",
            json!({"spec": {"domain": {"cpu": {"model": "Skylake-Server"}}}}),
            |d| d.cpu.model == CpuModel::Named("Skylake-Server".into()),
        ),
        (
            "host-passthrough",
            json!({"spec": {"domain": {"cpu": {"model": "host-passthrough"}}}}),
            |d| d.cpu.model == CpuModel::HostPassthrough,
        ),
        (
            "topology",
            json!({"spec": {"domain": {"cpu": {"sockets": 2, "cores": 3, "threads": 2, "maxSockets": 4}}}}),
            |d| d.cpu.vcpus() == 12 && d.cpu.max_vcpus() == 24,
        ),
        (
            "cores only",
            json!({"spec": {"domain": {"cpu": {"cores": 4}}}}),
            |d| (d.cpu.sockets, d.cpu.cores, d.cpu.threads) == (1, 4, 1),
        ),
        (
            "vcpus from cpu limits",
            json!({"spec": {"domain": {"resources": {"limits": {"cpu": "3"}, "requests": {"cpu": "1"}}}}}),
            |d| d.cpu.sockets == 3,
        ),
        (
            "vcpus from cpu requests rounded up",
            json!({"spec": {"domain": {"resources": {"requests": {"cpu": "1500m"}}}}}),
            |d| d.cpu.sockets == 2,
        ),
        (
            "memory from requests",
            json!({"spec": {"domain": {"memory": null, "resources": {"requests": {"memory": "1Gi"}}}}}),
            |d| d.memory.guest == 1 << 30,
        ),
        (
            "memory from limits",
            json!({"spec": {"domain": {"memory": null, "resources": {"limits": {"memory": "512M"}}}}}),
            |d| d.memory.guest == 512_000_000,
        ),
        (
            "memory.guest wins over requests",
            json!({"spec": {"domain": {"memory": {"guest": "1Gi"}, "resources": {"requests": {"memory": "2Gi"}}}}}),
            |d| d.memory.guest == 1 << 30,
        ),
        (
            "plain byte memory",
            json!({"spec": {"domain": {"memory": {"guest": 67108864}}}}),
            |d| d.memory.guest == 64 << 20,
        ),
        (
            "maxGuest",
            json!({"spec": {"domain": {"memory": {"guest": "1Gi", "maxGuest": "4Gi"}}}}),
            |d| d.memory.max_guest == Some(4 << 30),
        ),
        (
            "maxGuest equal to guest is no hotplug",
            json!({"spec": {"domain": {"memory": {"guest": "1Gi", "maxGuest": "1Gi"}}}}),
            |d| d.memory.max_guest.is_none(),
        ),
        (
            "hugepages",
            json!({"spec": {"domain": {"memory": {"guest": "1Gi", "hugepages": {"pageSize": "2Mi"}}}}}),
            |d| d.memory.hugepage_size == Some(2 << 20),
        ),
        (
            "efi defaults to secure boot",
            json!({"spec": {"domain": {"features": {"smm": {}}, "firmware": {"bootloader": {"efi": {}}}}}}),
            |d| {
                d.boot
                    == Boot::Efi {
                        secure_boot: true,
                        persistent: false,
                    }
                    && d.features.smm
            },
        ),
        (
            "efi without secure boot",
            json!({"spec": {"domain": {"firmware": {"bootloader": {"efi": {"secureBoot": false, "persistent": true}}}}}}),
            |d| {
                d.boot
                    == Boot::Efi {
                        secure_boot: false,
                        persistent: true,
                    }
            },
        ),
        (
            "explicit bios",
            json!({"spec": {"domain": {"firmware": {"bootloader": {"bios": {}}}}}}),
            |d| d.boot == Boot::Bios,
        ),
        (
            "acpi off",
            json!({"spec": {"domain": {"features": {"acpi": {"enabled": false}}}}}),
            |d| !d.features.acpi,
        ),
        (
            "acpi on when features given without it",
            json!({"spec": {"domain": {"features": {"smm": {"enabled": false}}}}}),
            |d| d.features.acpi && !d.features.smm,
        ),
        (
            "serial console off",
            json!({"spec": {"domain": {"devices": {"autoattachSerialConsole": false}}}}),
            |d| !d.devices.serial_console,
        ),
        (
            "graphics off",
            json!({"spec": {"domain": {"devices": {"autoattachGraphicsDevice": false}}}}),
            |d| d.devices.graphics.is_none(),
        ),
        (
            "graphics asked on cloud-hypervisor",
            json!({"spec": {"hypervisor": "cloud-hypervisor", "domain": {"devices": {"autoattachGraphicsDevice": true}}}}),
            |d| d.devices.graphics.is_some(),
        ),
        (
            "rng",
            json!({"spec": {"domain": {"devices": {"rng": {}}}}}),
            |d| d.devices.rng,
        ),
        (
            "tablet input",
            json!({"spec": {"domain": {"devices": {"inputs": [{"name": "t", "type": "tablet"}]}}}}),
            |d| {
                d.devices.inputs.len() == 1
                    && d.devices.inputs[0].kind == InputKind::Tablet
                    && d.devices.inputs[0].bus == InputBus::Usb
                    && d.devices.inputs[0].spec_path == "spec.domain.devices.inputs[0]"
            },
        ),
        (
            "paused start",
            json!({"spec": {"startStrategy": "Paused"}}),
            |d| d.start_paused,
        ),
        (
            "grace period",
            json!({"spec": {"terminationGracePeriodSeconds": 5}}),
            |d| d.termination_grace_period.as_secs() == 5,
        ),
        (
            "utc clock",
            json!({"spec": {"domain": {"clock": {"utc": {}}}}}),
            |d| {
                d.clock.as_ref().is_some_and(|c| {
                    c.offset
                        == ClockOffset::Utc {
                            adjustment_seconds: 0,
                        }
                        && c.timers.is_empty()
                })
            },
        ),
        (
            "utc offset",
            json!({"spec": {"domain": {"clock": {"utc": {"offsetSeconds": 3600}}}}}),
            |d| {
                d.clock.as_ref().is_some_and(|c| {
                    c.offset
                        == ClockOffset::Utc {
                            adjustment_seconds: 3600,
                        }
                })
            },
        ),
        (
            "timezone and timers",
            json!({"spec": {"domain": {"clock": {"timezone": "Europe/Berlin", "timer": {"hpet": {"present": false}, "rtc": {"tickPolicy": "catchup", "track": "guest"}}}}}}),
            |d| {
                d.clock.as_ref().is_some_and(|c| {
                    c.offset
                        == ClockOffset::Timezone {
                            name: "Europe/Berlin".into(),
                        }
                        && c.timers
                            == [
                                Timer {
                                    name: TimerName::Hpet,
                                    present: Some(false),
                                    tick_policy: None,
                                    track: None,
                                },
                                Timer {
                                    name: TimerName::Rtc,
                                    present: None,
                                    tick_policy: Some(TickPolicy::Catchup),
                                    track: Some(TimerTrack::Guest),
                                },
                            ]
                })
            },
        ),
        (
            "metadata the API server adds is accepted",
            json!({"metadata": {"labels": {"a": "b"}, "annotations": {"c": "d"}, "resourceVersion": "1", "generation": 2, "creationTimestamp": null, "finalizers": ["x"]}, "status": {"phase": "Running"}}),
            |d| d.name == "testvm",
        ),
        (
            "placement fields are accepted",
            json!({"spec": {"nodeSelector": {"a": "b"}, "tolerations": [], "evictionStrategy": "None"}}),
            |d| d.name == "testvm",
        ),
    ];
    for (what, patch, check) in cases {
        let d = ok(f.resolve(patch.clone()));
        assert!(check(&d), "{what}: {d:#?}");
    }
}

#[test]
fn hypervisor_option_overrides_the_spec() {
    let f = Fixture::new();
    let opts = LoadOptions {
        hypervisor: Some(Hypervisor::CloudHypervisor),
        ..f.opts()
    };
    let d = resolve_str(&spec(json!({"spec": {"hypervisor": "libvirt"}})), &opts).unwrap();
    assert_eq!(d.hypervisor, Hypervisor::CloudHypervisor);
}

#[test]
fn disks_resolve_devices_buses_and_sources() {
    let f = Fixture::new();
    let d = ok(f.resolve(json!({"spec": {
        "domain": {"devices": {"disks": [
            {"name": "rootdisk", "disk": {"bus": "virtio"}, "serial": "ROOT-1", "bootOrder": 1},
            {"name": "qcowdisk", "cdrom": {}},
            {"name": "host", "cdrom": {"bus": "scsi"}},
            {"name": "rel", "disk": {"bus": "sata", "readonly": true}},
            {"name": "created"}
        ]}},
        "volumes": [
            {"name": "rootdisk", "containerDisk": {"image": "example/root:1"}},
            {"name": "qcowdisk", "containerDisk": {"image": "example/q:1"}},
            {"name": "host", "hostDisk": {"path": "/dev/null", "type": "Disk", "shared": true}},
            {"name": "rel", "hostDisk": {"path": "existing.img", "type": "Disk"}},
            {"name": "created", "hostDisk": {"path": "sub/new.img", "type": "DiskOrCreate", "capacity": "1Gi"}}
        ]}})));
    let summary: Vec<_> = d
        .disks
        .iter()
        .map(|k| {
            (
                k.name.as_str(),
                k.device,
                k.bus,
                k.readonly,
                // A containerDisk is a qcow2 overlay over its image.
                match &k.source.generated {
                    Some(domain_model::Generated::Overlay { backing_format, .. }) => {
                        *backing_format
                    }
                    _ => k.source.format,
                },
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "rootdisk",
                DiskDevice::Disk,
                DiskBus::Virtio,
                false,
                ImageFormat::Raw
            ),
            (
                "qcowdisk",
                DiskDevice::Cdrom,
                DiskBus::Sata,
                true,
                ImageFormat::Qcow2
            ),
            (
                "host",
                DiskDevice::Cdrom,
                DiskBus::Scsi,
                true,
                ImageFormat::Raw
            ),
            (
                "rel",
                DiskDevice::Disk,
                DiskBus::Sata,
                true,
                ImageFormat::Raw
            ),
            (
                "created",
                DiskDevice::Disk,
                DiskBus::Sata,
                false,
                ImageFormat::Raw
            ),
        ]
    );
    assert_eq!(d.disks[0].serial.as_deref(), Some("ROOT-1"));
    assert_eq!(d.disks[0].boot_order, Some(1));
    assert_eq!(d.disks[0].source.format, ImageFormat::Qcow2);
    assert_eq!(
        d.disks[0].source.generated,
        Some(domain_model::Generated::Overlay {
            backing: f.path().join("container-disks/rootdisk/disk.img"),
            backing_format: ImageFormat::Raw,
        })
    );
    assert!(d.disks[0]
        .source
        .path
        .starts_with(f.path().join("ephemeral")));
    assert_eq!(d.disks[3].source.path, f.path().join("existing.img"));
    assert_eq!(d.disks[4].source.path, f.path().join("sub/new.img"));
    assert_eq!(d.disks[4].source.create_with_capacity, Some(1 << 30));
    assert_eq!(d.disks[4].spec_path, "spec.domain.devices.disks[4]");
    assert_eq!(d.disks[4].source.spec_path, "spec.volumes[4]");
    // Two of the host disks are not shared.
    assert_eq!(
        d.live_migratable.reason.as_deref(),
        Some("DisksNotLiveMigratable")
    );
}

#[test]
fn kernel_boot_reads_host_paths_relative_to_the_spec() {
    let f = Fixture::new();
    let d = ok(
        f.resolve(json!({"spec": {"domain": {"firmware": {"kernelBoot": {
        "kernelArgs": "console=ttyS0",
        "container": {"kernelPath": "vmlinuz", "initrdPath": "initrd.img"}}}}}})),
    );
    assert_eq!(
        d.boot,
        Boot::Kernel {
            kernel: f.path().join("vmlinuz"),
            initrd: Some(f.path().join("initrd.img")),
            cmdline: Some("console=ttyS0".into()),
            image: None,
        }
    );
    let abs = f.path().join("vmlinuz");
    let d = ok(
        f.resolve(json!({"spec": {"domain": {"firmware": {"kernelBoot": {
        "container": {"kernelPath": abs.to_str().unwrap()}}}}}})),
    );
    assert_eq!(
        d.boot,
        Boot::Kernel {
            kernel: abs,
            initrd: None,
            cmdline: None,
            image: None,
        }
    );
}

#[test]
fn load_path_resolves_relative_paths_against_the_spec_file() {
    let f = Fixture::new();
    let file = f.path().join("vm.yaml");
    std::fs::write(
        &file,
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: k\nspec:\n  \
         hypervisor: cloud-hypervisor\n  domain:\n    memory:\n      guest: 32Mi\n    firmware:\n      \
         kernelBoot:\n        container:\n          kernelPath: vmlinuz\n",
    )
    .unwrap();
    let opts = LoadOptions {
        base_dir: "/nonexistent".into(),
        ..LoadOptions::default()
    };
    let d = domain_model::load_path(&file, &opts).unwrap();
    assert!(
        matches!(d.boot, Boot::Kernel { ref kernel, .. } if *kernel == f.path().join("vmlinuz"))
    );
}

/// One rule per row: the patch breaks exactly one thing, and exactly one
/// error names it.
#[test]
fn validation_rules_report_their_exact_path() {
    let f = Fixture::new();
    let disk = |extra: serde_json::Value| {
        let mut d = json!({"name": "rootdisk"});
        common::merge(&mut d, &extra);
        json!({"spec": {"domain": {"devices": {"disks": [d]}},
            "volumes": [{"name": "rootdisk", "containerDisk": {"image": "i"}}]}})
    };
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (
            json!({"metadata": {"name": null}}),
            "metadata.name",
            "required",
        ),
        (
            json!({"metadata": {"name": "Bad_Name"}}),
            "metadata.name",
            "not a valid name",
        ),
        (
            json!({"metadata": {"namespace": "a.b"}}),
            "metadata.namespace",
            "not a valid namespace",
        ),
        (
            json!({"metadata": {"uid": "../x"}}),
            "metadata.uid",
            "not a valid uid",
        ),
        (
            json!({"spec": {"hypervisor": "qemu"}}),
            "spec.hypervisor",
            "expected \"cloud-hypervisor\" or \"libvirt\"",
        ),
        (
            json!({"spec": {"architecture": "riscv64"}}),
            "spec.architecture",
            "expected amd64, arm64 or s390x",
        ),
        (
            json!({"spec": {"domain": {"cpu": {"sockets": 4, "maxSockets": 2}}}}),
            "spec.domain.cpu.maxSockets",
            "must not be less than sockets",
        ),
        (
            json!({"spec": {"domain": {"cpu": {"sockets": 100, "cores": 100}}}}),
            "spec.domain.cpu",
            "at most 4096",
        ),
        (
            json!({"spec": {"domain": {"resources": {"requests": {"cpu": "lots"}}}}}),
            "spec.domain.resources.requests.cpu",
            "number of CPUs",
        ),
        (
            json!({"spec": {"domain": {"memory": null}}}),
            "spec.domain.memory.guest",
            "guest memory is required",
        ),
        (
            json!({"spec": {"domain": {"memory": {"guest": "1GB"}}}}),
            "spec.domain.memory.guest",
            "did you mean Gi?",
        ),
        (
            json!({"spec": {"domain": {"memory": {"guest": "0"}}}}),
            "spec.domain.memory.guest",
            "more than 0",
        ),
        (
            json!({"spec": {"domain": {"memory": {"guest": "128m"}}}}),
            "spec.domain.memory.guest",
            "fraction of a byte",
        ),
        (
            json!({"spec": {"domain": {"memory": {"maxGuest": "32Mi"}}}}),
            "spec.domain.memory.maxGuest",
            "must not be less than guest",
        ),
        (
            json!({"spec": {"domain": {"memory": {"hugepages": {"pageSize": "4Ki"}}}}}),
            "spec.domain.memory.hugepages.pageSize",
            "expected 2Mi or 1Gi",
        ),
        (
            json!({"spec": {"domain": {"memory": {"guest": "65M", "hugepages": {"pageSize": "2Mi"}}}}}),
            "spec.domain.memory.guest",
            "not a multiple of the hugepage size",
        ),
        (
            json!({"spec": {"domain": {"memory": null, "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}}}),
            "spec.domain.resources.requests.memory",
            "must not exceed limits.memory",
        ),
        (
            json!({"spec": {"domain": {"memory": {"guest": "2Gi"}, "resources": {"limits": {"memory": "1Gi"}}}}}),
            "spec.domain.memory.guest",
            "must not exceed limits.memory",
        ),
        (
            json!({"spec": {"domain": {"memory": null, "resources": {"requests": {"memory": "lots"}}}}}),
            "spec.domain.resources.requests.memory",
            "invalid quantity",
        ),
        (
            json!({"spec": {"domain": {"firmware": {"uuid": "not-a-uuid"}}}}),
            "spec.domain.firmware.uuid",
            "not a UUID",
        ),
        (
            json!({"spec": {"domain": {"firmware": {"bootloader": {"bios": {}, "efi": {"secureBoot": false}}}}}}),
            "spec.domain.firmware.bootloader",
            "only one of bios or efi",
        ),
        (
            json!({"spec": {"domain": {"firmware": {"bootloader": {"efi": {}}}}}}),
            "spec.domain.firmware.bootloader.efi.secureBoot",
            "needs SMM",
        ),
        (
            json!({"spec": {"domain": {"firmware": {"kernelBoot": {"kernelArgs": "x"}}}}}),
            "spec.domain.firmware.kernelBoot.container",
            "required",
        ),
        (
            json!({"spec": {"domain": {"firmware": {"kernelBoot": {"container": {"initrdPath": "initrd.img"}}}}}}),
            "spec.domain.firmware.kernelBoot.container.kernelPath",
            "required",
        ),
        (
            json!({"spec": {"domain": {"firmware": {"kernelBoot": {"container": {"kernelPath": "missing"}}}}}}),
            "spec.domain.firmware.kernelBoot.container.kernelPath",
            "cannot use kernel",
        ),
        (
            json!({"spec": {"domain": {"firmware": {"kernelBoot": {"container": {"kernelPath": "vmlinuz", "initrdPath": "nope"}}}}}}),
            "spec.domain.firmware.kernelBoot.container.initrdPath",
            "cannot use initrd",
        ),
        (
            json!({"spec": {"domain": {"firmware": {"kernelBoot": {"container": {"kernelPath": "vmlinuz", "imagePullPolicy": "Always"}}}}}}),
            "spec.domain.firmware.kernelBoot.container.imagePullPolicy",
            "only applies together with image",
        ),
        (
            json!({"spec": {"domain": {"firmware": {"kernelBoot": {"container": {"image": "k:1", "kernelPath": "boot/k"}}}}}}),
            "spec.domain.firmware.kernelBoot.container.kernelPath",
            "absolute path inside the image",
        ),
        (
            json!({"spec": {"domain": {"firmware": {"kernelBoot": {"container": {"image": "k:1", "kernelPath": "/k", "initrdPath": "/../i"}}}}}}),
            "spec.domain.firmware.kernelBoot.container.initrdPath",
            "without `..`",
        ),
        (
            json!({"spec": {"domain": {"firmware": {"kernelBoot": {"container": {"image": "k:1", "kernelPath": "/k", "imagePullPolicy": "Sometimes"}}}}}}),
            "spec.domain.firmware.kernelBoot.container.imagePullPolicy",
            "expected Always, IfNotPresent or Never",
        ),
        (
            json!({"spec": {"domain": {"firmware": {"kernelBoot": {"container": {"image": "k:1"}}}}}}),
            "spec.domain.firmware.kernelBoot.container.kernelPath",
            "required",
        ),
        (
            json!({"spec": {"domain": {"features": {"smm": {}}, "firmware": {"bootloader": {"efi": {}}, "kernelBoot": {"container": {"kernelPath": "vmlinuz"}}}}}}),
            "spec.domain.firmware.kernelBoot",
            "not supported yet",
        ),
        (
            disk(json!({"disk": {"bus": "ide"}})),
            "spec.domain.devices.disks[0].disk.bus",
            "expected virtio, sata, scsi or usb",
        ),
        (
            disk(json!({"cdrom": {"bus": "virtio"}})),
            "spec.domain.devices.disks[0].cdrom.bus",
            "cannot use the virtio bus",
        ),
        (
            disk(json!({"disk": {}, "cdrom": {}})),
            "spec.domain.devices.disks[0]",
            "only one of disk, cdrom or lun",
        ),
        (
            disk(json!({"serial": "has space"})),
            "spec.domain.devices.disks[0].serial",
            "not a valid disk serial",
        ),
        (
            disk(json!({"serial": "x".repeat(257)})),
            "spec.domain.devices.disks[0].serial",
            "at most 256",
        ),
        (
            disk(json!({"bootOrder": 0})),
            "spec.domain.devices.disks[0].bootOrder",
            "at least 1",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "rootdisk"}, {"name": "qcowdisk"}]}},
            "volumes": [{"name": "rootdisk", "containerDisk": {"image": "i"}}, {"name": "qcowdisk", "containerDisk": {"image": "i"}}]}}),
            "",
            "",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "rootdisk", "bootOrder": 1}, {"name": "qcowdisk", "bootOrder": 1}]}},
            "volumes": [{"name": "rootdisk", "containerDisk": {"image": "i"}}, {"name": "qcowdisk", "containerDisk": {"image": "i"}}]}}),
            "spec.domain.devices.disks[1].bootOrder",
            "already used by spec.domain.devices.disks[0]",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "rootdisk"}, {"name": "rootdisk"}]}},
            "volumes": [{"name": "rootdisk", "containerDisk": {"image": "i"}}]}}),
            "spec.domain.devices.disks[1].name",
            "duplicate disk name",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "missing"}]}}}}),
            "spec.domain.devices.disks[0].name",
            "no volume named \"missing\"",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "rootdisk"}]}},
            "volumes": [{"name": "rootdisk", "containerDisk": {"image": "i"}}, {"name": "rootdisk", "containerDisk": {"image": "i"}}]}}),
            "spec.volumes[1].name",
            "duplicate volume name",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "Root"}]}},
            "volumes": [{"name": "Root", "containerDisk": {"image": "i"}}]}}),
            "spec.volumes[0].name",
            "not a valid volume name",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "rootdisk"}]}},
            "volumes": [{"name": "rootdisk"}]}}),
            "spec.volumes[0]",
            "no volume source",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "rootdisk"}]}},
            "volumes": [{"name": "rootdisk", "containerDisk": {"image": "i"}, "hostDisk": {"path": "/x", "type": "Disk"}}]}}),
            "spec.volumes[0]",
            "only one volume source",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "nodisk"}]}},
            "volumes": [{"name": "nodisk", "containerDisk": {"image": "i", "imagePullPolicy": "sometimes"}}]}}),
            "spec.volumes[0].containerDisk.imagePullPolicy",
            "unknown pull policy",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "nodisk"}]}},
            "volumes": [{"name": "nodisk", "containerDisk": {"image": "i", "path": "disk/x.img"}}]}}),
            "spec.volumes[0].containerDisk.path",
            "absolute path inside the image",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "nodisk"}]}},
            "volumes": [{"name": "nodisk", "containerDisk": {"image": "i", "imagePullSecret": "Not_A_Name"}}]}}),
            "spec.volumes[0].containerDisk.imagePullSecret",
            "not a Secret name",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "nodisk"}]}},
            "volumes": [{"name": "nodisk", "containerDisk": {"image": "/var/lib/x.img"}}]}}),
            "spec.volumes[0].containerDisk.image",
            "not an image reference",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "h"}]}},
            "volumes": [{"name": "h", "hostDisk": {"path": "gone.img", "type": "Disk"}}]}}),
            "spec.volumes[0].hostDisk.path",
            "type Disk needs an existing image",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "h"}]}},
            "volumes": [{"name": "h", "hostDisk": {"path": "new.img", "type": "DiskOrCreate"}}]}}),
            "spec.volumes[0].hostDisk.capacity",
            "required for type DiskOrCreate",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "h"}]}},
            "volumes": [{"name": "h", "hostDisk": {"path": "existing.img", "type": "Disk", "capacity": "1Gi"}}]}}),
            "spec.volumes[0].hostDisk.capacity",
            "only applies to type DiskOrCreate",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "h"}]}},
            "volumes": [{"name": "h", "hostDisk": {"path": "x.img", "type": "File"}}]}}),
            "spec.volumes[0].hostDisk.type",
            "expected Disk or DiskOrCreate",
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "h"}]}},
            "volumes": [{"name": "h", "hostDisk": {"path": ".", "type": "DiskOrCreate", "capacity": "1Gi"}}]}}),
            "spec.volumes[0].hostDisk.path",
            "is a directory",
        ),
        (
            json!({"spec": {"domain": {"devices": {"inputs": [{"name": "k", "type": "keyboard"}]}}}}),
            "spec.domain.devices.inputs[0].type",
            "expected tablet",
        ),
        (
            json!({"spec": {"domain": {"devices": {"inputs": [{"name": "k", "type": "tablet", "bus": "ps2"}]}}}}),
            "spec.domain.devices.inputs[0].bus",
            "expected usb or virtio",
        ),
        (
            json!({"spec": {"domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}]}}}}),
            "spec.domain.devices.interfaces[0].name",
            "no spec.networks entry named \"default\"",
        ),
        (
            json!({"spec": {"networks": [{"name": "default", "pod": {}}]}}),
            "spec.networks[0]",
            "has no interface",
        ),
        (
            json!({"spec": {"domain": {"clock": {"utc": {}, "timezone": "UTC"}}}}),
            "spec.domain.clock",
            "only one of utc or timezone",
        ),
        (
            json!({"spec": {"domain": {"clock": {"timer": {"pit": {"tickPolicy": "often"}}}}}}),
            "spec.domain.clock.timer.pit.tickPolicy",
            "unknown tick policy",
        ),
        (
            json!({"spec": {"domain": {"clock": {"timer": {"hpet": {"track": "guest"}}}}}}),
            "spec.domain.clock.timer.hpet.track",
            "only the rtc timer",
        ),
        (
            json!({"spec": {"terminationGracePeriodSeconds": -1}}),
            "spec.terminationGracePeriodSeconds",
            "must not be negative",
        ),
        (
            json!({"spec": {"startStrategy": "Later"}}),
            "spec.startStrategy",
            "the only one is Paused",
        ),
    ];
    for (patch, path, needle) in cases {
        let r = f.resolve(patch.clone());
        if path.is_empty() {
            ok(r);
            continue;
        }
        let e = err(r);
        assert_only(&e, path, needle);
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let f = Fixture::new();
    let e = err(f.resolve(json!({"spec": {
        "hypervisor": "qemu",
        "domain": {"cpu": {"sockets": "x"}, "memory": {"guest": "1GB"},
            "devices": {"disks": [{"name": "a", "floppy": {}}], "interfaces": [{"name": "x"}]}},
        "volumes": [{"name": "a", "sysprep": {}}],
        "networks": [{"name": "x", "pod": {}}]}})));
    let mut got = paths(&e);
    got.sort();
    assert_eq!(
        got,
        vec![
            "spec.domain.cpu.sockets",
            "spec.domain.devices.disks[0].floppy",
            "spec.domain.devices.interfaces[0]",
            "spec.domain.memory.guest",
            "spec.hypervisor",
            "spec.volumes[0].sysprep",
        ],
        "{e}"
    );
}

#[test]
fn unknown_fields_are_errors_with_their_full_path() {
    let f = Fixture::new();
    let unimplemented = "kubevirt.io/v1 field not implemented yet";
    let typo = "unknown field (not a kubevirt.io/v1 field this launcher knows";
    let cases = [
        (
            json!({"spec": {"domain": {"cpu": {"realtime": {}}}}}),
            "spec.domain.cpu.realtime",
            unimplemented,
        ),
        (
            json!({"spec": {"domain": {"machine": {"type": "q35", "chipset": "x"}}}}),
            "spec.domain.machine.chipset",
            typo,
        ),
        (
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "rootdisk", "cdrom": {"tray": "open"}}]}},
            "volumes": [{"name": "rootdisk", "containerDisk": {"image": "i"}}]}}),
            "spec.domain.devices.disks[0].cdrom.tray",
            unimplemented,
        ),
        (
            json!({"spec": {"domain": {"firmware": {"bootloader": {"bios": {"useSerial": true}}}}}}),
            "spec.domain.firmware.bootloader.bios.useSerial",
            unimplemented,
        ),
        (
            json!({"spec": {"livenessProbe": {}}}),
            "spec.livenessProbe",
            unimplemented,
        ),
        (
            json!({"spec": {"domain": {"cpu": {"socket": 2}}}}),
            "spec.domain.cpu.socket",
            typo,
        ),
        (json!({"extra": 1}), "extra", typo),
        (json!({"metadata": {"nme": "x"}}), "metadata.nme", typo),
    ];
    for (patch, path, needle) in cases {
        let e = err(f.resolve(patch.clone()));
        assert_only(&e, path, needle);
    }
}

#[test]
fn unsupported_volume_kinds_say_not_supported_yet() {
    let f = Fixture::new();
    for kind in ["downwardMetrics", "memoryDump"] {
        let e = err(f.resolve(
            json!({"spec": {"domain": {"devices": {"disks": [{"name": "v"}]}},
            "volumes": [{"name": "v", kind: {}}]}}),
        ));
        assert_only(
            &e,
            &format!("spec.volumes[0].{kind}"),
            &format!("volume kind {kind} is not supported yet"),
        );
    }
}

#[test]
fn type_errors_name_their_path_and_all_are_reported() {
    let f = Fixture::new();
    let e = err(f.resolve(json!({"spec": {"domain": {
        "cpu": {"sockets": "two", "cores": -1},
        "devices": {"autoattachSerialConsole": "yes"}}}})));
    let mut got = paths(&e);
    got.sort();
    assert_eq!(
        got,
        vec![
            "spec.domain.cpu.cores",
            "spec.domain.cpu.sockets",
            "spec.domain.devices.autoattachSerialConsole"
        ],
        "{e}"
    );
    let sockets =
        e.0.iter()
            .find(|f| f.path == "spec.domain.cpu.sockets")
            .unwrap();
    assert!(sockets.message.contains("found the string \"two\""), "{e}");
    let e = err(f.resolve(json!({"spec": {"domain": {"devices": {"disks": [{"disk": {}}]}}}})));
    assert_only(
        &e,
        "spec.domain.devices.disks[0].name",
        "required: the name of the volume",
    );
    let e = err(f.resolve(json!({"spec": {"domain": "big"}})));
    assert_only(
        &e,
        "spec.domain",
        "expected a mapping, found the string \"big\"",
    );
}

#[test]
fn document_level_errors() {
    let opts = LoadOptions::default();
    let cases = [
        ("", "(document)", "expected a VirtualMachineInstance object"),
        ("- a\n- b\n", "(document)", "found a list"),
        ("{ not json", "(document)", "invalid JSON"),
        ("a: [1, 2\n", "(document)", "invalid YAML"),
        (
            "apiVersion: kubevirt.io/v1alpha3\nkind: VirtualMachineInstance\nspec: {}\n",
            "apiVersion",
            "expected \"kubevirt.io/v1\"",
        ),
        (
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nspec: {}\n",
            "kind",
            "expected \"VirtualMachineInstance\"",
        ),
        (
            "kind: VirtualMachineInstance\nspec: {}\n",
            "apiVersion",
            "required",
        ),
        (
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: x}\n",
            "spec",
            "required: the VirtualMachineInstance's spec",
        ),
    ];
    for (text, path, needle) in cases {
        let e = resolve_str(text, &opts).unwrap_err();
        assert_only(&e, path, needle);
    }
}

#[test]
fn json_and_yaml_give_the_same_domain() {
    let f = Fixture::new();
    let json_text = spec(json!({"spec": {"domain": {"cpu": {"cores": 2}}}}));
    let value: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    let yaml_text = serde_saphyr::to_string(&value).unwrap();
    assert!(!yaml_text.trim_start().starts_with('{'));
    let a = resolve_str(&json_text, &f.opts()).unwrap();
    let b = resolve_str(&yaml_text, &f.opts()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.cpu.cores, 2);
}
