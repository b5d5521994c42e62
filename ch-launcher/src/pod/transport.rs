//! gRPC over unix sockets, as KubeVirt dials it (`pkg/util/net/grpc`):
//! plaintext HTTP/2, `:authority` `localhost`, a 2 s connect deadline.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// KubeVirt's connect deadline for both channels.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A channel to the gRPC server on the unix socket `path`, connected now.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    // The URI only sets `:authority`; the connector ignores it.
    Endpoint::from_static("http://localhost")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}
