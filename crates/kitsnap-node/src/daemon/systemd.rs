//! systemd integration and the daemon's listening sockets: readiness (`sd_notify`),
//! socket activation (`LISTEN_FDS`), and the one way kitsnap binds a unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sd_notify::NotifyState;

use crate::error::{Error, Result};

/// Tells systemd (Type=notify) the daemon's state; a no-op outside systemd.
pub fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// The first socket passed by systemd socket activation, if any.
pub fn activated_listener() -> Result<Option<tokio::net::UnixListener>> {
    let Some(fd) = sd_notify::listen_fds().ok().and_then(|mut fds| fds.next()) else {
        return Ok(None);
    };
    use std::os::fd::FromRawFd;
    // SAFETY: systemd passes the listening socket as this fd and nothing else owns it.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    let socket_err = |source| Error::Socket {
        path: format!("fd {fd} from systemd"),
        source,
    };
    std_listener.set_nonblocking(true).map_err(socket_err)?;
    Ok(Some(
        tokio::net::UnixListener::from_std(std_listener).map_err(socket_err)?,
    ))
}

/// A socket this daemon bound: removed on exit only if the path is still that socket
/// (a second daemon that took over the path keeps it).
pub struct BoundSocket {
    pub path: std::path::PathBuf,
    /// (inode, ctime): inode numbers alone are reused as soon as a file is deleted.
    id: (u64, i64, i64),
}

fn file_id(m: &std::fs::Metadata) -> (u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (m.ino(), m.ctime(), m.ctime_nsec())
}

impl BoundSocket {
    pub fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if file_id(&m) == self.id => {
                let _ = std::fs::remove_file(&self.path);
            }
            _ => {
                tracing::info!(socket = %self.path.display(), "socket replaced by another process; left in place")
            }
        }
    }
}

/// Binds a unix socket at `path` with mode 0660 (and group `gid`). A socket file left by
/// a killed daemon is replaced; one that a live process still answers on is not.
pub fn bind(path: &Path, gid: Option<u32>) -> Result<(tokio::net::UnixListener, BoundSocket)> {
    let err = |source| Error::Socket {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Config {
                what: path.display().to_string(),
                msg: "another process (a running kitsnap serve?) is listening on this socket; \
                      stop it first, or pass another --address"
                    .into(),
            });
        }
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(socket = %path.display(), "removed a stale socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
    }
    let id = file_id(&std::fs::symlink_metadata(path).map_err(err)?);
    Ok((
        listener,
        BoundSocket {
            path: path.to_path_buf(),
            id,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_live_socket_is_not_taken_over_a_stale_one_is() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.sock");
        let (first, bound) = bind(&p, None).unwrap();
        let e = bind(&p, None)
            .err()
            .expect("second bind must fail while the first listens");
        assert!(e.to_string().contains("another process"), "{e}");
        assert!(p.exists(), "the live socket stays");
        drop(first);
        // Nobody listens now: the file is stale and may be replaced.
        let (_second, bound2) = bind(&p, None).unwrap();
        // The first daemon exiting now must not delete the second one's socket.
        bound.remove();
        assert!(p.exists());
        bound2.remove();
        assert!(!p.exists());
    }
}
