//! The console log (`virt-serial0-log`), capped the way virtlogd caps the
//! logs it writes for libvirt: when the file would pass [`LogLimits::max_size`]
//! it is renamed to `<log>.0` (older ones move to `.1`, `.2`, ... and the
//! oldest beyond [`LogLimits::backups`] is removed) and a new file is started.
//! A guest that writes without end therefore uses at most
//! `max_size x (backups + 1)` bytes of the pod's disk.
//!
//! The console relay never writes the file itself: [`LogWriter`] hands the
//! bytes to a thread of its own, so a slow or stalled disk never stalls the
//! runtime (and with it the console, the control socket and the
//! hypervisor's event pipe). What waits for that thread is bounded
//! ([`LogWriter::MAX_QUEUED`]); past it, output is left out of the log and
//! a line in the log says how much.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How large the log may grow and how many rotated files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Bytes in one file before it is rotated.
    pub max_size: u64,
    /// Rotated files kept (`<log>.0` is the newest).
    pub backups: u32,
}

impl Default for LogLimits {
    /// virtlogd's defaults (`max_size = 2097152`, `max_backups = 3`), so both
    /// backends keep the same amount of console history.
    fn default() -> Self {
        LogLimits {
            max_size: 2 * 1024 * 1024,
            backups: 3,
        }
    }
}

/// An open console log that rotates itself.
#[derive(Debug)]
pub struct ConsoleLog {
    path: PathBuf,
    mode: u32,
    limits: LogLimits,
    file: File,
    /// Bytes in the current file.
    size: u64,
}

