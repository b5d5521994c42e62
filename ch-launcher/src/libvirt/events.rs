//! libvirt domain events, mapped onto the launcher's neutral lifecycle
//! [`Event`]s so that both backends feed one state machine.
//!
//! | libvirt event (`VIR_DOMAIN_EVENT_*`)       | [`Event`]                   |
//! |--------------------------------------------|-----------------------------|
//! | `STARTED/*`                                | none: the runner reports `Created`; the driver always starts paused |
//! | `RESUMED/*`, first time                    | `Booted`                    |
//! | `RESUMED/*`, later                         | `Resumed`                   |
//! | `SUSPENDED/PAUSED` after boot (`virDomainSuspend`: the launcher's `pause`, or `virsh suspend`) | `Paused` (Paused/User) |
//! | `SUSPENDED/IOERROR`                        | `Suspended{IOError}`        |
//! | `SUSPENDED/WATCHDOG`                       | `Suspended{Watchdog}`       |
//! | `SUSPENDED/*` other (`API_ERROR`, migration, snapshot, ...) | the reason `DOMAIN_GET_STATE` gives (below) |
//! | `PMSUSPENDED/*` (guest S3/S4)              | `PmSuspended` (PMSuspended/Unknown) |
//! | `SHUTDOWN/*`                               | none: `STOPPED` follows     |
//! | `STOPPED/SHUTDOWN` (guest powered off)     | `GuestPoweredOff`           |
//! | `STOPPED/DESTROYED`                        | `Destroyed`                 |
//! | `STOPPED/FAILED` (QEMU died, e.g. killed)  | `HypervisorDied`            |
//! | `STOPPED/CRASHED` (panic, `on_crash=destroy`) | `GuestPanicked`          |
//! | `STOPPED/SAVED`, `MIGRATED`, `FROM_SNAPSHOT`, ... | `HypervisorDied` (stopped by someone else) |
//! | `CRASHED/*` (pvpanic)                      | `GuestPanicked`             |
//! | `REBOOT` (separate event id: guest reset)  | `Rebooted`                  |
//! | lost connection to libvirtd, not back within the reconnect window | `HypervisorDied` |
//!
//! `DOMAIN_GET_STATE` answers ([`EventMapper::from_state`]), asked after a
//! `SUSPENDED` event whose detail says nothing and after a reconnect:
//!
//! | `virDomainState` / reason                  | [`Event`]                   |
//! |--------------------------------------------|-----------------------------|
//! | `PAUSED/USER`                              | `Paused`                    |
//! | `PAUSED/IOERROR`, `PAUSED/WATCHDOG`        | `Suspended{IOError}`, `Suspended{Watchdog}` |
//! | `PAUSED/*` other                           | `Suspended{Unknown}`        |
//! | `RUNNING/*`                                | `Booted` first time, `Resumed` after a pause, else none |
//! | `PMSUSPENDED/*`                            | `PmSuspended`               |
//! | `SHUTOFF/SHUTDOWN`, `/DESTROYED`, `/CRASHED`, other | as `STOPPED/*` above (last) |
//! | `CRASHED/*`                                | `GuestPanicked`             |
//!
//! Before the boot (the domain is created paused) pause states change
//! nothing: the VM stays Paused/StartingUp until its first resume.
//!
//! Measured against libvirt 9.0 + QEMU 7.2: a guest power-off emits
//! `SHUTDOWN/FINISHED` then `STOPPED/SHUTDOWN`; `virsh destroy` emits
//! `SHUTDOWN/FINISHED` then `STOPPED/DESTROYED`; `kill -9` of QEMU emits only
//! `STOPPED/FAILED`. libvirt's `STOPPED/CRASHED` is only used after a guest
//! panic (QEMU's own death is `FAILED`), hence the mapping to `GuestPanicked`.
//!
//! A `STOPPED` event is the last one: the driver closes the event channel
//! after it, which tells the runner the hypervisor is gone.

use super::rpc::flags as state;
use crate::lifecycle::{Event, Reason};

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
    pub const VIR_DOMAIN_EVENT_SUSPENDED_IOERROR: u32 = 2;
    pub const VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG: u32 = 3;
    pub const VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR: u32 = 6;
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
    /// Paused after the boot (by anyone), as last reported.
    paused: bool,
}

