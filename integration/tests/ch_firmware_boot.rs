//! Firmware boot on Cloud Hypervisor through the real launcher: a VMI
//! without `kernelBoot` (KubeVirt's default BIOS boot) boots its disk with
//! rust-hypervisor-firmware, which reads the GPT and the EFI system
//! partition of the disk the launcher attached and starts the kernel its
//! Boot Loader Specification entry names (the tiny guest as a bzImage).
//!
//! Needs the real Cloud Hypervisor and `hypervisor-fw` next to it
//! (`../shared/bin/`); otherwise a SKIP line.

mod ch_support;

use ch_support::{wait_file_contains, Launcher, VmOptions, SLOW};
use std::path::PathBuf;

const BANNER: &str = "TINY-GUEST-UP";

/// The directory holding `hypervisor-fw`: the real CH binary's own.
fn firmware_dir(test: &str) -> Option<PathBuf> {
    let ch = std::env::var_os(ch_support::CH_BIN_ENV).filter(|v| !v.is_empty());
    let dir = ch
        .map(PathBuf::from)
        .and_then(|p| p.parent().map(PathBuf::from))
        .filter(|d| {
            d.join(firmware::cloud_hypervisor::RUST_HYPERVISOR_FIRMWARE_NAME)
                .is_file()
        });
    if dir.is_none() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "SKIP: {test}: needs the real cloud-hypervisor ({}) with hypervisor-fw beside it\n",
                ch_support::CH_BIN_ENV
            )
            .as_bytes(),
        );
    }
    dir
}

fn spec(name: &str, disk: &std::path::Path, bootloader: &str) -> String {
    format!(
        "\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
spec:
  hypervisor: cloud-hypervisor
  domain:
    memory:
      guest: 128Mi
{bootloader}    devices:
      disks:
      - name: rootdisk
        disk:
          bus: virtio
  volumes:
  - name: rootdisk
    hostDisk:
      path: {disk}
      type: Disk
  terminationGracePeriodSeconds: 1
",
        disk = disk.display()
    )
}

fn boots_from_its_disk(test: &str, bootloader: &str) {
    let Some(fw_dir) = firmware_dir(test) else {
        return;
    };
    let scratch = tempfile::tempdir().expect("tempdir");
    let disk = scratch.path().join("boot.img");
    images::write_boot_disk(&disk).expect("write the boot disk");
    let mut launcher = Launcher::start(VmOptions {
        spec: Some(spec(test, &disk, bootloader)),
        run_args: vec!["--ch-firmware-dir".into(), fw_dir.display().to_string()],
        ..VmOptions::default()
    });
    let log = wait_file_contains(&launcher.serial_log(), BANNER);
    for step in [
        "Found EFI partition",
        "Filesystem ready",
        "Jumping to kernel",
    ] {
        assert!(log.contains(step), "firmware step {step:?} missing: {log}");
    }
    let logs = launcher.logs_text();
    assert!(
        logs.contains("rust-hypervisor-firmware"),
        "the launcher says which firmware and why: {logs}"
    );
    let mut console = launcher.console();
    console.send(b"fw");
    console.expect(b"fw");
    console.send(b"q");
    let exit = launcher.expect_exit(SLOW);
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
}

#[test]
fn default_bios_boot_boots_the_disk_through_rust_hypervisor_firmware() {
    boots_from_its_disk("fw-bios", "");
}

#[test]
fn efi_boot_without_cloudhv_fd_falls_back_to_rust_hypervisor_firmware() {
    boots_from_its_disk(
        "fw-efi",
        "    firmware:\n      bootloader:\n        efi:\n          secureBoot: false\n",
    );
}

/// A containerDisk boots through a qcow2 overlay the launcher made in the
/// ephemeral disk dir: CH opens the overlay (with its backing file), the
/// image itself is never written, and the overlay is gone with the VM.
#[test]
fn container_disk_boots_through_a_copy_on_write_overlay_and_the_image_is_untouched() {
    let test = "fw-containerdisk";
    let Some(fw_dir) = firmware_dir(test) else {
        return;
    };
    let scratch = tempfile::tempdir().expect("tempdir");
    let image_dir = scratch.path().join("container-disks").join("rootdisk");
    std::fs::create_dir_all(&image_dir).expect("mkdir");
    let image = image_dir.join("disk.img");
    images::write_boot_disk(&image).expect("write the boot disk");
    let before = std::fs::read(&image).expect("read image");
    let ephemeral = scratch.path().join("ephemeral");
    let text = spec(test, &image, "").replace(
        &format!(
            "    hostDisk:\n      path: {}\n      type: Disk\n",
            image.display()
        ),
        "    containerDisk:\n      image: registry.example/tiny:1\n",
    );
    assert!(text.contains("containerDisk"), "{text}");
    let mut launcher = Launcher::start(VmOptions {
        spec: Some(text),
        run_args: vec![
            "--ch-firmware-dir".into(),
            fw_dir.display().to_string(),
            "--container-disk-dir".into(),
            scratch.path().join("container-disks").display().to_string(),
            "--ephemeral-disk-dir".into(),
            ephemeral.display().to_string(),
        ],
        ..VmOptions::default()
    });
    wait_file_contains(&launcher.serial_log(), BANNER);
    let overlay = ephemeral.join(launcher.uid()).join("rootdisk.qcow2");
    let info = integration::unix_http::ch_vm_info(&launcher.vm_dir().join("ch-api.sock"))
        .expect("vm.info");
    let disk = &info["config"]["disks"][0];
    assert_eq!(disk["path"], overlay.display().to_string(), "{info}");
    assert_eq!(disk["image_type"], "Qcow2");
    let header = std::fs::read(&overlay).expect("overlay");
    assert_eq!(&header[..4], b"QFI\xfb", "a qcow2 overlay");
    let mut console = launcher.console();
    console.send(b"q");
    let exit = launcher.expect_exit(SLOW);
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
    assert!(
        std::fs::read(&image).expect("read image") == before,
        "the image was written"
    );
    assert!(!overlay.exists(), "the overlay outlived the VM");
}
