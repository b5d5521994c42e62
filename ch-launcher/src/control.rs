//! The per-VM control socket: a second `ch-launcher` invocation (and later
//! virt-handler) asks the running launcher to pause, resume, reboot or stop
//! its VM, or for its status.
//!
//! The protocol is one JSON object per line in each direction:
//! request `{"command":"pause"}` (`pause`, `resume`, `reboot`, `stop`,
//! `kill`, `status`; `resize`, `attach-disk`, `detach-disk` with their
//! arguments beside `command`), response `{"ok":true,"status":{...}}` or
//! `{"ok":false,"error":"..."}`. A connection may carry several requests.
//!
//! [`Command`] and [`Handler`] do not know about the transport, so the later
//! virt-handler protocol can drive the same handler.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::lifecycle::Status;
use crate::util::remove_socket;

/// The control socket is for the launcher's own user only.
pub const SOCKET_MODE: u32 = 0o600;

/// Longest request line accepted; anything longer is not a command.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// What a client can ask of a running VM. On the wire the command's name is
/// the `command` key and its arguments sit beside it:
/// `{"command":"resize","sockets":2}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    Pause,
    Resume,
    Reboot,
    /// The same graceful stop as SIGTERM: ACPI power button, then destroy
    /// after the termination grace period.
    Stop,
    /// Destroy the VM now, without the guest's cooperation.
    Kill,
    Status,
    /// Change the vCPU sockets and/or the guest memory (bytes) in place.
    Resize {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sockets: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memory: Option<u64>,
    },
    /// Hot-add the image at `path` as a virtio disk named `name`.
    AttachDisk {
        name: String,
        path: PathBuf,
        #[serde(default)]
        readonly: bool,
    },
    /// Hot-remove a disk attached with `attach-disk`.
    DetachDisk {
        name: String,
    },
    /// Hot-add a virtio-net interface `name` on the existing tap `tap`.
    AttachInterface {
        name: String,
        tap: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<String>,
    },
    /// Hot-remove an interface attached with `attach-interface`.
    DetachInterface {
        name: String,
    },
}

impl Command {
    pub fn as_str(&self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Reboot => "reboot",
            Command::Stop => "stop",
            Command::Kill => "kill",
            Command::Status => "status",
            Command::Resize { .. } => "resize",
            Command::AttachDisk { .. } => "attach-disk",
            Command::DetachDisk { .. } => "detach-disk",
            Command::AttachInterface { .. } => "attach-interface",
            Command::DetachInterface { .. } => "detach-interface",
        }
    }
}

/// One request line.
pub type Request = Command;

/// Carries out commands against one VM; the answer is the VM's status after
/// the command took effect, or why it could not.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, command: Command) -> impl Future<Output = Result<Status, String>> + Send;
}

#[derive(Serialize)]
struct Response<'a> {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// A bound control socket not served yet: connections wait in its backlog
/// until [`Listener::serve`]. Lets the runner bind it while the hypervisor
/// starts. Dropping it removes the socket file.
pub struct Listener {
    file: SocketFile,
    listener: UnixListener,
}

impl Listener {
    /// Binds `path` (mode [`SOCKET_MODE`]). Must be called inside a tokio
    /// runtime.
    pub fn bind(path: &Path) -> io::Result<Listener> {
        let listener = crate::util::bind_tokio_socket(path, SOCKET_MODE)?;
        Ok(Listener {
            file: SocketFile(path.to_path_buf()),
            listener,
        })
    }

    /// Serves `handler` on the socket, starting with the connections that
    /// are waiting.
    pub fn serve<H: Handler>(self, handler: Arc<H>) -> Server {
        let Listener { file, listener } = self;
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_connection(stream, handler.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept control connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Server { task, _file: file }
    }
}

/// Removes the socket file when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        remove_socket(&self.0);
    }
}

/// The listening control socket. Dropping it stops serving and removes the
/// socket file.
pub struct Server {
    task: JoinHandle<()>,
    /// Dropped after `Server::drop` stopped the task.
    _file: SocketFile,
}

