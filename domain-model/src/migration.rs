//! The computed live-migration condition, with KubeVirt's reasons and
//! messages for what this launcher can express: non-shared host disks and
//! confidential-computing launch security.

use crate::api;
use crate::{LaunchSecurity, MigrationCondition};

pub const REASON_DISKS: &str = "DisksNotLiveMigratable";
pub const REASON_SEV: &str = "SEVNotLiveMigratable";
pub const REASON_TDX: &str = "TDXNotLiveMigratable";
pub const REASON_SECURE_EXECUTION: &str = "SecureExecutionNotLiveMigratable";

/// KubeVirt's `calculateLiveMigrationCondition` (pkg/virt-handler/vm.go)
/// checks in a fixed order and keeps only the first reason found, with its
/// own message: SEV (SEV-SNP included), then TDX, then Secure Execution, and
/// disks last. The checks in between (interfaces, host CPU model, host
/// devices, TSC, Hyper-V passthrough) concern nothing this launcher runs.
pub fn condition(
    volumes: &[api::Volume],
    launch_security: Option<&LaunchSecurity>,
) -> MigrationCondition {
    let non_shared_host_disk = volumes
        .iter()
        .filter_map(|v| v.host_disk.as_ref())
        .any(|hd| hd.shared != Some(true));
    let reason = match launch_security {
        Some(LaunchSecurity::Sev { .. } | LaunchSecurity::SevSnp { .. }) => {
            Some((REASON_SEV, "VMI uses SEV"))
        }
        Some(LaunchSecurity::Tdx) => Some((REASON_TDX, "VMI uses TDX")),
        Some(LaunchSecurity::SecureExecution) => {
            Some((REASON_SECURE_EXECUTION, "VMI uses Secure Execution"))
        }
        None if non_shared_host_disk => {
            Some((REASON_DISKS, "cannot migrate VMI with non-shared HostDisk"))
        }
        None => None,
    };
    match reason {
        None => MigrationCondition {
            live_migratable: true,
            reason: None,
            message: None,
        },
        Some((reason, message)) => MigrationCondition {
            live_migratable: false,
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
        },
    }
}
