//! The Cloud Hypervisor backend against a real `cloud-hypervisor` binary
//! (`CLOUD_HYPERVISOR_BIN`) booting the tiny test guest from `images`.
//!
//! Without `CLOUD_HYPERVISOR_BIN` every test prints a `SKIP:` line and passes.
//! VMMs are tied to the test thread (PDEATHSIG) and killed on drop, so a
//! failing test leaves none behind.

mod common;

use ch_launcher::backend::{Backend, BackendError, ConsoleSource, Created};
use ch_launcher::ch::{self, ChOptions, ChVm, SerialMode};
use ch_launcher::lifecycle::Event;
use ch_launcher::paths::VmPaths;
use common::ch_binary;
use domain_model::fixtures;
use domain_model::Domain;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const EVENT_WAIT: Duration = Duration::from_secs(10);

/// The events of a guest that reboots once and then powers off.
const REBOOT_THEN_POWER_OFF: [Event; 5] = [
    Event::Created,
    Event::Booted,
    Event::Rebooting,
    Event::Rebooted,
    Event::GuestPoweredOff,
];

fn domain(kernel: &Path) -> Domain {
    let mut d = fixtures::domain()
        .with_uid("0d6f2b8e-3c1a-4e55-9a0b-7c2d1e4f5a6b")
        .with_boot(fixtures::kernel_boot(kernel))
        .with_grace_period(Duration::from_secs(5));
    d.firmware.serial = Some("tiny-serial".into());
    d.devices.rng = true;
    d
}

struct Vm {
    created: Created<ChVm>,
    _dir: tempfile::TempDir,
}

/// A VM whose serial port is a PTY (the tests below read it directly).
async fn create(bin: PathBuf, kernel: &Path) -> Vm {
    create_with(bin, kernel, SerialMode::Pty).await
}

async fn create_with(bin: PathBuf, kernel: &Path, serial: SerialMode) -> Vm {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = VmPaths::new(dir.path(), "vm");
    let opts = ChOptions {
        binary: Some(bin),
        serial,
        ..ChOptions::default()
    };
    let created = match ch::create(&domain(kernel), &paths, &opts).await {
        Ok(c) => c,
        Err(e) => panic!("create failed: {e}"),
    };
    Vm { created, _dir: dir }
}

impl Vm {
    async fn next_event(&mut self) -> Option<Event> {
        tokio::time::timeout(EVENT_WAIT, self.created.events.recv())
            .await
            .expect("an event (or the channel's end) in time")
    }

    /// The events up to and including `last`, which must come.
    async fn events_until(&mut self, last: Event) -> Vec<Event> {
        let mut events = Vec::new();
        while events.last() != Some(&last) {
            let event = self.next_event().await;
            events.push(event.unwrap_or_else(|| panic!("the events ended before {last:?}")));
        }
        events
    }

    /// Appends every event left, up to the end of the stream.
    async fn rest_of_events(&mut self, events: &mut Vec<Event>) {
        while let Some(e) = self.next_event().await {
            events.push(e);
        }
    }

    fn pty(&self) -> PathBuf {
        match &self.created.console {
            ConsoleSource::Pty(p) => p.clone(),
            other => panic!("expected a PTY, got {other:?}"),
        }
    }

    fn serial_socket(&self) -> PathBuf {
        match &self.created.console {
            ConsoleSource::UnixSocket(p) => p.clone(),
            other => panic!("expected a serial socket, got {other:?}"),
        }
    }

    /// The PTY `vm.info` names now (CH makes a new one on every reboot).
    async fn current_pty(&self) -> PathBuf {
        match self.created.backend.console().await.expect("vm.info") {
            ConsoleSource::Pty(p) => p,
            other => panic!("expected a PTY, got {other:?}"),
        }
    }
}

/// Connects to CH's serial socket and relays what it reads; the channel
/// closes when CH closes the connection (reboot or power-off).
fn socket_serial(path: &Path) -> (UnixStream, mpsc::UnboundedReceiver<Vec<u8>>) {
    let stream = UnixStream::connect(path).expect("connect to the serial socket");
    let mut reader = stream.try_clone().expect("dup socket");
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    (stream, rx)
}

