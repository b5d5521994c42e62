//! Boots the real test guests under `qemu-system-x86_64` (QEMU_BIN, or the one
//! in PATH; `SKIP:` when there is none) and checks what a user of the guest
//! relies on: the banner, the echo, reboot on `r`, and a power-off that makes
//! QEMU exit by itself.
//!
//! KVM is used when it works, otherwise QEMU falls back to TCG.

mod common;

use common::{Guarded, Transcript};
use images::{Variant, BANNER, POWER_OFF_KEY, REBOOT_KEY};
use std::io::Write;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};

fn qemu_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("QEMU_BIN") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("qemu-system-x86_64"))
        .find(|candidate| candidate.is_file())
}

struct Qemu {
    process: Guarded,
    serial_in: ChildStdin,
    serial: Transcript,
}

impl Qemu {
    /// `None` (after printing `SKIP:`) when there is no QEMU to run.
    fn boot(variant: Variant, allow_reboot: bool) -> Option<Qemu> {
        let Some(binary) = qemu_binary() else {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"SKIP: qemu-system-x86_64 not found (set QEMU_BIN or install QEMU)\n",
            );
            return None;
        };
        let mut command = Command::new(&binary);
        command
            .args(["-M", "q35,accel=kvm:tcg", "-m", "64", "-smp", "1"])
            .arg("-kernel")
            .arg(variant.path())
            .args(["-nographic", "-display", "none", "-monitor", "none"])
            .args(["-serial", "stdio", "-nic", "none"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // QEMU's warnings (e.g. about CPUID features under nested KVM)
            // would only clutter the test output.
            .stderr(Stdio::null());
        if !allow_reboot {
            command.arg("-no-reboot");
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let serial_in = child.stdin.take().expect("stdin is piped");
        let serial_out = child.stdout.take().expect("stdout is piped");
        let serial = Transcript::new();
        serial.attach(serial_out);
        Some(Qemu {
            process: Guarded(child),
            serial_in,
            serial,
        })
    }

    fn send(&mut self, bytes: &[u8]) {
        self.serial_in
            .write_all(bytes)
            .and_then(|()| self.serial_in.flush())
            .expect("write to QEMU's serial input");
    }

    fn expect_clean_exit(&mut self) {
        match self.process.wait_exit() {
            Ok(status) => assert!(
                status.success(),
                "QEMU exit status after guest power-off: {status}; serial: {:?}",
                self.serial.text()
            ),
            Err(message) => panic!(
                "QEMU did not exit after guest power-off: {message}; serial: {:?}",
                self.serial.text()
            ),
        }
    }
}

#[test]
fn halting_guest_prints_banner_and_qemu_exits_by_itself() {
    let Some(mut qemu) = Qemu::boot(Variant::Halting, false) else {
        return;
    };
    qemu.serial.expect(BANNER.as_bytes(), 0);
    qemu.expect_clean_exit();
}

#[test]
fn interactive_guest_echoes_input_reboots_on_r_and_powers_off_on_q_under_qemu() {
    let Some(mut qemu) = Qemu::boot(Variant::Interactive, true) else {
        return;
    };
    // Input sent before the banner may be eaten by the firmware, so wait.
    let after_banner = qemu.serial.expect(BANNER.as_bytes(), 0);
    qemu.send(b"echo-check");
    let after_echo = qemu.serial.expect(b"echo-check", after_banner);

    qemu.send(&[REBOOT_KEY]);
    let after_reboot = qemu.serial.expect(BANNER.as_bytes(), after_echo);
    assert!(
        qemu.process.is_running(),
        "QEMU must keep running across a guest reboot; serial: {:?}",
        qemu.serial.text()
    );

    qemu.send(b"still-echoing");
    qemu.serial.expect(b"still-echoing", after_reboot);
    qemu.send(&[POWER_OFF_KEY]);
    qemu.expect_clean_exit();
}
