//! KubeVirt-parity rules that an earlier version got wrong: one validation
//! pass reporting every kind of problem, the migration-condition order, the
//! TDX secure-boot exemption, architecture and disk defaults, and input
//! hardening (flow YAML, huge numbers, readable messages).

mod common;

use common::{assert_only, err, ok, paths, spec, Fixture};
use domain_model::gates::FeatureGates;
use domain_model::{
    load_path, resolve_str, Architecture, DiskBus, DiskDevice, LaunchSecurity, LoadOptions,
};
use serde_json::{json, Value};

fn write_spec(f: &Fixture, patch: Value) -> std::path::PathBuf {
    let p = f.path().join("spec.json");
    std::fs::write(&p, spec(patch)).expect("write spec");
    p
}

#[test]
fn type_resolution_and_support_errors_are_reported_in_one_run() {
    let f = Fixture::new();
    let p = write_spec(
        &f,
        json!({"spec": {
            "hypervisor": "cloud-hypervisor",
            "terminationGracePeriodSeconds": -1,
            "volumes": [{"name": "cd", "hostDisk": {"path": "existing.img", "type": "Disk"}}],
            "domain": {
                "cpu": {"sockets": "two"},
                "memory": {"guest": "1Gx"},
                "firmware": {"bootloader": {"efi": {"secureBoot": false}}},
                "devices": {"disks": [{"name": "cd", "cdrom": {}}, {"name": "nope"}]}}}}),
    );
    let e = err(load_path(&p, &f.opts()));
    let mut got = paths(&e);
    got.sort();
    assert_eq!(
        got,
        vec![
            "spec.domain.cpu.sockets",
            "spec.domain.devices.disks[0].cdrom",
            "spec.domain.devices.disks[1].name",
            "spec.domain.memory.guest",
            "spec.terminationGracePeriodSeconds",
        ],
        "{e}"
    );
}

#[test]
fn a_type_error_does_not_add_consequential_errors() {
    let f = Fixture::new();
    // The boot order, the guest memory and the host disk's path are
    // unreadable: each is reported once, not again as "required", and the
    // resolution error next to them still comes out.
    let e = err(f.resolve(json!({"spec": {
        "volumes": [{"name": "a", "hostDisk": {"path": 5, "type": "Disk"}}],
        "domain": {"memory": {"guest": []}, "devices": {"disks": [
            {"name": "a", "bootOrder": "x"}, {"name": "ghost"}]}}}})));
    let mut got = paths(&e);
    got.sort();
    assert_eq!(
        got,
        vec![
            "spec.domain.devices.disks[0].bootOrder",
            "spec.domain.devices.disks[1].name",
            "spec.domain.memory.guest",
            "spec.volumes[0].hostDisk.path",
        ],
        "{e}"
    );
}

fn efi_with(ls: Value) -> Value {
    json!({"spec": {"domain": {
        "firmware": {"bootloader": {"efi": {"secureBoot": false}}},
        "launchSecurity": ls}}})
}

#[test]
fn migration_condition_names_launch_security_before_disks_with_its_message_only() {
    let f = Fixture::new();
    let mut v = json!({"spec": {"domain": {"devices": {"disks": [{"name": "h"}]}},
        "volumes": [{"name": "h", "hostDisk": {"path": "existing.img", "type": "Disk"}}]}});
    common::merge(&mut v, &efi_with(json!({"sev": {}})));
    let d = ok(f.resolve(v));
    assert!(!d.live_migratable.live_migratable);
    assert_eq!(
        d.live_migratable.reason.as_deref(),
        Some("SEVNotLiveMigratable")
    );
    assert_eq!(d.live_migratable.message.as_deref(), Some("VMI uses SEV"));
}

#[test]
fn tdx_with_secure_boot_needs_no_smm() {
    let f = Fixture::new();
    let opts = LoadOptions {
        feature_gates: FeatureGates::parse("WorkloadEncryptionTDX")
            .unwrap()
            .enabled(),
        ..f.opts()
    };
    let text = spec(json!({"spec": {"domain": {
        "firmware": {"bootloader": {"efi": {}}}, "launchSecurity": {"tdx": {}}}}}));
    let d = ok(resolve_str(&text, &opts));
    assert_eq!(d.launch_security, Some(LaunchSecurity::Tdx));
    // Without TDX the rule still holds.
    let e = err(f.resolve(json!({"spec": {"domain": {"firmware": {"bootloader": {"efi": {}}}}}})));
    assert_only(
        &e,
        "spec.domain.firmware.bootloader.efi.secureBoot",
        "needs SMM",
    );
}

