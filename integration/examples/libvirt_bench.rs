//! Benchmark (not a test): `ch-launcher run` of the halting test guest under
//! libvirt against `virsh create` of the same domain XML plus waiting for the
//! domain to end, side by side, in alternating order (`bench::alternate`),
//! several iterations after a warm-up; prints the medians, their ratio, and
//! the launcher's own peak RSS (its `VmHWM` at exit, `bench::measure`) next
//! to its peak proportional and private memory (sampled `smaps_rollup`).
//!
//! Run (as root, after `.ci/setup-host.sh`):
//!   cargo build --release -p ch-launcher
//!   cargo run --release -p integration --example libvirt_bench -- [ITERATIONS]
//! `CH_LAUNCHER_BIN` names the launcher (default: target/release/ch-launcher);
//! `LIBVIRT_URI` the connection (default qemu:///system).

use domain_model::Hypervisor;
use images::{TestGuestSpec, Variant};
use integration::bench::{self, Iteration, MeasureOptions, Measured, Memory};
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
    let launcher = bench::release_launcher()?;
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
        "libvirt_bench: {iterations} iterations (+1 warm-up, order alternating), halting test \
         guest, {uri}, launcher {}",
        launcher.display()
    );
    let run_launcher = || -> Result<Measured, String> {
        let mut cmd = Command::new(&launcher);
        cmd.arg("--private-dir")
            .arg(&private)
            .arg("--libvirt-uri")
            .arg(&uri)
            .arg("--log-level=warn")
            .arg("run")
            .arg("--no-attach")
            .arg(&spec)
            .stdin(Stdio::null());
        let m = bench::measure(
            &mut cmd,
            MeasureOptions {
                own_peak_at_exit: true,
                sample_every: Some(Duration::from_millis(10)),
            },
        )
        .map_err(|e| format!("{}: {e}", launcher.display()))?;
        if !m.status.success() {
            return Err(format!("ch-launcher run ended with {}", m.status));
        }
        Ok(m)
    };
    let run_virsh = || time_virsh(&uri, &xml, &domain);
    let (launched, virsh) = bench::alternate(
        1,
        iterations,
        run_launcher,
        run_virsh,
        |it: Iteration, l: &Measured, v: &Duration| {
            let sampled = l.sampled_peak.unwrap_or_default();
            println!(
                "  #{}{}: ch-launcher run {:>7.1} ms (peak RSS {:>5} KiB, PSS {:>5} KiB, \
                 private {:>5} KiB) | virsh create + wait {:>7.1} ms ({} first)",
                it.index,
                if it.warmup { " (warm-up)" } else { "" },
                bench::ms(l.wall),
                l.own_peak_rss_kib(),
                sampled.pss_kib,
                sampled.private_kib,
                bench::ms(*v),
                if it.a_first { "launcher" } else { "virsh" }
            );
        },
    )?;
    let walls: Vec<Duration> = launched.iter().map(|m| m.wall).collect();
    let l = bench::median(&walls).ok_or("no iterations")?;
    let v = bench::median(&virsh).ok_or("no iterations")?;
    let peak_rss_kib = launched
        .iter()
        .map(Measured::own_peak_rss_kib)
        .max()
        .unwrap_or(0);
    let peak = launched
        .iter()
        .filter_map(|m| m.sampled_peak)
        .fold(Memory::default(), Memory::max);
    println!(
        "median: ch-launcher run {:.1} ms, virsh create + wait {:.1} ms, ratio {:.3} \
         (launcher adds {:+.1}%); launcher peak RSS {} KiB ({:.1} MiB), peak PSS {} KiB, \
         peak private {} KiB ({:.1} MiB)",
        bench::ms(l),
        bench::ms(v),
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
