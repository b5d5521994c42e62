//! The sequence that turns a [`Domain`] into a created (not yet booted) VM
//! under a fresh `cloud-hypervisor` process.
//!
//! translate -> spawn (on a listening API socket) -> `vmm.ping` and a check
//! of the build's features, only when the Domain needs one -> `vm.create`
//! (the first request is raced against the VMM's exit) -> the
//! serial console (the socket the launcher named, or the PTY `vm.info`
//! names) -> start watching events.
//! Any failure after the spawn takes the VMM down again.

use super::api::Api;
use super::config::{vm_config, ConfigErrors, HostInputs, SerialMode};
use super::events::{EventMapper, Monitor};
use super::process::{self, ProcessError, Spawned};
use super::ChVm;
use crate::backend::{BackendError, ConsoleSource, Created};
use crate::lifecycle::Event;
use crate::paths::VmPaths;
use cloud_hypervisor_client::models::{ConsoleMode, SerialConfig};
use domain_model::{Domain, LaunchSecurity};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// How to run Cloud Hypervisor for one VM.
#[derive(Debug, Clone)]
pub struct ChOptions {
    /// The `cloud-hypervisor` binary; see [`process::binary`] for the default.
    pub binary: Option<PathBuf>,
    /// Firmware and IGVM files chosen for this host. Its `serial_socket` is
    /// replaced by what `serial` asks for (see [`ChOptions::host_inputs`]).
    pub host: HostInputs,
    /// How CH hands the serial port to the launcher.
    pub serial: SerialMode,
    /// How long the API may take to answer its first request after the
    /// process started.
    pub ready_timeout: Duration,
    /// How long `destroy` waits for an orderly VMM exit before SIGKILL.
    pub stop_timeout: Duration,
}

impl Default for ChOptions {
    fn default() -> Self {
        ChOptions {
            binary: None,
            host: HostInputs::default(),
            serial: SerialMode::default(),
            ready_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
        }
    }
}

