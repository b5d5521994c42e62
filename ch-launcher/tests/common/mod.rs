//! Helpers shared by the tests that run the `ch-launcher` binary.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;

/// The `cloud-hypervisor` binary named by `CLOUD_HYPERVISOR_BIN`; without
/// it, prints a visible `SKIP:` line for `test` and returns `None`.
pub fn ch_binary(test: &str) -> Option<PathBuf> {
    match std::env::var_os("CLOUD_HYPERVISOR_BIN").filter(|v| !v.is_empty()) {
        Some(bin) => Some(PathBuf::from(bin)),
        None => {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                (format!("SKIP: {test}: set CLOUD_HYPERVISOR_BIN to a cloud-hypervisor binary")
                    + "\n")
                    .as_bytes(),
            );
            None
        }
    }
}

/// A recorded `virsh domcapabilities` file from the recordings in `tests/data/reference/`.
pub fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/reference/domcapabilities")
        .join(name)
}

/// A process's output as text, for assertions and their messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails, showing all of stderr, unless `out`'s stderr contains `needle`.
pub fn assert_stderr_contains(out: &Output, needle: &str) {
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(needle),
        "{needle:?} not in stderr:\n{stderr}"
    );
}

/// A KubeVirt VMI `name` on `hypervisor` booting EFI without Secure Boot,
/// with 1Gi of memory and `domain_lines` (YAML, indented for
/// `spec.domain`) added.
pub fn efi_vmi(name: &str, hypervisor: &str, domain_lines: &str) -> String {
    format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
spec:
  hypervisor: {hypervisor}
  domain:
{domain_lines}    firmware:
      bootloader:
        efi:
          secureBoot: false
    memory:
      guest: 1Gi
"
    )
}
