//! `ch-launcher run` end to end under Cloud Hypervisor: the real one when
//! `CLOUD_HYPERVISOR_BIN` is set, otherwise the stand-in (with a SKIP line).
//! The guest is the tiny test guest: it prints `TINY-GUEST-UP`, echoes its
//! input, powers off on `q`, reboots on `r` and ignores the ACPI power button.

mod ch_support;

use ch_support::{run_to_exit, wait_file_contains, Launcher, VmOptions, SLOW};
use images::Variant;
use nix::sys::signal::{kill, Signal};
use std::time::{Duration, Instant};

const BANNER: &str = images::BANNER;

#[test]
fn banner_reaches_the_console_socket_and_the_log_from_the_first_byte() {
    // Started paused, so a client can be connected before the first byte.
    let launcher = Launcher::start(VmOptions {
        start_paused: true,
        ..VmOptions::default()
    });
    let status = launcher.ctl("status");
    assert_eq!(
        (&status["state"], &status["reason"]),
        (&"Paused".into(), &"StartingUp".into())
    );
    let mut console = launcher.console();

    let status = launcher.ctl("resume");
    assert_eq!(status["state"], "Running");
    console.expect(BANNER.as_bytes());
    let log = wait_file_contains(&launcher.serial_log(), BANNER);
    assert_eq!(log, BANNER, "the log holds exactly the guest's output");
}

#[test]
fn guest_output_without_a_client_is_logged() {
    let launcher = Launcher::start(VmOptions::default());
    // Nobody connected: the banner still goes to the log.
    let log = wait_file_contains(&launcher.serial_log(), BANNER);
    assert!(log.starts_with(BANNER), "{log:?}");
}

#[test]
fn echo_round_trip_over_virt_serial0() {
    let launcher = Launcher::start(VmOptions::default());
    wait_file_contains(&launcher.serial_log(), BANNER);
    let mut console = launcher.console();
    console.send(b"hello");
    console.expect(b"hello");
    let log = wait_file_contains(&launcher.serial_log(), "hello");
    assert_eq!(log, format!("{BANNER}hello"));
}

#[test]
fn second_console_connection_replaces_the_first() {
    let launcher = Launcher::start(VmOptions::default());
    wait_file_contains(&launcher.serial_log(), BANNER);
    let mut first = launcher.console();
    first.send(b"a");
    first.expect(b"a");

    let mut second = launcher.console();
    first.expect_closed();
    second.send(b"b");
    second.expect(b"b");
}

#[test]
fn guest_poweroff_exits_0_with_shutoff_shutdown() {
    let mut launcher = Launcher::start(VmOptions::default());
    let status = launcher.wait_status("Running", |s| s["state"] == "Running");
    assert_eq!(status["reason"], "Booted");

    let mut console = launcher.console();
    console.send(b"q");
    let exit = launcher.expect_exit(SLOW);
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
    assert_eq!(
        launcher.logged_final_state(),
        ("Shutoff".to_owned(), "Shutdown".to_owned())
    );
    launcher.expect_no_vmm(SLOW);
    assert!(!launcher.serial_socket().exists(), "virt-serial0 removed");
    assert!(!launcher.control_socket().exists(), "launcher-sock removed");
    assert!(launcher.serial_log().exists(), "the console log stays");
}

#[test]
fn sigterm_stops_gracefully_after_the_grace_period_and_exits_0() {
    let mut launcher = Launcher::start(VmOptions {
        grace_seconds: 1,
        ..VmOptions::default()
    });
    launcher.wait_status("Running", |s| s["state"] == "Running");
    let sent = Instant::now();
    launcher.signal(Signal::SIGTERM);
    let exit = launcher.expect_exit(SLOW);
    let took = sent.elapsed();
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
    // The guest ignores the power button, so the launcher waited it out.
    assert!(took >= Duration::from_secs(1), "stopped after {took:?}");
    assert_eq!(
        launcher.logged_final_state(),
        ("Shutoff".to_owned(), "Destroyed".to_owned())
    );
    launcher.expect_no_vmm(SLOW);
}

#[test]
fn control_stop_is_the_same_graceful_stop() {
    let mut launcher = Launcher::start(VmOptions::default());
    launcher.wait_status("Running", |s| s["state"] == "Running");
    launcher.ctl("stop");
    let exit = launcher.expect_exit(SLOW);
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
    assert_eq!(
        launcher.logged_final_state(),
        ("Shutoff".to_owned(), "Destroyed".to_owned())
    );
}

