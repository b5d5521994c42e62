//! Replays the API sessions recorded from a real Cloud Hypervisor
//! (`ch-launcher/tests/data/reference/cloud-hypervisor/api-transcript.json`) against the stand-in, and against a real
//! CH when `CLOUD_HYPERVISOR_BIN` names one: every status code and response
//! body must equal the recording (host paths, pids, PTY names, the build
//! string and the snapshot backtrace aside), and each session's event-monitor
//! stream must have the recorded `source:event` sequence.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use integration::unix_http::{self, HttpResponse};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const RECORDINGS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../ch-launcher/tests/data/reference/cloud-hypervisor"
);
const REAL_CH_ENV: &str = "CLOUD_HYPERVISOR_BIN";
const WAIT: Duration = Duration::from_secs(10);

/// One VMM process in its own process group and scratch directory; killed
/// (with anything it started) when dropped.
struct Vmm {
    child: Child,
    dir: tempfile::TempDir,
    status: Option<ExitStatus>,
}

impl Vmm {
    fn start(bin: &Path, extra_env: &[(&str, &str)]) -> Vmm {
        let dir = tempfile::tempdir().expect("scratch directory");
        let mut command = Command::new(bin);
        command
            .arg("--api-socket")
            .arg(format!("path={}", dir.path().join("api.sock").display()))
            .arg("--event-monitor")
            .arg(format!("path={}", dir.path().join("events.json").display()))
            .arg("--log-file")
            .arg(dir.path().join("vmm.log"))
            .stdin(Stdio::null())
            .process_group(0);
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start the VMM");
        let vmm = Vmm {
            child,
            dir,
            status: None,
        };
        // CH binds the socket before it listens on it: between the two a
        // connection is refused, so wait for one to be accepted.
        vmm.wait_until("the API socket accepts connections", || {
            std::os::unix::net::UnixStream::connect(vmm.api_socket()).is_ok()
        });
        vmm
    }

    fn workdir(&self) -> &Path {
        self.dir.path()
    }

