//! Where a VM's sockets and logs live: `<private dir>/<vmi uid>/...`, the
//! layout virt-handler expects from virt-launcher.

use std::path::{Path, PathBuf};

/// The default `--private-dir`, as in a KubeVirt virt-launcher pod.
pub const DEFAULT_PRIVATE_DIR: &str = "/var/run/kubevirt-private";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// `<private dir>/<uid>`.
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn new(private_dir: &Path, uid: &str) -> Self {
        VmPaths {
            dir: private_dir.join(uid),
        }
    }
    /// The serial console socket virt-handler and `virtctl console` connect to.
    pub fn serial_socket(&self) -> PathBuf {
        self.dir.join("virt-serial0")
    }
    /// Every byte the guest wrote to its serial console, from the first one.
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("virt-serial0-log")
    }
    /// The launcher's control socket (pause, resume, reboot, stop, status).
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("launcher-sock")
    }
    /// Cloud Hypervisor's REST API socket.
    pub fn ch_api_socket(&self) -> PathBuf {
        self.dir.join("ch-api.sock")
    }
    /// The unix socket Cloud Hypervisor serves the guest's serial port on
    /// (its `Socket` serial mode); the launcher is its only client.
    pub fn ch_serial_socket(&self) -> PathBuf {
        self.dir.join("ch-serial.sock")
    }
    /// Cloud Hypervisor's event monitor output.
    pub fn ch_event_monitor(&self) -> PathBuf {
        self.dir.join("ch-events.jsonstream")
    }
}
