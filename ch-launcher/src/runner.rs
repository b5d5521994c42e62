//! The runner: one VM from creation to its final state, for any [`Backend`].
//!
//! Sequence: check that every socket path fits a `sun_path`, create the
//! per-VM directory (0700, plus the search bit for the group or others when
//! `--console-socket-mode` grants them access, so they can reach
//! `virt-serial0`), take the VM's lock file (one launcher per VM), let the
//! backend create the VM while binding the control socket (and, when the
//! launcher relays the console, `virt-serial0` and its log) as the
//! hypervisor starts, attach the serial console relay to the VM's serial
//! device (before boot, because output written before anyone holds a
//! serial PTY is lost), serve the control socket, boot
//! (unless the spec starts paused: then `resume` boots), and feed every
//! backend [`Event`] into one [`Lifecycle`] whose status is published on a
//! `watch` channel and logged at each transition.
//!
//! Stopping (SIGTERM, SIGINT or the control `stop`) presses the ACPI power
//! button (the VM is `Shutdown/User` while the guest shuts down), waits up to
//! the termination grace period, then destroys the VM. A second signal
//! destroys at once. The power button and destroy run as their own tasks, so
//! a hypervisor that does not answer never stalls the runner: the grace
//! timer, a second signal and the backend's events go on regardless. On
//! every way out the runner makes sure the hypervisor is gone before it
//! returns.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain_model::Domain;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::{Backend, BackendError, ConsoleSource, Created};
use crate::console::{self, ConsoleConfig, ConsoleRelay, GuestSerial};
use crate::control::{self, Command, Handler};
use crate::lifecycle::{Event, Lifecycle, Reason, State, Status};
use crate::paths::{SocketPathTooLong, VmPaths};
use crate::util::sleep_until;

/// How long the console relay may take, once the hypervisor is gone, to log
/// and hand out the guest's last output (each of: the device's end, the
/// client's drain).
const CONSOLE_DRAIN_WAIT: Duration = Duration::from_secs(2);

/// How the runner places and guards its VM.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub paths: VmPaths,
    /// Permission bits of `virt-serial0` and `virt-serial0-log`.
    pub console_mode: u32,
    /// Rotation of `virt-serial0-log` when the launcher writes it.
    pub console_log_limits: crate::console_log::LogLimits,
    /// How long `pause`/`resume` wait for the VM to reach the new state.
    pub control_wait: Duration,
    /// How long the hypervisor may keep running after the VM reached a final
    /// state before the runner destroys it.
    pub exit_wait: Duration,
    /// How long to wait for the hypervisor to go away after a destroy.
    pub destroy_wait: Duration,
    /// The launcher relays this VM's serial console itself (the backend
    /// serves it on a PTY or socket, see [`ConsoleSource`]): `virt-serial0`
    /// and its log are set up while the hypervisor starts instead of after
    /// it created the VM. Must be false when the hypervisor binds
    /// `virt-serial0` itself ([`ConsoleSource::ServedByHypervisor`]).
    pub early_console: bool,
    /// The pod's resolv.conf: its nameservers and search domains go to the
    /// guest over DHCP.
    pub resolv_conf: PathBuf,
    /// Where registry images (`containerDisk`, kernel boot) of a local run
    /// are pulled to.
    pub images: crate::oci::ImageStore,
}

impl RunOptions {
    pub fn new(paths: VmPaths) -> Self {
        RunOptions {
            paths,
            console_mode: console::DEFAULT_SOCKET_MODE,
            console_log_limits: crate::console_log::LogLimits::default(),
            control_wait: Duration::from_secs(10),
            exit_wait: Duration::from_secs(5),
            destroy_wait: Duration::from_secs(10),
            early_console: false,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            images: crate::oci::ImageStore::new(crate::oci::ImageStore::default_dir(), None),
        }
    }
}

/// Who asked the VM to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// A signal, by name (`SIGTERM`, `SIGINT`).
    Signal(&'static str),
    /// The control socket's `stop` (or virt-handler's Shutdown).
    Control,
    /// The control socket's `kill` (or virt-handler's Kill): destroy now.
    Kill,
}

