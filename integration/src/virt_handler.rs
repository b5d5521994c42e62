//! virt-handler's side of KubeVirt's handler-launcher contract, for the pod
//! tests: a notify server that records every event the launcher pushes, a
//! cmd client over the launcher's socket, and the VMI as virt-handler's
//! informer hands it over (empty `kind`/`apiVersion`, defaults the
//! mutating webhook adds, a `status`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ch_launcher::pod::proto::cmd::cmd_client::CmdClient;
use ch_launcher::pod::proto::cmd::{Vmi, VmiRequest};
use ch_launcher::pod::proto::cmd_info::cmd_info_client::CmdInfoClient;
use ch_launcher::pod::proto::notify::notify_server::{Notify, NotifyServer};
use ch_launcher::pod::proto::notify::{DomainEventRequest, K8sEventRequest, Response};
use ch_launcher::pod::proto::notify_info::notify_info_server::{NotifyInfo, NotifyInfoServer};
use ch_launcher::pod::proto::notify_info::{NotifyInfoRequest, NotifyInfoResponse};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// What the launcher pushed.
#[derive(Debug, Clone)]
pub enum Pushed {
    /// `HandleDomainEvent`: the event type and the domain JSON.
    Domain { event_type: String, domain: Value },
    /// `HandleK8sEvent`: a core/v1 Event.
    K8s(Value),
}

struct Recorder(mpsc::UnboundedSender<Pushed>);

#[tonic::async_trait]
impl Notify for Recorder {
    async fn handle_domain_event(
        &self,
        request: tonic::Request<DomainEventRequest>,
    ) -> Result<tonic::Response<Response>, tonic::Status> {
        let request = request.into_inner();
        // As virt-handler: undecodable JSON is the only refusal.
        let Ok(domain) = serde_json::from_slice(&request.domain_json) else {
            return Ok(tonic::Response::new(Response {
                success: false,
                message: "cannot decode the domain".into(),
            }));
        };
        let _ = self.0.send(Pushed::Domain {
            event_type: request.event_type,
            domain,
        });
        Ok(tonic::Response::new(Response {
            success: true,
            message: String::new(),
        }))
    }

    async fn handle_k8s_event(
        &self,
        request: tonic::Request<K8sEventRequest>,
    ) -> Result<tonic::Response<Response>, tonic::Status> {
        let Ok(event) = serde_json::from_slice(&request.into_inner().event_json) else {
            return Ok(tonic::Response::new(Response {
                success: false,
                message: "cannot decode the event".into(),
            }));
        };
        let _ = self.0.send(Pushed::K8s(event));
        Ok(tonic::Response::new(Response {
            success: true,
            message: String::new(),
        }))
    }
}

struct Versions;

#[tonic::async_trait]
impl NotifyInfo for Versions {
    async fn info(
        &self,
        _: tonic::Request<NotifyInfoRequest>,
    ) -> Result<tonic::Response<NotifyInfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(NotifyInfoResponse {
            supported_notify_versions: vec![1],
        }))
    }
}

