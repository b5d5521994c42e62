//! The console log (`virt-serial0-log`), capped the way virtlogd caps the
//! logs it writes for libvirt: when the file would pass [`LogLimits::max_size`]
//! it is renamed to `<log>.0` (older ones move to `.1`, `.2`, ... and the
//! oldest beyond [`LogLimits::backups`] is removed) and a new file is started.
//! A guest that writes without end therefore uses at most
//! `max_size x (backups + 1)` bytes of the pod's disk.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How large the log may grow and how many rotated files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Bytes in one file before it is rotated.
    pub max_size: u64,
    /// Rotated files kept (`<log>.0` is the newest).
    pub backups: u32,
}

impl Default for LogLimits {
    /// virtlogd's defaults (`max_size = 2097152`, `max_backups = 3`), so both
    /// backends keep the same amount of console history.
    fn default() -> Self {
        LogLimits {
            max_size: 2 * 1024 * 1024,
            backups: 3,
        }
    }
}

/// An open console log that rotates itself.
#[derive(Debug)]
pub struct ConsoleLog {
    path: PathBuf,
    mode: u32,
    limits: LogLimits,
    file: File,
    /// Bytes in the current file.
    size: u64,
}

impl ConsoleLog {
    /// Opens (appending to) `path` with permission bits `mode`.
    pub fn open(path: &Path, mode: u32, limits: LogLimits) -> io::Result<ConsoleLog> {
        let file = open_append(path, mode)?;
        let size = file.metadata()?.len();
        Ok(ConsoleLog {
            path: path.to_path_buf(),
            mode,
            limits,
            file,
            size,
        })
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes`, rotating first when they would not fit. A chunk
    /// larger than a whole file still goes into one file: output is never
    /// split or dropped.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + bytes.len() as u64 > self.limits.max_size {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.limits.backups == 0 {
            std::fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            std::fs::remove_file(numbered(self.limits.backups - 1)).or_else(ignore_missing)?;
            for n in (0..self.limits.backups - 1).rev() {
                std::fs::rename(numbered(n), numbered(n + 1)).or_else(ignore_missing)?;
            }
            std::fs::rename(&self.path, numbered(0))?;
        }
        self.file = open_append(&self.path, self.mode)?;
        self.size = 0;
        Ok(())
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    match e.kind() {
        io::ErrorKind::NotFound => Ok(()),
        _ => Err(e),
    }
}

fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    // The mode given to open() only applies to a new file.
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn a_full_log_rotates_and_keeps_the_configured_number_of_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("virt-serial0-log");
        let limits = LogLimits {
            max_size: 10,
            backups: 2,
        };
        let mut log = ConsoleLog::open(&path, 0o600, limits).unwrap();
        for chunk in ["aaaaa", "bbbbb", "ccccc", "ddddd", "eeeee", "fffff", "g"] {
            log.write(chunk.as_bytes()).unwrap();
        }
        assert_eq!(read(&path), "g");
        assert_eq!(read(&dir.path().join("virt-serial0-log.0")), "eeeeefffff");
        assert_eq!(read(&dir.path().join("virt-serial0-log.1")), "cccccddddd");
        assert!(!dir.path().join("virt-serial0-log.2").exists());
        let total: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= limits.max_size * u64::from(limits.backups + 1));
    }

    #[test]
    fn a_reopened_log_counts_what_it_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let limits = LogLimits {
            max_size: 8,
            backups: 1,
        };
        ConsoleLog::open(&path, 0o600, limits)
            .unwrap()
            .write(b"123456")
            .unwrap();
        let mut log = ConsoleLog::open(&path, 0o600, limits).unwrap();
        log.write(b"789").unwrap();
        assert_eq!(read(&dir.path().join("log.0")), "123456");
        assert_eq!(read(&path), "789");
    }

    #[test]
    fn a_chunk_larger_than_a_file_is_kept_whole_and_new_files_get_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let limits = LogLimits {
            max_size: 4,
            backups: 1,
        };
        let mut log = ConsoleLog::open(&path, 0o640, limits).unwrap();
        log.write(b"0123456789").unwrap();
        log.write(b"x").unwrap();
        assert_eq!(read(&dir.path().join("log.0")), "0123456789");
        assert_eq!(read(&path), "x");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
}
