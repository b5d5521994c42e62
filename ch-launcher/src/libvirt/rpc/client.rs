//! Clients of libvirtd's remote protocol over its local unix socket.
//!
//! [`Client`] is the asynchronous one the driver uses on the launcher's
//! current-thread tokio runtime: calls are `async fn`s, one reader task
//! matches replies to calls by serial number, forwards domain events to a
//! channel and answers keepalive pings. [`BlockingClient`] does the same
//! calls on a plain blocking socket, for code that cannot await: the
//! driver's `Drop` (cleanup must happen even while the runtime shuts down)
//! and the synchronous host-capability probe.
//!
//! Connection set-up is what libvirt's own remote driver does
//! (`src/remote/remote_driver.c`): `AUTH_LIST`, `AUTH_POLKIT` when the
//! daemon asks for it, then `CONNECT_OPEN` with the URI minus transport
//! and socket parameter. Keepalive is never requested (libvirtd starts
//! pinging a client only after it asked `CONNECT_SUPPORTS_FEATURE` for
//! `VIR_DRV_FEATURE_PROGRAM_KEEPALIVE`), so a lost daemon shows up as EOF
//! on the socket; a ping that comes anyway is answered.

use super::protocol::{
    self, args, frame, frame_len, parse, proc, ret, DomainEvent, DomainRef, Header, MessageType,
    RemoteError, Status,
};
use super::xdr::DecodeError;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

/// Where libvirt's local daemons listen when run as root (the path
/// libvirt's client builds from `LOCALSTATEDIR`).
const SYSTEM_SOCKET_DIR: &str = "/var/run/libvirt";

/// What went wrong talking to libvirtd.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{0}")]
    Uri(String),
    #[error("cannot connect to {}: {cause}", socket.display())]
    Connect {
        socket: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Auth(String),
    #[error("I/O error on the libvirt socket: {0}")]
    Io(std::io::Error),
    #[error("libvirtd sent a malformed message: {0}")]
    Protocol(DecodeError),
    #[error("the connection to libvirtd is closed: {0}")]
    Closed(String),
    #[error("{0}")]
    Remote(RemoteError),
    /// libvirtd accepted the call but did not answer in time.
    #[error("libvirtd did not answer procedure {procedure} within {after:?}")]
    Timeout { procedure: i32, after: Duration },
}

// By hand rather than `#[from]`, which would also make the cause the error's
// `source()`: Display already carries it, and a chain would print it twice.
impl From<std::io::Error> for RpcError {
    fn from(e: std::io::Error) -> Self {
        RpcError::Io(e)
    }
}

impl From<DecodeError> for RpcError {
    fn from(e: DecodeError) -> Self {
        RpcError::Protocol(e)
    }
}

impl RpcError {
    /// libvirt's error code when libvirtd refused the call.
    pub fn code(&self) -> Option<i32> {
        match self {
            RpcError::Remote(e) => Some(e.code),
            _ => None,
        }
    }
}

/// Where to connect for a URI, and the name to open there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub socket: PathBuf,
    /// The URI `CONNECT_OPEN` sends: the driver URI without transport and
    /// client-side parameters, as libvirt's remote driver sends it.
    pub name: String,
}

/// Resolves `qemu:///system`, `qemu:///session` and their `qemu+unix`
/// forms with an optional `?socket=PATH`. Remote transports (ssh, tls,
/// tcp) and other drivers are refused: the launcher only talks to the
/// local daemon.
pub fn resolve(uri: &str) -> Result<Endpoint, RpcError> {
    // As libvirt: `/session` means the caller's own daemon unless root.
    let user = if nix::unistd::geteuid().is_root() {
        None
    } else {
        std::env::var_os("XDG_RUNTIME_DIR").map(|d| Path::new(&d).join("libvirt"))
    };
    resolve_in(uri, Path::new(SYSTEM_SOCKET_DIR), user.as_deref(), |p| {
        p.exists()
    })
}

