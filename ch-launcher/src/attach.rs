//! `ch-launcher run` on a terminal: the guest's serial console in that
//! terminal, through the same `virt-serial0` socket virt-handler uses.
//!
//! The terminal is put in raw mode so every key (Ctrl-C included) reaches the
//! guest; [`ESCAPE`] (Ctrl-]) detaches, like `virsh console` and
//! `virtctl console`. The VM keeps running after a detach; Ctrl-C then
//! reaches the launcher and stops the VM. The terminal's previous mode is
//! restored on every way out of [`attach`], including cancellation.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::logging;

/// The detach key: Ctrl-] (ASCII GS).
pub const ESCAPE: u8 = 0x1d;
/// How the escape key is shown to users.
pub const ESCAPE_NAME: &str = "Ctrl-]";

/// Whether stdin is a terminal worth attaching to.
pub fn stdin_is_terminal() -> bool {
    use std::io::IsTerminal;
    io::stdin().is_terminal()
}

/// How an attachment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The user pressed the escape key (or closed stdin).
    Detached,
    /// The console socket closed: the VM is gone or another client took over.
    ConsoleClosed,
}

/// Relays the terminal to the console socket at `socket` until the user
/// detaches or the console closes.
pub async fn attach(socket: &Path) -> io::Result<Ended> {
    let mut stream = UnixStream::connect(socket).await?;
    let _raw = RawTerminal::enable()?;
    let (input, mut keys) = StdinReader::start();
    eprint!(
        "\r\nConnected to the serial console ({}). Press {ESCAPE_NAME} to detach.\r\n",
        socket.display()
    );

    let mut buf = vec![0u8; 4096];
    let mut stdout = tokio::io::stdout();
    let ended = loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) => break Ended::ConsoleClosed,
                // tokio's stdout writes on its blocking pool: a slow
                // terminal stalls this loop, never the runtime's other tasks
                // (runner, control socket, console relay, CH event reader).
                Ok(n) => {
                    stdout.write_all(&buf[..n]).await?;
                    stdout.flush().await?;
                }
                Err(e) => return Err(e),
            },
            chunk = keys.recv() => match chunk {
                Some(bytes) => match bytes.iter().position(|&b| b == ESCAPE) {
                    Some(i) => {
                        stream.write_all(&bytes[..i]).await?;
                        break Ended::Detached;
                    }
                    None => stream.write_all(&bytes).await?,
                },
                None => break Ended::Detached,
            },
        }
    };
    drop(input);
    Ok(ended)
}

/// Restores the terminal's mode when dropped.
struct RawTerminal;

/// The mode to restore, also for the panic hook: release builds abort on
/// panic, so no destructor would run.
static SAVED_MODE: Mutex<Option<Termios>> = Mutex::new(None);
static PANIC_HOOK: Once = Once::new();

impl RawTerminal {
    fn enable() -> io::Result<RawTerminal> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        if let Ok(mut slot) = SAVED_MODE.lock() {
            *slot = Some(saved);
        }
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                previous(info);
            }));
        });
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        // The launcher's own log lines share the terminal.
        logging::set_raw_terminal(true);
        Ok(RawTerminal)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    let saved = SAVED_MODE.lock().ok().and_then(|mut slot| slot.take());
    if let Some(mode) = saved {
        let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &mode);
        logging::set_raw_terminal(false);
    }
}

/// Reads stdin on a plain thread (a blocking read would keep a tokio
/// runtime from shutting down); stops within a poll interval once dropped.
struct StdinReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StdinReader {
    fn start() -> (StdinReader, mpsc::UnboundedReceiver<Vec<u8>>) {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let stdin = io::stdin();
            let mut buf = [0u8; 1024];
            while !flag.load(Ordering::SeqCst) {
                let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(100u8)) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return,
                }
                // Straight from the descriptor: `Stdin`'s buffer would keep
                // bytes typed after the escape key from the shell.
                match nix::unistd::read(stdin.as_fd(), &mut buf) {
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        (
            StdinReader {
                stop,
                thread: Some(thread),
            },
            rx,
        )
    }
}

impl Drop for StdinReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Joining bounds the delay to one poll interval and guarantees that
        // no key pressed after the detach is swallowed by this thread.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
