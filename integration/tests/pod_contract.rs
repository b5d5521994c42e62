//! `ch-launcher pod` driven the way virt-handler drives virt-launcher, over
//! KubeVirt's own gRPC contract: the real launcher binary, the real Cloud
//! Hypervisor (`CLOUD_HYPERVISOR_BIN`, else the stand-in with a SKIP line)
//! and real libvirt + QEMU, against this crate's virt-handler stand-in
//! ([`integration::virt_handler`]: a notify server and a cmd client built
//! from the same `.proto` files). Each test's launcher is killed in `Drop`
//! even when the test fails.

mod ch_support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ch_launcher::pod::proto::cmd::EmptyRequest;
use ch_launcher::pod::proto::cmd_info::CmdInfoRequest;
use integration::launcher_path;
use integration::virt_handler::{self as handler, state_of, NotifySink};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "kubevirt-test";

/// One `ch-launcher pod` in its own share and private directories.
struct PodLauncher {
    dir: tempfile::TempDir,
    uid: String,
    name: String,
    child: Option<Child>,
}

impl PodLauncher {
    fn start(test: &str, hypervisor: &str, grace_period_seconds: u32) -> PodLauncher {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("share")).unwrap();
        let uid = format!("0b1c2d3e-0000-4000-8000-{:012}", std::process::id());
        let name = format!("{test}-{}", std::process::id());
        let log = std::fs::File::create(dir.path().join("launcher.log")).unwrap();
        let child = Command::new(launcher_path())
            .args([
                "pod",
                "--name",
                &name,
                "--namespace",
                NAMESPACE,
                "--uid",
                &uid,
            ])
            .arg("--kubevirt-share-dir")
            .arg(dir.path().join("share"))
            .arg("--private-dir")
            .arg(dir.path().join("private"))
            .args(["--hypervisor", hypervisor, "--qemu-timeout", "60s"])
            .args(["--grace-period-seconds", &grace_period_seconds.to_string()])
            .args(["--v", "4"])
            .env(ch_support::CH_BIN_ENV, ch_support::vmm_bin())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start ch-launcher pod");
        PodLauncher {
            dir,
            uid,
            name,
            child: Some(child),
        }
    }

    fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    fn vm_dir(&self) -> PathBuf {
        self.dir.path().join("private").join(&self.uid)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("started").id()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("launcher.log")).unwrap_or_default()
    }

    fn alive(&mut self) -> Result<(), String> {
        match self.child.as_mut().expect("started").try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("exited with {status}; log:\n{}", self.logs())),
            Err(e) => Err(e.to_string()),
        }
    }

    fn vmi(&self, grace_seconds: u32) -> Value {
        handler::vmi(
            &self.name,
            NAMESPACE,
            &self.uid,
            images::test_guest(),
            grace_seconds,
        )
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal)
            .expect("signal the launcher");
    }

    /// Waits for the launcher's exit code.
    async fn exit_code(&mut self, wait: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the launcher did not exit within {wait:?}; log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PodLauncher {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                // The whole group: the launcher and its hypervisor.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait();
        }
    }
}

/// Every stderr line is a virt-launcher log record.
fn assert_kubevirt_log_records(logs: &str, uid: &str) {
    let mut records = 0;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let record: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log record ({e}): {line}"));
        for key in ["component", "level", "msg", "pos", "timestamp", "uid"] {
            assert!(record.get(key).is_some(), "no {key:?} in {line}");
        }
        assert_eq!(record["component"], "virt-launcher", "{line}");
        assert_eq!(record["uid"], uid, "{line}");
        assert!(
            record["pos"].as_str().unwrap().contains(".rs:"),
            "pos is file:line: {line}"
        );
        records += 1;
    }
    assert!(records > 3, "too few log records: {logs}");
}

/// The pid that listens on `socket`, as virt-handler finds it (SO_PEERCRED).
fn peer_pid(socket: &Path) -> i32 {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    getsockopt(&stream, PeerCredentials)
        .expect("SO_PEERCRED")
        .pid()
}

