//! Small helpers several modules share: the one way to wait for an optional
//! deadline in a `select!`, and the one way to clear a stale socket file.

use std::io;
use std::path::Path;
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn no_deadline_never_fires() {
        let never =
            tokio::time::timeout(std::time::Duration::from_millis(50), sleep_until(None)).await;
        assert!(never.is_err());
        sleep_until(Some(Instant::now())).await;
    }
}