fn resolve_in(
    uri: &str,
    system_dir: &Path,
    user_dir: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> Result<Endpoint, RpcError> {
    let bad = |why: &str| {
        RpcError::Uri(format!(
            "libvirt URI {uri:?}: {why} (supported: qemu:///system, qemu:///session, \
             qemu+unix:///system?socket=PATH)"
        ))
    };
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let (driver, transport) = match scheme.split_once('+') {
        Some((d, t)) => (d, Some(t)),
        None => (scheme, None),
    };
    if driver != "qemu" {
        return Err(bad(&format!("driver {driver:?} is not supported")));
    }
    if let Some(t) = transport.filter(|t| !t.eq_ignore_ascii_case("unix")) {
        return Err(bad(&format!(
            "transport {t:?} is not supported, only the local unix socket"
        )));
    }
    let (host_path, query) = match rest.split_once('?') {
        Some((hp, q)) => (hp, Some(q)),
        None => (rest, None),
    };
    let path = host_path
        .strip_prefix('/')
        .map(|p| format!("/{p}"))
        .ok_or_else(|| bad("a remote host is not supported"))?;
    if path != "/system" && path != "/session" {
        return Err(bad(&format!("path {path:?} is not /system or /session")));
    }
    let mut socket = None;
    for param in query.into_iter().flat_map(|q| q.split('&')) {
        match param.split_once('=') {
            Some(("socket", p)) if !p.is_empty() => socket = Some(PathBuf::from(p)),
            _ => return Err(bad(&format!("parameter {param:?} is not supported"))),
        }
    }
    let dir = match (path.as_str(), user_dir) {
        ("/session", Some(user)) => user.to_path_buf(),
        _ => system_dir.to_path_buf(),
    };
    let socket = socket.unwrap_or_else(|| {
        // As libvirt's client: the modular QEMU daemon when its socket
        // exists, else the monolithic libvirtd.
        let modular = dir.join("virtqemud-sock");
        if exists(&modular) {
            modular
        } else {
            dir.join("libvirt-sock")
        }
    });
    Ok(Endpoint {
        socket,
        name: format!("qemu://{path}"),
    })
}

/// How long [`Client::call`] waits for libvirtd's answer unless told
/// otherwise ([`Client::set_call_timeout`]). Every call the launcher makes
/// answers in well under a second; a destroy waits for QEMU to exit, which
/// libvirt itself bounds to about 15 s.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A call's outcome as the reader task hands it over.
type Reply = Result<Vec<u8>, RpcError>;

/// Something the server said outside a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Event(DomainEvent),
    /// The connection ended; no further notice follows.
    Closed(String),
}

struct Shared {
    pending: Mutex<HashMap<u32, oneshot::Sender<Reply>>>,
    /// Why the reader stopped, once it did.
    closed: Mutex<Option<String>>,
}

impl Shared {
    fn closed_reason(&self) -> Option<String> {
        self.closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// An open connection to libvirtd.
pub struct Client {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    shared: Arc<Shared>,
    serial: AtomicU32,
    reader: tokio::task::JoinHandle<()>,
    endpoint: Endpoint,
    call_timeout: Duration,
}

impl Drop for Client {
    fn drop(&mut self) {
        // The server drops the connection's event callbacks with it.
        self.reader.abort();
    }
}

impl Client {
    /// Connects, authenticates and opens `uri`. Domain events and the end
    /// of the connection arrive on the returned channel.
    pub async fn connect(uri: &str) -> Result<(Client, mpsc::UnboundedReceiver<Notice>), RpcError> {
        Self::connect_endpoint(resolve(uri)?, DEFAULT_CALL_TIMEOUT).await
    }

    /// [`Client::connect`] to an already resolved endpoint, each call
    /// (the handshake's too) bounded by `call_timeout`.
    pub async fn connect_endpoint(
        endpoint: Endpoint,
        call_timeout: Duration,
    ) -> Result<(Client, mpsc::UnboundedReceiver<Notice>), RpcError> {
        let stream = tokio::net::UnixStream::connect(&endpoint.socket)
            .await
            .map_err(|source| RpcError::Connect {
                socket: endpoint.socket.clone(),
                cause: source,
            })?;
        let (read, write) = stream.into_split();
        let writer = Arc::new(tokio::sync::Mutex::new(write));
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
        });
        let (notices, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(read, writer.clone(), shared.clone(), notices));
        let client = Client {
            writer,
            shared,
            serial: AtomicU32::new(0),
            reader,
            endpoint,
            call_timeout,
        };
        client.open().await?;
        Ok((client, rx))
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Bounds how long each later call waits for its answer.
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.call_timeout = timeout;
    }

