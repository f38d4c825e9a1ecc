//! Host mounts of snapshot mounts (as containerd describes them: type, source, options),
//! always read-only: a ModelKit view must never be writable from a container.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::api::types::Mount;

/// Mounts a one-mount snapshot read-only at `target` (a bind or an overlay).
pub fn mount_readonly(mounts: &[Mount], target: &Path) -> io::Result<()> {
    let [m] = mounts else {
        return Err(io::Error::other(format!(
            "expected one mount from the snapshotter, got {}",
            mounts.len()
        )));
    };
    let opts: Vec<&str> = m
        .options
        .iter()
        .map(String::as_str)
        .filter(|o| !matches!(*o, "ro" | "rw" | "rbind" | "bind"))
        .collect();
    match m.r#type.as_str() {
        "bind" => {
            rustix::mount::mount_bind_recursive(m.source.as_str(), target)?;
            // A bind mount only becomes read-only by a remount.
            if let Err(e) =
                rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")
            {
                let _ = unmount(target);
                return Err(e.into());
            }
            Ok(())
        }
        "overlay" => {
            if opts.iter().any(|o| o.starts_with("upperdir=")) {
                return Err(io::Error::other("refusing a writable overlay for a view"));
            }
            let data = CString::new(opts.join(","))
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in mount options"))?;
            Ok(rustix::mount::mount(
                "overlay",
                target,
                "overlay",
                MountFlags::RDONLY,
                data.as_c_str(),
            )?)
        }
        t => Err(io::Error::other(format!("unsupported mount type {t:?}"))),
    }
}

/// Detaches the mount at `target` (lazily, so a busy mount still goes away for new users).
pub fn unmount(target: &Path) -> io::Result<()> {
    match rustix::mount::unmount(target, UnmountFlags::DETACH) {
        Ok(()) => Ok(()),
        // Not mounted (EINVAL) or gone (ENOENT): nothing to undo.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether something is mounted exactly at `target` (per /proc/self/mountinfo).
pub fn is_mounted(target: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = target.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| unescape(p) == want)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory a new layer's files go to: the source of a bind, the upper dir of an
/// overlay. (kitsnap writes into its own snapshots directly: no mount, no copy-up.)
pub fn writable_dir(mounts: &[Mount]) -> Option<PathBuf> {
    let [m] = mounts else { return None };
    match m.r#type.as_str() {
        "bind" if m.options.iter().any(|o| o == "rw") => Some(PathBuf::from(&m.source)),
        "overlay" => m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(PathBuf::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape_and_writable_dir() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        let m = |t: &str, s: &str, o: &[&str]| Mount {
            r#type: t.into(),
            source: s.into(),
            target: String::new(),
            options: o.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            writable_dir(&[m("bind", "/x/fs", &["rbind", "rw"])]),
            Some(PathBuf::from("/x/fs"))
        );
        assert_eq!(writable_dir(&[m("bind", "/x/fs", &["rbind", "ro"])]), None);
        assert_eq!(
            writable_dir(&[m(
                "overlay",
                "overlay",
                &["workdir=/w", "upperdir=/u", "lowerdir=/l"]
            )]),
            Some(PathBuf::from("/u"))
        );
        assert!(is_mounted(Path::new("/proc")));
        assert!(!is_mounted(Path::new("/definitely/not/mounted")));
    }
}