#[test]
fn vmm_sigkill_is_a_crash_with_nonzero_exit_within_a_second() {
    let mut launcher = Launcher::start(VmOptions::default());
    launcher.wait_status("Running", |s| s["state"] == "Running");
    let vmm = launcher.vmm_pid();
    let killed = Instant::now();
    kill(vmm, Signal::SIGKILL).expect("kill the VMM");
    let exit = launcher.expect_exit(Duration::from_secs(1));
    let took = killed.elapsed();
    assert_eq!(exit.code(), Some(3), "exit {exit} after a crash");
    assert!(took <= Duration::from_secs(1), "noticed after {took:?}");
    assert_eq!(launcher.logged_final_state().0, "Crashed");
}

#[test]
fn launcher_sigkill_leaves_no_vmm_behind() {
    let mut launcher = Launcher::start(VmOptions::default());
    launcher.wait_status("Running", |s| s["state"] == "Running");
    assert_eq!(launcher.vmm_pids().len(), 1);
    launcher.signal(Signal::SIGKILL);
    launcher.expect_exit(SLOW);
    launcher.expect_no_vmm(Duration::from_secs(5));
}

#[test]
fn pause_reports_paused_user_and_resume_running_again() {
    let launcher = Launcher::start(VmOptions::default());
    launcher.wait_status("Running", |s| s["state"] == "Running");

    let paused = launcher.ctl("pause");
    assert_eq!(
        (&paused["state"], &paused["reason"]),
        (&"Paused".into(), &"User".into())
    );
    let status = launcher.ctl("status");
    assert_eq!(
        (&status["state"], &status["reason"]),
        (&"Paused".into(), &"User".into())
    );

    let resumed = launcher.ctl("resume");
    assert_eq!(resumed["state"], "Running");
    // And the guest really runs again.
    let mut console = launcher.console();
    console.send(b"x");
    console.expect(b"x");
}

#[test]
fn guest_reboot_keeps_the_console_and_every_byte_until_the_power_off() {
    let mut launcher = Launcher::start(VmOptions::default());
    // The first banner went to the log before anyone connected.
    wait_file_contains(&launcher.serial_log(), BANNER);
    let mut console = launcher.console();
    console.send(b"r");
    // The serial socket keeps the echo of `r` written just before the
    // reboot; the new boot's banner comes on the same client connection.
    console.expect(format!("r{BANNER}").as_bytes());
    let status = launcher.ctl("status");
    assert_eq!(status["state"], "Running");
    console.send(b"q");
    let exit = launcher.expect_exit(SLOW);
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
    console.expect(b"q");
    console.expect_closed();
    let log = std::fs::read_to_string(launcher.serial_log()).expect("console log");
    assert_eq!(log, format!("{BANNER}r{BANNER}q"));
}

#[test]
fn halting_guest_banner_is_logged_before_it_powers_off() {
    let run = run_to_exit(Variant::Halting, &[]);
    assert_eq!(run.status.code(), Some(0), "{}", run.logs);
    assert_eq!(run.serial_log, BANNER, "{}", run.logs);
}

#[test]
fn halting_guest_banner_reaches_a_connected_client_before_the_connection_closes() {
    let mut launcher = Launcher::start(VmOptions {
        variant: Variant::Halting,
        start_paused: true,
        ..VmOptions::default()
    });
    let mut console = launcher.console();
    // The guest may be gone before `resume` sees it running: only the
    // console and the exit tell.
    let _ = launcher.ctl_output("resume");
    console.expect(BANNER.as_bytes());
    let exit = launcher.expect_exit(SLOW);
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
    console.expect_closed();
    let log = std::fs::read_to_string(launcher.serial_log()).expect("console log");
    assert_eq!(log, BANNER);
}

/// `--ch-serial pty`: Cloud Hypervisor's PTY instead of its socket. Only the
/// last bytes before a power-off may be lost; echo and reboots work alike.
#[test]
fn pty_serial_mode_relays_echo_and_follows_a_reboot() {
    let mut launcher = Launcher::start(VmOptions {
        run_args: vec!["--ch-serial".into(), "pty".into()],
        ..VmOptions::default()
    });
    wait_file_contains(&launcher.serial_log(), BANNER);
    let mut console = launcher.console();
    console.send(b"hello");
    console.expect(b"hello");
    console.send(b"r");
    // The echo of `r` may be lost: the hypervisor closes the old PTY right
    // after it, and the kernel drops what the launcher had not read yet.
    // The banner comes through the new PTY, on the same connection.
    console.expect(BANNER.as_bytes());
    // The log is written by a thread of its own: it may trail the client.
    let deadline = Instant::now() + SLOW;
    let mut log = String::new();
    while log.matches(BANNER).count() < 2 && Instant::now() < deadline {
        log = std::fs::read_to_string(launcher.serial_log()).expect("console log");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(log.matches(BANNER).count(), 2, "{log:?}");
    console.send(b"x");
    console.expect(b"x");
    let status = launcher.ctl("status");
    assert_eq!(status["state"], "Running");
    assert!(
        !launcher
            .serial_socket()
            .with_file_name("ch-serial.sock")
            .exists(),
        "no serial socket in PTY mode"
    );
    launcher.signal(Signal::SIGTERM);
    let exit = launcher.expect_exit(SLOW);
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
}

#[test]
fn control_commands_find_the_vm_by_its_spec_too() {
    let launcher = Launcher::start(VmOptions::default());
    launcher.wait_status("Running", |s| s["state"] == "Running");
    let out = std::process::Command::new(integration::launcher_path())
        .arg("--private-dir")
        .arg(launcher.private_dir())
        .arg("status")
        .arg(launcher.spec())
        .output()
        .expect("run ch-launcher status SPEC");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert_eq!(status["state"], "Running");
}

#[test]
fn control_command_without_a_launcher_fails_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(integration::launcher_path())
        .arg("--private-dir")
        .arg(dir.path())
        .args(["status", "--uid", "nope"])
        .output()
        .expect("run ch-launcher status");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the launcher"), "{err}");
}

