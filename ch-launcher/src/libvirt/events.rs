//! libvirt domain events, mapped onto the launcher's neutral lifecycle
//! [`Event`]s so that both backends feed one state machine.
//!
//! | libvirt event (`VIR_DOMAIN_EVENT_*`)       | [`Event`]                   |
//! |--------------------------------------------|-----------------------------|
//! | `STARTED/*`                                | none: the runner reports `Created`; the driver always starts paused |
//! | `RESUMED/*`, first time                    | `Booted`                    |
//! | `RESUMED/*`, later                         | `Resumed`                   |
//! | `SUSPENDED/*` after boot, `PMSUSPENDED/*`  | `Paused`                    |
//! | `SHUTDOWN/*`                               | none: `STOPPED` follows     |
//! | `STOPPED/SHUTDOWN` (guest powered off)     | `GuestPoweredOff`           |
//! | `STOPPED/DESTROYED`                        | `Destroyed`                 |
//! | `STOPPED/FAILED` (QEMU died, e.g. killed)  | `HypervisorDied`            |
//! | `STOPPED/CRASHED` (panic, `on_crash=destroy`) | `GuestPanicked`          |
//! | `STOPPED/SAVED`, `MIGRATED`, `FROM_SNAPSHOT`, ... | `HypervisorDied` (stopped by someone else) |
//! | `CRASHED/*` (pvpanic)                      | `GuestPanicked`             |
//! | `REBOOT` (separate event id: guest reset)  | `Rebooted`                  |
//! | lost connection to libvirtd (EOF on its socket) | `HypervisorDied`       |
//!
//! Measured against libvirt 9.0 + QEMU 7.2: a guest power-off emits
//! `SHUTDOWN/FINISHED` then `STOPPED/SHUTDOWN`; `virsh destroy` emits
//! `SHUTDOWN/FINISHED` then `STOPPED/DESTROYED`; `kill -9` of QEMU emits only
//! `STOPPED/FAILED`. libvirt's `STOPPED/CRASHED` is only used after a guest
//! panic (QEMU's own death is `FAILED`), hence the mapping to `GuestPanicked`.
//!
//! A `STOPPED` event is the last one: the driver closes the event channel
//! after it, which tells the runner the hypervisor is gone.

use crate::lifecycle::Event;

/// libvirt's lifecycle event and detail numbers (`virDomainEventType` and
/// the `virDomainEvent*DetailType`s of `libvirt-domain.h`). They are ABI:
/// libvirt only ever appends to them.
#[allow(dead_code)] // the full table, though the mapper reads only some
mod sys {
    pub const VIR_DOMAIN_EVENT_DEFINED: u32 = 0;
    pub const VIR_DOMAIN_EVENT_UNDEFINED: u32 = 1;
    pub const VIR_DOMAIN_EVENT_STARTED: u32 = 2;
    pub const VIR_DOMAIN_EVENT_SUSPENDED: u32 = 3;
    pub const VIR_DOMAIN_EVENT_RESUMED: u32 = 4;
    pub const VIR_DOMAIN_EVENT_STOPPED: u32 = 5;
    pub const VIR_DOMAIN_EVENT_SHUTDOWN: u32 = 6;
    pub const VIR_DOMAIN_EVENT_PMSUSPENDED: u32 = 7;
    pub const VIR_DOMAIN_EVENT_CRASHED: u32 = 8;

    pub const VIR_DOMAIN_EVENT_STARTED_BOOTED: u32 = 0;
    pub const VIR_DOMAIN_EVENT_SUSPENDED_PAUSED: u32 = 0;
    pub const VIR_DOMAIN_EVENT_RESUMED_UNPAUSED: u32 = 0;
    pub const VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED: u32 = 0;
    pub const VIR_DOMAIN_EVENT_CRASHED_PANICKED: u32 = 0;

