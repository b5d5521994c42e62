//! Console back ends created at `vm.create` (and again before each boot after
//! a shutdown or reboot), as CH's `pre_create_console_devices` does: a PTY
//! pair per `Pty` device whose slave path goes into the config's `file`
//! (which is why `vm.info` names it before boot), the serial socket bound, a
//! `File` created. The serial PTY's slave is closed right away, as in CH, so
//! the master sees a hang-up until somebody opens the slave.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::pty::openpty;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

use super::config::{ConsoleOutputMode, VmConfig};

#[derive(Clone)]
pub enum Transport {
    Pty(Arc<OwnedFd>),
    Socket(Arc<UnixListener>, PathBuf),
    Tty,
    File(Arc<File>),
    Null,
    Off,
}

pub struct ConsoleDevices {
    pub serial: Transport,
    /// The virtio-console and debug console back ends, held only so they live
    /// as long as CH keeps them: the tiny guest never writes to either.
    _console: Transport,
    _debug: Transport,
    /// CH keeps the virtio-console's PTY slave open (its SIGWINCH listener
    /// holds it), so that PTY never reports a hang-up.
    _console_slave: Option<OwnedFd>,
}

/// Why the back ends could not be made.
#[derive(Debug)]
pub enum ConsoleError {
    /// An error chain below "Error creating console devices".
    Chain(Vec<String>),
    /// A `File` or `Socket` device without its path: CH unwraps the missing
    /// path and its VMM thread dies (the panic message is kept for the log).
    VmmPanic(String),
}

fn device_error(cause: impl ToString) -> ConsoleError {
    ConsoleError::Chain(vec![
        "Error creating console devices".to_string(),
        "Error creating console device".to_string(),
        cause.to_string(),
    ])
}

fn raw_mode_error(cause: nix::Error) -> ConsoleError {
    ConsoleError::Chain(vec![
        "Error creating console devices".to_string(),
        "Error setting pty raw mode".to_string(),
        std::io::Error::from(cause).to_string(),
    ])
}

fn no_socket_support() -> ConsoleError {
    ConsoleError::Chain(vec![
        "Error creating console devices".to_string(),
        "No socket option support for console device".to_string(),
    ])
}

fn missing_path(device: &str) -> ConsoleError {
    ConsoleError::VmmPanic(format!("{device}: mode needs a path but none was given"))
}

struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
    path: PathBuf,
}

fn create_pty() -> Result<Pty, ConsoleError> {
    let pair = openpty(None, None).map_err(|e| device_error(std::io::Error::from(e)))?;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", pair.slave.as_raw_fd()))
        .map_err(device_error)?;
    let mut termios = tcgetattr(pair.slave.as_fd()).map_err(raw_mode_error)?;
    cfmakeraw(&mut termios);
    tcsetattr(pair.slave.as_fd(), SetArg::TCSANOW, &termios).map_err(raw_mode_error)?;
    for fd in [&pair.master, &pair.slave] {
        // Children of the stand-in must not keep the PTY alive.
        let _ = fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    let flags = fcntl(pair.master.as_fd(), FcntlArg::F_GETFL)
        .map_err(|e| device_error(std::io::Error::from(e)))?;
    fcntl(
        pair.master.as_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| device_error(std::io::Error::from(e)))?;
    Ok(Pty {
        master: pair.master,
        slave: pair.slave,
        path,
    })
}

fn create_file(device: &str, path: Option<&PathBuf>) -> Result<Transport, ConsoleError> {
    let path = path.ok_or_else(|| missing_path(device))?;
    let file = File::create(path).map_err(device_error)?;
    Ok(Transport::File(Arc::new(file)))
}

/// Creates the back ends and writes the PTY paths into `config`.
pub fn pre_create(config: &mut VmConfig) -> Result<ConsoleDevices, ConsoleError> {
    let mut console_slave = None;
    let console = match config.console.common.mode {
        ConsoleOutputMode::File => create_file("console", config.console.common.file.as_ref())?,
        ConsoleOutputMode::Pty => {
            let pty = create_pty()?;
            config.console.common.file = Some(pty.path);
            console_slave = Some(pty.slave);
            Transport::Pty(Arc::new(pty.master))
        }
        ConsoleOutputMode::Tty => Transport::Tty,
        ConsoleOutputMode::Socket => return Err(no_socket_support()),
        ConsoleOutputMode::Null => Transport::Null,
        ConsoleOutputMode::Off => Transport::Off,
    };
    let serial =
        match config.serial.common.mode {
            ConsoleOutputMode::File => create_file("serial", config.serial.common.file.as_ref())?,
            ConsoleOutputMode::Pty => {
                let pty = create_pty()?;
                config.serial.common.file = Some(pty.path);
                drop(pty.slave);
                Transport::Pty(Arc::new(pty.master))
            }
            ConsoleOutputMode::Tty => Transport::Tty,
            ConsoleOutputMode::Socket => {
                let path =
                    config.serial.common.socket.clone().ok_or_else(|| {
                        device_error("Path missing when using socket console mode")
                    })?;
                let listener = UnixListener::bind(&path).map_err(device_error)?;
                Transport::Socket(Arc::new(listener), path)
            }
            ConsoleOutputMode::Null => Transport::Null,
            ConsoleOutputMode::Off => Transport::Off,
        };
    let debug = match config.debug_console.mode {
        ConsoleOutputMode::File => {
            create_file("debug_console", config.debug_console.file.as_ref())?
        }
        ConsoleOutputMode::Pty => {
            let pty = create_pty()?;
            config.debug_console.file = Some(pty.path);
            drop(pty.slave);
            Transport::Pty(Arc::new(pty.master))
        }
        ConsoleOutputMode::Tty => Transport::Tty,
        ConsoleOutputMode::Socket => return Err(no_socket_support()),
        ConsoleOutputMode::Null => Transport::Null,
        ConsoleOutputMode::Off => Transport::Off,
    };
    Ok(ConsoleDevices {
        serial,
        _console: console,
        _debug: debug,
        _console_slave: console_slave,
    })
}
