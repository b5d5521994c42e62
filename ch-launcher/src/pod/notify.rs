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
