//! Images from OCI registries for local runs: the disk of a `containerDisk`
//! and the kernel and initrd of `kernelBoot.container.image`, as KubeVirt's
//! kubelet-pulled containers provide them in a pod.
//!
//! The registry protocol is oci-client's (manifests, image indexes resolved
//! to linux/amd64, bearer-token negotiation, and the digest of every
//! manifest and blob checked while it streams). What is the launcher's:
//!
//! - **The cache** (`--image-cache-dir`), keyed by the image manifest's
//!   digest: `images/sha256-<hex>/rootfs/` is the image's file system, its
//!   layers applied in order with OCI whiteouts; `refs/<sha256 of the
//!   reference>` maps a tag (or an index digest) to the manifest digest it
//!   last resolved to. A layer is unpacked only after its digest was
//!   verified, into a staging directory renamed into place when the whole
//!   image is there, so a cut-off pull never looks complete. One lock file
//!   serializes launchers sharing the cache.
//! - **`imagePullPolicy`**: `IfNotPresent` and `Never` use a cached
//!   reference without any network I/O; `Always` asks the registry for the
//!   manifest and downloads layers only for a digest not in the cache.
//! - **Credentials** from a docker `config.json` (`auths.<registry>.auth`
//!   or `username`/`password`, `registrytoken`): the pod's
//!   `imagePullSecret` (`.dockerconfigjson`) when the spec names one, else
//!   `--registry-auth-file`, `$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json`,
//!   `~/.docker/config.json`. Credential helpers are refused by name.
//! - **Plain HTTP only for loopback registries** (`localhost`, `127.0.0.0/8`,
//!   `::1`), as docker and containerd allow; TLS everywhere else.
//! - **Files inside the image** are looked up without leaving its root:
//!   symbolic links are followed inside the rootfs, never out of it; a
//!   pulled qcow2 that names a backing file is refused (it would make the
//!   VMM open a host file of the image's choosing).

mod auth;
mod unpack;

use domain_model::{Boot, Domain, Generated, ImageFormat, ImageRef, PullPolicy};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciImageManifest;
use oci_client::{Client, Reference};
use std::io::{self, IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Layer media types the launcher unpacks.
const TAR_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
];
const GZIP_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// Where KubeVirt looks for a containerDisk's disk when `path` is not given.
pub const CONTAINER_DISK_DIR: &str = "/disk";

/// An error pulling or using an image; each names the image. Display
/// carries the cause (as every error of the launcher does), so no variant
/// marks it `#[source]` as well.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("image {image:?}: {reason}")]
    Reference { image: String, reason: String },
    #[error("image {image:?}: credentials from {}: {reason}", file.display())]
    Auth {
        image: String,
        file: PathBuf,
        reason: String,
    },
    #[error("image {image:?}: the registry: {source}")]
    Registry {
        image: String,
        source: oci_client::errors::OciDistributionError,
    },
    #[error("image {image:?} is not in the image cache {} and imagePullPolicy is Never", dir.display())]
    NotCached { image: String, dir: PathBuf },
    #[error("image {image:?}: layer {digest} is {media_type}: only tar and tar+gzip layers are unpacked")]
    LayerType {
        image: String,
        digest: String,
        media_type: String,
    },
    #[error("image {image:?}: the image cache ({}): {source}", path.display())]
    Cache {
        image: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("image {image:?} ({digest}): {reason}")]
    InImage {
        image: String,
        digest: String,
        reason: String,
    },
}

/// The launcher's image cache and how it reaches registries.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    /// `--registry-auth-file`: a docker `config.json` to use before the
    /// usual places.
    auth_file: Option<PathBuf>,
    /// Progress on stderr (when it is a terminal).
    progress: bool,
}

/// A pulled image in the cache.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image given.
    pub image: String,
    /// The image manifest's digest (`sha256:...`).
    pub digest: String,
    /// Its unpacked file system.
    pub rootfs: PathBuf,
    /// Bytes of layers downloaded by this pull (0: all from the cache).
    pub downloaded: u64,
    /// Whether the registry was asked at all.
    pub contacted_registry: bool,
}