/// The notify end: serves `<share>/domain-notify-pipe.sock` until dropped.
pub struct NotifySink {
    pub pushed: mpsc::UnboundedReceiver<Pushed>,
    /// Everything received so far, for failure messages.
    pub seen: Vec<Pushed>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NotifySink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NotifySink {
    /// Call inside a tokio runtime.
    pub fn serve(share_dir: &Path) -> NotifySink {
        let path = share_dir.join(ch_launcher::pod::NOTIFY_SOCKET);
        let listener = tokio::net::UnixListener::bind(&path).expect("bind the notify socket");
        let (tx, pushed) = mpsc::unbounded_channel();
        let router = tonic::transport::Server::builder()
            .add_service(NotifyInfoServer::new(Versions))
            .add_service(NotifyServer::new(Recorder(tx)));
        let task = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await;
        });
        NotifySink {
            pushed,
            seen: Vec::new(),
            task,
        }
    }

    /// The next pushed domain for which `want` holds (earlier ones are
    /// kept in `seen`); fails after `wait` listing what came.
    pub async fn domain_where(
        &mut self,
        what: &str,
        wait: Duration,
        want: impl Fn(&str, &Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.pushed.recv()).await {
                Ok(Some(pushed)) => {
                    self.seen.push(pushed.clone());
                    if let Pushed::Domain { event_type, domain } = pushed {
                        if want(&event_type, &domain) {
                            return domain;
                        }
                    }
                }
                _ => panic!(
                    "no domain event with {what} within {wait:?}; received: {}",
                    self.summary()
                ),
            }
        }
    }

    /// The next Kubernetes event, within `wait`.
    pub async fn k8s_event(&mut self, wait: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.pushed.recv()).await {
                Ok(Some(pushed)) => {
                    self.seen.push(pushed.clone());
                    if let Pushed::K8s(event) = pushed {
                        return event;
                    }
                }
                _ => panic!(
                    "no Kubernetes event within {wait:?}; received: {}",
                    self.summary()
                ),
            }
        }
    }

    pub fn summary(&self) -> String {
        self.seen
            .iter()
            .map(|p| match p {
                Pushed::Domain { event_type, domain } => format!(
                    "{event_type} {}/{}",
                    domain["Status"]["Status"], domain["Status"]["Reason"]
                ),
                Pushed::K8s(e) => format!("event {} {}", e["reason"], e["message"]),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `(status, reason)` of a pushed domain.
pub fn state_of(domain: &Value) -> (String, String) {
    (
        domain["Status"]["Status"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        domain["Status"]["Reason"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

/// The launcher's cmd socket once it is ready.
pub fn cmd_socket(share_dir: &Path) -> PathBuf {
    share_dir.join("sockets").join("launcher-sock")
}

/// Waits for `launcher-sock` (while `alive` holds) and connects to it.
pub async fn connect_cmd(
    share_dir: &Path,
    wait: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> (CmdClient<Channel>, CmdInfoClient<Channel>) {
    let path = cmd_socket(share_dir);
    let deadline = Instant::now() + wait;
    while !path.exists() {
        if let Err(e) = alive() {
            panic!("the launcher is gone before its cmd socket was ready: {e}");
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {wait:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = ch_launcher::pod::transport::connect(&path)
        .await
        .expect("connect to the cmd socket");
    (CmdClient::new(channel.clone()), CmdInfoClient::new(channel))
}

/// A `VMIRequest` carrying `vmi`.
pub fn vmi_request(vmi: &Value) -> VmiRequest {
    VmiRequest {
        vmi: Some(Vmi {
            vmi_json: vmi.to_string().into_bytes(),
        }),
        options: Some(Default::default()),
    }
}

/// The VMI of the test guest (`kernel`) as virt-handler sends it.
pub fn vmi(name: &str, namespace: &str, uid: &str, kernel: &Path, grace_seconds: u32) -> Value {
    json!({
        "kind": "",
        "apiVersion": "",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": "4242",
            "generation": 1,
            "creationTimestamp": "2026-12-03T10:00:00Z",
            "labels": { "kubevirt.io/nodeName": "node01" },
            "annotations": { "kubevirt.io/latest-observed-api-version": "v1" },
            "finalizers": ["kubevirt.io/virtualMachineControllerFinalize"],
        },
        "spec": {
            "architecture": "amd64",
            "domain": {
                "cpu": { "sockets": 1, "cores": 1, "threads": 1 },
                "memory": { "guest": "64Mi" },
                "resources": { "requests": { "memory": "64Mi" } },
                "machine": { "type": "q35" },
                "features": { "acpi": { "enabled": true } },
                "firmware": {
                    "uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223",
                    "kernelBoot": { "container": { "kernelPath": kernel.display().to_string() } },
                },
                "devices": {},
            },
            "terminationGracePeriodSeconds": grace_seconds,
        },
        "status": {
            "phase": "Scheduled",
            "nodeName": "node01",
            "activePods": { "6a0e3a0c-0000-4000-8000-000000000001": "node01" },
            "qosClass": "Burstable",
            "guestOSInfo": {},
        },
    })
}