    async fn open(&self) -> Result<(), RpcError> {
        let types = ret::auth_list(&self.call(proc::AUTH_LIST, Vec::new()).await?)?;
        check_auth(&types)?;
        if !types.contains(&protocol::auth::NONE) && types.contains(&protocol::auth::POLKIT) {
            let complete = ret::auth_polkit(&self.call(proc::AUTH_POLKIT, Vec::new()).await?)?;
            if !complete {
                return Err(RpcError::Auth(
                    "libvirtd's polkit check did not complete".into(),
                ));
            }
        }
        let name = self.endpoint.name.clone();
        ret::empty(
            &self
                .call(proc::CONNECT_OPEN, args::connect_open(&name, 0))
                .await?,
        )?;
        Ok(())
    }

    /// One round trip: the reply body, or libvirtd's error. A daemon that
    /// does not answer within the call timeout is [`RpcError::Timeout`]: a
    /// hung libvirtd must not hang the launcher's stop.
    pub async fn call(&self, procedure: i32, body: Vec<u8>) -> Result<Vec<u8>, RpcError> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.call_timeout, self.round_trip(serial, procedure, body))
            .await
        {
            Ok(reply) => reply,
            Err(_) => {
                // A late answer finds no waiter and is dropped by the reader.
                self.shared
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&serial);
                Err(RpcError::Timeout {
                    procedure,
                    after: self.call_timeout,
                })
            }
        }
    }

    async fn round_trip(
        &self,
        serial: u32,
        procedure: i32,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, RpcError> {
        let (tx, rx) = oneshot::channel();
        {
            // The reader sets `closed` and drains `pending` under this lock,
            // so a call either sees the reason or is drained.
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(reason) = self.shared.closed_reason() {
                return Err(RpcError::Closed(reason));
            }
            pending.insert(serial, tx);
        }
        let message = frame(&Header::call(procedure, serial), &body);
        let written = self.writer.lock().await.write_all(&message).await;
        if let Err(e) = written {
            self.shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&serial);
            return Err(RpcError::Io(e));
        }
        match rx.await {
            Ok(reply) => reply,
            Err(_) => Err(RpcError::Closed(
                self.shared
                    .closed_reason()
                    .unwrap_or_else(|| "the reader stopped".into()),
            )),
        }
    }

    /// libvirt's version as `major * 1_000_000 + minor * 1000 + micro`.
    pub async fn lib_version(&self) -> Result<u64, RpcError> {
        Ok(ret::version(
            &self.call(proc::CONNECT_GET_LIB_VERSION, Vec::new()).await?,
        )?)
    }

    /// The hypervisor's version (QEMU's, for the QEMU driver), encoded as
    /// [`Client::lib_version`].
    pub async fn hypervisor_version(&self) -> Result<u64, RpcError> {
        Ok(ret::version(
            &self.call(proc::CONNECT_GET_VERSION, Vec::new()).await?,
        )?)
    }

    pub async fn define_xml(&self, xml: &str) -> Result<DomainRef, RpcError> {
        Ok(ret::dom(
            &self
                .call(proc::DOMAIN_DEFINE_XML_FLAGS, args::define_xml(xml, 0))
                .await?,
        )?)
    }

    /// Creates and starts a transient domain (`virDomainCreateXML`); with
    /// `VIR_DOMAIN_START_AUTODESTROY` libvirtd destroys it when this
    /// connection closes, whatever happens to the launcher.
    pub async fn create_xml(&self, xml: &str, flags: u32) -> Result<DomainRef, RpcError> {
        Ok(ret::dom(
            &self
                .call(proc::DOMAIN_CREATE_XML, args::define_xml(xml, flags))
                .await?,
        )?)
    }

    /// The domain with this UUID, `None` when libvirt knows none.
    pub async fn lookup_by_uuid(&self, uuid: &[u8; 16]) -> Result<Option<DomainRef>, RpcError> {
        not_found_is_none(
            self.call(proc::DOMAIN_LOOKUP_BY_UUID, args::uuid(uuid))
                .await
                .and_then(|b| Ok(ret::dom(&b)?)),
        )
    }

    /// Whether libvirt keeps the domain's definition (defined, not transient).
    pub async fn is_persistent(&self, dom: &DomainRef) -> Result<bool, RpcError> {
        Ok(ret::int(
            &self
                .call(proc::DOMAIN_IS_PERSISTENT, args::dom(dom))
                .await?,
        )? != 0)
    }

    /// The domain named `name`, `None` when libvirt knows none.
    pub async fn lookup_by_name(&self, name: &str) -> Result<Option<DomainRef>, RpcError> {
        not_found_is_none(
            self.call(proc::DOMAIN_LOOKUP_BY_NAME, args::name(name))
                .await
                .and_then(|b| Ok(ret::dom(&b)?)),
        )
    }

    pub async fn create_with_flags(&self, dom: &DomainRef, flags: u32) -> Result<(), RpcError> {
        // The reply carries the domain with its new id; calls keep naming
        // it by name and UUID, which is what libvirtd looks it up by.
        ret::dom(
            &self
                .call(proc::DOMAIN_CREATE_WITH_FLAGS, args::dom_flags(dom, flags))
                .await?,
        )?;
        Ok(())
    }

    async fn dom_call(&self, procedure: i32, body: Vec<u8>) -> Result<(), RpcError> {
        Ok(ret::empty(&self.call(procedure, body).await?)?)
    }

    pub async fn suspend(&self, dom: &DomainRef) -> Result<(), RpcError> {
        self.dom_call(proc::DOMAIN_SUSPEND, args::dom(dom)).await
    }

    pub async fn resume(&self, dom: &DomainRef) -> Result<(), RpcError> {
        self.dom_call(proc::DOMAIN_RESUME, args::dom(dom)).await
    }

    pub async fn reset(&self, dom: &DomainRef) -> Result<(), RpcError> {
        self.dom_call(proc::DOMAIN_RESET, args::dom_flags(dom, 0))
            .await
    }

    pub async fn shutdown_flags(&self, dom: &DomainRef, flags: u32) -> Result<(), RpcError> {
        self.dom_call(proc::DOMAIN_SHUTDOWN_FLAGS, args::dom_flags(dom, flags))
            .await
    }

    pub async fn destroy(&self, dom: &DomainRef) -> Result<(), RpcError> {
        self.dom_call(proc::DOMAIN_DESTROY, args::dom(dom)).await
    }

    pub async fn undefine_flags(&self, dom: &DomainRef, flags: u32) -> Result<(), RpcError> {
        self.dom_call(proc::DOMAIN_UNDEFINE_FLAGS, args::dom_flags(dom, flags))
            .await
    }

    pub async fn is_active(&self, dom: &DomainRef) -> Result<bool, RpcError> {
        Ok(ret::int(&self.call(proc::DOMAIN_IS_ACTIVE, args::dom(dom)).await?)? != 0)
    }

    /// `virDomainGetState`: (`virDomainState`, reason).
    pub async fn get_state(&self, dom: &DomainRef) -> Result<(i32, i32), RpcError> {
        Ok(ret::state(
            &self
                .call(proc::DOMAIN_GET_STATE, args::dom_flags(dom, 0))
                .await?,
        )?)
    }

    /// Subscribes to `event_id` events of `dom`; returns the callback id
    /// the events will carry.
    pub async fn register_event(&self, event_id: i32, dom: &DomainRef) -> Result<i32, RpcError> {
        Ok(ret::int(
            &self
                .call(
                    proc::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
                    args::event_register(event_id, Some(dom)),
                )
                .await?,
        )?)
    }

    pub async fn deregister_event(&self, callback_id: i32) -> Result<(), RpcError> {
        self.dom_call(
            proc::CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY,
            args::event_deregister(callback_id),
        )
        .await
    }

    /// Closes the connection politely (`CONNECT_CLOSE`).
    pub async fn close(self) -> Result<(), RpcError> {
        self.dom_call(proc::CONNECT_CLOSE, Vec::new()).await
    }
}

