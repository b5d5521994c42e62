//! Starting the `cloud-hypervisor` process and telling when its API answers.
//!
//! The launcher binds and listens on the API socket itself and hands CH the
//! listening descriptor (`--api-socket fd=N`). A client can connect at once:
//! the connection waits in the listen backlog until CH's HTTP thread accepts
//! it, so no readiness polling (and no oversleeping of a poll interval) is
//! needed; the first request only has to be raced against the VMM's exit.
//!
//! The VMM must never outlive the launcher, even a SIGKILLed one: the child
//! asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`). That
//! signal follows the *thread* that forked, so [`spawn`] must run on a thread
//! that lives as long as the launcher (the main thread of a current-thread
//! runtime). The VMM gets its own process group, so a terminal's Ctrl-C
//! reaches only the launcher, which then stops the VM in order. Its output
//! goes to a log file, not the launcher's terminal.

use crate::backend::BackendError;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

/// Environment variable naming the `cloud-hypervisor` binary.
pub const BINARY_ENV: &str = "CLOUD_HYPERVISOR_BIN";

/// Longest unix socket path (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How many log lines an error shows.
pub(crate) const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("API socket path {0:?} cannot be passed to cloud-hypervisor: {1}")]
    SocketPath(PathBuf, &'static str),
    #[error("cannot prepare {path:?}: {cause}")]
    Prepare { path: PathBuf, cause: io::Error },
    #[error("cannot create the event-monitor pipe: {0}")]
    Pipe(io::Error),
    #[error("cannot listen on the API socket {path:?}: {cause}")]
    Listen { path: PathBuf, cause: io::Error },
    #[error("cannot start {binary:?}: {cause}")]
    Spawn { binary: PathBuf, cause: io::Error },
    #[error("{status} before its API answered; last lines of {log:?}:\n{tail}")]
    Died {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("cloud-hypervisor's API did not answer within {waited:?} ({last_error}); last lines of {log:?}:\n{tail}")]
    NotReady {
        waited: Duration,
        last_error: String,
        log: PathBuf,
        tail: String,
    },
}

/// A started VMM whose event monitor the launcher reads.
pub struct Spawned {
    pub child: Child,
    pub events: pipe::Receiver,
    pub log: PathBuf,
}

/// The binary to run: `explicit`, else `$CLOUD_HYPERVISOR_BIN`, else
/// `cloud-hypervisor` from `PATH`.
pub fn binary(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os(BINARY_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("cloud-hypervisor"))
}

/// CH splits option values on commas (quotes and brackets nest), so a path
/// containing them would be cut; and a socket path has a length limit.
pub fn check_socket_path(path: &Path) -> Result<(), ProcessError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() > MAX_SOCKET_PATH {
        return Err(ProcessError::SocketPath(
            path.to_path_buf(),
            "longer than the 107 bytes a unix socket path may have",
        ));
    }
    if bytes.iter().any(|b| b",\"[]".contains(b)) {
        return Err(ProcessError::SocketPath(
            path.to_path_buf(),
            "contains one of , \" [ ]",
        ));
    }
    Ok(())
}

/// `cloud-hypervisor was killed by signal 9`, `cloud-hypervisor exited with status 1`.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("cloud-hypervisor exited with status {code}"),
        (None, Some(signal)) => format!("cloud-hypervisor was killed by signal {signal}"),
        (None, None) => format!("cloud-hypervisor ended: {status}"),
    }
}

/// The API socket's permission bits.
pub const API_SOCKET_MODE: u32 = 0o600;