#[test]
fn run_on_a_terminal_attaches_the_console_and_ctrl_bracket_detaches() {
    let mut launcher = Launcher::start(VmOptions {
        start_paused: true,
        terminal: true,
        ..VmOptions::default()
    });
    let term = launcher.terminal.as_mut().expect("terminal");
    term.expect_cooked(false);
    launcher.ctl("resume");
    let term = launcher.terminal.as_mut().expect("terminal");
    term.expect(BANNER.as_bytes());
    // Ctrl-C goes to the guest (which echoes it) while attached.
    term.send(b"hi\x03");
    term.expect(b"hi\x03");

    term.send(&[0x1d]);
    term.expect_cooked(true);
    let status = launcher.ctl("status");
    assert_eq!(
        status["state"], "Running",
        "detaching leaves the VM running"
    );

    launcher.signal(Signal::SIGTERM);
    let exit = launcher.expect_exit(SLOW);
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
}

#[test]
fn terminal_is_restored_when_the_guest_powers_off_while_attached() {
    let mut launcher = Launcher::start(VmOptions {
        terminal: true,
        ..VmOptions::default()
    });
    let term = launcher.terminal.as_mut().expect("terminal");
    term.expect_cooked(false);
    launcher.wait_status("Running", |s| s["state"] == "Running");
    let term = launcher.terminal.as_mut().expect("terminal");
    term.send(b"q");
    let exit = launcher.expect_exit(SLOW);
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
    assert!(launcher.terminal.as_ref().expect("terminal").is_cooked());
}

#[test]
fn console_socket_mode_option_sets_the_socket_and_log_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let launcher = Launcher::start(VmOptions {
        run_args: vec!["--console-socket-mode".into(), "0660".into()],
        ..VmOptions::default()
    });
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&launcher.serial_socket()), 0o660);
    assert_eq!(mode(&launcher.serial_log()), 0o660);
    assert_eq!(mode(&launcher.control_socket()), 0o600);
    let vm_dir = launcher
        .serial_socket()
        .parent()
        .expect("vm dir")
        .to_path_buf();
    // The group may pass the directory (not list it), or the socket's 0660
    // would be unreachable for it.
    assert_eq!(mode(&vm_dir), 0o710);
    assert_group_member_can_connect(&launcher.serial_socket());
}