impl ImageStore {
    pub fn new(dir: PathBuf, auth_file: Option<PathBuf>) -> ImageStore {
        ImageStore {
            dir,
            auth_file,
            progress: io::stderr().is_terminal(),
        }
    }

    /// `/var/cache/ch-launcher/images` for root; else
    /// `$XDG_CACHE_HOME/ch-launcher/images` or `~/.cache/ch-launcher/images`.
    pub fn default_dir() -> PathBuf {
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/cache/ch-launcher/images");
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("ch-launcher/images")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pulls `image` as its pull policy says, or finds it in the cache.
    pub async fn pull(&self, image: &ImageRef) -> Result<Pulled, PullError> {
        let name = image.image.clone();
        let reference: Reference = image.image.parse().map_err(|e| PullError::Reference {
            image: name.clone(),
            reason: format!("not an image reference: {e}"),
        })?;
        let cache_err = |path: &Path| {
            let image = name.clone();
            let path = path.to_path_buf();
            move |source| PullError::Cache {
                image,
                path,
                source,
            }
        };
        self.make_dirs().map_err(cache_err(&self.dir))?;
        let _lock = self.lock().await.map_err(cache_err(&self.dir))?;
        let whole = reference.whole();
        let cached = self.cached_ref(&whole);
        if let Some(digest) = &cached {
            if image.pull_policy != PullPolicy::Always {
                tracing::info!(image = %name, %digest, "image from the cache");
                return Ok(Pulled {
                    image: name,
                    rootfs: self.rootfs(digest),
                    digest: digest.clone(),
                    downloaded: 0,
                    contacted_registry: false,
                });
            }
        } else if image.pull_policy == PullPolicy::Never {
            return Err(PullError::NotCached {
                image: name,
                dir: self.dir.clone(),
            });
        }

        let auth = auth::for_image(&reference, image, self.auth_file.as_deref()).map_err(
            |(file, reason)| PullError::Auth {
                image: name.clone(),
                file,
                reason,
            },
        )?;
        let client = client_for(&reference);
        let registry_err = |source| PullError::Registry {
            image: name.clone(),
            source,
        };
        let (manifest, digest) = client
            .pull_image_manifest(&reference, &auth)
            .await
            .map_err(registry_err)?;
        let mut downloaded = 0;
        if !self.rootfs(&digest).is_dir() {
            let started = Instant::now();
            downloaded = self
                .fetch(&client, &reference, &name, &manifest, &digest)
                .await?;
            tracing::info!(image = %name, %digest, layers = manifest.layers.len(), bytes = downloaded,
                ms = started.elapsed().as_millis() as u64, "image pulled");
        } else {
            tracing::info!(image = %name, %digest, "image up to date in the cache");
        }
        self.write_ref(&whole, &digest)
            .map_err(cache_err(&self.dir.join("refs")))?;
        Ok(Pulled {
            image: name,
            rootfs: self.rootfs(&digest),
            digest,
            downloaded,
            contacted_registry: true,
        })
    }

    fn make_dirs(&self) -> io::Result<()> {
        for sub in ["images", "refs", "tmp"] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        Ok(())
    }

    /// The cache-wide lock, held while one launcher pulls.
    async fn lock(&self) -> io::Result<nix::fcntl::Flock<std::fs::File>> {
        let path = self.dir.join("lock");
        let lock = tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| io::Error::from(e))
        })
        .await
        .map_err(io::Error::other)??;
        // Whoever held the lock before is done: what it left staging is
        // from a pull that was cut off.
        if let Ok(entries) = std::fs::read_dir(self.dir.join("tmp")) {
            for e in entries.flatten() {
                let _ = remove_all(&e.path());
            }
        }
        Ok(lock)
    }

    fn rootfs(&self, digest: &str) -> PathBuf {
        self.dir
            .join("images")
            .join(digest.replace(':', "-"))
            .join("rootfs")
    }

    fn ref_file(&self, whole: &str) -> PathBuf {
        use sha2::Digest as _;
        let key = sha2::Sha256::digest(whole.as_bytes());
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join("refs").join(hex)
    }

    /// The manifest digest a reference last resolved to, if its image is
    /// still in the cache.
    fn cached_ref(&self, whole: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.ref_file(whole)).ok()?;
        let mut lines = text.lines();
        let (Some(r), Some(digest)) = (lines.next(), lines.next()) else {
            return None;
        };
        (r == whole && is_digest(digest) && self.rootfs(digest).is_dir())
            .then(|| digest.to_string())
    }

    fn write_ref(&self, whole: &str, digest: &str) -> io::Result<()> {
        let path = self.ref_file(whole);
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, format!("{whole}\n{digest}\n"))?;
        std::fs::rename(tmp, path)
    }

    /// Downloads and unpacks every layer into a staging directory, then
    /// moves it into place. Returns the bytes downloaded.
    async fn fetch(
        &self,
        client: &Client,
        reference: &Reference,
        name: &str,
        manifest: &OciImageManifest,
        digest: &str,
    ) -> Result<u64, PullError> {
        if !is_digest(digest) {
            return Err(PullError::Reference {
                image: name.to_string(),
                reason: format!("the registry gave the manifest digest {digest:?}"),
            });
        }
        for layer in &manifest.layers {
            let mt = layer.media_type.as_str();
            if !TAR_TYPES.contains(&mt) && !GZIP_TYPES.contains(&mt) {
                return Err(PullError::LayerType {
                    image: name.to_string(),
                    digest: layer.digest.clone(),
                    media_type: layer.media_type.clone(),
                });
            }
        }
        let staging = self.dir.join("tmp").join(digest.replace(':', "-"));
        let cache_err = |path: &Path| {
            let image = name.to_string();
            let path = path.to_path_buf();
            move |source| PullError::Cache {
                image,
                path,
                source,
            }
        };
        let rootfs = staging.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(cache_err(&rootfs))?;
        let total: u64 = manifest
            .layers
            .iter()
            .map(|l| u64::try_from(l.size).unwrap_or(0))
            .sum();
        let mut progress = Progress::new(self.progress, name, total);
        let mut downloaded = 0u64;
        for (i, layer) in manifest.layers.iter().enumerate() {
            let blob = staging.join(format!("layer-{i}"));
            // The stream checks the layer's digest at its end and fails
            // the read if it differs: only verified bytes are unpacked.
            let mut stream = client
                .pull_blob_stream(reference, layer)
                .await
                .map_err(|source| PullError::Registry {
                    image: name.to_string(),
                    source,
                })?;
            let mut file = tokio::fs::File::create(&blob)
                .await
                .map_err(cache_err(&blob))?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| PullError::Registry {
                    image: name.to_string(),
                    source: oci_client::errors::OciDistributionError::IoError(e),
                })?;
                file.write_all(&chunk).await.map_err(cache_err(&blob))?;
                downloaded += chunk.len() as u64;
                progress.update(downloaded, i + 1, manifest.layers.len());
            }
            file.flush().await.map_err(cache_err(&blob))?;
            drop(file);
            let gzip = GZIP_TYPES.contains(&layer.media_type.as_str());
            let (blob2, root2) = (blob.clone(), rootfs.clone());
            tokio::task::spawn_blocking(move || unpack::layer(&blob2, gzip, &root2))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r)
                .map_err(|e| PullError::InImage {
                    image: name.to_string(),
                    digest: digest.to_string(),
                    reason: format!("cannot unpack layer {}: {e}", layer.digest),
                })?;
            std::fs::remove_file(&blob).map_err(cache_err(&blob))?;
        }
        progress.finish(downloaded);
        let manifest_json = serde_json::to_vec_pretty(manifest).unwrap_or_default();
        std::fs::write(staging.join("manifest.json"), manifest_json)
            .map_err(cache_err(&staging))?;
        let dest = self.dir.join("images").join(digest.replace(':', "-"));
        std::fs::rename(&staging, &dest).map_err(cache_err(&dest))?;
        Ok(downloaded)
    }
}

