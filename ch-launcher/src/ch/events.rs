//! Cloud Hypervisor's event monitor and process exit, turned into neutral
//! lifecycle [`Event`]s.
//!
//! CH writes each event as pretty-printed JSON followed by a blank line:
//! `{"timestamp":{"secs","nanos"},"source","event","properties"}`. The stream
//! is parsed as a sequence of JSON values from an accumulating buffer (never by
//! splitting on braces or lines), because it arrives in arbitrary chunks.
//! A SIGKILLed VMM writes nothing, so the exit of the process is watched too.

use super::process::describe_exit;
use crate::lifecycle::Event;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::sync::{mpsc, watch, Notify};

/// One event as CH reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChEvent {
    /// Time since the VMM started.
    pub timestamp: Timestamp,
    /// `vmm`, `vm`, `guest`, ...
    pub source: String,
    /// `booted`, `shutdown`, `panic`, ...
    pub event: String,
    #[serde(default)]
    pub properties: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Timestamp {
    pub secs: u64,
    pub nanos: u32,
}

/// A buffer that never holds more than this without a complete event is
/// garbage; dropping it keeps the launcher's memory bounded.
const MAX_PENDING: usize = 1 << 20;

/// Incremental parser for the event-monitor stream.
#[derive(Debug, Default)]
pub struct EventParser {
    pending: Vec<u8>,
}

impl EventParser {
    /// Adds `bytes` and returns every event completed by them, in order.
    /// `Err` items describe input that is not an event; parsing resumes at the
    /// next event boundary.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Result<ChEvent, String>> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut consumed = 0;
        loop {
            let mut values = serde_json::Deserializer::from_slice(&self.pending[consumed..])
                .into_iter::<serde_json::Value>();
            match values.next() {
                None => {
                    consumed += values.byte_offset();
                    break;
                }
                Some(Ok(value)) => {
                    consumed += values.byte_offset();
                    out.push(
                        ChEvent::deserialize(&value)
                            .map_err(|e| format!("unexpected event {value}: {e}")),
                    );
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    // CH writes its pipe non-blocking and drops the rest of an
                    // event it could not write; resume after the blank line that
                    // ends every event.
                    let rest = &self.pending[consumed..];
                    let skip = rest
                        .windows(2)
                        .skip(1)
                        .position(|w| w == b"\n\n")
                        .map_or(rest.len(), |i| i + 3);
                    out.push(Err(format!(
                        "malformed event-monitor data ({e}): {:?}",
                        String::from_utf8_lossy(&rest[..skip.min(200)])
                    )));
                    consumed += skip;
                }
            }
        }
        self.pending.drain(..consumed);
        if self.pending.len() > MAX_PENDING {
            out.push(Err(format!(
                "dropped {} bytes of event-monitor data without a complete event",
                self.pending.len()
            )));
            self.pending.clear();
        }
        out
    }

    /// Bytes of an event not completed yet.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }
}

/// Turns CH events and the VMM's exit into lifecycle events.
#[derive(Debug)]
pub struct EventMapper {
    /// Set by the backend before it stops the VM itself, so that the
    /// resulting `vm:shutdown` reads as `Destroyed`, not a guest power-off.
    stop_requested: Arc<AtomicBool>,
    vm_stopped: bool,
}

impl EventMapper {
    pub fn new(stop_requested: Arc<AtomicBool>) -> Self {
        EventMapper {
            stop_requested,
            vm_stopped: false,
        }
    }

