//! The notify client: the launcher's pushes to virt-handler on
//! `<share-dir>/domain-notify-pipe.sock`, with virt-launcher's rules
//! (`pkg/virt-launcher/notify-client`): connect lazily, negotiate with
//! `NotifyInfo.Info` after every connect, give each send 5 s, and retry every
//! second for up to 20 s when the handler is unreachable, slow or aborts.
//! Other failures are not retried. Events go out one at a time, in order,
//! from one task: every domain event carries the whole domain, and the last
//! one must never overtake an earlier one.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::Code;

use super::proto::notify::notify_client::NotifyClient;
use super::proto::notify::{DomainEventRequest, K8sEventRequest};
use super::proto::notify_info::notify_info_client::NotifyInfoClient;
use super::proto::notify_info::NotifyInfoRequest;

/// The only notify protocol version, as KubeVirt's.
pub const NOTIFY_VERSION: u32 = 1;

/// How the client paces itself; [`Pacing::KUBEVIRT`] outside tests.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Deadline of one send (and of the Info negotiation).
    pub per_send: Duration,
    /// Pause between attempts.
    pub retry_every: Duration,
    /// Give up on an event after this long.
    pub give_up_after: Duration,
}

impl Pacing {
    pub const KUBEVIRT: Pacing = Pacing {
        per_send: Duration::from_secs(5),
        retry_every: Duration::from_secs(1),
        give_up_after: Duration::from_secs(20),
    };
}

/// Why an event did not reach virt-handler.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("virt-handler's notify socket {} is unreachable: {detail}", socket.display())]
    Unreachable { socket: PathBuf, detail: String },
    #[error("virt-handler's notify server supports versions {offered:?}, not {NOTIFY_VERSION}")]
    Version { offered: Vec<u32> },
    #[error("virt-handler refused the event: {0}")]
    Refused(String),
}

/// One push to virt-handler.
#[derive(Debug)]
pub enum Outgoing {
    /// `HandleDomainEvent` with `ADDED` or `MODIFIED`.
    Domain {
        event_type: &'static str,
        json: Vec<u8>,
    },
    /// `HandleK8sEvent` with a core/v1 Event.
    K8s { json: Vec<u8> },
    /// Answered once everything queued before it was sent (or given up on).
    Flush(oneshot::Sender<()>),
}

/// Connects lazily and keeps the channel until it fails.
pub struct Notifier {
    socket: PathBuf,
    pacing: Pacing,
    client: Option<NotifyClient<Channel>>,
}

impl Notifier {
    pub fn new(socket: PathBuf, pacing: Pacing) -> Notifier {
        Notifier {
            socket,
            pacing,
            client: None,
        }
    }

