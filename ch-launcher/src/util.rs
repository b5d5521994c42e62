//! Small helpers several modules share: the one way to wait for an optional
//! deadline in a `select!`, the one way to clear a stale socket file, and the
//! one way to start a per-run file afresh.

use std::io;
use std::path::{Path, PathBuf};
use tokio::time::Instant;

/// Sleeps until `deadline`; never resolves without one, so a `select!` arm
/// with no deadline set simply never fires.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Removes the socket file an earlier process left at `path`, so a new bind
/// there succeeds. A missing file is fine; anything at `path` that is not a
/// socket is left alone (and the bind then reports it), because it is not
/// ours to delete.
/// Binds a unix socket at `path` with permission bits `mode`, replacing a
/// stale socket file left by an earlier launcher. Every socket the launcher
/// listens on is made here, so none keeps the mode the umask gave it.
pub fn bind_socket(path: &Path, mode: u32) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let annotate = |err: io::Error, what: &str| {
        io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
    };
    remove_stale_socket(path).map_err(|e| annotate(e, "removing stale socket"))?;
    // Between bind() and chmod() the socket has the umask's mode. Only the
    // users `--console-socket-mode` admits can pass the VM directory (see
    // `runner::vm_dir_mode`), so nobody else can connect in that window.
    // (Not a umask change: it is process-wide and would race other threads.)
    let listener =
        std::os::unix::net::UnixListener::bind(path).map_err(|e| annotate(e, "binding socket"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| annotate(e, "setting socket mode"))?;
    Ok(listener)
}

/// [`bind_socket`] as a tokio listener (call within the runtime).
pub fn bind_tokio_socket(path: &Path, mode: u32) -> io::Result<tokio::net::UnixListener> {
    let listener = bind_socket(path, mode)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

pub fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match std::fs::remove_file(path) {
            Ok(()) => {
                tracing::debug!(path = %path.display(), "removed a stale socket");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        },
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes a socket this process bound, once it is no longer served; a
/// failure is only worth a warning.
pub fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove socket");
        }
    }
}

/// A disk image the launcher could not create.
#[derive(Debug, thiserror::Error)]
#[error("{field}: cannot {action}: {cause}")]
pub struct DiskError {
    /// The volume's spec field.
    pub field: String,
    pub path: std::path::PathBuf,
    /// What failed: `create <path>`, or `size <path> to N bytes`.
    pub action: String,
    pub cause: io::Error,
}

/// Creates every disk image the spec asked to be created when missing
/// (`hostDisk.type: DiskOrCreate`) as a sparse file of its capacity; an
/// existing file is left as it is. Errors name the volume's field.
pub fn create_missing_disks(domain: &domain_model::Domain) -> Result<(), DiskError> {
    for disk in &domain.disks {
        if let Some(generated) = &disk.source.generated {
            make_generated(&disk.source.path, generated).map_err(|cause| DiskError {
                field: disk.source.spec_path.clone(),
                path: disk.source.path.clone(),
                action: format!("make {}", disk.source.path.display()),
                cause,
            })?;
            continue;
        }
        let Some(capacity) = disk.source.create_with_capacity else {
            continue;
        };
        let path = &disk.source.path;
        let fail = |action: String| {
            let field = disk.source.spec_path.clone();
            let path = path.clone();
            move |cause| DiskError {
                field,
                path,
                action,
                cause,
            }
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(file) => file
                .set_len(capacity)
                .map_err(fail(format!("size {} to {capacity} bytes", path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail(format!("create {}", path.display()))(e)),
        }
    }
    Ok(())
}

/// The launcher-made images of a VM (`emptyDisk`, cloud-init), removed with
/// their directory when this is dropped: on every way out of a run.
pub struct GeneratedDisks(Vec<PathBuf>);

impl GeneratedDisks {
    pub fn of(domain: &domain_model::Domain) -> GeneratedDisks {
        GeneratedDisks(
            domain
                .disks
                .iter()
                .filter(|d| d.source.generated.is_some())
                .map(|d| d.source.path.clone())
                .collect(),
        )
    }
}

impl Drop for GeneratedDisks {
    fn drop(&mut self) {
        for path in &self.0 {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e,
                        "cannot remove a disk image the launcher made");
                }
            }
            // The per-VM directory goes once it is empty.
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// Makes a launcher-made image afresh (a previous run's is replaced).
fn make_generated(path: &Path, generated: &domain_model::Generated) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    // 0600: cloud-init data often holds passwords and keys. Readable too:
    // the ISO writer reads back what it wrote.
    let mut file = create_fresh_with(path, 0o600)?;
    match generated {
        domain_model::Generated::Empty { capacity } => file.set_len(*capacity),
        domain_model::Generated::CloudInit { label, files } => write_iso(&mut file, label, files),
        domain_model::Generated::IsoFromDir {
            dir,
            label,
            optional,
        } => {
            let files = match dir_files(dir) {
                Ok(files) => files,
                Err(e) if *optional && e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot read {}: {e}", dir.display()),
                    ))
                }
            };
            write_iso_files(&mut file, label, &files)
        }
        // Into the 0600 file just made: qemu-img keeps its mode.
        domain_model::Generated::Overlay {
            backing,
            backing_format,
        } => {
            drop(file);
            overlay(path, backing, *backing_format)
        }
        // The host-preparation phase pulls the image first (oci::materialize).
        domain_model::Generated::ImageOverlay { image } => Err(io::Error::other(format!(
            "image {} was not pulled before its overlay was made",
            image.image
        ))),
    }
}

