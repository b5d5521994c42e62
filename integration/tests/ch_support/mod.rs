//! Running the real `ch-launcher` binary against Cloud Hypervisor (or the
//! stand-in) for the end-to-end tests: one private directory per test, every
//! process killed in `Drop` even when the test fails.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use domain_model::Hypervisor;
use images::{TestGuestSpec, Variant};
use integration::launcher_path;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Set to test against a real Cloud Hypervisor.
pub const CH_BIN_ENV: &str = "CLOUD_HYPERVISOR_BIN";

/// Generous bound for things that normally take milliseconds; the machine
/// is shared and tests run in parallel.
pub const SLOW: Duration = Duration::from_secs(15);

/// The hypervisor binary the tests run: the real one when
/// `CLOUD_HYPERVISOR_BIN` is set, else the stand-in (announced once with a
/// visible SKIP line).
pub fn vmm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(
        || match std::env::var_os(CH_BIN_ENV).filter(|v| !v.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => {
                // Written straight to stderr: libtest captures print macros only.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIP: CLOUD_HYPERVISOR_BIN unset, using the stand-in"
                );
                PathBuf::from(env!("CARGO_BIN_EXE_ch-standin"))
            }
        },
    )
}

/// How to start the test VM.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Which test guest: the echoing one, or the one that powers off right
    /// after its banner.
    pub variant: Variant,
    pub grace_seconds: u32,
    pub start_paused: bool,
    /// Run with stdin and stdout on a terminal (a PTY the test holds), so
    /// the launcher attaches the console to it.
    pub terminal: bool,
    /// More `run` options.
    pub run_args: Vec<String>,
    /// A whole spec instead of the test guest's.
    pub spec: Option<String>,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            variant: Variant::Interactive,
            grace_seconds: 1,
            start_paused: false,
            terminal: false,
            run_args: Vec::new(),
            spec: None,
        }
    }
}

/// The test's side of the launcher's terminal.
pub struct Terminal {
    /// What the user types into and reads from.
    pub master: std::fs::File,
    /// The launcher's stdin/stdout; kept to read its terminal mode.
    pub slave: OwnedFd,
}

