//! The test guest under libvirt + QEMU through the real `ch-launcher run`
//! (`spec.hypervisor: libvirt`): console, echo, pause/resume, reboot, guest
//! power-off, SIGTERM and a killed QEMU, each mapped onto the same lifecycle
//! states and exit codes as the Cloud Hypervisor path; no domain is left
//! defined or running afterwards.
//!
//! Also what the launcher owes libvirt when things go wrong: a SIGKILLed
//! launcher leaves no domain (auto-destroy), a second launcher for the same
//! VMI fails without touching the first one's domain, a libvirtd restart is
//! survived or reported.
//!
//! Needs a reachable libvirtd (`.ci/setup-host.sh`); otherwise every test
//! prints a `SKIP:` line and passes, unless `CH_LAUNCHER_REQUIRE_LIBVIRT=1`
//! (CI) makes that a failure. `LIBVIRT_URI` overrides `qemu:///system`;
//! `CH_LAUNCHER_BIN` names a prebuilt launcher.

use domain_model::Hypervisor;
use images::{TestGuestSpec, Variant};
use integration::launcher_path;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// QEMU boots take seconds on these nested machines; one VM at a time keeps
/// the timing of every test independent of the others.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

const WAIT: Duration = Duration::from_secs(60);

fn uri() -> String {
    std::env::var("LIBVIRT_URI").unwrap_or_else(|_| "qemu:///system".into())
}

fn virsh(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("virsh")
        .arg("-c")
        .arg(uri())
        .args(args)
        .output()
}

/// `None` (after printing the SKIP line) when libvirtd cannot be reached;
/// a failure instead under `CH_LAUNCHER_REQUIRE_LIBVIRT=1`.
fn libvirt_or_skip(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    let why = match virsh(&["version"]) {
        Ok(out) if out.status.success() => {
            return Some(ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()))
        }
        Ok(out) => format!(
            "libvirtd not reachable at {} ({})",
            uri(),
            String::from_utf8_lossy(&out.stderr)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Err(e) => format!("virsh not runnable ({e})"),
    };
    assert!(
        std::env::var("CH_LAUNCHER_REQUIRE_LIBVIRT").as_deref() != Ok("1"),
        "{test}: {why}, and CH_LAUNCHER_REQUIRE_LIBVIRT=1 requires libvirt"
    );
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        (format!("SKIP: {test}: {why}; run .ci/setup-host.sh") + "\n").as_bytes(),
    );
    None
}

/// One `ch-launcher run` of the test guest. Dropping it kills the launcher's
/// process group and removes the libvirt domain if anything is left.
struct LaunchedVm {
    dir: tempfile::TempDir,
    spec: PathBuf,
    domain: String,
    child: Option<Child>,
    log: PathBuf,
}

impl LaunchedVm {
    fn start(name: &str, grace_seconds: u32, extra_spec: &str) -> LaunchedVm {
        Self::start_with(name, grace_seconds, extra_spec, |text, _| text)
    }

    /// `edit` rewrites the spec text; it gets the scratch directory.
    fn start_with(
        name: &str,
        grace_seconds: u32,
        extra_spec: &str,
        edit: impl FnOnce(String, &Path) -> String,
    ) -> LaunchedVm {
        Self::start_with_args(name, grace_seconds, extra_spec, edit, |_| Vec::new())
    }

