//! The libvirt driver: defines the rendered domain in libvirtd, starts it
//! paused, forwards its lifecycle events, and undefines it when the launcher
//! lets go of it.
//!
//! The `virt` crate's calls block on libvirtd, so every call runs on
//! `tokio::task::spawn_blocking`. Domain events need libvirt's event loop:
//! one process-wide thread runs `virEventRunDefaultImpl`, registered before
//! the first connection is opened. The `virt` crate (0.5) does not expose
//! domain event registration, so [`Listener`] registers its callbacks with
//! `virt-sys` directly; that is the only `unsafe` code of the backend.
//!
//! The domain is created paused (`VIR_DOMAIN_START_PAUSED`) so that the
//! runner decides when the vCPUs first run ([`Backend::boot`]), exactly as on
//! the Cloud Hypervisor path. QEMU itself binds `virt-serial0` and writes
//! `virt-serial0-log` (through virtlogd), so the console is
//! [`ConsoleSource::ServedByHypervisor`].
//!
//! Cleanup: dropping the [`LibvirtBackend`] destroys the domain if it still
//! runs and undefines it (with its NVRAM unless the spec asked for
//! persistent EFI variables). A failure after `define` undefines too.

use super::events::{EventMapper, Mapped};
use super::launch_security::ConfidentialHost;
use super::render::{domain_name, render, RenderContext};
use crate::backend::{Backend, BackendError, ConsoleSource, Created};
use crate::lifecycle::Event;
use crate::paths::VmPaths;
use domain_model::{Boot, Domain};
use firmware::LibvirtFirmware;
use std::ffi::{c_int, c_void};
use std::os::unix::fs::FileTypeExt;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;
use virt::connect::Connect;
use virt::domain::Domain as VirtDomain;
use virt_sys as sys;

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
}

impl Default for LibvirtOptions {
    fn default() -> Self {
        LibvirtOptions {
            uri: DEFAULT_URI.to_owned(),
            firmware: None,
            confidential: ConfidentialHost::default(),
        }
    }
}

/// A domain defined and started (paused) in libvirtd.
pub struct LibvirtBackend {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Connect,
    dom: VirtDomain,
    name: String,
    uri: String,
    keep_nvram: bool,
    listener: Option<Registration>,
}

/// Renders `domain`, defines it under `opts.uri` and starts it paused.
pub async fn create(
    domain: &Domain,
    paths: &VmPaths,
    opts: &LibvirtOptions,
) -> Result<Created<LibvirtBackend>, BackendError> {
    let ctx = RenderContext {
        paths: paths.clone(),
        firmware: opts.firmware.clone(),
        confidential: opts.confidential.clone(),
    };
    let xml = render(domain, &ctx).map_err(|e| BackendError::Host(e.to_string()))?;
    prepare_host_files(domain, paths)?;
    let name = domain_name(domain);
    let uri = opts.uri.clone();
    let keep_nvram = matches!(
        domain.boot,
        Boot::Efi {
            persistent: true,
            ..
        }
    );
    let (tx, events) = mpsc::unbounded_channel();
    let inner =
        tokio::task::spawn_blocking(move || define_and_start(&uri, &name, &xml, keep_nvram, tx))
            .await
            .map_err(|e| BackendError::Host(format!("the libvirt worker thread failed: {e}")))??;
    Ok(Created {
        backend: LibvirtBackend {
            inner: Arc::new(inner),
        },
        events,
        console: ConsoleSource::ServedByHypervisor,
    })
}