fn check_auth(types: &[i32]) -> Result<(), RpcError> {
    if ret::auth_acceptable(types) {
        Ok(())
    } else {
        Err(RpcError::Auth(format!(
            "libvirtd requires an authentication the launcher does not implement (types \
             {types:?}; 1 is SASL): connect as root or set auth_unix_rw=\"none\" or \"polkit\""
        )))
    }
}

fn not_found_is_none<T>(r: Result<T, RpcError>) -> Result<Option<T>, RpcError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code() == Some(protocol::VIR_ERR_NO_DOMAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What one incoming message means to the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Reply {
        serial: u32,
        reply: Result<Vec<u8>, RemoteError>,
    },
    Event(DomainEvent),
    Ping,
    /// Messages of procedures or programs the client does not use.
    Ignored(Header),
}

/// Classifies one message (without its length word).
pub fn classify(message: &[u8]) -> Result<Incoming, DecodeError> {
    let (header, body) = parse(message)?;
    Ok(match (header.prog, header.kind) {
        (protocol::REMOTE_PROGRAM, MessageType::Reply) => Incoming::Reply {
            serial: header.serial,
            reply: match header.status {
                Status::Ok => Ok(body.to_vec()),
                _ => Err(RemoteError::decode(body)?),
            },
        },
        (protocol::REMOTE_PROGRAM, MessageType::Message) => {
            match DomainEvent::decode(header.proc, body)? {
                Some(event) => Incoming::Event(event),
                None => Incoming::Ignored(header),
            }
        }
        (protocol::KEEPALIVE_PROGRAM, MessageType::Message)
            if header.proc == protocol::KEEPALIVE_PROC_PING =>
        {
            Incoming::Ping
        }
        _ => Incoming::Ignored(header),
    })
}