    /// `args` gives extra launcher options for `run`; it gets the scratch
    /// directory.
    fn start_with_args(
        name: &str,
        grace_seconds: u32,
        extra_spec: &str,
        edit: impl FnOnce(String, &Path) -> String,
        args: impl FnOnce(&Path) -> Vec<String>,
    ) -> LaunchedVm {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = format!("{name}-{}", std::process::id());
        let text = TestGuestSpec::new(Hypervisor::Libvirt, Variant::Interactive)
            .name(&name)
            .termination_grace_period_seconds(grace_seconds)
            .render()
            .expect("spec renders");
        let text = text.replacen("spec:\n", &format!("spec:\n{extra_spec}"), 1);
        let text = edit(text, dir.path());
        let spec = dir.path().join("vmi.yaml");
        std::fs::write(&spec, text).expect("write spec");
        let log = dir.path().join("launcher.log");
        let mut vm = LaunchedVm {
            domain: format!("default_{name}"),
            spec,
            child: None,
            log,
            dir,
        };
        let stderr = std::fs::File::create(&vm.log).expect("log file");
        let extra_args = args(vm.dir.path());
        let child = Command::new(launcher_path())
            .args(vm.global_args())
            .args(extra_args)
            .arg("--log-format=json")
            .arg("run")
            .arg("--no-attach")
            .arg(&vm.spec)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .expect("ch-launcher starts");
        vm.child = Some(child);
        vm
    }

    fn global_args(&self) -> Vec<String> {
        vec![
            "--private-dir".into(),
            self.private_dir().display().to_string(),
            "--libvirt-uri".into(),
            uri(),
        ]
    }

    fn private_dir(&self) -> PathBuf {
        self.dir.path().join("private")
    }

    /// `<private dir>/<uid>`: the only directory the launcher creates there.
    fn vm_dir(&self) -> PathBuf {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(entry) = std::fs::read_dir(self.private_dir())
                .ok()
                .and_then(|mut d| d.next())
                .and_then(Result::ok)
            {
                return entry.path();
            }
            assert!(
                Instant::now() < deadline,
                "no VM directory appeared\n{}",
                self.logs()
            );
            self.assert_launcher_alive("the VM directory");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn serial_log(&self) -> PathBuf {
        self.vm_dir().join("virt-serial0-log")
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A control command (`status`, `pause`, ...); its JSON answer.
    fn control(&self, command: &str) -> Result<Value, String> {
        let out = Command::new(launcher_path())
            .args(self.global_args())
            .arg(command)
            .arg(&self.spec)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// Whether the launcher process has ended (a zombie not yet reaped, or
    /// gone), so waits fail at once with its log instead of after `WAIT`.
    fn launcher_ended(&self) -> bool {
        let pid = self.child.as_ref().expect("launcher started").id();
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
            Err(_) => true,
        }
    }

    /// Panics with the launcher's log if it has ended while the test waited
    /// for `what`.
    fn assert_launcher_alive(&self, what: &str) {
        assert!(
            !self.launcher_ended(),
            "ch-launcher exited while waiting for {what}:\n{}",
            self.logs()
        );
    }

    fn wait_status(&self, state: &str, reason: &str) {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.assert_launcher_alive(&format!("{state}/{reason}"));
            match self.control("status") {
                Ok(v) if v["state"] == state && v["reason"] == reason => return,
                Ok(v) => last = v.to_string(),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "never reached {state}/{reason}; last: {last}\n{}",
            self.logs()
        );
    }

    fn connect_console(&self) -> UnixStream {
        let socket = self.vm_dir().join("virt-serial0");
        let deadline = Instant::now() + WAIT;
        loop {
            match UnixStream::connect(&socket) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    return s;
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("cannot connect {}: {e}\n{}", socket.display(), self.logs())
                }
                Err(_) => {
                    self.assert_launcher_alive("the console socket");
                    std::thread::sleep(Duration::from_millis(50))
                }
            }
        }
    }