/// Start, run, graceful shutdown, delete and exit: the flow virt-handler
/// drives for every VMI, checked at each step through what virt-handler
/// sees (replies, notify events, the Domain JSON).
async fn full_lifecycle(hypervisor: &str) {
    let mut pod = PodLauncher::start("pod-life", hypervisor, 30);
    let mut sink = NotifySink::serve(&pod.share());
    let (mut cmd, mut info) = handler::connect_cmd(&pod.share(), WAIT, || pod.alive()).await;
    assert!(
        !pod.share().join("sockets/launcher-init-sock").exists(),
        "the init socket is renamed once ready"
    );
    assert_eq!(
        peer_pid(&handler::cmd_socket(&pod.share())),
        pod.pid() as i32,
        "the process listening on the cmd socket is the launcher itself"
    );
    let versions = info.info(CmdInfoRequest {}).await.expect("Info");
    assert_eq!(versions.into_inner().supported_cmd_versions, vec![1]);
    assert!(
        cmd.ping(EmptyRequest {})
            .await
            .unwrap()
            .into_inner()
            .success
    );
    let before = cmd.get_domain(EmptyRequest {}).await.unwrap().into_inner();
    assert_eq!(before.domain, "", "no domain before the first sync");

    let vmi = pod.vmi(1);
    let synced = cmd
        .sync_virtual_machine(handler::vmi_request(&vmi))
        .await
        .expect("SyncVirtualMachine")
        .into_inner();
    assert!(
        synced.success,
        "sync failed: {}\n{}",
        synced.message,
        pod.logs()
    );
    let added = sink.domain_where("ADDED", WAIT, |t, _| t == "ADDED").await;
    assert_eq!(added["ObjectMeta"]["name"], pod.name.as_str());
    assert_eq!(added["ObjectMeta"]["namespace"], NAMESPACE);
    assert_eq!(
        added["Spec"]["Metadata"]["KubeVirt"]["UID"],
        pod.uid.as_str()
    );
    assert_eq!(
        added["Spec"]["Metadata"]["KubeVirt"]["GracePeriod"]["DeletionGracePeriodSeconds"],
        1
    );
    let running = sink
        .domain_where("Running", WAIT, |t, d| {
            t == "MODIFIED" && state_of(d).0 == "Running"
        })
        .await;
    assert_eq!(state_of(&running), ("Running".into(), "Booted".into()));

    // Sync again, as every reconcile does: nothing changes.
    let again = cmd
        .sync_virtual_machine(handler::vmi_request(&vmi))
        .await
        .unwrap()
        .into_inner();
    assert!(
        again.success,
        "a repeated sync is idempotent: {}",
        again.message
    );
    let got = cmd.get_domain(EmptyRequest {}).await.unwrap().into_inner();
    let domain: Value = serde_json::from_str(&got.domain).expect("Domain JSON");
    assert_eq!(state_of(&domain), ("Running".into(), "Booted".into()));
    assert_eq!(
        domain["Spec"]["Name"],
        format!("{NAMESPACE}_{}", pod.name).as_str()
    );

    // The console where virt-handler dials it.
    let serial = pod.vm_dir().join("virt-serial0");
    let mut console = None;
    for _ in 0..500 {
        if let Ok(c) = std::os::unix::net::UnixStream::connect(&serial) {
            console = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(console.is_some(), "no console at {}", serial.display());

    let stats = cmd
        .get_domain_stats(EmptyRequest {})
        .await
        .unwrap()
        .into_inner();
    let stats: Value = serde_json::from_str(&stats.domain_stats).expect("stats JSON");
    assert_eq!(stats["Vcpu"].as_array().map(Vec::len), Some(1));
    assert_eq!(stats["Vcpu"][0]["State"], 1, "the vCPU runs");
    let fs = cmd
        .get_filesystems(EmptyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fs.guest_filesystems_response, r#"{"items":[]}"#);
    let version = cmd
        .get_qemu_version(EmptyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!version.version.is_empty(), "a hypervisor version");
    let migrate = cmd
        .migrate_virtual_machine(ch_launcher::pod::proto::cmd::MigrationRequest::default())
        .await
        .expect_err("migration is not built");
    assert_eq!(migrate.code(), tonic::Code::Unimplemented);
    assert!(migrate.message().contains("MigrateVirtualMachine"));

    // Pause and unpause.
    let paused = cmd
        .pause_virtual_machine(handler::vmi_request(&vmi))
        .await
        .unwrap()
        .into_inner();
    assert!(paused.success, "{}", paused.message);
    sink.domain_where("Paused/User", WAIT, |_, d| {
        state_of(d) == ("Paused".into(), "User".into())
    })
    .await;
    let resumed = cmd
        .unpause_virtual_machine(handler::vmi_request(&vmi))
        .await
        .unwrap()
        .into_inner();
    assert!(resumed.success, "{}", resumed.message);
    sink.domain_where("Running/Unpaused", WAIT, |_, d| {
        state_of(d) == ("Running".into(), "Unpaused".into())
    })
    .await;

    // Shutdown stamps the deletion timestamp once; the test guest ignores
    // the power button, so the launcher's grace period (1 s) ends in a
    // destroy, and virt-handler's Kill then has nothing left to do.
    let shutdown = cmd
        .shutdown_virtual_machine(handler::vmi_request(&vmi))
        .await
        .unwrap()
        .into_inner();
    assert!(shutdown.success, "{}", shutdown.message);
    let stamped = sink
        .domain_where("a DeletionTimestamp", WAIT, |_, d| {
            d["Spec"]["Metadata"]["KubeVirt"]["GracePeriod"]["DeletionTimestamp"].is_string()
        })
        .await;
    let stamp = stamped["Spec"]["Metadata"]["KubeVirt"]["GracePeriod"]["DeletionTimestamp"].clone();
    let second = cmd
        .shutdown_virtual_machine(handler::vmi_request(&vmi))
        .await
        .unwrap()
        .into_inner();
    assert!(second.success, "{}", second.message);
    let off = sink
        .domain_where("Shutoff", WAIT, |_, d| state_of(d).0 == "Shutoff")
        .await;
    assert_eq!(state_of(&off), ("Shutoff".into(), "Destroyed".into()));
    assert_eq!(
        off["Spec"]["Metadata"]["KubeVirt"]["GracePeriod"]["DeletionTimestamp"], stamp,
        "stamped once"
    );
    let kill = cmd
        .kill_virtual_machine(handler::vmi_request(&vmi))
        .await
        .unwrap()
        .into_inner();
    assert!(
        kill.success,
        "Kill of a stopped VM is a no-op: {}",
        kill.message
    );

    let delete = cmd
        .delete_virtual_machine(handler::vmi_request(&vmi))
        .await
        .unwrap()
        .into_inner();
    assert!(delete.success, "{}", delete.message);
    let last = sink
        .domain_where("NoState/NonExistent", WAIT, |_, d| {
            state_of(d) == ("NoState".into(), "NonExistent".into())
        })
        .await;
    assert!(last["ObjectMeta"]["deletionTimestamp"].is_string());
    assert_eq!(
        last["Spec"]["Metadata"]["KubeVirt"]["UID"],
        pod.uid.as_str()
    );
    assert_eq!(pod.exit_code(WAIT).await, Some(0), "{}", pod.logs());
    assert!(
        !handler::cmd_socket(&pod.share()).exists(),
        "the cmd socket is removed at exit"
    );
    assert!(
        !pod.vm_dir().join("virt-serial0").exists(),
        "the console socket is removed at exit"
    );
    assert_kubevirt_log_records(&pod.logs(), &pod.uid);
    if hypervisor == "libvirt" {
        let name = format!("{NAMESPACE}_{}", pod.name);
        let state = Command::new("virsh")
            .args(["-c", "qemu:///system", "domstate", &name])
            .output()
            .expect("virsh");
        assert!(!state.status.success(), "libvirt still has {name}");
    }
}

#[tokio::test]
async fn pod_under_cloud_hypervisor_follows_virt_handlers_start_shutdown_delete_flow() {
    full_lifecycle("cloud-hypervisor").await;
}

#[tokio::test]
async fn pod_under_libvirt_follows_virt_handlers_start_shutdown_delete_flow() {
    if !libvirt_reachable("pod_under_libvirt_follows_virt_handlers_start_shutdown_delete_flow") {
        return;
    }
    full_lifecycle("libvirt").await;
}

/// Whether libvirtd answers; a SKIP line when not, a failure under
/// `CH_LAUNCHER_REQUIRE_LIBVIRT=1` (CI).
fn libvirt_reachable(test: &str) -> bool {
    let ok = Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var("CH_LAUNCHER_REQUIRE_LIBVIRT").as_deref() != Ok("1"),
            "{test}: libvirtd is not reachable, and CH_LAUNCHER_REQUIRE_LIBVIRT=1 requires it"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("SKIP: {test}: libvirtd not reachable; run .ci/setup-host.sh\n").as_bytes(),
        );
    }
    ok
}

#[tokio::test]
async fn pod_sigterm_marks_the_domain_for_graceful_shutdown_and_kills_after_its_grace_period() {
    let mut pod = PodLauncher::start("pod-term", "cloud-hypervisor", 1);
    let mut sink = NotifySink::serve(&pod.share());
    let (mut cmd, _) = handler::connect_cmd(&pod.share(), WAIT, || pod.alive()).await;
    let vmi = pod.vmi(30);
    let synced = cmd
        .sync_virtual_machine(handler::vmi_request(&vmi))
        .await
        .unwrap()
        .into_inner();
    assert!(synced.success, "{}\n{}", synced.message, pod.logs());
    sink.domain_where("Running", WAIT, |_, d| state_of(d).0 == "Running")
        .await;

    pod.signal(nix::sys::signal::Signal::SIGTERM);
    let marked = sink
        .domain_where("MarkedForGracefulShutdown", WAIT, |_, d| {
            d["Spec"]["Metadata"]["KubeVirt"]["GracePeriod"]["MarkedForGracefulShutdown"] == true
        })
        .await;
    assert_eq!(
        state_of(&marked).0,
        "Running",
        "SIGTERM alone does not stop the VM: virt-handler drives the shutdown"
    );
    // Nobody acts on the mark here: after --grace-period-seconds (1 s) the
    // launcher kills the VM itself.
    let off = sink
        .domain_where("Shutoff", WAIT, |_, d| state_of(d).0 == "Shutoff")
        .await;
    assert_eq!(state_of(&off), ("Shutoff".into(), "Destroyed".into()));
    let delete = cmd
        .delete_virtual_machine(handler::vmi_request(&vmi))
        .await
        .unwrap()
        .into_inner();
    assert!(delete.success, "{}", delete.message);
    sink.domain_where("NoState/NonExistent", WAIT, |_, d| {
        state_of(d) == ("NoState".into(), "NonExistent".into())
    })
    .await;
    assert_eq!(pod.exit_code(WAIT).await, Some(0), "{}", pod.logs());
}

#[tokio::test]
async fn pod_refuses_bad_and_foreign_vmis_with_a_message_and_stays_ready() {
    let mut pod = PodLauncher::start("pod-refuse", "cloud-hypervisor", 30);
    let mut sink = NotifySink::serve(&pod.share());
    let (mut cmd, _) = handler::connect_cmd(&pod.share(), WAIT, || pod.alive()).await;

    let garbage = ch_launcher::pod::proto::cmd::VmiRequest {
        vmi: Some(ch_launcher::pod::proto::cmd::Vmi {
            vmi_json: b"{not json".to_vec(),
        }),
        options: None,
    };
    let answer = cmd
        .sync_virtual_machine(garbage)
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.success);
    assert!(
        answer
            .message
            .starts_with("No valid vmi object present in command server request"),
        "{}",
        answer.message
    );

    let mut foreign = pod.vmi(30);
    foreign["metadata"]["uid"] = "ffffffff-0000-4000-8000-000000000000".into();
    let answer = cmd
        .sync_virtual_machine(handler::vmi_request(&foreign))
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.success);
    assert!(
        answer.message.contains("this launcher runs"),
        "{}",
        answer.message
    );

    let mut invalid = pod.vmi(30);
    invalid["spec"]["domain"]["memory"]["guest"] = "lots".into();
    let answer = cmd
        .sync_virtual_machine(handler::vmi_request(&invalid))
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.success);
    assert!(
        answer.message.contains("spec.domain.memory.guest"),
        "the field path: {}",
        answer.message
    );
    let event = sink.k8s_event(WAIT).await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["involvedObject"]["uid"], pod.uid.as_str());
    assert_eq!(event["involvedObject"]["name"], pod.name.as_str());

    // Still ready, with no domain.
    assert!(
        cmd.ping(EmptyRequest {})
            .await
            .unwrap()
            .into_inner()
            .success
    );
    assert_eq!(
        cmd.get_domain(EmptyRequest {})
            .await
            .unwrap()
            .into_inner()
            .domain,
        ""
    );
    pod.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(pod.exit_code(WAIT).await, Some(0), "{}", pod.logs());
    assert!(!handler::cmd_socket(&pod.share()).exists());
}

