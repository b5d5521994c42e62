//! Starting the VMM process the way `posix_spawn` does (a `vfork`-style
//! clone that shares the launcher's memory until `execve`), plus the few
//! child-side steps `posix_spawn` has no attribute for: the parent-death
//! signal and handing over two descriptors.
//!
//! Why not `std`/`tokio`'s `Command`: any `pre_exec` hook makes them `fork`
//! the launcher, copying its page tables and sharing its pages copy-on-write
//! until the child execs. On the nested-KVM machines this project runs on
//! that cost about 3 ms per VM start in a like-for-like experiment
//! (`BENCHMARKS.md`), more than anything else the launcher does before boot.
//!
//! The child runs on its own small stack inside the launcher's memory while
//! the launcher's thread is suspended, so it only makes raw system calls on
//! data prepared beforehand: no allocation, no locks, no panics. All signals
//! are blocked around the clone, and the child resets every caught signal to
//! its default before unblocking, so none of the launcher's handlers can run
//! in the child.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use tokio::io::unix::AsyncFd;

/// The child's stack; it runs a few system calls only.
const CHILD_STACK: usize = 64 * 1024;

/// What the VMM process gets.
pub struct SpawnRequest<'a> {
    pub program: &'a Path,
    pub args: &'a [OsString],
    /// Become stdin, stdout and stderr (the launcher keeps its copies).
    pub stdio: [RawFd; 3],
    /// Passed on at their own numbers (the launcher's copies are
    /// close-on-exec and stay so).
    pub inherit: &'a [RawFd],
}

/// Everything the child touches, prepared by the parent.
#[repr(C)]
struct ChildData {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdio: [RawFd; 3],
    inherit: *const RawFd,
    inherit_len: usize,
    parent: libc::pid_t,
    /// Set by the child when a step fails (the parent reads it after the
    /// clone returns: the child has exec'd or exited by then).
    error: libc::c_int,
}

/// A started VMM, watched and reaped through a pidfd.
pub struct VmmChild {
    pid: libc::pid_t,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

/// Starts `req.program` in a new process group, with `SIGKILL` as its
/// parent-death signal (tied to the calling thread, see `process`), an
/// empty signal mask and default dispositions.
pub fn spawn(req: &SpawnRequest<'_>) -> io::Result<VmmChild> {
    let program = resolve(req.program)?;
    let path = cstring(program.as_os_str())?;
    let mut arg_strings = vec![cstring(req.program.as_os_str())?];
    for arg in req.args {
        arg_strings.push(cstring(arg)?);
    }
    let env_strings = std::env::vars_os()
        .map(|(k, v)| {
            let mut entry = k;
            entry.push("=");
            entry.push(v);
            cstring(&entry)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let argv = null_terminated(&arg_strings);
    let envp = null_terminated(&env_strings);
    if req.inherit.iter().any(|fd| *fd <= 2) || req.stdio.iter().any(|fd| *fd < 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors to pass on must not be stdin, stdout or stderr",
        ));
    }
    let mut data = ChildData {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        stdio: req.stdio,
        inherit: req.inherit.as_ptr(),
        inherit_len: req.inherit.len(),
        // SAFETY: getpid cannot fail.
        parent: unsafe { libc::getpid() },
        error: 0,
    };
    // Never read by Rust: only the child's frames live there.
    let mut stack = Vec::<u8>::with_capacity(CHILD_STACK);
    // SAFETY: the stack grows down from its (16-byte aligned) end; `data`,
    // `stack` and the strings outlive the clone, which returns only once the
    // child has exec'd or exited (CLONE_VFORK).
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(CHILD_STACK) as usize & !0xf;
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut data as *mut ChildData).cast(),
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    drop(stack);
    // SAFETY: the child wrote it, if at all, before the clone returned.
    let error = unsafe { std::ptr::read_volatile(&data.error) };
    if error != 0 {
        // The child exited without exec'ing: reap it.
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(io::Error::from_raw_os_error(error));
    }
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            kill_and_reap(pid);
            return Err(e);
        }
    };
    // SAFETY: the AsyncFd owns the pidfd, which stays open and unchanged
    // for its whole life.
    match unsafe { AsyncFd::register(pidfd) } {
        Ok(pidfd) => Ok(VmmChild {
            pid,
            pidfd,
            status: None,
        }),
        Err(e) => {
            kill_and_reap(pid);
            Err(e.into_parts().1)
        }
    }
}

