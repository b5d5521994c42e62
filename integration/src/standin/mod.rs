//! A stand-in for the `cloud-hypervisor` binary, for CI machines where real
//! Cloud Hypervisor cannot run. It reproduces what was recorded from the real
//! one (`ch-launcher/tests/data/reference/cloud-hypervisor/`
//! beside the repository): the REST API on a unix socket with the
//! same status codes and error chains, the `--event-monitor` stream, the VM
//! state machine, console back ends (real PTYs, the serial socket), disk
//! images (opened, format-detected, OFD-locked), and the tiny test guest on
//! COM1 (banner, echo, `q` powers off, `r` reboots, an NMI resets it).
//!
//! Behaviour checked against a real CH v53.0-246 (tests/standin_replay.rs and
//! side-by-side probes), beyond the recordings:
//! - serial output written while nobody holds the PTY is buffered, not lost:
//!   it arrives about 0.5 s after the slave is opened;
//! - every boot and reboot makes a new serial PTY, so `vm.info` must be read
//!   again after a reboot;
//! - a missing disk image fails `vm.boot` and drops the disk list from the
//!   config; two disks on one image fail on the image lock;
//! - SIGTERM shuts the VM and VMM down (events as for `vmm.shutdown`), exit 0;
//! - a `File`/`Socket` console without its path kills CH's VMM thread: every
//!   later API call fails with "sending on a closed channel".
//!
//! Deliberately not reproduced: real CH may exit before writing its last
//! events, and a guest reset racing `vm.shutdown` can kill its VMM thread.
//!
//! Knobs for tests: `CH_STANDIN_FEATURES=kvm,tdx,...` replaces the feature
//! list `vmm.ping` reports (default `io_uring,kvm`). A kernel file containing
//! `HALT-AFTER-BANNER` (or the `HALT_AFTER_BANNER` symbol images/build.rs
//! defines for that variant) runs the guest that powers off after its banner.
//! Not emulated: device hotplug, migration, snapshot/restore (they fail as on
//! these machines), network devices at boot (accepted and echoed only), and
//! payload checks beyond the file being readable.

mod cli;
mod config;
mod consoles;
mod disks;
mod events;
mod http;
mod log;
mod serial;
mod vmm;

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

pub use cli::{Invocation, Options, Target};
pub use serial::{BANNER, HALTING_GUEST_MARKER};

use events::EventMonitor;
use log::Logger;
use serial::GuestAction;
use vmm::{GuestOutcome, Vmm};

/// `--version` and `vmm.ping`'s `build_version`: the recorded release, marked.
pub const BUILD_VERSION: &str = "v53.0-246-standin";
/// What `vmm.ping` reports as `features` unless `CH_STANDIN_FEATURES` is set.
pub const DEFAULT_FEATURES: &[&str] = &["io_uring", "kvm"];
pub const FEATURES_ENV: &str = "CH_STANDIN_FEATURES";

/// Events the VMM's control loop reacts to besides API requests.
#[derive(Debug)]
pub enum ControlEvent {
    /// End the process with this status (after `vmm.shutdown`).
    Exit(i32),
    /// The guest of boot `generation` powered off or reset.
    Guest(u64, GuestAction),
}

/// Runs the stand-in with `args` (including the program name); returns the
/// process exit status.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let start = Instant::now();
    // Like CH: sockets, logs and event files are private to the user.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o077) };
    let options = match cli::parse(args) {
        Ok(Invocation::Version { verbose }) => {
            println!("cloud-hypervisor {BUILD_VERSION}");
            println!("Migration Protocol Versions: 0");
            if verbose {
                println!("Enabled features: {:?}", features());
            }
            return 0;
        }
        Ok(Invocation::Run(options)) => options,
        Err(e) => {
            e.print();
            return 1;
        }
    };
    match start_vmm(start, options) {
        Ok(code) => code,
        Err(e) => {
            e.print();
            1
        }
    }
}

fn features() -> Vec<String> {
    match std::env::var(FEATURES_ENV) {
        Ok(list) => list
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect(),
        Err(_) => DEFAULT_FEATURES.iter().map(|f| f.to_string()).collect(),
    }
}

fn startup_error(context: &str, cause: impl ToString) -> cli::StartupError {
    cli::StartupError(vec![context.to_string(), cause.to_string()])
}

/// Takes ownership of an inherited descriptor after checking it is open.
fn inherited_fd(fd: RawFd, context: &str) -> Result<File, cli::StartupError> {
    // SAFETY: F_GETFD only reads the descriptor's flags; on a number that is
    // not an open descriptor it fails with EBADF and touches nothing.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(startup_error(context, std::io::Error::last_os_error()));
    }
    // SAFETY: the descriptor is open (checked above) and was handed to us on
    // the command line to own, as CH owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn start_vmm(start: Instant, options: Options) -> Result<i32, cli::StartupError> {
    let log_file = options
        .log_file
        .as_ref()
        .map(File::create)
        .transpose()
        .map_err(|e| startup_error("Error creating log file", e))?;
    let logger = Logger::new(start, options.verbosity, log_file);
    let event_file = match &options.event_monitor {
        Some(Target::Path(path)) => Some(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map_err(|e| startup_error("Error writing to event monitor", e))?,
        ),
        Some(Target::Fd(fd)) => Some(inherited_fd(*fd, "Error writing to event monitor")?),
        None => None,
    };
    let events = Arc::new(
        EventMonitor::new(event_file, logger.clone())
            .map_err(|e| startup_error("Event monitor thread failed", e))?,
    );
    logger.info(&format!("{BUILD_VERSION} starting"));
    events.emit("vmm", "starting");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| startup_error("Error creating the async runtime", e))?;
    let result = runtime.block_on(serve(options, Arc::clone(&events), logger));
    events.close();
    result
}

