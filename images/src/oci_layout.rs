//! The test guest as container images, in an OCI image layout directory
//! (`oci-layout`, `index.json`, `blobs/sha256/`) that `skopeo copy oci:DIR:TAG
//! docker://REGISTRY/REPO:TAG` pushes to a registry:
//!
//! - [`write_container_disk`]: a KubeVirt containerDisk, the boot disk at
//!   `/disk/disk.img` owned by uid/gid 107 (qemu in KubeVirt's images),
//!   mode 0440, as KubeVirt's `container-disk-v1alpha` images are built;
//! - [`write_kernel_boot_image`]: a kernel-boot image, the halting PVH guest
//!   at `/boot/tiny-guest` with `/boot/vmlinuz` a symbolic link to it.
//!
//! One tar+gzip layer, a linux/amd64 config, sha256 digests throughout.

use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// KubeVirt's qemu user and group in its images.
pub const QEMU_ID: u64 = 107;

/// A file in an image's single layer.
pub enum ImageFile {
    /// A regular file with its contents, mode, uid and gid.
    File {
        path: String,
        contents: Vec<u8>,
        mode: u32,
        owner: u64,
    },
    /// A directory.
    Dir { path: String, mode: u32, owner: u64 },
    /// A symbolic link to `target`.
    Symlink { path: String, target: String },
}

/// What was written: the layout directory and the digests a registry will
/// report for it.
#[derive(Debug, Clone)]
pub struct OciLayout {
    pub dir: PathBuf,
    pub tag: String,
    /// `sha256:...` of the image manifest.
    pub manifest_digest: String,
    /// `sha256:...` of the compressed layer.
    pub layer_digest: String,
}

fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn put_blob(dir: &Path, data: &[u8]) -> io::Result<String> {
    let digest = sha256(data);
    let hex = digest.trim_start_matches("sha256:");
    std::fs::write(dir.join("blobs/sha256").join(hex), data)?;
    Ok(digest)
}

/// Writes an image of `files` as `dir` (an OCI layout; replaced if present)
/// tagged `tag`.
pub fn write_oci_layout(dir: &Path, tag: &str, files: &[ImageFile]) -> io::Result<OciLayout> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    let mut builder = tar::Builder::new(Vec::new());
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        match f {
            ImageFile::File {
                path,
                contents,
                mode,
                owner,
            } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*owner);
                h.set_gid(*owner);
                h.set_size(contents.len() as u64);
                builder.append_data(&mut h, path, contents.as_slice())?;
            }
            ImageFile::Dir { path, mode, owner } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_uid(*owner);
                h.set_gid(*owner);
                h.set_size(0);
                builder.append_data(&mut h, path, io::empty())?;
            }
            ImageFile::Symlink { path, target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                builder.append_link(&mut h, path, target)?;
            }
        }
    }
    let tar = builder.into_inner()?;
    let diff_id = sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    let layer = gz.finish()?;
    let layer_digest = put_blob(dir, &layer)?;
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))?;
    let config_digest = put_blob(dir, &config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": LAYER_TYPE, "digest": layer_digest, "size": layer.len()}],
    }))?;
    let manifest_digest = put_blob(dir, &manifest)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(OciLayout {
        dir: dir.to_path_buf(),
        tag: tag.to_string(),
        manifest_digest,
        layer_digest,
    })
}

/// The boot disk of `variant` as a KubeVirt containerDisk image in `dir`.
/// Returns the layout and the disk's bytes (for comparing with a pulled
/// or cached copy).
pub fn write_container_disk(
    dir: &Path,
    tag: &str,
    variant: crate::Variant,
) -> io::Result<(OciLayout, Vec<u8>)> {
    let scratch = dir.with_extension("disk.tmp");
    crate::write_boot_disk_of(&scratch, variant)?;
    let disk = std::fs::read(&scratch);
    let _ = std::fs::remove_file(&scratch);
    let disk = disk?;
    let layout = write_oci_layout(
        dir,
        tag,
        &[
            ImageFile::Dir {
                path: "disk/".into(),
                mode: 0o555,
                owner: QEMU_ID,
            },
            ImageFile::File {
                path: "disk/disk.img".into(),
                contents: disk.clone(),
                mode: 0o440,
                owner: QEMU_ID,
            },
        ],
    )?;
    Ok((layout, disk))
}

/// The halting PVH guest as a kernel-boot image in `dir`:
/// `/boot/tiny-guest`, and `/boot/vmlinuz` linking to it.
pub fn write_kernel_boot_image(dir: &Path, tag: &str) -> io::Result<OciLayout> {
    let kernel = std::fs::read(crate::Variant::Halting.path())?;
    write_oci_layout(
        dir,
        tag,
        &[
            ImageFile::Dir {
                path: "boot/".into(),
                mode: 0o755,
                owner: 0,
            },
            ImageFile::File {
                path: "boot/tiny-guest".into(),
                contents: kernel,
                mode: 0o444,
                owner: 0,
            },
            ImageFile::Symlink {
                path: "boot/vmlinuz".into(),
                target: "tiny-guest".into(),
            },
        ],
    )
}