/// Asks a running [`Runner`] to stop its VM; cheap to clone.
#[derive(Debug, Clone)]
pub struct Stopper(mpsc::UnboundedSender<StopRequest>);

impl Stopper {
    pub fn request(&self, request: StopRequest) {
        // The runner is gone when the send fails, and then nothing runs.
        let _ = self.0.send(request);
    }
}

/// A command for the running VM, answered with its status once it took
/// effect.
type CommandRequest = (Command, oneshot::Sender<Result<Status, String>>);

/// Sends control commands to a [`Runner`]'s VM from inside the launcher
/// (the pod's gRPC server), exactly as the control socket does; cheap to
/// clone. Commands sent before the VM exists wait until it does.
#[derive(Debug, Clone)]
pub struct Commander(mpsc::UnboundedSender<CommandRequest>);

impl Commander {
    pub async fn send(&self, command: Command) -> Result<Status, String> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send((command, reply))
            .map_err(|_| "the VM is not running".to_string())?;
        answer
            .await
            .map_err(|_| "the VM is not running".to_string())?
    }
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    /// Whether the launcher was asked to stop the VM.
    pub stop_requested: bool,
}

impl Outcome {
    /// The guest powered off, or a requested stop completed. Anything else
    /// (a crash, a destroy nobody asked the launcher for) is a failure.
    pub fn succeeded(&self) -> bool {
        match (self.status.state, self.status.reason) {
            (State::Shutoff, Reason::Shutdown) => true,
            (State::Shutoff, Reason::Destroyed) => self.stop_requested,
            _ => false,
        }
    }
}

/// Why the runner could not run the VM.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot prepare the VM directory {}: {cause}", path.display())]
    VmDir { path: PathBuf, cause: io::Error },
    #[error(transparent)]
    SocketPath(#[from] SocketPathTooLong),
    #[error("another ch-launcher ({}) runs this VM (lock {})",
        pid.map_or("pid unknown".to_string(), |p| format!("pid {p}")), lock.display())]
    AlreadyRunning { pid: Option<u32>, lock: PathBuf },
    // Display carries the cause, as every error of the launcher does; the
    // typed value stays reachable for callers that match on it.
    #[error("cannot prepare a disk: {0}")]
    Disk(crate::util::DiskError),
    #[error("cannot pull an image: {0}")]
    Image(crate::oci::PullError),
    #[error("cannot prepare the pod network: {0}")]
    Network(crate::net::NetError),
    #[error("cannot start virtiofsd: {0}")]
    Virtiofs(String),
    /// The backend's own error, kept whole (downcast to the backend's type).
    #[error("cannot create the VM: {0}")]
    Create(Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot attach the serial console: {0}")]
    Console(io::Error),
    #[error("cannot serve the control socket: {0}")]
    Control(io::Error),
    #[error("cannot boot the VM: {0}")]
    Boot(BackendError),
}

/// Runs one VM; see the module documentation.
pub struct Runner {
    domain: Domain,
    opts: RunOptions,
    stop_tx: mpsc::UnboundedSender<StopRequest>,
    stop_rx: mpsc::UnboundedReceiver<StopRequest>,
    status_tx: watch::Sender<Status>,
    commands_tx: mpsc::UnboundedSender<CommandRequest>,
    commands_rx: Option<mpsc::UnboundedReceiver<CommandRequest>>,
}