/// Everything until the channel closes.
async fn read_to_end(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> String {
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(EVENT_WAIT, async {
        while let Some(chunk) = rx.recv().await {
            seen.extend(chunk);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(ended.is_ok(), "serial connection still open; got {text:?}");
    text
}

/// Opens the serial PTY raw (no echo, no CR/NL mangling) and relays what it
/// reads; the relay ends when the VMM closes its side.
fn serial(pty: &Path) -> (File, mpsc::UnboundedReceiver<Vec<u8>>) {
    use nix::sys::termios;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(pty)
        .expect("open PTY");
    let mut attrs = termios::tcgetattr(&file).expect("tcgetattr");
    termios::cfmakeraw(&mut attrs);
    termios::tcsetattr(&file, termios::SetArg::TCSANOW, &attrs).expect("tcsetattr");
    let mut reader = file.try_clone().expect("dup PTY");
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        loop {
            match reader.read(&mut buf) {
                Ok(n @ 1..) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                other => {
                    eprintln!("PTY read ended: {other:?}");
                    break;
                }
            }
        }
    });
    (file, rx)
}

async fn read_until(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>, needle: &str) -> String {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(EVENT_WAIT, async {
        while let Some(chunk) = rx.recv().await {
            seen.extend(chunk);
            if String::from_utf8_lossy(&seen).contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        matches!(found, Ok(true)),
        "serial output {text:?} lacks {needle:?}"
    );
    text
}

fn banner() -> &'static str {
    images::BANNER.trim_end()
}

/// CH closes the PTY as soon as the guest powers off, and the kernel drops
/// what the reader had not read yet (a PTY hangup flushes the slave's input),
/// so this guest's banner may or may not be seen: only the events are certain.
#[tokio::test]
async fn halting_guest_boots_then_powers_off() {
    let Some(bin) = ch_binary("halting_guest_boots_then_powers_off") else {
        return;
    };
    let mut vm = create(bin, images::halting_guest()).await;
    assert_eq!(vm.next_event().await, Some(Event::Created));
    let (_pty, _out) = serial(&vm.pty());
    vm.created.backend.boot().await.expect("boot");
    assert_eq!(vm.next_event().await, Some(Event::Booted));
    assert_eq!(vm.next_event().await, Some(Event::GuestPoweredOff));
    // The VMM exits after a guest power-off; nothing else is reported.
    assert_eq!(vm.next_event().await, None);
    assert!(vm.created.backend.has_exited());
}

/// In Socket mode CH holds output until a client connects and closes the
/// connection only after the guest's last byte: the banner always arrives.
#[tokio::test]
async fn halting_guest_banner_always_arrives_on_the_serial_socket() {
    let Some(bin) = ch_binary("halting_guest_banner_always_arrives_on_the_serial_socket") else {
        return;
    };
    let mut vm = create_with(bin, images::halting_guest(), SerialMode::Socket).await;
    assert_eq!(
        vm.serial_socket(),
        VmPaths::new(vm._dir.path(), "vm").ch_serial_socket()
    );
    assert_eq!(vm.next_event().await, Some(Event::Created));
    let (_socket, mut out) = socket_serial(&vm.serial_socket());
    vm.created.backend.boot().await.expect("boot");
    assert_eq!(vm.next_event().await, Some(Event::Booted));
    assert_eq!(vm.next_event().await, Some(Event::GuestPoweredOff));
    assert_eq!(vm.next_event().await, None);
    assert_eq!(read_to_end(&mut out).await, images::BANNER);
}

/// A reboot closes the client connection; CH binds the same path again and
/// the new boot's output waits there for the next client.
#[tokio::test]
async fn serial_socket_is_bound_again_at_the_same_path_after_a_reboot() {
    let Some(bin) = ch_binary("serial_socket_is_bound_again_at_the_same_path_after_a_reboot")
    else {
        return;
    };
    let mut vm = create_with(bin, images::test_guest(), SerialMode::Socket).await;
    let path = vm.serial_socket();
    let (mut socket, mut out) = socket_serial(&path);
    vm.created.backend.boot().await.expect("boot");
    read_until(&mut out, banner()).await;
    socket.write_all(&[images::REBOOT_KEY]).expect("write");
    read_to_end(&mut out).await;
    let mut events = vm.events_until(Event::Rebooted).await;
    assert_eq!(
        vm.created.backend.console().await.expect("vm.info"),
        ConsoleSource::UnixSocket(path.clone())
    );
    let (mut socket, mut out) = socket_serial(&path);
    // The new boot's banner waited for this client. The echo of the reboot
    // key may come first: when the guest resets before CH has flushed it to
    // the old client, CH hands it to the next one (seen under load).
    let text = read_until(&mut out, banner()).await;
    let before = text
        .strip_suffix(images::BANNER)
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(
        before.is_empty() || before == char::from(images::REBOOT_KEY).to_string(),
        "{text:?}"
    );
    socket.write_all(&[images::POWER_OFF_KEY]).expect("write");
    read_to_end(&mut out).await;
    vm.rest_of_events(&mut events).await;
    assert_eq!(events, REBOOT_THEN_POWER_OFF);
}

#[tokio::test]
async fn banner_on_the_pty_then_guest_power_off() {
    let Some(bin) = ch_binary("banner_on_the_pty_then_guest_power_off") else {
        return;
    };
    let mut vm = create(bin, images::test_guest()).await;
    let (mut pty, mut out) = serial(&vm.pty());
    vm.created.backend.boot().await.expect("boot");
    read_until(&mut out, banner()).await;
    pty.write_all(&[images::POWER_OFF_KEY]).expect("write");
    let mut events = Vec::new();
    vm.rest_of_events(&mut events).await;
    assert_eq!(
        events,
        [Event::Created, Event::Booted, Event::GuestPoweredOff]
    );
}

#[tokio::test]
async fn killing_the_vmm_reports_hypervisor_died_within_a_second() {
    let Some(bin) = ch_binary("killing_the_vmm_reports_hypervisor_died_within_a_second") else {
        return;
    };
    let mut vm = create(bin, images::test_guest()).await;
    let (_pty, mut out) = serial(&vm.pty());
    vm.created.backend.boot().await.expect("boot");
    read_until(&mut out, banner()).await;
    assert_eq!(vm.next_event().await, Some(Event::Created));
    assert_eq!(vm.next_event().await, Some(Event::Booted));

    let pid = vm.created.backend.pid().expect("pid") as i32;
    // Own process group: a terminal's Ctrl-C goes to the launcher only.
    let pid = nix::unistd::Pid::from_raw(pid);
    assert_eq!(nix::unistd::getpgid(Some(pid)), Ok(pid));
    let killed = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill the VMM");
    assert_eq!(
        vm.next_event().await,
        Some(Event::HypervisorDied {
            detail: "cloud-hypervisor was killed by signal 9".into()
        })
    );
    assert!(
        killed.elapsed() < Duration::from_secs(1),
        "took {:?}",
        killed.elapsed()
    );
    assert_eq!(vm.next_event().await, None);
    // Destroying what is already gone is not an error.
    vm.created.backend.destroy().await.expect("destroy");
}

#[tokio::test]
async fn pause_resume_reboot_and_destroy_are_reported_in_order() {
    let Some(bin) = ch_binary("pause_resume_reboot_and_destroy_are_reported_in_order") else {
        return;
    };
    let mut vm = create(bin, images::test_guest()).await;
    let first_pty = vm.pty();
    let (_pty, mut out) = serial(&first_pty);
    vm.created.backend.boot().await.expect("boot");
    read_until(&mut out, banner()).await;
    vm.created.backend.pause().await.expect("pause");
    vm.created.backend.resume().await.expect("resume");
    vm.created.backend.reboot().await.expect("reboot");
    let mut events = vm.events_until(Event::Rebooted).await;

    // A reboot replaces the serial PTY; the new one works both ways.
    let second_pty = vm.current_pty().await;
    assert_ne!(second_pty, first_pty);
    let (mut pty, mut out) = serial(&second_pty);
    pty.write_all(b"ping").expect("write to PTY");
    read_until(&mut out, "ping").await;

    vm.created.backend.destroy().await.expect("destroy");
    assert!(vm.created.backend.has_exited());
    vm.rest_of_events(&mut events).await;
    assert_eq!(
        events,
        [
            Event::Created,
            Event::Booted,
            Event::Paused,
            Event::Resumed,
            Event::Rebooting,
            Event::Rebooted,
            Event::Destroyed
        ]
    );
}

#[tokio::test]
async fn guest_reboot_and_power_off_from_the_console_are_reported() {
    let Some(bin) = ch_binary("guest_reboot_and_power_off_from_the_console_are_reported") else {
        return;
    };
    let mut vm = create(bin, images::test_guest()).await;
    let (mut pty, mut out) = serial(&vm.pty());
    vm.created.backend.boot().await.expect("boot");
    read_until(&mut out, banner()).await;
    pty.write_all(&[images::REBOOT_KEY]).expect("write");
    let mut events = vm.events_until(Event::Rebooted).await;
    let (mut pty, _out) = serial(&vm.current_pty().await);
    pty.write_all(&[images::POWER_OFF_KEY]).expect("write");
    vm.rest_of_events(&mut events).await;
    assert_eq!(events, REBOOT_THEN_POWER_OFF);
}

#[tokio::test]
async fn refused_operations_carry_cloud_hypervisors_error_chain() {
    let Some(bin) = ch_binary("refused_operations_carry_cloud_hypervisors_error_chain") else {
        return;
    };
    let vm = create(bin, images::test_guest()).await;
    let err = vm
        .created
        .backend
        .pause()
        .await
        .expect_err("not running yet");
    match err {
        BackendError::Refused { operation, chain } => {
            assert_eq!(operation, "vm.pause");
            assert_eq!(chain.first().map(String::as_str), Some("Error from API"));
            assert_eq!(chain.last().map(String::as_str), Some("VM is not running"));
        }
        other => panic!("expected a refusal, got {other}"),
    }
    let mut vm = vm;
    // A VM that never booted is destroyed all the same.
    vm.created.backend.destroy().await.expect("destroy");
    assert_eq!(vm.next_event().await, Some(Event::Created));
    assert_eq!(vm.next_event().await, Some(Event::Destroyed));
    assert_eq!(vm.next_event().await, None);
}

/// CH would accept `platform.tdx` on a build without TDX and ignore it.
#[tokio::test]
async fn confidential_domain_is_refused_by_a_build_without_the_feature() {
    let Some(bin) = ch_binary("confidential_domain_is_refused_by_a_build_without_the_feature")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = domain(images::test_guest());
    d.boot = fixtures::efi_boot(false);
    d.launch_security = Some(domain_model::LaunchSecurity::Tdx);
    let opts = ChOptions {
        binary: Some(bin),
        host: ch::HostInputs {
            firmware: Some(dir.path().join("tdvf.fd")),
            ..ch::HostInputs::default()
        },
        ..ChOptions::default()
    };
    let paths = VmPaths::new(dir.path(), "vm");
    match ch::create(&d, &paths, &opts).await {
        Err(ch::CreateError::MissingFeature {
            feature, features, ..
        }) => {
            assert_eq!(feature, "tdx");
            assert!(!features.iter().any(|f| f == "tdx"), "{features:?}");
        }
        Err(other) => panic!("expected a missing feature, got {other}"),
        Ok(_) => panic!("a TDX VM was created on a build without tdx"),
    }
}

#[tokio::test]
async fn missing_kernel_fails_at_boot_with_chs_reason() {
    let Some(bin) = ch_binary("missing_kernel_fails_at_boot_with_chs_reason") else {
        return;
    };
    let vm = create(bin, Path::new("/nonexistent/kernel")).await;
    let err = vm.created.backend.boot().await.expect_err("no kernel");
    assert!(
        err.to_string()
            .starts_with("vm.boot failed: Error from API: The VM could not boot"),
        "{err}"
    );
    assert!(err.to_string().contains("Cannot open kernel file"), "{err}");
    vm.created.backend.destroy().await.expect("destroy");
}

const CHILD_ENV: &str = "CH_BACKEND_TEST_LAUNCHER_CHILD";
const PID_PREFIX: &str = "VMM_PID=";

/// Runs as the "launcher" in a child process (re-executing this test
/// binary), so that the parent can SIGKILL it and watch the VMM go too.
#[tokio::test]
async fn vmm_dies_with_a_sigkilled_launcher() {
    let Some(bin) = ch_binary("vmm_dies_with_a_sigkilled_launcher") else {
        return;
    };
    if std::env::var_os(CHILD_ENV).is_some() {
        let vm = create(bin, images::test_guest()).await;
        vm.created.backend.boot().await.expect("boot");
        println!("{PID_PREFIX}{}", vm.created.backend.pid().expect("pid"));
        std::io::stdout().flush().expect("flush");
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    }

    let mut launcher = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "vmm_dies_with_a_sigkilled_launcher",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the child launcher");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = launcher.stdout.take().expect("stdout");
    let mut launcher = KillOnDrop(launcher);
    let vmm_pid: i32 = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.split_once(PID_PREFIX)
                .map(|(_, pid)| pid.trim().to_owned())
        })
        .expect("the child reports its VMM")
        .parse()
        .expect("a pid");
    assert!(
        alive(vmm_pid),
        "VMM {vmm_pid} runs before the launcher dies"
    );

    launcher.0.kill().expect("SIGKILL the launcher");
    let _ = launcher.0.wait();
    let killed = Instant::now();
    while alive(vmm_pid) && killed.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !alive(vmm_pid),
        "VMM {vmm_pid} outlived its SIGKILLed launcher"
    );
}

/// Running, not a zombie (an orphan is reaped by whoever adopted it).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}
