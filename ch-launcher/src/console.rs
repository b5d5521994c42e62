//! The serial console relay: the guest's serial port on one side (the PTY
//! or the unix socket the hypervisor serves it on), the `virt-serial0` unix
//! socket (virt-handler, `virtctl console`, `ch-launcher run` attached to a
//! terminal) on the other, and every byte the guest writes appended to
//! `virt-serial0-log`.
//!
//! The launcher owns `virt-serial0`: one client at a time, and a new
//! connection replaces the old one, because that is how virt-handler
//! reconnects. Guest output read while no client is connected still goes to
//! the log, so the log holds everything from the first byte on.
//!
//! The guest side is read until its end (EOF, or EIO on a PTY whose master
//! closed), so that whatever the hypervisor wrote before it closed the device
//! is logged and sent. When the hypervisor re-creates the device (Cloud
//! Hypervisor does on every reboot), the new one is relayed once the old one
//! has ended, so nothing is lost or reordered across the switch either.
//!
//! Client input reaches the guest paced like a fast UART (see
//! [`INPUT_RATE`]): typing goes through at once, a paste is spread out.
//! Cloud Hypervisor queues serial input in an unbounded buffer that the
//! guest drains one byte per port read; when a paste outruns the guest that
//! buffer grows, and growing it past ~128 KiB makes glibc `mremap` it, which
//! CH's own seccomp filter forbids for its serial-manager thread: CH dies
//! with SIGSYS and the VM with it (an upstream CH bug; seen with 1-2 MB
//! pasted at full speed).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::termios::{self, SetArg};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::ConsoleSource;
use crate::console_log::{ConsoleLog, LogLimits, LogWriter};
use crate::util::{remove_socket, sleep_until};

/// The default mode of `virt-serial0` and its log: only the launcher's user.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Guest output bytes queued for a client that does not read. Beyond this the
/// client is disconnected (the log still has every byte), so that a stuck
/// client can neither block the relay nor grow the launcher's memory. Counted
/// in bytes, not reads: Cloud Hypervisor writes the guest's output a byte at
/// a time, so reads are often tiny, and a client that pauses for a moment
/// must not be dropped for it.
const CLIENT_QUEUE_BYTES: usize = 1 << 20;

/// Client input chunks queued for the relay; beyond this the client's input
/// waits (backpressure).
const CLIENT_INPUT_CHUNKS: usize = 256;

const READ_CHUNK: usize = 4096;

/// Client input buffered while the guest does not take it; beyond this the
/// relay stops reading from the client (backpressure).
const MAX_PENDING_INPUT: usize = 64 * 1024;

/// The pace of client input to the guest, in bytes per second: what a
/// 16550 UART delivers at 115200 baud (10 bits per byte on the wire), the
/// fastest line speed guests commonly configure, so any guest's serial
/// driver keeps up with it. Measured with Cloud Hypervisor v48 and the tiny
/// test guest, which drains about 13.6 KB/s while echoing every byte: at
/// 64 KiB/s CH's input buffer outgrew the guest and CH died (SIGSYS) after
/// ~330 KB; at this pace 2 MiB went through with CH alive. A guest that
/// stops reading its serial port altogether can still make CH die after
/// about 200 KB of unread input; only CH can fix that (bound its buffer).
pub const INPUT_RATE: u32 = 115_200 / 10;

/// Input that may go to the guest at once before pacing starts: a burst of
/// typing or a short command line is never delayed, and CH's buffer never
/// holds much more than this beyond what the guest has read.
const INPUT_BURST: usize = 4096;

/// The largest single write of client input to the guest.
const INPUT_CHUNK: usize = 512;

/// How long a replaced serial device may stay open before the relay gives up
/// on reading it to its end and moves to the new one. The hypervisor closes
/// the old device before it announces the new one, so this only guards
/// against a device that never ends.
const SWITCH_WAIT: Duration = Duration::from_secs(2);

/// Where the relay listens and logs, and with which permissions.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Permission bits of the socket and of the log file.
    pub mode: u32,
    /// When the log is rotated and how many old files are kept.
    pub log_limits: LogLimits,
}

/// Opens the serial PTY (the slave side Cloud Hypervisor names in `vm.info`)
/// the way the relay needs it: read-write, non-blocking, never as our
/// controlling terminal, and in raw mode so the line discipline neither echoes
/// the client's input back nor rewrites the guest's output.
///
/// Call it before the VM boots: the guest's first bytes are lost when nobody
/// holds the PTY open.
pub fn open_pty(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let mut attrs = termios::tcgetattr(&file).map_err(io::Error::from)?;
    termios::cfmakeraw(&mut attrs);
    termios::tcsetattr(&file, SetArg::TCSANOW, &attrs).map_err(io::Error::from)?;
    Ok(file)
}

