//! `--log-file` and `-v`: CH logs only warnings by default, info with `-v`, debug
//! with `-vv`, to the log file or else standard error. The stand-in logs its
//! own decisions at those levels so a launcher can collect a log like CH's.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone)]
pub struct Logger {
    inner: Arc<LoggerInner>,
}

struct LoggerInner {
    start: Instant,
    verbosity: u8,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Logger {
    pub fn new(start: Instant, verbosity: u8, file: Option<File>) -> Logger {
        let out: Box<dyn Write + Send> = match file {
            Some(file) => Box::new(file),
            None => Box::new(std::io::stderr()),
        };
        Logger {
            inner: Arc::new(LoggerInner {
                start,
                verbosity,
                out: Mutex::new(out),
            }),
        }
    }

    pub fn info(&self, message: &str) {
        if self.inner.verbosity >= 1 {
            self.write("INFO", message);
        }
    }

    pub fn debug(&self, message: &str) {
        if self.inner.verbosity >= 2 {
            self.write("DEBUG", message);
        }
    }

    fn write(&self, level: &str, message: &str) {
        let elapsed = self.inner.start.elapsed();
        if let Ok(mut out) = self.inner.out.lock() {
            let _ = writeln!(
                out,
                "cloud-hypervisor: {:>11.6}s: <ch-standin> {level}: {message}",
                elapsed.as_secs_f64()
            );
            let _ = out.flush();
        }
    }
}
