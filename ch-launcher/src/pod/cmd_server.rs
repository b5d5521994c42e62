//! The cmd server virt-handler drives: `kubevirt.cmd.info.CmdInfo` and
//! `kubevirt.cmd.v1.Cmd` on `<share-dir>/sockets/launcher-sock`.
//!
//! The socket is bound as `launcher-init-sock`, and renamed to
//! `launcher-sock` only once the server answered its own `Ping`: virt-handler
//! looks for nothing else, so the rename is the launcher's "ready". The
//! process that binds it is the launcher itself, which virt-handler finds
//! through `SO_PEERCRED`. Failures are answered as KubeVirt's launcher does,
//! with gRPC OK and `Response{success: false, message}`; what the launcher
//! does not do is `UNIMPLEMENTED` with the reason, never a fake success.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response as GrpcResponse, Status};

use super::proto::cmd::cmd_server::{Cmd, CmdServer};
use super::proto::cmd::*;
use super::proto::cmd_info::cmd_info_server::{CmdInfo, CmdInfoServer};
use super::proto::cmd_info::{CmdInfoRequest, CmdInfoResponse};
use super::{Pod, VmiError};
use crate::control::Command;

/// The only cmd protocol version, as KubeVirt's.
pub const CMD_VERSION: u32 = 1;

/// The socket virt-handler looks for, under `<share-dir>/sockets`.
pub const READY_SOCKET: &str = "launcher-sock";
/// The name the socket has until the server answers.
pub const INIT_SOCKET: &str = "launcher-init-sock";