impl Runner {
    pub fn new(domain: Domain, opts: RunOptions) -> Runner {
        let (stop_tx, stop_rx) = mpsc::unbounded_channel();
        let lifecycle = Lifecycle::for_vm(domain.live_migratable.clone());
        let (status_tx, _) = watch::channel(lifecycle.status().clone());
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        Runner {
            domain,
            opts,
            stop_tx,
            stop_rx,
            status_tx,
            commands_tx,
            commands_rx: Some(commands_rx),
        }
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop_tx.clone())
    }

    pub fn commander(&self) -> Commander {
        Commander(self.commands_tx.clone())
    }

    /// The VM's status as it changes. It leaves `NoState` once the console
    /// and control sockets are ready.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status_tx.subscribe()
    }

    /// Creates the VM with `create` (given copies of the Domain and the VM
    /// paths, so its future owns what it needs) and runs it to its final state.
    pub async fn run<B, F, Fut, E>(mut self, create: F) -> Result<Outcome, RunError>
    where
        B: Backend + 'static,
        F: FnOnce(Domain, VmPaths) -> Fut,
        Fut: Future<Output = Result<Created<B>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let paths = self.opts.paths.clone();
        // Held until the run returns: a second launcher for this VM must not
        // touch its sockets and logs.
        let _lock = prepare_vm_dir(&paths, self.opts.console_mode)?;
        // Registry images into the cache (which outlives the run), before
        // anything is made from them.
        crate::oci::materialize(&mut self.domain, &self.opts.images)
            .await
            .map_err(RunError::Image)?;
        // Removed on every way out of this function.
        let _generated = crate::util::GeneratedDisks::of(&self.domain);
        crate::util::create_missing_disks(&self.domain).map_err(RunError::Disk)?;
        // Taps, bridges, NAT rules and DHCP servers: removed on every way
        // out, after the VM (dropped before the disks, declared after them).
        let _network = crate::net::prepare(&self.domain, &self.opts.resolv_conf)
            .await
            .map_err(RunError::Network)?;
        // virtio-fs daemons for Cloud Hypervisor (libvirt is refused by the
        // support table), stopped after the VM.
        let _virtiofs =
            crate::virtiofs::start(&self.domain, &paths.dir).map_err(RunError::Virtiofs)?;
        tracing::info!(vm = %self.domain.name, namespace = %self.domain.namespace,
            uid = %self.domain.uid, hypervisor = %self.domain.hypervisor,
            dir = %paths.dir.display(), "creating the VM");
        // The hypervisor is started in the create future's first poll; the
        // launcher's own sockets, which need nothing from it, are bound
        // while it starts up instead of after it created the VM.
        let console_config = self.console_config();
        let early_console = self.opts.early_console;
        let creating = create(self.domain.clone(), paths.clone());
        let binding = async {
            // Whichever `join!` polls first, `create` runs (and spawns)
            // before the sockets are bound.
            tokio::task::yield_now().await;
            EarlySockets::bind(&paths, early_console.then_some(&console_config))
        };
        let (created, sockets) = tokio::join!(creating, binding);
        let created = created.map_err(|e| RunError::Create(Box::new(e)))?;
        let (ops_tx, ops) = mpsc::unbounded_channel();
        let mut session = Session {
            backend: Arc::new(created.backend),
            events: created.events,
            events_open: true,
            ops_tx,
            ops,
            lifecycle: Lifecycle::for_vm(self.domain.live_migratable.clone()),
            status_tx: self.status_tx.clone(),
            stop_requested: false,
            destroy_sent: false,
            console: None,
            control: None,
            commands: None,
        };

        let result = self.drive(&mut session, created.console, sockets).await;

        // Every way out: the hypervisor must be gone before the launcher is.
        if session.events_open {
            session.destroy("the launcher is exiting");
            session.drain(self.opts.destroy_wait).await;
        }
        if !session.lifecycle.status().is_final() {
            let event = if session.destroy_sent {
                Event::Destroyed
            } else {
                Event::HypervisorDied {
                    detail: "the hypervisor went away without reporting why".into(),
                }
            };
            session.apply(&event);
        }
        if let Some(relay) = session.console.take() {
            // The hypervisor is gone: the relay reads the serial device to
            // its end, so the guest's last bytes reach the log and the client
            // before the launcher exits.
            relay.finish(CONSOLE_DRAIN_WAIT).await;
        }
        session.control = None;
        if let Some(task) = session.commands.take() {
            task.abort();
        }
        session.backend.close().await;

        let outcome = Outcome {
            status: session.lifecycle.status().clone(),
            stop_requested: session.stop_requested,
        };
        let status = &outcome.status;
        match &result {
            Ok(()) => tracing::info!(state = ?status.state, reason = ?status.reason,
                detail = status.message.as_deref(),
                stop_requested = outcome.stop_requested, succeeded = outcome.succeeded(),
                launcher_peak_rss_kib = peak_rss_kib(), "VM final state"),
            // The caller reports the error itself.
            Err(_) => tracing::error!(state = ?status.state, reason = ?status.reason,
                "VM final state after a launcher failure"),
        }
        result.map(|()| outcome)
    }

    async fn drive<B: Backend + 'static>(
        &mut self,
        session: &mut Session<B>,
        console: ConsoleSource,
        sockets: Result<EarlySockets, RunError>,
    ) -> Result<(), RunError> {
        let EarlySockets {
            console: early_relay,
            control,
        } = sockets?;
        let config = self.console_config();
        let guest = GuestSerial::open(&console)
            .await
            .map_err(RunError::Console)?;
        match (guest, early_relay) {
            (Some(guest), Some(mut relay)) => {
                relay.attach(guest);
                tracing::info!(source = ?console, socket = %config.socket.display(),
                    log = %config.log.display(), "serial console ready");
                session.console = Some(relay);
            }
            (Some(guest), None) => {
                let relay = ConsoleRelay::start(guest, &config).map_err(RunError::Console)?;
                tracing::info!(source = ?console, socket = %config.socket.display(),
                    log = %config.log.display(), "serial console ready");
                session.console = Some(relay);
            }
            // An early relay without a device is dropped here, which
            // removes its socket.
            (None, _) if console == ConsoleSource::ServedByHypervisor => {
                tracing::debug!("the hypervisor serves the serial console itself");
            }
            (None, _) => tracing::info!("the VM has no serial console"),
        }

        let handler = Arc::new(VmControl {
            backend: session.backend.clone(),
            status: self.status_tx.subscribe(),
            stopper: self.stopper(),
            booted: AtomicBool::new(!self.domain.start_paused),
            wait: self.opts.control_wait,
            resources: tokio::sync::Mutex::new(crate::hotplug::Resources::at_boot(&self.domain)),
        });
        session.control = Some(control.serve(handler.clone()));
        if let Some(mut commands) = self.commands_rx.take() {
            session.commands = Some(tokio::spawn(async move {
                while let Some((command, reply)) = commands.recv().await {
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let _ = reply.send(handler.handle(command).await);
                    });
                }
            }));
        }
        session.apply(&Event::Created);

        if let Ok(request) = self.stop_rx.try_recv() {
            // Asked to stop while the VM was being created: do not run it at all.
            tracing::info!(?request, "stop requested before boot");
            session.stop_requested = true;
            session.destroy("the stop came before the boot");
        } else if self.domain.start_paused {
            tracing::info!("startStrategy Paused: the VM boots on `resume`");
        } else if let Err(e) = session.backend.boot().await {
            session.apply(&Event::BootFailed {
                detail: e.to_string(),
            });
            return Err(RunError::Boot(e));
        }

        let grace = self.domain.termination_grace_period;
        let mut stop_deadline: Option<Instant> = None;
        let mut exit_deadline: Option<Instant> = None;
        while session.events_open {
            if exit_deadline.is_none() && session.lifecycle.status().is_final() {
                exit_deadline = Some(Instant::now() + self.opts.exit_wait);
            }
            tokio::select! {
                event = session.events.recv() => match event {
                    Some(event) => {
                        session.apply(&event);
                        if event == Event::Rebooted {
                            session.reattach_console().await;
                        }
                    }
                    None => session.events_open = false,
                },
                Some(request) = self.stop_rx.recv() => {
                    session.stop(request, grace, &mut stop_deadline);
                }
                Some(done) = session.ops.recv() => session.operation_done(done),
                () = sleep_until(stop_deadline), if !session.destroy_sent => {
                    tracing::warn!(grace_period = ?grace,
                        "the guest did not power off within its grace period");
                    session.destroy("the grace period expired");
                }
                () = sleep_until(exit_deadline) => {
                    tracing::warn!(wait = ?self.opts.exit_wait,
                        "the hypervisor keeps running after the VM's final state");
                    break;
                }
            }
        }
        Ok(())
    }
}