    pub const VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: u32 = 0;
    pub const VIR_DOMAIN_EVENT_STOPPED_DESTROYED: u32 = 1;
    pub const VIR_DOMAIN_EVENT_STOPPED_CRASHED: u32 = 2;
    pub const VIR_DOMAIN_EVENT_STOPPED_MIGRATED: u32 = 3;
    pub const VIR_DOMAIN_EVENT_STOPPED_SAVED: u32 = 4;
    pub const VIR_DOMAIN_EVENT_STOPPED_FAILED: u32 = 5;
    pub const VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: u32 = 6;
    pub const VIR_DOMAIN_EVENT_STOPPED_RECREATED: u32 = 7;
}

/// Turns raw libvirt lifecycle events into [`Event`]s; remembers whether the
/// vCPUs ever ran, because the driver creates the domain paused and its first
/// resume is the boot.
#[derive(Debug, Default, Clone)]
pub struct EventMapper {
    booted: bool,
}

/// What one libvirt event means for the launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub event: Option<Event>,
    /// The domain is gone: no further event will come.
    pub last: bool,
}

impl EventMapper {
    /// Maps a `VIR_DOMAIN_EVENT_ID_LIFECYCLE` callback's `event` and `detail`.
    pub fn lifecycle(&mut self, event: i32, detail: i32) -> Mapped {
        let (Ok(event), Ok(detail)) = (u32::try_from(event), u32::try_from(detail)) else {
            return Mapped {
                event: None,
                last: false,
            };
        };
        let mut last = false;
        let mapped = match event {
            sys::VIR_DOMAIN_EVENT_RESUMED => {
                if self.booted {
                    Some(Event::Resumed)
                } else {
                    self.booted = true;
                    Some(Event::Booted)
                }
            }
            sys::VIR_DOMAIN_EVENT_SUSPENDED if self.booted => Some(Event::Paused),
            sys::VIR_DOMAIN_EVENT_PMSUSPENDED => Some(Event::Paused),
            sys::VIR_DOMAIN_EVENT_CRASHED => Some(Event::GuestPanicked),
            sys::VIR_DOMAIN_EVENT_STOPPED => {
                last = true;
                Some(match detail {
                    sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => Event::GuestPoweredOff,
                    sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => Event::Destroyed,
                    sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED => Event::GuestPanicked,
                    sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => Event::HypervisorDied {
                        detail: "QEMU exited unexpectedly (libvirt: stopped, failed)".into(),
                    },
                    other => Event::HypervisorDied {
                        detail: format!(
                            "the domain was stopped outside the launcher ({})",
                            stopped_detail_name(other)
                        ),
                    },
                })
            }
            _ => None,
        };
        Mapped {
            event: mapped,
            last,
        }
    }

    /// Maps a `VIR_DOMAIN_EVENT_ID_REBOOT` callback.
    pub fn reboot(&mut self) -> Mapped {
        Mapped {
            event: Some(Event::Rebooted),
            last: false,
        }
    }
}

