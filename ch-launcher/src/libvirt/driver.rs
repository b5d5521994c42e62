//! The libvirt driver: creates the rendered domain in libvirtd as a
//! transient, auto-destroyed domain started paused, forwards its lifecycle
//! events, and destroys it when the launcher lets go of it.
//!
//! It speaks libvirt's RPC protocol itself ([`super::rpc`]) over the
//! daemon's unix socket instead of linking `libvirt.so`, whose dozens of
//! shared libraries alone cost more memory than the launcher's budget. One
//! connection carries the calls and the domain events (registered with
//! `CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY` for this domain only); a
//! task maps them onto [`Event`]s.
//!
//! The domain is created with `DOMAIN_CREATE_XML` and
//! `VIR_DOMAIN_START_PAUSED | VIR_DOMAIN_START_AUTODESTROY`:
//! - paused, so that the runner decides when the vCPUs first run
//!   ([`Backend::boot`]), exactly as on the Cloud Hypervisor path;
//! - transient and auto-destroyed, so that libvirtd destroys it as soon as
//!   the launcher's connection closes, even when the launcher is killed with
//!   SIGKILL; nothing is ever defined, so nothing is left to undefine;
//! - owned: only a launcher whose `CREATE_XML` succeeded holds a
//!   [`LibvirtBackend`], and only that one destroys the domain. A second
//!   launcher for the same VMI gets libvirt's refusal (name and UUID are
//!   taken) and touches nothing.
//!
//! QEMU itself binds `virt-serial0` and writes `virt-serial0-log` (through
//! virtlogd), so the console is [`ConsoleSource::ServedByHypervisor`].
//!
//! Losing libvirtd: the forwarder reconnects for up to [`RECONNECT_WINDOW`],
//! registers the events again, looks the domain up by UUID and reconciles
//! the state with `DOMAIN_GET_STATE` (calls made meanwhile fail as
//! unreachable). A daemon that stops cleanly (SIGTERM) runs the
//! auto-destroy of the launcher's connection as it goes, so after such a
//! restart the domain is gone and the VM is reported Crashed; a daemon that
//! crashes leaves QEMU running and the launcher carries on. After a
//! reconnect the new connection does not own the auto-destroy (libvirt has
//! no call to re-arm it): the launcher's own exit still destroys the domain.
//!
//! Cleanup: dropping the [`LibvirtBackend`] destroys the domain if it still
//! runs, removes its per-VM NVRAM copy unless the spec asked for persistent
//! EFI variables, and the VNC socket QEMU leaves behind. `Drop` cannot
//! await, so the cleanup opens a short blocking connection of its own
//! ([`BlockingClient`]): it works whatever state the runtime is in.
use super::events::{EventMapper, Mapped};
use super::launch_security::ConfidentialHost;
use super::render::{domain_name, render, vnc_socket_path, RenderContext};
use super::rpc::client::{resolve, Endpoint, DEFAULT_CALL_TIMEOUT};
use super::rpc::protocol::{
    VIR_ERR_DOM_EXIST, VIR_ERR_OPERATION_FAILED, VIR_ERR_OPERATION_INVALID,
};
use super::rpc::{flags, BlockingClient, Client, DomainEvent, DomainRef, Notice, RpcError};
use crate::backend::{Backend, BackendError, ConsoleSource, Created};
use crate::host::cpu::MsrQuirk;
use crate::lifecycle::Event;
use crate::paths::VmPaths;
use domain_model::{Boot, Domain};
use firmware::LibvirtFirmware;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long the cleanup in `Drop` waits for each libvirtd answer: a
/// destroy may take QEMU's shutdown, but a hung daemon must not hang the
/// launcher's exit.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the launcher keeps trying to reach libvirtd again after losing
/// its connection (a daemon restart takes a few seconds) before it reports
/// the VM Crashed.
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(30);

/// Pause between two reconnect attempts.
const RECONNECT_RETRY: Duration = Duration::from_millis(250);

/// libvirtd's system QEMU driver, where KubeVirt's virt-launcher runs its VMs.
pub const DEFAULT_URI: &str = "qemu:///system";

