//! The `--event-monitor` stream, written the way Cloud Hypervisor writes it:
//! each event pretty-printed (2-space indent) and followed by a blank line,
//! `{"timestamp":{"secs","nanos"},"source","event","properties"}`, timestamps
//! measured from the monitor's creation early in startup. Like CH, the
//! descriptor is non-blocking, so a reader that stalls loses events instead of
//! stalling the VMM. Unlike CH (which hands events to a thread), an event is
//! written before the action that emitted it returns, so a SIGKILL right after
//! an API reply never loses it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use serde::Serialize;

use super::log::Logger;

#[derive(Serialize)]
struct Event<'a> {
    timestamp: Duration,
    source: &'a str,
    event: &'a str,
    properties: Option<&'a BTreeMap<String, String>>,
}

pub struct EventMonitor {
    start: Instant,
    file: Mutex<Option<File>>,
    logger: Logger,
}

impl EventMonitor {
    /// `file`: where events go, if `--event-monitor` was given.
    pub fn new(file: Option<File>, logger: Logger) -> std::io::Result<Self> {
        let start = Instant::now();
        if let Some(file) = &file {
            set_nonblocking(file)?;
        }
        Ok(EventMonitor {
            start,
            file: Mutex::new(file),
            logger,
        })
    }

    pub fn emit(&self, source: &str, event: &str) {
        self.logger
            .info(&format!("Event: source = {source} event = {event} "));
        let record = Event {
            timestamp: self.start.elapsed(),
            source,
            event,
            properties: None,
        };
        let Ok(text) = serde_json::to_string_pretty(&record) else {
            return;
        };
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = file.as_mut() {
            // Like CH: a full pipe loses (part of) an event rather than blocking.
            let _ = file.write_all(text.as_bytes());
            let _ = file.write_all(b"\n\n");
        }
    }

    /// Closes the stream: later events are dropped, and a pipe reader sees EOF.
    pub fn close(&self) {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

fn set_nonblocking(file: &File) -> std::io::Result<()> {
    let flags = fcntl(file.as_fd(), FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(file.as_fd(), FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}
