//! Where a VM's sockets and logs live: `<private dir>/<vmi uid>/...`, the
//! layout virt-handler expects from virt-launcher.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The default `--private-dir`, as in a KubeVirt virt-launcher pod.
pub const DEFAULT_PRIVATE_DIR: &str = "/var/run/kubevirt-private";

/// The longest unix socket path: `sun_path` is 108 bytes with its NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// A socket path the kernel cannot bind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("socket path {} is {len} bytes, longer than the {MAX_SOCKET_PATH} bytes a unix \
socket path may have (sun_path is 108 bytes with its NUL); choose a shorter --private-dir",
    path.display())]
pub struct SocketPathTooLong {
    pub path: PathBuf,
    pub len: usize,
}

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
    /// The lock a launcher holds for as long as it runs this VM.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join("launcher.lock")
    }
    /// Every unix socket in the VM directory, whichever backend binds it.
    pub fn sockets(&self) -> [PathBuf; 4] {
        [
            self.serial_socket(),
            self.control_socket(),
            self.ch_api_socket(),
            self.ch_serial_socket(),
        ]
    }
    /// Checks every socket path against the `sun_path` limit, so a too deep
    /// `--private-dir` is refused before anything is created or started.
    pub fn check_socket_paths(&self) -> Result<(), SocketPathTooLong> {
        for path in self.sockets() {
            let len = path.as_os_str().as_bytes().len();
            if len > MAX_SOCKET_PATH {
                return Err(SocketPathTooLong { path, len });
            }
        }
        Ok(())
    }
    /// Cloud Hypervisor's event monitor output.
    pub fn ch_event_monitor(&self) -> PathBuf {
        self.dir.join("ch-events.jsonstream")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_socket_path_decides_and_the_error_names_it_and_the_limit() {
        let uid = "0b5bd7a4-7fa6-4d3c-9e0b-3a1f7c5e2d10";
        // `/<uid>/ch-serial.sock` is the longest: 1 + 36 + 1 + 14 = 52 bytes.
        let fits = "/".to_string() + &"d".repeat(MAX_SOCKET_PATH - 52 - 1);
        let paths = VmPaths::new(Path::new(&fits), uid);
        assert_eq!(paths.check_socket_paths(), Ok(()));
        assert_eq!(paths.ch_serial_socket().as_os_str().len(), MAX_SOCKET_PATH);

        let too_long = fits + "d";
        let paths = VmPaths::new(Path::new(&too_long), uid);
        let err = paths.check_socket_paths().unwrap_err();
        assert_eq!(err.path, paths.ch_serial_socket());
        assert_eq!(err.len, 108);
        let message = err.to_string();
        assert!(message.contains("ch-serial.sock"), "{message}");
        assert!(message.contains("107 bytes"), "{message}");
        assert!(message.contains("--private-dir"), "{message}");
    }
}