    /// The exit status if the launcher has exited.
    fn try_exit(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("launcher started");
        child.try_wait().expect("wait")
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("launcher started");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "launcher did not exit\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Has the guest power off (`q` on its console) and expects the
    /// launcher to exit 0.
    fn power_off_from(&mut self, console: &mut UnixStream) {
        console.write_all(b"q").unwrap();
        assert_eq!(self.wait_exit().code(), Some(0), "{}", self.logs());
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("launcher started").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("kill");
    }

    /// The launcher's last `VM final state` log record.
    fn final_state(&self) -> (String, String) {
        let logs = self.logs();
        // Matched on the raw line: the record may carry a second `message`
        // field (the state's detail), which shadows the log message in JSON.
        let record = logs
            .lines()
            .rev()
            .filter(|l| l.contains("\"message\":\"VM final state"))
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or_else(|| panic!("no final state logged\n{logs}"));
        let field = |name: &str| record[name].as_str().unwrap_or_default().to_owned();
        (field("state"), field("reason"))
    }

    /// Whether libvirt lists the domain (running or defined).
    fn domain_listed(&self) -> bool {
        let out = virsh(&["list", "--all", "--name"]).expect("virsh list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|n| n.trim() == self.domain)
    }

    /// `virsh domstate` of the domain.
    fn domstate(&self) -> String {
        let out = virsh(&["domstate", &self.domain]).expect("virsh domstate");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The pid of the domain's QEMU, from libvirt's pid file.
    fn qemu_pid(&self) -> i32 {
        let pidfile = format!("/var/run/libvirt/qemu/{}.pid", self.domain);
        std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{pidfile}: {e}"))
            .trim()
            .parse()
            .expect("QEMU pid")
    }

    fn assert_domain_gone(&self) {
        let out = virsh(&["list", "--all", "--name"]).expect("virsh list");
        let names = String::from_utf8_lossy(&out.stdout);
        assert!(
            !names.lines().any(|n| n.trim() == self.domain),
            "domain {} is still defined:\n{names}",
            self.domain
        );
    }
}

impl Drop for LaunchedVm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = child.wait();
            }
        }
        let _ = virsh(&["destroy", &self.domain]);
        let _ = virsh(&["undefine", "--nvram", &self.domain]);
    }
}

