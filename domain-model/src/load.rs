//! Entry points: spec text or file in, `Domain` out.
//!
//! Other crates code against these signatures. The conventions for local runs
//! (relative paths, containerDisk image files, derived uids) are documented in
//! [`crate::resolve`].

use crate::{Domain, Hypervisor, SpecErrors};
use std::path::{Path, PathBuf};

/// Where the containerDisk convention looks for images by default.
pub const DEFAULT_CONTAINER_DISK_DIR: &str = "/var/run/kubevirt/container-disks";

/// How to read a spec.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `--hypervisor`: overrides `spec.hypervisor`.
    pub hypervisor: Option<Hypervisor>,
    /// Relative host paths in the spec resolve against this directory
    /// (the spec file's directory for `load_path`).
    pub base_dir: PathBuf,
    /// Where `containerDisk` volumes are found as local image files.
    pub container_disk_dir: PathBuf,
    /// Enabled feature gates (`--feature-gates`, config file), already merged
    /// with KubeVirt's defaults by maturity: build it with
    /// [`crate::gates::FeatureGates`]. The default is KubeVirt's defaults.
    pub feature_gates: Vec<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            hypervisor: None,
            base_dir: PathBuf::from("."),
            container_disk_dir: PathBuf::from(DEFAULT_CONTAINER_DISK_DIR),
            feature_gates: crate::gates::default_enabled(),
        }
    }
}

/// Parses, validates, defaults and resolves a spec (YAML or JSON), without
/// checking what the chosen hypervisor supports.
pub fn resolve_str(text: &str, opts: &LoadOptions) -> Result<Domain, SpecErrors> {
    let parsed = crate::parse::parse(text)?;
    crate::resolve::resolve(parsed, opts)
}

/// [`resolve_str`] on a file; `opts.base_dir` is replaced by the file's directory.
pub fn resolve_path(path: &Path, opts: &LoadOptions) -> Result<Domain, SpecErrors> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        let mut e = SpecErrors::default();
        e.push(
            path.display().to_string(),
            format!("cannot read spec: {err}"),
        );
        e
    })?;
    let mut opts = opts.clone();
    if let Some(dir) = path.parent() {
        opts.base_dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_path_buf()
        };
    }
    resolve_str(&text, &opts)
}

/// [`resolve_path`] plus the check that `domain.hypervisor` can provide every
/// feature the spec asks for. This is what `validate`, `render` and `run` use.
pub fn load_path(path: &Path, opts: &LoadOptions) -> Result<Domain, SpecErrors> {
    let domain = resolve_path(path, opts)?;
    check_support(&domain)?;
    Ok(domain)
}

/// Every feature of `domain` that `domain.hypervisor` cannot provide, each as
/// an error naming the field, the feature and the hypervisor.
pub fn check_support(domain: &Domain) -> Result<(), SpecErrors> {
    crate::support::check_support(domain)
}