impl Runner {
    fn console_config(&self) -> ConsoleConfig {
        ConsoleConfig {
            socket: self.opts.paths.serial_socket(),
            log: self.opts.paths.serial_log(),
            mode: self.opts.console_mode,
            log_limits: self.opts.console_log_limits,
        }
    }
}

/// The launcher's sockets, bound while the hypervisor starts: the control
/// socket (served once the VM exists; requests wait in its backlog until
/// then) and, with [`RunOptions::early_console`], the console relay (its
/// serial device attached once the VM exists). Dropping them removes the
/// socket files.
struct EarlySockets {
    console: Option<ConsoleRelay>,
    control: control::Listener,
}

impl EarlySockets {
    fn bind(paths: &VmPaths, console: Option<&ConsoleConfig>) -> Result<EarlySockets, RunError> {
        let console = console
            .map(ConsoleRelay::start_detached)
            .transpose()
            .map_err(RunError::Console)?;
        let control =
            control::Listener::bind(&paths.control_socket()).map_err(RunError::Control)?;
        Ok(EarlySockets { console, control })
    }
}

/// SIGTERM and SIGINT caught, not yet forwarded to a runner. Install them
/// first thing (before the spec is even read), so that an early signal
/// stops the VM in order instead of killing the launcher outright; a signal
/// that arrives before [`StopSignals::forward`] is kept and forwarded then.
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Must be called inside a tokio runtime.
    pub fn install() -> io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Forwards every signal to `stopper` for as long as the task runs.
    pub fn forward(self, stopper: Stopper) -> JoinHandle<()> {
        let StopSignals { mut term, mut int } = self;
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    Some(()) = term.recv() => "SIGTERM",
                    Some(()) = int.recv() => "SIGINT",
                    else => return,
                };
                stopper.request(StopRequest::Signal(name));
            }
        })
    }
}

