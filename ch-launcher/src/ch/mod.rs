//! The Cloud Hypervisor backend: one `cloud-hypervisor` process per VM,
//! driven over its REST API socket, watched through its event monitor.
//!
//! - [`config`]: pure `Domain -> VmConfig` translation (`ch-launcher render`).
//! - [`process`]: spawning the VMM on an API socket the launcher already
//!   listens on, and its first answer raced against its exit.
//! - [`api`]: API calls with CH's error chain kept.
//! - [`events`]: event-monitor parsing and the lifecycle mapping.
//! - [`driver`]: [`create`], the launch sequence.
//!
//! [`ChVm`] is the [`Backend`] over a created VM.

pub mod api;
pub mod config;
pub mod driver;
pub mod events;
pub mod process;

pub use config::{render_json, vm_config, ConfigError, ConfigErrors, HostInputs, SerialMode};
pub use driver::{create, ChOptions, CreateError};

use crate::backend::{Backend, BackendError, ConsoleSource};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// After SIGKILL, how long the VMM may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// A VM under a `cloud-hypervisor` process started by [`create`].
pub struct ChVm {
    api: api::Api,
    pid: Option<u32>,
    stop_requested: Arc<AtomicBool>,
    kill: Arc<Notify>,
    exited: watch::Receiver<Option<Result<ExitStatus, String>>>,
    stop_timeout: Duration,
}

impl ChVm {
    /// The VMM's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Whether the VMM process is gone (and its last events were delivered).
    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Waits up to `limit` for the VMM to be gone.
    async fn wait_exit(&self, limit: Duration) -> bool {
        let mut exited = self.exited.clone();
        // A closed channel means the monitor is gone: nothing left to wait for.
        let gone = async move { exited.wait_for(Option::is_some).await.map(|_| ()) };
        tokio::time::timeout(limit, gone).await.is_ok()
    }
}

impl Backend for ChVm {
    async fn boot(&self) -> Result<(), BackendError> {
        self.api.boot().await
    }
    async fn pause(&self) -> Result<(), BackendError> {
        self.api.pause().await
    }
    async fn resume(&self) -> Result<(), BackendError> {
        self.api.resume().await
    }
    async fn reboot(&self) -> Result<(), BackendError> {
        self.api.reboot().await
    }
    async fn power_button(&self) -> Result<(), BackendError> {
        self.api.power_button().await
    }
    /// ACPI memory hotplug (the launcher's `hotplug_method`) adds memory in
    /// 128 MiB sections and cannot unplug it.
    fn memory_hotplug(&self) -> (u64, bool) {
        (config::ACPI_MEMORY_BLOCK, false)
    }
    async fn resize(&self, plan: crate::hotplug::ResizePlan) -> Result<(), BackendError> {
        self.api.resize(plan.vcpus, plan.memory).await
    }
    async fn attach_disk(
        &self,
        name: &str,
        path: &std::path::Path,
        readonly: bool,
    ) -> Result<Option<String>, BackendError> {
        let disk = cloud_hypervisor_client::models::DiskConfig {
            path: Some(path.display().to_string()),
            readonly: Some(readonly),
            id: Some(name.to_string()),
            // Said, not guessed: CH's probing is deprecated and turns off
            // writes to sector 0 of a raw image.
            image_type: Some(cloud_hypervisor_client::models::ImageType::Raw),
            ..Default::default()
        };
        let info = self.api.add_disk(disk).await?;
        Ok(Some(info.bdf))
    }
    async fn detach_disk(&self, name: &str) -> Result<(), BackendError> {
        self.api.remove_device(name).await
    }
    async fn attach_interface(
        &self,
        name: &str,
        tap: &str,
        mac: Option<&str>,
    ) -> Result<Option<String>, BackendError> {
        let net = cloud_hypervisor_client::models::NetConfig {
            tap: Some(tap.to_string()),
            mac: mac.map(String::from),
            // The same id scheme as the spec's interfaces.
            id: Some(format!("net-{name}")),
            ..Default::default()
        };
        Ok(Some(self.api.add_net(net).await?.bdf))
    }
    async fn detach_interface(&self, name: &str) -> Result<(), BackendError> {
        self.api.remove_device(&format!("net-{name}")).await
    }
    /// CH re-creates its serial device on every reboot (guest- or
    /// API-initiated): a new PTY, or its socket closed and bound again at the
    /// same path. `vm.info` names the current one.
    async fn console(&self) -> Result<ConsoleSource, BackendError> {
        let info = self.api.info().await?;
        Ok(driver::console_source(info.config.serial.as_ref()))
    }

    /// Shuts the VM down and the VMM with it; SIGKILLs the VMM when its API
    /// is dead or it does not exit within the stop timeout. The resulting
    /// `vm:shutdown` (or the exit) is reported as `Destroyed`.
    async fn destroy(&self) -> Result<(), BackendError> {
        self.stop_requested.store(true, Ordering::SeqCst);
        if self.has_exited() {
            return Ok(());
        }
        // Refusals are expected on the way (a VM that never booted is "not
        // running"); only an unreachable API ends the orderly path.
        let orderly = async {
            proceeds(self.api.shutdown().await)
                && proceeds(self.api.delete().await)
                && proceeds(self.api.shutdown_vmm().await)
        };
        let answered = tokio::time::timeout(self.stop_timeout, orderly)
            .await
            .unwrap_or(false);
        if answered && self.wait_exit(self.stop_timeout).await {
            return Ok(());
        }
        self.kill.notify_one();
        if self.wait_exit(KILL_WAIT).await {
            Ok(())
        } else {
            Err(BackendError::Host(format!(
                "cloud-hypervisor (pid {:?}) did not exit after SIGKILL",
                self.pid
            )))
        }
    }
}

/// Whether an orderly stop can go on after one API step.
fn proceeds(result: Result<(), BackendError>) -> bool {
    match result {
        Ok(()) => true,
        Err(e @ BackendError::Refused { .. }) => {
            tracing::debug!("{e}");
            true
        }
        Err(e) => {
            tracing::warn!("{e}; killing cloud-hypervisor");
            false
        }
    }
}
