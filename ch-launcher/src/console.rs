//! The serial console relay: the guest's serial PTY on one side, the
//! `virt-serial0` unix socket (virt-handler, `virtctl console`,
//! `ch-launcher run` attached to a terminal) on the other, and every byte the
//! guest writes appended to `virt-serial0-log`.
//!
//! The launcher owns the socket: one client at a time, and a new connection
//! replaces the old one, because that is how virt-handler reconnects. Guest
//! output read while no client is connected still goes to the log, so the
//! log holds everything from the first byte on.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::termios::{self, SetArg};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The default mode of `virt-serial0` and its log: only the launcher's user.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Guest output chunks queued for a client that does not read. Beyond this the
/// client is disconnected (the log still has every byte), so that a stuck
/// client can neither block the relay nor grow the launcher's memory.
const CLIENT_QUEUE_CHUNKS: usize = 256;

const READ_CHUNK: usize = 4096;

/// Client input buffered while the PTY does not take it; beyond this the
/// relay stops reading from the client (backpressure).
const MAX_PENDING_INPUT: usize = 64 * 1024;

/// Where the relay listens and logs, and with which permissions.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Permission bits of the socket and of the log file.
    pub mode: u32,
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

/// A running relay. Dropping it stops the relay and removes the socket; the
/// log stays.
pub struct ConsoleRelay {
    socket: PathBuf,
    task: Option<JoinHandle<()>>,
    control: mpsc::UnboundedSender<RelayControl>,
    pty_closed: watch::Receiver<bool>,
}

enum RelayControl {
    /// The hypervisor replaced the serial PTY (Cloud Hypervisor does on reboot).
    SwitchPty(File),
    /// Hand the client what is queued for it, then stop.
    Finish,
}

impl ConsoleRelay {
    /// Binds the socket, opens the log and starts relaying `pty` (as returned
    /// by [`open_pty`]). Must be called inside a tokio runtime.
    pub fn start(pty: File, config: &ConsoleConfig) -> io::Result<ConsoleRelay> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(config.mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&config.log)
            .map_err(|e| annotate(e, "opening console log", &config.log))?;
        // The mode given to open() only applies to a new file.
        log.set_permissions(Permissions::from_mode(config.mode))
            .map_err(|e| annotate(e, "setting mode of console log", &config.log))?;
        let listener = bind_socket(&config.socket, config.mode)?;
        let pty = register(pty)?;
        let (closed_tx, pty_closed) = watch::channel(false);
        let (control, control_rx) = mpsc::unbounded_channel();
        let relay = Relay {
            pty: Some(pty),
            pty_closed: closed_tx,
            log,
            log_path: config.log.clone(),
            log_ok: true,
            client: None,
            pending_input: Vec::new(),
        };
        let task = tokio::spawn(relay.run(listener, control_rx));
        Ok(ConsoleRelay {
            socket: config.socket.clone(),
            task: Some(task),
            control,
            pty_closed,
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Relays `pty` (as returned by [`open_pty`]) from now on instead of the
    /// current one; the client stays connected.
    pub fn switch_pty(&self, pty: File) {
        let _ = self.control.send(RelayControl::SwitchPty(pty));
    }

    /// Stops the relay once the hypervisor closed the PTY (so the guest's
    /// last bytes are logged and sent), or after `limit`.
    pub async fn finish(mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.pty_closed.wait_for(|closed| *closed)).await;
        let _ = self.control.send(RelayControl::Finish);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(limit, task).await;
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

/// Binds a unix socket at `path` with permission bits `mode`, replacing a
/// stale socket file left by an earlier launcher.
pub(crate) fn bind_socket(path: &Path, mode: u32) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "removed stale socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(annotate(e, "removing stale socket", path)),
    }
    let listener = UnixListener::bind(path).map_err(|e| annotate(e, "binding socket", path))?;
    // The per-VM directory is 0700, so the socket is never reachable by
    // others between bind() and chmod().
    std::fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(|e| annotate(e, "setting socket mode", path))?;
    Ok(listener)
}

pub(crate) fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove socket");
        }
    }
}