/// The VM directory's mode for a console socket of mode `console_mode`:
/// private (0700), plus the search bit (never read or write) for the group
/// or others when the console socket grants them any access, because
/// connecting to a socket needs search permission on its directory. Every
/// other file in the directory keeps its own owner-only mode.
pub fn vm_dir_mode(console_mode: u32) -> u32 {
    let mut mode = 0o700;
    if console_mode & 0o070 != 0 {
        mode |= 0o010;
    }
    if console_mode & 0o007 != 0 {
        mode |= 0o001;
    }
    mode
}

/// Checks the socket paths, creates the VM directory with its mode and takes
/// the VM's lock, before anything else touches the directory.
fn prepare_vm_dir(paths: &VmPaths, console_mode: u32) -> Result<VmLock, RunError> {
    paths.check_socket_paths()?;
    let err = |source| RunError::VmDir {
        path: paths.dir.clone(),
        cause: source,
    };
    let mode = vm_dir_mode(console_mode);
    // Missing parents (the private directory) get the same mode: the
    // console's group must be able to pass them too.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(&paths.dir)
        .map_err(err)?;
    // Only the lock's owner may change the directory: a second launcher for
    // the same VM is refused before it touches the first one's mode.
    let lock = VmLock::take(paths)?;
    // An existing directory keeps its mode, and a new one got the umask.
    std::fs::set_permissions(&paths.dir, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(lock)
}

/// An exclusive `flock` on `<dir>/launcher.lock`, held for the run; the file
/// holds the owner's pid for the refusal message. The kernel drops the lock
/// when the launcher dies, however it dies, so a stale file never blocks. The
/// descriptor is close-on-exec, so the hypervisor never inherits the lock.
struct VmLock {
    _lock: nix::fcntl::Flock<File>,
}

impl VmLock {
    fn take(paths: &VmPaths) -> Result<VmLock, RunError> {
        let path = paths.lock_file();
        let err = |source| RunError::VmDir {
            path: path.clone(),
            cause: source,
        };
        // Not truncated on open: the owner's pid must stay readable.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        let lock = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(RunError::AlreadyRunning { pid, lock: path });
            }
            Err((_, errno)) => return Err(err(io::Error::from(errno))),
        };
        // Overwritten in place, then cut to length, never truncated to zero
        // first: on ext4, truncating the previous run's line to zero frees
        // its block, and writing a file truncated to zero makes the close
        // at exit write it out (`auto_da_alloc`): 0.2 to 0.3 ms on the VM's
        // start-up path and a disk write on its way out, against a few
        // microseconds for an overwrite in place. A reader racing
        // this sees the new pid, possibly followed by the rest of a longer
        // old line: the refusal then says "pid unknown".
        let line = format!("{}\n", std::process::id());
        lock.write_all_at(line.as_bytes(), 0)
            .and_then(|()| lock.set_len(line.len() as u64))
            .map_err(err)?;
        Ok(VmLock { _lock: lock })
    }
}