/// Largest request accepted: a VMI with many volumes and its options.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The cmd server, serving until dropped; dropping it removes the socket.
pub struct CmdSocket {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl CmdSocket {
    /// Binds `launcher-init-sock`, serves it, pings it (every 100 ms for up
    /// to `ready_within`) and renames it to `launcher-sock`.
    pub async fn start(
        share_dir: &Path,
        pod: Arc<Pod>,
        ready_within: Duration,
    ) -> Result<CmdSocket, String> {
        let dir = share_dir.join("sockets");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let init = dir.join(INIT_SOCKET);
        let ready = dir.join(READY_SOCKET);
        for stale in [&init, &ready] {
            // A previous launcher of this pod that died left it; nothing
            // serves it any more (one launcher per pod).
            crate::util::remove_stale_socket(stale)
                .map_err(|e| format!("cannot remove {}: {e}", stale.display()))?;
        }
        let listener = crate::util::bind_tokio_socket(&init, 0o600)
            .map_err(|e| format!("cannot bind {}: {e}", init.display()))?;
        let service = CmdService { pod: pod.clone() };
        let router = tonic::transport::Server::builder()
            .add_service(CmdInfoServer::new(InfoService))
            .add_service(
                CmdServer::new(service)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        let task = tokio::spawn(async move {
            if let Err(e) = router
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
            {
                tracing::error!(error = %e, "the cmd server stopped");
            }
        });
        let mut socket = CmdSocket {
            path: init.clone(),
            task,
        };
        self_ping(&init, ready_within).await?;
        std::fs::rename(&init, &ready).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                init.display(),
                ready.display()
            )
        })?;
        socket.path = ready;
        tracing::info!(socket = %socket.path.display(), "cmd server ready");
        Ok(socket)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CmdSocket {
    fn drop(&mut self) {
        self.task.abort();
        crate::util::remove_socket(&self.path);
    }
}

async fn self_ping(path: &Path, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let attempt = async {
            let channel = super::transport::connect(path)
                .await
                .map_err(|e| super::notify::error_chain(&e))?;
            let mut client = cmd_client::CmdClient::new(channel);
            let answer = client
                .ping(EmptyRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            if answer.success {
                Ok(())
            } else {
                Err(answer.message)
            }
        };
        let last = match tokio::time::timeout(Duration::from_secs(1), attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "no answer within 1 s".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the cmd server on {} does not answer its own Ping: {last}",
                path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct InfoService;

#[tonic::async_trait]
impl CmdInfo for InfoService {
    async fn info(
        &self,
        _: Request<CmdInfoRequest>,
    ) -> Result<GrpcResponse<CmdInfoResponse>, Status> {
        Ok(GrpcResponse::new(CmdInfoResponse {
            supported_cmd_versions: vec![CMD_VERSION],
        }))
    }
}

struct CmdService {
    pod: Arc<Pod>,
}

type Reply<T> = Result<GrpcResponse<T>, Status>;

fn ok() -> Option<Response> {
    Some(Response {
        success: true,
        message: String::new(),
    })
}

fn answer(result: Result<(), String>) -> Reply<Response> {
    Ok(GrpcResponse::new(match result {
        Ok(()) => Response {
            success: true,
            message: String::new(),
        },
        Err(message) => {
            tracing::warn!(error = %message, "a virt-handler command failed");
            Response {
                success: false,
                message,
            }
        }
    }))
}

fn vmi_of(request: &VmiRequest) -> Result<&[u8], String> {
    request
        .vmi
        .as_ref()
        .map(|v| v.vmi_json.as_slice())
        .filter(|j| !j.is_empty())
        .ok_or_else(|| VmiError::Missing.to_string())
}

/// `UNIMPLEMENTED`, naming the RPC and why.
fn unimplemented<T>(rpc: &str, why: &str) -> Reply<T> {
    Err(Status::unimplemented(format!(
        "ch-launcher does not implement {rpc}: {why}"
    )))
}

const NO_AGENT: &str = "the VM has no guest agent channel (ch-launcher does not attach one yet)";
const NO_MIGRATION: &str = "live migration is not implemented";

#[tonic::async_trait]
impl Cmd for CmdService {
    async fn sync_virtual_machine(&self, request: Request<VmiRequest>) -> Reply<Response> {
        let request = request.into_inner();
        let result = match vmi_of(&request) {
            Ok(json) => self.pod.sync(json).await,
            Err(e) => Err(e),
        };
        answer(result)
    }

    async fn pause_virtual_machine(&self, _: Request<VmiRequest>) -> Reply<Response> {
        answer(self.pod.command(Command::Pause).await)
    }

    async fn unpause_virtual_machine(&self, _: Request<VmiRequest>) -> Reply<Response> {
        answer(self.pod.command(Command::Resume).await)
    }

    async fn freeze_virtual_machine(&self, _: Request<FreezeRequest>) -> Reply<Response> {
        unimplemented("FreezeVirtualMachine", NO_AGENT)
    }

    async fn unfreeze_virtual_machine(&self, _: Request<VmiRequest>) -> Reply<Response> {
        unimplemented("UnfreezeVirtualMachine", NO_AGENT)
    }

    async fn reset_virtual_machine(&self, _: Request<VmiRequest>) -> Reply<Response> {
        // Both backends' reboot is a reset of the machine (Cloud
        // Hypervisor's vm.reboot, libvirt's virDomainReset is not used).
        answer(self.pod.command(Command::Reboot).await)
    }

    async fn soft_reboot_virtual_machine(&self, _: Request<VmiRequest>) -> Reply<Response> {
        // KubeVirt reboots through the guest agent and falls back to ACPI;
        // with no agent the launcher takes the backend's reboot.
        answer(self.pod.command(Command::Reboot).await)
    }

    async fn shutdown_virtual_machine(&self, _: Request<VmiRequest>) -> Reply<Response> {
        answer(self.pod.shutdown().await)
    }

    async fn kill_virtual_machine(&self, _: Request<VmiRequest>) -> Reply<Response> {
        answer(self.pod.kill().await)
    }

    async fn delete_virtual_machine(&self, _: Request<VmiRequest>) -> Reply<Response> {
        answer(self.pod.delete().await)
    }

    async fn migrate_virtual_machine(&self, _: Request<MigrationRequest>) -> Reply<Response> {
        unimplemented("MigrateVirtualMachine", NO_MIGRATION)
    }

    async fn sync_migration_target(&self, _: Request<VmiRequest>) -> Reply<Response> {
        unimplemented("SyncMigrationTarget", NO_MIGRATION)
    }

    async fn cancel_virtual_machine_migration(&self, _: Request<VmiRequest>) -> Reply<Response> {
        unimplemented("CancelVirtualMachineMigration", NO_MIGRATION)
    }

    async fn signal_target_pod_cleanup(&self, _: Request<VmiRequest>) -> Reply<Response> {
        unimplemented("SignalTargetPodCleanup", NO_MIGRATION)
    }

    async fn finalize_virtual_machine_migration(&self, _: Request<VmiRequest>) -> Reply<Response> {
        unimplemented("FinalizeVirtualMachineMigration", NO_MIGRATION)
    }

    async fn hotplug_host_devices(&self, _: Request<VmiRequest>) -> Reply<Response> {
        unimplemented(
            "HotplugHostDevices",
            "host device passthrough is not implemented",
        )
    }

    async fn get_domain(&self, _: Request<EmptyRequest>) -> Reply<DomainResponse> {
        let domain = self
            .pod
            .domain_json()
            .map(|d| d.to_string())
            .unwrap_or_default();
        Ok(GrpcResponse::new(DomainResponse {
            response: ok(),
            domain,
        }))
    }

    async fn get_domain_stats(&self, _: Request<EmptyRequest>) -> Reply<DomainStatsResponse> {
        let stats = self.pod.domain_stats();
        Ok(GrpcResponse::new(DomainStatsResponse {
            response: ok(),
            domain_stats: stats.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    async fn get_guest_info(&self, _: Request<EmptyRequest>) -> Reply<GuestInfoResponse> {
        // No agent: an empty VirtualMachineInstanceGuestAgentInfo, as
        // virt-launcher answers before any agent connected. The domain's
        // Channels never show an agent, so virt-handler does not poll this.
        Ok(GrpcResponse::new(GuestInfoResponse {
            response: ok(),
            guest_info_response: "{}".into(),
        }))
    }

    async fn get_users(&self, _: Request<EmptyRequest>) -> Reply<GuestUserListResponse> {
        Ok(GrpcResponse::new(GuestUserListResponse {
            response: ok(),
            guest_user_list_response: r#"{"items":[]}"#.into(),
        }))
    }

    async fn get_filesystems(&self, _: Request<EmptyRequest>) -> Reply<GuestFilesystemsResponse> {
        // Asked on every metrics scrape; without an agent there are none.
        Ok(GrpcResponse::new(GuestFilesystemsResponse {
            response: ok(),
            guest_filesystems_response: r#"{"items":[]}"#.into(),
        }))
    }

    async fn get_devices(&self, _: Request<EmptyRequest>) -> Reply<GuestDevicesResponse> {
        unimplemented("GetDevices", NO_AGENT)
    }

    async fn ping(&self, _: Request<EmptyRequest>) -> Reply<Response> {
        answer(Ok(()))
    }

    async fn exec(&self, _: Request<ExecRequest>) -> Reply<ExecResponse> {
        unimplemented("Exec", NO_AGENT)
    }

    async fn guest_ping(&self, _: Request<GuestPingRequest>) -> Reply<GuestPingResponse> {
        unimplemented("GuestPing", NO_AGENT)
    }

    async fn virtual_machine_memory_dump(&self, _: Request<MemoryDumpRequest>) -> Reply<Response> {
        unimplemented(
            "VirtualMachineMemoryDump",
            "memory dumps are not implemented",
        )
    }

    async fn get_qemu_version(&self, _: Request<EmptyRequest>) -> Reply<QemuVersionResponse> {
        match self.pod.hypervisor_version() {
            Some(version) => Ok(GrpcResponse::new(QemuVersionResponse {
                response: ok(),
                version,
            })),
            None => Ok(GrpcResponse::new(QemuVersionResponse {
                response: Some(Response {
                    success: false,
                    message: "no VM runs yet".into(),
                }),
                version: String::new(),
            })),
        }
    }

    async fn sync_virtual_machine_cp_us(&self, _: Request<VmiRequest>) -> Reply<Response> {
        unimplemented(
            "SyncVirtualMachineCPUs",
            "CPU hotplug is not implemented yet",
        )
    }

    async fn sync_virtual_machine_memory(&self, _: Request<VmiRequest>) -> Reply<Response> {
        unimplemented(
            "SyncVirtualMachineMemory",
            "memory hotplug is not implemented yet",
        )
    }

    async fn get_sev_info(&self, _: Request<EmptyRequest>) -> Reply<SevInfoResponse> {
        unimplemented("GetSEVInfo", "SEV attestation is not implemented")
    }

    async fn get_launch_measurement(
        &self,
        _: Request<VmiRequest>,
    ) -> Reply<LaunchMeasurementResponse> {
        unimplemented("GetLaunchMeasurement", "SEV attestation is not implemented")
    }

    async fn inject_launch_secret(&self, _: Request<InjectLaunchSecretRequest>) -> Reply<Response> {
        unimplemented("InjectLaunchSecret", "SEV attestation is not implemented")
    }

    async fn get_domain_dirty_rate_stats(
        &self,
        _: Request<EmptyRequest>,
    ) -> Reply<DirtyRateStatsResponse> {
        unimplemented(
            "GetDomainDirtyRateStats",
            "dirty-rate measurement is not implemented",
        )
    }

    async fn get_screenshot(&self, _: Request<VmiRequest>) -> Reply<ScreenshotResponse> {
        let why = match self.pod.hypervisor() {
            Some(domain_model::Hypervisor::CloudHypervisor) => {
                "Cloud Hypervisor has no display or VNC server"
            }
            _ => "screenshots are not implemented",
        };
        unimplemented("GetScreenshot", why)
    }

    async fn backup_virtual_machine(&self, _: Request<BackupRequest>) -> Reply<Response> {
        unimplemented("BackupVirtualMachine", "backups are not implemented")
    }

    async fn redefine_checkpoint(
        &self,
        _: Request<RedefineCheckpointRequest>,
    ) -> Reply<RedefineCheckpointResponse> {
        unimplemented("RedefineCheckpoint", "backups are not implemented")
    }

    async fn get_vm_stats(&self, _: Request<VmStatsRequest>) -> Reply<VmStatsResponse> {
        unimplemented("GetVMStats", "use GetDomainStats")
    }
}