impl ConsoleLog {
    /// Opens (appending to) `path` with permission bits `mode`.
    pub fn open(path: &Path, mode: u32, limits: LogLimits) -> io::Result<ConsoleLog> {
        let file = open_append(path, mode)?;
        let size = file.metadata()?.len();
        Ok(ConsoleLog {
            path: path.to_path_buf(),
            mode,
            limits,
            file,
            size,
        })
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes`, rotating first when they would not fit. A chunk
    /// larger than a whole file still goes into one file: output is never
    /// split or dropped.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + bytes.len() as u64 > self.limits.max_size {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.limits.backups == 0 {
            std::fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            std::fs::remove_file(numbered(self.limits.backups - 1)).or_else(ignore_missing)?;
            for n in (0..self.limits.backups - 1).rev() {
                std::fs::rename(numbered(n), numbered(n + 1)).or_else(ignore_missing)?;
            }
            std::fs::rename(&self.path, numbered(0))?;
        }
        self.file = open_append(&self.path, self.mode)?;
        self.size = 0;
        Ok(())
    }
}

/// Writes a [`ConsoleLog`] on its own thread; see the module documentation.
pub struct LogWriter {
    path: PathBuf,
    tx: Option<std::sync::mpsc::Sender<Vec<u8>>>,
    max_queued: usize,
    shared: std::sync::Arc<WriterState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct WriterState {
    /// Bytes handed over and not written yet.
    queued: std::sync::atomic::AtomicUsize,
    /// Bytes left out because too much was queued, not reported yet.
    dropped: std::sync::atomic::AtomicU64,
    /// The thread hit a write error and stopped logging.
    failed: std::sync::Mutex<Option<String>>,
}

impl LogWriter {
    /// Queued bytes beyond which output is left out of the log (4 MiB: two
    /// full files at the default size).
    pub const MAX_QUEUED: usize = 4 << 20;

    pub fn start(log: ConsoleLog) -> io::Result<LogWriter> {
        Self::start_with(log, Self::MAX_QUEUED)
    }

    fn start_with(mut log: ConsoleLog, max_queued: usize) -> io::Result<LogWriter> {
        let path = log.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let shared = std::sync::Arc::new(WriterState::default());
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("console-log".into())
            .spawn(move || {
                use std::sync::atomic::Ordering;
                for chunk in rx {
                    let dropped = state.dropped.swap(0, Ordering::SeqCst);
                    let result = if dropped > 0 {
                        let note = format!(
                            "\r\n[ch-launcher: {dropped} bytes of console output are not \
in this log: the log's disk did not keep up]\r\n"
                        );
                        log.write(note.as_bytes()).and_then(|()| log.write(&chunk))
                    } else {
                        log.write(&chunk)
                    };
                    state.queued.fetch_sub(chunk.len(), Ordering::SeqCst);
                    if let Err(e) = result {
                        *state.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(e.to_string());
                        return;
                    }
                }
            })?;
        Ok(LogWriter {
            path,
            tx: Some(tx),
            max_queued,
            shared,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `bytes` for the log without waiting. An error means the log
    /// cannot be written any more (the thread's write failed).
    pub fn write(&self, bytes: &[u8]) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        if let Some(e) = &*self.shared.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(io::Error::other(e.clone()));
        }
        let queued = self.shared.queued.load(Ordering::SeqCst);
        if queued + bytes.len() > self.max_queued {
            self.shared
                .dropped
                .fetch_add(bytes.len() as u64, Ordering::SeqCst);
            return Ok(());
        }
        let Some(tx) = &self.tx else {
            return Err(io::Error::other("the console log is closed"));
        };
        self.shared.queued.fetch_add(bytes.len(), Ordering::SeqCst);
        tx.send(bytes.to_vec())
            .map_err(|_| io::Error::other("the console log's writer stopped"))
    }

    /// Writes what is queued and closes the file, off the runtime.
    pub async fn close(mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Without `close` (a relay task aborted): the thread still writes
        // what was queued, then ends on its own.
        self.tx = None;
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    match e.kind() {
        io::ErrorKind::NotFound => Ok(()),
        _ => Err(e),
    }
}

fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    // The mode given to open() only applies to a new file.
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[tokio::test]
    async fn the_writer_thread_logs_every_byte_in_order_and_close_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = ConsoleLog::open(&path, 0o600, LogLimits::default()).unwrap();
        let writer = LogWriter::start(log).unwrap();
        let mut want = Vec::new();
        for i in 0..2000u32 {
            let line = format!("line {i}\r\n");
            writer.write(line.as_bytes()).unwrap();
            want.extend_from_slice(line.as_bytes());
        }
        writer.close().await;
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[tokio::test]
    async fn output_past_the_queue_limit_is_left_out_and_the_log_says_how_much() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = ConsoleLog::open(&path, 0o600, LogLimits::default()).unwrap();
        let writer = LogWriter::start_with(log, 10).unwrap();
        // As if the thread were stuck on a stalled disk with 8 bytes still
        // to write: 4 more do not fit under the limit of 10.
        writer
            .shared
            .queued
            .store(8, std::sync::atomic::Ordering::SeqCst);
        writer.write(b"lost").unwrap();
        // The disk caught up.
        writer
            .shared
            .queued
            .store(0, std::sync::atomic::Ordering::SeqCst);
        writer.write(b"kept").unwrap();
        writer.close().await;
        let text = read(&path);
        assert!(
            text.contains("4 bytes of console output are not in this log"),
            "{text}"
        );
        assert!(text.ends_with("kept"), "{text}");
        assert!(!text.contains("lost"), "{text}");
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_to_the_next_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = ConsoleLog::open(&path, 0o600, LogLimits::default()).unwrap();
        let writer = LogWriter::start(log).unwrap();
        *writer.shared.failed.lock().unwrap() = Some("No space left on device".into());
        let e = writer.write(b"x").expect_err("the writer failed");
        assert!(e.to_string().contains("No space left"), "{e}");
        writer.close().await;
    }

    #[test]
    fn a_full_log_rotates_and_keeps_the_configured_number_of_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("virt-serial0-log");
        let limits = LogLimits {
            max_size: 10,
            backups: 2,
        };
        let mut log = ConsoleLog::open(&path, 0o600, limits).unwrap();
        for chunk in ["aaaaa", "bbbbb", "ccccc", "ddddd", "eeeee", "fffff", "g"] {
            log.write(chunk.as_bytes()).unwrap();
        }
        assert_eq!(read(&path), "g");
        assert_eq!(read(&dir.path().join("virt-serial0-log.0")), "eeeeefffff");
        assert_eq!(read(&dir.path().join("virt-serial0-log.1")), "cccccddddd");
        assert!(!dir.path().join("virt-serial0-log.2").exists());
        let total: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= limits.max_size * u64::from(limits.backups + 1));
    }

    #[test]
    fn a_reopened_log_counts_what_it_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let limits = LogLimits {
            max_size: 8,
            backups: 1,
        };
        ConsoleLog::open(&path, 0o600, limits)
            .unwrap()
            .write(b"123456")
            .unwrap();
        let mut log = ConsoleLog::open(&path, 0o600, limits).unwrap();
        log.write(b"789").unwrap();
        assert_eq!(read(&dir.path().join("log.0")), "123456");
        assert_eq!(read(&path), "789");
    }

    #[test]
    fn a_chunk_larger_than_a_file_is_kept_whole_and_new_files_get_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let limits = LogLimits {
            max_size: 4,
            backups: 1,
        };
        let mut log = ConsoleLog::open(&path, 0o640, limits).unwrap();
        log.write(b"0123456789").unwrap();
        log.write(b"x").unwrap();
        assert_eq!(read(&dir.path().join("log.0")), "0123456789");
        assert_eq!(read(&path), "x");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
}
