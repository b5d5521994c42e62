//! End-to-end test support: the Cloud Hypervisor stand-in (`ch-standin`), a
//! way to find its binary and the launcher's, a minimal HTTP/1.1 client for unix sockets, and
//! the measurement pieces of the benchmarks in `examples/` ([`bench`]).
//!
//! From a shell, the stand-in's path is
//! `cargo build -q -p integration --bin ch-standin && echo "$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug/ch-standin"`
//! (usually `target/debug/ch-standin`). Tests of this crate may also use
//! `env!("CARGO_BIN_EXE_ch-standin")`.

pub mod bench;
pub mod netns;
pub mod registry;
pub mod standin;
pub mod unix_http;
pub mod virt_handler;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Set to use a prebuilt launcher instead of building one.
pub const LAUNCHER_BIN_ENV: &str = "CH_LAUNCHER_BIN";

/// The `ch-launcher` binary: `$CH_LAUNCHER_BIN` if set, else built once with
/// cargo (in the profile of the running binary) and located from cargo's own
/// report, which holds whatever the profile and target directory.
pub fn launcher_path() -> PathBuf {
    if let Some(path) = std::env::var_os(LAUNCHER_BIN_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "-p",
                "ch-launcher",
                "--bin",
                "ch-launcher",
                "--message-format=json-render-diagnostics",
            ]);
            if !cfg!(debug_assertions) {
                cmd.arg("--release");
            }
            let out = cmd
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("run cargo build for ch-launcher");
            assert!(out.status.success(), "cargo build -p ch-launcher failed");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|m| {
                    m["reason"] == "compiler-artifact" && m["target"]["name"] == "ch-launcher"
                })
                .find_map(|m| m["executable"].as_str().map(PathBuf::from))
                .expect("cargo reported no ch-launcher executable")
        })
        .clone()
}

/// `target/<profile>`, where cargo puts the workspace's binaries: the
/// directory of the running test binary, or its parent for `deps`.
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    Some(if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// Set to use a prebuilt stand-in instead of the one in the target dir.
pub const STANDIN_BIN_ENV: &str = "CH_STANDIN_BIN";

/// The `ch-standin` binary: `$CH_STANDIN_BIN` if set, else the one next to
/// the running test binary (`target/<profile>/ch-standin`), built with cargo
/// first if it is not there yet.
pub fn standin_path() -> PathBuf {
    if let Some(path) = std::env::var_os(STANDIN_BIN_ENV) {
        return PathBuf::from(path);
    }
    let profile_dir = profile_dir();
    if let Some(dir) = &profile_dir {
        let candidate = dir.join("ch-standin");
        if candidate.is_file() {
            return candidate;
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "integration", "--bin", "ch-standin"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status();
    let fallback = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ch-standin");
    match (status, profile_dir) {
        (Ok(s), Some(dir)) if s.success() && dir.join("ch-standin").is_file() => {
            dir.join("ch-standin")
        }
        _ => fallback,
    }
}