/// The launcher's child processes (`/proc/<pid>/task/*/children`).
fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

#[tokio::test]
async fn a_sigkilled_pod_launcher_leaves_no_hypervisor_behind() {
    let mut pod = PodLauncher::start("pod-kill", "cloud-hypervisor", 30);
    let mut sink = NotifySink::serve(&pod.share());
    let (mut cmd, _) = handler::connect_cmd(&pod.share(), WAIT, || pod.alive()).await;
    let synced = cmd
        .sync_virtual_machine(handler::vmi_request(&pod.vmi(30)))
        .await
        .unwrap()
        .into_inner();
    assert!(synced.success, "{}\n{}", synced.message, pod.logs());
    sink.domain_where("Running", WAIT, |_, d| state_of(d).0 == "Running")
        .await;
    let vmm = children_of(pod.pid());
    assert!(
        !vmm.is_empty(),
        "the hypervisor runs as the launcher's child"
    );
    // Only the launcher, not its process group.
    pod.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = pod.exit_code(WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    for child in vmm {
        while nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_ok()
            && std::fs::read_to_string(format!("/proc/{child}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "hypervisor {child} outlived its launcher"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// KubeVirt's in-place hotplug under the real Cloud Hypervisor: a VMI that
/// comes back in SyncVirtualMachine with more sockets and more memory
/// resizes the running VM (CH's own `vm.info` shows it); one that changed
/// anything else is refused with a message, the VM untouched.
#[tokio::test]
async fn pod_sync_with_more_sockets_and_memory_resizes_the_running_vm_in_place() {
    if std::env::var_os(ch_support::CH_BIN_ENV).is_none_or(|v| v.is_empty()) {
        eprintln!(
            "SKIP: needs the real cloud-hypervisor ({})",
            ch_support::CH_BIN_ENV
        );
        return;
    }
    let mut pod = PodLauncher::start("pod-hotplug", "cloud-hypervisor", 30);
    let mut sink = NotifySink::serve(&pod.share());
    let (mut cmd, _info) = handler::connect_cmd(&pod.share(), WAIT, || pod.alive()).await;
    let mut vmi = pod.vmi(1);
    vmi["spec"]["domain"]["cpu"]["maxSockets"] = 4.into();
    vmi["spec"]["domain"]["memory"]["maxGuest"] = "320Mi".into();
    let synced = cmd
        .sync_virtual_machine(handler::vmi_request(&vmi))
        .await
        .unwrap()
        .into_inner();
    assert!(synced.success, "{}\n{}", synced.message, pod.logs());
    sink.domain_where("Running", WAIT, |t, d| {
        t == "MODIFIED" && state_of(d).0 == "Running"
    })
    .await;

    vmi["spec"]["domain"]["cpu"]["sockets"] = 2.into();
    vmi["spec"]["domain"]["memory"]["guest"] = "192Mi".into();
    let grown = cmd
        .sync_virtual_machine(handler::vmi_request(&vmi))
        .await
        .unwrap()
        .into_inner();
    assert!(
        grown.success,
        "resize by sync: {}\n{}",
        grown.message,
        pod.logs()
    );
    let api = pod.vm_dir().join("ch-api.sock");
    let info = tokio::task::spawn_blocking(move || integration::unix_http::ch_vm_info(&api))
        .await
        .expect("join")
        .expect("vm.info");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 2, "{info}");
    assert_eq!(info["config"]["memory"]["size"], 192u64 << 20);
    // Re-sent as every reconcile does: still fine, nothing more happens.
    let again = cmd
        .sync_virtual_machine(handler::vmi_request(&vmi))
        .await
        .unwrap()
        .into_inner();
    assert!(again.success, "{}", again.message);

    vmi["spec"]["terminationGracePeriodSeconds"] = 7.into();
    let other = cmd
        .sync_virtual_machine(handler::vmi_request(&vmi))
        .await
        .unwrap()
        .into_inner();
    assert!(!other.success, "a change that needs a restart was accepted");
    assert!(
        other.message.contains("needs a restart"),
        "{}",
        other.message
    );
    let _ = cmd.kill_virtual_machine(handler::vmi_request(&vmi)).await;
}