/// The guest's end of the relay: the serial device the hypervisor serves.
pub enum GuestSerial {
    /// A PTY slave opened with [`open_pty`].
    Pty(AsyncFd<File>),
    /// A client connection to the hypervisor's serial socket.
    Socket(UnixStream),
}

impl GuestSerial {
    /// Attaches to the serial console `source` names; `Ok(None)` for
    /// consoles the launcher does not relay (none, or served by the
    /// hypervisor itself).
    pub async fn open(source: &ConsoleSource) -> io::Result<Option<GuestSerial>> {
        match source {
            ConsoleSource::Pty(path) => open_pty(path)
                .and_then(GuestSerial::pty)
                .map(Some)
                .map_err(|e| annotate(e, "opening serial PTY", path)),
            ConsoleSource::UnixSocket(path) => UnixStream::connect(path)
                .await
                .map(|s| Some(GuestSerial::Socket(s)))
                .map_err(|e| annotate(e, "connecting to serial socket", path)),
            ConsoleSource::ServedByHypervisor | ConsoleSource::None => Ok(None),
        }
    }

    /// Relays a PTY opened with [`open_pty`].
    pub fn pty(file: File) -> io::Result<GuestSerial> {
        register(file).map(GuestSerial::Pty)
    }

    /// Reads guest output; `Ok(0)` once the hypervisor closed its side.
    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            GuestSerial::Pty(pty) => match read_fd(pty, buf).await {
                // A PTY whose master is closed reads as EIO: its end.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
                other => other,
            },
            GuestSerial::Socket(stream) => loop {
                stream.readable().await?;
                match stream.try_read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    // The hypervisor closed its side with input it had not
                    // read (a VMM killed before boot never reads any): that
                    // is the device's end too, not a failure.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(0),
                    other => return other,
                }
            },
        }
    }

    /// Writes some of `data` to the guest.
    async fn write(&self, data: &[u8]) -> io::Result<usize> {
        let written = match self {
            GuestSerial::Pty(pty) => write_fd(pty, data).await,
            GuestSerial::Socket(stream) => loop {
                stream.writable().await?;
                match stream.try_write(data) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => break other,
                }
            },
        };
        match written {
            Ok(0) if !data.is_empty() => Err(io::ErrorKind::WriteZero.into()),
            other => other,
        }
    }
}

/// A running relay. Dropping it stops the relay and removes the socket; the
/// log stays.
pub struct ConsoleRelay {
    socket: PathBuf,
    task: Option<JoinHandle<()>>,
    control: mpsc::UnboundedSender<RelayControl>,
    guest_closed: watch::Receiver<bool>,
}

enum RelayControl {
    /// The hypervisor replaced the serial device (Cloud Hypervisor does on
    /// every reboot).
    Switch(GuestSerial),
    /// The first serial device of a detached relay, and the channel that
    /// reports its end from now on.
    Attach(GuestSerial, watch::Sender<bool>),
    /// Hand the client what is queued for it (waiting up to the limit), then stop.
    Finish(Duration),
}

impl ConsoleRelay {
    /// Binds the socket, opens the log and starts relaying `guest`. Must be
    /// called inside a tokio runtime.
    pub fn start(guest: GuestSerial, config: &ConsoleConfig) -> io::Result<ConsoleRelay> {
        Self::spawn(Some(guest), config)
    }

    /// Binds the socket and opens the log before the serial device exists
    /// (the runner does it while the hypervisor starts); clients can connect
    /// at once, and [`ConsoleRelay::attach`] brings the device. Until then
    /// the relay counts as finished: there is no device whose end to await.
    pub fn start_detached(config: &ConsoleConfig) -> io::Result<ConsoleRelay> {
        Self::spawn(None, config)
    }

    fn spawn(guest: Option<GuestSerial>, config: &ConsoleConfig) -> io::Result<ConsoleRelay> {
        let log = ConsoleLog::open(&config.log, config.mode, config.log_limits)
            .and_then(LogWriter::start)
            .map_err(|e| annotate(e, "opening console log", &config.log))?;
        let listener = crate::util::bind_tokio_socket(&config.socket, config.mode)?;
        let (closed_tx, guest_closed) = watch::channel(guest.is_none());
        let (control, control_rx) = mpsc::unbounded_channel();
        let relay = Relay {
            guest,
            next: None,
            switch_deadline: None,
            guest_closed: closed_tx,
            log,
            log_ok: true,
            client: None,
            pending_input: Vec::new(),
            input_clock: Instant::now(),
        };
        let task = tokio::spawn(relay.run(listener, control_rx));
        Ok(ConsoleRelay {
            socket: config.socket.clone(),
            task: Some(task),
            control,
            guest_closed,
        })
    }