/// How to reach libvirt and what the host provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtOptions {
    /// `--libvirt-uri`.
    pub uri: String,
    /// The firmware chosen for this VM, when it boots with EFI.
    pub firmware: Option<LibvirtFirmware>,
    /// The host's confidential-computing parameters (SEV C-bit, TDX quote
    /// service), for a VM with launch security.
    pub confidential: ConfidentialHost,
    /// The host's KVM CPU quirks ([`crate::host::cpu::CpuProbe::quirks`]).
    pub cpu_quirks: Vec<MsrQuirk>,
}

impl Default for LibvirtOptions {
    fn default() -> Self {
        LibvirtOptions {
            uri: DEFAULT_URI.to_owned(),
            firmware: None,
            confidential: ConfidentialHost::default(),
            cpu_quirks: Vec::new(),
        }
    }
}

/// A domain this launcher created (paused) in libvirtd.
pub struct LibvirtBackend {
    inner: Inner,
}

/// The link to libvirtd, shared by the backend's calls and the forwarder,
/// which replaces the client after a reconnect.
struct Conn {
    endpoint: Endpoint,
    uri: String,
    dom: DomainRef,
    name: String,
    call_timeout: Duration,
    /// `None` while reconnecting.
    client: Mutex<Option<Arc<Client>>>,
}

impl Conn {
    fn client(&self, operation: &'static str) -> Result<Arc<Client>, BackendError> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| BackendError::Unreachable {
                operation,
                detail: format!("reconnecting to libvirtd at {}", self.uri),
            })
    }

    fn set_client(&self, client: Option<Arc<Client>>) {
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = client;
    }
}

/// Owns the created domain: dropping it destroys the domain.
struct Inner {
    conn: Arc<Conn>,
    /// The per-VM EFI variable store, removed at exit unless persistent.
    nvram_to_remove: Option<PathBuf>,
    vnc_socket: PathBuf,
    /// Maps the connection's notices onto the backend's events.
    forwarder: Option<tokio::task::JoinHandle<()>>,
    /// [`Backend::close`] saw the domain gone: `Drop` need not ask libvirtd.
    closed: std::sync::atomic::AtomicBool,
}

/// Renders `domain` and creates it under `opts.uri`, paused and
/// auto-destroyed with the launcher's connection.
pub async fn create(
    domain: &Domain,
    paths: &VmPaths,
    opts: &LibvirtOptions,
) -> Result<Created<LibvirtBackend>, BackendError> {
    let ctx = RenderContext {
        paths: paths.clone(),
        firmware: opts.firmware.clone(),
        confidential: opts.confidential.clone(),
        cpu_quirks: opts.cpu_quirks.clone(),
    }
    .absolute()
    .map_err(|e| {
        BackendError::Host(format!("cannot make {} absolute: {e}", paths.dir.display()))
    })?;
    let xml = render(domain, &ctx).map_err(|e| BackendError::Host(e.to_string()))?;
    // Rendering succeeded, so the plan does too; it is asked again only for
    // what to tell the user.
    if let Ok(plan) = super::cpu::plan(domain, &ctx.cpu_quirks) {
        for w in &plan.workarounds {
            tracing::warn!(feature = w.feature, "{w}");
        }
    }
    prepare_host_files(paths)?;
    let name = domain_name(domain);
    let uri = opts.uri.as_str();
    let nvram_to_remove = match (&ctx.firmware, &domain.boot) {
        (
            _,
            Boot::Efi {
                persistent: true, ..
            },
        ) => None,
        (
            Some(LibvirtFirmware::Loader {
                nvram: Some(nvram), ..
            }),
            _,
        ) => Some(nvram.path.clone()),
        _ => None,
    };
    let unreachable = |e: RpcError| BackendError::Unreachable {
        operation: "connect to libvirtd",
        detail: format!("{uri}: {e}"),
    };
    let endpoint = resolve(uri).map_err(unreachable)?;
    let (client, notices) = Client::connect_endpoint(endpoint.clone(), DEFAULT_CALL_TIMEOUT)
        .await
        .map_err(unreachable)?;
    match client.lib_version().await {
        Ok(v) => tracing::debug!(
            uri,
            socket = %client.endpoint().socket.display(),
            libvirt = format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000),
            "connected to libvirtd"
        ),
        Err(e) => tracing::debug!(error = %e, "libvirt version unknown"),
    }
    check_existing(&client, &name, uri).await?;
    let dom = client
        .create_xml(
            &xml,
            flags::VIR_DOMAIN_START_PAUSED | flags::VIR_DOMAIN_START_AUTODESTROY,
        )
        .await
        .map_err(|e| create_failed(&name, uri, e))?;
    tracing::info!(
        domain = name,
        uri,
        "libvirt domain created paused (transient, auto-destroyed)"
    );
    // From here on the domain is this launcher's: dropping `inner` destroys it.
    let client = Arc::new(client);
    let mut inner = Inner {
        conn: Arc::new(Conn {
            endpoint,
            uri: uri.to_owned(),
            dom,
            name,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            client: Mutex::new(Some(client.clone())),
        }),
        nvram_to_remove,
        vnc_socket: vnc_socket_path(&ctx.paths),
        forwarder: None,
        closed: std::sync::atomic::AtomicBool::new(false),
    };
    let ids = register(&client, &inner.conn.dom)
        .await
        .map_err(|e| backend_error("subscribe to domain events", e))?;
    let (tx, events) = mpsc::unbounded_channel();
    inner.forwarder = Some(tokio::spawn(forward(
        inner.conn.clone(),
        notices,
        ids,
        tx,
        RECONNECT_WINDOW,
    )));
    Ok(Created {
        backend: LibvirtBackend { inner },
        events,
        console: ConsoleSource::ServedByHypervisor,
    })
}