/// What one libvirt event means for the launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub event: Option<Event>,
    /// The domain is gone: no further event will come.
    pub last: bool,
    /// The event does not say why the domain paused: ask libvirtd
    /// (`DOMAIN_GET_STATE`) and map its answer with [`EventMapper::from_state`].
    pub query_state: bool,
}

impl Mapped {
    fn event(event: Option<Event>) -> Mapped {
        Mapped {
            event,
            last: false,
            query_state: false,
        }
    }
}

impl EventMapper {
    /// Maps a `VIR_DOMAIN_EVENT_ID_LIFECYCLE` callback's `event` and `detail`.
    pub fn lifecycle(&mut self, event: i32, detail: i32) -> Mapped {
        let (Ok(event), Ok(detail)) = (u32::try_from(event), u32::try_from(detail)) else {
            return Mapped::event(None);
        };
        match event {
            sys::VIR_DOMAIN_EVENT_RESUMED => Mapped::event(self.running()),
            sys::VIR_DOMAIN_EVENT_SUSPENDED if self.booted => {
                let reason = match detail {
                    sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED => Reason::User,
                    sys::VIR_DOMAIN_EVENT_SUSPENDED_IOERROR => Reason::IOError,
                    sys::VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG => Reason::Watchdog,
                    // API_ERROR and the rest: libvirtd's state says why.
                    _ => {
                        return Mapped {
                            query_state: true,
                            ..Mapped::event(None)
                        }
                    }
                };
                Mapped::event(self.paused(reason))
            }
            sys::VIR_DOMAIN_EVENT_PMSUSPENDED => {
                self.paused = true;
                Mapped::event(Some(Event::PmSuspended))
            }
            sys::VIR_DOMAIN_EVENT_CRASHED => Mapped::event(Some(Event::GuestPanicked)),
            sys::VIR_DOMAIN_EVENT_STOPPED => Mapped {
                last: true,
                ..Mapped::event(Some(match detail {
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
                }))
            },
            _ => Mapped::event(None),
        }
    }

    /// Maps a `DOMAIN_GET_STATE` answer (`virDomainState`, reason): after a
    /// `SUSPENDED` event without a telling detail, and after a reconnect,
    /// when events may have been missed.
    pub fn from_state(&mut self, domain_state: i32, reason: i32) -> Mapped {
        match domain_state {
            state::VIR_DOMAIN_RUNNING => Mapped::event(self.running_if_changed()),
            state::VIR_DOMAIN_PAUSED if self.booted => {
                let reason = match reason {
                    state::VIR_DOMAIN_PAUSED_USER => Reason::User,
                    state::VIR_DOMAIN_PAUSED_IOERROR => Reason::IOError,
                    state::VIR_DOMAIN_PAUSED_WATCHDOG => Reason::Watchdog,
                    _ => Reason::Unknown,
                };
                Mapped::event(self.paused(reason))
            }
            state::VIR_DOMAIN_PMSUSPENDED => {
                self.paused = true;
                Mapped::event(Some(Event::PmSuspended))
            }
            state::VIR_DOMAIN_CRASHED => Mapped::event(Some(Event::GuestPanicked)),
            state::VIR_DOMAIN_SHUTOFF => Mapped {
                last: true,
                ..Mapped::event(Some(match reason {
                    state::VIR_DOMAIN_SHUTOFF_SHUTDOWN => Event::GuestPoweredOff,
                    state::VIR_DOMAIN_SHUTOFF_DESTROYED => Event::Destroyed,
                    state::VIR_DOMAIN_SHUTOFF_CRASHED => Event::GuestPanicked,
                    other => Event::HypervisorDied {
                        detail: format!("libvirt reports the domain shut off (reason {other})"),
                    },
                }))
            },
            _ => Mapped::event(None),
        }
    }

    fn running(&mut self) -> Option<Event> {
        self.paused = false;
        if self.booted {
            Some(Event::Resumed)
        } else {
            self.booted = true;
            Some(Event::Booted)
        }
    }

    /// Like a resume, but silent when the launcher already knew it ran.
    fn running_if_changed(&mut self) -> Option<Event> {
        if self.booted && !self.paused {
            None
        } else {
            self.running()
        }
    }

