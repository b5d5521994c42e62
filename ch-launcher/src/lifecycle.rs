//! One lifecycle state machine for every backend.
//!
//! Backends translate what their hypervisor reports (Cloud Hypervisor's event
//! monitor, libvirt's domain events, the exit of the hypervisor process) into
//! neutral [`Event`]s; [`Lifecycle::apply`] turns those into KubeVirt's
//! `(State, Reason)` pairs, because virt-handler consumes exactly those.
//!
//! | Event                 | State    | Reason     |
//! |-----------------------|----------|------------|
//! | `Created`             | Paused   | StartingUp |
//! | `Booted`              | Running  | Booted     |
//! | `Paused`              | Paused   | User       |
//! | `Suspended{reason}`   | Paused   | `reason` (IOError, Watchdog, Unknown...) |
//! | `PmSuspended`         | PMSuspended | Unknown |
//! | `Resumed`             | Running  | Unpaused   |
//! | `Rebooted`            | Running  | Booted     |
//! | `ShuttingDown`        | Shutdown | User       |
//! | `BootFailed`          | Shutoff  | Failed     |
//! | `GuestPoweredOff`     | Shutoff  | Shutdown   |
//! | `Destroyed`           | Shutoff  | Destroyed  |
//! | `GuestPanicked`       | Crashed  | Panicked   |
//! | `HypervisorDied`      | Crashed  | Unknown    |
//!
//! `ShuttingDown` comes from the hypervisor when it reports an orderly
//! shutdown, and from the runner once the power button was pressed for a
//! stop, so `status` shows the guest is being asked to power off.
//! `BootFailed` (the hypervisor refused to run the created VM) is
//! `Shutoff/Failed` with the hypervisor's reason in the message, as KubeVirt
//! reports a domain that failed to start; it never reads as a destroy.
//!
//! Final states (Shutoff, Crashed) are sticky: a late event (for example the
//! VMM exiting after the guest powered off) does not overwrite them.

use domain_model::MigrationCondition;
use serde::Serialize;
use std::time::SystemTime;

/// KubeVirt's domain states (`virtwrap/api` `LifeCycle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum State {
    NoState,
    Running,
    Paused,
    Shutdown,
    Shutoff,
    Crashed,
    /// The guest suspended itself (ACPI S3/S4), libvirt's `pmsuspended`.
    PMSuspended,
}

/// KubeVirt's state change reasons (`virtwrap/api` `StateChangeReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reason {
    Unknown,
    Booted,
    StartingUp,
    User,
    Unpaused,
    Shutdown,
    Destroyed,
    Panicked,
    Failed,
    /// Paused by the hypervisor after a disk I/O error.
    IOError,
    /// Paused by the hypervisor when the guest's watchdog fired.
    Watchdog,
}

/// What a backend observed, independent of the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The VM exists but its vCPUs do not run yet (start paused).
    Created,
    /// The guest started running.
    Booted,
    /// Paused on request.
    Paused,
    /// Paused by the hypervisor itself, for `reason` (`IOError`,
    /// `Watchdog`, `Unknown`...).
    Suspended { reason: Reason },
    /// The guest suspended itself to RAM or disk.
    PmSuspended,
    /// Resumed on request.
    Resumed,
    /// The guest is rebooting (guest- or user-initiated).
    Rebooting,
    /// The guest finished a reboot and runs again.
    Rebooted,
    /// An orderly shutdown is under way.
    ShuttingDown,
    /// The guest powered itself off.
    GuestPoweredOff,
    /// The launcher (or its user) stopped the VM forcibly.
    Destroyed,
    /// The guest reported a panic (pvpanic).
    GuestPanicked,
    /// The hypervisor refused to boot the created VM.
    BootFailed { detail: String },
    /// The hypervisor process went away without an orderly shutdown.
    HypervisorDied { detail: String },
}