/// The answer to a keepalive ping.
pub fn pong() -> Vec<u8> {
    frame(
        &Header {
            prog: protocol::KEEPALIVE_PROGRAM,
            vers: protocol::KEEPALIVE_VERSION,
            proc: protocol::KEEPALIVE_PROC_PONG,
            kind: MessageType::Message,
            serial: 0,
            status: Status::Ok,
        },
        &[],
    )
}

async fn read_message(read: &mut tokio::net::unix::OwnedReadHalf) -> Result<Vec<u8>, RpcError> {
    let mut word = [0u8; 4];
    read.read_exact(&mut word).await?;
    let mut message = vec![0u8; frame_len(word)? - 4];
    read.read_exact(&mut message).await?;
    Ok(message)
}

async fn read_loop(
    mut read: tokio::net::unix::OwnedReadHalf,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    shared: Arc<Shared>,
    notices: mpsc::UnboundedSender<Notice>,
) {
    let reason = loop {
        let message = match read_message(&mut read).await {
            Ok(m) => m,
            Err(RpcError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break "libvirtd closed the connection".to_owned()
            }
            Err(e) => break e.to_string(),
        };
        match classify(&message) {
            Ok(Incoming::Reply { serial, reply }) => {
                let waiter = shared
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&serial);
                match waiter {
                    // The caller may have given up (its future dropped).
                    Some(w) => drop(w.send(reply.map_err(RpcError::Remote))),
                    None => tracing::debug!(serial, "libvirt reply to no pending call"),
                }
            }
            Ok(Incoming::Event(event)) => {
                // Nobody listening is fine: the driver stopped caring.
                let _ = notices.send(Notice::Event(event));
            }
            Ok(Incoming::Ping) => {
                if let Err(e) = writer.lock().await.write_all(&pong()).await {
                    break format!("cannot answer libvirtd's keepalive: {e}");
                }
            }
            Ok(Incoming::Ignored(header)) => {
                tracing::debug!(?header, "libvirt message ignored")
            }
            Err(e) => break format!("libvirtd sent a malformed message: {e}"),
        }
    };
    tracing::debug!(%reason, "libvirt connection ended");
    {
        let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        *shared.closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
        // Dropping the senders wakes every waiting call with `Closed`.
        pending.clear();
    }
    let _ = notices.send(Notice::Closed(reason));
}

/// The same protocol on a blocking socket, one call at a time; events are
/// never registered on it, so anything but a reply is skipped.
pub struct BlockingClient {
    stream: std::os::unix::net::UnixStream,
    serial: u32,
}

impl BlockingClient {
    /// Connects, authenticates and opens `uri`; every call gives up after
    /// `timeout` so a hung daemon cannot hang the caller.
    pub fn connect(uri: &str, timeout: std::time::Duration) -> Result<BlockingClient, RpcError> {
        let endpoint = resolve(uri)?;
        let stream =
            std::os::unix::net::UnixStream::connect(&endpoint.socket).map_err(|source| {
                RpcError::Connect {
                    socket: endpoint.socket.clone(),
                    cause: source,
                }
            })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut client = BlockingClient { stream, serial: 0 };
        let types = ret::auth_list(&client.call(proc::AUTH_LIST, Vec::new())?)?;
        check_auth(&types)?;
        if !types.contains(&protocol::auth::NONE)
            && types.contains(&protocol::auth::POLKIT)
            && !ret::auth_polkit(&client.call(proc::AUTH_POLKIT, Vec::new())?)?
        {
            return Err(RpcError::Auth(
                "libvirtd's polkit check did not complete".into(),
            ));
        }
        ret::empty(&client.call(proc::CONNECT_OPEN, args::connect_open(&endpoint.name, 0))?)?;
        Ok(client)
    }