/// Starts `binary` with its API on a socket listening at `api_socket`, its
/// events on a pipe and its output in `log`. Must be called from a thread
/// that lives as long as the launcher (see the module docs).
pub fn spawn(binary: &Path, api_socket: &Path, log: &Path) -> Result<Spawned, ProcessError> {
    check_socket_path(api_socket)?;
    let prepare = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ProcessError::Prepare {
            path,
            cause: source,
        }
    };
    let stdout = crate::util::create_fresh(log).map_err(prepare(log))?;
    let stderr = stdout.try_clone().map_err(prepare(log))?;

    let (read, write) = pipe_cloexec().map_err(ProcessError::Pipe)?;
    let write_fd = write.as_raw_fd();

    // Listening before the VMM exists is what lets the first request go out
    // without polling. std creates it close-on-exec; only the VMM's copy is
    // made inheritable (below).
    // Whoever can connect drives the whole VMM: owner only, whatever the
    // umask (CH's own umask(0077) never applies to a socket it is handed).
    let listener = crate::util::bind_socket(api_socket, API_SOCKET_MODE).map_err(|source| {
        ProcessError::Listen {
            path: api_socket.to_path_buf(),
            cause: source,
        }
    })?;
    let listen_fd = listener.as_raw_fd();

    let mut cmd = Command::new(binary);
    cmd.arg("--api-socket")
        .arg(format!("fd={listen_fd}"))
        .arg("--event-monitor")
        .arg(format!("fd={write_fd}"))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true);
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid, fcntl), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            crate::util::die_with_parent(parent)?;
            // Only the VMM inherits the event pipe's write end and the API
            // listener, each at its own number.
            for fd in [write_fd, listen_fd] {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| {
        let _ = std::fs::remove_file(api_socket);
        ProcessError::Spawn {
            binary: binary.to_path_buf(),
            cause: source,
        }
    })?;
    // The launcher's copy of the write end must go, or the pipe never ends;
    // without its copy of the listener, a connection to a VMM that is gone
    // is refused instead of waiting in the backlog.
    drop(write);
    drop(listener);
    let events = pipe::Receiver::from_owned_fd(read).map_err(ProcessError::Pipe)?;
    Ok(Spawned {
        child,
        events,
        log: log.to_path_buf(),
    })
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Sends the first API request to a VMM that may still be starting and
/// waits for its answer, the VMM's exit, or `timeout`, whichever comes first.
///
/// An answer, even a refusal, is returned as is. A request that fails without
/// one (the connection reset by a VMM on its way out) waits for the exit, so
/// a VMM that dies at start-up is reported with its status and log.
pub async fn first_answer<T>(
    spawned: &mut Spawned,
    timeout: Duration,
    request: impl Future<Output = Result<T, BackendError>>,
) -> Result<Result<T, BackendError>, ProcessError> {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let last_error = tokio::select! {
        status = spawned.child.wait() => return Err(died(&spawned.log, status)),
        answer = request => match answer {
            Err(BackendError::Unreachable { operation, detail }) => {
                format!("{operation}: {detail}")
            }
            answer => return Ok(answer),
        },
        () = &mut deadline => String::from("no answer"),
    };
    tokio::select! {
        status = spawned.child.wait() => Err(died(&spawned.log, status)),
        () = &mut deadline => Err(ProcessError::NotReady {
            waited: timeout,
            last_error,
            log: spawned.log.clone(),
            tail: log_tail(&spawned.log, LOG_TAIL_LINES),
        }),
    }
}

fn died(log: &Path, status: io::Result<std::process::ExitStatus>) -> ProcessError {
    let status = match status {
        Ok(s) => describe_exit(s),
        Err(e) => format!("cloud-hypervisor could not be waited for ({e})"),
    };
    ProcessError::Died {
        status,
        log: log.to_path_buf(),
        tail: log_tail(log, LOG_TAIL_LINES),
    }
}

