//! Images from a real registry: the project's boot disk packed as a
//! KubeVirt containerDisk (`/disk/disk.img`, uid/gid 107) and the tiny
//! guest as a kernel-boot image, pushed with skopeo to Debian's
//! docker-registry on loopback, then pulled by the real launcher:
//!
//! - under Cloud Hypervisor, rust-hypervisor-firmware reads the pulled
//!   disk's GPT, FAT and boot entry and starts the guest, which prints the
//!   entry's `options`; a second run with the registry stopped boots from
//!   the cache; the cached image stays byte-identical; the overlay goes;
//! - under libvirt, SeaBIOS runs the same disk's MBR boot code;
//! - `ch-launcher pull` against a registry with basic auth: refused
//!   without credentials, pulled with a config.json, pull policies and
//!   digest references as Kubernetes defines them;
//! - `kernelBoot.container.image` boots the kernel found in an image
//!   through a symbolic link.
//!
//! Needs docker-registry and skopeo (SKIP line otherwise, a failure under
//! `CH_LAUNCHER_REQUIRE_REGISTRY=1`), and for the boots the real Cloud
//! Hypervisor with hypervisor-fw beside it, or libvirt.

use integration::registry::{self, Registry};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn skip(test: &str, why: &str) {
    eprintln!("SKIP: {test}: {why}");
}

fn registry_or_skip(test: &str, credentials: Option<(&str, &str)>) -> Option<Registry> {
    if let Err(why) = registry::available() {
        skip(test, &why);
        return None;
    }
    Some(Registry::start(credentials).unwrap_or_else(|e| panic!("{test}: {e}")))
}

/// The directory of the real CH binary, when hypervisor-fw is beside it.
fn ch_firmware_dir(test: &str) -> Option<(PathBuf, PathBuf)> {
    let ch = std::env::var_os("CLOUD_HYPERVISOR_BIN").filter(|v| !v.is_empty());
    let found = ch.map(PathBuf::from).and_then(|bin| {
        let dir = bin.parent()?.to_path_buf();
        dir.join(firmware::cloud_hypervisor::RUST_HYPERVISOR_FIRMWARE_NAME)
            .is_file()
            .then_some((bin, dir))
    });
    if found.is_none() {
        skip(
            test,
            "needs the real cloud-hypervisor (CLOUD_HYPERVISOR_BIN) with hypervisor-fw beside it",
        );
    }
    found
}

fn libvirt_or_skip(test: &str) -> bool {
    let ok = Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CH_LAUNCHER_REQUIRE_LIBVIRT").as_deref() != Ok("1"),
            "{test}: libvirtd does not answer on qemu:///system, and CH_LAUNCHER_REQUIRE_LIBVIRT=1 requires it"
        );
        skip(test, "libvirtd does not answer on qemu:///system");
    }
    ok
}

