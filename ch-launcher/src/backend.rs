//! What every backend offers once its VM is started, so that the runner, the
//! control socket and the CLI are written once for all hypervisors.

use crate::lifecycle::Event;
use std::future::Future;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// A failed backend operation, with the hypervisor's own explanation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The hypervisor refused the request; `chain` is its error chain,
    /// outermost cause first (Cloud Hypervisor's error array, libvirt's message).
    #[error("{operation} failed: {}", chain.join(": "))]
    Refused {
        operation: &'static str,
        chain: Vec<String>,
    },
    /// The hypervisor could not be reached or did not answer.
    #[error("{operation}: hypervisor unreachable: {detail}")]
    Unreachable {
        operation: &'static str,
        detail: String,
    },
    /// The host cannot run this VM (missing feature, file, device...).
    #[error("{0}")]
    Host(String),
    /// This backend does not do `operation` (yet), for `reason`.
    #[error("{operation} is not supported by this backend: {reason}")]
    Unsupported {
        operation: &'static str,
        reason: &'static str,
    },
}

/// Why the libvirt backend refuses changes at run time for now.
const NO_HOTPLUG: &str = "vCPU, memory and disk changes of a running VM are built for \
    Cloud Hypervisor only so far";

/// Control over a started VM. Lifecycle changes that result from these calls
/// are reported through the backend's event channel, not by the return value.
pub trait Backend: Send + Sync {
    /// Run the vCPUs of a created VM for the first time (or, after a
    /// `startStrategy: Paused` start, when the user resumes it).
    fn boot(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    fn pause(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    fn resume(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    fn reboot(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Ask the guest to power off (ACPI power button).
    fn power_button(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Stop the VM now, without the guest's cooperation.
    fn destroy(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Where the VM's serial console is now. Cloud Hypervisor re-creates its
    /// serial device on every reboot (a new PTY, or its socket closed and
    /// bound again), so the runner asks again after [`Event::Rebooted`] and
    /// reattaches its relay.
    fn console(&self) -> impl Future<Output = Result<ConsoleSource, BackendError>> + Send;
    /// Memory hotplug granularity in bytes, and whether the backend can take
    /// memory back from a running guest.
    fn memory_hotplug(&self) -> (u64, bool) {
        (1, false)
    }
    /// Sets the vCPU count and/or guest memory; limits were checked by
    /// [`crate::hotplug::Resources::plan_resize`].
    fn resize(
        &self,
        _plan: crate::hotplug::ResizePlan,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        async {
            Err(BackendError::Unsupported {
                operation: "resize",
                reason: NO_HOTPLUG,
            })
        }
    }
    /// Hot-adds `path` as a virtio disk with id `name`; returns where the
    /// guest finds it (a PCI address) when the hypervisor says.
    fn attach_disk(
        &self,
        _name: &str,
        _path: &std::path::Path,
        _readonly: bool,
    ) -> impl Future<Output = Result<Option<String>, BackendError>> + Send {
        async {
            Err(BackendError::Unsupported {
                operation: "attach-disk",
                reason: NO_HOTPLUG,
            })
        }
    }
    /// Hot-removes the disk `name` attached by [`Backend::attach_disk`].
    fn detach_disk(&self, _name: &str) -> impl Future<Output = Result<(), BackendError>> + Send {
        async {
            Err(BackendError::Unsupported {
                operation: "detach-disk",
                reason: NO_HOTPLUG,
            })
        }
    }
    /// Hot-adds a virtio-net interface on `tap`; returns its guest address.
    fn attach_interface(
        &self,
        _name: &str,
        _tap: &str,
        _mac: Option<&str>,
    ) -> impl Future<Output = Result<Option<String>, BackendError>> + Send {
        async {
            Err(BackendError::Unsupported {
                operation: "attach-interface",
                reason: NO_HOTPLUG,
            })
        }
    }
    /// Hot-removes an interface attached by [`Backend::attach_interface`].
    fn detach_interface(
        &self,
        _name: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        async {
            Err(BackendError::Unsupported {
                operation: "detach-interface",
                reason: NO_HOTPLUG,
            })
        }
    }
    /// Releases what the backend holds, on the runtime, once the runner is
    /// done with the VM (every exit path calls it). A backend's `Drop` stays
    /// the fallback for a runner that never got here, and may then block.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Where the guest's serial console comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleSource {
    /// A PTY the launcher opens before boot and relays to `virt-serial0`,
    /// logging every byte to `virt-serial0-log` (Cloud Hypervisor's `Pty`
    /// serial mode). Output the launcher has not read when the hypervisor
    /// closes the PTY (at power-off) is discarded by the kernel.
    Pty(PathBuf),
    /// A unix socket the hypervisor listens on; the launcher connects as its
    /// client and relays and logs like a PTY (Cloud Hypervisor's `Socket`
    /// serial mode). Nothing is lost: the hypervisor holds output until a
    /// client connects, and what it wrote before closing stays readable.
    UnixSocket(PathBuf),
    /// The hypervisor binds `virt-serial0` and writes the log itself
    /// (libvirt + QEMU with a unix socket chardev and a log file).
    ServedByHypervisor,
    /// The VM has no serial console.
    None,
}

/// A VM that exists in its hypervisor but has not booted yet: the runner
/// attaches the console first (a PTY loses output written before anyone
/// holds it), then
/// calls [`Backend::boot`] unless the spec asked to start paused.
pub struct Created<B: Backend> {
    pub backend: B,
    /// Everything the backend observes, in order, until the VM is gone.
    /// The channel closes after the hypervisor is gone.
    pub events: mpsc::UnboundedReceiver<Event>,
    pub console: ConsoleSource,
}