/// `qemu-img create -f qcow2 -b BACKING -F FORMAT PATH`: the backing
/// format goes into the header, so no reader has to probe the image.
fn overlay(path: &Path, backing: &Path, format: domain_model::ImageFormat) -> io::Result<()> {
    let format = match format {
        domain_model::ImageFormat::Raw => "raw",
        domain_model::ImageFormat::Qcow2 => "qcow2",
    };
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(backing)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run qemu-img: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "qemu-img create: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// An ISO 9660 image with Rock Ridge and Joliet names (what KubeVirt's
/// `xorrisofs -joliet -rock` makes), volume id `label`.
fn write_iso(
    out: &mut std::fs::File,
    label: &str,
    files: &[domain_model::GeneratedFile],
) -> io::Result<()> {
    let files: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|f| (f.path.clone(), f.contents.as_bytes().to_vec()))
        .collect();
    write_iso_files(out, label, &files)
}

/// The files under `dir`, `/`-separated paths relative to it. Kubernetes'
/// own entries (`..data`, `..2026_...`: the atomic-update machinery) are
/// skipped; the symlinks into them are followed.
fn dir_files(dir: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) -> io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("..") {
                continue;
            }
            let path = e.path();
            let rel = format!("{prefix}{name}");
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                walk(&path, &format!("{rel}/"), out)?;
            } else if meta.is_file() {
                out.push((rel, std::fs::read(&path)?));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    Ok(out)
}