/// Reads from the console until `want` has been seen or the wait ends.
fn read_until(console: &mut UnixStream, want: &str, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        match console.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("console read failed: {e}"),
        }
        if String::from_utf8_lossy(&seen).contains(want) {
            break;
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn wait_for_file_text(path: &Path, want: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(want) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const BANNER: &str = "TINY-GUEST-UP";

#[test]
fn libvirt_guest_boots_echoes_and_powers_off_with_exit_0() {
    let Some(_guard) = libvirt_or_skip("libvirt_guest_boots_echoes_and_powers_off_with_exit_0")
    else {
        return;
    };
    let mut vm = LaunchedVm::start("lv-echo", 5, "");
    vm.wait_status("Running", "Booted");
    let banner = wait_for_file_text(&vm.serial_log(), BANNER);
    assert!(
        banner.contains(BANNER),
        "no banner in virt-serial0-log: {banner:?}"
    );

    let mut console = vm.connect_console();
    console.write_all(b"ping").unwrap();
    let echoed = read_until(&mut console, "ping", Duration::from_secs(20));
    assert!(
        echoed.contains("ping"),
        "echo round trip failed: {echoed:?}"
    );

    vm.power_off_from(&mut console);
    assert_eq!(vm.final_state(), ("Shutoff".into(), "Shutdown".into()));
    let log = std::fs::read_to_string(vm.serial_log()).unwrap_or_default();
    assert!(log.contains("ping"), "the echo is logged too: {log:?}");
    vm.assert_domain_gone();
}

#[test]
fn libvirt_start_paused_shows_the_banner_on_virt_serial0_after_resume() {
    let Some(_guard) = libvirt_or_skip("libvirt_start_paused_shows_the_banner_on_virt_serial0")
    else {
        return;
    };
    let mut vm = LaunchedVm::start("lv-paused", 5, "  startStrategy: Paused\n");
    vm.wait_status("Paused", "StartingUp");
    let mut console = vm.connect_console();
    let resumed = vm.control("resume").expect("resume");
    assert_eq!(resumed["state"], "Running", "{resumed}");
    let seen = read_until(&mut console, BANNER, Duration::from_secs(30));
    assert!(seen.contains(BANNER), "no banner on virt-serial0: {seen:?}");

    // A reset reboots the guest: the banner comes again.
    vm.control("reboot").expect("reboot");
    let again = read_until(&mut console, BANNER, Duration::from_secs(30));
    assert!(again.contains(BANNER), "no banner after reboot: {again:?}");
    vm.wait_status("Running", "Booted");

    vm.power_off_from(&mut console);
    vm.assert_domain_gone();
}

#[test]
fn libvirt_pause_then_resume_maps_to_paused_user_then_running() {
    let Some(_guard) = libvirt_or_skip("libvirt_pause_then_resume") else {
        return;
    };
    let mut vm = LaunchedVm::start("lv-pause", 5, "");
    vm.wait_status("Running", "Booted");
    let paused = vm.control("pause").expect("pause");
    assert_eq!(
        (&paused["state"], &paused["reason"]),
        (&"Paused".into(), &"User".into())
    );
    let domstate = virsh(&["domstate", &vm.domain]).expect("virsh domstate");
    assert_eq!(String::from_utf8_lossy(&domstate.stdout).trim(), "paused");

    let resumed = vm.control("resume").expect("resume");
    assert_eq!(
        (&resumed["state"], &resumed["reason"]),
        (&"Running".into(), &"Unpaused".into())
    );
    let mut console = vm.connect_console();
    console.write_all(b"x").unwrap();
    assert!(read_until(&mut console, "x", Duration::from_secs(20)).contains('x'));

    vm.power_off_from(&mut console);
    vm.assert_domain_gone();
}

#[test]
fn libvirt_sigterm_waits_the_grace_period_then_destroys() {
    let Some(_guard) = libvirt_or_skip("libvirt_sigterm_waits_the_grace_period_then_destroys")
    else {
        return;
    };
    let mut vm = LaunchedVm::start("lv-sigterm", 2, "");
    vm.wait_status("Running", "Booted");
    let sent = Instant::now();
    vm.signal(nix::sys::signal::Signal::SIGTERM);
    let status = vm.wait_exit();
    let took = sent.elapsed();
    // The guest ignores the ACPI power button, so the stop takes the grace
    // period and ends in a destroy the launcher asked for: success.
    assert_eq!(status.code(), Some(0), "{}", vm.logs());
    assert!(
        took >= Duration::from_secs(2),
        "stopped before the grace period: {took:?}"
    );
    assert_eq!(vm.final_state(), ("Shutoff".into(), "Destroyed".into()));
    vm.assert_domain_gone();
}

#[test]
fn libvirt_killed_qemu_maps_to_crashed_and_exit_3() {
    let Some(_guard) = libvirt_or_skip("libvirt_killed_qemu_maps_to_crashed_and_exit_3") else {
        return;
    };
    let mut vm = LaunchedVm::start("lv-kill", 5, "");
    vm.wait_status("Running", "Booted");
    let pid = vm.qemu_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill QEMU");
    let status = vm.wait_exit();
    assert_eq!(status.code(), Some(3), "{}", vm.logs());
    assert_eq!(vm.final_state(), ("Crashed".into(), "Unknown".into()));
    vm.assert_domain_gone();
}

/// Adds `lines` (already indented for `spec.domain.cpu`) to the spec's CPU.
fn with_cpu(lines: &'static str) -> impl FnOnce(String, &Path) -> String {
    move |text, _| {
        assert!(
            text.contains("      threads: 1\n"),
            "spec layout changed:\n{text}"
        );
        text.replacen(
            "      threads: 1\n",
            &format!("      threads: 1\n{lines}"),
            1,
        )
    }
}

/// Boots the test guest with `cpu_lines` and powers it off from its console.
fn boots_with_cpu(test: &str, cpu_lines: &'static str) {
    let Some(_guard) = libvirt_or_skip(test) else {
        return;
    };
    let mut vm = LaunchedVm::start_with(test, 5, "", with_cpu(cpu_lines));
    vm.wait_status("Running", "Booted");
    wait_for_file_text(&vm.serial_log(), BANNER);
    let mut console = vm.connect_console();
    vm.power_off_from(&mut console);
    vm.assert_domain_gone();
}

#[test]
fn libvirt_host_passthrough_cpu_boots_on_this_host() {
    boots_with_cpu("lv-passthrough", "      model: host-passthrough\n");
}

#[test]
fn libvirt_cpu_features_with_each_policy_boot_on_this_host() {
    // Features every x86_64 host has (lm, sse2) or that QEMU can always
    // give or take (x2apic, hypervisor); `vmx` and `svm` are disabled.
    boots_with_cpu(
        "lv-cpu-features",
        "      features:\n\
         \x20       - name: lm\n\
         \x20       - name: sse2\n          policy: require\n\
         \x20       - name: x2apic\n          policy: force\n\
         \x20       - name: hypervisor\n          policy: optional\n\
         \x20       - name: vmx\n          policy: disable\n\
         \x20       - name: svm\n          policy: disable\n",
    );
}

/// The CPU probe and QEMU agree: on a host where the probe finds a refused
/// feature MSR, the same guest without the launcher's workaround (a recorded
/// probe of a host without the quirk, given by `--cpu-probe`) makes QEMU
/// abort, and the launcher's error carries QEMU's own words and what to set
/// in the spec. Hosts without the quirk print SKIP.
#[test]
fn libvirt_without_the_workaround_qemu_dies_and_the_error_says_what_to_set() {
    let test = "libvirt_without_the_workaround_qemu_dies_and_the_error_says_what_to_set";
    let Some(_guard) = libvirt_or_skip(test) else {
        return;
    };
    let probe = Command::new(launcher_path())
        .args(["host", "cpu", "--json"])
        .output()
        .expect("ch-launcher host cpu runs");
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let probe: Value = serde_json::from_slice(&probe.stdout).expect("probe JSON");
    let refused_arch_caps = probe["feature_msrs"]
        .as_array()
        .expect("feature_msrs")
        .iter()
        .any(|m| m["index"] == 0x10a && m["vcpu_accepts_kvm_value"] == false);
    if !refused_arch_caps {
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: {test}: this host's KVM takes IA32_ARCH_CAPABILITIES; QEMU needs no workaround"
        );
        return;
    }
    let accepted = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ch-launcher/tests/data/cpu-probe/amd-epyc-nested-msrs-accepted.json");
    let started = Instant::now();
    let mut vm = LaunchedVm::start_with_args(
        "lv-no-workaround",
        5,
        "",
        |text, _| text,
        |_| vec!["--cpu-probe".into(), accepted.display().to_string()],
    );
    let status = vm.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", vm.logs());
    let logs = vm.logs();
    assert!(
        logs.contains("failed to set MSR 0x10a"),
        "QEMU's stderr is kept:\n{logs}"
    );
    assert!(
        logs.contains("name: arch-capabilities, policy: disable"),
        "the error says what to set:\n{logs}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    vm.assert_domain_gone();
}

#[test]
fn libvirt_guest_with_disks_cdrom_rng_and_vnc_boots_under_qemu() {
    let Some(_guard) =
        libvirt_or_skip("libvirt_guest_with_disks_cdrom_rng_and_vnc_boots_under_qemu")
    else {
        return;
    };
    let mut vm = LaunchedVm::start_with("lv-devices", 5, "", |text, dir| {
        let iso = dir.join("installer.iso");
        std::fs::write(&iso, vec![0u8; 1 << 20]).expect("write iso");
        let devices = "    devices:\n      rng: {}\n      disks:\n      - name: installer\n        cdrom:\n          bus: sata\n      - name: scratch\n        serial: SCRATCH-1\n        disk:\n          bus: virtio\n      - name: extra\n        disk:\n          bus: scsi\n";
        let volumes = format!(
            "  volumes:\n  - name: installer\n    hostDisk:\n      path: {}\n      type: Disk\n  - name: scratch\n    hostDisk:\n      path: {}\n      type: DiskOrCreate\n      capacity: 16Mi\n  - name: extra\n    hostDisk:\n      path: {}\n      type: DiskOrCreate\n      capacity: 8Mi\n",
            iso.display(),
            dir.join("scratch.img").display(),
            dir.join("extra.img").display()
        );
        let text = text.replacen("    devices: {}\n", devices, 1);
        format!("{text}{volumes}")
    });
    vm.wait_status("Running", "Booted");
    let banner = wait_for_file_text(&vm.serial_log(), BANNER);
    assert!(banner.contains(BANNER), "no banner: {banner:?}");
    // DiskOrCreate made sparse images of the asked size.
    let scratch = vm.dir.path().join("scratch.img");
    assert_eq!(
        std::fs::metadata(&scratch).expect("scratch.img").len(),
        16 << 20
    );
    let xml = virsh(&["dumpxml", &vm.domain]).expect("virsh dumpxml");
    let xml = String::from_utf8_lossy(&xml.stdout);
    for want in [
        "device='cdrom'",
        "bus='sata'",
        "bus='scsi'",
        "<serial>SCRATCH-1</serial>",
        "<rng model='virtio'>",
        "<graphics type='vnc'",
    ] {
        assert!(
            xml.contains(want),
            "{want} missing from the running domain:\n{xml}"
        );
    }

    let vnc = vm.vm_dir().join("virt-vnc");
    assert!(vnc.exists(), "QEMU binds {}", vnc.display());

    let mut console = vm.connect_console();
    vm.power_off_from(&mut console);
    vm.assert_domain_gone();
    assert!(
        !vnc.exists(),
        "the VNC socket is left behind: {}",
        vnc.display()
    );
}

/// Waits up to `wait` for `done`.
fn eventually(wait: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

#[test]
fn libvirt_sigkilled_launcher_leaves_no_domain_behind() {
    let Some(_guard) = libvirt_or_skip("libvirt_sigkilled_launcher_leaves_no_domain_behind") else {
        return;
    };
    let mut vm = LaunchedVm::start("lv-sigkill", 5, "");
    vm.wait_status("Running", "Booted");
    let qemu = vm.qemu_pid();
    vm.signal(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&vm.wait_exit()),
        Some(9)
    );
    // libvirtd destroys the auto-destroy domain when the connection closes.
    assert!(
        eventually(Duration::from_secs(5), || !vm.domain_listed()),
        "domain {} survived the launcher's SIGKILL ({})",
        vm.domain,
        vm.domstate()
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(qemu), None).is_err()
        }),
        "QEMU {qemu} still runs"
    );
}