fn annotate(err: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

/// The connected client: a task that writes guest output to it and passes
/// its input back to the relay.
struct Client {
    output: mpsc::Sender<Vec<u8>>,
    /// Closes when the client is gone.
    input: mpsc::Receiver<Vec<u8>>,
    task: Option<JoinHandle<()>>,
}

impl Client {
    /// Lets the client receive what is already queued, then closes it.
    fn drain(mut self) {
        self.task = None;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Aborting drops the stream, so the client sees the connection close.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The relay's state; [`Relay::run`] owns it.
struct Relay {
    /// `None` after the hypervisor closed it (until a switch brings a new one).
    pty: Option<AsyncFd<File>>,
    pty_closed: watch::Sender<bool>,
    log: File,
    log_path: PathBuf,
    log_ok: bool,
    client: Option<Client>,
    /// Client input the PTY has not taken yet.
    pending_input: Vec<u8>,
}

impl Relay {
    async fn run(
        mut self,
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
                    Some(RelayControl::SwitchPty(file)) => self.switch(file),
                    Some(RelayControl::Finish) | None => {
                        if let Some(c) = self.client.take() {
                            c.drain();
                        }
                        return;
                    }
                },
                read = read_pty(self.pty.as_ref(), &mut buf) => self.guest_output(read, &buf),
                written = write_pty(self.pty.as_ref(), &self.pending_input),
                    if !self.pending_input.is_empty() =>
                {
                    match written {
                        Ok(n) => {
                            self.pending_input.drain(..n);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot write to the serial console");
                            self.pending_input.clear();
                        }
                    }
                }
                input = client_input(&mut self.client), if input_room => match input {
                    Some(bytes) if self.pty.is_some() => self.pending_input.extend_from_slice(&bytes),
                    // The guest has no console right now; typing into the void.
                    Some(_) => tracing::debug!("console input dropped: no serial PTY"),
                    None => {
                        tracing::info!("console client disconnected");
                        self.client = None;
                    }
                },
            }
        }
    }

    fn switch(&mut self, file: File) {
        match register(file) {
            Ok(pty) => {
                tracing::info!("serial console reattached to the hypervisor's new PTY");
                self.pty = Some(pty);
                self.pty_closed.send_replace(false);
            }
            Err(e) => tracing::error!(error = %e, "cannot watch the new serial PTY"),
        }
    }

    fn guest_output(&mut self, read: io::Result<usize>, buf: &[u8]) {
        match read {
            Ok(n) if n > 0 => {
                let bytes = &buf[..n];
                if self.log_ok {
                    if let Err(e) = self.log.write_all(bytes) {
                        tracing::error!(path = %self.log_path.display(), error = %e,
                            "cannot write the console log; further guest output is not logged");
                        self.log_ok = false;
                    }
                }
                if let Some(c) = &self.client {
                    if c.output.try_send(bytes.to_vec()).is_err() {
                        tracing::warn!("console client does not keep up; disconnecting it");
                        self.client = None;
                    }
                }
            }
            // EOF or EIO: the hypervisor closed its side (it exited, or it
            // replaces the PTY for a reboot). The client stays connected.
            Ok(_) => self.pty_gone(None),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => self.pty_gone(None),
            Err(e) => self.pty_gone(Some(e)),
        }
    }

    fn pty_gone(&mut self, error: Option<io::Error>) {
        match error {
            None => tracing::info!("the hypervisor closed the serial PTY"),
            Some(e) => {
                tracing::error!(error = %e, "cannot read the serial PTY; stopped reading it")
            }
        }
        self.pty = None;
        self.pending_input.clear();
        self.pty_closed.send_replace(true);
    }
}

/// Hands `file` to the tokio reactor.
pub(crate) fn register(file: File) -> io::Result<AsyncFd<File>> {
    // SAFETY: a `File` owns its descriptor: it stays open, refers to the same
    // open file description and is what `as_raw_fd` returns until the
    // `AsyncFd` (which then owns the `File`) is dropped.
    unsafe { AsyncFd::register(file) }.map_err(|e| e.into_parts().1)
}

/// Reads guest output; never resolves without a PTY.
async fn read_pty(pty: Option<&AsyncFd<File>>, buf: &mut [u8]) -> io::Result<usize> {
    let Some(pty) = pty else {
        return std::future::pending().await;
    };
    loop {
        let mut guard = pty.readable().await?;
        match guard.try_io(|fd| io::Read::read(&mut fd.get_ref(), buf)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Writes some of `data` to the guest; never resolves without a PTY.
async fn write_pty(pty: Option<&AsyncFd<File>>, data: &[u8]) -> io::Result<usize> {
    let Some(pty) = pty else {
        return std::future::pending().await;
    };
    loop {
        let mut guard = pty.writable().await?;
        match guard.try_io(|fd| io::Write::write(&mut fd.get_ref(), data)) {
            Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
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
    let (output, mut output_rx) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE_CHUNKS);
    let (input_tx, input) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE_CHUNKS);
    let task = tokio::spawn(async move {
        let (mut reader, mut writer) = stream.into_split();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            tokio::select! {
                out = output_rx.recv() => match out {
                    Some(bytes) => {
                        if let Err(e) = writer.write_all(&bytes).await {
                            tracing::debug!(error = %e, "console client write failed");
                            return;
                        }
                    }
                    None => return,
                },
                read = reader.read(&mut buf) => match read {
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
                },
            }
        }
    });
    Client {
        output,
        input,
        task: Some(task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::pty::openpty;
    use std::os::fd::OwnedFd;
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
        let fd = std::os::fd::AsRawFd::as_raw_fd(&master);
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).expect("getfl");
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).expect("setfl");
        FakeSerial {
            master: Arc::new(register(master).expect("register")),
            slave_path,
            _slave: pty.slave,
        }
    }

    async fn master_write(master: &AsyncFd<File>, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = write_pty(Some(master), data).await?;
            data = &data[n..];
        }
        Ok(())
    }

    fn config(dir: &Path) -> ConsoleConfig {
        ConsoleConfig {
            socket: dir.join("virt-serial0"),
            log: dir.join("virt-serial0-log"),
            mode: DEFAULT_SOCKET_MODE,
        }
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
                let n = read_pty(Some(master), &mut buf).await.expect("read master");
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
        let _relay = ConsoleRelay::start(open_pty(&serial.slave_path).unwrap(), &cfg).unwrap();

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
        let _relay = ConsoleRelay::start(open_pty(&serial.slave_path).unwrap(), &cfg).unwrap();

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
        let _relay = ConsoleRelay::start(open_pty(&serial.slave_path).unwrap(), &cfg).unwrap();

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
        std::fs::write(&cfg.socket, b"stale").unwrap();
        let relay = ConsoleRelay::start(open_pty(&serial.slave_path).unwrap(), &cfg).unwrap();
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
        let relay = ConsoleRelay::start(open_pty(&first.slave_path).unwrap(), &cfg).unwrap();
        let mut client = UnixStream::connect(&cfg.socket).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        master_write(&first.master, b"TINY-GUEST-UP\r\n")
            .await
            .unwrap();
        read_until(&mut client, b"TINY-GUEST-UP\r\n").await;

        // A reboot: the hypervisor closes the PTY and opens a new one.
        drop(first);
        let second = fake_serial();
        relay.switch_pty(open_pty(&second.slave_path).unwrap());
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
}