/// Runs in the child, on `CHILD_STACK`, sharing the parent's memory.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildData`, alive until we exec or exit;
    // every call below is a plain system call on prepared data.
    unsafe {
        let data = &mut *arg.cast::<ChildData>();
        let fail = |data: &mut ChildData| -> ! {
            data.error = *libc::__errno_location();
            if data.error == 0 {
                data.error = libc::EINVAL;
            }
            libc::_exit(127)
        };
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail(data);
        }
        // The launcher may have died before prctl took effect.
        if libc::getppid() != data.parent {
            *libc::__errno_location() = libc::ESRCH;
            fail(data);
        }
        if libc::setpgid(0, 0) != 0 {
            fail(data);
        }
        for (target, fd) in (0..).zip(data.stdio) {
            // dup2 onto itself would keep close-on-exec set.
            let done = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if done < 0 {
                fail(data);
            }
        }
        let mut i = 0;
        while i < data.inherit_len {
            let fd = *data.inherit.add(i);
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                fail(data);
            }
            i += 1;
        }
        // No handler of the launcher may run here; `execve` would reset the
        // caught ones anyway. SIGPIPE goes back to its default, as `std`'s
        // spawn does (the Rust runtime ignores it).
        let mut action: libc::sigaction = std::mem::zeroed();
        let mut sig = 1;
        while sig <= libc::SIGRTMAX() {
            if sig != libc::SIGKILL
                && sig != libc::SIGSTOP
                && libc::sigaction(sig, std::ptr::null(), &mut action) == 0
                && (action.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
                && action.sa_sigaction != libc::SIG_DFL
            {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
            sig += 1;
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(data.path, data.argv, data.envp);
        fail(data)
    }
}

impl VmmChild {
    /// The process id, until the process is reaped.
    pub fn id(&self) -> Option<u32> {
        self.status.is_none().then_some(self.pid as u32)
    }

    /// Waits for the process to exit and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            let mut guard = self.pidfd.readable().await?;
            let mut raw = 0;
            // SAFETY: our own, not yet reaped child.
            match unsafe { libc::waitpid(self.pid, &mut raw, libc::WNOHANG) } {
                0 => guard.clear_ready(),
                pid if pid == self.pid => self.status = Some(ExitStatus::from_raw(raw)),
                _ => return Err(io::Error::last_os_error()),
            }
        }
    }

    /// Sends SIGKILL (through the pidfd: never to a recycled pid).
    pub fn start_kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the process has already exited",
            ));
        }
        pidfd_kill(self.pidfd.get_ref())
    }
}

impl Drop for VmmChild {
    /// A VMM nobody waited for is killed, never left running.
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = pidfd_kill(self.pidfd.get_ref());
            let mut raw = 0;
            // SAFETY: our own child; a zombie left here is reaped by init
            // when the launcher exits.
            unsafe { libc::waitpid(self.pid, &mut raw, libc::WNOHANG) };
        }
    }
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; a non-negative result is a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_kill(pidfd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain system call on a pidfd we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn kill_and_reap(pid: libc::pid_t) {
    let mut raw = 0;
    // SAFETY: our own child, just started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut raw, 0);
    }
}