    /// Sends the queue's events in order until every sender is gone.
    pub fn spawn(mut self) -> (mpsc::UnboundedSender<Outgoing>, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
        let task = tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                let sent = match item {
                    Outgoing::Domain { event_type, json } => {
                        self.domain_event(event_type, json).await
                    }
                    Outgoing::K8s { json } => self.k8s_event(json).await,
                    Outgoing::Flush(done) => {
                        let _ = done.send(());
                        Ok(())
                    }
                };
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "an event did not reach virt-handler");
                }
            }
        });
        (tx, task)
    }

    pub async fn domain_event(
        &mut self,
        event_type: &'static str,
        json: Vec<u8>,
    ) -> Result<(), NotifyError> {
        let request = DomainEventRequest {
            domain_json: json,
            status_json: Vec::new(),
            event_type: event_type.to_string(),
        };
        self.with_retries(move |mut client, deadline| {
            let mut request = tonic::Request::new(request.clone());
            request.set_timeout(deadline);
            async move { client.handle_domain_event(request).await }
        })
        .await
    }

    pub async fn k8s_event(&mut self, json: Vec<u8>) -> Result<(), NotifyError> {
        let request = K8sEventRequest { event_json: json };
        self.with_retries(move |mut client, deadline| {
            let mut request = tonic::Request::new(request.clone());
            request.set_timeout(deadline);
            async move { client.handle_k8s_event(request).await }
        })
        .await
    }

    async fn with_retries<F, Fut>(&mut self, send: F) -> Result<(), NotifyError>
    where
        F: Fn(NotifyClient<Channel>, Duration) -> Fut,
        Fut: std::future::Future<
            Output = Result<tonic::Response<super::proto::notify::Response>, tonic::Status>,
        >,
    {
        let give_up = tokio::time::Instant::now() + self.pacing.give_up_after;
        loop {
            let failure = match self.client().await {
                Err(NotifyError::Unreachable { detail, .. }) => detail,
                Err(e) => return Err(e),
                Ok(client) => {
                    let sent = tokio::time::timeout(
                        self.pacing.per_send,
                        send(client, self.pacing.per_send),
                    )
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer")));
                    match sent {
                        Ok(answer) => {
                            let answer = answer.into_inner();
                            // As virt-handler's own rule: failed only with a message.
                            return if !answer.success && !answer.message.is_empty() {
                                Err(NotifyError::Refused(answer.message))
                            } else {
                                Ok(())
                            };
                        }
                        Err(status)
                            if matches!(
                                status.code(),
                                Code::Unavailable | Code::DeadlineExceeded | Code::Aborted
                            ) =>
                        {
                            self.client = None;
                            status.to_string()
                        }
                        Err(status) => return Err(NotifyError::Refused(status.to_string())),
                    }
                }
            };
            if tokio::time::Instant::now() + self.pacing.retry_every > give_up {
                return Err(NotifyError::Unreachable {
                    socket: self.socket.clone(),
                    detail: format!("{failure} (gave up after {:?})", self.pacing.give_up_after),
                });
            }
            tracing::debug!(error = %failure, "notify failed; retrying");
            tokio::time::sleep(self.pacing.retry_every).await;
        }
    }

    /// The connected client, after negotiating the version on a new channel.
    async fn client(&mut self) -> Result<NotifyClient<Channel>, NotifyError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let unreachable = |detail: String| NotifyError::Unreachable {
            socket: self.socket.clone(),
            detail,
        };
        let channel = super::transport::connect(&self.socket)
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let mut info = NotifyInfoClient::new(channel.clone());
        let mut request = tonic::Request::new(NotifyInfoRequest {});
        request.set_timeout(self.pacing.per_send);
        let offered = match tokio::time::timeout(self.pacing.per_send, info.info(request)).await {
            Ok(Ok(answer)) => answer.into_inner().supported_notify_versions,
            Ok(Err(status)) => return Err(unreachable(status.to_string())),
            Err(_) => return Err(unreachable("NotifyInfo.Info did not answer".into())),
        };
        if !offered.contains(&NOTIFY_VERSION) {
            return Err(NotifyError::Version { offered });
        }
        let client = NotifyClient::new(channel);
        self.client = Some(client.clone());
        Ok(client)
    }
}