impl Terminal {
    /// Whether the terminal is in its normal (canonical, echoing) mode.
    pub fn is_cooked(&self) -> bool {
        use nix::sys::termios::{tcgetattr, LocalFlags};
        let attrs = tcgetattr(&self.slave).expect("tcgetattr");
        attrs
            .local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO)
    }

    /// Waits until the terminal is cooked (`true`) or raw (`false`).
    pub fn expect_cooked(&self, cooked: bool) {
        let deadline = Instant::now() + SLOW;
        while self.is_cooked() != cooked {
            assert!(
                Instant::now() < deadline,
                "terminal never became {}",
                if cooked { "cooked" } else { "raw" }
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to the terminal");
    }

    /// Reads what the launcher printed until `want` shows up.
    pub fn expect(&mut self, want: &[u8]) -> Vec<u8> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let deadline = Instant::now() + SLOW;
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(want.len()).any(|w| w == want) {
            assert!(
                Instant::now() < deadline,
                "terminal never showed {:?}; got {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&seen)
            );
            let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(50u8)).unwrap_or(0) > 0 {
                match self.master.read(&mut buf) {
                    Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        seen
    }
}

/// A `ch-launcher run` of a test guest in its own private dir.
pub struct Launcher {
    child: Option<Child>,
    pub terminal: Option<Terminal>,
    // Under /tmp with a short name: unix socket paths are limited to 107 bytes.
    dir: tempfile::TempDir,
    spec: PathBuf,
    vm_dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Launcher {
    /// Starts the launcher and waits until its control socket answers.
    pub fn start(opts: VmOptions) -> Launcher {
        let dir = tempfile::Builder::new()
            .prefix("chl")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let mut text = match &opts.spec {
            Some(text) => text.clone(),
            None => TestGuestSpec::new(Hypervisor::CloudHypervisor, opts.variant)
                .termination_grace_period_seconds(opts.grace_seconds)
                .render()
                .expect("render test guest spec"),
        };
        if opts.start_paused {
            // `render` ends inside `spec:` at two spaces of indentation.
            text.push_str("  startStrategy: Paused\n");
        }
        let spec = dir.path().join("vmi.yaml");
        std::fs::write(&spec, text).expect("write spec");
        let private = dir.path().join("p");

        let mut cmd = Command::new(launcher_path());
        cmd.arg("--private-dir")
            .arg(&private)
            .args(["--log-format", "json", "--log-level", "debug", "run"])
            .args(&opts.run_args)
            .arg(&spec)
            .env(CH_BIN_ENV, vmm_bin())
            .stderr(Stdio::piped());
        let terminal = if opts.terminal {
            let pty = nix::pty::openpty(None, None).expect("openpty");
            let stdin = pty.slave.try_clone().expect("dup pty slave");
            let stdout = pty.slave.try_clone().expect("dup pty slave");
            cmd.stdin(Stdio::from(stdin)).stdout(Stdio::from(stdout));
            Some(Terminal {
                master: std::fs::File::from(pty.master),
                slave: pty.slave,
            })
        } else {
            cmd.arg("--no-attach")
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            None
        };
        let mut child = cmd.spawn().expect("start ch-launcher");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr pipe");
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        let mut launcher = Launcher {
            child: Some(child),
            terminal,
            dir,
            spec,
            vm_dir: PathBuf::new(),
            logs,
            reader: Some(reader),
        };
        launcher.vm_dir = launcher.wait_for_vm_dir(&private);
        launcher
    }

    fn wait_for_vm_dir(&mut self, private: &Path) -> PathBuf {
        let deadline = Instant::now() + SLOW;
        loop {
            let found = std::fs::read_dir(private)
                .ok()
                .and_then(|mut entries| entries.next())
                .and_then(|e| e.ok())
                .map(|e| e.path());
            if let Some(dir) = found {
                let control = dir.join("launcher-sock");
                if UnixStream::connect(&control).is_ok() {
                    return dir;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "ch-launcher exited ({status}) before its control socket was up:\n{}",
                    self.logs_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "control socket never came up:\n{}",
                self.logs_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// `<private dir>/<uid>`.
    pub fn vm_dir(&self) -> &Path {
        &self.vm_dir
    }

    pub fn private_dir(&self) -> PathBuf {
        self.dir.path().join("p")
    }

    pub fn uid(&self) -> String {
        self.vm_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .expect("vm dir has a name")
    }

    pub fn spec(&self) -> &Path {
        &self.spec
    }

    pub fn serial_socket(&self) -> PathBuf {
        self.vm_dir.join("virt-serial0")
    }

    pub fn serial_log(&self) -> PathBuf {
        self.vm_dir.join("virt-serial0-log")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.vm_dir.join("launcher-sock")
    }

    pub fn console(&self) -> Console {
        let stream = UnixStream::connect(self.serial_socket()).expect("connect virt-serial0");
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        Console {
            stream,
            seen: Vec::new(),
        }
    }

    /// `ch-launcher <command> --uid <uid>` with this launcher's private dir.
    pub fn ctl_output(&self, command: &str) -> Output {
        Command::new(launcher_path())
            .arg("--private-dir")
            .arg(self.private_dir())
            .args([command, "--uid", &self.uid()])
            .stdin(Stdio::null())
            .output()
            .expect("run ch-launcher control command")
    }

    /// `ch-launcher <command> <args...> --uid <uid>`.
    pub fn ctl_args(&self, command: &str, args: &[&str]) -> Output {
        Command::new(launcher_path())
            .arg("--private-dir")
            .arg(self.private_dir())
            .arg(command)
            .args(args)
            .args(["--uid", &self.uid()])
            .stdin(Stdio::null())
            .output()
            .expect("run ch-launcher control command")
    }

    /// A control command that must succeed; returns the status it printed.
    pub fn ctl(&self, command: &str) -> serde_json::Value {
        let out = self.ctl_output(command);
        assert!(
            out.status.success(),
            "`ch-launcher {command}` failed ({}): {}\nlauncher log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.logs_text()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "`ch-launcher {command}` printed no JSON status ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Polls until `check` holds for the status `ch-launcher status` prints.
    pub fn wait_status(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + SLOW;
        loop {
            let status = self.ctl("status");
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "status never became {what}; last {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal ch-launcher");
    }

    /// Waits for the launcher to exit; `None` if it is still running after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("launcher started");
        loop {
            if let Some(status) = child.try_wait().expect("wait for ch-launcher") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Like [`Self::wait_exit`] but fails the test with the logs on timeout.
    pub fn expect_exit(&mut self, limit: Duration) -> ExitStatus {
        match self.wait_exit(limit) {
            Some(status) => {
                // The stderr pipe is closed now; collect the last lines.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                status
            }
            None => panic!(
                "ch-launcher still running after {limit:?}:\n{}",
                self.logs_text()
            ),
        }
    }

    pub fn logs_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// JSON log records whose message is `message`.
    pub fn log_records(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["message"] == message)
            .collect()
    }

    /// The `(state, reason)` of the launcher's "VM final state" log record.
    pub fn logged_final_state(&self) -> (String, String) {
        let records = self.log_records("VM final state");
        let record = records
            .last()
            .unwrap_or_else(|| panic!("no final state logged:\n{}", self.logs_text()));
        (
            record["state"].as_str().unwrap_or_default().to_owned(),
            record["reason"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// Live (non-zombie) processes whose output goes to this VM's
    /// `cloud-hypervisor.log` (the launcher hands the VMM its API socket as a
    /// descriptor, so no path of the VM is on its command line): the VMM,
    /// whoever its parent is by now.
    pub fn vmm_pids(&self) -> Vec<Pid> {
        let log = self.vm_dir.join("cloud-hypervisor.log");
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/fd/1")).is_ok_and(|out| out == log)
                    && !is_zombie(*pid)
            })
            .map(Pid::from_raw)
            .collect()
    }

    /// The single VMM process of this VM.
    pub fn vmm_pid(&self) -> Pid {
        let deadline = Instant::now() + SLOW;
        loop {
            let pids = self.vmm_pids();
            match pids.as_slice() {
                [pid] => return *pid,
                [] if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                other => panic!("expected one VMM process, found {other:?}"),
            }
        }
    }

    /// Waits until no VMM process of this VM is left.
    pub fn expect_no_vmm(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let pids = self.vmm_pids();
            if pids.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "VMM processes {pids:?} still alive after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name, which may contain spaces.
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        .unwrap_or(true)
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        for pid in self.vmm_pids() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "--- ch-launcher log ---\n{}\n--- end of log ---",
                self.logs_text()
            );
        }
    }
}

/// A client of `virt-serial0`.
pub struct Console {
    stream: UnixStream,
    seen: Vec<u8>,
}

impl Console {
    /// The connection itself, for tests that read and write concurrently.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to virt-serial0");
    }

    /// Reads until `want` has arrived (after what earlier calls consumed);
    /// fails with what did arrive.
    pub fn expect(&mut self, want: &[u8]) {
        let deadline = Instant::now() + SLOW;
        let mut buf = [0u8; 1024];
        loop {
            if let Some(at) = self.seen.windows(want.len()).position(|w| w == want) {
                self.seen.drain(..at + want.len());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "console never showed {:?}; got {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&self.seen)
            );
            match self.stream.read(&mut buf) {
                Ok(0) => panic!(
                    "console closed before {:?}; got {:?}",
                    String::from_utf8_lossy(want),
                    String::from_utf8_lossy(&self.seen)
                ),
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(e) => panic!("console read failed: {e}"),
            }
        }
    }

    /// Waits until the launcher closes this connection.
    pub fn expect_closed(&mut self) {
        let deadline = Instant::now() + SLOW;
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("console read failed: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "console connection was not closed"
            );
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Reads a whole file, waiting until it contains `want`.
pub fn wait_file_contains(path: &Path, want: &str) -> String {
    let deadline = Instant::now() + SLOW;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never contained {want:?}; has {text:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A finished `ch-launcher run` (see [`run_to_exit`]).
pub struct Finished {
    pub status: ExitStatus,
    /// `virt-serial0-log` as the launcher left it.
    pub serial_log: String,
    /// The launcher's stderr.
    pub logs: String,
}

/// Runs `ch-launcher run` on the `variant` test guest in a fresh private
/// dir until it exits by itself (killed after [`SLOW`]), without a console
/// client: for guests that power off on their own.
pub fn run_to_exit(variant: Variant, run_args: &[&str]) -> Finished {
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("chl")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let spec = TestGuestSpec::new(Hypervisor::CloudHypervisor, variant)
        .write(dir.path())
        .expect("write test guest spec");
    let private = dir.path().join("p");
    let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
    let child = Command::new(launcher_path())
        .arg("--private-dir")
        .arg(&private)
        .args([
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "run",
            "--no-attach",
        ])
        .args(run_args)
        .arg(&spec)
        .env(CH_BIN_ENV, vmm_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("start ch-launcher");
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + SLOW;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for ch-launcher") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ch-launcher still running after {SLOW:?}:\n{}",
            std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let logs = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    let serial_log = std::fs::read_dir(&private)
        .ok()
        .and_then(|mut entries| entries.next())
        .and_then(|e| e.ok())
        .map(|vm_dir| {
            std::fs::read_to_string(vm_dir.path().join("virt-serial0-log")).unwrap_or_default()
        })
        .unwrap_or_default();
    Finished {
        status,
        serial_log,
        logs,
    }
}