impl Pulled {
    /// A regular file inside the image, symbolic links followed without
    /// leaving its root.
    pub fn file(&self, path: &str) -> Result<PathBuf, PullError> {
        unpack::resolve_in_root(&self.rootfs, path)
            .map_err(|e| self.in_image(format!("{path}: {e}")))
    }

    /// A containerDisk's disk: `path`, else the one file under `/disk/`
    /// (KubeVirt's rule).
    pub fn container_disk(&self, path: Option<&str>) -> Result<PathBuf, PullError> {
        if let Some(path) = path {
            return self.file(path);
        }
        let dir = unpack::resolve_dir_in_root(&self.rootfs, CONTAINER_DISK_DIR)
            .map_err(|e| self.in_image(format!("{CONTAINER_DISK_DIR}: {e} (a containerDisk image holds its disk under /disk/, or the volume names it with `path`)")))?;
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| self.in_image(format!("{CONTAINER_DISK_DIR}: {e}")))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        match files.as_slice() {
            [one] => self.file(&format!("{CONTAINER_DISK_DIR}/{one}")),
            [] => Err(self.in_image(format!(
                "{CONTAINER_DISK_DIR}/ is empty: no disk in this image"
            ))),
            many => Err(self.in_image(format!(
                "{CONTAINER_DISK_DIR}/ holds {} files ({}): name the disk with the volume's `path`",
                many.len(),
                many.join(", ")
            ))),
        }
    }

    fn in_image(&self, reason: String) -> PullError {
        PullError::InImage {
            image: self.image.clone(),
            digest: self.digest.clone(),
            reason,
        }
    }
}

