//! `ch-launcher pod`: the entrypoint of a KubeVirt VM pod, driven by
//! virt-handler over KubeVirt's own handler-launcher contract.
//!
//! The launcher serves the cmd socket ([`cmd_server`]), waits for the VMI to
//! arrive in `SyncVirtualMachine`, runs it with the same [`Runner`] as
//! `ch-launcher run` on either backend, and pushes every change of the
//! domain to virt-handler's notify socket ([`notify`]) as KubeVirt's
//! `api.Domain` JSON ([`domain_json`]).
//!
//! The shutdown handshake is KubeVirt's: `ShutdownVirtualMachine` presses
//! the power button and stamps `GracePeriod.DeletionTimestamp` (once);
//! virt-handler sends `Kill` when its grace period is over. SIGTERM (the pod
//! is being deleted) only sets `MarkedForGracefulShutdown`, which is
//! notified; virt-handler then drives the shutdown, and if
//! `--grace-period-seconds` runs out first the launcher kills the VM
//! itself. Once the VM is gone the launcher waits up to 15 s for
//! `DeleteVirtualMachine`, sends the final `NoState/NonExistent` event with
//! a deletion timestamp, removes the cmd socket and exits.

pub mod cmd_server;
pub mod domain_json;
pub mod notify;
pub mod proto;
pub mod transport;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use domain_model::{Domain, Hypervisor, LoadOptions};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cli::{exit, GlobalArgs, Launch};
use crate::control::Command;
use crate::lifecycle::{Reason, State, Status};
use crate::paths::VmPaths;
use crate::runner::{Commander, Outcome, RunError, RunOptions, Runner};
use crate::util::sleep_until;
use domain_json::{Identity, Metadata};
use notify::{Notifier, Outgoing, Pacing};

/// The notify socket virt-handler injects into `<share-dir>`.
pub const NOTIFY_SOCKET: &str = "domain-notify-pipe.sock";

/// How long the launcher waits, once the VM is gone, for virt-handler's
/// `DeleteVirtualMachine` before it sends the final event anyway (as
/// virt-launcher's `waitForFinalNotify`).
pub const FINAL_WAIT: Duration = Duration::from_secs(15);

/// The arguments of `ch-launcher pod`, named as virt-launcher's.
#[derive(Debug, Clone, clap::Args)]
pub struct PodArgs {
    /// The VMI's name.
    #[arg(long)]
    pub name: String,
    /// The VMI's namespace.
    #[arg(long)]
    pub namespace: String,
    /// The VMI's uid; a VMI with another uid is refused.
    #[arg(long)]
    pub uid: String,
    /// Where the cmd socket (`sockets/launcher-sock`) and the notify socket
    /// live.
    #[arg(long, value_name = "DIR", default_value = "/var/run/kubevirt")]
    pub kubevirt_share_dir: PathBuf,
    /// After SIGTERM, how long virt-handler has to stop the VM before the
    /// launcher kills it itself (virt-controller passes the VMI's grace
    /// period plus 15).
    #[arg(long, value_name = "SECONDS", default_value_t = 45)]
    pub grace_period_seconds: u64,
    /// How long to wait for a VMI from SyncVirtualMachine (and for the VM to
    /// be created) before giving up, e.g. `240s`, `4m`.
    #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = parse_duration)]
    pub qemu_timeout: Duration,
    /// Hook sidecars; none are supported.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub hook_sidecars: u32,
    /// klog-style verbosity as virt-launcher takes it: 0-3 info, 4-5 the
    /// launcher's debug records, 6 and more its trace records (overrides
    /// --log-level; the libraries stay at info).
    #[arg(long = "v", value_name = "LEVEL")]
    pub verbosity: Option<u8>,
}

/// `90`, `90s`, `4m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("expected a duration such as 240s or 4m, found {s:?}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

impl PodArgs {
    /// The `--log-level` filter that `--v` stands for.
    pub fn log_filter(&self) -> Option<&'static str> {
        self.verbosity.map(|v| match v {
            0..=3 => "info",
            4..=5 => "info,ch_launcher=debug",
            _ => "info,ch_launcher=trace",
        })
    }
}