fn define_and_start(
    uri: &str,
    name: &str,
    xml: &str,
    keep_nvram: bool,
    tx: mpsc::UnboundedSender<Event>,
) -> Result<Inner, BackendError> {
    ensure_event_loop()?;
    let conn = Connect::open(Some(uri)).map_err(|e| BackendError::Unreachable {
        operation: "connect to libvirtd",
        detail: format!("{uri}: {}", e.message()),
    })?;
    // Without keepalive a dead libvirtd would go unnoticed until the next call.
    if let Err(e) = conn.set_keep_alive(5, 3) {
        tracing::debug!(error = %e.message(), "libvirt keepalive not available");
    }
    remove_leftover(&conn, name, uri)?;
    let dom = conn
        .define_domain_xml(xml)
        .map_err(|e| refused("define the domain", &e))?;
    tracing::info!(domain = name, uri, "libvirt domain defined");
    let mut inner = Inner {
        conn,
        dom,
        name: name.to_owned(),
        uri: uri.to_owned(),
        keep_nvram,
        listener: None,
    };
    // From here on, dropping `inner` undefines the domain.
    inner.listener = Some(Registration::new(&inner.conn, &inner.dom, tx)?);
    inner
        .dom
        .create_with_flags(sys::VIR_DOMAIN_START_PAUSED)
        .map_err(|e| refused("start the domain", &e))?;
    tracing::info!(domain = name, "libvirt domain started paused");
    Ok(inner)
}

/// A domain of the same name left behind by a launcher that could not clean
/// up (SIGKILL) is removed when it is shut off; a running one means another
/// launcher owns it.
fn remove_leftover(conn: &Connect, name: &str, uri: &str) -> Result<(), BackendError> {
    let Ok(old) = conn.lookup_domain_by_name(name) else {
        return Ok(());
    };
    if old.is_active().unwrap_or(true) {
        return Err(BackendError::Host(format!(
            "a libvirt domain named {name} is already running under {uri}; another launcher \
             runs this VM (stop it, or `virsh -c {uri} destroy {name}`)"
        )));
    }
    tracing::warn!(
        domain = name,
        "undefining a shut-off domain left from an earlier run"
    );
    old.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
        .map_err(|e| refused("undefine the leftover domain", &e))
}

/// Disks the spec wants created when missing, and no stale console socket
/// (QEMU must bind a fresh one).
fn prepare_host_files(domain: &Domain, paths: &VmPaths) -> Result<(), BackendError> {
    for disk in &domain.disks {
        let Some(capacity) = disk.source.create_with_capacity else {
            continue;
        };
        let path = &disk.source.path;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(file) => file.set_len(capacity).map_err(|e| {
                BackendError::Host(format!(
                    "{}: cannot size {} to {capacity} bytes: {e}",
                    disk.source.spec_path,
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(BackendError::Host(format!(
                    "{}: cannot create {}: {e}",
                    disk.source.spec_path,
                    path.display()
                )))
            }
        }
    }
    let socket = paths.serial_socket();
    if std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(&socket).map_err(|e| {
            BackendError::Host(format!("cannot remove the stale {}: {e}", socket.display()))
        })?;
    }
    Ok(())
}

fn refused(operation: &'static str, e: &virt::error::Error) -> BackendError {
    BackendError::Refused {
        operation,
        chain: vec![format!("libvirt: {}", e.message())],
    }
}

impl LibvirtBackend {
    /// The libvirt domain's name (`<namespace>_<name>`).
    pub fn domain_name(&self) -> &str {
        &self.inner.name
    }

    async fn call(
        &self,
        operation: &'static str,
        f: impl FnOnce(&VirtDomain) -> Result<(), virt::error::Error> + Send + 'static,
    ) -> Result<(), BackendError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner.dom).map_err(|e| refused(operation, &e)))
            .await
            .map_err(|e| BackendError::Unreachable {
                operation,
                detail: format!("the libvirt worker thread failed: {e}"),
            })?
    }
}

impl Backend for LibvirtBackend {
    async fn boot(&self) -> Result<(), BackendError> {
        self.call("boot (resume the paused domain)", |d| d.resume())
            .await
    }

    async fn pause(&self) -> Result<(), BackendError> {
        self.call("pause", |d| d.suspend()).await
    }

    async fn resume(&self) -> Result<(), BackendError> {
        self.call("resume", |d| d.resume()).await
    }

