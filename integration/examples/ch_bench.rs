//! Benchmark (not a test): the halting test guest (banner, then ACPI power-off)
//! run to its end by `ch-launcher run` and by `cloud-hypervisor` started
//! directly, side by side in alternating order; prints every run, the
//! medians, their ratio, the launcher's own peak RSS and, for reference,
//! Cloud Hypervisor's.
//!
//! The direct run is the VM the launcher asks for: its command line is built
//! from `ch-launcher render` of the same spec (CPUs and topology, memory,
//! kernel, console off, pvpanic, platform UUID), with the same API socket and
//! event monitor the launcher gives CH (the monitor to a file instead of a
//! pipe). One deliberate difference: the serial port goes to a file, not to
//! the PTY or socket the launcher relays to `virt-serial0` and its log. A
//! PTY nobody opened makes CH's serial thread sleep 500 ms per poll, which
//! adds about a second to every direct run, and a socket nobody connects to
//! is no console either; a file is what running CH by hand to keep a
//! console log means.
//!
//! The launcher's peak RSS is its own `VmHWM` read as it exits (see
//! `integration::bench`): `ru_maxrss` of the reaped launcher would be the
//! larger of its own peak and Cloud Hypervisor's, which it reaps.
//!
//! Every run starts after a random pause of up to `CH_BENCH_DITHER_MS`
//! (default 20 ms; 0 turns it off): back-to-back runs are phase-locked to the
//! kernel's timer tick, which quantizes both contenders' wall times into
//! whole ticks (see `integration::bench::Dither` and BENCHMARKS.md).
//!
//! Run:
//!   cargo build --release -p ch-launcher -p images -p integration --bins --examples
//!   CLOUD_HYPERVISOR_BIN=/path/to/cloud-hypervisor \
//!     target/release/examples/ch_bench [ITERATIONS [WARMUP]]
//! (defaults 121 and 2: a run's wall times spread over 4 ms or more, and
//! the median of 41 pairs still moved the ratio by about 0.05 between runs).
//! `CH_LAUNCHER_BIN` names the launcher (default:
//! target/release/ch-launcher).

use domain_model::Hypervisor;
use images::{TestGuestSpec, Variant};
use integration::bench::{self, Iteration, MeasureOptions, Measured};
use serde_json::Value;
use std::cell::Cell;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET_RATIO: f64 = 1.2;
const TARGET_RSS_KIB: u64 = 10 * 1024;
const DEFAULT_DITHER_MS: u64 = 20;