    /// Relays `guest`, the first serial device of a relay from
    /// [`ConsoleRelay::start_detached`]. The device is open (its bytes wait
    /// in it) before this returns, so the guest's output from boot on is
    /// relayed.
    pub fn attach(&mut self, guest: GuestSerial) {
        // Seen by `finish` at once, before the relay task takes the device.
        self.guest_closed = {
            let (tx, rx) = watch::channel(false);
            let _ = self.control.send(RelayControl::Attach(guest, tx));
            rx
        };
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Relays `guest` from now on, once the current serial device has ended
    /// (so its last bytes come first); the client stays connected.
    pub fn switch(&self, guest: GuestSerial) {
        let _ = self.control.send(RelayControl::Switch(guest));
    }

    /// Stops the relay once the hypervisor closed the serial device and its
    /// last bytes are logged and handed to the client, or after about
    /// `limit` (twice at most: the device's end, then the client's drain).
    pub async fn finish(mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.guest_closed.wait_for(|closed| *closed)).await;
        let _ = self.control.send(RelayControl::Finish(limit));
        if let Some(task) = self.task.take() {
            // The relay bounds its own wait by `limit`; the margin covers the rest.
            let _ = tokio::time::timeout(limit + Duration::from_millis(100), task).await;
        }
    }
}

impl Drop for ConsoleRelay {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        remove_socket(&self.socket);
    }
}