/// Why a VMI from virt-handler cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum VmiError {
    /// KubeVirt's own message for this case.
    #[error("No valid vmi object present in command server request")]
    Missing,
    #[error("No valid vmi object present in command server request: {0}")]
    NotJson(String),
    #[error("the VMI is {}/{} (uid {}); this launcher runs {}/{} (uid {})",
        .0[0].namespace, .0[0].name, .0[0].uid, .0[1].namespace, .0[1].name, .0[1].uid)]
    NotOurs(Box<[Identity; 2]>),
    #[error("invalid VMI: {0}")]
    Invalid(domain_model::SpecErrors),
}

/// Parses virt-handler's VMI (`json.Marshal` of its informer copy: `kind`
/// and `apiVersion` may be empty, `status` is there) into a [`Domain`].
pub fn parse_vmi(json: &[u8], expected: &Identity, opts: &LoadOptions) -> Result<Domain, VmiError> {
    let mut value: Value =
        serde_json::from_slice(json).map_err(|e| VmiError::NotJson(e.to_string()))?;
    let Some(object) = value.as_object_mut() else {
        return Err(VmiError::NotJson("not a JSON object".into()));
    };
    for (key, standard) in [
        ("apiVersion", domain_model::parse::API_VERSION),
        ("kind", domain_model::parse::KIND),
    ] {
        let missing = match object.get(key) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if missing {
            object.insert(key.into(), standard.into());
        }
    }
    let meta = |key: &str| {
        value["metadata"][key]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (name, namespace, uid) = (meta("name"), meta("namespace"), meta("uid"));
    if name != expected.name || namespace != expected.namespace || uid != expected.uid {
        let got = Identity {
            name,
            namespace,
            uid,
        };
        return Err(VmiError::NotOurs(Box::new([got, expected.clone()])));
    }
    domain_model::load_str(&value.to_string(), opts).map_err(VmiError::Invalid)
}

/// A VMI to start, from the first good `SyncVirtualMachine`.
struct StartRequest {
    domain: Domain,
    reply: oneshot::Sender<Result<(), String>>,
}

/// The VM as the cmd server sees it.
enum Slot {
    /// No VMI yet (or the last one could not start).
    Empty,
    /// A Sync is starting it.
    Starting,
    Running(Arc<RunningVm>),
    /// `DeleteVirtualMachine` came, or the launcher is exiting.
    Deleted,
}

struct RunningVm {
    domain: Domain,
    commander: Commander,
    status: watch::Receiver<Status>,
    version: String,
}

/// What the cmd server and the pod's main task share.
pub struct Pod {
    id: Identity,
    load: LoadOptions,
    meta: watch::Sender<Metadata>,
    slot: Mutex<Slot>,
    start_tx: mpsc::UnboundedSender<StartRequest>,
    delete_tx: mpsc::UnboundedSender<()>,
    events: mpsc::UnboundedSender<Outgoing>,
}

impl Pod {
    fn running(&self) -> Option<Arc<RunningVm>> {
        match &*self.slot.lock().unwrap_or_else(|e| e.into_inner()) {
            Slot::Running(vm) => Some(vm.clone()),
            _ => None,
        }
    }

    fn set_slot(&self, slot: Slot) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = slot;
    }

    /// `SyncVirtualMachine`: starts the VM from the first good VMI; later
    /// syncs (virt-handler re-sends one on every reconcile) change nothing,
    /// except a VMI whose only changes are CPU sockets and guest memory
    /// (KubeVirt's in-place hotplug), which resizes the running VM.
    async fn sync(&self, json: &[u8]) -> Result<(), String> {
        let domain = match parse_vmi(json, &self.id, &self.load) {
            Ok(d) => d,
            Err(e) => {
                let message = e.to_string();
                self.k8s_event("Warning", "SyncFailed", &message);
                return Err(message);
            }
        };
        let resize = {
            let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            match &*slot {
                Slot::Running(vm) if vm.domain == domain => return Ok(()),
                Slot::Running(vm) => Some((vm.clone(), in_place_change(&vm.domain, &domain))),
                _ => None,
            }
        };
        if let Some((vm, change)) = resize {
            let result = match change {
                Ok(command) => vm.commander.send(command).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                self.k8s_event("Warning", "SyncFailed", e);
            }
            return result;
        }
        let reply = {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            match &*slot {
                Slot::Running(vm) if vm.domain == domain => return Ok(()),
                Slot::Running(_) => return Err("the VM changed while this sync ran".into()),
                Slot::Starting => return Err("the VM is being started by an earlier sync".into()),
                Slot::Deleted => return Err("the domain was deleted".into()),
                Slot::Empty => {
                    *slot = Slot::Starting;
                    let (reply, answer) = oneshot::channel();
                    if self.start_tx.send(StartRequest { domain, reply }).is_err() {
                        *slot = Slot::Empty;
                        return Err("the launcher is exiting".into());
                    }
                    answer
                }
            }
        };
        let result = reply
            .await
            .unwrap_or_else(|_| Err("the launcher is exiting".into()));
        if let Err(e) = &result {
            self.k8s_event("Warning", "SyncFailed", e);
        }
        result
    }

    async fn command(&self, command: Command) -> Result<(), String> {
        let vm = self.running().ok_or("no VM runs in this launcher")?;
        vm.commander.send(command).await.map(|_| ())
    }

    /// `ShutdownVirtualMachine`: the power button, and the deletion
    /// timestamp virt-handler measures its grace period from (stamped once).
    async fn shutdown(&self) -> Result<(), String> {
        let Some(vm) = self.running() else {
            return Ok(());
        };
        if vm.status.borrow().is_final() {
            return Ok(());
        }
        self.meta.send_if_modified(|m| {
            if m.deletion_timestamp.is_some() {
                return false;
            }
            m.deletion_timestamp = Some(crate::util::rfc3339(SystemTime::now(), 0));
            true
        });
        vm.commander.send(Command::Stop).await.map(|_| ())
    }

    /// `KillVirtualMachine`: destroy now; nothing to do once it is stopped.
    async fn kill(&self) -> Result<(), String> {
        let Some(vm) = self.running() else {
            return Ok(());
        };
        if vm.status.borrow().is_final() {
            return Ok(());
        }
        vm.commander.send(Command::Kill).await.map(|_| ())
    }

    /// `DeleteVirtualMachine`: forget the domain (destroying it if it still
    /// runs); the main task sends the final event and exits.
    async fn delete(&self) -> Result<(), String> {
        if let Some(vm) = self.running() {
            if !vm.status.borrow().is_final() {
                vm.commander.send(Command::Kill).await?;
            }
        }
        let _ = self.delete_tx.send(());
        Ok(())
    }

    fn domain_json(&self) -> Option<Value> {
        let vm = self.running()?;
        let status = vm.status.borrow().clone();
        Some(domain_json::domain(
            &self.id,
            &vm.domain,
            &status,
            &self.meta.borrow(),
        ))
    }

    fn hypervisor(&self) -> Option<Hypervisor> {
        self.running().map(|vm| vm.domain.hypervisor)
    }

    fn hypervisor_version(&self) -> Option<String> {
        self.running().map(|vm| vm.version.clone())
    }

    /// `GetDomainStats`: KubeVirt's `stats.DomainStats` with what the
    /// launcher knows without asking the hypervisor: vCPU states, memory,
    /// the disks.
    fn domain_stats(&self) -> Option<Value> {
        let vm = self.running()?;
        let d = &vm.domain;
        let running = vm.status.borrow().state == State::Running;
        let vcpus = d.cpu.sockets * d.cpu.cores * d.cpu.threads;
        let vcpu: Vec<Value> = (0..vcpus)
            .map(|_| json!({ "StateSet": true, "State": if running { 1 } else { 0 } }))
            .collect();
        let targets = crate::libvirt::render::disk_targets(&d.disks);
        let block: Vec<Value> = d
            .disks
            .iter()
            .zip(targets)
            .map(|(disk, target)| {
                json!({
                    "NameSet": true, "Name": target, "Alias": disk.name,
                    "PathSet": true, "Path": disk.source.path.display().to_string(),
                })
            })
            .collect();
        Some(json!({
            "Name": crate::libvirt::domain_name(d),
            "UUID": d.firmware.uuid,
            "Memory": { "TotalSet": true, "Total": d.memory.guest / 1024 },
            "Vcpu": vcpu,
            "Net": [],
            "Block": block,
        }))
    }

    /// Queues a Kubernetes event on the VMI (`HandleK8sEvent`).
    fn k8s_event(&self, kind: &str, reason: &str, message: &str) {
        let now = crate::util::rfc3339(SystemTime::now(), 0);
        let event = json!({
            "kind": "Event",
            "apiVersion": "v1",
            "metadata": { "namespace": self.id.namespace, "generateName": format!("{}.", self.id.name) },
            "involvedObject": {
                "kind": "VirtualMachineInstance",
                "apiVersion": "kubevirt.io/v1",
                "namespace": self.id.namespace,
                "name": self.id.name,
                "uid": self.id.uid,
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "source": { "component": "virt-launcher" },
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let _ = self.events.send(Outgoing::K8s {
            json: event.to_string().into_bytes(),
        });
    }
}

/// A started VM, owned by the main task.
struct Started {
    task: tokio::task::JoinHandle<Result<Outcome, RunError>>,
    status: watch::Receiver<Status>,
    commander: Commander,
}

/// Runs `ch-launcher pod`; returns the exit code.
pub async fn run(g: &GlobalArgs, s: &crate::cli::Settings, args: &PodArgs) -> u8 {
    if args.hook_sidecars > 0 {
        tracing::error!(
            hook_sidecars = args.hook_sidecars,
            "--hook-sidecars: hook sidecars are not supported by ch-launcher"
        );
        return exit::INVALID_SPEC;
    }
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return exit::FAILURE;
    };
    let id = Identity {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        uid: args.uid.clone(),
    };
    tracing::info!(name = %id.name, namespace = %id.namespace, uid = %id.uid,
        share_dir = %args.kubevirt_share_dir.display(),
        ephemeral_disk_dir = %g.ephemeral_disk_dir.display(), "pod launcher starting");
    let (events, notify_task) = Notifier::new(
        args.kubevirt_share_dir.join(NOTIFY_SOCKET),
        Pacing::KUBEVIRT,
    )
    .spawn();
    let (start_tx, mut start_rx) = mpsc::unbounded_channel();
    let (delete_tx, mut delete_rx) = mpsc::unbounded_channel();
    let (meta, _) = watch::channel(Metadata {
        grace_period_seconds: 30,
        ..Metadata::default()
    });
    let pod = Arc::new(Pod {
        id: id.clone(),
        load: domain_model::LoadOptions {
            // KubeVirt's container-disk layout: disk_<N>.img.
            container_disk_layout: domain_model::ContainerDiskLayout::Pod,
            block_pvcs: true,
            ..crate::cli::load_options(g, s)
        },
        meta,
        slot: Mutex::new(Slot::Empty),
        start_tx,
        delete_tx,
        events: events.clone(),
    });
    let server = match cmd_server::CmdSocket::start(
        &args.kubevirt_share_dir,
        pod.clone(),
        Duration::from_secs(15),
    )
    .await
    {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("{e}");
            return exit::FAILURE;
        }
    };

    // Until a VMI starts: every failed start is answered to its Sync, and
    // virt-handler sends the next one.
    let deadline = tokio::time::Instant::now() + args.qemu_timeout;
    let mut started = loop {
        tokio::select! {
            Some(request) = start_rx.recv() => {
                let StartRequest { domain, reply } = request;
                match start(g, s, &pod, domain, args.qemu_timeout).await {
                    Ok(started) => {
                        let _ = reply.send(Ok(()));
                        break started;
                    }
                    Err(e) => {
                        pod.set_slot(Slot::Empty);
                        let _ = reply.send(Err(e));
                    }
                }
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM before any VM started; exiting");
                return finish(&pod, server, events, notify_task, exit::SUCCESS).await;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT before any VM started; exiting");
                return finish(&pod, server, events, notify_task, exit::SUCCESS).await;
            }
            () = tokio::time::sleep_until(deadline) => {
                tracing::error!(timeout = ?args.qemu_timeout,
                    "no VM was started within --qemu-timeout");
                return finish(&pod, server, events, notify_task, exit::FAILURE).await;
            }
        }
    };

    // The VM runs: notify every change until it is gone.
    let mut notifier = DomainNotifier::default();
    notifier.send(&pod, "ADDED");
    let mut meta = pod.meta.subscribe();
    let mut status = started.status.clone();
    let mut kill_at = None;
    let mut deleted = false;
    let outcome = loop {
        tokio::select! {
            changed = status.changed() => {
                if changed.is_ok() {
                    state_events(&pod, &status.borrow());
                    notifier.send(&pod, "MODIFIED");
                }
            }
            Ok(()) = meta.changed() => notifier.send(&pod, "MODIFIED"),
            result = &mut started.task => break result,
            _ = term.recv() => graceful(&pod, args, &mut kill_at),
            _ = int.recv() => graceful(&pod, args, &mut kill_at),
            () = sleep_until(kill_at) => {
                tracing::warn!(grace_period_seconds = args.grace_period_seconds,
                    "the VM still runs at the end of --grace-period-seconds; killing it");
                kill_at = None;
                let commander = started.commander.clone();
                tokio::spawn(async move { let _ = commander.send(Command::Kill).await; });
            }
            Some(()) = delete_rx.recv() => deleted = true,
            Some(request) = start_rx.recv() => {
                let _ = request.reply.send(Err("a VM already runs".into()));
            }
        }
    };
    state_events(&pod, &started.status.borrow());
    notifier.send(&pod, "MODIFIED");
    let code = match &outcome {
        Ok(Ok(o)) if o.succeeded() => exit::SUCCESS,
        Ok(Ok(_)) => exit::VM_FAILED,
        Ok(Err(e)) => {
            tracing::error!("{e}");
            exit::FAILURE
        }
        Err(e) => {
            tracing::error!("the VM's task failed: {e}");
            exit::FAILURE
        }
    };
    if !deleted {
        tokio::select! {
            Some(()) = delete_rx.recv() => {}
            () = tokio::time::sleep(FINAL_WAIT) => {
                tracing::info!(wait = ?FINAL_WAIT, "no DeleteVirtualMachine after the VM stopped");
            }
            _ = term.recv() => {}
        }
    }
    finish(&pod, server, events, notify_task, code).await
}

/// SIGTERM: the pod is being deleted. virt-handler drives the shutdown once
/// it sees `MarkedForGracefulShutdown`; the launcher kills the VM itself
/// when `--grace-period-seconds` is over.
fn graceful(pod: &Pod, args: &PodArgs, kill_at: &mut Option<tokio::time::Instant>) {
    let marked = pod.meta.send_if_modified(|m| {
        let first = !m.marked_for_graceful_shutdown;
        m.marked_for_graceful_shutdown = true;
        first
    });
    if marked {
        tracing::info!(
            grace_period_seconds = args.grace_period_seconds,
            "SIGTERM: marked for graceful shutdown"
        );
        *kill_at =
            Some(tokio::time::Instant::now() + Duration::from_secs(args.grace_period_seconds));
    } else {
        tracing::info!("SIGTERM again; the graceful shutdown is already under way");
    }
}

/// Kubernetes events for what a user must see on the VMI.
fn state_events(pod: &Pod, status: &Status) {
    let detail = status.message.clone().unwrap_or_default();
    match (status.state, status.reason) {
        (State::Paused, Reason::IOError) => pod.k8s_event(
            "Warning",
            "IOerror",
            &format!("VM Paused due to IO error at the volume: {detail}"),
        ),
        (State::Crashed, Reason::Panicked) => {
            pod.k8s_event("Warning", "GuestPanicked", "the guest panicked")
        }
        (State::Crashed, _) | (State::Shutoff, Reason::Failed) => {
            pod.k8s_event("Warning", "Failed", &format!("the VM failed: {detail}"))
        }
        _ => {}
    }
}

/// The resize that turns the running VM started from `running` into one of
/// `wanted`, when sockets and guest memory are all that changed.
fn in_place_change(running: &Domain, wanted: &Domain) -> Result<Command, String> {
    let mut same = running.clone();
    same.cpu.sockets = wanted.cpu.sockets;
    same.memory.guest = wanted.memory.guest;
    if same != *wanted {
        return Err("the VMI's spec changed since its VM started in more than \
            spec.domain.cpu.sockets and spec.domain.memory.guest, which are all ch-launcher \
            changes in place; the rest needs a restart"
            .into());
    }
    Ok(Command::Resize {
        sockets: Some(wanted.cpu.sockets),
        memory: Some(wanted.memory.guest),
    })
}

/// Sends the domain when it differs from what was last sent.
#[derive(Default)]
struct DomainNotifier {
    last: Option<Value>,
}

impl DomainNotifier {
    fn send(&mut self, pod: &Pod, event_type: &'static str) {
        let Some(doc) = pod.domain_json() else {
            return;
        };
        if self.last.as_ref() == Some(&doc) {
            return;
        }
        let _ = pod.events.send(Outgoing::Domain {
            event_type,
            json: doc.to_string().into_bytes(),
        });
        self.last = Some(doc);
    }
}

/// Host checks, then the runner in its own task; returns once the VM
/// exists (or why it could not be created).
async fn start(
    g: &GlobalArgs,
    s: &crate::cli::Settings,
    pod: &Arc<Pod>,
    domain: Domain,
    timeout: Duration,
) -> Result<Started, String> {
    let paths = VmPaths::new(&g.private_dir, &domain.uid);
    let launch: Launch =
        crate::cli::host_checks(g, s, &domain, &paths, crate::ch::SerialMode::default()).await?;
    let version = launch
        .hypervisor_version()
        .await
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let mut opts = RunOptions::new(paths);
    opts.early_console = launch.early_console(&domain);
    let runner = Runner::new(domain.clone(), opts);
    let status = runner.status();
    let commander = runner.commander();
    pod.meta.send_modify(|m| {
        m.grace_period_seconds = domain.termination_grace_period.as_secs();
    });
    let mut task = tokio::spawn(launch.run(runner));
    let mut created = status.clone();
    let exists = tokio::time::timeout(timeout, async {
        tokio::select! {
            waited = created.wait_for(|s| s.state != State::NoState) => waited.map(|_| ()).map_err(|_| None),
            result = &mut task => Err(Some(result)),
        }
    })
    .await;
    match exists {
        Ok(Ok(())) => {}
        Ok(Err(Some(Ok(Err(e))))) => return Err(e.to_string()),
        Ok(Err(Some(Ok(Ok(outcome))))) => {
            return Err(format!(
                "the VM ended before it was created: {:?}",
                outcome.status
            ))
        }
        Ok(Err(Some(Err(e)))) => return Err(format!("the VM's task failed: {e}")),
        Ok(Err(None)) => return Err("the runner stopped before the VM existed".into()),
        Err(_) => {
            task.abort();
            return Err(format!("the VM was not created within {timeout:?}"));
        }
    }
    pod.set_slot(Slot::Running(Arc::new(RunningVm {
        domain,
        commander: commander.clone(),
        status: status.clone(),
        version,
    })));
    Ok(Started {
        task,
        status,
        commander,
    })
}

/// The final event (the domain is gone, with its deletion timestamp), then
/// the cmd socket goes away and the launcher exits with `code`.
async fn finish(
    pod: &Pod,
    server: cmd_server::CmdSocket,
    events: mpsc::UnboundedSender<Outgoing>,
    notify_task: tokio::task::JoinHandle<()>,
    code: u8,
) -> u8 {
    let had_vm = pod.running().is_some();
    pod.set_slot(Slot::Deleted);
    if had_vm {
        pod.meta.send_modify(|m| {
            m.deleted_at = Some(crate::util::rfc3339(SystemTime::now(), 0));
        });
        let doc = domain_json::gone(&pod.id, &pod.meta.borrow());
        let _ = events.send(Outgoing::Domain {
            event_type: "MODIFIED",
            json: doc.to_string().into_bytes(),
        });
    }
    let (flushed, done) = oneshot::channel();
    let _ = events.send(Outgoing::Flush(flushed));
    // The notify client gives up on an event after 20 s of retries.
    if tokio::time::timeout(Duration::from_secs(30), done)
        .await
        .is_err()
    {
        tracing::warn!("virt-handler did not take the last events");
    }
    notify_task.abort();
    drop(server);
    code
}

#[cfg(test)]
mod in_place_tests {
    use super::*;

    #[test]
    fn only_sockets_and_memory_change_in_place() {
        let running = domain_model::fixtures::domain();
        let mut wanted = running.clone();
        wanted.cpu.sockets += 1;
        wanted.memory.guest *= 2;
        assert_eq!(
            in_place_change(&running, &wanted).unwrap(),
            Command::Resize {
                sockets: Some(wanted.cpu.sockets),
                memory: Some(wanted.memory.guest)
            }
        );
        wanted.memory.max_guest = Some(1 << 40);
        let e = in_place_change(&running, &wanted).unwrap_err();
        assert!(e.contains("needs a restart"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            name: "tiny".into(),
            namespace: "default".into(),
            uid: "0b1c2d3e-0000-4000-8000-000000000001".into(),
        }
    }

    fn vmi(kind: Value) -> Value {
        json!({
            "kind": kind.clone(), "apiVersion": kind,
            "metadata": { "name": "tiny", "namespace": "default",
                "uid": "0b1c2d3e-0000-4000-8000-000000000001", "resourceVersion": "1" },
            "spec": { "hypervisor": "cloud-hypervisor", "domain": {
                "memory": { "guest": "64Mi" },
                "firmware": { "kernelBoot": { "container": { "kernelPath": "/proc/self/exe" } } } } },
            "status": { "phase": "Scheduled" },
        })
    }

    #[test]
    fn an_informer_copy_with_empty_or_missing_type_meta_is_accepted() {
        for kind in [json!(""), Value::Null] {
            let d = parse_vmi(
                vmi(kind).to_string().as_bytes(),
                &id(),
                &LoadOptions::default(),
            )
            .expect("accepted");
            assert_eq!(d.name, "tiny");
            assert_eq!(d.uid, id().uid);
        }
    }

    #[test]
    fn a_vmi_of_another_kind_or_name_is_refused() {
        let mut other = vmi(json!(""));
        other["kind"] = "VirtualMachine".into();
        let e = parse_vmi(other.to_string().as_bytes(), &id(), &LoadOptions::default());
        assert!(matches!(e, Err(VmiError::Invalid(_))), "{e:?}");
        let mut other = vmi(json!(""));
        other["metadata"]["name"] = "big".into();
        let e = parse_vmi(other.to_string().as_bytes(), &id(), &LoadOptions::default())
            .expect_err("not ours");
        assert!(e.to_string().contains("default/big"), "{e}");
        let e = parse_vmi(b"[1]", &id(), &LoadOptions::default()).expect_err("not an object");
        assert!(e
            .to_string()
            .starts_with("No valid vmi object present in command server request"));
    }

    #[test]
    fn durations_take_virt_launchers_units() {
        assert_eq!(parse_duration("240s"), Ok(Duration::from_secs(240)));
        assert_eq!(parse_duration("4m"), Ok(Duration::from_secs(240)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("4d").is_err());
        assert!(parse_duration("m").is_err());
    }
}