fn stopped_detail_name(detail: u32) -> &'static str {
    match detail {
        sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED => "migrated",
        sys::VIR_DOMAIN_EVENT_STOPPED_SAVED => "saved",
        sys::VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT => "from snapshot",
        sys::VIR_DOMAIN_EVENT_STOPPED_RECREATED => "recreated",
        _ => "unknown reason",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{Lifecycle, Reason, State};

    fn ev(e: u32, d: u32) -> (i32, i32) {
        (e as i32, d as i32)
    }

    /// Feeds a recorded libvirt event sequence through the mapper and the
    /// shared state machine, as the runner does.
    fn run(events: &[(i32, i32)]) -> (State, Reason, bool) {
        let mut mapper = EventMapper::default();
        let mut lifecycle = Lifecycle::default();
        lifecycle.apply(&Event::Created);
        let mut last = false;
        for &(e, d) in events {
            assert!(!last, "no event may follow the last one");
            let m = mapper.lifecycle(e, d);
            if let Some(event) = m.event {
                lifecycle.apply(&event);
            }
            last = m.last;
        }
        let s = lifecycle.status();
        (s.state, s.reason, last)
    }

    const START_PAUSED: [(u32, u32); 2] = [
        (
            sys::VIR_DOMAIN_EVENT_STARTED,
            sys::VIR_DOMAIN_EVENT_STARTED_BOOTED,
        ),
        (
            sys::VIR_DOMAIN_EVENT_SUSPENDED,
            sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED,
        ),
    ];

    fn with_start(rest: &[(u32, u32)]) -> Vec<(i32, i32)> {
        START_PAUSED
            .iter()
            .chain(rest)
            .map(|&(e, d)| ev(e, d))
            .collect()
    }

    const BOOT: (u32, u32) = (
        sys::VIR_DOMAIN_EVENT_RESUMED,
        sys::VIR_DOMAIN_EVENT_RESUMED_UNPAUSED,
    );

    #[test]
    fn start_paused_stays_starting_up_until_the_first_resume_boots() {
        assert_eq!(
            run(&with_start(&[])),
            (State::Paused, Reason::StartingUp, false)
        );
        assert_eq!(
            run(&with_start(&[BOOT])),
            (State::Running, Reason::Booted, false)
        );
    }

    #[test]
    fn pause_then_resume_maps_to_paused_user_then_running_unpaused() {
        let paused = with_start(&[
            BOOT,
            (
                sys::VIR_DOMAIN_EVENT_SUSPENDED,
                sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED,
            ),
        ]);
        assert_eq!(run(&paused), (State::Paused, Reason::User, false));
        let resumed = with_start(&[
            BOOT,
            (
                sys::VIR_DOMAIN_EVENT_SUSPENDED,
                sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED,
            ),
            BOOT,
        ]);
        assert_eq!(run(&resumed), (State::Running, Reason::Unpaused, false));
    }

    #[test]
    fn guest_poweroff_maps_to_shutoff_shutdown() {
        let events = with_start(&[
            BOOT,
            (
                sys::VIR_DOMAIN_EVENT_SHUTDOWN,
                sys::VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED,
            ),
            (
                sys::VIR_DOMAIN_EVENT_STOPPED,
                sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN,
            ),
        ]);
        assert_eq!(run(&events), (State::Shutoff, Reason::Shutdown, true));
    }

    #[test]
    fn destroy_maps_to_shutoff_destroyed() {
        let events = with_start(&[
            BOOT,
            (
                sys::VIR_DOMAIN_EVENT_SHUTDOWN,
                sys::VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED,
            ),
            (
                sys::VIR_DOMAIN_EVENT_STOPPED,
                sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
            ),
        ]);
        assert_eq!(run(&events), (State::Shutoff, Reason::Destroyed, true));
    }

    #[test]
    fn killed_qemu_maps_to_crashed() {
        let events = with_start(&[
            BOOT,
            (
                sys::VIR_DOMAIN_EVENT_STOPPED,
                sys::VIR_DOMAIN_EVENT_STOPPED_FAILED,
            ),
        ]);
        assert_eq!(run(&events), (State::Crashed, Reason::Unknown, true));
    }

    #[test]
    fn guest_panic_maps_to_crashed_panicked() {
        let events = with_start(&[
            BOOT,
            (
                sys::VIR_DOMAIN_EVENT_CRASHED,
                sys::VIR_DOMAIN_EVENT_CRASHED_PANICKED,
            ),
            (
                sys::VIR_DOMAIN_EVENT_STOPPED,
                sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED,
            ),
        ]);
        assert_eq!(run(&events), (State::Crashed, Reason::Panicked, true));
    }

    #[test]
    fn reboot_event_maps_to_rebooted() {
        assert_eq!(EventMapper::default().reboot().event, Some(Event::Rebooted));
    }

    #[test]
    fn unknown_event_numbers_are_ignored() {
        let m = EventMapper::default().lifecycle(999, 0);
        assert_eq!(
            m,
            Mapped {
                event: None,
                last: false
            }
        );
        let m = EventMapper::default().lifecycle(-1, -1);
        assert_eq!(m.event, None);
    }
}
