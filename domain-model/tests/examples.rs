//! Every real KubeVirt example either resolves or fails with field-named
//! errors, and the reported paths are exactly the unsupported parts.

mod common;

use common::{examples_dir, paths, Fixture};
use domain_model::{load_path, resolve_path, Boot, DiskBus, Hypervisor, ImageFormat, LoadOptions};
use std::collections::BTreeMap;

/// Expected error paths per example and hypervisor (libvirt, Cloud
/// Hypervisor), with the local container disk images and the PVC present.
fn expected_with_images() -> BTreeMap<&'static str, [Vec<&'static str>; 2]> {
    let both = |p: Vec<&'static str>| [p.clone(), p];
    let multus = vec![
        "spec.domain.devices.interfaces[1].bridge",
        "spec.networks[1].multus",
    ];
    BTreeMap::from([
        ("vmi-alpine-efi.yaml", both(vec![])),
        ("vmi-ephemeral.yaml", both(vec![])),
        ("vmi-fedora.yaml", both(vec![])),
        ("vmi-host-disk.yaml", both(vec![])),
        ("vmi-kernel-boot.yaml", both(vec![])),
        ("vmi-masquerade.yaml", both(vec![])),
        ("vmi-migratable.yaml", both(vec![])),
        ("vmi-multus-multiple-net.yaml", both(multus)),
        ("vmi-nocloud.yaml", both(vec![])),
        ("vmi-pvc.yaml", both(vec![])),
        ("vmi-sata.yaml", both(vec![])),
        (
            "vmi-secureboot.yaml",
            [
                vec![],
                vec![
                    "spec.domain.features.smm",
                    "spec.domain.firmware.bootloader.efi.secureBoot",
                ],
            ],
        ),
        (
            "vmi-sriov.yaml",
            both(vec![
                "spec.domain.devices.interfaces[1].sriov",
                "spec.networks[1].multus",
            ]),
        ),
    ])
}

#[test]
fn every_example_resolves_or_names_its_unsupported_fields_on_both_backends() {
    let fixture = Fixture::new();
    // vmi-pvc's claim, mounted where virt-controller puts a filesystem PVC.
    let pvc = fixture.path().join("mounts/vmi-disks/pvcdisk");
    std::fs::create_dir_all(&pvc).expect("mkdir");
    std::fs::write(pvc.join("disk.img"), b"x").expect("write");
    let expected = expected_with_images();
    let mut seen = 0;
    for entry in std::fs::read_dir(examples_dir()).expect("examples dir") {
        let path = entry.expect("entry").path();
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default()
            .to_string();
        let want = expected
            .get(file.as_str())
            .unwrap_or_else(|| panic!("no expectation for new example {file}"));
        seen += 1;
        for (hypervisor, want) in [Hypervisor::Libvirt, Hypervisor::CloudHypervisor]
            .into_iter()
            .zip(want)
        {
            let opts = LoadOptions {
                hypervisor: Some(hypervisor),
                ..fixture.opts()
            };
            let mut got: Vec<String> = match load_path(&path, &opts) {
                Ok(_) => vec![],
                Err(e) => {
                    for f in &e.0 {
                        assert!(!f.message.is_empty(), "{file}: empty message at {}", f.path);
                    }
                    paths(&e).into_iter().map(str::to_string).collect()
                }
            };
            got.sort();
            assert_eq!(got, *want, "{file} on {hypervisor}");
        }
    }
    assert_eq!(
        seen,
        expected.len(),
        "examples missing from {:?}",
        examples_dir()
    );
}

