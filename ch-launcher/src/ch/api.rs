//! Cloud Hypervisor's REST API over its unix socket, with every failure
//! turned into a [`BackendError`] that carries CH's own error chain.
//!
//! CH answers a failed request with a JSON array of strings, outermost cause
//! first (`["Error from API", "The VM could not boot", "VM is already created"]`);
//! that array becomes [`BackendError::Refused::chain`] unchanged.
//!
//! Every request is bounded by [`Api::timeout`]: a VMM that hangs (stopped,
//! deadlocked) must not hang the launcher with it; no answer in time is
//! [`BackendError::Unreachable`], like no socket at all.

use crate::backend::BackendError;
use cloud_hypervisor_client::apis::{DefaultApi, Error as ClientError};
use cloud_hypervisor_client::models::{VmConfig, VmInfo, VmmPingResponse};
use cloud_hypervisor_client::{socket_based_api_client, SocketBasedApiClient};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// How long one API request may take by default. CH answers every request
/// the launcher sends in milliseconds (`vm.create` and `vm.boot` included,
/// measured well under a second on the tiny guest); a VMM that does not
/// answer in 5 s is stuck.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for one VMM's API socket.
pub struct Api {
    client: SocketBasedApiClient,
    timeout: Duration,
}

impl Api {
    /// Does not connect; the first request does. Requests time out after
    /// [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn new(socket: &Path) -> Self {
        Api::with_timeout(socket, DEFAULT_REQUEST_TIMEOUT)
    }

    /// Like [`Api::new`], with requests bounded by `timeout`.
    pub fn with_timeout(socket: &Path, timeout: Duration) -> Self {
        Api {
            client: socket_based_api_client(socket),
            timeout,
        }
    }

    /// How long one request may take before it counts as unreachable.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub async fn ping(&self) -> Result<VmmPingResponse, BackendError> {
        self.call("vmm.ping", self.client.vmm_ping_get()).await
    }
    pub async fn create(&self, config: VmConfig) -> Result<(), BackendError> {
        self.call("vm.create", self.client.create_vm(config)).await
    }
    pub async fn info(&self) -> Result<VmInfo, BackendError> {
        self.call("vm.info", self.client.vm_info_get()).await
    }
    pub async fn boot(&self) -> Result<(), BackendError> {
        self.call("vm.boot", self.client.boot_vm()).await
    }
    pub async fn resize(&self, vcpus: Option<u32>, ram: Option<u64>) -> Result<(), BackendError> {
        let request = cloud_hypervisor_client::models::VmResize {
            desired_vcpus: vcpus.map(|v| v as i32),
            desired_ram: ram.map(|r| r as i64),
            desired_balloon: None,
        };
        self.call("vm.resize", self.client.vm_resize_put(request))
            .await
    }
    pub async fn add_disk(
        &self,
        disk: cloud_hypervisor_client::models::DiskConfig,
    ) -> Result<cloud_hypervisor_client::models::PciDeviceInfo, BackendError> {
        self.call("vm.add-disk", self.client.vm_add_disk_put(disk))
            .await
    }
    pub async fn add_net(
        &self,
        net: cloud_hypervisor_client::models::NetConfig,
    ) -> Result<cloud_hypervisor_client::models::PciDeviceInfo, BackendError> {
        self.call("vm.add-net", self.client.vm_add_net_put(net))
            .await
    }
    pub async fn remove_device(&self, id: &str) -> Result<(), BackendError> {
        let request = cloud_hypervisor_client::models::VmRemoveDevice {
            id: Some(id.to_string()),
        };
        self.call(
            "vm.remove-device",
            self.client.vm_remove_device_put(request),
        )
        .await
    }
    pub async fn pause(&self) -> Result<(), BackendError> {
        self.call("vm.pause", self.client.pause_vm()).await
    }
    pub async fn resume(&self) -> Result<(), BackendError> {
        self.call("vm.resume", self.client.resume_vm()).await
    }
    pub async fn reboot(&self) -> Result<(), BackendError> {
        self.call("vm.reboot", self.client.reboot_vm()).await
    }
    pub async fn power_button(&self) -> Result<(), BackendError> {
        self.call("vm.power-button", self.client.power_button_vm())
            .await
    }
    pub async fn shutdown(&self) -> Result<(), BackendError> {
        self.call("vm.shutdown", self.client.shutdown_vm()).await
    }
    pub async fn delete(&self) -> Result<(), BackendError> {
        self.call("vm.delete", self.client.delete_vm()).await
    }
    pub async fn shutdown_vmm(&self) -> Result<(), BackendError> {
        self.call("vmm.shutdown", self.client.shutdown_vmm()).await
    }
}

