//! The guest's COM1 and the tiny test guest behind it.
//!
//! The guest (images/guest/tiny-guest.S) prints `TINY-GUEST-UP\r\n`, then
//! echoes every byte; after `q` it powers off (ACPI S5), after `r` it reboots.
//! Its halting variant powers off right after the banner; the stand-in tells
//! it apart by a marker in the kernel file: [`HALTING_GUEST_MARKER`], or the
//! `HALT_AFTER_BANNER` symbol that images/build.rs defines (`--defsym`) for
//! that variant only and that stays in the unstripped ELF's symbol table.
//!
//! Output handling follows CH's serial manager: on a PTY, output is buffered
//! until the master has gone 500 ms without a hang-up (the slave is open) and
//! then flushed; on a socket it is buffered until a client connects and
//! replayed to it; input bytes are queued for the guest (a lone `\n` becomes
//! `\r`). While the VM is paused the guest consumes nothing.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::consoles::Transport;

pub const BANNER: &[u8] = b"TINY-GUEST-UP\r\n";
/// Bytes in a kernel file that make the stand-in run the halting guest.
pub const HALTING_GUEST_MARKER: &[u8] = b"HALT-AFTER-BANNER";
/// The assembler symbol that selects the halting variant of tiny-guest.S.
const HALTING_GUEST_SYMBOL: &[u8] = b"HALT_AFTER_BANNER";
/// CH's serial output ring buffer size.
const MAX_BUFFER_SIZE: usize = 1 << 20;
/// How long CH's serial manager waits on a PTY before deciding it is open.
const PTY_PROBE: Duration = Duration::from_millis(500);

/// What the guest asks of the VMM, tagged with the boot it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestAction {
    PowerOff,
    Reboot,
}

pub type GuestNotifier = Box<dyn Fn(GuestAction) + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Paused,
    Stopped,
}

struct Output {
    buffer: VecDeque<u8>,
    /// Whether `sink` may be written now (CH's `write_out`).
    write_out: bool,
    sink: Box<dyn Write + Send>,
}

impl Output {
    fn fill(&mut self, bytes: &[u8]) {
        self.buffer.extend(bytes);
        if self.buffer.len() > MAX_BUFFER_SIZE {
            let excess = self.buffer.len() - MAX_BUFFER_SIZE;
            self.buffer.drain(..excess);
        }
    }

    fn flush(&mut self) {
        if !self.write_out {
            return;
        }
        while let Some(byte) = self.buffer.pop_front() {
            if self.sink.write_all(&[byte]).is_err() {
                self.buffer.push_front(byte);
                break;
            }
        }
        let _ = self.sink.flush();
    }

    fn write(&mut self, bytes: &[u8]) {
        if !self.write_out {
            self.fill(bytes);
            return;
        }
        self.flush();
        if !self.buffer.is_empty() {
            self.fill(bytes);
            return;
        }
        let mut offset = 0;
        while offset < bytes.len() {
            match self.sink.write(&bytes[offset..]) {
                Ok(0) => break,
                Ok(n) => offset += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.fill(&bytes[offset..]);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A PTY nobody holds, a closed socket: the byte is gone, as on real hardware.
                Err(_) => break,
            }
        }
        let _ = self.sink.flush();
    }
}

struct PortState {
    input: VecDeque<u8>,
    run: RunState,
    out: Output,
}

/// COM1 as the guest sees it.
pub struct SerialPort {
    state: Mutex<PortState>,
    wake: Condvar,
}