/// The current state as others see it (`status`, logs, virt-handler).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub state: State,
    pub reason: Reason,
    /// Extra detail, e.g. how the hypervisor died.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Seconds since the Unix epoch when this state was entered.
    pub since: u64,
    /// Whether the VM can be live-migrated, with KubeVirt's reason when not
    /// (e.g. `SEVNotLiveMigratable`); fixed for the VM's lifetime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_migratable: Option<MigrationCondition>,
    /// The vCPUs, memory and disks in effect, in control-socket answers
    /// (the state machine itself does not track them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::hotplug::Resources>,
}

impl Status {
    pub fn is_final(&self) -> bool {
        matches!(self.state, State::Shutoff | State::Crashed)
    }
}

/// The state machine. Holds the current status and applies events to it.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    current: Status,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            current: Status {
                state: State::NoState,
                reason: Reason::Unknown,
                message: None,
                since: now(),
                live_migratable: None,
                resources: None,
            },
        }
    }
}

impl Lifecycle {
    /// A lifecycle whose every status carries the VM's migratability.
    pub fn for_vm(live_migratable: MigrationCondition) -> Self {
        let mut lifecycle = Lifecycle::default();
        lifecycle.current.live_migratable = Some(live_migratable);
        lifecycle
    }

    pub fn status(&self) -> &Status {
        &self.current
    }

    /// Applies one event. Returns the new status when it changed.
    pub fn apply(&mut self, event: &Event) -> Option<&Status> {
        if self.current.is_final() {
            return None;
        }
        let (state, reason, message) = match event {
            Event::Created => (State::Paused, Reason::StartingUp, None),
            Event::Booted => (State::Running, Reason::Booted, None),
            Event::Paused => (State::Paused, Reason::User, None),
            Event::Suspended { reason } => (State::Paused, *reason, None),
            Event::PmSuspended => (State::PMSuspended, Reason::Unknown, None),
            Event::Resumed => (State::Running, Reason::Unpaused, None),
            // A reboot keeps the guest running from the cluster's view.
            Event::Rebooting => return None,
            Event::Rebooted => (State::Running, Reason::Booted, None),
            Event::ShuttingDown => (State::Shutdown, Reason::User, None),
            Event::GuestPoweredOff => (State::Shutoff, Reason::Shutdown, None),
            Event::Destroyed => (State::Shutoff, Reason::Destroyed, None),
            Event::GuestPanicked => (State::Crashed, Reason::Panicked, None),
            Event::BootFailed { detail } => (State::Shutoff, Reason::Failed, Some(detail.clone())),
            Event::HypervisorDied { detail } => {
                (State::Crashed, Reason::Unknown, Some(detail.clone()))
            }
        };
        if state == self.current.state && reason == self.current.reason {
            return None;
        }
        self.current = Status {
            state,
            reason,
            message,
            since: now(),
            live_migratable: self.current.live_migratable.take(),
            resources: None,
        };
        Some(&self.current)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_migratable() -> MigrationCondition {
        MigrationCondition {
            live_migratable: false,
            reason: Some("SEVNotLiveMigratable".into()),
            message: Some("VMI uses SEV".into()),
        }
    }

    #[test]
    fn every_status_carries_the_vms_live_migratable_condition() {
        let mut lifecycle = Lifecycle::for_vm(not_migratable());
        assert_eq!(lifecycle.status().live_migratable, Some(not_migratable()));
        for event in [
            Event::Created,
            Event::Booted,
            Event::Paused,
            Event::GuestPoweredOff,
        ] {
            lifecycle.apply(&event);
            assert_eq!(lifecycle.status().live_migratable, Some(not_migratable()));
        }
        let json = serde_json::to_value(lifecycle.status()).unwrap();
        assert_eq!(json["live_migratable"]["reason"], "SEVNotLiveMigratable");
        assert_eq!(json["state"], "Shutoff");
    }

    #[test]
    fn final_states_are_sticky() {
        let mut lifecycle = Lifecycle::default();
        lifecycle.apply(&Event::Booted);
        lifecycle.apply(&Event::GuestPoweredOff);
        assert!(lifecycle
            .apply(&Event::HypervisorDied {
                detail: "exited".into()
            })
            .is_none());
        assert_eq!(lifecycle.status().state, State::Shutoff);
        assert_eq!(lifecycle.status().reason, Reason::Shutdown);
    }
}