fn disk_patch(hypervisor: &str, arch: &str) -> Value {
    json!({"spec": {"hypervisor": hypervisor, "architecture": arch,
        "domain": {"firmware": {"bootloader": {"efi": {"secureBoot": false}}},
            "devices": {"disks": [{"name": "d"}, {"name": "c", "cdrom": {}}]}},
        "volumes": [{"name": "d", "hostDisk": {"path": "existing.img", "type": "Disk"}},
                    {"name": "c", "hostDisk": {"path": "existing.img", "type": "Disk"}}]}})
}

#[test]
fn disk_bus_defaults_follow_kubevirt_on_libvirt_and_virtio_on_cloud_hypervisor() {
    let f = Fixture::new();
    let buses = |h: &str, a: &str| -> Vec<(DiskDevice, DiskBus)> {
        ok(f.resolve(disk_patch(h, a)))
            .disks
            .iter()
            .map(|d| (d.device, d.bus))
            .collect()
    };
    // pkg/defaults/amd64.go: SATA for disk, cdrom and lun.
    assert_eq!(
        buses("libvirt", "amd64"),
        vec![
            (DiskDevice::Disk, DiskBus::Sata),
            (DiskDevice::Cdrom, DiskBus::Sata)
        ]
    );
    // arm64.go / s390x.go: virtio for disks.
    assert_eq!(
        buses("libvirt", "arm64")[0],
        (DiskDevice::Disk, DiskBus::Virtio)
    );
    // Cloud Hypervisor has only virtio-blk.
    let e = err(load_path(
        &write_spec(&f, disk_patch("cloud-hypervisor", "amd64")),
        &f.opts(),
    ));
    assert_only(&e, "spec.domain.devices.disks[1].cdrom", "cdrom disks");
}

#[test]
fn s390x_turns_acpi_off_unless_asked() {
    let f = Fixture::new();
    let d = ok(f.resolve(json!({"spec": {"architecture": "s390x",
        "domain": {"firmware": {"kernelBoot": {"container": {"kernelPath": "vmlinuz"}}}}}})));
    assert_eq!(d.architecture, Architecture::S390x);
    assert!(!d.features.acpi);
    let d = ok(f.resolve(json!({"spec": {"architecture": "s390x",
        "domain": {"features": {"acpi": {}},
            "firmware": {"kernelBoot": {"container": {"kernelPath": "vmlinuz"}}}}}})));
    assert!(!d.features.acpi, "acpi: {{}} is unset on s390x");
    let d = ok(f.resolve(json!({"spec": {"architecture": "s390x",
        "domain": {"features": {"acpi": {"enabled": true}},
            "firmware": {"kernelBoot": {"container": {"kernelPath": "vmlinuz"}}}}}})));
    assert!(d.features.acpi);
    assert!(ok(f.resolve(json!({}))).features.acpi);
}

#[test]
fn a_volume_without_a_disk_gets_a_default_disk() {
    let f = Fixture::new();
    let d = ok(f.resolve(json!({"spec": {"volumes": [
        {"name": "v", "hostDisk": {"path": "existing.img", "type": "Disk"}}]}})));
    assert_eq!(d.disks.len(), 1);
    assert_eq!(d.disks[0].name, "v");
    assert_eq!(d.disks[0].device, DiskDevice::Disk);
    assert_eq!(d.disks[0].source.spec_path, "spec.volumes[0]");
}

#[test]
fn hugepage_size_alone_sets_guest_memory() {
    let f = Fixture::new();
    let d = ok(f.resolve(json!({"spec": {"domain": {
        "memory": {"guest": null, "hugepages": {"pageSize": "1Gi"}}}}})));
    assert_eq!(d.memory.guest, 1 << 30);
    assert_eq!(d.memory.hugepage_size, Some(1 << 30));
}

#[test]
fn grace_period_is_capped_with_its_path() {
    let f = Fixture::new();
    let e = err(f.resolve(json!({"spec": {"terminationGracePeriodSeconds": i64::MAX}})));
    assert_only(&e, "spec.terminationGracePeriodSeconds", "at most");
    let d = ok(f.resolve(json!({"spec": {"terminationGracePeriodSeconds": 86400}})));
    assert_eq!(d.termination_grace_period.as_secs(), 86400);
}

#[test]
fn lun_on_a_host_or_container_disk_is_refused_like_kubevirt() {
    let f = Fixture::new();
    let e = err(f.resolve(json!({"spec": {
        "domain": {"devices": {"disks": [{"name": "h", "lun": {}}, {"name": "containerdisk", "lun": {}}]}},
        "volumes": [{"name": "h", "hostDisk": {"path": "existing.img", "type": "Disk"}},
                    {"name": "containerdisk", "containerDisk": {"image": "x"}}]}})));
    assert_eq!(
        paths(&e),
        vec![
            "spec.domain.devices.disks[0].lun",
            "spec.domain.devices.disks[1].lun"
        ],
        "{e}"
    );
    assert!(e.0[0]
        .message
        .contains("can only be mapped to a DataVolume or PersistentVolumeClaim"));
}