/// The per-test directories a launcher uses.
struct Dirs {
    root: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        Dirs {
            root: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn path(&self, sub: &str) -> PathBuf {
        self.root.path().join(sub)
    }
    /// Global flags: private, ephemeral, image cache, an empty HOME.
    fn launcher(&self) -> Command {
        let mut cmd = Command::new(integration::launcher_path());
        cmd.arg("--private-dir")
            .arg(self.path("private"))
            .arg("--ephemeral-disk-dir")
            .arg(self.path("ephemeral"))
            .arg("--container-disk-dir")
            .arg(self.path("container-disks"))
            .arg("--image-cache-dir")
            .arg(self.path("cache"))
            .env("HOME", self.path("home"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .stdin(Stdio::null());
        cmd
    }
    fn serial_log(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.path("private"))
            .into_iter()
            .flatten()
            .flatten()
        {
            out += &std::fs::read_to_string(e.path().join("virt-serial0-log")).unwrap_or_default();
        }
        out
    }
}

/// Runs the launcher to its end, killing it after `limit`.
fn run_to_end(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ch-launcher");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            // SIGTERM: the launcher's own cleanup runs.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let out = child.wait_with_output().expect("wait");
            panic!(
                "ch-launcher did not finish within {limit:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn spec(dir: &Path, name: &str, hypervisor: &str, volume: &str, firmware: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        &path,
        format!(
            "\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
spec:
  hypervisor: {hypervisor}
  domain:
    memory:
      guest: 128Mi
{firmware}    devices:
      disks:
      - name: rootdisk
        disk:
          bus: virtio
  volumes:
  - name: rootdisk
{volume}
  terminationGracePeriodSeconds: 1
"
        ),
    )
    .unwrap();
    path
}

fn contents(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The one `disk.img` in the cache.
fn cached_disk(cache: &Path) -> PathBuf {
    let images: Vec<_> = std::fs::read_dir(cache.join("images"))
        .expect("images in the cache")
        .flatten()
        .collect();
    assert_eq!(images.len(), 1, "one image in the cache");
    images[0].path().join("rootfs/disk/disk.img")
}

fn assert_nothing_left(dirs: &Dirs) {
    let eph = dirs.path("ephemeral");
    let left: Vec<_> = std::fs::read_dir(&eph)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the overlay directory was left: {left:?}");
    let staging: Vec<_> = std::fs::read_dir(dirs.path("cache/tmp"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(staging.is_empty(), "staging left in the cache: {staging:?}");
}

#[test]
fn container_disk_from_a_registry_boots_through_firmware_on_cloud_hypervisor_then_from_the_cache() {
    let test = "container_disk_from_a_registry_boots_through_firmware_on_cloud_hypervisor";
    let Some(mut reg) = registry_or_skip(test, None) else {
        return;
    };
    let Some((ch, fw_dir)) = ch_firmware_dir(test) else {
        return;
    };
    let dirs = Dirs::new();
    let (layout, disk) =
        images::write_container_disk(&dirs.path("layout"), "1", images::Variant::Halting)
            .expect("containerDisk layout");
    let image = reg.push(&layout.dir, "1", "tiny/disk");
    let volume = format!("    containerDisk:\n      image: {image}\n");
    let spec = spec(
        &dirs.path("specs"),
        "cd-ch",
        "cloud-hypervisor",
        &volume,
        "",
    );
    let boot = || {
        let mut cmd = dirs.launcher();
        cmd.env("CLOUD_HYPERVISOR_BIN", &ch)
            .args(["run", "--no-attach", "--ch-firmware-dir"])
            .arg(&fw_dir)
            .arg(&spec);
        run_to_end(cmd, Duration::from_secs(60))
    };
    let out = boot();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "first run: {}\n{stderr}", out.status);
    assert!(stderr.contains("image pulled"), "{stderr}");
    let log = dirs.serial_log();
    // rust-hypervisor-firmware read the pulled disk: the guest it started
    // prints the boot entry's options from that disk.
    assert!(log.contains(images::BANNER), "serial log:\n{log}");
    assert!(
        log.contains(images::CMDLINE_LABEL) && log.contains(images::BOOT_DISK_OPTIONS),
        "serial log:\n{log}"
    );
    let cached = cached_disk(&dirs.path("cache"));
    assert!(contents(&cached) == disk, "the cached image changed");
    assert_nothing_left(&dirs);

    // The registry is gone: the second boot can only come from the cache.
    reg.stop();
    let out = boot();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "second run: {}\n{stderr}", out.status);
    assert!(stderr.contains("image from the cache"), "{stderr}");
    assert_eq!(dirs.serial_log().matches(images::BANNER).count(), 2);
    assert!(contents(&cached) == disk, "the cached image changed");
    assert_nothing_left(&dirs);
}

#[test]
fn container_disk_from_a_registry_boots_its_mbr_under_libvirt_seabios() {
    let test = "container_disk_from_a_registry_boots_its_mbr_under_libvirt_seabios";
    let Some(reg) = registry_or_skip(test, None) else {
        return;
    };
    if !libvirt_or_skip(test) {
        return;
    }
    let dirs = Dirs::new();
    let (layout, disk) =
        images::write_container_disk(&dirs.path("layout"), "2", images::Variant::Halting)
            .expect("containerDisk layout");
    let image = reg.push(&layout.dir, "2", "tiny/disk");
    let volume = format!("    containerDisk:\n      image: {image}\n");
    let spec = spec(&dirs.path("specs"), "cd-libvirt", "libvirt", &volume, "");
    let mut cmd = dirs.launcher();
    cmd.args(["run", "--no-attach"]).arg(&spec);
    let out = run_to_end(cmd, Duration::from_secs(90));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    let log = dirs.serial_log();
    assert!(
        log.contains(images::BOOT_SECTOR_MARKER.trim_end()),
        "serial log:\n{log}"
    );
    assert!(contents(&cached_disk(&dirs.path("cache"))) == disk);
    assert_nothing_left(&dirs);
}

fn pull(dirs: &Dirs, extra: &[&str], image: &str) -> (Output, serde_json::Value) {
    let mut cmd = dirs.launcher();
    cmd.args(extra).arg("pull").arg(image);
    let out = run_to_end(cmd, Duration::from_secs(30));
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, json)
}

#[test]
fn pulls_follow_credentials_pull_policies_and_digests() {
    let test = "pulls_follow_credentials_pull_policies_and_digests";
    let Some(reg) = registry_or_skip(test, Some(("tester", "s3cret:pw"))) else {
        return;
    };
    let dirs = Dirs::new();
    let (layout, _) =
        images::write_container_disk(&dirs.path("layout"), "v1", images::Variant::Halting)
            .expect("layout");
    let image = reg.push(&layout.dir, "v1", "auth/disk");

    // No credentials: the registry's refusal, named.
    let (out, _) = pull(&dirs, &[], &image);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&image) && stderr.to_lowercase().contains("auth"),
        "{stderr}"
    );