/// The callback ids of this connection's lifecycle and reboot events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CallbackIds {
    lifecycle: i32,
    reboot: i32,
}

async fn register(client: &Client, dom: &DomainRef) -> Result<CallbackIds, RpcError> {
    Ok(CallbackIds {
        lifecycle: client
            .register_event(flags::VIR_DOMAIN_EVENT_ID_LIFECYCLE, dom)
            .await?,
        reboot: client
            .register_event(flags::VIR_DOMAIN_EVENT_ID_REBOOT, dom)
            .await?,
    })
}

/// Feeds the domain's events through the [`EventMapper`] until the last
/// one. A lost connection is retried for `window`; only when libvirtd does
/// not come back is it the hypervisor's death as far as the launcher can
/// tell: it can no longer control the VM.
async fn forward(
    conn: Arc<Conn>,
    mut notices: mpsc::UnboundedReceiver<Notice>,
    mut ids: CallbackIds,
    tx: mpsc::UnboundedSender<Event>,
    window: Duration,
) {
    let mut mapper = EventMapper::default();
    loop {
        let reason = loop {
            let Some(notice) = notices.recv().await else {
                return;
            };
            let mapped = match notice {
                Notice::Event(DomainEvent::Lifecycle {
                    callback_id,
                    event,
                    detail,
                    ..
                }) if callback_id == ids.lifecycle => mapper.lifecycle(event, detail),
                Notice::Event(DomainEvent::Reboot { callback_id, .. })
                    if callback_id == ids.reboot =>
                {
                    mapper.reboot()
                }
                Notice::Event(other) => {
                    tracing::debug!(?other, "libvirt event of another callback ignored");
                    continue;
                }
                Notice::Closed(reason) => break reason,
            };
            let mapped = if mapped.query_state {
                paused_reason(&conn, &mut mapper).await
            } else {
                mapped
            };
            if emit(&tx, mapped) {
                return;
            }
        };
        conn.set_client(None);
        tracing::warn!(%reason, window = ?window,
            "lost the connection to libvirtd; reconnecting");
        let deadline = Instant::now() + window;
        let (client, rx, found) = match reconnect(&conn, deadline).await {
            Ok(ok) => ok,
            Err(e) => {
                emit(
                    &tx,
                    died(format!(
                        "lost the connection to libvirtd ({reason}) and could not reconnect \
                         within {window:?} ({e}); the VM can no longer be controlled"
                    )),
                );
                return;
            }
        };
        let Some((new_ids, (domain_state, state_reason))) = found else {
            emit(
                &tx,
                died(format!(
                    "the domain is gone after libvirtd came back (the connection was lost: \
                     {reason}); libvirtd destroys the launcher's auto-destroy domain when it \
                     shuts down"
                )),
            );
            return;
        };
        tracing::warn!(domain = %conn.name, domain_state, state_reason,
            "reconnected to libvirtd; the VM is still there");
        conn.set_client(Some(client));
        notices = rx;
        ids = new_ids;
        if emit(&tx, mapper.from_state(domain_state, state_reason)) {
            return;
        }
    }
}

/// One new connection with the events registered again, and the domain's
/// state, or `None` in place of them when libvirt no longer knows the
/// domain.
type Reconnected = (
    Arc<Client>,
    mpsc::UnboundedReceiver<Notice>,
    Option<(CallbackIds, (i32, i32))>,
);

