//! Shared by the boot tests: a child process that is killed and reaped when
//! dropped, and a serial transcript that waits for text with a deadline.

use std::io::Read;
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

/// Generous: without KVM, QEMU falls back to TCG and its firmware runs slowly.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A hypervisor process; killed and reaped when dropped, so a failing test
/// leaves nothing running.
pub struct Guarded(pub Child);

impl Guarded {
    /// Waits for the process to exit by itself; `Err` with a description when
    /// it is still running at the deadline.
    pub fn wait_exit(&mut self) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => return Err(format!("still running after {DEADLINE:?}")),
                Err(err) => return Err(format!("cannot wait for it: {err}")),
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

enum Chunk {
    Data(Vec<u8>),
    Closed,
}

/// Everything the guest printed, from one or more successive connections.
pub struct Transcript {
    sender: Sender<Chunk>,
    receiver: Receiver<Chunk>,
    pub seen: Vec<u8>,
}

pub enum Wait {
    /// Offset just past the text.
    Found(usize),
    /// The current connection closed before the text appeared.
    Closed,
}

impl Transcript {
    pub fn new() -> Self {
        let (sender, receiver) = mpsc::channel();
        Transcript {
            sender,
            receiver,
            seen: Vec::new(),
        }
    }

    /// Reads `source` on a thread until it closes.
    pub fn attach(&self, mut source: impl Read + Send + 'static) {
        let sender = self.sender.clone();
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = source.read(&mut buffer) {
                if sender.send(Chunk::Data(buffer[..n].to_vec())).is_err() {
                    return;
                }
            }
            let _ = sender.send(Chunk::Closed);
        });
    }

    /// Waits until `needle` appears at or after offset `from`.
    pub fn wait_for(&mut self, needle: &[u8], from: usize) -> Result<Wait, String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let start = from.min(self.seen.len());
            if let Some(at) = self.seen[start..]
                .windows(needle.len())
                .position(|window| window == needle)
            {
                return Ok(Wait::Found(start + at + needle.len()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(Chunk::Data(data)) => self.seen.extend_from_slice(&data),
                Ok(Chunk::Closed) => return Ok(Wait::Closed),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "no {:?} within {DEADLINE:?}; serial so far: {:?}",
                        String::from_utf8_lossy(needle),
                        self.text()
                    ))
                }
            }
        }
    }

    /// Like [`Self::wait_for`], but a closed connection is a failure too.
    pub fn expect(&mut self, needle: &[u8], from: usize) -> usize {
        match self.wait_for(needle, from) {
            Ok(Wait::Found(end)) => end,
            Ok(Wait::Closed) => panic!(
                "serial output closed before {:?}; serial so far: {:?}",
                String::from_utf8_lossy(needle),
                self.text()
            ),
            Err(message) => panic!("{message}"),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}
