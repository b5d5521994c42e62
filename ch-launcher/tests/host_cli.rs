//! `ch-launcher host ...` end to end: the binary prints the labels of a
//! recorded domcapabilities file, the native probe's JSON, and fails clearly
//! on an unreadable file.

use std::path::PathBuf;
use std::process::Command;

fn launcher() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ch-launcher"))
}

fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/domcapabilities")
        .join(name)
}

#[test]
fn host_labels_prints_tdx_label_for_tdx_domcapabilities() {
    let out = launcher()
        .args(["host", "labels", "--domcapabilities"])
        .arg(sample("domcapabilities_tdx.xml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "kubevirt.io/tdx=true\n"
    );
}

#[test]
fn host_capabilities_prints_sev_parameters_as_json() {
    let out = launcher()
        .args(["host", "capabilities", "--domcapabilities"])
        .arg(sample("domcapabilities_sevsnp.xml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["sev"]["cbitpos"], 47);
    assert_eq!(json["sev"]["reduced_phys_bits"], 1);
    assert_eq!(json["sev_snp"], true);
}

#[test]
fn host_capabilities_without_file_runs_the_native_probe() {
    let out = launcher().args(["host", "capabilities"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["source"], "native probe");
}

#[test]
fn host_labels_with_missing_file_fails_naming_it() {
    let out = launcher()
        .args([
            "host",
            "labels",
            "--domcapabilities",
            "/nonexistent/caps.xml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/caps.xml"));
}
