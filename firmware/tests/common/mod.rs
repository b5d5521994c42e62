//! Shared test helpers: Domains with a given boot/launch security, and
//! synthesized descriptor trees on disk.

#![allow(dead_code)]

use domain_model::fixtures;
pub use domain_model::fixtures::{efi_boot as efi, sev, snp};
use domain_model::{Boot, Domain, Hypervisor};
use std::path::{Path, PathBuf};

pub fn domain(hypervisor: Hypervisor, boot: Boot) -> Domain {
    fixtures::domain()
        .with_hypervisor(hypervisor)
        .with_boot(boot)
}

pub fn kernel_boot() -> Boot {
    fixtures::kernel_boot("/images/vmlinuz")
}

/// A descriptor's JSON text. `mapping` is the raw JSON of the mapping object.
pub fn descriptor(mapping: &str, machines: &[&str], features: &[&str]) -> String {
    descriptor_for("uefi", "x86_64", mapping, machines, features)
}

pub fn descriptor_for(
    interface: &str,
    arch: &str,
    mapping: &str,
    machines: &[&str],
    features: &[&str],
) -> String {
    let machines: Vec<String> = machines.iter().map(|m| format!("{m:?}")).collect();
    let features: Vec<String> = features.iter().map(|f| format!("{f:?}")).collect();
    format!(
        r#"{{"description": "test", "interface-types": [{interface:?}],
            "mapping": {mapping},
            "targets": [{{"architecture": {arch:?}, "machines": [{}]}}],
            "features": [{}], "tags": []}}"#,
        machines.join(", "),
        features.join(", ")
    )
}

pub fn split(code: &Path, vars: &Path) -> String {
    format!(
        r#"{{"device": "flash", "mode": "split",
             "executable": {{"filename": {:?}, "format": "raw"}},
             "nvram-template": {{"filename": {:?}, "format": "raw"}}}}"#,
        code.display().to_string(),
        vars.display().to_string()
    )
}

pub fn stateless_flash(code: &Path) -> String {
    format!(
        r#"{{"device": "flash", "mode": "stateless",
             "executable": {{"filename": {:?}, "format": "raw"}}}}"#,
        code.display().to_string()
    )
}

pub fn memory(file: &Path) -> String {
    format!(
        r#"{{"device": "memory", "filename": {:?}}}"#,
        file.display().to_string()
    )
}

/// A temporary host: `share/`, `etc/`, `user/` descriptor directories and an
/// `images/` directory whose files exist.
pub struct Tree {
    pub root: tempfile::TempDir,
}

impl Tree {
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        for d in ["share", "etc", "user", "images"] {
            std::fs::create_dir_all(root.path().join(d)).expect("mkdir");
        }
        Tree { root }
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// An image file that exists.
    pub fn image(&self, name: &str) -> PathBuf {
        let p = self.dir("images").join(name);
        std::fs::write(&p, b"firmware").expect("write image");
        p
    }

    pub fn write(&self, dir: &str, name: &str, text: &str) {
        std::fs::write(self.dir(dir).join(name), text).expect("write descriptor");
    }

    pub fn paths(&self) -> firmware::SearchPaths {
        firmware::SearchPaths::new(vec![self.dir("user"), self.dir("etc"), self.dir("share")])
    }

    pub fn catalog(&self) -> firmware::Catalog {
        firmware::Catalog::load(&self.paths())
    }
}
