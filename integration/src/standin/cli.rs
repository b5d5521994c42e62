//! The command line CH accepts, as far as the stand-in implements it:
//! `--api-socket path=<p>|fd=<n>|<p>`, `--event-monitor path=<p>|fd=<n>`,
//! `--log-file <p>`, `-v` (repeatable), `--no-shutdown`, `-V/--version`.
//! Anything else is refused by clap exactly as CH's clap refuses unknown
//! flags (usage error, exit status 2), so a launcher passing a flag the
//! stand-in does not know fails loudly instead of being half-emulated.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::{Arg, ArgAction, Command};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Path(PathBuf),
    Fd(RawFd),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub api_socket: Option<Target>,
    pub event_monitor: Option<Target>,
    pub log_file: Option<PathBuf>,
    pub verbosity: u8,
    pub no_shutdown: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Run(Options),
    Version { verbose: bool },
}

/// A CH-style startup error: a chain of messages, printed as CH prints them.
#[derive(Debug, PartialEq, Eq)]
pub struct StartupError(pub Vec<String>);

impl StartupError {
    pub fn print(&self) {
        if self.0.len() == 1 {
            eprintln!("Error: Cloud Hypervisor exited with the following error:");
            eprintln!("  {}", self.0[0]);
        } else {
            eprintln!("Error: Cloud Hypervisor exited with the following chain of errors:");
            for (level, message) in self.0.iter().enumerate() {
                eprintln!("  {level}: {message}");
            }
        }
    }
}

fn command() -> Command {
    Command::new("cloud-hypervisor")
        .bin_name("cloud-hypervisor")
        .about("Launch a cloud-hypervisor VMM.")
        .arg_required_else_help(true)
        .disable_version_flag(true)
        .arg(
            Arg::new("api-socket")
                .long("api-socket")
                .help("HTTP API socket (UNIX domain socket): path=<path> or fd=<fd>.")
                .num_args(1),
        )
        .arg(
            Arg::new("event-monitor")
                .long("event-monitor")
                .help("Path to report events on: path=<path> or fd=<fd>")
                .num_args(1),
        )
        .arg(
            Arg::new("log-file")
                .long("log-file")
                .help("Log file. Standard error is used if not specified")
                .num_args(1),
        )
        .arg(
            Arg::new("no-shutdown")
                .long("no-shutdown")
                .help("Do not exit from the VMM when the guest shuts down")
                .num_args(0)
                .action(ArgAction::SetTrue),
        )
        .arg(
            Arg::new("v")
                .short('v')
                .action(ArgAction::Count)
                .help("Sets the level of debugging output"),
        )
        .arg(
            Arg::new("version")
                .short('V')
                .long("version")
                .action(ArgAction::SetTrue)
                .help("Print version")
                .num_args(0),
        )
}

/// Parses `key=value,key=value` the way CH's option parser does for these two
/// flags; `None` when the text is not such a list of `path`/`fd` options.
fn parse_options(text: &str) -> Option<(Option<String>, Option<String>)> {
    let (mut path, mut fd) = (None, None);
    for item in text.split(',') {
        let (key, value) = item.split_once('=')?;
        match key {
            "path" => path = Some(value.to_string()),
            "fd" => fd = Some(value.to_string()),
            _ => return None,
        }
    }
    Some((path, fd))
}

fn parse_fd(value: &str, flag: &str) -> Result<RawFd, StartupError> {
    value
        .parse::<RawFd>()
        .map_err(|e| StartupError(vec![format!("Error parsing --{flag}"), e.to_string()]))
}

fn api_socket(text: &str) -> Result<Target, StartupError> {
    // CH falls back to the whole value as a path when it is not an option list.
    match parse_options(text) {
        Some((_, Some(fd))) => Ok(Target::Fd(parse_fd(&fd, "api-socket")?)),
        Some((Some(path), None)) => Ok(Target::Path(PathBuf::from(path))),
        _ => Ok(Target::Path(PathBuf::from(text))),
    }
}

fn event_monitor(text: &str) -> Result<Target, StartupError> {
    match parse_options(text) {
        Some((_, Some(fd))) => Ok(Target::Fd(parse_fd(&fd, "event-monitor")?)),
        Some((Some(path), None)) => Ok(Target::Path(PathBuf::from(path))),
        Some((None, None)) => Err(StartupError(vec![
            "Error parsing --event-monitor: path or fd required".to_string(),
        ])),
        None => Err(StartupError(vec![
            "Error parsing --event-monitor".to_string(),
            format!("unknown option in {text:?}: expected path=<path> or fd=<fd>"),
        ])),
    }
}

/// Parses the command line; clap errors (and `--help`) exit the process the
/// way clap does.
pub fn parse<I, T>(args: I) -> Result<Invocation, StartupError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match try_parse(args) {
        Ok(invocation) => invocation,
        Err(e) => e.exit(),
    }
}

/// As [`parse`], but returns clap's error instead of exiting.
pub fn try_parse<I, T>(args: I) -> Result<Result<Invocation, StartupError>, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    Ok(parse_matches(&matches))
}

fn parse_matches(matches: &clap::ArgMatches) -> Result<Invocation, StartupError> {
    let verbosity = matches.get_count("v");
    if matches.get_flag("version") {
        return Ok(Invocation::Version {
            verbose: verbosity > 0,
        });
    }
    Ok(Invocation::Run(Options {
        api_socket: matches
            .get_one::<String>("api-socket")
            .map(|s| api_socket(s))
            .transpose()?,
        event_monitor: matches
            .get_one::<String>("event-monitor")
            .map(|s| event_monitor(s))
            .transpose()?,
        log_file: matches.get_one::<String>("log-file").map(PathBuf::from),
        verbosity,
        no_shutdown: matches.get_flag("no-shutdown"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Options {
        let mut full = vec!["cloud-hypervisor"];
        full.extend_from_slice(args);
        match try_parse(full).unwrap().unwrap() {
            Invocation::Run(options) => options,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn api_socket_accepts_path_fd_and_bare_forms() {
        assert_eq!(
            run(&["--api-socket", "path=/tmp/a.sock"]).api_socket,
            Some(Target::Path("/tmp/a.sock".into()))
        );
        assert_eq!(
            run(&["--api-socket", "/tmp/b.sock"]).api_socket,
            Some(Target::Path("/tmp/b.sock".into()))
        );
        assert_eq!(
            run(&["--api-socket", "fd=7"]).api_socket,
            Some(Target::Fd(7))
        );
    }

    #[test]
    fn event_monitor_needs_path_or_fd() {
        assert_eq!(
            run(&["--event-monitor", "fd=3"]).event_monitor,
            Some(Target::Fd(3))
        );
        let bare = try_parse(["cloud-hypervisor", "--event-monitor", "/tmp/ev"]).unwrap();
        assert!(bare.is_err());
    }

    #[test]
    fn unknown_flags_are_refused_like_clap() {
        let err = try_parse(["cloud-hypervisor", "--kernel", "/k"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn verbosity_counts_v_flags_and_version_is_recognised() {
        assert_eq!(run(&["-vv", "--api-socket", "/s"]).verbosity, 2);
        assert_eq!(
            try_parse(["cloud-hypervisor", "--version"])
                .unwrap()
                .unwrap(),
            Invocation::Version { verbose: false }
        );
    }
}
