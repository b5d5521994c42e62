//! The `--event-monitor` stream, written the way Cloud Hypervisor writes it:
//! each event pretty-printed (2-space indent) and followed by a blank line,
//! `{"timestamp":{"secs","nanos"},"source","event","properties"}`, timestamps
//! measured from process start. A dedicated writer thread does the I/O on a
//! non-blocking descriptor, as CH does, so a reader that stalls never stalls
//! the API.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
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
    sender: Mutex<Option<mpsc::Sender<String>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    logger: Logger,
}

impl EventMonitor {
    /// `file`: where events go, if `--event-monitor` was given. As in CH,
    /// timestamps count from the monitor's creation, early in startup.
    pub fn new(file: Option<File>, logger: Logger) -> std::io::Result<Self> {
        let start = Instant::now();
        let (sender, writer) = match file {
            Some(mut file) => {
                set_nonblocking(&file)?;
                let (tx, rx) = mpsc::channel::<String>();
                let handle = std::thread::Builder::new()
                    .name("event-monitor".to_string())
                    .spawn(move || {
                        for event in rx {
                            // Like CH: a full pipe loses (part of) an event rather than blocking.
                            let _ = file.write_all(event.as_bytes());
                            let _ = file.write_all(b"\n\n");
                        }
                    })?;
                (Some(tx), Some(handle))
            }
            None => (None, None),
        };
        Ok(EventMonitor {
            start,
            sender: Mutex::new(sender),
            writer: Mutex::new(writer),
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
        if let Ok(sender) = self.sender.lock() {
            if let Some(sender) = sender.as_ref() {
                let _ = sender.send(text);
            }
        }
    }

    /// Writes out every event emitted so far; later events are dropped.
    pub fn close(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

fn set_nonblocking(file: &File) -> std::io::Result<()> {
    let flags = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}