#[test]
fn libvirt_second_launcher_for_the_same_vm_fails_and_leaves_the_first_alone() {
    let Some(_guard) =
        libvirt_or_skip("libvirt_second_launcher_for_the_same_vm_fails_and_leaves_the_first_alone")
    else {
        return;
    };
    // Started together, so that either may win the CREATE_XML race.
    let mut a = LaunchedVm::start("lv-race", 5, "");
    let mut b = LaunchedVm::start("lv-race", 5, "");
    assert_eq!(a.domain, b.domain);
    let deadline = Instant::now() + WAIT;
    let (mut winner, loser, status) = loop {
        if let Some(status) = a.try_exit() {
            break (b, a, status);
        }
        if let Some(status) = b.try_exit() {
            break (a, b, status);
        }
        assert!(
            Instant::now() < deadline,
            "neither launcher gave up\n{}\n{}",
            a.logs(),
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(status.code(), Some(0), "{}", loser.logs());
    let logs = loser.logs();
    assert!(
        logs.contains(&format!(
            "domain {} already exists under {} (another launcher?)",
            winner.domain,
            uri()
        )),
        "{logs}"
    );
    assert!(!logs.contains("destroying the domain"), "{logs}");
    // The loser's exit touched nothing: the winner's VM still runs.
    winner.wait_status("Running", "Booted");
    assert_eq!(winner.domstate(), "running");
    let mut console = winner.connect_console();
    winner.power_off_from(&mut console);
    winner.assert_domain_gone();
}

#[test]
fn libvirt_sigterm_of_a_paused_vm_destroys_without_waiting_the_grace_period() {
    let Some(_guard) = libvirt_or_skip("libvirt_sigterm_of_a_paused_vm_destroys_at_once") else {
        return;
    };
    let mut vm = LaunchedVm::start("lv-paused-term", 60, "");
    vm.wait_status("Running", "Booted");
    vm.control("pause").expect("pause");
    let sent = Instant::now();
    vm.signal(nix::sys::signal::Signal::SIGTERM);
    let status = vm.wait_exit();
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "{}", vm.logs());
    assert!(
        took < Duration::from_secs(20),
        "a paused VM cannot take the power button; waited {took:?}\n{}",
        vm.logs()
    );
    assert_eq!(vm.final_state(), ("Shutoff".into(), "Destroyed".into()));
    vm.assert_domain_gone();
}

/// Stops libvirtd for a test and starts it again whatever happens, then
/// waits until it answers.
struct DaemonRestart;

impl DaemonRestart {
    fn libvirtd_pid() -> nix::unistd::Pid {
        let pid = std::fs::read_to_string("/var/run/libvirtd.pid")
            .expect("libvirtd's pid file (/var/run/libvirtd.pid)")
            .trim()
            .parse()
            .expect("libvirtd pid");
        nix::unistd::Pid::from_raw(pid)
    }

    fn exited(pid: nix::unistd::Pid) -> bool {
        // Gone, or a zombie nobody reaps in a container.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    }

    /// Sends `signal` to libvirtd and waits until it is gone. libvirt 9.0
    /// can deadlock when it stops with an auto-destroy domain running (the
    /// auto-destroy waits for the daemon lock its shutdown thread holds):
    /// after 15 s it is killed, as an init system would.
    fn stop(signal: nix::sys::signal::Signal) -> DaemonRestart {
        let pid = Self::libvirtd_pid();
        let restart = DaemonRestart;
        nix::sys::signal::kill(pid, signal).expect("signal libvirtd");
        if !eventually(Duration::from_secs(15), || Self::exited(pid)) {
            println!("libvirtd {pid} hangs after {signal}; killing it");
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            assert!(
                eventually(Duration::from_secs(10), || Self::exited(pid)),
                "libvirtd {pid} did not exit"
            );
        }
        restart
    }

    fn start(&self) {
        let started = Command::new("libvirtd").arg("-d").status();
        assert!(
            started.is_ok_and(|s| s.success()),
            "libvirtd -d failed to start"
        );
        assert!(
            eventually(Duration::from_secs(30), || virsh(&["version"])
                .is_ok_and(|o| o.status.success())),
            "libvirtd does not answer again"
        );
    }
}

impl Drop for DaemonRestart {
    fn drop(&mut self) {
        if !virsh(&["version"]).is_ok_and(|o| o.status.success()) {
            let _ = Command::new("libvirtd").arg("-d").status();
            eventually(Duration::from_secs(30), || {
                virsh(&["version"]).is_ok_and(|o| o.status.success())
            });
        }
    }
}

/// A libvirtd that crashes (SIGKILL) leaves QEMU running: the launcher
/// reconnects when the daemon is back and keeps controlling the VM.
#[test]
fn libvirt_launcher_reconnects_after_a_libvirtd_crash_and_keeps_the_vm() {
    let Some(_guard) = libvirt_or_skip("libvirt_launcher_reconnects_after_a_libvirtd_crash") else {
        return;
    };
    let mut vm = LaunchedVm::start("lv-reconnect", 5, "");
    vm.wait_status("Running", "Booted");
    let daemon = DaemonRestart::stop(nix::sys::signal::Signal::SIGKILL);
    std::thread::sleep(Duration::from_secs(2));
    assert!(vm.try_exit().is_none(), "{}", vm.logs());
    daemon.start();
    assert!(
        eventually(WAIT, || vm.logs().contains("reconnected to libvirtd")),
        "{}",
        vm.logs()
    );
    vm.wait_status("Running", "Booted");
    let paused = vm.control("pause").expect("pause after the reconnect");
    assert_eq!(paused["state"], "Paused", "{paused}");
    let resumed = vm.control("resume").expect("resume");
    assert_eq!(resumed["state"], "Running", "{resumed}");
    let mut console = vm.connect_console();
    vm.power_off_from(&mut console);
    assert_eq!(vm.final_state(), ("Shutoff".into(), "Shutdown".into()));
    vm.assert_domain_gone();
}

/// A libvirtd that stops cleanly (SIGTERM) runs the auto-destroy of the
/// launcher's connection: after the restart the domain is gone and the
/// launcher says so (Crashed, exit 3) instead of hanging or leaving QEMU.
#[test]
fn libvirt_clean_libvirtd_restart_reports_crashed_and_leaves_no_qemu() {
    let Some(_guard) = libvirt_or_skip("libvirt_clean_libvirtd_restart_reports_crashed") else {
        return;
    };
    let mut vm = LaunchedVm::start("lv-restart", 5, "");
    vm.wait_status("Running", "Booted");
    let qemu = vm.qemu_pid();
    let daemon = DaemonRestart::stop(nix::sys::signal::Signal::SIGTERM);
    daemon.start();
    let status = vm.wait_exit();
    assert_eq!(status.code(), Some(3), "{}", vm.logs());
    assert_eq!(vm.final_state(), ("Crashed".into(), "Unknown".into()));
    let logs = vm.logs();
    assert!(
        logs.contains("libvirtd"),
        "the message names libvirtd: {logs}"
    );
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(qemu), None).is_err(),
        "QEMU {qemu} is orphaned"
    );
    vm.assert_domain_gone();
}