    /// A hard reset, like Cloud Hypervisor's `vm.reboot`: it works whether or
    /// not the guest listens to ACPI.
    async fn reboot(&self) -> Result<(), BackendError> {
        self.call("reboot (reset)", |d| d.reset()).await
    }

    async fn power_button(&self) -> Result<(), BackendError> {
        self.call("ACPI power button", |d| {
            d.shutdown_flags(sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        })
        .await
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        self.call("destroy", |d| d.destroy()).await
    }

    /// QEMU's chardev keeps `virt-serial0` across reboots.
    async fn console(&self) -> Result<ConsoleSource, BackendError> {
        Ok(ConsoleSource::ServedByHypervisor)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.dom.is_active().unwrap_or(false) {
            tracing::warn!(domain = %self.name, "destroying the domain the launcher leaves behind");
            if let Err(e) = self.dom.destroy() {
                tracing::error!(domain = %self.name, error = %e.message(), "destroy failed");
            }
        }
        if let Some(listener) = self.listener.take() {
            listener.deregister(&self.conn);
        }
        let flags = if self.keep_nvram {
            sys::VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
        } else {
            sys::VIR_DOMAIN_UNDEFINE_NVRAM
        };
        match self.dom.undefine_flags(flags) {
            Ok(()) => tracing::info!(domain = %self.name, "libvirt domain undefined"),
            Err(e) => tracing::error!(domain = %self.name, uri = %self.uri,
                error = %e.message(), "cannot undefine the libvirt domain"),
        }
    }
}

static EVENT_LOOP: OnceLock<Result<(), String>> = OnceLock::new();

/// libvirt delivers events only to processes that run its event loop, and
/// the loop must be registered before the first connection is opened.
pub(crate) fn ensure_event_loop() -> Result<(), BackendError> {
    let started = EVENT_LOOP.get_or_init(|| {
        // libvirt prints every error to stderr by default; ours are returned.
        virt::error::clear_error_callback();
        virt::event::event_register_default_impl()
            .map_err(|e| format!("cannot start libvirt's event loop: {}", e.message()))?;
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if let Err(e) = virt::event::event_run_default_impl() {
                    tracing::error!(error = %e.message(), "libvirt event loop iteration failed");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            })
            .map(drop)
            .map_err(|e| format!("cannot start the libvirt event thread: {e}"))
    });
    started.clone().map_err(BackendError::Host)
}

/// Where libvirt's callbacks deliver: the mapper and the sending half of the
/// backend's event channel, dropped after the last event.
struct Listener {
    mapper: Mutex<EventMapper>,
    tx: Mutex<Option<mpsc::UnboundedSender<Event>>>,
}

impl Listener {
    fn deliver(&self, mapped: Mapped) {
        let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(event), Some(sender)) = (mapped.event, tx.as_ref()) {
            tracing::debug!(?event, "libvirt event");
            // The receiver is gone only when the runner stopped listening.
            let _ = sender.send(event);
        }
        if mapped.last {
            *tx = None;
        }
    }

    fn mapper(&self) -> std::sync::MutexGuard<'_, EventMapper> {
        self.mapper.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The callbacks registered with libvirt for one domain.
struct Registration {
    callback_ids: Vec<c_int>,
    close_registered: bool,
}

type LifecycleCallback =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    _dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the `Arc<Listener>` handed to libvirt in
    // `Registration::new`; libvirt keeps it alive until `free_listener`.
    let listener = unsafe { &*(opaque as *const Listener) };
    let mapped = listener.mapper().lifecycle(event, detail);
    listener.deliver(mapped);
    0
}

unsafe extern "C" fn on_reboot(
    _conn: sys::virConnectPtr,
    _dom: sys::virDomainPtr,
    opaque: *mut c_void,
) {
    // SAFETY: as in `on_lifecycle`.
    let listener = unsafe { &*(opaque as *const Listener) };
    let mapped = listener.mapper().reboot();
    listener.deliver(mapped);
}

