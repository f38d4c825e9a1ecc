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

/// Binds a unix socket at `path` with mode 0660 (and group `gid`), replacing a stale
/// socket file left by a killed daemon.
pub fn bind(path: &Path, gid: Option<u32>) -> Result<tokio::net::UnixListener> {
    let err = |source| Error::Socket {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
    }
    Ok(listener)
}