impl Server {
    /// Binds `path` (mode [`SOCKET_MODE`]) and serves `handler` on it. Must be
    /// called inside a tokio runtime.
    pub fn start<H: Handler>(path: &Path, handler: Arc<H>) -> io::Result<Server> {
        Ok(Listener::bind(path)?.serve(handler))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection<H: Handler>(stream: UnixStream, handler: Arc<H>) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_REQUEST_BYTES)
            .read_until(b'\n', &mut line)
            .await;
        let response = match read {
            Ok(0) | Err(_) => return,
            Ok(_) if line.last() != Some(&b'\n') && line.len() as u64 >= MAX_REQUEST_BYTES => {
                if skip_line(&mut reader).await.is_err() {
                    return;
                }
                error_line("request too long")
            }
            Ok(_) => match std::str::from_utf8(&line) {
                Ok(text) => answer(text, handler.as_ref()).await,
                Err(_) => error_line("invalid request: not UTF-8"),
            },
        };
        if writer.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Discards input up to and including the next newline.
async fn skip_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<()> {
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// The response line (with its newline) to one request line.
async fn answer<H: Handler>(line: &str, handler: &H) -> String {
    let request = match parse_request(line.trim_end()) {
        Ok(r) => r,
        Err(e) => return error_line(&format!("invalid request: {e}")),
    };
    let name = request.as_str();
    tracing::info!(command = name, request = ?request, "control request");
    match handler.handle(request).await {
        Ok(status) => response_line(&Response {
            ok: true,
            status: Some(&status),
            error: None,
        }),
        Err(error) => {
            tracing::warn!(command = name, %error, "control request failed");
            error_line(&error)
        }
    }
}

/// One request line. serde's `deny_unknown_fields` does not reach the unit
/// variants of an internally tagged enum, so a key the command does not
/// take is caught here: a misspelt argument must not be dropped silently.
pub fn parse_request(line: &str) -> Result<Command, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let command: Command = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let known = serde_json::to_value(&command).map_err(|e| e.to_string())?;
    if let (Some(given), Some(known)) = (value.as_object(), known.as_object()) {
        if let Some((key, _)) = given
            .iter()
            .find(|(k, v)| !v.is_null() && !known.contains_key(k.as_str()))
        {
            return Err(format!("unknown field `{key}` for {}", command.as_str()));
        }
    }
    Ok(command)
}

fn error_line(error: &str) -> String {
    response_line(&Response {
        ok: false,
        status: None,
        error: Some(error),
    })
}

fn response_line(response: &Response<'_>) -> String {
    // Serializing these plain structs cannot fail; fall back to a fixed
    // error line rather than panicking if it ever did.
    let mut text = serde_json::to_string(response)
        .unwrap_or_else(|_| r#"{"ok":false,"error":"cannot encode response"}"#.to_string());
    text.push('\n');
    text
}

/// Why a control request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the launcher at {}: {cause} (is `ch-launcher run` running with the same --private-dir?)", path.display())]
    Connect { path: PathBuf, cause: io::Error },
    #[error("control socket {}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    #[error("no answer from the launcher within {0:?}")]
    Timeout(Duration),
    #[error("the launcher sent an invalid response: {0}")]
    BadResponse(String),
    /// The launcher understood the request and refused or failed it.
    #[error("{0}")]
    Refused(String),
}

#[derive(Deserialize)]
struct ResponseIn {
    ok: bool,
    #[serde(default)]
    status: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
}

/// Sends one command to the launcher listening on `path` and returns the
/// VM's status as the launcher reported it (kept as JSON so that a client
/// shows every field a newer launcher adds).
pub async fn request(
    path: &Path,
    command: Command,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let exchange = async {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_path_buf(),
                cause: source,
            })?;
        let io_err = |source| ClientError::Io {
            path: path.to_path_buf(),
            cause: source,
        };
        let (reader, mut writer) = stream.into_split();
        let mut line =
            serde_json::to_string(&command).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        line.push('\n');
        writer.write_all(line.as_bytes()).await.map_err(io_err)?;
        let mut reply = String::new();
        BufReader::new(reader)
            .take(MAX_REQUEST_BYTES)
            .read_line(&mut reply)
            .await
            .map_err(io_err)?;
        if reply.is_empty() {
            return Err(ClientError::BadResponse(
                "connection closed without an answer".into(),
            ));
        }
        let parsed: ResponseIn = serde_json::from_str(reply.trim_end())
            .map_err(|e| ClientError::BadResponse(format!("{e}: {}", reply.trim_end())))?;
        match (parsed.ok, parsed.status, parsed.error) {
            (true, Some(status), _) => Ok(status),
            (true, None, _) => Err(ClientError::BadResponse("ok without a status".into())),
            (false, _, error) => {
                Err(ClientError::Refused(error.unwrap_or_else(|| {
                    "request failed (no reason given)".into()
                })))
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{Event, Lifecycle, State};
    use std::sync::Mutex;

    /// Records commands and applies pause/resume to a real `Lifecycle`.
    struct Recorder {
        seen: Mutex<Vec<Command>>,
        lifecycle: Mutex<Lifecycle>,
    }

    impl Handler for Recorder {
        async fn handle(&self, command: Command) -> Result<Status, String> {
            self.seen.lock().unwrap().push(command.clone());
            let mut lc = self.lifecycle.lock().unwrap();
            match command {
                Command::Pause => {
                    lc.apply(&Event::Paused);
                }
                Command::Resume => {
                    lc.apply(&Event::Resumed);
                }
                Command::Reboot => return Err("reboot failed: VM is not running".into()),
                Command::Resize { .. } => return Err("resize: too big".into()),
                Command::Stop
                | Command::Kill
                | Command::Status
                | Command::AttachDisk { .. }
                | Command::DetachDisk { .. }
                | Command::AttachInterface { .. }
                | Command::DetachInterface { .. } => {}
            }
            Ok(lc.status().clone())
        }
    }

    fn recorder() -> Arc<Recorder> {
        let mut lifecycle = Lifecycle::default();
        lifecycle.apply(&Event::Booted);
        Arc::new(Recorder {
            seen: Mutex::new(Vec::new()),
            lifecycle: Mutex::new(lifecycle),
        })
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn commands_round_trip_with_the_resulting_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("launcher-sock");
        let handler = recorder();
        let _server = Server::start(&path, handler.clone()).unwrap();

        let status = request(&path, Command::Pause, T).await.unwrap();
        assert_eq!(status["state"], "Paused");
        assert_eq!(status["reason"], "User");
        let status = request(&path, Command::Resume, T).await.unwrap();
        assert_eq!(status["state"], "Running");
        assert_eq!(status["reason"], "Unpaused");
        let status = request(&path, Command::Status, T).await.unwrap();
        assert_eq!(status["state"], "Running");
        assert_eq!(
            *handler.seen.lock().unwrap(),
            vec![Command::Pause, Command::Resume, Command::Status]
        );
        assert_eq!(
            handler.lifecycle.lock().unwrap().status().state,
            State::Running
        );
    }

    #[tokio::test]
    async fn a_request_sent_before_serving_starts_is_answered_once_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("launcher-sock");
        let listener = Listener::bind(&path).unwrap();
        let early = tokio::spawn({
            let path = path.clone();
            async move { request(&path, Command::Status, T).await }
        });
        // The request waits in the backlog while nothing serves the socket.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!early.is_finished());
        let handler = recorder();
        let server = listener.serve(handler.clone());
        let status = early.await.unwrap().unwrap();
        assert_eq!(status["state"], "Running");
        assert_eq!(*handler.seen.lock().unwrap(), vec![Command::Status]);
        drop(server);
        assert!(!path.exists());
    }

    #[test]
    fn an_unserved_listener_removes_its_socket_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("launcher-sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(async { Listener::bind(&path) }).unwrap();
        assert!(path.exists());
        drop(listener);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn handler_errors_reach_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("launcher-sock");
        let _server = Server::start(&path, recorder()).unwrap();
        match request(&path, Command::Reboot, T).await {
            Err(ClientError::Refused(msg)) => assert_eq!(msg, "reboot failed: VM is not running"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn malformed_and_unknown_requests_get_an_error_line_and_the_connection_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("launcher-sock");
        let handler = recorder();
        let _server = Server::start(&path, handler.clone()).unwrap();

        let stream = UnixStream::connect(&path).await.unwrap();
        let (reader, mut writer) = stream.into_split();
        let mut reader = BufReader::new(reader);
        writer
            .write_all(b"not json\n{\"command\":\"explode\"}\n{\"command\":\"status\"}\n")
            .await
            .unwrap();
        let mut lines = Vec::new();
        for _ in 0..3 {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            lines.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
        }
        assert_eq!(lines[0]["ok"], false);
        assert!(lines[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid request"));
        assert_eq!(lines[1]["ok"], false);
        assert!(lines[1]["error"].as_str().unwrap().contains("explode"));
        assert_eq!(lines[2]["ok"], true);
        assert_eq!(lines[2]["status"]["state"], "Running");
        assert_eq!(*handler.seen.lock().unwrap(), vec![Command::Status]);
    }

    #[tokio::test]
    async fn overlong_request_is_refused_and_the_next_one_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("launcher-sock");
        let _server = Server::start(&path, recorder()).unwrap();
        let stream = UnixStream::connect(&path).await.unwrap();
        let (reader, mut writer) = stream.into_split();
        let mut reader = BufReader::new(reader);
        let mut junk = vec![b'a'; 3 * MAX_REQUEST_BYTES as usize];
        junk.extend_from_slice(b"\n{\"command\":\"status\"}\n");
        tokio::spawn(async move { writer.write_all(&junk).await });
        let mut first = String::new();
        reader.read_line(&mut first).await.unwrap();
        assert!(first.contains("request too long"), "{first}");
        let mut second = String::new();
        reader.read_line(&mut second).await.unwrap();
        let second: serde_json::Value = serde_json::from_str(&second).unwrap();
        assert_eq!(second["ok"], true);
    }

    #[tokio::test]
    async fn socket_is_private_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("launcher-sock");
        let server = Server::start(&path, recorder()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(server);
        assert!(!path.exists());
        assert!(matches!(
            request(&path, Command::Status, T).await,
            Err(ClientError::Connect { .. })
        ));
    }

    #[test]
    fn request_wire_format_is_stable() {
        let line = serde_json::to_string(&Command::Resume).unwrap();
        assert_eq!(line, r#"{"command":"resume"}"#);
        let resize = Command::Resize {
            sockets: Some(2),
            memory: None,
        };
        let line = serde_json::to_string(&resize).unwrap();
        assert_eq!(line, r#"{"command":"resize","sockets":2}"#);
        let attach =
            parse_request(r#"{"command":"attach-disk","name":"d","path":"/x.img"}"#).unwrap();
        assert_eq!(
            attach,
            Command::AttachDisk {
                name: "d".into(),
                path: "/x.img".into(),
                readonly: false
            }
        );
        // A misspelt argument is an error, not a silently dropped change.
        let typo = parse_request(r#"{"command":"resize","socket":2}"#).unwrap_err();
        assert!(typo.contains("socket"), "{typo}");
        let typo = parse_request(r#"{"command":"pause","x":1}"#).unwrap_err();
        assert!(typo.contains("unknown field `x` for pause"), "{typo}");
        // Absent and null optional arguments are the same.
        let resize = parse_request(r#"{"command":"resize","sockets":null,"memory":1}"#).unwrap();
        assert_eq!(
            resize,
            Command::Resize {
                sockets: None,
                memory: Some(1)
            }
        );
    }
}
