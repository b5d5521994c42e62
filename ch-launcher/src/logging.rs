//! Log output: `tracing` events to stderr, as text for people or as one JSON
//! object per line for log collectors (`--log-format json`).
//!
//! While the console is attached to the launcher's terminal, that terminal is
//! in raw mode so the guest's bytes reach it unchanged; log lines then end in
//! CR LF themselves (see [`set_raw_terminal`]) instead of staircasing.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

static RAW_TERMINAL: AtomicBool = AtomicBool::new(false);

/// Tells the log writer whether stderr's terminal is in raw mode.
pub fn set_raw_terminal(raw: bool) {
    RAW_TERMINAL.store(raw, Ordering::SeqCst);
}

/// Installs the global subscriber. `level` is a level (`info`, `debug`) or
/// any `tracing` filter directive list (`info,ch_launcher::console=debug`).
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| format!("invalid --log-level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr)
        .with_ansi(io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| format!("cannot set up logging: {e}"))
}

/// stderr, with LF written as CR LF while the terminal is raw.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !RAW_TERMINAL.load(Ordering::SeqCst) {
            return io::stderr().write(buf);
        }
        io::stderr().write_all(&crlf(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

fn crlf(buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len() + 8);
    for &b in buf {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_terminal_log_lines_end_in_crlf() {
        assert_eq!(crlf(b"one\ntwo\n"), b"one\r\ntwo\r\n");
        assert_eq!(crlf(b"no newline"), b"no newline");
    }
}