    /// The lifecycle event `ev` stands for, if any. Transitional events
    /// (`booting`, `pausing`, `resizing`, ...) stand for nothing: a failed
    /// pause emits `pausing` without `paused`.
    pub fn map(&mut self, ev: &ChEvent) -> Option<Event> {
        match (ev.source.as_str(), ev.event.as_str()) {
            ("vm", "booted") => {
                self.vm_stopped = false;
                Some(Event::Booted)
            }
            ("vm", "paused") => Some(Event::Paused),
            ("vm", "resumed") => Some(Event::Resumed),
            ("vm", "rebooting") => Some(Event::Rebooting),
            ("vm", "rebooted") => Some(Event::Rebooted),
            ("vm", "shutdown") => {
                self.vm_stopped = true;
                Some(if self.stop_requested.load(Ordering::SeqCst) {
                    Event::Destroyed
                } else {
                    Event::GuestPoweredOff
                })
            }
            // pvpanic: the property says which notification the guest wrote;
            // `crash_loaded` (a kdump kernel took over) leaves the guest running.
            ("guest", "panic") => {
                let kind = ev.properties.as_ref().and_then(|p| p.get("event"));
                (kind.map(String::as_str) != Some("crash_loaded")).then_some(Event::GuestPanicked)
            }
            _ => None,
        }
    }

    /// What the VMM's exit means, given what was seen before: nothing after
    /// the VM stopped, `Destroyed` when the launcher stopped it, else a crash.
    pub fn on_exit(&self, exit: &Result<ExitStatus, String>) -> Option<Event> {
        if self.vm_stopped {
            return None;
        }
        if self.stop_requested.load(Ordering::SeqCst) {
            return Some(Event::Destroyed);
        }
        Some(Event::HypervisorDied {
            detail: match exit {
                Ok(status) => describe_exit(*status),
                Err(e) => format!("cannot wait for cloud-hypervisor: {e}"),
            },
        })
    }
}

/// After the VMM exited, how long to wait for the last events still in the
/// pipe (normally they are there already and EOF follows at once).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Ties one VMM process to the lifecycle channel.
pub struct Monitor {
    pub child: Child,
    pub events: pipe::Receiver,
    pub mapper: EventMapper,
    pub tx: mpsc::UnboundedSender<Event>,
    /// Notified to SIGKILL the VMM (the handle that can do so lives here).
    pub kill: Arc<Notify>,
    /// Receives the exit once the VMM is gone and its events are delivered.
    pub exited: watch::Sender<Option<Result<ExitStatus, String>>>,
    /// The VMM's own output, quoted when it dies unexpectedly.
    pub log: PathBuf,
}

