//! Benchmark (not a test): `ch-launcher run` of the halting test guest under
//! libvirt against `virsh create` of the same domain XML plus waiting for the
//! domain to end, side by side, alternating, several iterations; prints the
//! medians, their ratio, and the launcher's peak RSS (`ru_maxrss` of the
//! reaped launcher process, i.e. its VmHWM) next to its peak proportional
//! and private memory (sampled from `/proc/<pid>/smaps_rollup`).
//!
//! Run (as root, after `.ci/setup-host.sh`):
//!   cargo build --release -p ch-launcher
//!   cargo run --release -p integration --example libvirt_bench -- [ITERATIONS]
//! `CH_LAUNCHER_BIN` names the launcher (default: target/release/ch-launcher);
//! `LIBVIRT_URI` the connection (default qemu:///system).

use domain_model::Hypervisor;
use images::{TestGuestSpec, Variant};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    if let Err(e) = run() {
        eprintln!("libvirt_bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let iterations: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|e| format!("ITERATIONS {n:?}: {e}"))?,
        None => 7,
    };
    let uri = std::env::var("LIBVIRT_URI").unwrap_or_else(|_| "qemu:///system".into());
    let launcher = std::env::var_os("CH_LAUNCHER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/ch-launcher")
        });
    if !launcher.is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p ch-launcher",
            launcher.display()
        ));
    }
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let name = format!("bench-{}", std::process::id());
    let spec = TestGuestSpec::new(Hypervisor::Libvirt, Variant::Halting)
        .name(&name)
        .write(work.path())
        .map_err(|e| e.to_string())?;
    let domain = format!("default_{name}");
    let private = work.path().join("private");

    // The baseline runs the very XML the launcher renders, so both start the
    // same VM; its VM directory must exist for QEMU's console socket.
    let render = Command::new(&launcher)
        .arg("--private-dir")
        .arg(&private)
        .arg("render")
        .arg(&spec)
        .output()
        .map_err(|e| format!("{}: {e}", launcher.display()))?;
    if !render.status.success() {
        return Err(format!(
            "render: {}",
            String::from_utf8_lossy(&render.stderr)
        ));
    }
    let xml = work.path().join("domain.xml");
    std::fs::write(&xml, &render.stdout).map_err(|e| e.to_string())?;
    let vm_dir = find_vm_dir(&render.stdout)?;
    std::fs::create_dir_all(&vm_dir).map_err(|e| e.to_string())?;

    println!(
        "libvirt_bench: {iterations} iterations, halting test guest, {uri}, launcher {}",
        launcher.display()
    );
    let mut launcher_times = Vec::new();
    let mut virsh_times = Vec::new();
    let mut peak_rss_kib = 0i64;
    let mut peak = Rollup::default();
    for i in 0..iterations {
        let (t, rss, rollup) = time_launcher(&launcher, &private, &uri, &spec)?;
        let v = time_virsh(&uri, &xml, &domain)?;
        println!(
            "  #{i}: ch-launcher run {:>7.1} ms (peak RSS {:>5} KiB, PSS {:>5} KiB, private {:>5} KiB) \
             | virsh create + wait {:>7.1} ms",
            ms(t),
            rss,
            rollup.pss_kib,
            rollup.private_kib,
            ms(v)
        );
        launcher_times.push(t);
        virsh_times.push(v);
        peak_rss_kib = peak_rss_kib.max(rss);
        peak = peak.max(rollup);
    }
    let l = median(&mut launcher_times);
    let v = median(&mut virsh_times);
    println!(
        "median: ch-launcher run {:.1} ms, virsh create + wait {:.1} ms, ratio {:.3} \
         (launcher adds {:+.1}%); launcher peak RSS {} KiB ({:.1} MiB), peak PSS {} KiB, \
         peak private {} KiB ({:.1} MiB)",
        ms(l),
        ms(v),
        l.as_secs_f64() / v.as_secs_f64(),
        (l.as_secs_f64() / v.as_secs_f64() - 1.0) * 100.0,
        peak_rss_kib,
        peak_rss_kib as f64 / 1024.0,
        peak.pss_kib,
        peak.private_kib,
        peak.private_kib as f64 / 1024.0
    );
    Ok(())
}

/// Peak proportional and private (clean + dirty) memory, in KiB.
#[derive(Debug, Default, Clone, Copy)]
struct Rollup {
    pss_kib: u64,
    private_kib: u64,
}

impl Rollup {
    fn max(self, other: Rollup) -> Rollup {
        Rollup {
            pss_kib: self.pss_kib.max(other.pss_kib),
            private_kib: self.private_kib.max(other.private_kib),
        }
    }

    fn read(pid: libc::pid_t) -> Option<Rollup> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Some(Rollup {
            pss_kib: field("Pss:"),
            private_kib: field("Private_Clean:") + field("Private_Dirty:"),
        })
    }
}

/// Wall time of one `ch-launcher run`, its peak RSS in KiB, and its sampled
/// peak PSS and private memory.
fn time_launcher(
    launcher: &Path,
    private: &Path,
    uri: &str,
    spec: &Path,
) -> Result<(Duration, i64, Rollup), String> {
    let start = Instant::now();
    let child = Command::new(launcher)
        .arg("--private-dir")
        .arg(private)
        .arg("--libvirt-uri")
        .arg(uri)
        .arg("--log-level=warn")
        .arg("run")
        .arg("--no-attach")
        .arg(spec)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", launcher.display()))?;
    let pid = child.id() as libc::pid_t;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = Rollup::default();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(now) = Rollup::read(pid) {
                    peak = peak.max(now);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unreaped child; the pointers are valid.
    // Reaping it here (not through `Child::wait`) is what yields its rusage.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let took = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let rollup = sampler.join().map_err(|_| "the memory sampler panicked")?;
    if rc != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!(
            "ch-launcher run ended with wait status {status:#x}"
        ));
    }
    Ok((took, usage.ru_maxrss, rollup))
}

/// Wall time of `virsh create` until libvirt reports the domain stopped.
fn time_virsh(uri: &str, xml: &Path, domain: &str) -> Result<Duration, String> {
    // The listener connects before the clock starts.
    let mut events = Command::new("virsh")
        .args([
            "-c",
            uri,
            "event",
            "--event",
            "lifecycle",
            "--loop",
            "--timeout",
            "120",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("virsh event: {e}"))?;
    let stdout = events.stdout.take().ok_or("virsh event: no stdout")?;
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let created = Command::new("virsh")
        .args(["-c", uri, "create"])
        .arg(xml)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("virsh create: {e}"))?;
    if !created.success() {
        let _ = events.kill();
        let _ = events.wait();
        return Err("virsh create failed".into());
    }
    let wanted = format!("for domain '{domain}': Stopped");
    let mut stopped = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.contains(&wanted) {
            stopped = Some(start.elapsed());
            break;
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    stopped.ok_or_else(|| format!("no Stopped event for {domain}"))
}

/// The VM directory named by the rendered XML's console socket.
fn find_vm_dir(xml: &[u8]) -> Result<PathBuf, String> {
    let text = String::from_utf8_lossy(xml);
    let start = text
        .find("path=\"")
        .ok_or("rendered XML has no console socket")?
        + 6;
    let end = text[start..].find('"').ok_or("unterminated path")? + start;
    Path::new(&text[start..end])
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "console socket has no directory".into())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
