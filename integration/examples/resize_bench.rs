//! Benchmark (not a test): how long a running VM takes to change size in
//! place under Cloud Hypervisor, asked through the launcher's control
//! socket (`ch-launcher resize`, a whole CLI process: spawn, connect, the
//! limits check, CH's `vm.resize`, the answer) against the same `vm.resize`
//! sent straight to CH's API socket, side by side in alternating order,
//! each timed until CH's own `vm.info` shows the new size. vCPUs grow by
//! one socket per run; memory grows by one 128 MiB ACPI section per run (it
//! cannot shrink, and CH has 8 ACPI slots per boot: 4 pairs).
//!
//! The reference for KubeVirt is its documented path, not measured here:
//! without in-place support, a CPU or memory change is a live migration to
//! a new pod (scheduling, a new launcher, memory copy), tens of seconds.
//!
//! Run:
//!   cargo build --release -p ch-launcher -p images -p integration --bins --examples
//!   CLOUD_HYPERVISOR_BIN=/path/to/cloud-hypervisor target/release/examples/resize_bench [PAIRS]
//! (default 20 pairs per kind).

use integration::bench;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MI: u64 = 1 << 20;
const SECTION: u64 = 128 * MI;
/// Cloud Hypervisor has 8 ACPI memory hotplug slots per boot.
const MEMORY_PAIRS: usize = 4;

fn main() {
    if let Err(e) = run() {
        eprintln!("resize_bench: {e}");
        std::process::exit(1);
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn info(api: &Path) -> Result<Value, String> {
    integration::unix_http::ch_vm_info(api)
}

/// Polls `vm.info` until `done`; the time from `start`.
fn until(api: &Path, start: Instant, done: impl Fn(&Value) -> bool) -> Result<Duration, String> {
    let deadline = start + Duration::from_secs(10);
    loop {
        if done(&info(api)?) {
            return Ok(start.elapsed());
        }
        if Instant::now() > deadline {
            return Err("the new size never showed in vm.info".into());
        }
    }
}

fn run() -> Result<(), String> {
    let pairs: usize = match std::env::args().nth(1) {
        Some(v) => v.parse().map_err(|e| format!("PAIRS {v:?}: {e}"))?,
        None => 20,
    };
    let ch = std::env::var_os("CLOUD_HYPERVISOR_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or("CLOUD_HYPERVISOR_BIN is not set")?;
    let launcher = bench::release_launcher()?;
    let work = tempfile::tempdir_in("/tmp").map_err(|e| e.to_string())?;
    let boot = 64 * MI;
    let max = boot + SECTION * (2 * MEMORY_PAIRS as u64 + 1);
    let max_sockets = 2 * pairs + 1;
    let spec = work.path().join("vmi.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: resize-bench\n\
             spec:\n  hypervisor: cloud-hypervisor\n  domain:\n    cpu: {{sockets: 1, maxSockets: {max_sockets}}}\n    \
             memory: {{guest: {boot}, maxGuest: {max}}}\n    firmware:\n      kernelBoot:\n        container:\n          \
             kernelPath: {}\n    devices: {{}}\n  terminationGracePeriodSeconds: 1\n",
            images::test_guest().display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let private = work.path().join("p");
    let child = Command::new(&launcher)
        .arg("--private-dir")
        .arg(&private)
        .args(["run", "--no-attach"])
        .arg(&spec)
        .env("CLOUD_HYPERVISOR_BIN", &ch)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start the launcher: {e}"))?;
    let _launcher_process = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (uid, api) = loop {
        let found = std::fs::read_dir(&private)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok());
        if let Some(dir) = found {
            let api = dir.path().join("ch-api.sock");
            if info(&api).is_ok_and(|i| i["state"] == "Running") {
                break (dir.file_name().to_string_lossy().into_owned(), api);
            }
        }
        if Instant::now() > deadline {
            return Err("the VM never ran".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ctl = |args: &[String]| -> Result<(), String> {
        let out = Command::new(&launcher)
            .arg("--private-dir")
            .arg(&private)
            .arg("resize")
            .args(args)
            .args(["--uid", &uid])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let direct = |body: String| -> Result<(), String> {
        let r = integration::unix_http::request(
            &api,
            "PUT",
            "/api/v1/vm.resize",
            Some(body.as_bytes()),
            Duration::from_secs(5),
        )
        .map_err(|e| e.to_string())?;
        if r.status / 100 == 2 {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&r.body).into_owned())
        }
    };

    println!(
        "resize_bench: {pairs} pairs per kind, launcher {} (control socket) vs CH's API directly",
        launcher.display()
    );
    let (mut cpu_l, mut cpu_d, mut mem_l, mut mem_d) = (vec![], vec![], vec![], vec![]);
    let vcpus = |want: u64| move |i: &Value| i["config"]["cpus"]["boot_vcpus"] == want;
    let mut sockets = 1u64;
    let mut memory = boot;
    for pair in 0..pairs {
        // vCPUs: one more socket each. (Fewer would need the guest to eject
        // the CPUs over ACPI; until it does, CH answers every later resize
        // with 429, and the test guest has no ACPI.)
        for by_launcher in [pair % 2 == 0, pair % 2 != 0] {
            sockets += 1;
            let start = Instant::now();
            if by_launcher {
                ctl(&["--sockets".into(), sockets.to_string()])?;
                cpu_l.push(until(&api, start, vcpus(sockets))?);
            } else {
                direct(format!("{{\"desired_vcpus\":{sockets}}}"))?;
                cpu_d.push(until(&api, start, vcpus(sockets))?);
            }
        }
        // Memory: one more section each, while CH has ACPI slots (8 per
        // boot: its ninth hot-add fails with "No ACPI slot available").
        if pair >= MEMORY_PAIRS {
            continue;
        }
        for by_launcher in [pair % 2 == 0, pair % 2 != 0] {
            memory += SECTION;
            let want = memory;
            let start = Instant::now();
            let shown = move |i: &Value| i["config"]["memory"]["size"] == want;
            if by_launcher {
                ctl(&["--memory".into(), memory.to_string()])?;
                mem_l.push(until(&api, start, shown)?);
            } else {
                direct(format!("{{\"desired_ram\":{memory}}}"))?;
                mem_d.push(until(&api, start, shown)?);
            }
        }
    }
    let show = |what: &str, l: &[Duration], d: &[Duration]| {
        let (lm, dm) = (
            bench::median(l).unwrap_or_default(),
            bench::median(d).unwrap_or_default(),
        );
        println!(
            "{what}: launcher median {:.2} ms, CH API directly {:.2} ms, ratio {:.2}",
            bench::ms(lm),
            bench::ms(dm),
            lm.as_secs_f64() / dm.as_secs_f64()
        );
    };
    show("vCPUs +1 socket", &cpu_l, &cpu_d);
    show("memory +128Mi", &mem_l, &mem_d);
    println!(
        "KubeVirt without in-place resize: a live migration to a new pod, tens of seconds \
         (documented, not measured here)"
    );
    Ok(())
}