/// An error and its causes on one line (tonic's transport errors hide the
/// interesting part, such as ENOENT, in their sources).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::proto::notify::notify_server::{Notify, NotifyServer};
    use crate::pod::proto::notify::Response;
    use crate::pod::proto::notify_info::notify_info_server::{NotifyInfo, NotifyInfoServer};
    use crate::pod::proto::notify_info::NotifyInfoResponse;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A notify server that answers each call with `answer`.
    struct Handler {
        versions: Vec<u32>,
        answer: fn() -> Result<Response, tonic::Status>,
        calls: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl Notify for Arc<Handler> {
        async fn handle_domain_event(
            &self,
            _: tonic::Request<DomainEventRequest>,
        ) -> Result<tonic::Response<Response>, tonic::Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            (self.answer)().map(tonic::Response::new)
        }
        async fn handle_k8s_event(
            &self,
            _: tonic::Request<K8sEventRequest>,
        ) -> Result<tonic::Response<Response>, tonic::Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            (self.answer)().map(tonic::Response::new)
        }
    }

    #[tonic::async_trait]
    impl NotifyInfo for Arc<Handler> {
        async fn info(
            &self,
            _: tonic::Request<NotifyInfoRequest>,
        ) -> Result<tonic::Response<NotifyInfoResponse>, tonic::Status> {
            Ok(tonic::Response::new(NotifyInfoResponse {
                supported_notify_versions: self.versions.clone(),
            }))
        }
    }

    /// A served notify socket; stops serving when dropped or aborted.
    struct Served(tokio::task::JoinHandle<()>);

    impl Served {
        fn abort(&self) {
            self.0.abort();
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    fn serve(path: &std::path::Path, handler: Arc<Handler>) -> Served {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let router = tonic::transport::Server::builder()
            .add_service(NotifyInfoServer::new(handler.clone()))
            .add_service(NotifyServer::new(handler));
        Served(tokio::spawn(async move {
            let _ = router
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await;
        }))
    }

    fn handler(
        versions: Vec<u32>,
        answer: fn() -> Result<Response, tonic::Status>,
    ) -> (Arc<Handler>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let h = Arc::new(Handler {
            versions,
            answer,
            calls: calls.clone(),
        });
        (h, calls)
    }

    const FAST: Pacing = Pacing {
        per_send: Duration::from_millis(500),
        retry_every: Duration::from_millis(50),
        give_up_after: Duration::from_secs(2),
    };

    fn success() -> Result<Response, tonic::Status> {
        Ok(Response {
            success: true,
            message: String::new(),
        })
    }

    #[tokio::test]
    async fn an_event_waits_for_a_notify_socket_that_appears_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let mut notifier = Notifier::new(path.clone(), FAST);
        let (h, calls) = handler(vec![1], success);
        let (sent, server) = tokio::join!(notifier.domain_event("ADDED", b"{}".to_vec()), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            serve(&path, h)
        });
        sent.expect("delivered once the socket exists");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        server.abort();
    }

    #[tokio::test]
    async fn an_unreachable_handler_is_given_up_on_after_the_retry_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut notifier = Notifier::new(dir.path().join("nobody.sock"), FAST);
        let started = tokio::time::Instant::now();
        let e = notifier
            .domain_event("MODIFIED", b"{}".to_vec())
            .await
            .expect_err("nobody listens");
        assert!(matches!(e, NotifyError::Unreachable { .. }), "{e}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
            "retried for the whole window: {took:?}"
        );
    }

    #[tokio::test]
    async fn unavailable_is_retried_but_other_errors_and_refusals_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let (h, calls) = handler(vec![1], || Err(tonic::Status::unavailable("busy")));
        let server = serve(&path, h);
        let mut notifier = Notifier::new(path.clone(), FAST);
        assert!(notifier
            .domain_event("MODIFIED", b"{}".to_vec())
            .await
            .is_err());
        assert!(
            calls.load(Ordering::SeqCst) > 3,
            "Unavailable is retried every retry_every"
        );
        server.abort();
        let _ = std::fs::remove_file(&path);

        let (h, calls) = handler(vec![1], || Err(tonic::Status::invalid_argument("bad")));
        let server = serve(&path, h);
        let mut notifier = Notifier::new(path.clone(), FAST);
        let e = notifier
            .domain_event("MODIFIED", b"{}".to_vec())
            .await
            .expect_err("refused");
        assert!(matches!(e, NotifyError::Refused(_)), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "not retried");
        server.abort();
        let _ = std::fs::remove_file(&path);

        // success=false with a message is a failure; with no message it is not.
        let (h, _) = handler(vec![1], || {
            Ok(Response {
                success: false,
                message: "VMI not found".into(),
            })
        });
        let server = serve(&path, h);
        let mut notifier = Notifier::new(path.clone(), FAST);
        let e = notifier
            .k8s_event(b"{}".to_vec())
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("VMI not found"), "{e}");
        server.abort();
        let _ = std::fs::remove_file(&path);

        let (h, _) = handler(vec![1], || {
            Ok(Response {
                success: false,
                message: String::new(),
            })
        });
        let server = serve(&path, h);
        let mut notifier = Notifier::new(path.clone(), FAST);
        notifier
            .k8s_event(b"{}".to_vec())
            .await
            .expect("false without a message counts as success, as in virt-handler");
        server.abort();
    }

    #[tokio::test]
    async fn a_handler_without_version_1_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let (h, calls) = handler(vec![2, 3], success);
        let server = serve(&path, h);
        let mut notifier = Notifier::new(path, FAST);
        let e = notifier
            .domain_event("ADDED", b"{}".to_vec())
            .await
            .expect_err("no common version");
        assert!(matches!(e, NotifyError::Version { .. }), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        server.abort();
    }
}