/// Pulls what the Domain names in registries and makes it host files: each
/// `containerDisk` overlay gets its backing disk from the cache, a
/// kernel-boot image its kernel and initrd. The host-preparation phase of a
/// run calls this before any disk is made.
pub async fn materialize(domain: &mut Domain, store: &ImageStore) -> Result<(), PullError> {
    for disk in &mut domain.disks {
        let Some(Generated::ImageOverlay { image }) = &disk.source.generated else {
            continue;
        };
        let pulled = store.pull(image).await?;
        let backing = pulled.container_disk(image.path.as_deref())?;
        let backing_format = pulled_format(&pulled, &backing)?;
        tracing::info!(disk = %disk.name, image = %image.image, digest = %pulled.digest,
            backing = %backing.display(), format = ?backing_format, "containerDisk from the image cache");
        disk.source.generated = Some(Generated::Overlay {
            backing,
            backing_format,
        });
    }
    if let Boot::Kernel {
        kernel,
        initrd,
        image: image @ Some(_),
        ..
    } = &mut domain.boot
    {
        let Some(img) = image.take() else {
            return Ok(());
        };
        let pulled = store.pull(&img).await?;
        *kernel = pulled.file(&kernel.to_string_lossy())?;
        if let Some(i) = initrd {
            *i = pulled.file(&i.to_string_lossy())?;
        }
        tracing::info!(image = %img.image, digest = %pulled.digest, kernel = %kernel.display(),
            "kernel boot from the image cache");
    }
    Ok(())
}

/// The format of a disk from an image, told by its qcow2 magic; a qcow2
/// that names a backing file of its own is refused.
fn pulled_format(pulled: &Pulled, disk: &Path) -> Result<ImageFormat, PullError> {
    let err = |e: io::Error| pulled.in_image(format!("{}: {e}", disk.display()));
    let format = domain_model::resolve::qcow2_or_raw(disk).map_err(err)?;
    if format == ImageFormat::Qcow2 {
        use std::io::Read;
        let mut header = [0u8; 16];
        std::fs::File::open(disk)
            .and_then(|mut f| f.read_exact(&mut header))
            .map_err(err)?;
        let backing_offset = u64::from_be_bytes(header[8..16].try_into().unwrap_or_default());
        if backing_offset != 0 {
            return Err(pulled.in_image(format!(
                "{}: the qcow2 image names a backing file of its own; only self-contained \
                 qcow2 or raw disks are used",
                disk.display()
            )));
        }
    }
    Ok(format)
}