async fn reconnect(conn: &Conn, deadline: Instant) -> Result<Reconnected, RpcError> {
    loop {
        let attempt = async {
            let (client, rx) =
                Client::connect_endpoint(conn.endpoint.clone(), conn.call_timeout).await?;
            let Some(dom) = client.lookup_by_uuid(&conn.dom.uuid).await? else {
                return Ok((Arc::new(client), rx, None));
            };
            // Registered before the state is read: nothing falls between.
            let ids = register(&client, &dom).await?;
            let state = client.get_state(&dom).await?;
            Ok((Arc::new(client), rx, Some((ids, state))))
        };
        let err = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(RpcError::Closed(
                    "libvirtd did not answer in time".to_owned(),
                ))
            }
        };
        if Instant::now() + RECONNECT_RETRY >= deadline {
            return Err(err);
        }
        tracing::debug!(error = %err, "libvirtd not back yet");
        tokio::time::sleep(RECONNECT_RETRY).await;
    }
}

/// A `SUSPENDED` event that does not say why: libvirtd's state does.
async fn paused_reason(conn: &Conn, mapper: &mut EventMapper) -> Mapped {
    let state = match conn.client("read the domain state") {
        Ok(client) => client.get_state(&conn.dom).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match state {
        Ok((domain_state, reason)) => mapper.from_state(domain_state, reason),
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask libvirtd why the domain paused");
            mapper.from_state(flags::VIR_DOMAIN_PAUSED, flags::VIR_DOMAIN_PAUSED_UNKNOWN)
        }
    }
}

fn died(detail: String) -> Mapped {
    Mapped {
        event: Some(Event::HypervisorDied { detail }),
        last: true,
        query_state: false,
    }
}

/// Sends the mapped event; true when it was the last one.
fn emit(tx: &mpsc::UnboundedSender<Event>, mapped: Mapped) -> bool {
    if let Some(event) = mapped.event {
        tracing::debug!(?event, "libvirt event");
        // The receiver is gone only when the runner stopped listening.
        let _ = tx.send(event);
    }
    // Returning drops `tx` (the forwarder ends), which closes the channel:
    // the hypervisor is gone.
    mapped.last
}

