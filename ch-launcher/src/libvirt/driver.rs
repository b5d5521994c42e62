//! The libvirt driver: defines the rendered domain in libvirtd, starts it
//! paused, forwards its lifecycle events, and undefines it when the launcher
//! lets go of it.
//!
//! It speaks libvirt's RPC protocol itself ([`super::rpc`]) over the
//! daemon's unix socket instead of linking `libvirt.so`, whose dozens of
//! shared libraries alone cost more memory than the launcher's budget. One
//! connection carries the calls and the domain events (registered with
//! `CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY` for this domain only); a
//! task maps them onto [`Event`]s.
//!
//! The domain is created paused (`VIR_DOMAIN_START_PAUSED`) so that the
//! runner decides when the vCPUs first run ([`Backend::boot`]), exactly as on
//! the Cloud Hypervisor path. QEMU itself binds `virt-serial0` and writes
//! `virt-serial0-log` (through virtlogd), so the console is
//! [`ConsoleSource::ServedByHypervisor`].
//!
//! Cleanup: dropping the [`LibvirtBackend`] destroys the domain if it still
//! runs and undefines it (with its NVRAM unless the spec asked for
//! persistent EFI variables). A failure after `define` undefines too. `Drop`
//! cannot await, so the cleanup opens a short blocking connection of its
//! own ([`BlockingClient`]): it works whatever state the runtime is in.
use super::events::{EventMapper, Mapped};
use super::launch_security::ConfidentialHost;
use super::render::{domain_name, render, RenderContext};
use super::rpc::{flags, BlockingClient, Client, DomainEvent, DomainRef, Notice, RpcError};
use crate::backend::{Backend, BackendError, ConsoleSource, Created};
use crate::lifecycle::Event;
use crate::paths::VmPaths;
use domain_model::{Boot, Domain};
use firmware::LibvirtFirmware;
use std::os::unix::fs::FileTypeExt;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the cleanup in `Drop` waits for each libvirtd answer: a
/// destroy may take QEMU's shutdown, but a hung daemon must not hang the
/// launcher's exit.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

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
    inner: Inner,
}

struct Inner {
    client: Client,
    dom: DomainRef,
    name: String,
    uri: String,
    keep_nvram: bool,
    /// Maps the connection's notices onto the backend's events.
    forwarder: Option<tokio::task::JoinHandle<()>>,
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
    let uri = opts.uri.as_str();
    let keep_nvram = matches!(
        domain.boot,
        Boot::Efi {
            persistent: true,
            ..
        }
    );
    let (client, notices) = Client::connect(uri)
        .await
        .map_err(|e| BackendError::Unreachable {
            operation: "connect to libvirtd",
            detail: format!("{uri}: {e}"),
        })?;
    match client.lib_version().await {
        Ok(v) => tracing::debug!(
            uri,
            socket = %client.endpoint().socket.display(),
            libvirt = format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000),
            "connected to libvirtd"
        ),
        Err(e) => tracing::debug!(error = %e, "libvirt version unknown"),
    }
    remove_leftover(&client, &name, uri).await?;
    let dom = client
        .define_xml(&xml)
        .await
        .map_err(|e| failed("define the domain", e))?;
    tracing::info!(domain = name, uri, "libvirt domain defined");
    // From here on, dropping `inner` undefines the domain.
    let mut inner = Inner {
        client,
        dom,
        name,
        uri: uri.to_owned(),
        keep_nvram,
        forwarder: None,
    };
    let (tx, events) = mpsc::unbounded_channel();
    let lifecycle = inner
        .client
        .register_event(flags::VIR_DOMAIN_EVENT_ID_LIFECYCLE, &inner.dom)
        .await
        .map_err(|e| failed("subscribe to domain events", e))?;
    let reboot = inner
        .client
        .register_event(flags::VIR_DOMAIN_EVENT_ID_REBOOT, &inner.dom)
        .await
        .map_err(|e| failed("subscribe to domain events", e))?;
    inner.forwarder = Some(tokio::spawn(forward(notices, lifecycle, reboot, tx)));
    inner
        .client
        .create_with_flags(&inner.dom, flags::VIR_DOMAIN_START_PAUSED)
        .await
        .map_err(|e| failed("start the domain", e))?;
    tracing::info!(domain = %inner.name, "libvirt domain started paused");
    Ok(Created {
        backend: LibvirtBackend { inner },
        events,
        console: ConsoleSource::ServedByHypervisor,
    })
}