#[test]
fn yaml_flow_mappings_parse_and_json_duplicates_are_still_refused() {
    let opts = LoadOptions::default();
    let d = ok(resolve_str(
        "{apiVersion: kubevirt.io/v1, kind: VirtualMachineInstance, metadata: {name: t}, \
         spec: {domain: {memory: {guest: 64Mi}}}}",
        &opts,
    ));
    assert_eq!(d.memory.guest, 64 << 20);
    let e = err(resolve_str(
        r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance","kind":"X"}"#,
        &opts,
    ));
    assert!(e.0[0].message.contains("duplicate key \"kind\""), "{e}");
}

#[test]
fn cpu_zero_counts_are_unset_and_serial_follows_kubevirt_limits() {
    let f = Fixture::new();
    let d = ok(f.resolve(json!({"spec": {"domain": {
        "cpu": {"sockets": 0, "cores": 2, "threads": 0},
        "resources": {"requests": {"cpu": 0}}}}})));
    assert_eq!((d.cpu.sockets, d.cpu.cores, d.cpu.threads), (1, 2, 1));
    let disk = |serial: &str| {
        json!({"spec": {"domain": {"devices": {"disks": [{"name": "h", "serial": serial}]}},
            "volumes": [{"name": "h", "hostDisk": {"path": "existing.img", "type": "Disk"}}]}})
    };
    assert_eq!(ok(f.resolve(disk(""))).disks[0].serial, None);
    let long = "a".repeat(256);
    assert_eq!(
        ok(f.resolve(disk(&long))).disks[0].serial.as_deref(),
        Some(long.as_str())
    );
    let e = err(f.resolve(disk(&"a".repeat(257))));
    assert_only(&e, "spec.domain.devices.disks[0].serial", "256");
}

#[test]
fn messages_speak_kubevirt_not_library_internals() {
    let opts = LoadOptions::default();
    let head = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: t}\n";
    let texts = [
        format!("{head}spec: 5\n"),
        format!("{head}spec: {{domain: {{memory: {{guest: 1Gi}}}}}}\n---\nkind: Pod\n"),
        format!("{head}spec: {{}}\nspec: {{}}\n"),
        format!("{head}spec: {{domain: {{memory: {{guest: 1Gi}}, cpu: {{sockets: 99999999999999999999999}}}}}}\n"),
    ];
    let mut all = String::new();
    for t in &texts {
        let e = err(resolve_str(t, &opts));
        all.push_str(&e.to_string());
    }
    for leak in [
        "from_str_multiple",
        "DuplicateKeyPolicy",
        "struct",
        "1e+23",
        "u32",
        "check the spelling",
    ] {
        assert!(!all.contains(leak), "{leak:?} in:\n{all}");
    }
    assert!(all.contains("a number too large to read exactly"), "{all}");
    // Pod resources size the launcher's pod in KubeVirt, never the VM.
    let pod = format!("{head}spec: {{domain: {{memory: {{guest: 1Gi}}, resources: {{requests: {{ephemeral-storage: 1Gi, hugepages-2Mi: 1Gi, devices.kubevirt.io/kvm: 1}}}}}}}}\n");
    ok(resolve_str(&pod, &opts));
    let typo = format!("{head}spec: {{domain: {{memory: {{guest: 1Gi}}, resources: {{requests: {{memroy: 1Gi}}}}}}}}\n");
    let e = err(resolve_str(&typo, &opts));
    assert_only(
        &e,
        "spec.domain.resources.requests.memroy",
        "unknown resource \"memroy\"",
    );
    assert!(all.contains("expected a mapping"), "{all}");
}

#[test]
fn guest_memory_has_a_clear_upper_bound() {
    let f = Fixture::new();
    let e = err(f.resolve(json!({"spec": {"domain": {"memory": {"guest": "64Ti"}}}})));
    assert_only(&e, "spec.domain.memory.guest", "at most 16Ti");
}

#[test]
fn snp_host_data_is_a_launcher_extension_validated_with_its_path() {
    let f = Fixture::new();
    let opts = f.opts();
    let hex = "ab".repeat(32);
    let text = spec(efi_with(json!({"snp": {"hostData": hex}})));
    let d = ok(resolve_str(&text, &opts));
    assert_eq!(
        d.launch_security,
        Some(LaunchSecurity::SevSnp {
            host_data: Some(hex.clone())
        })
    );
    let text = spec(efi_with(json!({"snp": {"hostData": "xyz"}})));
    let e = err(resolve_str(&text, &opts));
    assert_only(&e, "spec.domain.launchSecurity.snp.hostData", "64 hex");
}