/// A client speaking plain HTTP to loopback registries only.
fn client_for(reference: &Reference) -> Client {
    let registry = reference.resolve_registry().to_string();
    let protocol = if is_loopback_registry(&registry) {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        read_timeout: Some(Duration::from_secs(60)),
        connect_timeout: Some(Duration::from_secs(30)),
        ..ClientConfig::default()
    })
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        registry.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn remove_all(path: &Path) -> io::Result<()> {
    // Unpacked trees may hold read-only directories.
    make_writable(path);
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.is_dir() {
            let _ = std::fs::set_permissions(
                path,
                std::fs::Permissions::from_mode(meta.permissions().mode() | 0o700),
            );
            if let Ok(entries) = std::fs::read_dir(path) {
                for e in entries.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

/// Download progress on a terminal: one line, rewritten at most ten
/// times a second.
struct Progress {
    on: bool,
    name: String,
    total: u64,
    last: Option<Instant>,
}

impl Progress {
    fn new(on: bool, name: &str, total: u64) -> Progress {
        Progress {
            on,
            name: name.to_string(),
            total,
            last: None,
        }
    }

    fn update(&mut self, done: u64, layer: usize, layers: usize) {
        if !self.on
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut err = io::stderr().lock();
        let _ = write!(
            err,
            "\rpulling {}: layer {layer}/{layers}, {:.1} of {:.1} MiB ",
            self.name,
            mib(done),
            mib(self.total)
        );
        let _ = err.flush();
    }

    fn finish(&mut self, done: u64) {
        if self.on {
            let _ = writeln!(
                io::stderr(),
                "\rpulled {}: {:.1} MiB            ",
                self.name,
                done as f64 / (1024.0 * 1024.0)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_registries_are_plain_http() {
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback_registry(r), "{r}");
        }
        for r in [
            "quay.io",
            "registry:5000",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[fd00::1]:5000",
        ] {
            assert!(!is_loopback_registry(r), "{r}");
        }
    }

    #[test]
    fn a_digest_is_sha256_and_64_hex_digits() {
        assert!(is_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_digest(&format!("sha256:{}", "a".repeat(63))));
        assert!(!is_digest(&format!("sha512:{}", "a".repeat(64))));
        assert!(!is_digest("sha256:../../etc"));
    }

    fn pulled(root: &Path) -> Pulled {
        Pulled {
            image: "test".into(),
            digest: "sha256:x".into(),
            rootfs: root.to_path_buf(),
            downloaded: 0,
            contacted_registry: false,
        }
    }

    #[test]
    fn the_disk_is_the_one_file_under_disk_or_the_named_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("disk")).unwrap();
        std::fs::create_dir_all(root.join("images")).unwrap();
        let p = pulled(root);
        assert!(p
            .container_disk(None)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
        std::fs::write(root.join("disk/disk.img"), b"x").unwrap();
        assert_eq!(p.container_disk(None).unwrap(), root.join("disk/disk.img"));
        std::fs::write(root.join("disk/other.img"), b"x").unwrap();
        let e = p.container_disk(None).unwrap_err().to_string();
        assert!(e.contains("2 files") && e.contains("`path`"), "{e}");
        std::fs::write(root.join("images/a.qcow2"), b"x").unwrap();
        assert_eq!(
            p.container_disk(Some("/images/a.qcow2")).unwrap(),
            root.join("images/a.qcow2")
        );
    }

    #[test]
    fn a_pulled_qcow2_with_a_backing_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.qcow2");
        let mut header = b"QFI\xfb\0\0\0\x03".to_vec();
        header.extend_from_slice(&0x200u64.to_be_bytes());
        std::fs::write(&disk, &header).unwrap();
        let e = pulled_format(&pulled(dir.path()), &disk)
            .unwrap_err()
            .to_string();
        assert!(e.contains("backing file of its own"), "{e}");
        let mut header = b"QFI\xfb\0\0\0\x03".to_vec();
        header.extend_from_slice(&0u64.to_be_bytes());
        std::fs::write(&disk, &header).unwrap();
        assert_eq!(
            pulled_format(&pulled(dir.path()), &disk).unwrap(),
            ImageFormat::Qcow2
        );
    }
}
