//! Boots the real test guests under the real Cloud Hypervisor named by
//! CLOUD_HYPERVISOR_BIN (`SKIP:` when unset): banner, echo, reboot on `r`, and
//! a guest power-off that makes the VMM exit 0 by itself.

mod common;

use common::{Guarded, Transcript, Wait};
use images::{Variant, BANNER, POWER_OFF_KEY, REBOOT_KEY};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

fn cloud_hypervisor() -> Option<PathBuf> {
    let binary = std::env::var_os("CLOUD_HYPERVISOR_BIN").map(PathBuf::from);
    if binary.is_none() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            concat!("SKIP: CLOUD_HYPERVISOR_BIN is not set", "\n").as_bytes(),
        );
    }
    binary
}

fn command(binary: &Path, variant: Variant) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("--kernel")
        .arg(variant.path())
        .args([
            "--memory",
            "size=64M",
            "--cpus",
            "boot=1",
            "--console",
            "off",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Connects to the serial socket, retrying while Cloud Hypervisor creates it
/// (or re-creates it after a guest reboot) and failing if the VMM dies.
fn connect(socket: &Path, process: &mut Guarded) -> UnixStream {
    let deadline = Instant::now() + common::DEADLINE;
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return stream,
            Err(_) if process.is_running() && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(err) => panic!(
                "cannot connect to {} (VMM running: {}): {err}",
                socket.display(),
                process.is_running()
            ),
        }
    }
}

#[test]
fn halting_guest_prints_banner_and_cloud_hypervisor_exits_zero() {
    let Some(binary) = cloud_hypervisor() else {
        return;
    };
    let mut child = command(&binary, Variant::Halting)
        .args(["--serial", "tty"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
    let serial = Transcript::new();
    serial.attach(child.stdout.take().expect("stdout is piped"));
    let mut process = Guarded(child);
    let mut serial = serial;

    serial.expect(BANNER.as_bytes(), 0);
    let status = process
        .wait_exit()
        .unwrap_or_else(|message| panic!("VMM did not exit after guest power-off: {message}"));
    assert!(
        status.success(),
        "VMM exit status after guest power-off: {status}"
    );
}

#[test]
fn interactive_guest_echoes_input_reboots_on_r_and_powers_off_on_q_under_cloud_hypervisor() {
    let Some(binary) = cloud_hypervisor() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("serial.sock");
    let child = command(&binary, Variant::Interactive)
        .arg("--serial")
        .arg(format!("socket={}", socket.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
    let mut process = Guarded(child);
    let mut serial = Transcript::new();

    // Cloud Hypervisor keeps the guest's output until a client connects.
    let mut stream = connect(&socket, &mut process);
    serial.attach(stream.try_clone().expect("clone serial stream"));
    let after_banner = serial.expect(BANNER.as_bytes(), 0);
    stream.write_all(b"echo-check").expect("write serial");
    let after_echo = serial.expect(b"echo-check", after_banner);

    // A guest reboot re-creates the serial device, which drops the client;
    // the new banner is waiting for whoever connects next.
    stream.write_all(&[REBOOT_KEY]).expect("write serial");
    let after_reboot = match serial.wait_for(BANNER.as_bytes(), after_echo) {
        Ok(Wait::Found(end)) => end,
        Ok(Wait::Closed) => {
            stream = connect(&socket, &mut process);
            serial.attach(stream.try_clone().expect("clone serial stream"));
            serial.expect(BANNER.as_bytes(), after_echo)
        }
        Err(message) => panic!("{message}"),
    };
    assert!(process.is_running(), "the VMM must survive a guest reboot");

    stream.write_all(b"still-echoing").expect("write serial");
    serial.expect(b"still-echoing", after_reboot);
    stream.write_all(&[POWER_OFF_KEY]).expect("write serial");
    let status = process
        .wait_exit()
        .unwrap_or_else(|message| panic!("VMM did not exit after guest power-off: {message}"));
    assert!(
        status.success(),
        "VMM exit status after guest power-off: {status}"
    );
}