/// The last `lines` lines of the VMM's log, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            if tail.trim().is_empty() {
                "(empty)".into()
            } else {
                tail
            }
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::api::Api;
    use super::*;
    use std::time::Instant;

    #[test]
    fn binary_prefers_the_explicit_path() {
        assert_eq!(
            binary(Some(Path::new("/opt/ch/cloud-hypervisor"))),
            Path::new("/opt/ch/cloud-hypervisor")
        );
    }

    #[test]
    fn socket_paths_ch_would_misparse_are_refused() {
        assert!(check_socket_path(Path::new("/run/kubevirt-private/uid/ch-api.sock")).is_ok());
        for bad in ["/tmp/a,b/ch-api.sock", "/tmp/\"q\"/s", "/tmp/[x]/s"] {
            assert!(check_socket_path(Path::new(bad)).is_err(), "{bad}");
        }
        let long = format!("/{}", "x".repeat(MAX_SOCKET_PATH));
        assert!(check_socket_path(Path::new(&long)).is_err());
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("ch.log");
        std::fs::write(&log, "one\ntwo\nthree\n").expect("write");
        assert_eq!(log_tail(&log, 2), "two\nthree");
        assert_eq!(log_tail(&log, 10), "one\ntwo\nthree");
        std::fs::write(&log, "").expect("write");
        assert_eq!(log_tail(&log, 2), "(empty)");
    }

    /// A "VMM" that dies at once is reported with its status and log, not
    /// after the timeout.
    #[tokio::test]
    async fn a_vmm_dying_before_its_api_answers_is_reported_with_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("fake-ch");
        std::fs::write(&script, "#!/bin/sh\necho \"bad flag: $*\" >&2\nexit 3\n").expect("write");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let socket = dir.path().join("api.sock");
        let mut spawned = spawn(&script, &socket, &dir.path().join("ch.log")).expect("spawns");
        let api = Api::new(&socket);
        let started = Instant::now();
        let err = first_answer(&mut spawned, Duration::from_secs(10), api.ping())
            .await
            .expect_err("dies");
        assert!(started.elapsed() < Duration::from_secs(5));
        match err {
            ProcessError::Died { status, tail, .. } => {
                assert_eq!(status, "cloud-hypervisor exited with status 3");
                assert!(tail.starts_with("bad flag: --api-socket fd="), "{tail}");
                assert!(tail.contains("--event-monitor fd="), "{tail}");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[tokio::test]
    async fn a_vmm_that_never_answers_times_out_naming_the_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("silent-ch");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").expect("write");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let socket = dir.path().join("api.sock");
        let mut spawned = spawn(&script, &socket, &dir.path().join("ch.log")).expect("spawns");
        let api = Api::new(&socket);
        let err = first_answer(&mut spawned, Duration::from_millis(300), api.ping())
            .await
            .expect_err("times out");
        assert!(
            matches!(err, ProcessError::NotReady { waited, .. } if waited == Duration::from_millis(300)),
            "{err}"
        );
        spawned.child.start_kill().expect("kill");
        spawned.child.wait().await.expect("reaped");
    }

    /// The VMM gets a socket that is already listening under the API path:
    /// its descriptor, named by `--api-socket fd=N`, is open in the VMM, and
    /// a client can connect before the VMM ever accepts.
    #[tokio::test]
    async fn the_vmm_inherits_a_listening_api_socket_named_by_fd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("idle-ch");
        let args_file = dir.path().join("args");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$2\" > {}.tmp\nmv {0}.tmp {0}\nexec sleep 30\n",
                args_file.display()
            ),
        )
        .expect("write");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let socket = dir.path().join("api.sock");
        let mut spawned = spawn(&script, &socket, &dir.path().join("ch.log")).expect("spawns");
        let pid = spawned.child.id().expect("running");

        // Owner only, whatever the umask gave (0755 under the usual 022).
        let mode = std::fs::metadata(&socket)
            .expect("socket exists")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            API_SOCKET_MODE,
            "the API socket drives the whole VMM"
        );

        // Nobody accepts, yet the connection is made: it waits in the backlog.
        let client = std::os::unix::net::UnixStream::connect(&socket).expect("connects at once");

        let deadline = Instant::now() + Duration::from_secs(5);
        while !args_file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let arg = std::fs::read_to_string(&args_file).expect("the script ran");
        let fd: u32 = arg
            .trim()
            .strip_prefix("fd=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("--api-socket {arg:?}"));
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("open in the VMM");
        assert!(
            link.to_string_lossy().starts_with("socket:["),
            "{}",
            link.display()
        );
        // The launcher kept no copy: the VMM's is the only listener, so the
        // client's peer goes away with the VMM.
        spawned.child.start_kill().expect("kill");
        spawned.child.wait().await.expect("reaped");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        let read = std::io::Read::read(&mut &client, &mut buf);
        assert!(
            matches!(read, Ok(0))
                || read.is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
            "the queued connection outlived the VMM"
        );
        assert!(
            std::os::unix::net::UnixStream::connect(&socket).is_err(),
            "connections are refused once the VMM is gone"
        );
    }
}