    pub fn call(&mut self, procedure: i32, body: Vec<u8>) -> Result<Vec<u8>, RpcError> {
        let serial = self.serial;
        self.serial = self.serial.wrapping_add(1);
        self.stream
            .write_all(&frame(&Header::call(procedure, serial), &body))?;
        loop {
            let mut word = [0u8; 4];
            self.stream.read_exact(&mut word)?;
            let mut message = vec![0u8; frame_len(word)? - 4];
            self.stream.read_exact(&mut message)?;
            match classify(&message)? {
                Incoming::Reply { serial: s, reply } if s == serial => {
                    return reply.map_err(RpcError::Remote)
                }
                Incoming::Ping => self.stream.write_all(&pong())?,
                _ => {}
            }
        }
    }

    pub fn lookup_by_name(&mut self, name: &str) -> Result<Option<DomainRef>, RpcError> {
        not_found_is_none(
            self.call(proc::DOMAIN_LOOKUP_BY_NAME, args::name(name))
                .and_then(|b| Ok(ret::dom(&b)?)),
        )
    }

    pub fn is_active(&mut self, dom: &DomainRef) -> Result<bool, RpcError> {
        Ok(ret::int(&self.call(proc::DOMAIN_IS_ACTIVE, args::dom(dom))?)? != 0)
    }

    pub fn destroy(&mut self, dom: &DomainRef) -> Result<(), RpcError> {
        Ok(ret::empty(
            &self.call(proc::DOMAIN_DESTROY, args::dom(dom))?,
        )?)
    }

    pub fn undefine_flags(&mut self, dom: &DomainRef, flags: u32) -> Result<(), RpcError> {
        Ok(ret::empty(&self.call(
            proc::DOMAIN_UNDEFINE_FLAGS,
            args::dom_flags(dom, flags),
        )?)?)
    }

    /// `virConnectGetDomainCapabilities`: the domain capabilities XML.
    pub fn domain_capabilities(
        &mut self,
        arch: Option<&str>,
        machine: Option<&str>,
        virttype: Option<&str>,
    ) -> Result<String, RpcError> {
        Ok(ret::string(&self.call(
            proc::CONNECT_GET_DOMAIN_CAPABILITIES,
            args::domain_capabilities(None, arch, machine, virttype, 0),
        )?)?)
    }

    pub fn close(mut self) -> Result<(), RpcError> {
        Ok(ret::empty(&self.call(proc::CONNECT_CLOSE, Vec::new())?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_with(uri: &str, modular: bool) -> Result<Endpoint, RpcError> {
        resolve_in(
            uri,
            Path::new("/var/run/libvirt"),
            Some(Path::new("/run/user/1000/libvirt")),
            |p| modular && p.ends_with("virtqemud-sock"),
        )
    }

    #[test]
    fn system_uri_prefers_the_modular_qemu_daemon_socket() {
        let e = resolve_with("qemu:///system", true).unwrap();
        assert_eq!(e.socket, Path::new("/var/run/libvirt/virtqemud-sock"));
        assert_eq!(e.name, "qemu:///system");
        let e = resolve_with("qemu:///system", false).unwrap();
        assert_eq!(e.socket, Path::new("/var/run/libvirt/libvirt-sock"));
    }

    #[test]
    fn unix_transport_with_socket_parameter_opens_the_plain_uri() {
        let e = resolve_with("qemu+unix:///system?socket=/tmp/x/sock", false).unwrap();
        assert_eq!(e.socket, Path::new("/tmp/x/sock"));
        assert_eq!(e.name, "qemu:///system");
    }

    #[test]
    fn session_uri_uses_the_user_runtime_directory() {
        let e = resolve_with("qemu:///session", false).unwrap();
        assert_eq!(e.socket, Path::new("/run/user/1000/libvirt/libvirt-sock"));
        assert_eq!(e.name, "qemu:///session");
    }

    #[test]
    fn remote_hosts_other_transports_and_drivers_are_refused_by_name() {
        for uri in [
            "qemu+ssh://host/system",
            "qemu://host/system",
            "xen:///system",
            "qemu:///embed?root=/x",
            "qemu:///system?mode=legacy",
            "qemu",
        ] {
            let err = resolve_with(uri, false).unwrap_err().to_string();
            assert!(err.contains(uri), "{uri}: {err}");
        }
    }
}
