//! Entry points: spec text or file in, `Domain` out.
//!
//! Other crates code against these signatures. The conventions for local runs
//! (relative paths, containerDisk image files, derived uids) are documented in
//! [`crate::resolve`].

use crate::{Domain, Hypervisor, SpecErrors};
use std::path::{Path, PathBuf};

/// Where the containerDisk convention looks for images by default.
pub const DEFAULT_CONTAINER_DISK_DIR: &str = "/var/run/kubevirt/container-disks";
/// Where virt-controller mounts what a VM pod's volumes hold:
/// `config-map/<volume>`, `secret/<volume>`, `downwardapi/<volume>`,
/// `vmi-disks/<volume>/disk.img` (filesystem PVCs and DataVolumes).
pub const DEFAULT_MOUNTS_DIR: &str = "/var/run/kubevirt-private";
/// Where Kubernetes mounts the pod's service account token.
pub const DEFAULT_SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// KubeVirt's ephemeral disk directory in a virt-launcher pod.
pub const DEFAULT_EPHEMERAL_DISK_DIR: &str = "/var/run/kubevirt-ephemeral-disks";

/// Where a `containerDisk` volume's image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerDiskLayout {
    /// `<dir>/<volume name>/disk.img` (raw) or `disk.qcow2`: an image put
    /// there by hand for a local run.
    Local,
    /// KubeVirt's in a VM pod: `<dir>/disk_<N>.img`, N the volume's index in
    /// `spec.volumes`, raw or qcow2 (told apart by the qcow2 magic: the
    /// image is the container's, which no guest writes).
    Pod,
}

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
    /// How images are laid out in `container_disk_dir`.
    pub container_disk_layout: ContainerDiskLayout,
    /// Where the launcher makes `emptyDisk` and cloud-init images
    /// (`<dir>/<uid>/<volume>.img`), as KubeVirt's ephemeral disk directory.
    pub ephemeral_disk_dir: PathBuf,
    /// The pod's volume mounts ([`DEFAULT_MOUNTS_DIR`]'s layout): Secrets
    /// (cloud-init `secretRef` included), ConfigMaps, downward API files and
    /// filesystem PVCs.
    pub mounts_dir: PathBuf,
    /// The service account token's directory.
    pub service_account_dir: PathBuf,
    /// Block-mode PVCs are the devices `/dev/<volume>` (only in a pod: on a
    /// host, `/dev/<name>` may be any disk).
    pub block_pvcs: bool,
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
            container_disk_layout: ContainerDiskLayout::Local,
            ephemeral_disk_dir: PathBuf::from(DEFAULT_EPHEMERAL_DISK_DIR),
            mounts_dir: PathBuf::from(DEFAULT_MOUNTS_DIR),
            service_account_dir: PathBuf::from(DEFAULT_SERVICE_ACCOUNT_DIR),
            block_pvcs: false,
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

/// [`resolve_str`] plus the check that `domain.hypervisor` can provide every
/// feature the spec asks for, in one pass: type errors, resolution errors and
/// what the hypervisor refuses come back together. Support is checked on
/// whatever resolved; a section that could not be read or resolved is left
/// out of that check rather than guessed at.
pub fn load_str(text: &str, opts: &LoadOptions) -> Result<Domain, SpecErrors> {
    let parsed = crate::parse::parse(text)?;
    let left_out = parsed.left_out.clone();
    let (partial, mut errors) = crate::resolve::resolve_partial(parsed, opts);
    if let Err(refused) = crate::support::check_support(partial.domain()) {
        for e in refused.0 {
            let consequence = left_out
                .iter()
                .any(|t| crate::parse::is_at_or_under(&e.path, t));
            if !consequence && !errors.0.contains(&e) {
                errors.0.push(e);
            }
        }
    }
    match partial {
        crate::resolve::Partial::Complete(d) if errors.is_empty() => Ok(d),
        _ => Err(crate::resolve::non_empty(errors)),
    }
}

fn read(path: &Path, opts: &LoadOptions) -> Result<(String, LoadOptions), SpecErrors> {
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
    Ok((text, opts))
}

/// [`resolve_str`] on a file; `opts.base_dir` is replaced by the file's directory.
pub fn resolve_path(path: &Path, opts: &LoadOptions) -> Result<Domain, SpecErrors> {
    let (text, opts) = read(path, opts)?;
    resolve_str(&text, &opts)
}

/// [`load_str`] on a file: what `validate`, `render` and `run` use.
pub fn load_path(path: &Path, opts: &LoadOptions) -> Result<Domain, SpecErrors> {
    let (text, opts) = read(path, opts)?;
    load_str(&text, &opts)
}