/// Holds `<socket>.lock` for the life of the process, as CH does, so two
/// VMMs never share (or delete) one socket path.
fn lock_api_socket(path: &Path) -> Result<File, cli::StartupError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PathBuf::from(lock_path))
        .map_err(|e| startup_error("Error creating API server socket", e))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(cli::StartupError(vec![format!(
            "API socket {} is in use by another instance",
            path.display()
        )]));
    }
    Ok(lock)
}

fn bind_api_socket(
    target: &Target,
) -> Result<(UnixListener, Option<(PathBuf, File)>), cli::StartupError> {
    let std_listener = match target {
        Target::Path(path) => {
            let lock = lock_api_socket(path)?;
            // The lock is ours, so a socket file here is stale.
            let _ = std::fs::remove_file(path);
            let listener = std::os::unix::net::UnixListener::bind(path)
                .map_err(|e| startup_error("Error creating API server socket", e))?;
            return to_tokio(listener).map(|l| (l, Some((path.clone(), lock))));
        }
        Target::Fd(fd) => {
            let file = inherited_fd(*fd, "Error creating API server socket")?;
            // SAFETY: the descriptor is open and ours (checked by inherited_fd).
            unsafe {
                std::os::unix::net::UnixListener::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(
                    file,
                ))
            }
        }
    };
    to_tokio(std_listener).map(|l| (l, None))
}

fn to_tokio(listener: std::os::unix::net::UnixListener) -> Result<UnixListener, cli::StartupError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| startup_error("Error creating API server socket", e))?;
    UnixListener::from_std(listener)
        .map_err(|e| startup_error("Error creating API server socket", e))
}

async fn serve(
    options: Options,
    events: Arc<EventMonitor>,
    logger: Logger,
) -> Result<i32, cli::StartupError> {
    let (control_tx, mut control_rx) = mpsc::unbounded_channel::<ControlEvent>();
    let guest_tx = control_tx.clone();
    let vmm = Arc::new(Mutex::new(Vmm::new(
        events,
        logger.clone(),
        features(),
        BUILD_VERSION.to_string(),
        Arc::new(move |generation, action| {
            let _ = guest_tx.send(ControlEvent::Guest(generation, action));
        }),
    )));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| startup_error("Error setting up signal handlers", e))?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| startup_error("Error setting up signal handlers", e))?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut socket_path = None;
    if let Some(target) = &options.api_socket {
        let (listener, path_and_lock) = bind_api_socket(target)?;
        socket_path = path_and_lock;
        let ctx = Arc::new(http::ApiContext {
            vmm: Arc::clone(&vmm),
            control: control_tx.clone(),
        });
        tokio::spawn(accept_loop(listener, ctx, shutdown_rx, done_tx));
    } else {
        drop(done_tx);
    }

    let lock_vmm = || vmm.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let code = loop {
        tokio::select! {
            event = control_rx.recv() => match event {
                // The loop holds a sender, so `None` cannot happen; treat it as an exit.
                None => break 0,
                Some(ControlEvent::Exit(code)) => break code,
                Some(ControlEvent::Guest(generation, action)) => {
                    let outcome = lock_vmm().on_guest_action(generation, action, options.no_shutdown);
                    match outcome {
                        Ok(GuestOutcome::Continue) => {}
                        Ok(GuestOutcome::Exit) => break 0,
                        Err(e) => {
                            let what = match action {
                                GuestAction::Reboot => "Error rebooting VM",
                                GuestAction::PowerOff => "Error shutting down VMM",
                            };
                            let mut chain = vec![what.to_string()];
                            chain.extend(e.chain());
                            cli::StartupError(chain).print();
                            break 1;
                        }
                    }
                }
            },
            _ = terminate.recv() => if let Some(code) = shutdown_on_signal(&mut lock_vmm()) {
                break code;
            },
            _ = interrupt.recv() => if let Some(code) = shutdown_on_signal(&mut lock_vmm()) {
                break code;
            },
        }
    };

    let _ = shutdown_tx.send(true);
    // Let in-flight responses (the `vmm.shutdown` reply) reach their clients.
    let _ = tokio::time::timeout(Duration::from_secs(2), done_rx.recv()).await;
    if code == 0 {
        if let Some((path, _lock)) = &socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
    logger.info(&format!("ch-standin exiting with status {code}"));
    Ok(code)
}

/// SIGTERM/SIGINT: CH shuts the VMM down as for `vmm.shutdown` and exits
/// (unless its VMM thread is gone: then nobody acts on the signal).
fn shutdown_on_signal(vmm: &mut Vmm) -> Option<i32> {
    if vmm.is_dead() {
        return None;
    }
    match vmm.vmm_shutdown() {
        Ok(()) => Some(0),
        Err(e) => {
            let mut chain = vec!["Error shutting down VMM".to_string()];
            chain.extend(e.chain());
            cli::StartupError(chain).print();
            Some(1)
        }
    }
}

async fn accept_loop(
    listener: UnixListener,
    ctx: Arc<http::ApiContext>,
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let ctx = Arc::clone(&ctx);
                let mut shutdown = shutdown.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| http::serve(Arc::clone(&ctx), request));
                    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        _ = shutdown.changed() => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.as_mut().await;
                        }
                    }
                    drop(done);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}