#[test]
fn container_disk_without_a_local_image_is_pulled_from_its_registry() {
    let empty = tempfile::tempdir().expect("tempdir");
    let opts = LoadOptions {
        container_disk_dir: empty.path().to_path_buf(),
        ephemeral_disk_dir: empty.path().join("ephemeral"),
        ..LoadOptions::default()
    };
    let d = resolve_path(&examples_dir().join("vmi-ephemeral.yaml"), &opts).unwrap();
    assert_eq!(d.disks[0].source.format, ImageFormat::Qcow2);
    assert_eq!(
        d.disks[0].source.generated,
        Some(domain_model::Generated::ImageOverlay {
            image: domain_model::ImageRef {
                image: "registry:5000/kubevirt/cirros-container-disk-demo:devel".into(),
                path: None,
                // Kubernetes' default for a tag other than latest.
                pull_policy: domain_model::PullPolicy::IfNotPresent,
                pull_secret: None,
            }
        })
    );
    assert!(d.disks[0]
        .source
        .path
        .starts_with(empty.path().join("ephemeral")));
}

#[test]
fn kernel_boot_example_names_files_inside_its_image() {
    let fixture = Fixture::new();
    let d = resolve_path(
        &examples_dir().join("vmi-kernel-boot.yaml"),
        &fixture.opts(),
    )
    .unwrap();
    let Boot::Kernel {
        kernel,
        initrd,
        image,
        ..
    } = d.boot
    else {
        panic!("not a kernel boot: {:?}", d.boot)
    };
    assert_eq!(kernel, std::path::Path::new("/boot/vmlinuz-virt"));
    assert_eq!(
        initrd.as_deref(),
        Some(std::path::Path::new("/boot/initramfs-virt"))
    );
    let image = image.expect("pulled before the run");
    assert_eq!(
        image.image,
        "registry:5000/kubevirt/alpine-ext-kernel-boot-demo:devel"
    );

    // In a pod, KubeVirt's kernel-boot container copied them by base name.
    let opts = LoadOptions {
        container_disk_layout: domain_model::ContainerDiskLayout::Pod,
        ..fixture.opts()
    };
    let d = resolve_path(&examples_dir().join("vmi-kernel-boot.yaml"), &opts).unwrap();
    let dir = std::path::absolute(&opts.container_disk_dir)
        .unwrap()
        .join("kernel-boot");
    assert_eq!(
        d.boot,
        Boot::Kernel {
            kernel: dir.join("vmlinuz-virt"),
            initrd: Some(dir.join("initramfs-virt")),
            cmdline: Some("console=ttyS0".into()),
            image: None,
        }
    );
}

#[test]
fn ephemeral_example_resolves_to_an_overlay_over_the_raw_image_of_the_convention() {
    let fixture = Fixture::new();
    let d = resolve_path(&examples_dir().join("vmi-ephemeral.yaml"), &fixture.opts()).unwrap();
    assert_eq!(d.name, "vmi-ephemeral");
    assert_eq!(d.memory.guest, 128 << 20);
    assert_eq!(d.termination_grace_period.as_secs(), 0);
    assert_eq!(d.disks.len(), 1);
    assert_eq!(d.disks[0].bus, DiskBus::Virtio);
    // A qcow2 overlay in the ephemeral disk dir over the raw image.
    assert_eq!(d.disks[0].source.format, ImageFormat::Qcow2);
    assert_eq!(
        d.disks[0].source.generated,
        Some(domain_model::Generated::Overlay {
            backing: fixture
                .path()
                .join("container-disks/containerdisk/disk.img"),
            backing_format: ImageFormat::Raw,
        })
    );
    assert_eq!(d.boot, Boot::Bios);
    assert_eq!(d.hypervisor, Hypervisor::Libvirt);
}

#[test]
fn host_disk_example_boots_from_firmware_on_cloud_hypervisor_too() {
    let opts = LoadOptions {
        hypervisor: Some(Hypervisor::CloudHypervisor),
        ..LoadOptions::default()
    };
    // KubeVirt's default BIOS boot: rust-hypervisor-firmware on CH.
    let d = load_path(&examples_dir().join("vmi-host-disk.yaml"), &opts).expect("accepted");
    assert_eq!(d.boot, Boot::Bios);
    let d = load_path(
        &examples_dir().join("vmi-host-disk.yaml"),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(d.disks[0].source.create_with_capacity, Some(1 << 30));
}
