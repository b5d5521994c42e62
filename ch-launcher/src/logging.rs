//! Log output: `tracing` events to stderr, as text for people, as one JSON
//! object per line for log collectors (`--log-format json`), or as
//! virt-launcher's JSON records (`--log-format kubevirt`, the default of
//! `ch-launcher pod`) so that KubeVirt's log tooling parses them.
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
    /// virt-launcher's shape: `component`, `level`, `msg`, `pos`,
    /// `timestamp`, `uid`, then the event's own fields.
    Kubevirt,
}

static UID: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The VMI uid every `kubevirt` record carries.
pub fn set_uid(uid: &str) {
    let _ = UID.set(uid.to_string());
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
        LogFormat::Kubevirt => builder.event_format(KubevirtFormat).try_init(),
    };
    installed.map_err(|e| format!("cannot set up logging: {e}"))
}

/// One virt-launcher record per event, e.g.
/// `{"component":"virt-launcher","level":"info","msg":"cmd server ready",
/// "pos":"cmd_server.rs:87","timestamp":"2026-12-03T14:20:00.123456Z",
/// "uid":"...","socket":"..."}`.
struct KubevirtFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for KubevirtFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = FieldMap::default();
        event.record(&mut fields);
        let mut record = serde_json::Map::new();
        record.insert("component".into(), "virt-launcher".into());
        record.insert(
            "level".into(),
            match *meta.level() {
                tracing::Level::ERROR => "error",
                tracing::Level::WARN => "warning",
                tracing::Level::INFO => "info",
                tracing::Level::DEBUG | tracing::Level::TRACE => "debug",
            }
            .into(),
        );
        record.insert("msg".into(), fields.message.unwrap_or_default().into());
        let file = meta
            .file()
            .map(|f| f.rsplit('/').next().unwrap_or(f))
            .unwrap_or(meta.target());
        record.insert(
            "pos".into(),
            format!("{file}:{}", meta.line().unwrap_or(0)).into(),
        );
        record.insert(
            "timestamp".into(),
            crate::util::rfc3339(std::time::SystemTime::now(), 6).into(),
        );
        if let Some(uid) = UID.get() {
            record.insert("uid".into(), uid.clone().into());
        }
        for (key, value) in fields.rest {
            record.entry(key).or_insert(value);
        }
        writeln!(writer, "{}", serde_json::Value::Object(record))
    }
}

#[derive(Default)]
struct FieldMap {
    message: Option<String>,
    rest: Vec<(String, serde_json::Value)>,
}

impl tracing::field::Visit for FieldMap {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.put(field, value.into());
    }
}

impl FieldMap {
    fn put(&mut self, field: &tracing::field::Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.rest.push((field.name().to_string(), value));
        }
    }
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