fn main() {
    if let Err(e) = run() {
        eprintln!("ch_bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let iterations = count_arg(args.next(), "ITERATIONS", 121)?;
    let warmup = count_arg(args.next(), "WARMUP", 2)?;
    if iterations == 0 {
        return Err("ITERATIONS must be at least 1".into());
    }
    let ch = std::env::var_os("CLOUD_HYPERVISOR_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or("CLOUD_HYPERVISOR_BIN is not set: it must name the cloud-hypervisor binary")?;
    if !ch.is_file() {
        return Err(format!(
            "CLOUD_HYPERVISOR_BIN={} is not a file",
            ch.display()
        ));
    }
    let launcher = bench::release_launcher()?;
    let dither_ms = match std::env::var("CH_BENCH_DITHER_MS") {
        Ok(v) => v
            .parse::<u64>()
            .map_err(|e| format!("CH_BENCH_DITHER_MS={v:?}: {e}"))?,
        Err(_) => DEFAULT_DITHER_MS,
    };
    let dither = bench::Dither::new(std::time::Duration::from_millis(dither_ms));

    let work = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let spec = TestGuestSpec::new(Hypervisor::CloudHypervisor, Variant::Halting)
        .name("ch-bench")
        .write(work.path())
        .map_err(|e| e.to_string())?;
    let private = work.path().join("private");
    let direct_dir = work.path().join("direct");
    std::fs::create_dir_all(&direct_dir).map_err(|e| format!("{}: {e}", direct_dir.display()))?;

    let rendered = render(&launcher, &spec)?;
    let direct = Direct::from_config(&rendered, &direct_dir)?;
    let launcher_run = LauncherRun {
        binary: launcher.clone(),
        ch: ch.clone(),
        private,
        spec,
        output: work.path().join("launcher.log"),
        banner_missing: Cell::new(0),
    };

    println!(
        "ch_bench: {iterations} iterations (+{warmup} warm-up), halting test guest\n  \
         launcher: {} --private-dir <tmp>/private run --no-attach <spec>\n  \
         direct:   {} {}\n  \
         each run starts after a random pause of 0 to {dither_ms} ms (CH_BENCH_DITHER_MS)",
        launcher.display(),
        ch.display(),
        direct.args_for_display()
    );
    let _ = std::io::stdout().flush();

    let (directs, launched) = bench::alternate(
        warmup,
        iterations,
        || {
            dither.pause();
            direct.run(&ch)
        },
        || {
            dither.pause();
            launcher_run.run()
        },
        print_iteration,
    )?;

    let walls = |runs: &[Measured]| runs.iter().map(|m| m.wall).collect::<Vec<_>>();
    let kib =
        |runs: &[Measured], f: &dyn Fn(&Measured) -> u64| runs.iter().map(f).collect::<Vec<_>>();
    let (Some(d), Some(l)) = (
        bench::median(&walls(&directs)),
        bench::median(&walls(&launched)),
    ) else {
        return Err("no samples".into());
    };
    let ratio = l.as_secs_f64() / d.as_secs_f64();
    let spread = |runs: &[Measured]| {
        let w = walls(runs);
        let q = |p| bench::quantile(&w, p).map_or(f64::NAN, bench::ms);
        let mean = bench::mean(&w).map_or(f64::NAN, bench::ms);
        (q(0.25), q(0.75), mean)
    };
    let (d25, d75, dmean) = spread(&directs);
    let (l25, l75, lmean) = spread(&launched);
    let own = kib(&launched, &|m| m.own_peak_rss_kib());
    let own_median = bench::median_u64(&own).unwrap_or(0);
    let own_max = own.iter().copied().max().unwrap_or(0);
    let anon = bench::median_u64(&kib(&launched, &|m| {
        m.at_exit.map_or(0, |e| e.rss_anon_kib)
    }))
    .unwrap_or(0);
    let file = bench::median_u64(&kib(&launched, &|m| {
        m.at_exit.map_or(0, |e| e.rss_file_kib)
    }))
    .unwrap_or(0);
    let ch_rss = bench::median_u64(&kib(&directs, &|m| m.own_peak_rss_kib())).unwrap_or(0);
    let exact = launched.iter().all(|m| m.at_exit.is_some());

    println!(
        "median of {iterations}: cloud-hypervisor direct {:.1} ms, ch-launcher run {:.1} ms \
         (+{:.1} ms), ratio {ratio:.3} (target <= {TARGET_RATIO}: {})",
        bench::ms(d),
        bench::ms(l),
        bench::ms(l) - bench::ms(d),
        verdict(ratio <= TARGET_RATIO)
    );
    println!(
        "  p25/p75: direct {d25:.1}/{d75:.1} ms, launcher {l25:.1}/{l75:.1} ms; \
         means: direct {dmean:.1} ms, launcher {lmean:.1} ms, ratio {:.3}",
        lmean / dmean
    );
    println!(
        "launcher own peak RSS: median {own_median} KiB ({:.1} MiB), max {own_max} KiB \
         (target <= {} MiB: {}); at exit {anon} KiB anonymous, {file} KiB file-backed{}",
        own_median as f64 / 1024.0,
        TARGET_RSS_KIB / 1024,
        verdict(own_max <= TARGET_RSS_KIB),
        if exact {
            ""
        } else {
            " (WARNING: no exit stop, figures are ru_maxrss and may be cloud-hypervisor's)"
        }
    );
    let missing = launcher_run.banner_missing.get();
    if missing > 0 {
        println!(
            "note: {missing} of {} launcher runs (warm-up included) left no guest banner in \
             virt-serial0-log (in PTY mode cloud-hypervisor drops what the guest wrote in its \
             first 500 ms if the VM stops by then)",
            warmup + iterations
        );
    }
    println!(
        "cloud-hypervisor peak RSS (direct runs): median {ch_rss} KiB ({:.1} MiB)",
        ch_rss as f64 / 1024.0
    );
    Ok(())
}

fn count_arg(arg: Option<String>, name: &str, default: usize) -> Result<usize, String> {
    match arg {
        Some(n) => n.parse().map_err(|e| format!("{name} {n:?}: {e}")),
        None => Ok(default),
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn print_iteration(it: Iteration, d: &Measured, l: &Measured) {
    let tag = if it.warmup { "warm-up" } else { "" };
    let order = if it.a_first {
        "direct first"
    } else {
        "launcher first"
    };
    let (anon, file) = l
        .at_exit
        .map_or((0, 0), |m| (m.rss_anon_kib, m.rss_file_kib));
    println!(
        "  #{:<2} {tag:<7} {order:<14} direct {:>6.1} ms (RSS {:>5} KiB) | launcher {:>6.1} ms \
         (own RSS {:>5} KiB: anon {anon:>4}, file {file:>5}; ru_maxrss {:>5})",
        it.index,
        bench::ms(d.wall),
        d.own_peak_rss_kib(),
        bench::ms(l.wall),
        l.own_peak_rss_kib(),
        l.rusage_maxrss_kib
    );
    // Progress shows up even when stdout is a pipe.
    let _ = std::io::stdout().flush();
}

/// `ch-launcher render`: the `vm.create` body the launcher sends.
fn render(launcher: &Path, spec: &Path) -> Result<Value, String> {
    let out = Command::new(launcher)
        .arg("render")
        .arg(spec)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", launcher.display()))?;
    if !out.status.success() {
        return Err(format!(
            "ch-launcher render: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("ch-launcher render output: {e}"))
}

/// `cloud-hypervisor` started with the launcher's VM on its command line.
struct Direct {
    args: Vec<OsString>,
    api_socket: PathBuf,
    serial_log: PathBuf,
    events: PathBuf,
    output: PathBuf,
}

impl Direct {
    /// The command line for `config` (a rendered `vm.create` body). Refuses
    /// any field it cannot pass on, so the baseline never silently runs a
    /// smaller VM than the launcher.
    fn from_config(config: &Value, dir: &Path) -> Result<Direct, String> {
        let obj = config.as_object().ok_or("render output is not an object")?;
        let api_socket = dir.join("api.sock");
        let serial_log = dir.join("serial.log");
        let mut args: Vec<OsString> = vec!["--api-socket".into(), path_arg("path=", &api_socket)];
        args.push("--event-monitor".into());
        let events = dir.join("events.json");
        args.push(path_arg("path=", &events));
        for (key, value) in obj {
            let text = |v: &Value| -> Result<String, String> {
                match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    other => Err(format!("{key}: unexpected {other}")),
                }
            };
            match key.as_str() {
                "cpus" => {
                    let boot = text(&value["boot_vcpus"])?;
                    let max = text(&value["max_vcpus"])?;
                    let mut cpus = format!("boot={boot},max={max}");
                    if let Some(t) = value.get("topology") {
                        cpus += &format!(
                            ",topology={}:{}:{}:{}",
                            text(&t["threads_per_core"])?,
                            text(&t["cores_per_die"])?,
                            text(&t["dies_per_package"])?,
                            text(&t["packages"])?
                        );
                    }
                    only_keys(key, value, &["boot_vcpus", "max_vcpus", "topology"])?;
                    args.extend(["--cpus".into(), cpus.into()]);
                }
                "memory" => {
                    only_keys(key, value, &["size"])?;
                    args.extend([
                        "--memory".into(),
                        format!("size={}", text(&value["size"])?).into(),
                    ]);
                }
                "payload" => {
                    only_keys(key, value, &["kernel"])?;
                    args.extend(["--kernel".into(), text(&value["kernel"])?.into()]);
                }
                "serial" => match value["mode"].as_str() {
                    // See the module docs for why a file replaces the PTY or
                    // socket the launcher relays from.
                    Some("Pty") | Some("Socket") | Some("Off") => {
                        args.extend(["--serial".into(), path_arg("file=", &serial_log)])
                    }
                    other => return Err(format!("serial mode {other:?} not handled")),
                },
                "console" => {
                    if value["mode"] != "Off" {
                        return Err(format!("console {value} not handled"));
                    }
                    args.extend(["--console".into(), "off".into()]);
                }
                "pvpanic" => {
                    if value == &Value::Bool(true) {
                        args.push("--pvpanic".into());
                    }
                }
                "platform" => {
                    only_keys(key, value, &["uuid"])?;
                    args.extend([
                        "--platform".into(),
                        format!("uuid={}", text(&value["uuid"])?).into(),
                    ]);
                }
                other => {
                    return Err(format!(
                    "the rendered config has {other:?}, which the direct baseline does not pass on"
                ))
                }
            }
        }
        Ok(Direct {
            args,
            api_socket,
            serial_log,
            events,
            output: dir.join("cloud-hypervisor.log"),
        })
    }

    fn args_for_display(&self) -> String {
        self.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn run(&self, ch: &Path) -> Result<Measured, String> {
        // Each run starts from nothing, as each launcher run does (CH
        // truncating the last run's files would cost it time; see
        // `bench::output_file`).
        for stale in [&self.api_socket, &self.serial_log, &self.events] {
            let _ = std::fs::remove_file(stale);
        }
        let (out, err) = bench::output_file(&self.output).map_err(|e| e.to_string())?;
        let m = bench::measure(
            Command::new(ch)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
            // Measured the same way as the launcher, so both pay the same
            // (small) tracing cost.
            MeasureOptions {
                own_peak_at_exit: true,
                sample_every: None,
            },
        )
        .map_err(|e| format!("{}: {e}", ch.display()))?;
        if !m.status.success() {
            return Err(format!(
                "cloud-hypervisor ended with {}:\n{}",
                m.status,
                read_lossy(&self.output)
            ));
        }
        check_banner(&self.serial_log)?;
        Ok(m)
    }
}

fn path_arg(prefix: &str, path: &Path) -> OsString {
    let mut arg = OsString::from(prefix);
    arg.push(path);
    arg
}

fn only_keys(section: &str, value: &Value, known: &[&str]) -> Result<(), String> {
    let obj = value
        .as_object()
        .ok_or_else(|| format!("{section} is not an object"))?;
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "the rendered config has {section}.{k}, which the direct baseline does not pass on"
        )),
        None => Ok(()),
    }
}

struct LauncherRun {
    binary: PathBuf,
    ch: PathBuf,
    private: PathBuf,
    spec: PathBuf,
    output: PathBuf,
    /// Runs whose `virt-serial0-log` lacks the guest's banner.
    banner_missing: Cell<usize>,
}

impl LauncherRun {
    fn run(&self) -> Result<Measured, String> {
        let (out, err) = bench::output_file(&self.output).map_err(|e| e.to_string())?;
        let m = bench::measure(
            Command::new(&self.binary)
                .arg("--private-dir")
                .arg(&self.private)
                .arg("run")
                .arg("--no-attach")
                .arg(&self.spec)
                .env("CLOUD_HYPERVISOR_BIN", &self.ch)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
            MeasureOptions {
                own_peak_at_exit: true,
                sample_every: None,
            },
        )
        .map_err(|e| format!("{}: {e}", self.binary.display()))?;
        if m.status.code() != Some(0) {
            return Err(format!(
                "ch-launcher run ended with {} (0 expected):\n{}",
                m.status,
                read_lossy(&self.output)
            ));
        }
        // Counted, not fatal: in PTY mode Cloud Hypervisor holds serial
        // output until its serial thread's first 500 ms poll timeout and
        // drops it when the VM stops before that, as the halting guest does
        // (see BENCHMARKS.md); the run still measures the launcher.
        if check_banner(&self.serial_log()?).is_err() {
            self.banner_missing.set(self.banner_missing.get() + 1);
        }
        Ok(m)
    }

    /// `<private>/<uid>/virt-serial0-log`; the spec names a single VM.
    fn serial_log(&self) -> Result<PathBuf, String> {
        let mut dirs = std::fs::read_dir(&self.private)
            .map_err(|e| format!("{}: {e}", self.private.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir());
        let dir = dirs
            .next()
            .ok_or_else(|| format!("no VM directory under {}", self.private.display()))?;
        Ok(dir.join("virt-serial0-log"))
    }
}

/// A run counts only if the guest really ran.
fn check_banner(log: &Path) -> Result<(), String> {
    let text = read_lossy(log);
    let banner = images::BANNER.trim_end();
    if text.contains(banner) {
        Ok(())
    } else {
        Err(format!(
            "{} lacks the guest banner {banner:?}: {text:?}",
            log.display()
        ))
    }
}

fn read_lossy(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