    fn paused(&mut self, reason: Reason) -> Option<Event> {
        self.paused = true;
        Some(match reason {
            Reason::User => Event::Paused,
            reason => Event::Suspended { reason },
        })
    }

    /// Maps a `VIR_DOMAIN_EVENT_ID_REBOOT` callback.
    pub fn reboot(&mut self) -> Mapped {
        Mapped::event(Some(Event::Rebooted))
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
    fn hypervisor_pauses_map_to_their_kubevirt_reasons() {
        for (detail, reason) in [
            (sys::VIR_DOMAIN_EVENT_SUSPENDED_PAUSED, Reason::User),
            (sys::VIR_DOMAIN_EVENT_SUSPENDED_IOERROR, Reason::IOError),
            (sys::VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG, Reason::Watchdog),
        ] {
            let events = with_start(&[BOOT, (sys::VIR_DOMAIN_EVENT_SUSPENDED, detail)]);
            assert_eq!(run(&events), (State::Paused, reason, false), "{detail}");
        }
    }

    #[test]
    fn api_error_pause_asks_libvirtd_for_the_reason() {
        let mut m = EventMapper::default();
        m.lifecycle(BOOT.0 as i32, BOOT.1 as i32);
        let asked = m.lifecycle(
            sys::VIR_DOMAIN_EVENT_SUSPENDED as i32,
            sys::VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR as i32,
        );
        assert!(asked.query_state && asked.event.is_none(), "{asked:?}");
        for (paused, reason) in [
            (state::VIR_DOMAIN_PAUSED_USER, Reason::User),
            (state::VIR_DOMAIN_PAUSED_IOERROR, Reason::IOError),
            (state::VIR_DOMAIN_PAUSED_WATCHDOG, Reason::Watchdog),
            (state::VIR_DOMAIN_PAUSED_CRASHED, Reason::Unknown),
        ] {
            let mut lifecycle = Lifecycle::default();
            lifecycle.apply(&Event::Booted);
            let event = m
                .from_state(state::VIR_DOMAIN_PAUSED, paused)
                .event
                .unwrap();
            lifecycle.apply(&event);
            assert_eq!(
                (lifecycle.status().state, lifecycle.status().reason),
                (State::Paused, reason)
            );
        }
    }

    #[test]
    fn guest_pm_suspend_maps_to_pmsuspended() {
        let events = with_start(&[BOOT, (sys::VIR_DOMAIN_EVENT_PMSUSPENDED, 0)]);
        assert_eq!(run(&events), (State::PMSuspended, Reason::Unknown, false));
    }

    #[test]
    fn state_after_reconnect_reports_only_what_changed() {
        let mut m = EventMapper::default();
        // Still paused before the boot: nothing to say.
        let m0 = m.from_state(
            state::VIR_DOMAIN_PAUSED,
            state::VIR_DOMAIN_PAUSED_STARTING_UP,
        );
        assert_eq!(m0.event, None);
        m.lifecycle(BOOT.0 as i32, BOOT.1 as i32);
        // Running as known: nothing.
        assert_eq!(m.from_state(state::VIR_DOMAIN_RUNNING, 1).event, None);
        // Paused while the launcher was away, then found running again.
        assert_eq!(
            m.from_state(state::VIR_DOMAIN_PAUSED, state::VIR_DOMAIN_PAUSED_USER)
                .event,
            Some(Event::Paused)
        );
        assert_eq!(
            m.from_state(state::VIR_DOMAIN_RUNNING, 1).event,
            Some(Event::Resumed)
        );
        // Powered off meanwhile: the last event.
        let off = m.from_state(
            state::VIR_DOMAIN_SHUTOFF,
            state::VIR_DOMAIN_SHUTOFF_SHUTDOWN,
        );
        assert_eq!((off.event, off.last), (Some(Event::GuestPoweredOff), true));
    }

    #[test]
    fn reboot_event_maps_to_rebooted() {
        assert_eq!(EventMapper::default().reboot().event, Some(Event::Rebooted));
    }

    #[test]
    fn unknown_event_numbers_are_ignored() {
        let m = EventMapper::default().lifecycle(999, 0);
        assert_eq!(m, Mapped::event(None));
        let m = EventMapper::default().lifecycle(-1, -1);
        assert_eq!(m.event, None);
    }
}