/// Feeds the domain's events through the [`EventMapper`] until the last
/// one, or until the connection ends (which is the hypervisor's death as
/// far as the launcher can tell: it can no longer control the VM).
async fn forward(
    mut notices: mpsc::UnboundedReceiver<Notice>,
    lifecycle_id: i32,
    reboot_id: i32,
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut mapper = EventMapper::default();
    while let Some(notice) = notices.recv().await {
        let mapped = match notice {
            Notice::Event(DomainEvent::Lifecycle {
                callback_id,
                event,
                detail,
                ..
            }) if callback_id == lifecycle_id => mapper.lifecycle(event, detail),
            Notice::Event(DomainEvent::Reboot { callback_id, .. }) if callback_id == reboot_id => {
                mapper.reboot()
            }
            Notice::Event(other) => {
                tracing::debug!(?other, "libvirt event of another callback ignored");
                continue;
            }
            Notice::Closed(reason) => Mapped {
                event: Some(Event::HypervisorDied {
                    detail: format!("{reason}; the VM can no longer be controlled"),
                }),
                last: true,
            },
        };
        if let Some(event) = mapped.event {
            tracing::debug!(?event, "libvirt event");
            // The receiver is gone only when the runner stopped listening.
            let _ = tx.send(event);
        }
        if mapped.last {
            // Dropping `tx` closes the channel: the hypervisor is gone.
            return;
        }
    }
}

/// A domain of the same name left behind by a launcher that could not clean
/// up (SIGKILL) is removed when it is shut off; a running one means another
/// launcher owns it.
async fn remove_leftover(client: &Client, name: &str, uri: &str) -> Result<(), BackendError> {
    let old = client
        .lookup_by_name(name)
        .await
        .map_err(|e| failed("look up a leftover domain", e))?;
    let Some(old) = old else {
        return Ok(());
    };
    if client.is_active(&old).await.unwrap_or(true) {
        return Err(BackendError::Host(format!(
            "a libvirt domain named {name} is already running under {uri}; another launcher \
             runs this VM (stop it, or `virsh -c {uri} destroy {name}`)"
        )));
    }
    tracing::warn!(
        domain = name,
        "undefining a shut-off domain left from an earlier run"
    );
    client
        .undefine_flags(&old, flags::VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
        .await
        .map_err(|e| failed("undefine the leftover domain", e))
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
/// libvirtd's refusal keeps its message; a lost connection is an
/// unreachable hypervisor.
fn failed(operation: &'static str, e: RpcError) -> BackendError {
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
        &self.inner.name
    }
}

impl Backend for LibvirtBackend {
    async fn boot(&self) -> Result<(), BackendError> {
        let i = &self.inner;
        i.client
            .resume(&i.dom)
            .await
            .map_err(|e| failed("boot (resume the paused domain)", e))
    }

    async fn pause(&self) -> Result<(), BackendError> {
        let i = &self.inner;
        i.client
            .suspend(&i.dom)
            .await
            .map_err(|e| failed("pause", e))
    }

    async fn resume(&self) -> Result<(), BackendError> {
        let i = &self.inner;
        i.client
            .resume(&i.dom)
            .await
            .map_err(|e| failed("resume", e))
    }

    /// A hard reset, like Cloud Hypervisor's `vm.reboot`: it works whether or
    /// not the guest listens to ACPI.
    async fn reboot(&self) -> Result<(), BackendError> {
        let i = &self.inner;
        i.client
            .reset(&i.dom)
            .await
            .map_err(|e| failed("reboot (reset)", e))
    }

    async fn power_button(&self) -> Result<(), BackendError> {
        let i = &self.inner;
        i.client
            .shutdown_flags(&i.dom, flags::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            .await
            .map_err(|e| failed("ACPI power button", e))
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        let i = &self.inner;
        i.client
            .destroy(&i.dom)
            .await
            .map_err(|e| failed("destroy", e))
    }

    /// QEMU's chardev keeps `virt-serial0` across reboots.
    async fn console(&self) -> Result<ConsoleSource, BackendError> {
        Ok(ConsoleSource::ServedByHypervisor)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.abort();
        }
        let undefine_flags = if self.keep_nvram {
            flags::VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
        } else {
            flags::VIR_DOMAIN_UNDEFINE_NVRAM
        };
        let mut client = match BlockingClient::connect(&self.uri, CLEANUP_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(domain = %self.name, uri = %self.uri, error = %e,
                    "cannot reach libvirtd to undefine the domain");
                return;
            }
        };
        if client.is_active(&self.dom).unwrap_or(false) {
            tracing::warn!(domain = %self.name, "destroying the domain the launcher leaves behind");
            if let Err(e) = client.destroy(&self.dom) {
                tracing::error!(domain = %self.name, error = %e, "destroy failed");
            }
        }
        match client.undefine_flags(&self.dom, undefine_flags) {
            Ok(()) => tracing::info!(domain = %self.name, "libvirt domain undefined"),
            Err(e) => tracing::error!(domain = %self.name, uri = %self.uri,
                error = %e, "cannot undefine the libvirt domain"),
        }
        if let Err(e) = client.close() {
            tracing::debug!(error = %e, "closing the cleanup connection to libvirtd");
        }
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

    async fn forwarded(notices: Vec<Notice>) -> Vec<Event> {
        let (ntx, nrx) = mpsc::unbounded_channel();
        for n in notices {
            ntx.send(n).unwrap();
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        // `forward` ends (dropping `tx`) at the last event; keeping `ntx`
        // open proves it does not wait for more.
        forward(nrx, 7, 8, tx).await;
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
            detail.contains("libvirtd closed the connection"),
            "{detail}"
        );
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
