//! Disk images as CH handles them when it builds a VM: each disk's file is
//! opened (read-only disks read-only), its format detected from its first
//! bytes, auto-named `_disk<N>` when it has no id, and locked with an OFD
//! advisory lock (read lock for read-only disks, write lock otherwise) before
//! the guest runs. The locks are real, so two VMs (or two disks of one VM) on
//! the same image clash exactly as under CH.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::config::{ImageType, LockGranularity, VmConfig};

const QCOW_MAGIC: [u8; 4] = *b"QFI\xfb";
const VHDX_SIGNATURE: [u8; 8] = *b"vhdxfile";
const VHD_FOOTER_COOKIE: [u8; 8] = *b"conectix";

/// An open disk image; its lock (if taken) lasts as long as the file is open.
pub struct OpenDisk {
    file: File,
    path: PathBuf,
    readonly: bool,
    granularity: LockGranularity,
}

/// Opens every file-backed disk of `config`, filling in ids and image types.
/// On failure CH has already taken the disk list out of the config and does
/// not put it back, so `vm.info` then shows no disks.
pub fn open_disks(config: &mut VmConfig) -> Result<Vec<OpenDisk>, Vec<String>> {
    let Some(mut disks) = config.disks.take() else {
        return Ok(Vec::new());
    };
    let mut opened = Vec::new();
    let mut next_auto_id = 0;
    for disk in disks.iter_mut() {
        if disk.vhost_user {
            continue;
        }
        let Some(path) = disk.path.clone() else {
            continue;
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!disk.readonly)
            .open(&path)
            .map_err(|e| open_error(&path, e))?;
        disk.image_type = detect_image_type(&file).map_err(|e| open_error(&path, e))?;
        if disk.pci_common.id.is_none() {
            disk.pci_common.id = Some(format!("_disk{next_auto_id}"));
            next_auto_id += 1;
        }
        opened.push(OpenDisk {
            file,
            path,
            readonly: disk.readonly,
            granularity: disk.lock_granularity,
        });
    }
    config.disks = Some(disks);
    Ok(opened)
}

fn open_error(path: &Path, error: std::io::Error) -> Vec<String> {
    vec![
        "Error from device manager".to_string(),
        "Cannot open disk path".to_string(),
        format!("I/O error (path={} op=open)", path.display()),
        error.to_string(),
    ]
}

fn detect_image_type(file: &File) -> std::io::Result<ImageType> {
    let mut reader = file;
    let mut head = [0u8; 8];
    reader.seek(SeekFrom::Start(0))?;
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    if head[..4] == QCOW_MAGIC {
        return Ok(ImageType::Qcow2);
    }
    let size = file.metadata()?.len();
    if size >= 512 {
        let mut footer = [0u8; 8];
        reader.seek(SeekFrom::Start(size - 512))?;
        if reader.read_exact(&mut footer).is_ok() && footer == VHD_FOOTER_COOKIE {
            return Ok(ImageType::FixedVhd);
        }
    }
    if head == VHDX_SIGNATURE {
        return Ok(ImageType::Vhdx);
    }
    Ok(ImageType::Raw)
}

/// Takes every disk's advisory lock, as CH does right before the guest runs.
pub fn lock_disks(disks: &[OpenDisk]) -> Result<(), Vec<String>> {
    for disk in disks {
        let (lock_type, name) = if disk.readonly {
            (libc::F_RDLCK, "Read")
        } else {
            (libc::F_WRLCK, "Write")
        };
        let len = match disk.granularity {
            LockGranularity::Full => 0,
            LockGranularity::ByteRange => disk.file.metadata().map(|m| m.len()).unwrap_or(0),
        };
        // SAFETY: an all-zero flock is a valid value; the fields that matter
        // are set below.
        let mut flock: libc::flock = unsafe { std::mem::zeroed() };
        flock.l_type = lock_type as libc::c_short;
        flock.l_whence = libc::SEEK_SET as libc::c_short;
        flock.l_start = 0;
        flock.l_len = len as libc::off_t;
        loop {
            // SAFETY: F_OFD_SETLK with a valid flock on a descriptor we own.
            let result = unsafe { libc::fcntl(disk.file.as_raw_fd(), libc::F_OFD_SETLK, &flock) };
            if result == 0 {
                break;
            }
            let error = std::io::Error::last_os_error();
            let cause = match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::EACCES) => "The file is already locked".to_string(),
                _ => error.to_string(),
            };
            return Err(vec![
                "Error locking disk images: Another instance likely holds a lock".to_string(),
                "Cannot lock images of all block devices".to_string(),
                format!(
                    "Failed to get {name} lock for disk image: {}",
                    disk.path.display()
                ),
                cause,
            ]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn image_types_are_told_apart_by_their_magic() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::File::create(&path)
                .unwrap()
                .write_all(bytes)
                .unwrap();
            std::fs::File::open(path).unwrap()
        };
        assert_eq!(
            detect_image_type(&write("q", b"QFI\xfb\0\0\0\x03")).unwrap(),
            ImageType::Qcow2
        );
        assert_eq!(
            detect_image_type(&write("v", b"vhdxfile....")).unwrap(),
            ImageType::Vhdx
        );
        assert_eq!(
            detect_image_type(&write("r", &[0u8; 4096])).unwrap(),
            ImageType::Raw
        );
    }
}