impl ChOptions {
    /// The translation inputs for the VM at `paths`: the host's files, and
    /// the serial socket in the VM directory unless a PTY was chosen.
    pub fn host_inputs(&self, paths: &VmPaths) -> HostInputs {
        HostInputs {
            serial_socket: match self.serial {
                SerialMode::Socket => Some(paths.ch_serial_socket()),
                SerialMode::Pty => None,
            },
            vm_dir: Some(paths.dir.clone()),
            dedicated_cpus: crate::host::pod_cpuset().ok(),
            ..self.host.clone()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// CH accepts and then silently ignores confidential-computing fields on
    /// builds without the feature, so the build is checked first.
    #[error("{needed_for} needs a cloud-hypervisor built with the {feature:?} feature; {binary:?} ({version}) has {features:?}")]
    MissingFeature {
        feature: &'static str,
        needed_for: &'static str,
        binary: PathBuf,
        version: String,
        features: Vec<String>,
    },
    #[error(transparent)]
    Api(#[from] BackendError),
    #[error(
        "cloud-hypervisor created the VM but vm.info names no serial PTY or socket (serial: {0})"
    )]
    NoSerial(String),
}

/// The log file of the VMM's own output.
pub fn log_path(paths: &VmPaths) -> PathBuf {
    paths.dir.join("cloud-hypervisor.log")
}

/// Creates the VM described by `domain` in a new `cloud-hypervisor` process.
///
/// Call it on the launcher's main thread (the VMM is tied to the spawning
/// thread's life, see [`process`]), inside a Tokio runtime with IO and time
/// enabled. The returned events start with [`Event::Created`].
pub async fn create(
    domain: &Domain,
    paths: &VmPaths,
    opts: &ChOptions,
) -> Result<Created<ChVm>, CreateError> {
    let host = opts.host_inputs(paths);
    let config = vm_config(domain, &host)?;
    let binary = process::binary(opts.binary.as_deref());
    let socket = paths.ch_api_socket();
    std::fs::create_dir_all(&paths.dir).map_err(|source| ProcessError::Prepare {
        path: paths.dir.clone(),
        cause: source,
    })?;
    if let Some(serial) = &host.serial_socket {
        // CH binds the serial socket itself and fails when the path exists
        // (left by a VMM that was killed).
        crate::util::remove_stale_socket(serial).map_err(|source| ProcessError::Prepare {
            path: serial.to_path_buf(),
            cause: source,
        })?;
    }
    let mut spawned = process::spawn(&binary, &socket, &log_path(paths))?;
    tracing::info!(binary = %binary.display(), pid = spawned.child.id(),
        api = %socket.display(), "cloud-hypervisor started");
    let api = Api::new(&socket);

    let prepared = prepare(domain, &binary, &api, &mut spawned, config, opts).await;
    let console = match prepared {
        Ok(console) => console,
        Err(e) => {
            abort(&mut spawned).await;
            // The launcher bound the API socket; CH only removes one it bound itself.
            crate::util::remove_socket(&socket);
            return Err(e);
        }
    };
    let (tx, events) = mpsc::unbounded_channel();
    // Sent before the monitor starts, so it comes first.
    let _ = tx.send(Event::Created);
    let stop_requested = Arc::new(AtomicBool::new(false));
    let kill = Arc::new(Notify::new());
    let (exited_tx, exited) = watch::channel(None);
    let pid = spawned.child.id();
    let Spawned {
        child,
        events: pipe,
        log,
    } = spawned;
    let monitor = Monitor {
        child,
        events: pipe,
        mapper: EventMapper::new(stop_requested.clone()),
        tx,
        kill: kill.clone(),
        exited: exited_tx,
        log,
    };
    tokio::spawn(async move {
        monitor.run().await;
        crate::util::remove_socket(&socket);
    });
    Ok(Created {
        backend: ChVm {
            api,
            pid,
            stop_requested,
            kill,
            exited,
            stop_timeout: opts.stop_timeout,
        },
        events,
        console,
    })
}

/// Everything between the spawn and a created VM; returns the serial console.
async fn prepare(
    domain: &Domain,
    binary: &Path,
    api: &Api,
    spawned: &mut Spawned,
    config: cloud_hypervisor_client::models::VmConfig,
    opts: &ChOptions,
) -> Result<ConsoleSource, CreateError> {
    let needed = required_features(domain);
    // CH makes the serial device at create time: it binds the socket the
    // launcher named, or allocates a PTY and names it only in `vm.info`.
    let requested = console_source(config.serial.as_ref());
    if needed.is_empty() {
        // Nothing to check first: `vm.create` is the first request. It waits
        // in the API socket's backlog while CH starts, like a ping would,
        // and a round trip less is a VM booted sooner.
        process::first_answer(spawned, opts.ready_timeout, api.create(config)).await??;
    } else {
        let ping = process::first_answer(spawned, opts.ready_timeout, api.ping()).await??;
        let features = ping.features.clone().unwrap_or_default();
        for (feature, needed_for) in needed {
            if !features.iter().any(|f| f == feature) {
                return Err(CreateError::MissingFeature {
                    feature,
                    needed_for,
                    binary: binary.to_path_buf(),
                    version: ping.build_version.clone().unwrap_or(ping.version.clone()),
                    features,
                });
            }
        }
        api.create(config).await?;
    }
    if !domain.devices.serial_console {
        return Ok(ConsoleSource::None);
    }
    if let ConsoleSource::UnixSocket(_) = requested {
        return Ok(requested);
    }
    let info = api.info().await?;
    match console_source(info.config.serial.as_ref()) {
        ConsoleSource::None => Err(CreateError::NoSerial(format!("{:?}", info.config.serial))),
        source => Ok(source),
    }
}

/// The serial console as `vm.info` describes it.
pub(crate) fn console_source(serial: Option<&SerialConfig>) -> ConsoleSource {
    let Some(serial) = serial else {
        return ConsoleSource::None;
    };
    match (&serial.mode, &serial.file, &serial.socket) {
        (ConsoleMode::Pty, Some(pty), _) => ConsoleSource::Pty(PathBuf::from(pty)),
        (ConsoleMode::Socket, _, Some(socket)) => ConsoleSource::UnixSocket(PathBuf::from(socket)),
        // Off, or a mode the launcher never asks for (Tty, File, Null): no
        // console the launcher can relay.
        _ => ConsoleSource::None,
    }
}

/// Build features (`vmm.ping`) the Domain depends on.
pub fn required_features(domain: &Domain) -> Vec<(&'static str, &'static str)> {
    match domain.launch_security {
        Some(LaunchSecurity::Tdx) => vec![("tdx", "Intel TDX")],
        Some(LaunchSecurity::SevSnp { .. }) => {
            vec![("sev_snp", "AMD SEV-SNP"), ("igvm", "AMD SEV-SNP")]
        }
        _ => vec![],
    }
}

/// Takes a VMM down after a failed create and reaps it.
async fn abort(spawned: &mut Spawned) {
    if let Err(e) = spawned.child.start_kill() {
        tracing::debug!("cloud-hypervisor already gone: {e}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), spawned.child.wait()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain_model::fixtures;
    use std::process::Stdio;
    use std::sync::Mutex;
    use tokio::net::UnixListener;

    /// A VMM's API (hyper's HTTP/1.1 server) that answers every request and
    /// records its request line.
    fn fake_api(socket: &Path, ping_features: &'static str) -> Arc<Mutex<Vec<String>>> {
        use http_body_util::{BodyExt, Full};
        use hyper::body::Bytes;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = UnixListener::bind(socket).expect("bind");
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let line = format!(
                                "{} {} {:?}",
                                request.method(),
                                request.uri(),
                                request.version()
                            );
                            // Read the whole body, as the real API does.
                            let _ = request.into_body().collect().await;
                            record.lock().unwrap().push(line.clone());
                            let response = if line.contains("vmm.ping") {
                                let json = format!(
                                    r#"{{"build_version":"v0-test","version":"0.0.0","pid":1,"features":{ping_features}}}"#
                                );
                                hyper::Response::builder()
                                    .header("Content-Type", "application/json")
                                    .body(Full::new(Bytes::from(json)))
                            } else {
                                hyper::Response::builder()
                                    .status(204)
                                    .body(Full::new(Bytes::new()))
                            };
                            response
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        seen
    }

    /// A stand-in for the spawned VMM process that only has to stay alive.
    fn idle_process(dir: &Path) -> Spawned {
        let child = tokio::process::Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("sleep");
        let (read, _write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        Spawned {
            child,
            events: tokio::net::unix::pipe::Receiver::from_owned_fd(read).expect("pipe"),
            log: dir.join("ch.log"),
        }
    }

    async fn requests_for(
        domain: &Domain,
        ping_features: &'static str,
    ) -> (Vec<String>, Result<ConsoleSource, CreateError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let seen = fake_api(&socket, ping_features);
        let mut spawned = idle_process(dir.path());
        let host = HostInputs {
            firmware: Some(dir.path().join("tdvf.fd")),
            igvm: Some(dir.path().join("snp.igvm")),
            serial_socket: Some(dir.path().join("serial.sock")),
            vm_dir: None,
            dedicated_cpus: None,
            cpu: None,
        };
        let config = vm_config(domain, &host).expect("translates");
        let result = prepare(
            domain,
            Path::new("/usr/bin/cloud-hypervisor"),
            &Api::new(&socket),
            &mut spawned,
            config,
            &ChOptions::default(),
        )
        .await;
        let _ = spawned.child.start_kill();
        let seen = seen.lock().unwrap().clone();
        (seen, result)
    }

    #[tokio::test]
    async fn a_vm_needing_no_build_feature_is_created_without_a_ping() {
        let domain = fixtures::domain();
        let (seen, result) = requests_for(&domain, r#"["kvm"]"#).await;
        assert!(result.is_ok(), "{:?}", result.err().map(|e| e.to_string()));
        assert_eq!(seen, ["PUT /api/v1/vm.create HTTP/1.1"]);
    }

    #[tokio::test]
    async fn a_tdx_vm_is_checked_against_the_builds_features_before_create() {
        let domain = fixtures::domain()
            .with_launch_security(LaunchSecurity::Tdx)
            .with_boot(fixtures::efi_boot(false));
        let (seen, result) = requests_for(&domain, r#"["kvm"]"#).await;
        assert_eq!(seen, ["GET /api/v1/vmm.ping HTTP/1.1"]);
        match result {
            Err(CreateError::MissingFeature { feature: "tdx", .. }) => {}
            other => panic!(
                "expected the missing tdx feature, got {:?}",
                other.map_err(|e| e.to_string())
            ),
        }

        let (seen, result) = requests_for(&domain, r#"["kvm","tdx"]"#).await;
        assert!(result.is_ok(), "{:?}", result.err().map(|e| e.to_string()));
        assert_eq!(
            seen,
            [
                "GET /api/v1/vmm.ping HTTP/1.1",
                "PUT /api/v1/vm.create HTTP/1.1"
            ]
        );
    }
}
