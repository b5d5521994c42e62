//! Benchmark (not a test): what a containerDisk from a registry costs under
//! the real Cloud Hypervisor, side by side in one run, alternating order:
//!
//! 1. **pull + boot** (an empty image cache: the manifest and layer from a
//!    docker-registry on loopback, unpacked, then the overlay and the boot)
//!    against **cached boot** (the same image already in the cache,
//!    `IfNotPresent`: no registry I/O);
//! 2. **cached boot** against a **hostDisk boot** of the same raw disk (no
//!    overlay, no cache lookup): the price of the overlay;
//! 3. **raw against qcow2** under CH: the same boot disk as a raw and as a
//!    qcow2 containerDisk image (local layout, `disk.img` / `disk.qcow2`),
//!    each under the launcher's qcow2 overlay, as a containerDisk always is
//!    (rust-hypervisor-firmware reads its GPT, FAT, entry and kernel through
//!    CH's block device and the backing chain);
//! 4. **overlay creation** alone: `qemu-img create -f qcow2 -b IMAGE`.
//!
//! Each boot is a whole `ch-launcher run` of the halting guest, timed from
//! spawn to exit (the guest powers off after its banner).
//!
//! Run:
//!   cargo build --release -p ch-launcher -p images -p integration --bins --examples
//!   CLOUD_HYPERVISOR_BIN=../shared/bin/cloud-hypervisor target/release/examples/image_bench [PAIRS]
//! (default 10 pairs per comparison).

use integration::bench::{self, median, ms};
use integration::registry::Registry;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    if let Err(e) = run() {
        eprintln!("image_bench: {e}");
        std::process::exit(1);
    }
}

struct Setup {
    launcher: PathBuf,
    ch: PathBuf,
    fw_dir: PathBuf,
    work: PathBuf,
}

impl Setup {
    /// One `ch-launcher run` of `spec` with `cache`; its wall time.
    fn boot(&self, spec: &Path, cache: &Path) -> Result<Duration, String> {
        self.boot_in(spec, cache, &self.work.join("no-container-disks"))
    }