    fn api_socket(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn request(&self, method: &str, endpoint: &str, body: Option<&str>) -> HttpResponse {
        unix_http::request(
            &self.api_socket(),
            method,
            &format!("/api/v1/{endpoint}"),
            body.map(str::as_bytes),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{method} {endpoint}: {e}"))
    }

    /// `source:event` for every event written so far.
    fn events(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join("events.json")).unwrap_or_default();
        parse_events(&text)
    }

    /// The events once at least `expected` many were written (CH writes them
    /// from a thread of its own, a little after the API call returns).
    fn events_settled(&self, expected: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let events = self.events();
            if events.len() >= expected || Instant::now() >= deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_for_event(&self, event: &str, count: usize) {
        self.wait_until(&format!("{event} was emitted {count} time(s)"), || {
            self.events().iter().filter(|e| *e == event).count() >= count
        });
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the VMM") {
                self.status = Some(status);
                return status;
            }
            assert!(Instant::now() < deadline, "the VMM did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, signal: Signal) {
        killpg(Pid::from_raw(self.child.id() as i32), signal).expect("signal the VMM");
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Asserts the whole `source:event` sequence, waiting for late writes.
fn assert_events(vmm: &Vmm, expected: &[&str]) {
    assert_eq!(vmm.events_settled(expected.len()), expected);
}

/// As [`assert_events`], for a VMM that has exited. A real CH writes events
/// from a thread it does not wait for at exit, so the last few can be lost
/// (seen with `vm:deleted`, `vmm:shutdown`); the stand-in writes them all.
fn assert_events_after_exit(vmm: &Vmm, bin: &Path, expected: &[String]) {
    let actual = vmm.events_settled(expected.len());
    if bin == standin() {
        assert_eq!(actual, expected);
    } else {
        assert!(
            expected.starts_with(&actual) && !actual.is_empty(),
            "events {actual:?} should be (a prefix of) {expected:?}"
        );
        if actual.len() < expected.len() {
            println!(
                "NOTE: the VMM exited before writing {:?}",
                &expected[actual.len()..]
            );
        }
    }
}

fn parse_events(text: &str) -> Vec<String> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .map(|event| {
            format!(
                "{}:{}",
                event["source"].as_str().unwrap_or("?"),
                event["event"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

fn recorded_events(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(RECORDINGS).join(file)).expect("recording");
    parse_events(&text)
}

/// The body as the recorder sent it: Python's `json.dumps`, with a space after
/// `:` and `,` (serde errors quote columns, so the spacing matters).
fn python_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_json(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(python_json).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// Replaces the recording's host-path placeholders.
fn substitute(value: &Value, workdir: &Path, guest: &Path) -> Value {
    match value {
        Value::String(s) => Value::String(
            s.replace("<workdir>", &workdir.display().to_string())
                .replace("<guest.elf>", &guest.display().to_string()),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute(v, workdir, guest))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, workdir, guest)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Blanks what legitimately differs between runs, after checking its shape;
/// `vmm_pid` is given for a live response (whose pid must be the VMM's).
fn normalize(endpoint: &str, value: &mut Value, vmm_pid: Option<u32>) {
    match endpoint {
        "vmm.ping" => {
            if let (Some(pid), Some(vmm_pid)) = (value.get("pid"), vmm_pid) {
                assert_eq!(pid.as_u64(), Some(u64::from(vmm_pid)), "vmm.ping pid");
            }
            if let Some(build) = value.get("build_version") {
                let build = build.as_str().unwrap_or_default();
                assert!(build.starts_with("v"), "build_version {build:?}");
            }
            value["pid"] = Value::Null;
            value["build_version"] = Value::Null;
        }
        "vm.info" if value.is_object() => {
            for device in ["serial", "console"] {
                let config = &mut value["config"][device];
                if config["mode"] == "Pty" {
                    let file = config["file"].as_str().unwrap_or_default().to_string();
                    assert!(
                        file.starts_with("/dev/pts/")
                            && (vmm_pid.is_none() || Path::new(&file).exists()),
                        "{device} PTY {file:?} should be a live /dev/pts entry"
                    );
                    config["file"] = Value::String("<pty>".to_string());
                }
            }
        }
        _ => {}
    }
    // The snapshot error carries a backtrace whose frames depend on the build.
    if let Value::Array(chain) = value {
        for message in chain.iter_mut() {
            if let Some(text) = message.as_str() {
                if let Some(end) = text.find("(os error 22)") {
                    *message = Value::String(text[..end + "(os error 22)".len()].to_string());
                }
            }
        }
    }
}

fn check_exchange(vmm: &Vmm, exchange: &Value, guest: &Path, index: usize) -> HttpResponse {
    let method = exchange["method"].as_str().expect("method");
    let endpoint = exchange["endpoint"].as_str().expect("endpoint");
    let note = exchange["note"].as_str().unwrap_or_default();
    let body = match &exchange["request"] {
        Value::Null => None,
        request => Some(python_json(&substitute(request, vmm.workdir(), guest))),
    };
    let response = vmm.request(method, endpoint, body.as_deref());
    let context = format!("exchange #{index} ({note}): {method} {endpoint}");
    assert_eq!(
        u64::from(response.status),
        exchange["status"].as_u64().expect("status"),
        "{context}: status; body {}",
        String::from_utf8_lossy(&response.body)
    );
    let mut expected = substitute(&exchange["response"], vmm.workdir(), guest);
    let mut actual = response
        .json()
        .unwrap_or_else(|e| panic!("{context}: body is not JSON: {e}"))
        .unwrap_or(Value::Null);
    normalize(endpoint, &mut expected, None);
    normalize(endpoint, &mut actual, Some(vmm.pid()));
    assert_eq!(actual, expected, "{context}: response body");
    response
}

/// The serial PTY path from the latest `vm.info`.
fn serial_pty(vmm: &Vmm) -> PathBuf {
    let info = vmm.request("GET", "vm.info", None).json().unwrap().unwrap();
    PathBuf::from(
        info["config"]["serial"]["file"]
            .as_str()
            .expect("serial PTY"),
    )
}

fn read_for(stream: &mut impl Read, window: Duration) -> Vec<u8> {
    let deadline = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("serial read: {e}"),
        }
    }
    got
}

fn read_until(stream: &mut impl Read, expected: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(expected) && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("serial read: {e}"),
        }
    }
    got
}

fn connect_serial(vmm: &Vmm) -> UnixStream {
    let path = vmm.workdir().join("serial.sock");
    vmm.wait_until("the serial socket exists", || path.exists());
    let stream = UnixStream::connect(&path).expect("connect to the serial socket");
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    stream
}

/// Opens a PTY slave the way a terminal client does (raw, no controlling tty).
fn open_pty(path: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .expect("open the serial PTY");
    let mut termios = nix::sys::termios::tcgetattr(&file).expect("tcgetattr");
    nix::sys::termios::cfmakeraw(&mut termios);
    nix::sys::termios::tcsetattr(&file, nix::sys::termios::SetArg::TCSANOW, &termios)
        .expect("tcsetattr");
    file
}

/// The transcript cut into VMM processes: each ends with an `exit` entry.
fn sessions() -> Vec<Vec<Value>> {
    let text = std::fs::read_to_string(Path::new(RECORDINGS).join("api-transcript.json"))
        .expect("transcript");
    let transcript: Value = serde_json::from_str(&text).expect("transcript JSON");
    let mut sessions = vec![Vec::new()];
    for entry in transcript["exchanges"].as_array().expect("exchanges") {
        sessions.last_mut().expect("a session").push(entry.clone());
        if entry.get("exit").is_some() {
            sessions.push(Vec::new());
        }
    }
    sessions.retain(|s| !s.is_empty());
    sessions
}

/// Session order in the transcript, and the event stream recorded for each.
const SESSION_EVENTS: [&str; 4] = [
    "events-lifecycle.jsonstream",
    "events-restore.jsonstream",
    "events-guest-shutdown-reboot.jsonstream",
    "events-pty.jsonstream",
];

fn replay(bin: &Path) {
    let guest = images::test_guest();
    assert!(
        guest.is_file(),
        "the images crate built {}",
        guest.display()
    );
    let sessions = sessions();
    assert_eq!(sessions.len(), SESSION_EVENTS.len(), "recorded sessions");
    let mut index = 0;
    for (session, events_file) in sessions.iter().zip(SESSION_EVENTS) {
        let mut vmm = Vmm::start(bin, &[]);
        // The recorder's workdir held the (empty) snapshot destination; restore
        // got as far as looking for config.json in it.
        std::fs::create_dir_all(vmm.workdir().join("snapshot")).expect("snapshot directory");
        let mut serial: Option<UnixStream> = None;
        let mut pty: Option<std::fs::File> = None;
        for entry in session {
            index += 1;
            let note = entry["note"].as_str().unwrap_or_default();
            if entry.get("method").is_some() {
                check_exchange(&vmm, entry, guest, index);
            } else if let Some(expected) = entry.get("serial").and_then(Value::as_str) {
                if note.contains("PTY") {
                    let mut file = open_pty(&serial_pty(&vmm));
                    let got = read_for(&mut file, Duration::from_millis(200));
                    assert_eq!(String::from_utf8_lossy(&got), expected, "#{index} {note}");
                    pty = Some(file);
                } else {
                    let mut stream = connect_serial(&vmm);
                    stream.write_all(b"echo-check").expect("serial write");
                    let got = read_until(&mut stream, expected.as_bytes());
                    assert_eq!(String::from_utf8_lossy(&got), expected, "#{index} {note}");
                    serial = Some(stream);
                }
            } else if note.contains("port 0x600 (ACPI reboot)") {
                let mut stream = connect_serial(&vmm);
                read_until(&mut stream, b"TINY-GUEST-UP\r\n");
                stream.write_all(b"r").expect("serial write");
                vmm.wait_for_event("vm:rebooted", 1);
            } else if note.contains("0x34 to port 0x600") {
                // The reboot made a new serial socket: connect afresh.
                let mut stream = connect_serial(&vmm);
                read_until(&mut stream, b"TINY-GUEST-UP\r\n");
                stream.write_all(b"q").expect("serial write");
                serial = Some(stream);
            } else if let Some(code) = entry.get("exit").and_then(Value::as_i64) {
                if note.contains("requested over the PTY") {
                    let file = pty.as_mut().expect("the PTY was opened");
                    file.write_all(b"q").expect("PTY write");
                }
                if code == -9 {
                    vmm.signal(Signal::SIGKILL);
                    let status = vmm.wait_exit();
                    assert_eq!(status.signal(), Some(libc::SIGKILL), "#{index} {note}");
                } else {
                    let status = vmm.wait_exit();
                    assert_eq!(status.code(), Some(code as i32), "#{index} {note}");
                }
            } else {
                panic!("#{index}: unhandled transcript entry {entry}");
            }
        }
        drop(serial);
        println!("session recorded in {events_file}");
        assert_events_after_exit(&vmm, bin, &recorded_events(events_file));
    }
}

/// One scenario, two tests: `$standin` runs it against the stand-in,
/// `$real` against the real Cloud Hypervisor when `CLOUD_HYPERVISOR_BIN` is
/// set (else it prints a SKIP line and passes).
macro_rules! on_both_vmms {
    ($scenario:ident, $standin:ident, $real:ident) => {
        #[test]
        fn $standin() {
            $scenario(&standin());
        }

        #[test]
        fn $real() {
            if let Some(bin) = real_cloud_hypervisor() {
                $scenario(&bin);
            }
        }
    };
}

fn standin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ch-standin"))
}

/// The real CH under test, or `None` after printing why the test is skipped.
fn real_cloud_hypervisor() -> Option<PathBuf> {
    match std::env::var_os(REAL_CH_ENV) {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                (format!(
                    "SKIP: {REAL_CH_ENV} is not set; not replaying against a real Cloud Hypervisor"
                ) + "\n")
                    .as_bytes(),
            );
            None
        }
    }
}

on_both_vmms!(
    replay,
    standin_reproduces_the_recorded_api_sessions_and_events,
    real_cloud_hypervisor_reproduces_the_recorded_api_sessions_and_events
);

fn create_and_boot(vmm: &Vmm, kernel: &Path, serial: &str) {
    let body = format!(
        r#"{{"cpus": {{"boot_vcpus": 1, "max_vcpus": 1}}, "memory": {{"size": 67108864}}, "payload": {{"kernel": "{}"}}, "serial": {serial}, "console": {{"mode": "Off"}}}}"#,
        kernel.display()
    );
    assert_eq!(vmm.request("PUT", "vm.create", Some(&body)).status, 204);
    assert_eq!(vmm.request("PUT", "vm.boot", None).status, 204);
}

/// A VMM whose one boot ended with the VMM shutting down.
fn guest_lifetime_events() -> Vec<String> {
    [
        "vmm:starting",
        "vm:booting",
        "vm:booted",
        "vm:shutdown",
        "vm:deleted",
        "vmm:shutdown",
    ]
    .map(String::from)
    .to_vec()
}

fn sigterm_shuts_the_vmm_down(bin: &Path) {
    let mut vmm = Vmm::start(bin, &[]);
    create_and_boot(&vmm, images::test_guest(), r#"{"mode": "Null"}"#);
    vmm.signal(Signal::SIGTERM);
    assert_eq!(vmm.wait_exit().code(), Some(0));
    assert_events_after_exit(&vmm, bin, &guest_lifetime_events());
    assert!(
        !vmm.api_socket().exists(),
        "the API socket is removed on exit"
    );
}

on_both_vmms!(
    sigterm_shuts_the_vmm_down,
    standin_sigterm_shuts_the_vm_down_and_exits_zero,
    real_cloud_hypervisor_sigterm_shuts_the_vm_down_and_exits_zero
);

fn halting_guest_powers_off_after_its_banner(bin: &Path) {
    let mut vmm = Vmm::start(bin, &[]);
    let socket = vmm.workdir().join("serial.sock");
    create_and_boot(
        &vmm,
        images::halting_guest(),
        &format!(r#"{{"mode": "Socket", "socket": "{}"}}"#, socket.display()),
    );
    assert_eq!(vmm.wait_exit().code(), Some(0));
    assert_events_after_exit(&vmm, bin, &guest_lifetime_events());
    assert!(!socket.exists(), "the serial socket is removed with the VM");
}

on_both_vmms!(
    halting_guest_powers_off_after_its_banner,
    standin_halting_guest_powers_off_after_its_banner,
    real_cloud_hypervisor_halting_guest_powers_off_after_its_banner
);

/// CH buffers serial output while nobody holds the PTY and flushes it once the
/// slave has been open for a poll period (500 ms): a reader that opens late and
/// waits long enough still sees the banner.
fn late_pty_reader_gets_the_banner_after_the_probe_period(bin: &Path) {
    let vmm = Vmm::start(bin, &[]);
    create_and_boot(&vmm, images::test_guest(), r#"{"mode": "Pty"}"#);
    std::thread::sleep(Duration::from_millis(300));
    let mut file = open_pty(&serial_pty(&vmm));
    let early = read_for(&mut file, Duration::from_millis(200));
    assert_eq!(early, b"", "nothing arrives right after opening");
    let late = read_for(&mut file, Duration::from_millis(2000));
    assert_eq!(String::from_utf8_lossy(&late), "TINY-GUEST-UP\r\n");
    file.write_all(b"x").expect("PTY write");
    assert_eq!(read_until(&mut file, b"x"), b"x", "the guest echoes");
}

on_both_vmms!(
    late_pty_reader_gets_the_banner_after_the_probe_period,
    standin_late_pty_reader_gets_the_banner_after_the_probe_period,
    real_cloud_hypervisor_late_pty_reader_gets_the_banner_after_the_probe_period
);

#[test]
fn standin_reports_features_from_the_environment() {
    let vmm = Vmm::start(&standin(), &[("CH_STANDIN_FEATURES", "kvm,tdx")]);
    let ping = vmm
        .request("GET", "vmm.ping", None)
        .json()
        .unwrap()
        .unwrap();
    assert_eq!(ping["features"], serde_json::json!(["kvm", "tdx"]));
    // With the feature built in, `platform.tdx` is part of the config.
    let body = format!(
        r#"{{"payload": {{"kernel": "{}"}}, "platform": {{"tdx": true}}}}"#,
        images::test_guest().display()
    );
    assert_eq!(vmm.request("PUT", "vm.create", Some(&body)).status, 204);
    let info = vmm.request("GET", "vm.info", None).json().unwrap().unwrap();
    assert_eq!(info["config"]["platform"]["tdx"], Value::Bool(true));
}

#[test]
fn standin_refuses_unknown_flags_like_clap_and_prints_its_version() {
    let refused = Command::new(standin())
        .args(["--kernel", "/nonexistent"])
        .output()
        .expect("run the stand-in");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unexpected argument '--kernel'"));
    let version = Command::new(standin())
        .arg("--version")
        .output()
        .expect("run the stand-in");
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("cloud-hypervisor v53.0-246-"));
}

#[test]
fn standin_answers_unknown_endpoints_and_wrong_methods_like_ch() {
    let vmm = Vmm::start(&standin(), &[]);
    let missing = vmm.request("GET", "vm.nonexistent", None);
    assert_eq!(
        (missing.status, missing.body.as_slice()),
        (404, &b"[\"Not Found\"]"[..])
    );
    assert_eq!(missing.header("server"), Some("Cloud Hypervisor API"));
    let wrong_method = vmm.request("GET", "vm.boot", None);
    assert_eq!(
        (wrong_method.status, wrong_method.body.as_slice()),
        (400, &b"[\"Bad Request\"]"[..])
    );
    let body_on_bare_action = vmm.request("PUT", "vm.pause", Some("{}"));
    assert_eq!(body_on_bare_action.status, 400);
    let no_body = vmm.request("PUT", "vm.create", None);
    assert_eq!((no_body.status, no_body.body.len()), (400, 0));
}

/// Every boot (and reboot) makes a new serial PTY, so a console relay must
/// read `vm.info` again after a reboot.
fn serial_pty_is_replaced_by_a_guest_reboot(bin: &Path) {
    let vmm = Vmm::start(bin, &[]);
    create_and_boot(&vmm, images::test_guest(), r#"{"mode": "Pty"}"#);
    let first = serial_pty(&vmm);
    let mut file = open_pty(&first);
    assert_eq!(
        read_until(&mut file, b"TINY-GUEST-UP\r\n"),
        b"TINY-GUEST-UP\r\n"
    );
    file.write_all(b"r").expect("PTY write");
    vmm.wait_for_event("vm:rebooted", 1);
    let second = serial_pty(&vmm);
    assert_ne!(first, second, "the reboot made a new PTY");
    let mut file = open_pty(&second);
    assert_eq!(
        read_until(&mut file, b"TINY-GUEST-UP\r\n"),
        b"TINY-GUEST-UP\r\n"
    );
}

on_both_vmms!(
    serial_pty_is_replaced_by_a_guest_reboot,
    standin_serial_pty_is_replaced_by_a_guest_reboot,
    real_cloud_hypervisor_serial_pty_is_replaced_by_a_guest_reboot
);

/// Disk images are opened when the VM is built and locked before it runs.
fn disk_errors_fail_the_boot(bin: &Path) {
    let vmm = Vmm::start(bin, &[]);
    let image = vmm.workdir().join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("disk image");
    let boot_with = |disks: &str| {
        let body = format!(
            r#"{{"payload": {{"kernel": "{}"}}, "memory": {{"size": 67108864}}, "serial": {{"mode": "Null"}}, "console": {{"mode": "Off"}}, "disks": {disks}}}"#,
            images::test_guest().display()
        );
        assert_eq!(vmm.request("PUT", "vm.create", Some(&body)).status, 204);
        let boot = vmm.request("PUT", "vm.boot", None);
        let info = vmm.request("GET", "vm.info", None).json().unwrap().unwrap();
        assert_eq!(vmm.request("PUT", "vm.delete", None).status, 204);
        (boot, info)
    };

    let (boot, info) = boot_with(r#"[{"path": "/nonexistent/disk.img"}]"#);
    assert_eq!(boot.status, 500);
    assert_eq!(
        boot.json().unwrap().unwrap(),
        serde_json::json!([
            "Error from API",
            "The VM could not boot",
            "Error from device manager",
            "Cannot open disk path",
            "I/O error (path=/nonexistent/disk.img op=open)",
            "No such file or directory (os error 2)"
        ])
    );
    assert_eq!(info["config"].get("disks"), None, "CH loses the disk list");
    assert_eq!(info.get("device_tree"), None, "no VM object was built");

    let disks = format!(
        r#"[{{"path": "{0}"}}, {{"path": "{0}", "readonly": true}}]"#,
        image.display()
    );
    let (boot, info) = boot_with(&disks);
    assert_eq!(boot.status, 500);
    assert_eq!(
        boot.json().unwrap().unwrap(),
        serde_json::json!([
            "Error from API",
            "The VM could not boot",
            "Error locking disk images: Another instance likely holds a lock",
            "Cannot lock images of all block devices",
            format!(
                "Failed to get Read lock for disk image: {}",
                image.display()
            ),
            "The file is already locked"
        ])
    );
    assert_eq!(info["state"], "Created");
    assert_eq!(info["config"]["disks"][0]["id"], "_disk0");
    assert_eq!(info["config"]["disks"][1]["image_type"], "Raw");
    assert!(info["device_tree"].get("_disk1").is_some());
    assert_events(
        &vmm,
        &[
            "vmm:starting",
            "vm:booting",
            "vm:deleted",
            "vm:booting",
            "vm:shutdown",
            "vm:deleted",
        ],
    );
}

on_both_vmms!(
    disk_errors_fail_the_boot,
    standin_disk_errors_fail_the_boot,
    real_cloud_hypervisor_disk_errors_fail_the_boot
);

/// `--api-socket fd=N`: the VMM serves a socket its parent bound and listens
/// on before starting it (what `ch-launcher` does), so the first request can
/// be sent at once and waits in the backlog instead of polling for the
/// socket. The VMM leaves that socket file alone at exit: only a path it
/// bound itself is its to remove.
fn api_socket_fd_serves_a_listener_bound_before_the_vmm_started(bin: &Path) {
    let dir = tempfile::tempdir().expect("scratch directory");
    let socket = dir.path().join("api.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind the API socket");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let mut command = Command::new(bin);
    command
        .arg("--api-socket")
        .arg(format!("fd={fd}"))
        .arg("--event-monitor")
        .arg(format!("path={}", dir.path().join("events.json").display()))
        .arg("--log-file")
        .arg(dir.path().join("vmm.log"))
        .stdin(Stdio::null())
        .process_group(0);
    // SAFETY: only fcntl between fork and exec; std opened the listener
    // close-on-exec, and the VMM must inherit it.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("start the VMM");
    drop(listener);
    let mut vmm = Vmm {
        child,
        dir,
        status: None,
    };
    // No wait for the VMM to come up: the socket has listened all along.
    let ping = vmm.request("GET", "vmm.ping", None);
    assert_eq!(ping.status, 200, "{}", String::from_utf8_lossy(&ping.body));
    let ping = ping.json().expect("JSON").expect("a body");
    assert_eq!(ping["pid"].as_u64(), Some(u64::from(vmm.pid())));
    assert_eq!(vmm.request("PUT", "vmm.shutdown", None).status, 200);
    assert_eq!(vmm.wait_exit().code(), Some(0));
    assert!(
        vmm.api_socket().exists(),
        "the VMM removed a socket it did not bind"
    );
}

on_both_vmms!(
    api_socket_fd_serves_a_listener_bound_before_the_vmm_started,
    standin_api_socket_fd_serves_a_listener_bound_before_the_vmm_started,
    real_cloud_hypervisor_api_socket_fd_serves_a_listener_bound_before_the_vmm_started
);
