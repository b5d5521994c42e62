//! Applying an image layer to a root file system, and finding files in it
//! without leaving it.

use std::collections::HashSet;
use std::io;
use std::path::{Component, Path, PathBuf};

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";
/// Symbolic links followed at most, as the kernel's ELOOP limit.
const MAX_LINKS: usize = 40;

/// Unpacks the (verified) layer `blob` onto `root` with OCI whiteouts:
/// `.wh.NAME` removes NAME of a lower layer, `.wh..wh..opq` empties its
/// directory of what lower layers put there. Device nodes and FIFOs are
/// skipped (a disk image never needs them); entries that would land
/// outside `root` are refused by the tar crate's `unpack_in`.
pub fn layer(blob: &Path, gzip: bool, root: &Path) -> io::Result<()> {
    let file = io::BufReader::new(std::fs::File::open(blob)?);
    let reader: Box<dyn io::Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let canonical_root = root.canonicalize()?;
    // What this layer made: an opaque whiteout keeps it.
    let mut made: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = normalize(&entry.path()?)?;
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == OPAQUE {
            let dir = inside(&canonical_root, &root.join(&parent))?;
            if let Some(dir) = dir {
                for e in std::fs::read_dir(&dir)?.flatten() {
                    let rel = parent.join(e.file_name());
                    if !made.contains(&rel) {
                        remove(&e.path())?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if let Some(dir) = inside(&canonical_root, &root.join(&parent))? {
                let target = dir.join(hidden);
                if std::fs::symlink_metadata(&target).is_ok() {
                    remove(&target)?;
                }
            }
            continue;
        }
        use tar::EntryType;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        match entry.header().entry_type() {
            EntryType::Block | EntryType::Char | EntryType::Fifo => continue,
            _ => {}
        }
        // A file replacing a directory of a lower layer, or the reverse.
        let dest = root.join(&path);
        if let Ok(meta) = std::fs::symlink_metadata(&dest) {
            let new_is_dir = entry.header().entry_type() == EntryType::Directory;
            if meta.is_dir() != new_is_dir
                && inside(&canonical_root, &root.join(&parent))?.is_some()
            {
                remove(&dest)?;
            }
        }
        if matches!(
            entry.header().entry_type(),
            EntryType::Regular | EntryType::Continuous
        ) {
            write_sparse(&mut entry, &canonical_root, &path, mode & 0o777)?;
        } else {
            entry.unpack_in(root)?;
        }
        made.insert(path);
    }
    Ok(())
}

/// Zero blocks a regular file skips, so a raw disk image stays sparse.
const SPARSE_BLOCK: usize = 64 << 10;

/// Writes a regular file entry at `path` under `root` (canonical), holes
/// where its contents are zero: a raw disk of many GiB in a small layer
/// takes only its data on the host. Parent directories are made inside
/// the root; one that leads out of it is refused, as is a final symbolic
/// link (the file is opened with O_NOFOLLOW). Modes keep their
/// permission bits only.
fn write_sparse(entry: &mut impl io::Read, root: &Path, path: &Path, mode: u32) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut dir = root.to_path_buf();
    for c in path.parent().unwrap_or(Path::new("")).components() {
        let next = dir.join(c);
        match std::fs::symlink_metadata(&next) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(&next)?,
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        dir = inside(root, &next)?.ok_or_else(|| io::Error::other("vanished"))?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("an entry without a name"))?;
    let dest = dir.join(name);
    if std::fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_file()) {
        remove(&dest)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&dest)?;
    let mut buf = vec![0u8; SPARSE_BLOCK];
    let mut len = 0u64;
    loop {
        // Fill a whole block (the decoder returns short reads).
        let mut n = 0;
        while n < buf.len() {
            match entry.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|&b| b == 0) {
            file.seek(SeekFrom::Current(n as i64))?;
        } else {
            file.write_all(&buf[..n])?;
        }
        len += n as u64;
        if n < buf.len() {
            break;
        }
    }
    file.set_len(len)?;
    // The image's mode, without set-id bits (nothing in the cache runs).
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
}

/// The entry's path relative to the root: `./`, `/` dropped, `..` refused.
fn normalize(p: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::other(format!(
                    "layer entry {} leaves the image's root",
                    p.display()
                )))
            }
        }
    }
    Ok(out)
}

