//! Boots the real test guests under `qemu-system-x86_64` (QEMU_BIN, or the one
//! in PATH; `SKIP:` when there is none) and checks what a user of the guest
//! relies on: the banner, the echo, reboot on `r`, and power-off that makes the
//! hypervisor exit by itself.
//!
//! KVM is used when it works, otherwise QEMU falls back to TCG (slower, hence
//! the generous deadlines).

use images::{Variant, BANNER, POWER_OFF_KEY, REBOOT_KEY};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

fn qemu_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("QEMU_BIN") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("qemu-system-x86_64"))
        .find(|candidate| candidate.is_file())
}

/// A running QEMU; killed and reaped when dropped, so a failing test leaves
/// nothing behind.
struct Qemu {
    child: Child,
    stdin: Option<ChildStdin>,
    serial: Receiver<Vec<u8>>,
    seen: Vec<u8>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Qemu {
    /// `None` (after printing `SKIP:`) when there is no QEMU to run.
    fn boot(variant: Variant, allow_reboot: bool) -> Option<Qemu> {
        let Some(binary) = qemu_binary() else {
            println!("SKIP: qemu-system-x86_64 not found (set QEMU_BIN or install QEMU)");
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
            .stderr(Stdio::piped());
        if !allow_reboot {
            command.arg("-no-reboot");
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");

        let (sender, serial) = mpsc::channel();
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buffer) {
                if sender.send(buffer[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let stderr_text = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr_text);
        thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text);
            if let Ok(mut sink) = sink.lock() {
                *sink = text;
            }
        });
        Some(Qemu {
            child,
            stdin,
            serial,
            seen: Vec::new(),
            stderr: stderr_text,
        })
    }

    fn diagnostics(&self) -> String {
        let stderr = self
            .stderr
            .lock()
            .map(|text| String::from_utf8_lossy(&text).into_owned())
            .unwrap_or_default();
        format!(
            "serial so far: {:?}\nqemu stderr: {stderr}",
            String::from_utf8_lossy(&self.seen)
        )
    }

    /// Waits until `needle` appears in the serial output at or after `from`;
    /// returns the offset just past it.
    fn expect(&mut self, needle: &[u8], from: usize) -> usize {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(at) = self.seen[from.min(self.seen.len())..]
                .windows(needle.len())
                .position(|window| window == needle)
            {
                return from + at + needle.len();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.serial.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no {:?} on the serial console within {DEADLINE:?}\n{}",
                    String::from_utf8_lossy(needle),
                    self.diagnostics()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "QEMU closed its output before {:?} appeared\n{}",
                    String::from_utf8_lossy(needle),
                    self.diagnostics()
                ),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        stdin
            .write_all(bytes)
            .expect("write to QEMU's serial input");
        stdin.flush().expect("flush QEMU's serial input");
    }

    fn expect_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => panic!(
                    "QEMU still runs {DEADLINE:?} after the guest should have powered off\n{}",
                    self.diagnostics()
                ),
                Err(err) => panic!("cannot wait for QEMU: {err}"),
            }
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[test]
fn halting_guest_prints_banner_and_qemu_exits_by_itself() {
    let Some(mut qemu) = Qemu::boot(Variant::Halting, false) else {
        return;
    };
    qemu.expect(BANNER.as_bytes(), 0);
    let status = qemu.expect_exit();
    assert!(
        status.success(),
        "QEMU exit after guest power-off: {status}\n{}",
        qemu.diagnostics()
    );
}

#[test]
fn interactive_guest_echoes_input_reboots_on_r_and_powers_off_on_q() {
    let Some(mut qemu) = Qemu::boot(Variant::Interactive, true) else {
        return;
    };
    // Input sent before the banner may be eaten by the firmware, so wait.
    let after_banner = qemu.expect(BANNER.as_bytes(), 0);
    qemu.send(b"echo-check");
    let after_echo = qemu.expect(b"echo-check", after_banner);

    qemu.send(&[REBOOT_KEY]);
    let after_reboot = qemu.expect(BANNER.as_bytes(), after_echo);
    assert!(
        qemu.child.try_wait().ok().flatten().is_none(),
        "QEMU must keep running across a guest reboot\n{}",
        qemu.diagnostics()
    );

    qemu.send(b"still-echoing");
    qemu.expect(b"still-echoing", after_reboot);
    qemu.send(&[POWER_OFF_KEY]);
    let status = qemu.expect_exit();
    assert!(
        status.success(),
        "QEMU exit after guest power-off: {status}\n{}",
        qemu.diagnostics()
    );
}