/// Connects to `socket` as a user who is not its owner but in its group
/// (`nobody` with the socket's gid), like virt-handler in another container.
/// Needs root to switch users; says SKIP otherwise.
fn assert_group_member_can_connect(socket: &std::path::Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::Uid::effective().is_root() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            concat!("SKIP: connecting as another user needs root", "\n").as_bytes(),
        );
        return;
    }
    let gid = std::fs::metadata(socket).expect("stat socket").gid();
    // The test's temporary directory is 0700; a pod's /var/run is not.
    let top = socket
        .ancestors()
        .find(|p| p.parent() == Some(std::path::Path::new("/tmp")))
        .expect("the test VM lives under /tmp");
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    // `socat` would do; the system's Perl is more likely to be there.
    let script = "use Socket; socket(S, PF_UNIX, SOCK_STREAM, 0) or die $!; \
                  connect(S, pack_sockaddr_un($ARGV[0])) or die \"connect: $!\"";
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"])
        .args(["/usr/bin/perl", "-e", script])
        .arg(socket)
        .output()
        .expect("run setpriv (util-linux)");
    assert!(
        out.status.success(),
        "uid 65534 with gid {gid} cannot connect to {}: {}",
        socket.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn default_console_socket_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let launcher = Launcher::start(VmOptions::default());
    let mode = std::fs::metadata(launcher.serial_socket())
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

/// Cloud Hypervisor queues serial input without bound and dies (SIGSYS from
/// its own seccomp filter, on `mremap`) once a paste outruns the guest; the
/// relay paces input so a long paste goes through. 1 MiB (unpaced, CH died
/// after 0.3-1.7 MB) takes about 90 s at the relay's 115200-baud pace. The
/// stand-in does not reproduce the crash, so against it a shorter paste only
/// proves that paced input all arrives.
#[test]
fn a_long_paste_reaches_the_guest_and_the_vm_survives() {
    use std::io::{Read, Write};
    let real_ch = std::env::var_os(ch_support::CH_BIN_ENV).is_some();
    let size: usize = if real_ch { 1 << 20 } else { 1 << 17 };
    let launcher = Launcher::start(VmOptions::default());
    wait_file_contains(&launcher.serial_log(), BANNER);
    let vmm = launcher.vmm_pid();
    let stream = launcher.console().into_stream();
    let mut reader = stream.try_clone().expect("clone console stream");
    // The echo comes back while the paste goes out; read it concurrently.
    let echoed = std::thread::spawn(move || {
        let mut total = 0usize;
        let mut buf = vec![0u8; 65536];
        reader.set_read_timeout(Some(SLOW)).expect("read timeout");
        while total < size {
            // Ends on a 15 s silence: what arrived by then is the answer.
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    });
    // No 'q' or 'r': the guest powers off or reboots on those.
    let chunk: Vec<u8> = (0..65536).map(|i| b"abcdefghijklmnop"[i % 16]).collect();
    let started = Instant::now();
    let mut writer = stream;
    for _ in 0..size / chunk.len() {
        if let Err(e) = writer.write_all(&chunk) {
            panic!(
                "the console closed after {:?} of pasting: {e}; VMM log:\n{}",
                started.elapsed(),
                std::fs::read_to_string(launcher.vm_dir().join("cloud-hypervisor.log"))
                    .unwrap_or_default()
            );
        }
    }
    // The stand-in holds echo it could not write at once until the guest
    // writes again, so keep the guest writing (one byte a second) until the
    // whole paste is back.
    while !echoed.is_finished() {
        if writer.write_all(b".").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let total = echoed.join().expect("reader thread");
    eprintln!(
        "pasted {size} bytes, {total} echoed in {:?}",
        started.elapsed()
    );
    assert!(total >= size, "{total} of {size}: {}", launcher.logs_text());
    assert_eq!(launcher.vmm_pids(), vec![vmm], "the VMM died");
    assert_eq!(launcher.ctl("status")["state"], "Running");
}

#[test]
fn a_second_launcher_for_the_same_vm_exits_1_without_touching_the_first() {
    let launcher = Launcher::start(VmOptions::default());
    wait_file_contains(&launcher.serial_log(), BANNER);
    let api = launcher.vm_dir().join("ch-api.sock");
    let vmm_log = launcher.vm_dir().join("cloud-hypervisor.log");
    let log_before = std::fs::metadata(&vmm_log).map(|m| m.len()).unwrap_or(0);

    let second = std::process::Command::new(integration::launcher_path())
        .arg("--private-dir")
        .arg(launcher.private_dir())
        .args(["run", "--no-attach"])
        .arg(launcher.spec())
        .env(ch_support::CH_BIN_ENV, ch_support::vmm_bin())
        .output()
        .expect("run a second launcher");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    let pid = launcher.pid().as_raw();
    assert!(
        stderr.contains(&format!("another ch-launcher (pid {pid}) runs this VM")),
        "{stderr}"
    );
    // The first VM's files are untouched and it still answers.
    assert!(api.exists(), "the API socket was removed");
    let log_after = std::fs::metadata(&vmm_log).map(|m| m.len()).unwrap_or(0);
    assert!(log_after >= log_before, "the VMM log was truncated");
    let mut console = launcher.console();
    console.send(b"x");
    console.expect(b"x");
}

/// A VMM that stops answering (SIGSTOP) must not keep the launcher from
/// stopping: the second signal destroys, SIGKILLing the VMM.
#[test]
fn a_stopped_vmm_is_killed_on_the_second_signal() {
    let mut launcher = Launcher::start(VmOptions {
        grace_seconds: 600,
        ..VmOptions::default()
    });
    launcher.wait_status("Running", |s| s["state"] == "Running");
    let vmm = launcher.vmm_pid();
    kill(vmm, Signal::SIGSTOP).expect("SIGSTOP the VMM");
    launcher.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    launcher.signal(Signal::SIGTERM);
    // The API timeout (5 s) plus the kill; far below the grace period.
    let exit = launcher.wait_exit(Duration::from_secs(20));
    let _ = kill(vmm, Signal::SIGCONT);
    let exit = exit.unwrap_or_else(|| panic!("launcher still runs: {}", launcher.logs_text()));
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
    assert_eq!(
        launcher.logged_final_state(),
        ("Shutoff".to_string(), "Destroyed".to_string())
    );
    launcher.expect_no_vmm(SLOW);
}