/// `dir` if it exists and, symbolic links resolved, is inside `root`.
fn inside(root: &Path, dir: &Path) -> io::Result<Option<PathBuf>> {
    match dir.canonicalize() {
        Ok(c) if c.starts_with(root) => Ok(Some(c)),
        Ok(c) => Err(io::Error::other(format!(
            "{} leads out of the image's root (to {})",
            dir.display(),
            c.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn remove(path: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Resolves `path` (absolute, inside the image) under `root` as the
/// image's own view would: symbolic links followed, absolute ones relative
/// to `root`, `..` never above it. Returns the host path of what it names.
fn resolve(root: &Path, path: &str) -> io::Result<PathBuf> {
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut at: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                at.pop();
                continue;
            }
            _ => {}
        }
        let host = at
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&c);
        let meta = std::fs::symlink_metadata(&host)?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(io::Error::other("too many symbolic links"));
            }
            let target = std::fs::read_link(&host)?;
            let target = target.to_string_lossy();
            if target.starts_with('/') {
                at.clear();
            }
            pending.extend(
                target
                    .split('/')
                    .filter(|c| !c.is_empty())
                    .rev()
                    .map(str::to_string),
            );
        } else {
            at.push(c);
        }
    }
    Ok(at.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// A regular file at `path` inside the image rooted at `root`.
pub fn resolve_in_root(root: &Path, path: &str) -> io::Result<PathBuf> {
    let host = resolve(root, path)?;
    let meta = std::fs::metadata(&host)?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(host)
}

/// A directory at `path` inside the image rooted at `root`.
pub fn resolve_dir_in_root(root: &Path, path: &str) -> io::Result<PathBuf> {
    let host = resolve(root, path)?;
    if !std::fs::metadata(&host)?.is_dir() {
        return Err(io::Error::other("not a directory"));
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of (path, contents or symlink target, kind) entries.
    fn tar_of(entries: &[(&str, &str, tar::EntryType)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            match kind {
                tar::EntryType::Symlink => {
                    h.set_size(0);
                    b.append_link(&mut h, path, data).unwrap();
                }
                tar::EntryType::Directory => {
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, path, io::empty()).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_bytes()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn apply(
        root: &Path,
        blob_dir: &Path,
        entries: &[(&str, &str, tar::EntryType)],
    ) -> io::Result<()> {
        let blob = blob_dir.join("layer");
        std::fs::write(&blob, tar_of(entries)).unwrap();
        layer(&blob, false, root)
    }

    use tar::EntryType::{Directory as D, Regular as F, Symlink as L};

    #[test]
    fn whiteouts_remove_and_opaque_directories_empty_lower_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        std::fs::create_dir(&root).unwrap();
        apply(
            &root,
            tmp.path(),
            &[
                ("disk/", "", D),
                ("disk/old.img", "old", F),
                ("etc/", "", D),
                ("etc/a", "a", F),
                ("etc/b", "b", F),
            ],
        )
        .unwrap();
        apply(
            &root,
            tmp.path(),
            &[
                ("disk/.wh.old.img", "", F),
                ("disk/disk.img", "new", F),
                ("etc/c", "c", F),
                ("etc/.wh..wh..opq", "", F),
            ],
        )
        .unwrap();
        assert!(!root.join("disk/old.img").exists());
        assert_eq!(
            std::fs::read_to_string(root.join("disk/disk.img")).unwrap(),
            "new"
        );
        // The opaque marker came after etc/c in the same layer: c stays.
        assert!(!root.join("etc/a").exists() && !root.join("etc/b").exists());
        assert!(root.join("etc/c").exists());
    }

    #[test]
    fn zero_blocks_of_a_file_become_holes() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        std::fs::create_dir(&root).unwrap();
        let mut disk = vec![0u8; 8 << 20];
        disk[..4].copy_from_slice(b"DATA");
        let last = disk.len() - 1;
        disk[last] = 1;
        let text = String::from_utf8(disk.clone()).unwrap();
        apply(&root, tmp.path(), &[("disk/disk.img", &text, F)]).unwrap();
        let path = root.join("disk/disk.img");
        assert_eq!(std::fs::read(&path).unwrap(), disk);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 8 << 20);
        // Two 64 KiB blocks hold data; the rest are holes.
        assert!(
            meta.blocks() * 512 <= 256 << 10,
            "{} blocks allocated",
            meta.blocks()
        );
        assert_eq!(meta.mode() & 0o7777, 0o644);
    }

    #[test]
    fn a_whiteout_through_a_symlink_out_of_the_root_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("precious"), "keep").unwrap();
        apply(
            &root,
            tmp.path(),
            &[("escape", outside.to_str().unwrap(), L)],
        )
        .unwrap();
        let e = apply(&root, tmp.path(), &[("escape/.wh.precious", "", F)]).unwrap_err();
        assert!(e.to_string().contains("out of the image's root"), "{e}");
        assert!(outside.join("precious").exists());
        // Nor does unpacking write through it.
        assert!(apply(&root, tmp.path(), &[("escape/new", "x", F)]).is_err());
        assert!(!outside.join("new").exists());
    }

    #[test]
    fn lookups_follow_symlinks_inside_the_image_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.1"), "k").unwrap();
        std::fs::write(tmp.path().join("host-secret"), "s").unwrap();
        std::os::unix::fs::symlink("vmlinuz-6.1", root.join("boot/vmlinuz")).unwrap();
        std::os::unix::fs::symlink("/boot/vmlinuz", root.join("kernel")).unwrap();
        std::os::unix::fs::symlink("../../../../host-secret", root.join("boot/up")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("host-secret"), root.join("abs")).unwrap();
        assert_eq!(
            resolve_in_root(&root, "/boot/vmlinuz").unwrap(),
            root.join("boot/vmlinuz-6.1")
        );
        assert_eq!(
            resolve_in_root(&root, "/kernel").unwrap(),
            root.join("boot/vmlinuz-6.1")
        );
        // `..` stops at the image's root; an absolute link is the image's.
        assert!(resolve_in_root(&root, "/boot/up").is_err());
        assert!(resolve_in_root(&root, "/abs").is_err());
        assert!(resolve_in_root(&root, "/boot")
            .unwrap_err()
            .to_string()
            .contains("regular file"));
    }
}