fn annotate(err: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

/// The connected client: a task that writes guest output to it and one that
/// passes its input back to the relay.
struct Client {
    output: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes in `output` the client has not taken yet.
    queued: Arc<AtomicUsize>,
    /// Closes when the client is gone.
    input: mpsc::Receiver<Vec<u8>>,
    /// Writes `output` to the client.
    task: Option<JoinHandle<()>>,
    /// Reads the client's input into `input`.
    input_task: JoinHandle<()>,
}

impl Client {
    /// Queues guest output for the client; false when the client has
    /// [`CLIENT_QUEUE_BYTES`] waiting already, or is gone.
    fn send_output(&self, bytes: &[u8]) -> bool {
        let queued = self.queued.fetch_add(bytes.len(), Ordering::SeqCst) + bytes.len();
        queued <= CLIENT_QUEUE_BYTES && self.output.send(bytes.to_vec()).is_ok()
    }

    /// Lets the client receive what is already queued (for up to `limit`),
    /// then closes it.
    async fn finish(mut self, limit: Duration) {
        let task = self.task.take();
        // Closing the queue ends the client task once it has written the rest.
        drop(self);
        if let Some(mut task) = task {
            if tokio::time::timeout(limit, &mut task).await.is_err() {
                tracing::warn!("console client did not take the last output in time");
                task.abort();
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Aborting drops both halves of the stream, so the client sees the
        // connection close.
        self.input_task.abort();
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The relay's state; [`Relay::run`] owns it.
struct Relay {
    /// The serial device relayed now; `None` after the hypervisor closed it
    /// (until a switch brings a new one).
    guest: Option<GuestSerial>,
    /// The device that replaces `guest` once `guest` has ended.
    next: Option<GuestSerial>,
    /// When to stop waiting for `guest` to end and move to `next` anyway.
    switch_deadline: Option<Instant>,
    guest_closed: watch::Sender<bool>,
    log: LogWriter,
    log_ok: bool,
    client: Option<Client>,
    /// Client input the guest has not taken yet.
    pending_input: Vec<u8>,
    /// Pacing of input: when the input written so far, at [`INPUT_RATE`],
    /// has been "sent". More may be written while it is not in the future.
    input_clock: Instant,
}

impl Relay {
    async fn run(mut self, listener: UnixListener, control: mpsc::UnboundedReceiver<RelayControl>) {
        self.relay(listener, control).await;
        // The guest's last bytes are in the log before the relay ends.
        self.log.close().await;
    }

    async fn relay(
        &mut self,
        listener: UnixListener,
        mut control: mpsc::UnboundedReceiver<RelayControl>,
    ) {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let input_room = self.pending_input.len() < MAX_PENDING_INPUT;
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if self.client.take().is_some() {
                            tracing::info!("new console connection replaces the previous one");
                        } else {
                            tracing::info!("console client connected");
                        }
                        self.client = Some(spawn_client(stream));
                    }
                    Err(e) => {
                        // E.g. out of file descriptors: retry later instead of spinning.
                        tracing::warn!(error = %e, "cannot accept console connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                command = control.recv() => match command {
                    Some(RelayControl::Switch(guest)) => self.switch(guest),
                    Some(RelayControl::Attach(guest, closed)) => self.attach(guest, closed),
                    Some(RelayControl::Finish(limit)) => {
                        if let Some(c) = self.client.take() {
                            c.finish(limit).await;
                        }
                        return;
                    }
                    None => return,
                },
                read = read_guest(self.guest.as_ref(), &mut buf) => self.guest_output(read, &buf),
                written = write_guest_paced(self.guest.as_ref(), &self.pending_input,
                        self.input_clock),
                    if !self.pending_input.is_empty() =>
                {
                    match written {
                        Ok(n) => {
                            self.pending_input.drain(..n);
                            self.input_clock = next_input_clock(self.input_clock,
                                Instant::now(), n);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot write to the serial console");
                            self.pending_input.clear();
                        }
                    }
                }
                input = client_input(&mut self.client), if input_room => match input {
                    Some(bytes) if self.guest.is_some() => self.pending_input.extend_from_slice(&bytes),
                    // The guest has no console right now; typing into the void.
                    Some(_) => tracing::debug!("console input dropped: no serial device"),
                    None => {
                        tracing::info!("console client disconnected");
                        self.client = None;
                    }
                },
                () = sleep_until(self.switch_deadline) => {
                    tracing::warn!(wait = ?SWITCH_WAIT,
                        "the replaced serial device is still open; switching to the new one");
                    self.guest = None;
                    self.pending_input.clear();
                    self.take_next();
                }
            }
        }
    }

    fn attach(&mut self, guest: GuestSerial, closed: watch::Sender<bool>) {
        // From now on the device's end is reported to the receiver the
        // `ConsoleRelay` holds now (it starts at "open").
        self.guest_closed = closed;
        if self.guest.is_some() {
            // Not a detached relay after all: a replacement device.
            self.switch(guest);
        } else {
            tracing::debug!("serial device attached to the console relay");
            self.guest = Some(guest);
        }
    }

    fn switch(&mut self, guest: GuestSerial) {
        if self.guest.is_some() {
            // Read the old device to its end first: it may still hold the
            // guest's last bytes from before the reboot.
            if self.next.replace(guest).is_some() {
                tracing::debug!("a newer serial device replaces one not relayed yet");
            }
            self.switch_deadline = Some(Instant::now() + SWITCH_WAIT);
        } else {
            self.next = Some(guest);
            self.take_next();
        }
    }

    /// Moves to the device waiting in `next`, if any.
    fn take_next(&mut self) {
        self.switch_deadline = None;
        if let Some(next) = self.next.take() {
            tracing::info!("serial console reattached to the hypervisor's new serial device");
            self.guest = Some(next);
            self.guest_closed.send_replace(false);
        }
    }

    fn guest_output(&mut self, read: io::Result<usize>, buf: &[u8]) {
        match read {
            Ok(n) if n > 0 => {
                let bytes = &buf[..n];
                if self.log_ok {
                    if let Err(e) = self.log.write(bytes) {
                        tracing::error!(path = %self.log.path().display(), error = %e,
                            "cannot write the console log; further guest output is not logged");
                        self.log_ok = false;
                    }
                }
                if let Some(c) = &self.client {
                    if !c.send_output(bytes) {
                        tracing::warn!("console client does not keep up; disconnecting it");
                        self.client = None;
                    }
                }
            }
            // The hypervisor closed its side (it exited, or it replaces the
            // device for a reboot). The client stays connected.
            Ok(_) => self.guest_gone(None),
            Err(e) => self.guest_gone(Some(e)),
        }
    }

    fn guest_gone(&mut self, error: Option<io::Error>) {
        match error {
            None => tracing::info!("the hypervisor closed the serial device"),
            Some(e) => {
                tracing::error!(error = %e, "cannot read the serial device; stopped reading it")
            }
        }
        self.guest = None;
        self.pending_input.clear();
        if self.next.is_some() {
            self.take_next();
        } else {
            self.guest_closed.send_replace(true);
        }
    }
}

/// Hands `file` to the tokio reactor.
pub(crate) fn register(file: File) -> io::Result<AsyncFd<File>> {
    // SAFETY: a `File` owns its descriptor: it stays open, refers to the same
    // open file description and is what `as_raw_fd` returns until the
    // `AsyncFd` (which then owns the `File`) is dropped.
    unsafe { AsyncFd::register(file) }.map_err(|e| e.into_parts().1)
}

async fn read_fd(fd: &AsyncFd<File>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|fd| io::Read::read(&mut fd.get_ref(), buf)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn write_fd(fd: &AsyncFd<File>, data: &[u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.writable().await?;
        match guard.try_io(|fd| io::Write::write(&mut fd.get_ref(), data)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Reads guest output; never resolves without a serial device.
async fn read_guest(guest: Option<&GuestSerial>, buf: &mut [u8]) -> io::Result<usize> {
    match guest {
        Some(g) => g.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Writes at most [`INPUT_CHUNK`] bytes of `data` to the guest once the
/// pacing clock allows; never resolves without a serial device.
async fn write_guest_paced(
    guest: Option<&GuestSerial>,
    data: &[u8],
    clock: Instant,
) -> io::Result<usize> {
    let Some(g) = guest else {
        return std::future::pending().await;
    };
    tokio::time::sleep_until(clock).await;
    g.write(&data[..data.len().min(INPUT_CHUNK)]).await
}

/// The pacing clock after `written` more bytes: a token bucket whose clock
/// may lag `now` by at most [`INPUT_BURST`] bytes' worth, so idle time
/// earns a burst and no more.
fn next_input_clock(clock: Instant, now: Instant, written: usize) -> Instant {
    let per_byte = |n: usize| Duration::from_secs_f64(n as f64 / f64::from(INPUT_RATE));
    let earliest = now.checked_sub(per_byte(INPUT_BURST)).unwrap_or(now);
    clock.max(earliest) + per_byte(written)
}

/// The current client's next input; `None` once it is gone; never resolves
/// without a client.
async fn client_input(client: &mut Option<Client>) -> Option<Vec<u8>> {
    match client {
        Some(c) => c.input.recv().await,
        None => std::future::pending().await,
    }
}

fn spawn_client(stream: UnixStream) -> Client {
    let (output, mut output_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let taken = queued.clone();
    let (input_tx, input) = mpsc::channel::<Vec<u8>>(CLIENT_INPUT_CHUNKS);
    let (mut reader, mut writer) = stream.into_split();
    // Output and input in separate tasks: input waiting for the (paced)
    // guest must never hold up the output the client is reading, or a
    // paste the guest echoes would stall its own echo.
    let task = tokio::spawn(async move {
        while let Some(bytes) = output_rx.recv().await {
            if let Err(e) = writer.write_all(&bytes).await {
                tracing::debug!(error = %e, "console client write failed");
                return;
            }
            taken.fetch_sub(bytes.len(), Ordering::SeqCst);
        }
    });
    let input_task = tokio::spawn(async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    if input_tx.send(buf[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "console client read failed");
                    return;
                }
            }
        }
    });
    Client {
        output,
        queued,
        input,
        task: Some(task),
        input_task,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::pty::openpty;
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(5);

    /// A PTY pair standing in for the hypervisor: it holds the master, the
    /// relay opens the slave by path like it does with Cloud Hypervisor's.
    struct FakeSerial {
        master: Arc<AsyncFd<File>>,
        slave_path: PathBuf,
        _slave: OwnedFd,
    }

    fn fake_serial() -> FakeSerial {
        let pty = openpty(None, None).expect("openpty");
        let slave_path = nix::unistd::ttyname(&pty.slave).expect("ttyname");
        let master = File::from(pty.master);
        let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL).expect("getfl");
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(flags)).expect("setfl");
        FakeSerial {
            master: Arc::new(register(master).expect("register")),
            slave_path,
            _slave: pty.slave,
        }
    }

    fn pty_guest(path: &Path) -> GuestSerial {
        GuestSerial::pty(open_pty(path).expect("open pty")).expect("register pty")
    }

    async fn master_write(master: &AsyncFd<File>, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = write_fd(master, data).await?;
            data = &data[n..];
        }
        Ok(())
    }

    fn config(dir: &Path) -> ConsoleConfig {
        ConsoleConfig {
            socket: dir.join("virt-serial0"),
            log: dir.join("virt-serial0-log"),
            mode: DEFAULT_SOCKET_MODE,
            log_limits: LogLimits::default(),
        }
    }

    /// Bytes in the console log and its rotated files.
    fn logged_bytes(log: &Path) -> u64 {
        let name = log.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::read_dir(log.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    async fn read_until(stream: &mut UnixStream, want: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        timeout(WAIT, async {
            while !got.windows(want.len()).any(|w| w == want) {
                let n = stream.read(&mut buf).await.expect("read");
                assert!(n > 0, "connection closed before {want:?}; got {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {want:?}; got {got:?}"));
        got
    }

    async fn read_master_until(master: &AsyncFd<File>, want: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        timeout(WAIT, async {
            while !got.windows(want.len()).any(|w| w == want) {
                let n = read_fd(master, &mut buf).await.expect("read master");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {want:?}; got {got:?}"));
        got
    }

    async fn wait_for_log(path: &Path, want: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.contains(want) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "log never contained {want:?}; has {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn output_before_any_client_is_logged_and_client_sees_later_output() {
        let dir = tempfile::tempdir().unwrap();
        let serial = fake_serial();
        let cfg = config(dir.path());
        let _relay = ConsoleRelay::start(pty_guest(&serial.slave_path), &cfg).unwrap();

        master_write(&serial.master, b"TINY-GUEST-UP\r\n")
            .await
            .unwrap();
        wait_for_log(&cfg.log, "TINY-GUEST-UP\r\n").await;

        let mut client = UnixStream::connect(&cfg.socket).await.unwrap();
        // Let the relay accept before the guest writes again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        master_write(&serial.master, b"second line\r\n")
            .await
            .unwrap();
        read_until(&mut client, b"second line\r\n").await;
        let log = wait_for_log(&cfg.log, "second line").await;
        assert_eq!(log, "TINY-GUEST-UP\r\nsecond line\r\n");
    }

    #[tokio::test]
    async fn client_input_reaches_the_guest_unechoed() {
        let dir = tempfile::tempdir().unwrap();
        let serial = fake_serial();
        let cfg = config(dir.path());
        let _relay = ConsoleRelay::start(pty_guest(&serial.slave_path), &cfg).unwrap();

        let mut client = UnixStream::connect(&cfg.socket).await.unwrap();
        client.write_all(b"hello\n").await.unwrap();
        let got = read_master_until(&serial.master, b"hello\n").await;
        // Raw mode: no CR translation on input.
        assert_eq!(got, b"hello\n");

        // The guest echoes; the line discipline must not have echoed too.
        master_write(&serial.master, b"hello\r\n").await.unwrap();
        let got = read_until(&mut client, b"hello\r\n").await;
        assert_eq!(got, b"hello\r\n");
    }

    #[tokio::test]
    async fn second_connection_replaces_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let serial = fake_serial();
        let cfg = config(dir.path());
        let _relay = ConsoleRelay::start(pty_guest(&serial.slave_path), &cfg).unwrap();

        let mut first = UnixStream::connect(&cfg.socket).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut second = UnixStream::connect(&cfg.socket).await.unwrap();

        let mut buf = [0u8; 16];
        let n = timeout(WAIT, first.read(&mut buf))
            .await
            .expect("first connection was not closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "first connection got data instead of EOF");

        master_write(&serial.master, b"to-second\r\n")
            .await
            .unwrap();
        read_until(&mut second, b"to-second\r\n").await;
        second.write_all(b"x").await.unwrap();
        read_master_until(&serial.master, b"x").await;
    }

    #[tokio::test]
    async fn socket_and_log_get_the_configured_mode_and_socket_is_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let serial = fake_serial();
        let mut cfg = config(dir.path());
        cfg.mode = 0o660;
        // A stale socket from an earlier run must not prevent binding.
        drop(std::os::unix::net::UnixListener::bind(&cfg.socket).unwrap());
        let relay = ConsoleRelay::start(pty_guest(&serial.slave_path), &cfg).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cfg.socket), 0o660);
        assert_eq!(mode(&cfg.log), 0o660);
        drop(relay);
        assert!(!cfg.socket.exists());
        assert!(cfg.log.exists());
    }

    #[tokio::test]
    async fn client_stays_across_a_pty_switch_and_finish_closes_it_after_the_last_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let first = fake_serial();
        let cfg = config(dir.path());
        let relay = ConsoleRelay::start(pty_guest(&first.slave_path), &cfg).unwrap();
        let mut client = UnixStream::connect(&cfg.socket).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        master_write(&first.master, b"TINY-GUEST-UP\r\n")
            .await
            .unwrap();
        read_until(&mut client, b"TINY-GUEST-UP\r\n").await;

        // A reboot: the hypervisor closes the PTY and opens a new one.
        drop(first);
        let second = fake_serial();
        relay.switch(pty_guest(&second.slave_path));
        master_write(&second.master, b"TINY-GUEST-UP\r\n")
            .await
            .unwrap();
        read_until(&mut client, b"TINY-GUEST-UP\r\n").await;
        client.write_all(b"after").await.unwrap();
        read_master_until(&second.master, b"after").await;

        // The VM ends: last output, PTY closed, then the relay finishes.
        master_write(&second.master, b"bye").await.unwrap();
        // Linux discards what the slave has not read when the master closes;
        // a real hypervisor exits long after the guest's last bytes.
        wait_for_log(&cfg.log, "bye").await;
        drop(second);
        relay.finish(WAIT).await;
        let rest = read_until(&mut client, b"bye").await;
        assert!(rest.ends_with(b"bye"));
        let mut buf = [0u8; 16];
        let n = timeout(WAIT, client.read(&mut buf))
            .await
            .expect("client not closed after finish")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(!cfg.socket.exists());
        assert_eq!(
            std::fs::read_to_string(&cfg.log).unwrap(),
            "TINY-GUEST-UP\r\nTINY-GUEST-UP\r\nbye"
        );
    }

    /// A stand-in for the hypervisor's serial socket: it accepts the relay's
    /// connection, like Cloud Hypervisor's `Socket` serial mode.
    async fn socket_guest(path: &Path) -> (GuestSerial, UnixStream) {
        let listener = UnixListener::bind(path).expect("bind serial socket");
        let guest = GuestSerial::open(&ConsoleSource::UnixSocket(path.to_path_buf()))
            .await
            .expect("connect")
            .expect("a relayed console");
        let (hypervisor, _) = listener.accept().await.expect("accept");
        (guest, hypervisor)
    }

    async fn read_to_end(mut stream: UnixStream) -> Vec<u8> {
        let mut got = Vec::new();
        timeout(WAIT, stream.read_to_end(&mut got))
            .await
            .expect("client not closed in time")
            .expect("read client");
        got
    }

    #[tokio::test]
    async fn socket_output_written_right_before_the_hypervisor_closes_is_logged_and_sent() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (guest, mut hypervisor) = socket_guest(&dir.path().join("ch-serial.sock")).await;
        let relay = ConsoleRelay::start(guest, &cfg).unwrap();
        let client = UnixStream::connect(&cfg.socket).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        // A burst far larger than one read, then power-off: the hypervisor
        // closes its side at once, and the launcher finishes right away.
        let mut output = b"TINY-GUEST-UP\r\n".to_vec();
        output.extend((0..200_000u32).map(|i| b'a' + (i % 26) as u8));
        output.extend_from_slice(b"bye");
        let reader = tokio::spawn(read_to_end(client));
        hypervisor.write_all(&output).await.unwrap();
        drop(hypervisor);
        relay.finish(WAIT).await;

        let log = std::fs::read(&cfg.log).unwrap();
        assert_eq!(log.len(), output.len());
        assert!(log == output, "the log differs from the guest output");
        let sent = reader.await.unwrap();
        assert_eq!(sent.len(), output.len());
        assert!(sent == output, "the client got different bytes");
        assert!(!cfg.socket.exists());
    }

    #[tokio::test]
    async fn a_detached_relay_serves_its_socket_early_and_relays_the_device_attached_later() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let mut relay = ConsoleRelay::start_detached(&cfg).unwrap();
        // The client connects before the hypervisor even has a serial device.
        let client = UnixStream::connect(&cfg.socket).await.unwrap();
        let reader = tokio::spawn(read_to_end(client));

        let (guest, mut hypervisor) = socket_guest(&dir.path().join("ch-serial.sock")).await;
        // Output written before the relay task takes the device is kept.
        hypervisor.write_all(b"TINY-GUEST-UP\r\n").await.unwrap();
        relay.attach(guest);
        hypervisor.write_all(b"bye").await.unwrap();
        drop(hypervisor);
        // `finish` waits for the attached device's end, even when called
        // before the relay task took the device.
        relay.finish(WAIT).await;

        assert_eq!(std::fs::read(&cfg.log).unwrap(), b"TINY-GUEST-UP\r\nbye");
        assert_eq!(reader.await.unwrap(), b"TINY-GUEST-UP\r\nbye");
        assert!(!cfg.socket.exists());
    }

    #[tokio::test]
    async fn a_detached_relay_that_never_got_a_device_finishes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let relay = ConsoleRelay::start_detached(&cfg).unwrap();
        let started = std::time::Instant::now();
        relay.finish(Duration::from_secs(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "finish waited {:?}",
            started.elapsed()
        );
        assert!(!cfg.socket.exists());
        assert!(cfg.log.exists());
    }

    #[tokio::test]
    async fn socket_client_input_reaches_the_guest() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (guest, mut hypervisor) = socket_guest(&dir.path().join("ch-serial.sock")).await;
        let _relay = ConsoleRelay::start(guest, &cfg).unwrap();
        let mut client = UnixStream::connect(&cfg.socket).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        read_until(&mut hypervisor, b"hello").await;
        hypervisor.write_all(b"hello").await.unwrap();
        read_until(&mut client, b"hello").await;
    }

    #[tokio::test]
    async fn a_switch_relays_the_old_device_to_its_end_before_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (old, mut old_side) = socket_guest(&dir.path().join("old.sock")).await;
        let relay = ConsoleRelay::start(old, &cfg).unwrap();
        let mut client = UnixStream::connect(&cfg.socket).await.unwrap();

        // The new device is announced and already talks while the old one
        // still holds the guest's last bytes from before the reboot.
        let (new, mut new_side) = socket_guest(&dir.path().join("new.sock")).await;
        relay.switch(new);
        new_side.write_all(b"TINY-GUEST-UP\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        old_side.write_all(b"r").await.unwrap();
        drop(old_side);

        let got = read_until(&mut client, b"TINY-GUEST-UP\r\n").await;
        assert_eq!(got, b"rTINY-GUEST-UP\r\n");
        // The log has a writer thread of its own: it follows shortly.
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut log = String::new();
        while tokio::time::Instant::now() < deadline {
            log = std::fs::read_to_string(&cfg.log).unwrap();
            if log.len() >= "rTINY-GUEST-UP\r\n".len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(log, "rTINY-GUEST-UP\r\n");
        // Input goes to the new device.
        client.write_all(b"x").await.unwrap();
        read_until(&mut new_side, b"x").await;
    }

    #[tokio::test]
    async fn a_replaced_device_that_never_ends_is_dropped_after_the_switch_wait() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (old, _old_side) = socket_guest(&dir.path().join("old.sock")).await;
        let relay = ConsoleRelay::start(old, &cfg).unwrap();
        let mut client = UnixStream::connect(&cfg.socket).await.unwrap();
        let (new, mut new_side) = socket_guest(&dir.path().join("new.sock")).await;
        let switched = Instant::now();
        relay.switch(new);
        new_side.write_all(b"after").await.unwrap();
        read_until(&mut client, b"after").await;
        assert!(switched.elapsed() >= SWITCH_WAIT);
    }

    #[tokio::test]
    async fn a_hypervisor_closing_with_unread_input_ends_the_device_without_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (guest, hypervisor) = socket_guest(&dir.path().join("ch-serial.sock")).await;
        // Input the hypervisor never reads, then it goes away (a VMM killed
        // before boot): the kernel resets the connection.
        guest.write(b"typed before boot").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(hypervisor);
        let mut buf = [0u8; 16];
        let n = timeout(WAIT, guest.read(&mut buf))
            .await
            .expect("read")
            .expect("a reset is the device's end, not an error");
        assert_eq!(n, 0);
    }

    #[test]
    fn input_pacing_lets_a_burst_through_and_then_holds_the_rate() {
        let now = Instant::now();
        let per_byte = 1.0 / f64::from(INPUT_RATE);
        // Idle for long: the first burst is not delayed.
        let clock = next_input_clock(now - Duration::from_secs(60), now, INPUT_BURST);
        assert!(
            clock <= now + Duration::from_millis(1),
            "a burst is due now"
        );
        // A long paste: the clock advances by its length at the rate.
        let mut clock = clock;
        for _ in 0..64 {
            clock = next_input_clock(clock, now, INPUT_CHUNK);
        }
        let expected = Duration::from_secs_f64(64.0 * INPUT_CHUNK as f64 * per_byte);
        let ahead = clock - now;
        assert!(
            ahead + Duration::from_millis(1) >= expected && ahead <= expected,
            "{ahead:?} vs {expected:?}"
        );
    }

    #[tokio::test]
    async fn a_paste_reaches_the_guest_no_faster_than_the_input_rate() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (guest, mut hypervisor) = socket_guest(&dir.path().join("ch-serial.sock")).await;
        let _relay = ConsoleRelay::start(guest, &cfg).unwrap();
        let mut client = UnixStream::connect(&cfg.socket).await.unwrap();
        // A quarter second's worth at the rate, beyond the burst.
        let size = INPUT_BURST + INPUT_RATE as usize / 4;
        assert!(size > 2 * INPUT_CHUNK);
        let paste: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            client.write_all(&paste).await.unwrap();
            client
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        timeout(WAIT, async {
            while got.len() < size {
                let n = hypervisor.read(&mut buf).await.unwrap();
                assert!(n > 0);
                assert!(n <= INPUT_CHUNK * 2, "a write larger than the chunk: {n}");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("the paste never arrived");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(240),
            "{size} bytes arrived in {took:?}: not paced"
        );
        assert_eq!(got.len(), size);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_client_pausing_during_bytewise_output_stays_and_a_stuck_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (guest, mut hypervisor) = socket_guest(&dir.path().join("ch-serial.sock")).await;
        let _relay = ConsoleRelay::start(guest, &cfg).unwrap();
        let mut client = UnixStream::connect(&cfg.socket).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The client does not read for a moment: its socket buffer fills.
        let burst = vec![b'b'; 512 * 1024];
        hypervisor.write_all(&burst).await.unwrap();
        // Then output like CH echoing a paste: one byte per write.
        for _ in 0..600 {
            hypervisor.write_all(b"e").await.unwrap();
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        hypervisor.write_all(b"END").await.unwrap();
        let mut first = vec![0u8; burst.len()];
        timeout(WAIT, client.read_exact(&mut first))
            .await
            .expect("the burst in time")
            .expect("the client was dropped");
        assert!(first == burst);
        let got = read_until(&mut client, b"END").await;
        assert_eq!(got.len(), 603, "the client lost bytes");

        // A client that stops reading is dropped once a whole queue waits
        // for it; the log still gets everything.
        let chunk = vec![b'x'; 64 * 1024];
        let rounds = 3 * CLIENT_QUEUE_BYTES / chunk.len();
        for _ in 0..rounds {
            hypervisor.write_all(&chunk).await.unwrap();
        }
        let logged = burst.len() + 603 + rounds * chunk.len();
        let deadline = Instant::now() + WAIT;
        // More than one log file holds: the log rotated on the way.
        while logged_bytes(&cfg.log) < logged as u64 {
            assert!(Instant::now() < deadline, "the log never got all output");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rest = read_to_end(client).await;
        assert!(
            rest.len() < rounds * chunk.len(),
            "the stuck client was kept"
        );
    }
}