    let auth = reg.write_auth_file(&dirs.path("config.json"));
    let auth_flag = ["--registry-auth-file", auth.to_str().unwrap()];
    let (out, json) = pull(&dirs, &auth_flag, &image);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json["digest"], layout.manifest_digest.as_str());
    assert!(json["downloadedBytes"].as_u64().unwrap() > 0, "{json}");

    // A tag other than latest defaults to IfNotPresent: no registry at all.
    let (_, json) = pull(&dirs, &auth_flag, &image);
    assert_eq!(json["contactedRegistry"], false, "{json}");
    // Always asks for the manifest, and downloads nothing it has.
    let mut cmd = dirs.launcher();
    cmd.args(auth_flag)
        .args(["pull", "--pull-policy", "Always"])
        .arg(&image);
    let out = run_to_end(cmd, Duration::from_secs(30));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("pull json");
    assert_eq!(json["contactedRegistry"], true, "{json}");
    assert_eq!(json["downloadedBytes"], 0, "{json}");

    // By digest: the same image; a digest the registry lacks fails.
    let by_digest = format!("{}/auth/disk@{}", reg.addr, layout.manifest_digest);
    let (out, json) = pull(&dirs, &auth_flag, &by_digest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json["digest"], layout.manifest_digest.as_str());
    let wrong = format!("{}/auth/disk@sha256:{}", reg.addr, "0".repeat(64));
    let (out, _) = pull(&dirs, &auth_flag, &wrong);
    assert_eq!(out.status.code(), Some(1));

    // Never, with an empty cache: refused without asking.
    let other = Dirs::new();
    let mut cmd = other.launcher();
    cmd.args(["pull", "--pull-policy", "Never"]).arg(&image);
    let out = run_to_end(cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("imagePullPolicy is Never"), "{stderr}");
}

#[test]
fn kernel_boot_image_from_a_registry_boots_its_kernel_through_a_symlink() {
    let test = "kernel_boot_image_from_a_registry_boots_its_kernel_through_a_symlink";
    let Some(reg) = registry_or_skip(test, None) else {
        return;
    };
    let Some((ch, _)) = ch_firmware_dir(test) else {
        return;
    };
    let dirs = Dirs::new();
    let layout = images::write_kernel_boot_image(&dirs.path("layout"), "1").expect("layout");
    let image = reg.push(&layout.dir, "1", "tiny/kernel");
    let firmware = format!(
        "    firmware:\n      kernelBoot:\n        container:\n          image: {image}\n          kernelPath: /boot/vmlinuz\n"
    );
    let volume = "    emptyDisk:\n      capacity: 16Mi\n";
    let spec = spec(
        &dirs.path("specs"),
        "kb-ch",
        "cloud-hypervisor",
        volume,
        &firmware,
    );
    let mut cmd = dirs.launcher();
    cmd.env("CLOUD_HYPERVISOR_BIN", &ch)
        .args(["run", "--no-attach"])
        .arg(&spec);
    let out = run_to_end(cmd, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    assert!(
        stderr.contains("kernel boot from the image cache"),
        "{stderr}"
    );
    let log = dirs.serial_log();
    assert!(log.contains(images::BANNER), "serial log:\n{log}");
    assert_nothing_left(&dirs);
}