impl Monitor {
    /// Runs until the VMM exited and its last events went out; dropping the
    /// sender then closes the channel.
    pub async fn run(mut self) {
        let mut parser = EventParser::default();
        let mut buf = vec![0u8; 4096];
        let mut pipe_open = true;
        let exit = loop {
            tokio::select! {
                read = self.events.read(&mut buf), if pipe_open => {
                    pipe_open = self.deliver(&mut parser, read, &buf);
                }
                status = self.child.wait() => break status.map_err(|e| e.to_string()),
                () = self.kill.notified() => {
                    if let Err(e) = self.child.start_kill() {
                        tracing::warn!("cannot kill cloud-hypervisor: {e}");
                    }
                }
            }
        };
        let drained = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
            while pipe_open {
                let read = self.events.read(&mut buf).await;
                pipe_open = self.deliver(&mut parser, read, &buf);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "event monitor still open {DRAIN_AFTER_EXIT:?} after cloud-hypervisor exited"
            );
        }
        match &exit {
            Ok(status) => tracing::info!("{}", describe_exit(*status)),
            Err(e) => tracing::error!("cannot wait for cloud-hypervisor: {e}"),
        }
        if let Some(event) = self.mapper.on_exit(&exit) {
            if let Event::HypervisorDied { detail } = &event {
                tracing::error!(
                    "{detail}; last lines of {}:\n{}",
                    self.log.display(),
                    super::process::log_tail(&self.log, super::process::LOG_TAIL_LINES)
                );
            }
            let _ = self.tx.send(event);
        }
        self.exited.send_replace(Some(exit));
    }

    /// Feeds one read result; returns whether the pipe is still open.
    fn deliver(
        &mut self,
        parser: &mut EventParser,
        read: std::io::Result<usize>,
        buf: &[u8],
    ) -> bool {
        let n = match read {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("reading cloud-hypervisor events: {e}");
                return false;
            }
        };
        for parsed in parser.feed(&buf[..n]) {
            match parsed {
                Ok(ev) => {
                    tracing::debug!(source = %ev.source, event = %ev.event, "cloud-hypervisor event");
                    if let Some(event) = self.mapper.map(&ev) {
                        // A closed channel means nobody listens any more; the
                        // VMM is still watched so that `exited` gets its status.
                        let _ = self.tx.send(event);
                    }
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn recording(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/data/reference/cloud-hypervisor/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn parse_all(bytes: &[u8]) -> Vec<ChEvent> {
        let mut p = EventParser::default();
        let events: Vec<_> = p
            .feed(bytes)
            .into_iter()
            .map(|r| r.expect("valid event"))
            .collect();
        assert!(p.pending().iter().all(u8::is_ascii_whitespace));
        events
    }

    fn names(events: &[ChEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| format!("{}:{}", e.source, e.event))
            .collect()
    }

    fn map_all(events: &[ChEvent], stop_requested: bool) -> Vec<Event> {
        let mut m = EventMapper::new(Arc::new(AtomicBool::new(stop_requested)));
        events.iter().filter_map(|e| m.map(e)).collect()
    }

    /// Deterministic pseudo-random chunk sizes (xorshift), 1..=max bytes.
    fn chunks(bytes: &[u8], seed: u64, max: usize) -> Vec<&[u8]> {
        let mut state = seed.max(1);
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = (state as usize % max + 1).min(rest.len());
            out.push(&rest[..n]);
            rest = &rest[n..];
        }
        out
    }

    #[test]
    fn recorded_guest_shutdown_reboot_stream_parses_in_order() {
        let events = parse_all(&recording("events-guest-shutdown-reboot.jsonstream"));
        assert_eq!(
            names(&events),
            [
                "vmm:starting",
                "vm:booting",
                "vm:booted",
                "vm:rebooting",
                "vm:rebooted",
                "vm:shutdown",
                "vm:deleted",
                "vmm:shutdown"
            ]
        );
        assert_eq!(events[0].properties, None);
        assert!(events[7].timestamp.secs > 0 || events[7].timestamp.nanos > 0);
    }

    #[test]
    fn small_random_chunks_give_the_same_events_as_one_read() {
        for name in [
            "events-lifecycle.jsonstream",
            "events-guest-shutdown-reboot.jsonstream",
            "events-pty.jsonstream",
            "events-restore.jsonstream",
        ] {
            let bytes = recording(name);
            let whole = parse_all(&bytes);
            for seed in 1..40 {
                let mut p = EventParser::default();
                let mut got = Vec::new();
                for chunk in chunks(&bytes, seed, 1 + seed as usize % 17) {
                    got.extend(p.feed(chunk).into_iter().map(|r| r.expect("valid")));
                }
                assert_eq!(got, whole, "{name} seed {seed}");
            }
        }
    }

    #[test]
    fn guest_poweroff_and_reboot_map_to_lifecycle_events() {
        let events = parse_all(&recording("events-guest-shutdown-reboot.jsonstream"));
        assert_eq!(
            map_all(&events, false),
            [
                Event::Booted,
                Event::Rebooting,
                Event::Rebooted,
                Event::GuestPoweredOff
            ]
        );
        let pty = parse_all(&recording("events-pty.jsonstream"));
        assert_eq!(
            map_all(&pty, false),
            [Event::Booted, Event::GuestPoweredOff]
        );
    }

    #[test]
    fn failed_transitions_emit_nothing_and_launcher_stop_maps_to_destroyed() {
        // The recording's failed boots, pauses and resumes emit only
        // `booting`/`pausing`/`resuming`; the two stops are API shutdowns.
        let events = parse_all(&recording("events-lifecycle.jsonstream"));
        let expected = |stop: Event| {
            vec![
                stop.clone(),
                Event::Booted,
                Event::Paused,
                Event::Resumed,
                Event::Rebooting,
                Event::Rebooted,
                Event::Paused,
                Event::Resumed,
                stop.clone(),
                Event::Booted,
                stop,
            ]
        };
        assert_eq!(map_all(&events, true), expected(Event::Destroyed));
        assert_eq!(map_all(&events, false), expected(Event::GuestPoweredOff));
    }

    #[test]
    fn mapping_table() {
        let ev = |source: &str, event: &str, props: &[(&str, &str)]| ChEvent {
            timestamp: Timestamp { secs: 0, nanos: 0 },
            source: source.into(),
            event: event.into(),
            properties: (!props.is_empty()).then(|| {
                props
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
        };
        let cases = [
            (ev("vm", "booted", &[]), Some(Event::Booted)),
            (ev("vm", "paused", &[]), Some(Event::Paused)),
            (ev("vm", "resumed", &[]), Some(Event::Resumed)),
            (ev("vm", "rebooting", &[]), Some(Event::Rebooting)),
            (ev("vm", "rebooted", &[]), Some(Event::Rebooted)),
            (ev("vm", "shutdown", &[]), Some(Event::GuestPoweredOff)),
            (
                ev("guest", "panic", &[("event", "panic")]),
                Some(Event::GuestPanicked),
            ),
            (ev("guest", "panic", &[("event", "crash_loaded")]), None),
            (ev("vm", "booting", &[]), None),
            (ev("vm", "pausing", &[]), None),
            (ev("vm", "resuming", &[]), None),
            (ev("vm", "resizing", &[]), None),
            (ev("vm", "snapshotting", &[]), None),
            (ev("vm", "deleted", &[]), None),
            (ev("vmm", "shutdown", &[]), None),
            (ev("vmm", "starting", &[]), None),
        ];
        for (event, expected) in cases {
            let mut m = EventMapper::new(Arc::new(AtomicBool::new(false)));
            assert_eq!(m.map(&event), expected, "{}:{}", event.source, event.event);
        }
    }

    #[test]
    fn vmm_exit_maps_by_what_happened_before() {
        let killed = Ok(ExitStatus::from_raw(9));
        let clean = Ok(ExitStatus::from_raw(0));
        let failed = Ok(ExitStatus::from_raw(1 << 8));
        let shutdown = ChEvent {
            timestamp: Timestamp { secs: 0, nanos: 0 },
            source: "vm".into(),
            event: "shutdown".into(),
            properties: None,
        };

        let stop = Arc::new(AtomicBool::new(false));
        let mut m = EventMapper::new(stop.clone());
        assert_eq!(
            m.on_exit(&killed),
            Some(Event::HypervisorDied {
                detail: "cloud-hypervisor was killed by signal 9".into()
            })
        );
        assert_eq!(
            m.on_exit(&failed),
            Some(Event::HypervisorDied {
                detail: "cloud-hypervisor exited with status 1".into()
            })
        );
        assert_eq!(
            m.on_exit(&clean),
            Some(Event::HypervisorDied {
                detail: "cloud-hypervisor exited with status 0".into()
            })
        );
        stop.store(true, Ordering::SeqCst);
        assert_eq!(m.on_exit(&killed), Some(Event::Destroyed));
        m.map(&shutdown);
        assert_eq!(m.on_exit(&clean), None);
        assert_eq!(m.on_exit(&killed), None);
    }

    #[test]
    fn garbage_between_events_is_reported_and_skipped() {
        let good = recording("events-pty.jsonstream");
        let mut bytes = b"{\"timestamp\": {\"se\n\n".to_vec();
        bytes.extend_from_slice(&good);
        bytes.extend_from_slice(b"{\"unexpected\": true}\n\n");
        let mut p = EventParser::default();
        let mut ok = Vec::new();
        let mut bad = 0;
        for chunk in chunks(&bytes, 7, 9) {
            for r in p.feed(chunk) {
                match r {
                    Ok(e) => ok.push(e),
                    Err(_) => bad += 1,
                }
            }
        }
        assert_eq!(ok, parse_all(&good));
        assert_eq!(bad, 2);
    }

    #[test]
    fn an_unterminated_flood_is_dropped() {
        let mut p = EventParser::default();
        assert!(p.feed(b"{\"source\": \"").is_empty());
        let flood = vec![b'x'; MAX_PENDING + 1];
        let out = p.feed(&flood);
        assert_eq!(out.len(), 1);
        assert!(out[0].is_err());
        assert!(p.pending().is_empty());
    }
}