/// The launcher's own peak resident set (`VmHWM`), for the record: the
/// launcher is meant to stay small next to the VMM.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The state of one run, shared by the steps of [`Runner::run`].
struct Session<B> {
    backend: Arc<B>,
    events: mpsc::UnboundedReceiver<Event>,
    /// False once the backend closed its event channel: the hypervisor is gone.
    events_open: bool,
    /// Backend operations run as tasks and report here.
    ops_tx: mpsc::UnboundedSender<OperationDone>,
    ops: mpsc::UnboundedReceiver<OperationDone>,
    lifecycle: Lifecycle,
    status_tx: watch::Sender<Status>,
    stop_requested: bool,
    destroy_sent: bool,
    console: Option<ConsoleRelay>,
    control: Option<control::Server>,
    /// Serves the [`Commander`]'s requests while the VM exists.
    commands: Option<JoinHandle<()>>,
}

/// A backend operation the runner started as a task has answered.
enum OperationDone {
    PowerButton(Result<(), BackendError>),
}

impl<B: Backend + 'static> Session<B> {
    fn apply(&mut self, event: &Event) {
        tracing::debug!(?event, "backend event");
        if let Some(status) = self.lifecycle.apply(event) {
            tracing::info!(state = ?status.state, reason = ?status.reason,
                detail = status.message.as_deref(), "VM state changed");
            self.status_tx.send_replace(status.clone());
        }
    }

    /// Follows the serial console to the device the hypervisor has after a
    /// reboot (a new PTY, or its socket bound again), keeping `virt-serial0`,
    /// its client and the log.
    async fn reattach_console(&mut self) {
        let Some(relay) = &self.console else {
            return;
        };
        let source = match self.backend.console().await {
            Ok(source) => source,
            Err(e) => {
                tracing::error!(error = %e,
                    "cannot find the serial console after the reboot; the console stays detached");
                return;
            }
        };
        match GuestSerial::open(&source).await {
            Ok(Some(guest)) => relay.switch(guest),
            Ok(None) => tracing::warn!(?source, "the VM has no serial console after the reboot"),
            Err(e) => tracing::error!(error = %e,
                "cannot attach the serial console after the reboot; the console stays detached"),
        }
    }

    fn stop(&mut self, request: StopRequest, grace: Duration, deadline: &mut Option<Instant>) {
        if self.lifecycle.status().is_final() {
            tracing::info!(?request, "stop requested; the VM is already stopped");
            return;
        }
        if request == StopRequest::Kill {
            self.stop_requested = true;
            self.destroy("asked to kill the VM");
            return;
        }
        if self.stop_requested {
            match request {
                StopRequest::Signal(name) => {
                    tracing::warn!(signal = name, "second stop signal: destroying the VM now");
                    self.destroy("a second stop signal");
                }
                // A kill never gets here: it destroyed above.
                StopRequest::Control | StopRequest::Kill => {
                    tracing::info!("stop requested; already stopping")
                }
            }
            return;
        }
        self.stop_requested = true;
        tracing::info!(?request, grace_period = ?grace, "stopping: pressing the power button");
        if grace.is_zero() {
            self.destroy("the grace period is zero");
            return;
        }
        // The grace period runs from the request, whether or not the
        // hypervisor answers the power button.
        *deadline = Some(Instant::now() + grace);
        let backend = self.backend.clone();
        let done = self.ops_tx.clone();
        tokio::spawn(async move {
            let result = backend.power_button().await;
            let _ = done.send(OperationDone::PowerButton(result));
        });
    }

    fn operation_done(&mut self, done: OperationDone) {
        match done {
            OperationDone::PowerButton(Ok(())) if !self.destroy_sent => {
                // The guest is asked to shut down: say so until it does.
                self.apply(&Event::ShuttingDown);
            }
            OperationDone::PowerButton(Ok(())) => {}
            OperationDone::PowerButton(Err(e)) => {
                tracing::warn!(error = %e, "the power button failed");
                self.destroy("the power button failed");
            }
        }
    }

    /// Starts destroying the VM (once); its end shows as events.
    fn destroy(&mut self, why: &str) {
        if self.destroy_sent || !self.events_open {
            return;
        }
        self.destroy_sent = true;
        tracing::info!(why, "destroying the VM");
        let backend = self.backend.clone();
        tokio::spawn(async move {
            if let Err(e) = backend.destroy().await {
                tracing::warn!(error = %e, "destroy failed");
            }
        });
    }

    /// Applies the remaining events until the hypervisor is gone or `limit`
    /// passes.
    async fn drain(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.events_open {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => self.apply(&event),
                Ok(None) => self.events_open = false,
                Err(_) => {
                    tracing::error!(wait = ?limit, "the hypervisor did not go away after destroy");
                    return;
                }
            }
        }
    }
}

