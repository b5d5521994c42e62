//! `ch-launcher host ...` end to end: the binary prints the labels of a
//! recorded domcapabilities file, the native probe's JSON, and fails clearly
//! on an unreadable file.

mod common;

use common::{sample, text};
use std::process::{Command, Output};

fn launcher() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ch-launcher"))
}

/// `ch-launcher host <command> --domcapabilities <recorded file>`, which must
/// succeed.
fn host_on_sample(command: &str, file: &str) -> Output {
    let out = launcher()
        .args(["host", command, "--domcapabilities"])
        .arg(sample(file))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    out
}

#[test]
fn host_labels_prints_tdx_label_for_tdx_domcapabilities() {
    let out = host_on_sample("labels", "domcapabilities_tdx.xml");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "kubevirt.io/tdx=true\n"
    );
}

#[test]
fn host_capabilities_prints_sev_parameters_as_json() {
    let out = host_on_sample("capabilities", "domcapabilities_sevsnp.xml");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["sev"]["cbitpos"], 47);
    assert_eq!(json["sev"]["reduced_phys_bits"], 1);
    assert_eq!(json["sev_snp"], true);
}

#[test]
fn host_capabilities_without_file_runs_the_native_probe() {
    let out = launcher().args(["host", "capabilities"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
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
    assert!(text(&out.stderr).contains("/nonexistent/caps.xml"));
}
