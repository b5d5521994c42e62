//! The `ch-launcher` command line without a running VM: `validate`,
//! `render`, and how `run` fails before and during start-up (exit codes,
//! messages, nothing left behind).

mod ch_support;

use domain_model::Hypervisor;
use images::{TestGuestSpec, Variant};
use integration::launcher_path;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn launcher(args: &[&str], spec: &Path) -> Output {
    Command::new(launcher_path())
        .args(args)
        .arg(spec)
        .stdin(Stdio::null())
        .output()
        .expect("run ch-launcher")
}

fn guest_spec(dir: &Path) -> PathBuf {
    TestGuestSpec::new(Hypervisor::CloudHypervisor, Variant::Interactive)
        .write(dir)
        .expect("write test guest spec")
}

const INVALID_SPEC: &str = "\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: broken
spec:
  hypervisor: cloud-hypervisor
  domain:
    cpu:
      cores: -1
    devices: {}
";

#[test]
fn validate_prints_the_resolved_vm_and_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = launcher(&["validate"], &guest_spec(dir.path()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("default/test-guest is valid"), "{stdout}");
    assert!(stdout.contains("cloud-hypervisor"), "{stdout}");
    assert!(stdout.contains("64 MiB"), "{stdout}");
}

#[test]
fn validate_json_is_the_domain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = launcher(&["validate", "--json"], &guest_spec(dir.path()));
    assert_eq!(out.status.code(), Some(0));
    let domain: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(domain["name"], "test-guest");
    assert_eq!(domain["memory"]["guest"], 64 << 20);
    assert_eq!(domain["hypervisor"], "cloud-hypervisor");
}

#[test]
fn invalid_spec_exits_2_naming_the_field_for_validate_render_and_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = dir.path().join("broken.yaml");
    std::fs::write(&spec, INVALID_SPEC).expect("write spec");
    let private = dir.path().join("p");
    for args in [
        vec!["validate"],
        vec!["render"],
        vec![
            "--private-dir",
            private.to_str().expect("utf-8"),
            "run",
            "--no-attach",
        ],
    ] {
        let out = launcher(&args, &spec);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("spec.domain.cpu.cores"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
    assert!(!private.exists(), "run created files for an invalid spec");
}

#[test]
fn render_prints_the_cloud_hypervisor_config_as_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let private = dir.path().join("p");
    let out = launcher(
        &["--private-dir", private.to_str().expect("utf-8"), "render"],
        &guest_spec(dir.path()),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        config["payload"]["kernel"].as_str(),
        Variant::Interactive.path().to_str()
    );
    // The serial port is a socket in the VM's directory (see `run --ch-serial`).
    assert_eq!(config["serial"]["mode"], "Socket");
    let socket = PathBuf::from(config["serial"]["socket"].as_str().expect("socket path"));
    assert!(socket.starts_with(&private), "{}", socket.display());
    assert_eq!(
        socket.file_name().and_then(|n| n.to_str()),
        Some("ch-serial.sock")
    );
    assert_eq!(config["memory"]["size"], 64 << 20);
}

#[test]
fn run_with_a_missing_hypervisor_binary_fails_with_1_and_leaves_no_sockets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = guest_spec(dir.path());
    let private = dir.path().join("p");
    let out = Command::new(launcher_path())
        .arg("--private-dir")
        .arg(&private)
        .args(["run", "--no-attach"])
        .arg(&spec)
        .env(
            "CLOUD_HYPERVISOR_BIN",
            dir.path().join("no-such-cloud-hypervisor"),
        )
        .stdin(Stdio::null())
        .output()
        .expect("run ch-launcher");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-cloud-hypervisor"), "{stderr}");
    let leftovers: Vec<_> = walk(&private)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n == "virt-serial0" || n == "launcher-sock")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn control_command_needs_a_spec_or_a_uid() {
    let out = Command::new(launcher_path())
        .arg("pause")
        .stdin(Stdio::null())
        .output()
        .expect("run ch-launcher");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--uid"), "{stderr}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            }
            found.push(path);
        }
    }
    found
}

/// Every stderr line of `out`, each of which must be a JSON record.
fn json_records(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON record ({e}): {l:?}"))
        })
        .collect()
}

#[test]
fn json_log_format_reports_each_spec_error_as_a_record_with_its_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = dir.path().join("broken.yaml");
    std::fs::write(&spec, INVALID_SPEC).expect("write spec");
    for command in ["validate", "render", "status"] {
        let out = launcher(&["--log-format", "json", command], &spec);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let records = json_records(&out);
        let cores = records
            .iter()
            .find(|r| r["path"] == "spec.domain.cpu.cores")
            .unwrap_or_else(|| panic!("{command}: no record for cpu.cores: {records:?}"));
        assert_eq!(cores["level"], "ERROR");
        assert!(cores["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[test]
fn json_log_format_control_command_errors_are_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(launcher_path())
        .arg("--private-dir")
        .arg(dir.path())
        .args(["--log-format", "json", "status", "--uid", "no-such-vm"])
        .stdin(Stdio::null())
        .output()
        .expect("run ch-launcher");
    assert_eq!(out.status.code(), Some(1));
    let records = json_records(&out);
    assert!(
        records.iter().any(|r| r["level"] == "ERROR"
            && r["message"].as_str().is_some_and(|m| m.contains("status"))),
        "{records:?}"
    );
}

#[test]
fn text_log_format_keeps_plain_error_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(launcher_path())
        .arg("--private-dir")
        .arg(dir.path())
        .args(["status", "--uid", "no-such-vm"])
        .stdin(Stdio::null())
        .output()
        .expect("run ch-launcher");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("ch-launcher: status: "), "{stderr}");
}

#[test]
fn a_uid_that_leaves_the_private_dir_is_refused() {
    for uid in ["../etc", "a/b", ".."] {
        let out = Command::new(launcher_path())
            .args(["status", "--uid", uid])
            .stdin(Stdio::null())
            .output()
            .expect("run ch-launcher");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{uid}: {stderr}");
        assert!(stderr.contains("not a valid uid"), "{uid}: {stderr}");
    }
}

#[test]
fn a_broken_config_file_is_a_launcher_failure_exit_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "featureGates: [unclosed\n").expect("write config");
    let out = Command::new(launcher_path())
        .arg("--config")
        .arg(&config)
        .arg("validate")
        .arg(guest_spec(dir.path()))
        .stdin(Stdio::null())
        .output()
        .expect("run ch-launcher");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("config.yaml"), "{stderr}");
}

#[test]
fn a_private_dir_too_deep_for_unix_sockets_fails_before_starting_anything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let deep = dir.path().join("d".repeat(90));
    let out = Command::new(launcher_path())
        .arg("--private-dir")
        .arg(&deep)
        .args(["run", "--no-attach"])
        .arg(guest_spec(dir.path()))
        .env(ch_support::CH_BIN_ENV, ch_support::vmm_bin())
        .stdin(Stdio::null())
        .output()
        .expect("run ch-launcher");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&deep.display().to_string()), "{stderr}");
    assert!(stderr.contains("longer than the 107 bytes"), "{stderr}");
    assert!(stderr.contains("--private-dir"), "{stderr}");
    assert!(!deep.exists(), "nothing may be created");
}