/// The control socket's view of the running VM.
struct VmControl<B> {
    backend: Arc<B>,
    status: watch::Receiver<Status>,
    stopper: Stopper,
    /// False until the vCPUs first ran; a start-paused VM boots on `resume`.
    booted: AtomicBool,
    wait: Duration,
    /// What is in effect; held across a change so that changes apply one at
    /// a time, each checked against the result of the one before.
    resources: tokio::sync::Mutex<crate::hotplug::Resources>,
}

impl<B: Backend + 'static> Handler for VmControl<B> {
    async fn handle(&self, command: Command) -> Result<Status, String> {
        let mut status = self.lifecycle(command).await?;
        status.resources = Some(self.resources.lock().await.clone());
        Ok(status)
    }
}

impl<B: Backend + 'static> VmControl<B> {
    /// A change to a running (or paused) VM; anything else is refused
    /// before the hypervisor is asked.
    async fn change(&self, command: Command) -> Result<Status, String> {
        let status = self.status.borrow().clone();
        if !matches!(status.state, State::Running | State::Paused) {
            return Err(format!(
                "{}: the VM is {:?}/{:?}; it can be changed only while it runs or is paused",
                command.as_str(),
                status.state,
                status.reason
            ));
        }
        let mut resources = self.resources.lock().await;
        match command {
            Command::Resize { sockets, memory } => {
                let (block, can_shrink) = self.backend.memory_hotplug();
                let plan = resources
                    .plan_resize(sockets, memory, block, can_shrink)
                    .map_err(|e| format!("resize: {e}"))?;
                if plan.vcpus.is_some() || plan.memory.is_some() {
                    self.backend.resize(plan).await.map_err(|e| e.to_string())?;
                    resources.resized(plan);
                }
                tracing::info!(
                    sockets = resources.sockets,
                    vcpus = resources.vcpus,
                    memory = resources.memory,
                    "VM resized"
                );
            }
            Command::AttachDisk {
                name,
                path,
                readonly,
            } => {
                resources
                    .check_attach(&name, &path)
                    .map_err(|e| format!("attach-disk: {e}"))?;
                let guest_address = self
                    .backend
                    .attach_disk(&name, &path, readonly)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(disk = %name, path = %path.display(),
                    guest_address = guest_address.as_deref().unwrap_or("-"), "disk attached");
                resources.disks.push(crate::hotplug::DiskInUse {
                    name,
                    path,
                    readonly,
                    hotplugged: true,
                    guest_address,
                });
            }
            Command::DetachDisk { name } => {
                resources
                    .check_detach(&name)
                    .map_err(|e| format!("detach-disk: {e}"))?;
                self.backend
                    .detach_disk(&name)
                    .await
                    .map_err(|e| e.to_string())?;
                resources.disks.retain(|d| d.name != name);
                tracing::info!(disk = %name, "disk detached");
            }
            Command::AttachInterface { name, tap, mac } => {
                let mac = resources
                    .check_attach_interface(&name, &tap, mac.as_deref())
                    .map_err(|e| format!("attach-interface: {e}"))?;
                let guest_address = self
                    .backend
                    .attach_interface(&name, &tap, mac.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(interface = %name, tap = %tap,
                    guest_address = guest_address.as_deref().unwrap_or("-"), "interface attached");
                resources.interfaces.push(crate::hotplug::NicInUse {
                    name,
                    tap,
                    mac,
                    hotplugged: true,
                    guest_address,
                });
            }
            Command::DetachInterface { name } => {
                resources
                    .check_detach_interface(&name)
                    .map_err(|e| format!("detach-interface: {e}"))?;
                self.backend
                    .detach_interface(&name)
                    .await
                    .map_err(|e| e.to_string())?;
                resources.interfaces.retain(|n| n.name != name);
                tracing::info!(interface = %name, "interface detached");
            }
            other => return Err(format!("{} is not a change", other.as_str())),
        }
        Ok(self.status.borrow().clone())
    }

    async fn lifecycle(&self, command: Command) -> Result<Status, String> {
        let running = |s: &Status| s.state == State::Running;
        match command {
            change @ (Command::Resize { .. }
            | Command::AttachDisk { .. }
            | Command::DetachDisk { .. }
            | Command::AttachInterface { .. }
            | Command::DetachInterface { .. }) => self.change(change).await,
            Command::Status => Ok(self.status.borrow().clone()),
            Command::Pause => {
                self.backend.pause().await.map_err(|e| e.to_string())?;
                self.wait_for("paused", |s| {
                    s.state == State::Paused && s.reason == Reason::User
                })
                .await
            }
            Command::Resume => {
                if !self.booted.swap(true, Ordering::SeqCst) {
                    if let Err(e) = self.backend.boot().await {
                        self.booted.store(false, Ordering::SeqCst);
                        return Err(e.to_string());
                    }
                } else {
                    self.backend.resume().await.map_err(|e| e.to_string())?;
                }
                self.wait_for("running", running).await
            }
            Command::Reboot => {
                self.backend.reboot().await.map_err(|e| e.to_string())?;
                Ok(self.status.borrow().clone())
            }
            Command::Stop => {
                self.stopper.request(StopRequest::Control);
                Ok(self.status.borrow().clone())
            }
            Command::Kill => {
                self.stopper.request(StopRequest::Kill);
                Ok(self.status.borrow().clone())
            }
        }
    }
}

impl<B> VmControl<B> {
    async fn wait_for(
        &self,
        want: &str,
        reached: impl Fn(&Status) -> bool,
    ) -> Result<Status, String> {
        let mut rx = self.status.clone();
        let waited = tokio::time::timeout(self.wait, rx.wait_for(|s| reached(s) || s.is_final()))
            .await
            .map(|r| r.map(|s| s.clone()));
        match waited {
            Ok(Ok(s)) if reached(&s) => Ok(s),
            Ok(Ok(s)) => Err(format!(
                "the VM ended ({:?}/{:?}) before it was {want}",
                s.state, s.reason
            )),
            Ok(Err(_)) => Err("the launcher is shutting down".into()),
            Err(_) => {
                let s = self.status.borrow().clone();
                Err(format!(
                    "the hypervisor accepted the request, but the VM is still {:?}/{:?} after {:?}",
                    s.state, s.reason, self.wait
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests;