    /// The same, containerDisks read from `container_disks` when there.
    fn boot_in(
        &self,
        spec: &Path,
        cache: &Path,
        container_disks: &Path,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        let out = Command::new(&self.launcher)
            .arg("--container-disk-dir")
            .arg(container_disks)
            .arg("--private-dir")
            .arg(self.work.join("private"))
            .arg("--ephemeral-disk-dir")
            .arg(self.work.join("ephemeral"))
            .arg("--image-cache-dir")
            .arg(cache)
            .arg("--log-level")
            .arg("warn")
            .env("CLOUD_HYPERVISOR_BIN", &self.ch)
            .env("HOME", &self.work)
            .args(["run", "--no-attach", "--ch-firmware-dir"])
            .arg(&self.fw_dir)
            .arg(spec)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("ch-launcher: {e}"))?;
        let took = start.elapsed();
        if !out.status.success() {
            return Err(format!(
                "ch-launcher run {}: {}\n{}",
                spec.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(took)
    }
}

fn spec(dir: &Path, name: &str, volume: &str) -> Result<PathBuf, String> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: {name}\n\
             spec:\n  hypervisor: cloud-hypervisor\n  domain:\n    memory:\n      guest: 128Mi\n\
             \x20   devices:\n      disks:\n      - name: rootdisk\n        disk:\n          bus: virtio\n\
             \x20 volumes:\n  - name: rootdisk\n{volume}  terminationGracePeriodSeconds: 1\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(path)
}

fn print_pair(what: &str, a_name: &str, a: &[Duration], b_name: &str, b: &[Duration]) {
    let (Some(ma), Some(mb)) = (median(a), median(b)) else {
        return;
    };
    println!(
        "{what}: {a_name} {:.1} ms, {b_name} {:.1} ms (medians of {}), ratio {:.2}",
        ms(ma),
        ms(mb),
        a.len(),
        ma.as_secs_f64() / mb.as_secs_f64()
    );
}

fn qemu_img(args: &[&str]) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| format!("qemu-img: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn run() -> Result<(), String> {
    let pairs: usize = std::env::args()
        .nth(1)
        .map(|a| {
            a.parse()
                .map_err(|_| format!("PAIRS {a:?} is not a number"))
        })
        .transpose()?
        .unwrap_or(10);
    let launcher = bench::release_launcher()?;
    let ch = PathBuf::from(
        std::env::var_os("CLOUD_HYPERVISOR_BIN")
            .ok_or("set CLOUD_HYPERVISOR_BIN to the real cloud-hypervisor")?,
    );
    let fw_dir = ch
        .parent()
        .ok_or("CLOUD_HYPERVISOR_BIN has no directory")?
        .to_path_buf();
    integration::registry::available()?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let setup = Setup {
        launcher,
        ch,
        fw_dir,
        work: tmp.path().to_path_buf(),
    };
    let reg = Registry::start(None)?;
    let (layout, _) =
        images::write_container_disk(&tmp.path().join("layout"), "1", images::Variant::Halting)
            .map_err(|e| e.to_string())?;
    let image = reg.push(&layout.dir, "1", "bench/disk");
    let raw = tmp.path().join("boot.img");
    images::write_boot_disk_of(&raw, images::Variant::Halting).map_err(|e| e.to_string())?;
    let (raw_dir, qcow2_dir) = (tmp.path().join("cd-raw"), tmp.path().join("cd-qcow2"));
    std::fs::create_dir_all(raw_dir.join("rootdisk")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(qcow2_dir.join("rootdisk")).map_err(|e| e.to_string())?;
    std::fs::copy(&raw, raw_dir.join("rootdisk/disk.img")).map_err(|e| e.to_string())?;
    let qcow2 = qcow2_dir.join("rootdisk/disk.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ])?;

    let cd_spec = spec(
        tmp.path(),
        "bench-cd",
        &format!("    containerDisk:\n      image: {image}\n"),
    )?;
    let host = |p: &Path| {
        format!(
            "    hostDisk:\n      path: {}\n      type: Disk\n",
            p.display()
        )
    };
    let raw_spec = spec(tmp.path(), "bench-raw", &host(&raw))?;
    let warm_cache = tmp.path().join("warm-cache");
    setup.boot(&cd_spec, &warm_cache)?;

    println!(
        "image_bench: {pairs} pairs per comparison, alternating order; boot = a whole \
         `ch-launcher run` of the halting guest through rust-hypervisor-firmware"
    );
    let mut cold_n = 0;
    let (cold, warm) = bench::alternate(
        1,
        pairs,
        || {
            cold_n += 1;
            let cache = tmp.path().join(format!("cold-cache-{cold_n}"));
            let took = setup.boot(&cd_spec, &cache);
            let _ = std::fs::remove_dir_all(&cache);
            took
        },
        || setup.boot(&cd_spec, &warm_cache),
        |_, _, _| {},
    )?;
    print_pair("containerDisk", "pull+boot", &cold, "cached boot", &warm);

    let (warm2, hostdisk) = bench::alternate(
        1,
        pairs,
        || setup.boot(&cd_spec, &warm_cache),
        || setup.boot(&raw_spec, &warm_cache),
        |_, _, _| {},
    )?;
    print_pair(
        "overlay price",
        "cached containerDisk",
        &warm2,
        "raw hostDisk",
        &hostdisk,
    );

    let (q, r) = bench::alternate(
        1,
        pairs,
        || setup.boot_in(&cd_spec, &warm_cache, &qcow2_dir),
        || setup.boot_in(&cd_spec, &warm_cache, &raw_dir),
        |_, _, _| {},
    )?;
    print_pair("image format under CH", "qcow2 image", &q, "raw image", &r);

    let overlay = tmp.path().join("overlay.qcow2");
    let mut times = Vec::new();
    for _ in 0..pairs.max(1) * 2 {
        let _ = std::fs::remove_file(&overlay);
        let start = Instant::now();
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            raw.to_str().unwrap(),
            overlay.to_str().unwrap(),
        ])?;
        times.push(start.elapsed());
    }
    if let Some(m) = median(&times) {
        println!(
            "overlay creation (qemu-img create): {:.1} ms (median of {})",
            ms(m),
            times.len()
        );
    }
    Ok(())
}