/// A domain of this name already in libvirt. The launcher only creates
/// transient domains, so a persistent one was defined by something else
/// (an older launcher version, or by hand): a shut-off one is undefined, a
/// running one refused without blaming another launcher. A transient one is
/// held by another live launcher's connection.
async fn check_existing(client: &Client, name: &str, uri: &str) -> Result<(), BackendError> {
    let old = client
        .lookup_by_name(name)
        .await
        .map_err(|e| backend_error("look up an existing domain", e))?;
    let Some(old) = old else {
        return Ok(());
    };
    let persistent = client.is_persistent(&old).await.unwrap_or(false);
    let active = client.is_active(&old).await.unwrap_or(true);
    match (persistent, active) {
        (false, _) => Err(already_exists(name, uri)),
        (true, true) => Err(BackendError::Host(format!(
            "a persistent libvirt domain named {name} is running under {uri}; the launcher \
             only creates transient domains, so it was defined outside the launcher (by hand, \
             or by an older launcher version): `virsh -c {uri} destroy {name}` and `virsh -c \
             {uri} undefine --keep-nvram {name}`"
        ))),
        (true, false) => {
            tracing::warn!(
                domain = name,
                "undefining a shut-off persistent domain of the same name (defined outside \
                 the launcher or by an older version)"
            );
            client
                .undefine_flags(&old, flags::VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
                .await
                .map_err(|e| backend_error("undefine the leftover domain", e))
        }
    }
}

fn already_exists(name: &str, uri: &str) -> BackendError {
    BackendError::Host(format!(
        "domain {name} already exists under {uri} (another launcher?); this launcher leaves \
         it alone. If no launcher runs this VM, it outlived one (a libvirtd restart drops \
         the auto-destroy): `virsh -c {uri} destroy {name}`"
    ))
}

/// libvirt refuses a second domain of the same name ("domain 'N' is
/// already active", `OPERATION_INVALID`) or UUID ("already defined with
/// uuid", `OPERATION_FAILED`): the race [`check_existing`] cannot close.
fn create_failed(name: &str, uri: &str, e: RpcError) -> BackendError {
    let taken = matches!(
        e.code(),
        Some(VIR_ERR_OPERATION_FAILED | VIR_ERR_OPERATION_INVALID | VIR_ERR_DOM_EXIST)
    ) && e.to_string().contains("already");
    if taken {
        tracing::debug!(error = %e, "libvirt refused the duplicate domain");
        return already_exists(name, uri);
    }
    let mut error = backend_error("create the domain", e);
    if let BackendError::Refused { chain, .. } = &mut error {
        if let Some(hint) = chain.iter().find_map(|m| cpu_refusal_hint(m)) {
            chain.push(hint);
        }
    }
    error
}

/// What to set in the spec when QEMU died because KVM refused a CPU feature
/// MSR (libvirt's message carries QEMU's last stderr lines).
fn cpu_refusal_hint(message: &str) -> Option<String> {
    let (msr, name, feature) = crate::host::cpu::refused_msr_in(message)?;
    Some(match feature {
        Some(feature) => format!(
            "hint: this host's KVM refused MSR {msr:#x} ({name}), which QEMU writes for the \
             CPU feature {feature:?}; set spec.domain.cpu.features: [{{name: {feature}, \
             policy: disable}}] (the launcher does this itself when its CPU probe sees the \
             refusal: check `ch-launcher host cpu`)"
        ),
        None => format!(
            "hint: this host's KVM refused MSR {msr:#x} ({name}); no CPU feature governs it, \
             so try another cpu.model"
        ),
    })
}

/// No stale console socket: QEMU must bind a fresh one. (Disks the spec
/// wants created were created by the runner.)
fn prepare_host_files(paths: &VmPaths) -> Result<(), BackendError> {
    for socket in [paths.serial_socket(), vnc_socket_path(paths)] {
        crate::util::remove_stale_socket(&socket).map_err(|e| {
            BackendError::Host(format!("cannot remove the stale {}: {e}", socket.display()))
        })?;
    }
    Ok(())
}

/// libvirtd's refusal keeps its message; a lost connection or a call
/// without an answer is an unreachable hypervisor.
pub(crate) fn backend_error(operation: &'static str, e: RpcError) -> BackendError {
    match e {
        RpcError::Remote(e) => BackendError::Refused {
            operation,
            chain: vec![format!("libvirt: {e}")],
        },
        other => BackendError::Unreachable {
            operation,
            detail: format!("libvirtd: {other}"),
        },
    }
}

impl LibvirtBackend {
    /// The libvirt domain's name (`<namespace>_<name>`).
    pub fn domain_name(&self) -> &str {
        &self.inner.conn.name
    }

    async fn call<F, Fut>(&self, operation: &'static str, f: F) -> Result<(), BackendError>
    where
        F: FnOnce(Arc<Client>, DomainRef) -> Fut,
        Fut: std::future::Future<Output = Result<(), RpcError>>,
    {
        let conn = &self.inner.conn;
        let client = conn.client(operation)?;
        f(client, conn.dom.clone())
            .await
            .map_err(|e| backend_error(operation, e))
    }
}

impl Backend for LibvirtBackend {
    async fn boot(&self) -> Result<(), BackendError> {
        self.call("boot (resume the paused domain)", |c, d| async move {
            c.resume(&d).await
        })
        .await
    }

    async fn pause(&self) -> Result<(), BackendError> {
        self.call("pause", |c, d| async move { c.suspend(&d).await })
            .await
    }

    async fn resume(&self) -> Result<(), BackendError> {
        self.call("resume", |c, d| async move { c.resume(&d).await })
            .await
    }

    /// A hard reset, like Cloud Hypervisor's `vm.reboot`: it works whether or
    /// not the guest listens to ACPI.
    async fn reboot(&self) -> Result<(), BackendError> {
        self.call("reboot (reset)", |c, d| async move { c.reset(&d).await })
            .await
    }

    /// libvirt refuses the power button of a paused domain ("domain is not
    /// running"); the runner destroys at once when the power button fails.
    async fn power_button(&self) -> Result<(), BackendError> {
        self.call("ACPI power button", |c, d| async move {
            c.shutdown_flags(&d, flags::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                .await
        })
        .await
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        self.call("destroy", |c, d| async move { c.destroy(&d).await })
            .await
    }

    /// QEMU's chardev keeps `virt-serial0` across reboots.
    async fn console(&self) -> Result<ConsoleSource, BackendError> {
        Ok(ConsoleSource::ServedByHypervisor)
    }

    /// Destroys the domain if it still runs, over the launcher's own
    /// connection and without blocking the runtime, so that `Drop` has
    /// nothing left to ask libvirtd.
    async fn close(&self) {
        let conn = &self.inner.conn;
        let Ok(client) = conn.client("close") else {
            return; // Reconnecting: Drop tries a fresh connection.
        };
        let check = tokio::time::timeout(CLEANUP_TIMEOUT, async {
            if client.is_active(&conn.dom).await? {
                tracing::warn!(domain = %conn.name,
                    "destroying the domain the launcher leaves behind");
                client.destroy(&conn.dom).await?;
            }
            Ok::<(), RpcError>(())
        })
        .await;
        match check {
            Ok(Ok(())) => self
                .inner
                .closed
                .store(true, std::sync::atomic::Ordering::SeqCst),
            Ok(Err(e)) => tracing::debug!(error = %e, "closing the domain; Drop retries"),
            Err(_) => tracing::debug!("libvirtd did not answer in time; Drop retries"),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.abort();
        }
        let conn = &self.conn;
        // Destroyed explicitly while the auto-destroy connection is still
        // open, so the launcher exits only once QEMU is gone; closing that
        // connection afterwards would destroy it too. Normally `close` did
        // this already, on the runtime; this blocking path is the fallback.
        let closed = self.closed.load(std::sync::atomic::Ordering::SeqCst);
        match (!closed).then(|| BlockingClient::connect(&conn.uri, CLEANUP_TIMEOUT)) {
            None => {}
            Some(Ok(mut client)) => {
                if client.is_active(&conn.dom).unwrap_or(false) {
                    tracing::warn!(domain = %conn.name,
                        "destroying the domain the launcher leaves behind");
                    if let Err(e) = client.destroy(&conn.dom) {
                        tracing::error!(domain = %conn.name, error = %e, "destroy failed");
                    }
                }
                if let Err(e) = client.close() {
                    tracing::debug!(error = %e, "closing the cleanup connection to libvirtd");
                }
            }
            Some(Err(e)) => tracing::error!(domain = %conn.name, uri = %conn.uri, error = %e,
                "cannot reach libvirtd to destroy the domain; its auto-destroy applies \
                 when the launcher's connection closes"),
        }
        conn.set_client(None);
        if let Some(nvram) = &self.nvram_to_remove {
            match std::fs::remove_file(nvram) {
                Ok(()) => tracing::debug!(path = %nvram.display(), "NVRAM copy removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %nvram.display(), error = %e,
                    "cannot remove the VM's NVRAM copy"),
            }
        }
        crate::util::remove_socket(&self.vnc_socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle(callback_id: i32, event: i32, detail: i32) -> Notice {
        Notice::Event(DomainEvent::Lifecycle {
            callback_id,
            dom: DomainRef {
                name: "default_tiny".into(),
                uuid: [0; 16],
                id: 1,
            },
            event,
            detail,
        })
    }

    /// A link whose libvirtd is gone for good: reconnecting fails.
    fn unreachable_conn() -> Arc<Conn> {
        let dir = std::env::temp_dir().join(format!("no-libvirtd-{}", std::process::id()));
        Arc::new(Conn {
            endpoint: Endpoint {
                socket: dir.join("libvirt-sock"),
                name: "qemu:///system".into(),
            },
            uri: "qemu:///system".into(),
            dom: DomainRef {
                name: "default_tiny".into(),
                uuid: [0; 16],
                id: 1,
            },
            name: "default_tiny".into(),
            call_timeout: Duration::from_millis(200),
            client: Mutex::new(None),
        })
    }

    async fn forwarded(notices: Vec<Notice>) -> Vec<Event> {
        let (ntx, nrx) = mpsc::unbounded_channel();
        for n in notices {
            ntx.send(n).unwrap();
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        // `forward` ends (dropping `tx`) at the last event; keeping `ntx`
        // open proves it does not wait for more.
        forward(
            unreachable_conn(),
            nrx,
            CallbackIds {
                lifecycle: 7,
                reboot: 8,
            },
            tx,
            Duration::from_millis(600),
        )
        .await;
        let mut out = Vec::new();
        while let Some(e) = rx.recv().await {
            out.push(e);
        }
        drop(ntx);
        out
    }

    #[tokio::test]
    async fn lost_libvirtd_connection_is_the_hypervisor_dying_and_ends_the_events() {
        let events = forwarded(vec![
            lifecycle(7, 2, 0), // STARTED/BOOTED
            lifecycle(7, 3, 0), // SUSPENDED/PAUSED (start paused)
            lifecycle(7, 4, 0), // RESUMED/UNPAUSED: the boot
            Notice::Closed("libvirtd closed the connection".into()),
        ])
        .await;
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0], Event::Booted);
        let Event::HypervisorDied { detail } = &events[1] else {
            panic!("{events:?}");
        };
        assert!(
            detail.contains("libvirtd closed the connection")
                && detail.contains("could not reconnect within"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn suspended_without_a_telling_detail_asks_libvirtd_and_falls_back_to_unknown() {
        let events = forwarded(vec![
            lifecycle(7, 4, 0), // the boot
            lifecycle(7, 3, 2), // SUSPENDED/IOERROR
            lifecycle(7, 4, 0),
            lifecycle(7, 3, 6), // SUSPENDED/API_ERROR: GET_STATE fails here
            lifecycle(7, 5, 1), // STOPPED/DESTROYED
        ])
        .await;
        assert_eq!(
            events,
            vec![
                Event::Booted,
                Event::Suspended {
                    reason: crate::lifecycle::Reason::IOError
                },
                Event::Resumed,
                Event::Suspended {
                    reason: crate::lifecycle::Reason::Unknown
                },
                Event::Destroyed,
            ]
        );
    }

    /// The CREATE_XML race against the real libvirtd: the second create of
    /// the same domain (same name, or another name with the same UUID) is
    /// refused and reported as an existing domain; the first one is
    /// untouched and goes away with its creator's connection.
    #[tokio::test]
    async fn second_create_of_the_same_domain_is_already_exists_on_the_real_libvirtd() {
        let uri = std::env::var("LIBVIRT_URI").unwrap_or_else(|_| DEFAULT_URI.into());
        let first = match Client::connect(&uri).await {
            Ok((c, _)) => c,
            Err(e) => {
                crate::libvirt::tests::skip(&format!("libvirtd not reachable at {uri}: {e}"));
                return;
            }
        };
        let (second, _) = Client::connect(&uri).await.unwrap();
        let name = format!("ch-launcher-race-{}", std::process::id());
        let uuid = format!("0badc0de-0000-4000-8000-{:012x}", std::process::id());
        let xml = |name: &str| {
            format!(
                "<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid>\
                 <memory unit='KiB'>65536</memory><os><type arch='x86_64'>hvm</type></os>\
                 <devices><memballoon model='none'/></devices></domain>"
            )
        };
        let autodestroy = flags::VIR_DOMAIN_START_PAUSED | flags::VIR_DOMAIN_START_AUTODESTROY;
        let dom = first.create_xml(&xml(&name), autodestroy).await.unwrap();
        for other in [name.clone(), format!("{name}-renamed")] {
            let err = second
                .create_xml(&xml(&other), autodestroy)
                .await
                .unwrap_err();
            let mapped = create_failed(&name, &uri, err).to_string();
            assert!(
                mapped.contains(&format!(
                    "domain {name} already exists under {uri} (another launcher?)"
                )),
                "{mapped}"
            );
        }
        assert!(first.is_active(&dom).await.unwrap());
        drop(first);
        // Auto-destroy: the creator's connection is gone, so is the domain.
        let mut gone = false;
        for _ in 0..50 {
            if second.lookup_by_name(&name).await.unwrap().is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "{name} outlived its creator's connection");
    }

    #[tokio::test]
    async fn events_of_other_callbacks_are_ignored_and_stopped_is_the_last() {
        let events = forwarded(vec![
            lifecycle(99, 4, 0), // someone else's callback id
            lifecycle(7, 4, 0),
            Notice::Event(DomainEvent::Reboot {
                callback_id: 8,
                dom: DomainRef {
                    name: "default_tiny".into(),
                    uuid: [0; 16],
                    id: 1,
                },
            }),
            lifecycle(7, 5, 0), // STOPPED/SHUTDOWN
            lifecycle(7, 4, 0), // nothing after the last event
        ])
        .await;
        assert_eq!(
            events,
            vec![Event::Booted, Event::Rebooted, Event::GuestPoweredOff]
        );
    }
}
