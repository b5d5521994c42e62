//! The computed live-migration condition, with KubeVirt's reasons and
//! messages for what this launcher can express: non-shared host disks and
//! confidential-computing launch security.

use crate::api;
use crate::{LaunchSecurity, MigrationCondition};

pub const REASON_DISKS: &str = "DisksNotLiveMigratable";
pub const REASON_SEV: &str = "SEVNotLiveMigratable";
pub const REASON_TDX: &str = "TDXNotLiveMigratable";
pub const REASON_SECURE_EXECUTION: &str = "SecureExecutionNotLiveMigratable";

/// Like KubeVirt, the first reason found names the condition; the message
/// lists every reason's message.
pub fn condition(
    volumes: &[api::Volume],
    launch_security: Option<&LaunchSecurity>,
) -> MigrationCondition {
    let mut reasons: Vec<(&str, &str)> = Vec::new();
    let non_shared_host_disk = volumes
        .iter()
        .filter_map(|v| v.host_disk.as_ref())
        .any(|hd| hd.shared != Some(true));
    if non_shared_host_disk {
        reasons.push((REASON_DISKS, "cannot migrate VMI with non-shared HostDisk"));
    }
    match launch_security {
        Some(LaunchSecurity::Sev { .. } | LaunchSecurity::SevSnp { .. }) => {
            reasons.push((REASON_SEV, "VMI uses SEV"))
        }
        Some(LaunchSecurity::Tdx) => reasons.push((REASON_TDX, "VMI uses TDX")),
        Some(LaunchSecurity::SecureExecution) => {
            reasons.push((REASON_SECURE_EXECUTION, "VMI uses Secure Execution"))
        }
        None => {}
    }
    match reasons.first() {
        None => MigrationCondition {
            live_migratable: true,
            reason: None,
            message: None,
        },
        Some((reason, _)) => MigrationCondition {
            live_migratable: false,
            reason: Some(reason.to_string()),
            message: Some(
                reasons
                    .iter()
                    .map(|(_, m)| *m)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        },
    }
}
