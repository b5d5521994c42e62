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
use std::sync::Arc;
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
    task: JoinHandle<()>,
    pty_closed: watch::Receiver<bool>,
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
        let pty = Arc::new(register(pty)?);
        let (closed_tx, pty_closed) = watch::channel(false);
        let task = tokio::spawn(relay(pty, listener, log, config.log.clone(), closed_tx));
        Ok(ConsoleRelay {
            socket: config.socket.clone(),
            task,
            pty_closed,
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Stops the relay once the hypervisor closed the PTY and the guest's
    /// last bytes are logged, or after `limit`.
    pub async fn finish(mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.pty_closed.wait_for(|closed| *closed)).await;
    }
}

impl Drop for ConsoleRelay {
    fn drop(&mut self) {
        self.task.abort();
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

/// The connected client: a task that writes guest output to it and copies its
/// input to the PTY.
struct Client {
    output: mpsc::Sender<Vec<u8>>,
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

async fn relay(
    pty: Arc<AsyncFd<File>>,
    listener: UnixListener,
    mut log: File,
    log_path: PathBuf,
    pty_closed: watch::Sender<bool>,
) {
    let mut client: Option<Client> = None;
    let mut pty_open = true;
    let mut log_ok = true;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if client.take().is_some() {
                        tracing::info!("new console connection replaces the previous one");
                    } else {
                        tracing::info!("console client connected");
                    }
                    client = Some(spawn_client(stream, pty.clone(), pty_open));
                }
                Err(e) => {
                    // E.g. out of file descriptors: retry later instead of spinning.
                    tracing::warn!(error = %e, "cannot accept console connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            read = read_pty(&pty, &mut buf), if pty_open => {
                match read {
                Ok(0) => {
                    tracing::info!("serial console closed by the hypervisor");
                    pty_open = false;
                    if let Some(c) = client.take() { c.drain(); }
                }
                Ok(n) => {
                    let bytes = &buf[..n];
                    if log_ok {
                        if let Err(e) = log.write_all(bytes) {
                            tracing::error!(path = %log_path.display(), error = %e,
                                "cannot write console log; further guest output is not logged");
                            log_ok = false;
                        }
                    }
                    if let Some(c) = &client {
                        if c.output.try_send(bytes.to_vec()).is_err() {
                            tracing::warn!("console client does not keep up or is gone; disconnecting it");
                            client = None;
                        }
                    }
                }
                // EIO: the master side (the hypervisor) is gone.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    tracing::info!("serial console closed by the hypervisor");
                    pty_open = false;
                    if let Some(c) = client.take() { c.drain(); }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the serial console; relay stops");
                    pty_open = false;
                    if let Some(c) = client.take() { c.drain(); }
                }
                }
                if !pty_open {
                    pty_closed.send_replace(true);
                }
            },
            () = client_gone(&mut client) => {
                tracing::info!("console client disconnected");
                client = None;
            }
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

async fn read_pty(pty: &AsyncFd<File>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = pty.readable().await?;
        match guard.try_io(|fd| io::Read::read(&mut fd.get_ref(), buf)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn write_pty(pty: &AsyncFd<File>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = pty.writable().await?;
        match guard.try_io(|fd| io::Write::write(&mut fd.get_ref(), data)) {
            Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Resolves when the current client's task has ended; never when there is none.
async fn client_gone(client: &mut Option<Client>) {
    match client {
        Some(Client {
            task: Some(task), ..
        }) => {
            let _ = task.await;
        }
        _ => std::future::pending().await,
    }
}

fn spawn_client(stream: UnixStream, pty: Arc<AsyncFd<File>>, pty_open: bool) -> Client {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE_CHUNKS);
    let task = tokio::spawn(async move {
        let (mut reader, mut writer) = stream.into_split();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut input_open = true;
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(bytes) => {
                        if let Err(e) = writer.write_all(&bytes).await {
                            tracing::debug!(error = %e, "console client write failed");
                            return;
                        }
                    }
                    None => return,
                },
                read = reader.read(&mut buf), if input_open => match read {
                    Ok(0) => return,
                    Ok(n) if pty_open => {
                        if let Err(e) = write_pty(&pty, &buf[..n]).await {
                            tracing::warn!(error = %e, "cannot write to the serial console");
                            input_open = false;
                        }
                    }
                    // The guest console is gone; the client's input has nowhere to go.
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "console client read failed");
                        return;
                    }
                },
            }
        }
    });
    Client {
        output: tx,
        task: Some(task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::pty::openpty;
    use std::os::fd::OwnedFd;
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
                let n = read_pty(master, &mut buf).await.expect("read master");
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

        write_pty(&serial.master, b"TINY-GUEST-UP\r\n")
            .await
            .unwrap();
        wait_for_log(&cfg.log, "TINY-GUEST-UP\r\n").await;

        let mut client = UnixStream::connect(&cfg.socket).await.unwrap();
        // Let the relay accept before the guest writes again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        write_pty(&serial.master, b"second line\r\n").await.unwrap();
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
        write_pty(&serial.master, b"hello\r\n").await.unwrap();
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

        write_pty(&serial.master, b"to-second\r\n").await.unwrap();
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
    async fn hypervisor_closing_the_pty_closes_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let serial = fake_serial();
        let cfg = config(dir.path());
        let _relay = ConsoleRelay::start(open_pty(&serial.slave_path).unwrap(), &cfg).unwrap();
        let mut client = UnixStream::connect(&cfg.socket).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        write_pty(&serial.master, b"bye\r\n").await.unwrap();
        read_until(&mut client, b"bye\r\n").await;
        let FakeSerial { master, _slave, .. } = serial;
        drop(master);
        drop(_slave);
        let mut buf = [0u8; 16];
        let n = timeout(WAIT, client.read(&mut buf))
            .await
            .expect("client not closed after the PTY went away")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
