//! virtiofsd, one per shared filesystem, started and supervised by the
//! launcher for Cloud Hypervisor (which speaks vhost-user to it over a unix
//! socket in the VM directory). Each dies with the launcher
//! (`PR_SET_PDEATHSIG`) and is stopped when [`Daemons`] is dropped.
//!
//! Both virtiofsd implementations are driven: the Rust one
//! (`--shared-dir`, `--sandbox`) and QEMU's C one shipped with Debian's
//! QEMU (`-o source=`, `-o sandbox=`), told apart by their `--help`. Both
//! run with `sandbox=chroot`, the mode meant for containers (no new user or
//! mount namespaces needed).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set to choose the virtiofsd binary.
pub const VIRTIOFSD_ENV: &str = "VIRTIOFSD_BIN";

/// Where virtiofsd is looked for when [`VIRTIOFSD_ENV`] is unset: Debian's
/// `virtiofsd` package, then QEMU's own.
const CANDIDATES: &[&str] = &[
    "/usr/libexec/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
    "/usr/bin/virtiofsd",
];

/// How long a virtiofsd may take to create its socket.
const READY_WAIT: Duration = Duration::from_secs(10);

/// The vhost-user socket of filesystem number `i` in the VM directory.
pub fn socket_path(vm_dir: &Path, i: usize) -> PathBuf {
    vm_dir.join(format!("virtiofs-{i}.sock"))
}

/// The running daemons; stopped and their sockets removed when dropped.
pub struct Daemons {
    children: Vec<(Child, PathBuf)>,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for (child, socket) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl Daemons {
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(c, _)| c.id()).collect()
    }
}

/// The virtiofsd to run: [`VIRTIOFSD_ENV`], else the first of the usual places.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(VIRTIOFSD_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no virtiofsd: looked in {} (install Debian's virtiofsd or QEMU, or set {VIRTIOFSD_ENV})",
                CANDIDATES.join(", ")
            )
        })
}

/// Starts one virtiofsd per filesystem of `domain` and waits until each
/// listens. On error, those already started are stopped.
pub fn start(domain: &domain_model::Domain, vm_dir: &Path) -> Result<Daemons, String> {
    let mut daemons = Daemons {
        children: Vec::new(),
    };
    if domain.devices.filesystems.is_empty() {
        return Ok(daemons);
    }
    let bin = binary()?;
    let help = Command::new(&bin)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let rust_cli = String::from_utf8_lossy(&help.stdout).contains("--shared-dir")
        || String::from_utf8_lossy(&help.stderr).contains("--shared-dir");
    for (i, fs) in domain.devices.filesystems.iter().enumerate() {
        let socket = socket_path(vm_dir, i);
        let _ = std::fs::remove_file(&socket);
        let log_path = vm_dir.join(format!("virtiofsd-{i}.log"));
        let log = crate::util::create_fresh(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--socket-path={}", socket.display()));
        if rust_cli {
            cmd.arg(format!("--shared-dir={}", fs.source_dir.display()))
                .arg("--sandbox=chroot");
        } else {
            cmd.args(["-o", &format!("source={}", fs.source_dir.display())])
                .args(["-o", "sandbox=chroot", "-f"]);
        }
        let stderr = log.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(stderr);
        let parent = std::process::id();
        // SAFETY: die_with_parent is made for pre_exec.
        unsafe {
            cmd.pre_exec(move || crate::util::die_with_parent(parent));
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("{}: cannot start {}: {e}", fs.spec_path, bin.display()))?;
        daemons.children.push((child, socket.clone()));
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if socket.exists() {
                break;
            }
            let (child, _) = daemons.children.last_mut().expect("just pushed");
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!(
                    "{}: virtiofsd exited ({status}) before listening: {}",
                    fs.spec_path,
                    log.trim()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: virtiofsd did not create {} within {READY_WAIT:?}",
                    fs.spec_path,
                    socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::info!(filesystem = %fs.name, dir = %fs.source_dir.display(),
            socket = %socket.display(), pid = daemons.children.last().map(|(c, _)| c.id()),
            "virtiofsd started");
    }
    Ok(daemons)
}