impl SerialPort {
    fn new(sink: Box<dyn Write + Send>, write_out: bool) -> Arc<SerialPort> {
        Arc::new(SerialPort {
            state: Mutex::new(PortState {
                input: VecDeque::new(),
                run: RunState::Running,
                out: Output {
                    buffer: VecDeque::new(),
                    write_out,
                    sink,
                },
            }),
            wake: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PortState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn queue_input(&self, bytes: &[u8]) {
        let mut state = self.lock();
        if bytes == b"\n" {
            state.input.push_back(b'\r');
        } else {
            state.input.extend(bytes);
        }
        self.wake.notify_all();
    }

    fn set_output(&self, sink: Option<Box<dyn Write + Send>>, write_out: bool) {
        let mut state = self.lock();
        if let Some(sink) = sink {
            state.out.sink = sink;
        }
        state.out.write_out = write_out;
        state.out.flush();
    }

    fn allow_output(&self) {
        let mut state = self.lock();
        if !state.out.write_out {
            state.out.write_out = true;
            state.out.flush();
        }
    }

    fn hold_output(&self) {
        self.lock().out.write_out = false;
    }

    fn guest_write(&self, bytes: &[u8]) {
        self.lock().out.write(bytes);
    }

    /// The next input byte once the VM runs; `None` once the VM is gone.
    fn guest_read(&self) -> Option<u8> {
        let mut state = self.lock();
        loop {
            match state.run {
                RunState::Stopped => return None,
                RunState::Running => {
                    if let Some(byte) = state.input.pop_front() {
                        return Some(byte);
                    }
                }
                RunState::Paused => {}
            }
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn set_run(&self, run: RunState) {
        self.lock().run = run;
        self.wake.notify_all();
    }

    fn stopped(&self) -> bool {
        self.lock().run == RunState::Stopped
    }
}

/// The threads serving one boot's serial port and running its guest; dropping
/// it stops them (and removes the serial socket, as CH does).
pub struct SerialManager {
    port: Arc<SerialPort>,
    kill: Option<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
    socket_path: Option<PathBuf>,
}

impl SerialManager {
    /// Starts the serial back end for `transport` and the guest.
    pub fn start(
        transport: &Transport,
        halting_guest: bool,
        notify: GuestNotifier,
    ) -> io::Result<SerialManager> {
        let (kill_read, kill_write) = nix::unistd::pipe().map_err(io::Error::from)?;
        let mut threads = Vec::new();
        let mut socket_path = None;
        let port = match transport {
            Transport::Pty(master) => {
                let sink = Box::new(FdWriter(Arc::clone(master)));
                let port = SerialPort::new(sink, false);
                let (port2, master2) = (Arc::clone(&port), Arc::clone(master));
                threads.push(spawn("serial-pty", move || {
                    serve_pty(&port2, &master2, &kill_read)
                })?);
                port
            }
            Transport::Socket(listener, path) => {
                socket_path = Some(path.clone());
                let port = SerialPort::new(Box::new(io::sink()), false);
                // CH's serial-manager thread starts before the vCPUs and
                // accepts a client already waiting long before a guest, which
                // must boot first, writes anything. The stand-in's guest runs
                // at once, so a waiting client is taken here, before it.
                let client = accept_waiting(&port, listener);
                let (port2, listener2) = (Arc::clone(&port), Arc::clone(listener));
                threads.push(spawn("serial-socket", move || {
                    serve_socket(&port2, &listener2, client, &kill_read)
                })?);
                port
            }
            Transport::Tty => {
                let port = SerialPort::new(Box::new(io::stdout()), true);
                if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
                    let port2 = Arc::clone(&port);
                    threads.push(spawn("serial-tty", move || {
                        serve_stdin(&port2, &kill_read)
                    })?);
                }
                port
            }
            Transport::File(file) => {
                let file = file.try_clone()?;
                SerialPort::new(Box::new(file), true)
            }
            Transport::Null | Transport::Off => SerialPort::new(Box::new(io::sink()), true),
        };
        let guest_port = Arc::clone(&port);
        threads.push(spawn("tiny-guest", move || {
            run_guest(&guest_port, halting_guest, &notify)
        })?);
        Ok(SerialManager {
            port,
            kill: Some(kill_write),
            threads,
            socket_path,
        })
    }

    pub fn pause(&self) {
        self.port.set_run(RunState::Paused);
    }

    pub fn resume(&self) {
        self.port.set_run(RunState::Running);
    }
}

impl Drop for SerialManager {
    fn drop(&mut self) {
        self.port.set_run(RunState::Stopped);
        // Closing the pipe's write end wakes every poller.
        self.kill.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(body)
}

fn run_guest(port: &SerialPort, halting: bool, notify: &GuestNotifier) {
    port.guest_write(BANNER);
    if halting {
        notify(GuestAction::PowerOff);
        return;
    }
    while let Some(byte) = port.guest_read() {
        port.guest_write(&[byte]);
        match byte {
            b'q' => return notify(GuestAction::PowerOff),
            b'r' => return notify(GuestAction::Reboot),
            _ => {}
        }
    }
}

/// Writes to a shared descriptor (the non-blocking PTY master).
struct FdWriter(Arc<OwnedFd>);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        nix::unistd::write(self.0.as_fd(), buf).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn killed(kill: &OwnedFd, revents: Option<PollFlags>) -> bool {
    let _ = kill;
    revents.is_some_and(|r| !r.is_empty())
}

fn wait_for_kill(kill: &OwnedFd, timeout: Duration) -> bool {
    let mut fds = [PollFd::new(kill.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, ms) {
        Ok(n) if n > 0 => true,
        Ok(_) => false,
        Err(nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}

fn serve_pty(port: &SerialPort, master: &OwnedFd, kill: &OwnedFd) {
    let mut input = [0u8; 64];
    loop {
        let (ready, master_events, kill_events) = {
            let mut fds = [
                PollFd::new(master.as_fd(), PollFlags::POLLIN),
                PollFd::new(kill.as_fd(), PollFlags::POLLIN),
            ];
            let ms = PollTimeout::try_from(PTY_PROBE).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(n) => (n, fds[0].revents(), fds[1].revents()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
        };
        if killed(kill, kill_events) || port.stopped() {
            return;
        }
        if ready == 0 {
            // A quiet master means the slave is open: from now on output flows.
            port.allow_output();
            continue;
        }
        let events = master_events.unwrap_or(PollFlags::empty());
        if events.contains(PollFlags::POLLIN) {
            match nix::unistd::read(master.as_fd(), &mut input) {
                Ok(n) if n > 0 => port.queue_input(&input[..n]),
                _ => {}
            }
        }
        if events.contains(PollFlags::POLLHUP) {
            port.hold_output();
            // Nobody holds the slave; CH sleeps rather than spin on the hang-up.
            if wait_for_kill(kill, PTY_PROBE) {
                return;
            }
        } else {
            port.allow_output();
        }
    }
}

/// Accepts a client whose connection is already queued, if any, and makes it
/// the port's output.
fn accept_waiting(port: &SerialPort, listener: &UnixListener) -> Option<UnixStream> {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
        return None;
    }
    attach(port, listener)
}

/// Accepts a connection and makes it the port's output, as CH's
/// `attach_client` does (replaying what was held).
fn attach(port: &SerialPort, listener: &UnixListener) -> Option<UnixStream> {
    let (stream, _) = listener.accept().ok()?;
    stream.set_nonblocking(true).ok()?;
    let writer = stream.try_clone().ok()?;
    port.set_output(Some(Box::new(writer)), true);
    Some(stream)
}

fn serve_socket(
    port: &SerialPort,
    listener: &UnixListener,
    mut client: Option<UnixStream>,
    kill: &OwnedFd,
) {
    let mut input = [0u8; 64];
    loop {
        let (listener_events, client_events, kill_events) = {
            let client_fd = client.as_ref().map(|c| c.as_fd());
            let mut fds = vec![
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(kill.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(fd) = client_fd {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => (
                    fds[0].revents(),
                    fds.get(2).and_then(|f| f.revents()),
                    fds[1].revents(),
                ),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
        };
        if killed(kill, kill_events) || port.stopped() {
            if let Some(c) = client.take() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            return;
        }
        if listener_events.is_some_and(|e| e.contains(PollFlags::POLLIN)) {
            // A new client replaces the previous one, as in CH.
            if let Some(previous) = client.take() {
                let _ = previous.shutdown(std::net::Shutdown::Both);
            }
            client = attach(port, listener);
            continue;
        }
        let client_events = client_events.unwrap_or(PollFlags::empty());
        if client_events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            let Some(stream) = client.as_mut() else {
                continue;
            };
            match stream.read(&mut input) {
                Ok(0) => {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    client = None;
                    port.set_output(Some(Box::new(io::sink())), false);
                }
                Ok(n) => port.queue_input(&input[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    client = None;
                    port.set_output(Some(Box::new(io::sink())), false);
                }
            }
        }
    }
}

fn serve_stdin(port: &SerialPort, kill: &OwnedFd) {
    // SAFETY: standard input stays open for the life of the process.
    let stdin = unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) };
    let mut input = [0u8; 64];
    loop {
        let mut fds = [
            PollFd::new(stdin, PollFlags::POLLIN),
            PollFd::new(kill.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if killed(kill, fds[1].revents()) || port.stopped() {
            return;
        }
        let events = fds[0].revents().unwrap_or(PollFlags::empty());
        if events.contains(PollFlags::POLLIN) {
            match nix::unistd::read(std::io::stdin().as_fd(), &mut input) {
                Ok(n) if n > 0 => port.queue_input(&input[..n]),
                _ => return,
            }
        } else if !events.is_empty() {
            return;
        }
    }
}

/// Whether `kernel` is the halting variant of the tiny guest.
pub fn is_halting_guest(kernel: &[u8]) -> bool {
    [HALTING_GUEST_MARKER, HALTING_GUEST_SYMBOL]
        .iter()
        .any(|marker| kernel.windows(marker.len()).any(|w| w == *marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halting_marker_is_found_anywhere_in_the_kernel() {
        assert!(is_halting_guest(b"\x7fELF....HALT-AFTER-BANNER\0"));
        assert!(is_halting_guest(b"\x7fELF..COM1_DATA\0HALT_AFTER_BANNER\0"));
        assert!(!is_halting_guest(b"\x7fELF....TINY-GUEST-UP\r\n"));
    }

    #[test]
    fn output_is_held_until_allowed_then_replayed_in_order() {
        let shared = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let port = SerialPort::new(Box::new(Shared(Arc::clone(&shared))), false);
        port.guest_write(b"TINY");
        assert!(shared.lock().unwrap().is_empty());
        port.allow_output();
        port.guest_write(b"-UP");
        assert_eq!(shared.lock().unwrap().as_slice(), b"TINY-UP");
    }
}