unsafe extern "C" fn on_close(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    // SAFETY: as in `on_lifecycle`.
    let listener = unsafe { &*(opaque as *const Listener) };
    let why = match u32::try_from(reason) {
        Ok(sys::VIR_CONNECT_CLOSE_REASON_EOF) => "libvirtd closed the connection",
        Ok(sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE) => "libvirtd stopped answering keepalives",
        Ok(sys::VIR_CONNECT_CLOSE_REASON_CLIENT) => return,
        _ => "the connection to libvirtd failed",
    };
    listener.deliver(Mapped {
        event: Some(Event::HypervisorDied {
            detail: format!("{why}; the VM can no longer be controlled"),
        }),
        last: true,
    });
}

unsafe extern "C" fn free_listener(opaque: *mut c_void) {
    // SAFETY: each registration handed libvirt one strong count made by
    // `Arc::into_raw`; libvirt calls this exactly once per registration.
    drop(unsafe { Arc::from_raw(opaque as *const Listener) });
}

impl Registration {
    fn new(
        conn: &Connect,
        dom: &VirtDomain,
        tx: mpsc::UnboundedSender<Event>,
    ) -> Result<Registration, BackendError> {
        let listener = Arc::new(Listener {
            mapper: Mutex::new(EventMapper::default()),
            tx: Mutex::new(Some(tx)),
        });
        let mut reg = Registration {
            callback_ids: Vec::new(),
            close_registered: false,
        };
        // SAFETY: libvirt's C API takes every domain event callback as the
        // generic type and calls it with the signature of its event id (the
        // C macro VIR_DOMAIN_EVENT_CALLBACK is the same cast).
        let lifecycle: sys::virConnectDomainEventGenericCallback = Some(unsafe {
            std::mem::transmute::<
                LifecycleCallback,
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
            >(on_lifecycle)
        });
        let wanted = [
            (sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle),
            (
                sys::VIR_DOMAIN_EVENT_ID_REBOOT,
                Some(on_reboot as unsafe extern "C" fn(_, _, _)),
            ),
        ];
        for (id, callback) in wanted {
            let opaque = Arc::into_raw(listener.clone()) as *mut c_void;
            // SAFETY: `conn` and `dom` are live handles; on success libvirt
            // owns `opaque` and releases it through `free_listener`.
            let rc = unsafe {
                sys::virConnectDomainEventRegisterAny(
                    conn.as_ptr(),
                    dom.as_ptr(),
                    id as c_int,
                    callback,
                    opaque,
                    Some(free_listener),
                )
            };
            if rc < 0 {
                // SAFETY: libvirt did not take `opaque` on failure.
                unsafe { free_listener(opaque) };
                let e = virt::error::Error::last_error();
                reg.deregister(conn);
                return Err(refused("subscribe to domain events", &e));
            }
            reg.callback_ids.push(rc);
        }
        let opaque = Arc::into_raw(listener) as *mut c_void;
        // SAFETY: as above; only remote connections support close callbacks,
        // so a failure here just means no notice of a lost libvirtd.
        let rc = unsafe {
            sys::virConnectRegisterCloseCallback(
                conn.as_ptr(),
                Some(on_close),
                opaque,
                Some(free_listener),
            )
        };
        if rc < 0 {
            unsafe { free_listener(opaque) };
        } else {
            reg.close_registered = true;
        }
        Ok(reg)
    }

    fn deregister(mut self, conn: &Connect) {
        for id in self.callback_ids.drain(..) {
            // SAFETY: `id` came from a successful registration on `conn`.
            if unsafe { sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id) } < 0 {
                tracing::warn!(id, "cannot deregister a libvirt event callback");
            }
        }
        if self.close_registered {
            // SAFETY: registered on `conn` with this callback in `new`.
            unsafe { sys::virConnectUnregisterCloseCallback(conn.as_ptr(), Some(on_close)) };
        }
    }
}