impl Api {
    /// Sends one request, bounded by the timeout.
    async fn call<T>(
        &self,
        operation: &'static str,
        request: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => decode(operation, result),
            Err(_) => Err(BackendError::Unreachable {
                operation,
                detail: format!("no answer within {:?}", self.timeout),
            }),
        }
    }
}

fn decode<T>(operation: &'static str, result: Result<T, ClientError>) -> Result<T, BackendError> {
    result.map_err(|err| to_backend_error(operation, err))
}

/// Maps a client error: an HTTP error answer is a refusal with CH's chain;
/// anything else (no socket, connection reset, unreadable answer) means the
/// VMM could not be talked to.
pub fn to_backend_error(operation: &'static str, err: ClientError) -> BackendError {
    match err {
        ClientError::Api(api) => BackendError::Refused {
            operation,
            chain: error_chain(api.code.as_u16(), &api.body),
        },
        other => BackendError::Unreachable {
            operation,
            detail: other.to_string(),
        },
    }
}

/// CH's error array; a body that is not one is kept whole, with its status.
pub fn error_chain(status: u16, body: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<String>>(body) {
        Ok(chain) if !chain.is_empty() => chain,
        _ if body.trim().is_empty() => vec![format!("HTTP status {status}")],
        _ => vec![format!("HTTP status {status}: {}", body.trim())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn transcript() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/reference/cloud-hypervisor/api-transcript.json"
        );
        let text = std::fs::read_to_string(path).expect("reference transcript");
        serde_json::from_str(&text).expect("transcript is JSON")
    }

    #[test]
    fn every_recorded_error_answer_keeps_chs_chain_outermost_first() {
        let t = transcript();
        let mut seen = 0;
        for ex in t["exchanges"].as_array().expect("exchanges") {
            let Some(status) = ex["status"].as_u64() else {
                continue;
            };
            if status < 400 {
                continue;
            }
            let body = ex["response"].to_string();
            let chain = error_chain(status as u16, &body);
            let expected: Vec<String> =
                serde_json::from_value(ex["response"].clone()).expect("array of strings");
            assert_eq!(chain, expected, "{}", ex["note"]);
            seen += 1;
        }
        assert!(seen >= 10, "only {seen} error answers in the transcript");
    }

    #[tokio::test]
    async fn a_vmm_that_accepts_but_never_answers_is_unreachable_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ch-api.sock");
        // A stopped VMM: the kernel queues the connection, nobody answers.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let api = Api::with_timeout(&socket, Duration::from_millis(200));
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), api.power_button())
            .await
            .expect("the request is not bounded by the API timeout");
        match answer {
            Err(BackendError::Unreachable { operation, detail }) => {
                assert_eq!(operation, "vm.power-button");
                assert!(detail.contains("no answer within 200ms"), "{detail}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn refusal_message_joins_the_chain() {
        let err = BackendError::Refused {
            operation: "vm.pause",
            chain: error_chain(
                500,
                r#"["Error from API","The VM could not be paused","VM is not running"]"#,
            ),
        };
        assert_eq!(
            err.to_string(),
            "vm.pause failed: Error from API: The VM could not be paused: VM is not running"
        );
    }

    #[test]
    fn a_body_that_is_not_a_chain_is_kept_with_its_status() {
        assert_eq!(
            error_chain(502, "bad gateway\n"),
            ["HTTP status 502: bad gateway"]
        );
        assert_eq!(error_chain(500, ""), ["HTTP status 500"]);
        assert_eq!(error_chain(500, "[]"), ["HTTP status 500: []"]);
    }

    #[test]
    fn recorded_info_and_ping_answers_deserialize_into_the_client_models() {
        let t = transcript();
        let mut infos = 0;
        for ex in t["exchanges"].as_array().expect("exchanges") {
            let ok = ex["status"].as_u64() == Some(200);
            match ex["endpoint"].as_str() {
                Some("vm.info") if ok => {
                    let info: VmInfo =
                        serde_json::from_value(ex["response"].clone()).expect("VmInfo");
                    assert!(info.config.serial.is_some());
                    infos += 1;
                }
                Some("vmm.ping") if ok => {
                    let ping: VmmPingResponse =
                        serde_json::from_value(ex["response"].clone()).expect("ping");
                    assert_eq!(
                        ping.features,
                        Some(vec!["io_uring".to_string(), "kvm".to_string()])
                    );
                }
                _ => {}
            }
        }
        assert!(infos >= 4);
    }
}