#[test]
fn libvirt_empty_disk_and_cloud_init_cdrom_attach_and_are_removed_with_the_vm() {
    let Some(_guard) = libvirt_or_skip(
        "libvirt_empty_disk_and_cloud_init_cdrom_attach_and_are_removed_with_the_vm",
    ) else {
        return;
    };
    let mut vm = LaunchedVm::start_with_args(
        "lv-gen",
        1,
        "",
        |text, _| {
            let devices = "    devices:\n      disks:\n      - name: scratch\n        disk:\n          bus: virtio\n      - name: cidata\n        cdrom:\n          bus: sata\n";
            let volumes = "  volumes:\n  - name: scratch\n    emptyDisk:\n      capacity: 16Mi\n  - name: cidata\n    cloudInitNoCloud:\n      userData: \"#cloud-config\\n\"\n";
            format!(
                "{}{volumes}",
                text.replacen("    devices: {}\n", devices, 1)
            )
        },
        |dir| {
            vec![
                "--ephemeral-disk-dir".into(),
                dir.join("eph").display().to_string(),
            ]
        },
    );
    vm.wait_status("Running", "Booted");
    wait_for_file_text(&vm.serial_log(), BANNER);
    let eph = vm.dir.path().join("eph");
    let images: Vec<PathBuf> = std::fs::read_dir(&eph)
        .expect("the ephemeral disk dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(images.len(), 1, "one directory per VM: {images:?}");
    let blk = virsh(&["domblklist", &vm.domain]).expect("virsh domblklist");
    let blk = String::from_utf8_lossy(&blk.stdout);
    for volume in ["scratch", "cidata"] {
        let path = images[0].join(format!("{volume}.img"));
        assert!(
            blk.contains(path.to_str().expect("utf-8")),
            "{volume} not attached:\n{blk}"
        );
    }
    let mut console = vm.connect_console();
    vm.power_off_from(&mut console);
    vm.assert_domain_gone();
    assert!(
        eventually(Duration::from_secs(10), || !images[0].exists()),
        "launcher-made images left behind in {}",
        images[0].display()
    );
}