fn write_iso_files(
    out: &mut std::fs::File,
    label: &str,
    files: &[(String, Vec<u8>)],
) -> io::Result<()> {
    use hadris_iso::read::PathSeparator;
    use hadris_iso::write::options::{CreationFeatures, IsoFormatOptions};
    use hadris_iso::write::{File as IsoFile, InputFiles, IsoImageWriter};
    use std::sync::Arc;

    /// Adds `contents` at `path` (`/`-separated) under `tree`.
    fn insert(tree: &mut Vec<IsoFile>, path: &str, contents: &[u8]) {
        match path.split_once('/') {
            None => tree.push(IsoFile::File {
                name: Arc::new(path.to_string()),
                contents: contents.to_vec(),
            }),
            Some((dir, rest)) => {
                let at = tree.iter().position(
                    |f| matches!(f, IsoFile::Directory { name, .. } if name.as_str() == dir),
                );
                let at = at.unwrap_or_else(|| {
                    tree.push(IsoFile::Directory {
                        name: Arc::new(dir.to_string()),
                        children: Vec::new(),
                    });
                    tree.len() - 1
                });
                if let IsoFile::Directory { children, .. } = &mut tree[at] {
                    insert(children, rest, contents);
                }
            }
        }
    }
    let mut tree = Vec::new();
    for (path, contents) in files {
        insert(&mut tree, path, contents);
    }
    let options = IsoFormatOptions {
        volume_name: label.to_string(),
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        features: CreationFeatures::extensions(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: Some("CH-LAUNCHER".to_string()),
        // cloud-init matches the volume id as given (`cidata`, `config-2`).
        strict_charset: false,
    };
    let input = InputFiles {
        path_separator: PathSeparator::ForwardSlash,
        files: tree,
    };
    IsoImageWriter::create(out, input, options)
        .map(|_| ())
        .map_err(|e| io::Error::other(format!("cannot write the ISO 9660 image: {e:?}")))
}

/// In a child between fork and exec: SIGKILL when the launcher (`parent`)
/// dies, and fail if it already has (before the request took effect). Every
/// helper process the launcher starts (the VMM, virtiofsd) calls it so that
/// none outlives a SIGKILLed launcher.
///
/// # Safety
/// Only for a `pre_exec` closure: it makes async-signal-safe calls (prctl,
/// getppid) and allocates nothing.
pub unsafe fn die_with_parent(parent: u32) -> io::Result<()> {
    // SAFETY: plain syscalls on this (child) process.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() as u32 != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Creates `path` anew, removing what a previous run left there.
///
/// Not `File::create`: truncating a file that was itself truncated and
/// rewritten is slow on ext4. Closing such a file starts its writeback
/// (`auto_da_alloc`), and the next truncation waits for that I/O: 0.1 to
/// 0.3 ms on this project's CI disk, on the launcher's critical path. A new
/// inode costs about 10 us.
pub fn create_fresh(path: &Path) -> io::Result<std::fs::File> {
    create_fresh_with(path, 0o666)
}

/// [`create_fresh`], read-write, with `mode` (before the umask).
pub fn create_fresh_with(path: &Path, mode: u32) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

/// `time` as RFC 3339 in UTC, with `fraction_digits` (0, 3, 6 or 9) of the
/// second: what Kubernetes timestamps (0) and KubeVirt's logs (6) use.
/// Written here because it is the only date arithmetic the launcher needs.
pub fn rfc3339(time: std::time::SystemTime, fraction_digits: u32) -> String {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    if fraction_digits > 0 {
        let digits = fraction_digits.min(9);
        let fraction = since.subsec_nanos() / 10u32.pow(9 - digits);
        out.push_str(&format!(".{fraction:0width$}", width = digits as usize));
    }
    out.push('Z');
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_matches_known_instants() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(super::rfc3339(UNIX_EPOCH, 0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.789012.
        let t = UNIX_EPOCH + Duration::new(951_827_696, 789_012_345);
        assert_eq!(super::rfc3339(t, 0), "2000-02-29T12:34:56Z");
        assert_eq!(super::rfc3339(t, 6), "2000-02-29T12:34:56.789012Z");
        // 2026-12-03T00:00:00Z.
        let t = UNIX_EPOCH + Duration::from_secs(1_796_256_000);
        assert_eq!(super::rfc3339(t, 3), "2026-12-03T00:00:00.000Z");
    }

    use super::*;

    /// Every level of `e`'s `source()` chain, as a chain printer shows it.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut next = e.source();
        while let Some(cause) = next {
            out.push_str(&format!(": {cause}"));
            next = cause.source();
        }
        out
    }

    /// The launcher's errors carry their cause in their text; none also
    /// hands it out as `source()`, so walking a chain says it once.
    #[test]
    fn no_error_prints_its_cause_twice_in_a_chain() {
        let io = || io::Error::other("DISK ON FIRE");
        let path = std::path::PathBuf::from("/x");
        let errors: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(crate::ch::process::ProcessError::Prepare {
                path: path.clone(),
                cause: io(),
            }),
            Box::new(crate::control::ClientError::Connect {
                path: path.clone(),
                cause: io(),
            }),
            Box::new(crate::libvirt::rpc::RpcError::from(io())),
            Box::new(crate::runner::RunError::VmDir {
                path: path.clone(),
                cause: io(),
            }),
            Box::new(crate::host::HostError::Read {
                path: path.clone(),
                cause: io(),
            }),
            Box::new(DiskError {
                field: "spec.volumes[0]".into(),
                path,
                action: "create /x".into(),
                cause: io(),
            }),
        ];
        for e in errors {
            let text = chain(e.as_ref());
            assert_eq!(text.matches("DISK ON FIRE").count(), 1, "{text}");
        }
    }

    #[test]
    fn missing_disk_or_create_images_are_created_sparse_and_existing_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.img");
        let kept = dir.path().join("kept.img");
        std::fs::write(&kept, b"data").unwrap();
        let mut domain = domain_model::fixtures::domain();
        for (i, path) in [&new, &kept].into_iter().enumerate() {
            let mut disk = domain_model::fixtures::disk(i, &format!("d{i}"), path);
            disk.source.create_with_capacity = Some(1 << 20);
            domain.disks.push(disk);
        }
        create_missing_disks(&domain).unwrap();
        assert_eq!(std::fs::metadata(&new).unwrap().len(), 1 << 20);
        assert_eq!(std::fs::read(&kept).unwrap(), b"data");
    }

    #[test]
    fn a_disk_that_cannot_be_created_names_its_volume() {
        let mut domain = domain_model::fixtures::domain();
        let mut disk =
            domain_model::fixtures::disk(0, "d0", std::path::Path::new("/nonexistent/dir/x.img"));
        disk.source.create_with_capacity = Some(1);
        domain.disks.push(disk);
        let err = create_missing_disks(&domain).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&domain.disks[0].source.spec_path),
            "{err}"
        );
    }

    #[test]
    fn a_stale_socket_is_removed_and_other_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        assert!(socket.exists());
        remove_stale_socket(&socket).unwrap();
        assert!(!socket.exists());

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"data").unwrap();
        remove_stale_socket(&file).unwrap();
        assert!(file.exists(), "a regular file is not a stale socket");

        remove_stale_socket(&dir.path().join("missing")).unwrap();
    }

    #[test]
    fn create_fresh_starts_an_empty_file_whatever_was_there() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("cloud-hypervisor.log");
        create_fresh(&log).unwrap().write_all(b"first run").unwrap();
        let mut second = create_fresh(&log).unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"");
        second.write_all(b"second").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"second");
        // Not a file it may replace: the error says so, nothing is removed.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(create_fresh(&sub).is_err());
        assert!(sub.is_dir());
    }

    #[tokio::test]
    async fn no_deadline_never_fires() {
        let never =
            tokio::time::timeout(std::time::Duration::from_millis(50), sleep_until(None)).await;
        assert!(never.is_err());
        sleep_until(Some(Instant::now())).await;
    }
}
