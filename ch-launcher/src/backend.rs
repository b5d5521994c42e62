//! What every backend offers once its VM is started, so that the runner, the
//! control socket and the CLI are written once for all hypervisors.

use std::future::Future;

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
}

/// Control over a started VM. Lifecycle changes that result from these calls
/// are reported through the backend's event channel, not by the return value.
pub trait Backend: Send + Sync {
    fn pause(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    fn resume(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    fn reboot(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Ask the guest to power off (ACPI power button).
    fn power_button(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Stop the VM now, without the guest's cooperation.
    fn destroy(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
}