/// `program` as `execvp` would find it: as given when it names a path,
/// else the first executable file of that name in `PATH`.
fn resolve(program: &Path) -> io::Result<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            cstring(candidate.as_os_str())
                // SAFETY: access on a NUL-terminated path.
                .map(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
                .unwrap_or(false)
                && candidate.is_file()
        })
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.to_os_string().into_vec()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
    }

    /// The child gets its stdio and the passed descriptor at its own
    /// number; an exit status comes back through `wait`.
    #[tokio::test]
    async fn the_child_gets_its_stdio_and_the_passed_descriptor() {
        let (r, w) = pipe();
        let (extra_r, extra_w) = pipe();
        let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
        let script = format!(
            "echo out; echo err >&2; echo passed > /proc/$$/fd/{}; exit 7",
            extra_w.as_raw_fd()
        );
        let args = ["-c".into(), script.into()];
        let mut child = spawn(&SpawnRequest {
            program: Path::new("sh"),
            args: &args,
            stdio: [devnull.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()],
            inherit: &[extra_w.as_raw_fd()],
        })
        .expect("spawns");
        drop(w);
        drop(extra_w);
        let status = child.wait().await.expect("waits");
        let mut text = String::new();
        std::fs::File::from(r)
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(status.code(), Some(7), "{text}");
        assert_eq!(child.id(), None);
        assert_eq!(text, "out\nerr\n");
        let mut passed = String::new();
        std::fs::File::from(extra_r)
            .read_to_string(&mut passed)
            .expect("read");
        assert_eq!(passed, "passed\n");
    }

    /// As `execve` left it: a process group of its own, no blocked signal,
    /// SIGPIPE not ignored (the launcher's runtime ignores it).
    #[tokio::test]
    async fn the_child_starts_in_its_own_group_with_clean_signals() {
        let (r, w) = pipe();
        let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
        let args = ["/proc/self/stat".into(), "/proc/self/status".into()];
        let mut child = spawn(&SpawnRequest {
            program: Path::new("cat"),
            args: &args,
            stdio: [devnull.as_raw_fd(), w.as_raw_fd(), devnull.as_raw_fd()],
            inherit: &[],
        })
        .expect("spawns");
        drop(w);
        assert!(child.wait().await.expect("waits").success());
        let mut text = String::new();
        std::fs::File::from(r)
            .read_to_string(&mut text)
            .expect("read");
        // stat: "pid (comm) state ppid pgrp ..."
        let stat = text.lines().next().unwrap_or_default();
        let pid = stat.split(' ').next().unwrap_or_default();
        let pgrp = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(2))
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(pgrp, pid, "a process group of its own: {text}");
        let mask = |field: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .unwrap_or_else(|| panic!("no {field} in {text}"))
        };
        assert_eq!(mask("SigBlk:"), 0, "{text}");
        assert_eq!(mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0, "{text}");
    }

    #[tokio::test]
    async fn a_missing_program_is_not_found() {
        let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
        let fd = devnull.as_raw_fd();
        for program in ["/nonexistent/cloud-hypervisor", "no-such-program-here"] {
            let err = spawn(&SpawnRequest {
                program: Path::new(program),
                args: &[],
                stdio: [fd, fd, fd],
                inherit: &[],
            })
            .err()
            .unwrap_or_else(|| panic!("{program} started"));
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{program}: {err}");
        }
    }

    #[tokio::test]
    async fn start_kill_kills_and_drop_kills_an_unwaited_child() {
        let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
        let fd = devnull.as_raw_fd();
        let args = ["30".into()];
        let request = SpawnRequest {
            program: Path::new("sleep"),
            args: &args,
            stdio: [fd, fd, fd],
            inherit: &[],
        };
        let mut child = spawn(&request).expect("spawns");
        child.start_kill().expect("kill");
        let status = child.wait().await.expect("waits");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(child.start_kill().is_err(), "killing a reaped child");

        let dropped = spawn(&request).expect("spawns");
        let pid = dropped.id().expect("running") as i32;
        drop(dropped);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            // Gone, or a zombie: either way no longer running.
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let running = state
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'));
            if !running {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{pid} still runs");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
