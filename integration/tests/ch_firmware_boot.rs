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
