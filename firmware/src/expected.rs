//! Where firmware is expected when this host has none that fits: the
//! well-known locations of the launcher's pod image, for a dry run.
//!
//! `render` must produce a document on a machine that is not the one the VM
//! will run on (a laptop without SEV firmware, a CI box without Cloud
//! Hypervisor's files). When nothing on this host fits, the dry run renders
//! the paths the pod image ships instead, marked
//! [`Selection::expected_not_found`] / [`ChSelection::expected_not_found`]
//! with the [`NoMatch`] that explains the search as its warning; `run`
//! refuses such a choice ([`crate::Choice::require_present`]).
//!
//! QEMU (libvirt backend): KubeVirt's virt-launcher image keeps its EDK2
//! builds in `/usr/share/OVMF` (virt-launcher's `--ovmf-path` default) under
//! the names of `pkg/virt-launcher/virtwrap/efi`: `OVMF_CODE.fd` +
//! `OVMF_VARS.fd`, `OVMF_CODE.secboot.fd` + `OVMF_VARS.secboot.fd`, SEV and
//! SEV-ES `OVMF_CODE.cc.fd` + `OVMF_VARS.fd`, SEV-SNP `OVMF.amdsev.fd`, TDX
//! `OVMF.inteltdx.fd` (stateless), aarch64 `AAVMF_CODE.fd` + `AAVMF_VARS.fd`.
//! They are described here as QEMU firmware descriptors and matched with the
//! same rules as real ones ([`crate::select`]), so an expected choice is
//! never one the real matcher would refuse.
//!
//! Cloud Hypervisor: the EFI image and TDVF already have fixed paths
//! ([`crate::ChFirmwarePaths`]); only the IGVM file is searched for, and
//! [`IGVM_EXPECTED_NAME`] in the IGVM directory stands in for it (chosen in
//! [`crate::cloud_hypervisor`], which reads this module, never the reverse).

use crate::error::NoMatch;
use crate::search::{Catalog, CatalogEntry};
use crate::select::{select, Requirements, Selection};
use crate::Descriptor;
use std::path::{Path, PathBuf};

/// Where KubeVirt's virt-launcher image installs OVMF/AAVMF.
pub const KUBEVIRT_OVMF_DIR: &str = "/usr/share/OVMF";

/// The IGVM file a dry run names when the IGVM directory has none: the
/// name the launcher's pod image gives its SEV-SNP IGVM file.
pub const IGVM_EXPECTED_NAME: &str = "sev-snp.igvm";

/// The pseudo directory expected descriptors are reported under, so a
/// reader never mistakes them for files on this host.
const SOURCE: &str = "(expected: KubeVirt virt-launcher image)";

/// `(file name, descriptor JSON)`: file names order the candidates like
/// real descriptors, plain images before the confidential ones.
fn descriptors() -> Vec<(&'static str, String)> {
    let dir = KUBEVIRT_OVMF_DIR;
    let split = |code: &str, vars: &str| {
        format!(
            r#"{{"device": "flash", "mode": "split",
                "executable": {{"filename": "{dir}/{code}", "format": "raw"}},
                "nvram-template": {{"filename": "{dir}/{vars}", "format": "raw"}}}}"#
        )
    };
    let memory = |file: &str| format!(r#"{{"device": "memory", "filename": "{dir}/{file}"}}"#);
    let x86 = |description: &str, mapping: String, features: &str| {
        format!(
            r#"{{"description": "{description}", "interface-types": ["uefi"],
                "mapping": {mapping},
                "targets": [{{"architecture": "x86_64", "machines": ["pc-q35-*", "pc-i440fx-*"]}}],
                "features": [{features}], "tags": []}}"#
        )
    };
    vec![
        (
            "10-ovmf-x86_64.json",
            x86(
                "OVMF without Secure Boot",
                split("OVMF_CODE.fd", "OVMF_VARS.fd"),
                r#""acpi-s3""#,
            ),
        ),
        (
            "20-ovmf-x86_64-secboot.json",
            x86(
                "OVMF with Secure Boot and enrolled keys",
                split("OVMF_CODE.secboot.fd", "OVMF_VARS.secboot.fd"),
                r#""acpi-s3", "requires-smm", "secure-boot", "enrolled-keys""#,
            ),
        ),
        (
            "30-ovmf-x86_64-sev.json",
            x86(
                "OVMF for AMD SEV and SEV-ES",
                split("OVMF_CODE.cc.fd", "OVMF_VARS.fd"),
                r#""amd-sev", "amd-sev-es""#,
            ),
        ),
        (
            "40-ovmf-x86_64-amdsev.json",
            x86(
                "OVMF for AMD SEV-SNP, stateless",
                memory("OVMF.amdsev.fd"),
                r#""amd-sev", "amd-sev-es", "amd-sev-snp""#,
            ),
        ),
        (
            "50-ovmf-x86_64-inteltdx.json",
            x86(
                "OVMF for Intel TDX, stateless",
                memory("OVMF.inteltdx.fd"),
                r#""intel-tdx""#,
            ),
        ),
        (
            "60-aavmf-aarch64.json",
            format!(
                r#"{{"description": "AAVMF for aarch64", "interface-types": ["uefi"],
                    "mapping": {},
                    "targets": [{{"architecture": "aarch64", "machines": ["virt-*"]}}],
                    "features": [], "tags": []}}"#,
                split("AAVMF_CODE.fd", "AAVMF_VARS.fd")
            ),
        ),
    ]
}

/// The well-known descriptors as a catalog the matcher can walk.
pub fn catalog() -> Catalog {
    let entries = descriptors()
        .into_iter()
        .map(|(name, json)| CatalogEntry {
            path: Path::new(SOURCE).join(name),
            file_name: name.to_owned(),
            overrides: Vec::new(),
            descriptor: Descriptor::from_json(&json)
                .map_err(|e| format!("invalid descriptor: {e}")),
        })
        .collect();
    Catalog {
        searched: vec![PathBuf::from(SOURCE)],
        entries,
        hidden: Vec::new(),
        problems: Vec::new(),
    }
}

/// The QEMU firmware the pod image would offer for `req`, marked as not
/// found here because of `not_found`; `None` when even the pod image has
/// nothing that fits (the request itself is impossible, e.g. Secure Boot
/// with SEV), so the caller keeps the error.
pub fn qemu(req: &Requirements, not_found: NoMatch) -> Option<Selection> {
    let mut selection = select(&catalog(), req).ok()?;
    selection.reasons = vec![format!(
        "nothing on this host fits; {} is where the pod image ships it",
        selection.executable.display()
    )];
    selection.expected_not_found = Some(not_found);
    Some(selection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_expected_descriptor_parses() {
        for entry in catalog().entries {
            assert!(
                entry.descriptor.is_ok(),
                "{}: {:?}",
                entry.file_name,
                entry.descriptor
            );
        }
    }
}
