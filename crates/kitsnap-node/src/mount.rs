//! Host mounts of snapshot mounts (as containerd describes them: type, source, options).
//! [`mount_readonly`] is for views, which must never be writable from a container;
//! [`mount_all`] mounts what a Prepare returns too (tools and tests).
//!
//! Overlay layers: mount(2) takes at most one page of options, and silently cuts a longer
//! string (about 130 absolute lowerdirs, fewer under a long root: the overlay then lacks
//! layers, or fails with a misleading ENOENT). So, as containerd does:
//! - on Linux 6.8+, the new mount API: `fsopen("overlay")` and one `fsconfig` `lowerdir+`
//!   per layer (each path up to 255 bytes), no length limit but overlayfs' own 500 layers;
//! - otherwise (or for longer paths), mount(2), with the lowerdirs made relative to their
//!   common parent when the absolute string would not fit, the mount done from a thread
//!   that unshares its working directory (`unshare(CLONE_FS)`) and `chdir`s there;
//! - if even the relative string does not fit in a page, an error naming the limit:
//!   never a mount with fewer layers than asked.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fd::{AsFd, OwnedFd};
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

use crate::api::types::Mount;

/// The most option bytes mount(2) reads: one (4 KiB, the smallest) page, less the NUL
/// the kernel writes over its last byte.
const MOUNT_DATA_MAX: usize = 4095;
/// `fsconfig` string values are read with a 256-byte limit (NUL included).
const FSCONFIG_VALUE_MAX: usize = 255;

/// Mounts a one-mount snapshot read-only at `target` (a bind or an overlay without upper
/// dir: a view).
pub fn mount_readonly(mounts: &[Mount], target: &Path) -> io::Result<()> {
    let [m] = mounts else {
        return Err(io::Error::other(format!(
            "expected one mount from the snapshotter, got {}",
            mounts.len()
        )));
    };
    if m.r#type == "overlay" && m.options.iter().any(|o| o.starts_with("upperdir=")) {
        return Err(io::Error::other("refusing a writable overlay for a view"));
    }
    mount_one(m, target, true)
}

/// Mounts `mounts` at `target` in order (as containerd's `mount.All`), read-only if
/// `readonly` or if a mount says `ro`. On failure nothing stays mounted.
pub fn mount_all(mounts: &[Mount], target: &Path, readonly: bool) -> io::Result<()> {
    if mounts.is_empty() {
        return Err(io::Error::other("no mounts to mount"));
    }
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target, readonly) {
            for _ in 0..i {
                let _ = unmount(target);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path, readonly: bool) -> io::Result<()> {
    let ro = readonly || m.options.iter().any(|o| o == "ro");
    match m.r#type.as_str() {
        "bind" | "rbind" => {
            if m.r#type == "rbind" || m.options.iter().any(|o| o == "rbind") {
                rustix::mount::mount_bind_recursive(m.source.as_str(), target)?;
            } else {
                rustix::mount::mount_bind(m.source.as_str(), target)?;
            }
            if ro {
                // A bind mount only becomes read-only by a remount.
                if let Err(e) =
                    rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")
                {
                    let _ = unmount(target);
                    return Err(e.into());
                }
            }
            Ok(())
        }
        "overlay" => mount_overlay(&Overlay::parse(&m.options)?, target, ro, Strategy::Auto),
        t => Err(io::Error::other(format!("unsupported mount type {t:?}"))),
    }
}

/// An overlay's options, lowerdirs split out (top first).
#[derive(Debug, PartialEq, Eq)]
struct Overlay {
    lower: Vec<String>,
    upper: Option<String>,
    work: Option<String>,
    /// Everything else (`index=off`, `userxattr`, ...), passed on as given.
    other: Vec<String>,
}

/// Splits a `lowerdir` value at the colons overlayfs splits at (not `\:`).
fn split_lowerdirs(v: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let cur = out.last_mut().expect("one");
                cur.push('\\');
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' => out.push(String::new()),
            c => out.last_mut().expect("one").push(c),
        }
    }
    out
}

/// A path as overlayfs' option syntax escapes it, unescaped (for `lowerdir+`).
fn unescape_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Overlay {
    fn parse(options: &[String]) -> io::Result<Overlay> {
        let mut o = Overlay {
            lower: Vec::new(),
            upper: None,
            work: None,
            other: Vec::new(),
        };
        for opt in options {
            if let Some(v) = opt.strip_prefix("lowerdir=") {
                o.lower = split_lowerdirs(v);
            } else if let Some(v) = opt.strip_prefix("upperdir=") {
                o.upper = Some(v.to_string());
            } else if let Some(v) = opt.strip_prefix("workdir=") {
                o.work = Some(v.to_string());
            } else if !matches!(opt.as_str(), "ro" | "rw") {
                o.other.push(opt.clone());
            }
        }
        if o.lower.is_empty() {
            return Err(io::Error::other("overlay mount without lowerdir"));
        }
        if o.lower.iter().any(|l| l.is_empty()) {
            return Err(io::Error::other(
                "overlay lowerdir with an empty layer (data-only layers are not supported)",
            ));
        }
        if o.upper.is_some() != o.work.is_some() {
            return Err(io::Error::other(
                "overlay mount needs both upperdir and workdir, or neither",
            ));
        }
        Ok(o)
    }

    /// The mount(2) option string, with `lower` as the lowerdirs.
    fn data(&self, lower: &[String]) -> String {
        let mut parts = self.other.clone();
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            parts.push(format!("upperdir={u}"));
            parts.push(format!("workdir={w}"));
        }
        parts.push(format!("lowerdir={}", lower.join(":")));
        parts.join(",")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))] // forced strategies: tests only
enum Strategy {
    /// The mount API where the kernel has `lowerdir+`, else mount(2).
    Auto,
    MountApi,
    Legacy,
}

fn mount_overlay(o: &Overlay, target: &Path, ro: bool, how: Strategy) -> io::Result<()> {
    let fits_fsconfig = o
        .lower
        .iter()
        .chain(&o.upper)
        .chain(&o.work)
        .all(|p| p.len() <= FSCONFIG_VALUE_MAX);
    let api = match how {
        Strategy::Auto => kernel_has_lowerdir_plus() && fits_fsconfig,
        Strategy::MountApi => true,
        Strategy::Legacy => false,
    };
    if api {
        match mount_overlay_api(o, target, ro) {
            Ok(()) => return Ok(()),
            Err(ApiError::Unsupported) if how == Strategy::Auto => {}
            Err(ApiError::Unsupported) => {
                return Err(io::Error::other(
                    "this kernel's overlayfs has no lowerdir+ (Linux 6.8+)",
                ));
            }
            Err(ApiError::Failed(e)) => return Err(e),
        }
    }
    mount_overlay_legacy(o, target, ro)
}

/// Linux 6.8 added overlayfs' `lowerdir+` (one layer per `fsconfig` call).
fn kernel_has_lowerdir_plus() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|r| parse_release(&r))
            .is_some_and(|v| v >= (6, 8))
    })
}

fn parse_release(r: &str) -> Option<(u32, u32)> {
    let mut it = r.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

enum ApiError {
    /// No mount API or no `lowerdir+`: mount(2) may still do.
    Unsupported,
    Failed(io::Error),
}

/// The messages the kernel left on a filesystem context (`e overlayfs: ...`).
fn fs_log(fd: &OwnedFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = rustix::io::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        out.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    out.join("; ")
}

fn mount_overlay_api(o: &Overlay, target: &Path, ro: bool) -> Result<(), ApiError> {
    let fd = match rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOSYS) => return Err(ApiError::Unsupported),
        Err(e) => return Err(ApiError::Failed(e.into())),
    };
    let fail = |what: String, e: rustix::io::Errno| {
        let log = fs_log(&fd);
        ApiError::Failed(io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "overlay mount at {}: {what}: {e}{}",
                target.display(),
                if log.is_empty() {
                    String::new()
                } else {
                    format!(" ({log})")
                }
            ),
        ))
    };
    for (i, l) in o.lower.iter().enumerate() {
        let path = unescape_path(l);
        if let Err(e) = rustix::mount::fsconfig_set_string(fd.as_fd(), "lowerdir+", &path) {
            // A kernel without `lowerdir+` refuses the key itself (EINVAL), whatever the
            // path; a kernel with it reports a bad path otherwise (ENOENT, ...).
            if i == 0 && e == rustix::io::Errno::INVAL && Path::new(&path).is_dir() {
                return Err(ApiError::Unsupported);
            }
            return Err(fail(
                format!("lower layer {} of {} ({l})", i + 1, o.lower.len()),
                e,
            ));
        }
    }
    if let (Some(u), Some(w)) = (&o.upper, &o.work) {
        rustix::mount::fsconfig_set_string(fd.as_fd(), "upperdir", unescape_path(u))
            .map_err(|e| fail(format!("upperdir {u}"), e))?;
        rustix::mount::fsconfig_set_string(fd.as_fd(), "workdir", unescape_path(w))
            .map_err(|e| fail(format!("workdir {w}"), e))?;
    }
    for opt in &o.other {
        match opt.split_once('=') {
            Some((k, v)) => rustix::mount::fsconfig_set_string(fd.as_fd(), k, v),
            None => rustix::mount::fsconfig_set_flag(fd.as_fd(), opt.as_str()),
        }
        .map_err(|e| fail(format!("option {opt}"), e))?;
    }
    if ro {
        rustix::mount::fsconfig_set_flag(fd.as_fd(), "ro").map_err(|e| fail("ro".into(), e))?;
    }
    rustix::mount::fsconfig_create(fd.as_fd()).map_err(|e| {
        fail(
            format!("creating an overlay of {} layers", o.lower.len()),
            e,
        )
    })?;
    let attrs = if ro {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        MountAttrFlags::empty()
    };
    let mnt = rustix::mount::fsmount(fd.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| fail("fsmount".into(), e))?;
    rustix::mount::move_mount(
        mnt.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| fail("move_mount".into(), e))
}

fn mount_overlay_legacy(o: &Overlay, target: &Path, ro: bool) -> io::Result<()> {
    let flags = if ro {
        MountFlags::RDONLY
    } else {
        MountFlags::empty()
    };
    let cstr = |s: String| {
        CString::new(s)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in mount options"))
    };
    let data = o.data(&o.lower);
    if data.len() <= MOUNT_DATA_MAX {
        return rustix::mount::mount("overlay", target, "overlay", flags, cstr(data)?.as_c_str())
            .map_err(|e| overlay_error(target, o.lower.len(), e));
    }
    let too_long = |len: usize, how: &str| {
        io::Error::other(format!(
            "overlay of {} layers at {}: its mount options are {len} bytes{how}, over mount(2)'s \
             one-page limit of {MOUNT_DATA_MAX} (only overlayfs' lowerdir+, Linux 6.8+, takes \
             more): refusing to mount fewer layers",
            o.lower.len(),
            target.display()
        ))
    };
    let Some((dir, rel)) = compact_lowerdirs(&o.lower) else {
        return Err(too_long(data.len(), " (the lowerdirs share no parent)"));
    };
    let short = o.data(&rel);
    if short.len() > MOUNT_DATA_MAX {
        return Err(too_long(
            short.len(),
            &format!(" even with lowerdirs relative to {dir}"),
        ));
    }
    mount_in_dir(Path::new(&dir), target, cstr(short)?, flags)
        .map_err(|e| overlay_error(target, o.lower.len(), e))
}

fn overlay_error(target: &Path, layers: usize, e: impl Into<io::Error>) -> io::Error {
    let e = e.into();
    io::Error::new(
        e.kind(),
        format!(
            "overlay mount of {layers} layers at {}: {e}",
            target.display()
        ),
    )
}

/// mount(2) with relative lowerdirs, resolved from `dir`: from a thread of its own whose
/// working directory is unshared from the process (`unshare(CLONE_FS)`), so no other
/// thread sees the `chdir`. The thread ends with the mount.
fn mount_in_dir(dir: &Path, target: &Path, data: CString, flags: MountFlags) -> io::Result<()> {
    let target = std::path::absolute(target)?;
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            // SAFETY: unshare(CLONE_FS) takes no pointers; it gives this thread its own
            // cwd/root/umask, which dies with the thread.
            if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                return Err(io::Error::last_os_error());
            }
            rustix::process::chdir(dir)?;
            rustix::mount::mount("overlay", &target, "overlay", flags, data.as_c_str())?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the mount thread panicked")))
    })
}

/// The deepest directory strictly above every lowerdir, and the lowerdirs relative to it;
/// `None` when there is nothing to gain (one layer, relative paths, only `/` in common).
/// Operates on path components, and on the escaped option syntax (escapes stay as they
/// are: they never contain `/`).
fn compact_lowerdirs(lower: &[String]) -> Option<(String, Vec<String>)> {
    if lower.len() < 2 || lower.iter().any(|l| !l.starts_with('/')) {
        return None;
    }
    let split = |l: &str| -> Vec<String> {
        l.split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    let all: Vec<Vec<String>> = lower.iter().map(|l| split(l)).collect();
    // Strictly above each lowerdir (one equal to the common dir would become ""), and
    // a prefix of all of them.
    let mut common = all.iter().map(Vec::len).min()?.saturating_sub(1);
    for p in &all[1..] {
        common = common.min(all[0].iter().zip(p).take_while(|(a, b)| a == b).count());
    }
    if common == 0 {
        return None;
    }
    let dir = format!("/{}", all[0][..common].join("/"));
    let rel = all.iter().map(|p| p[common..].join("/")).collect();
    Some((dir, rel))
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

pub use crate::mountinfo::is_mounted;

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

    fn m(t: &str, s: &str, o: &[&str]) -> Mount {
        Mount {
            r#type: t.into(),
            source: s.into(),
            target: String::new(),
            options: o.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn mountinfo_unescape_and_writable_dir() {
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
    }

    #[test]
    fn overlay_options_parse() {
        let o = Overlay::parse(&[
            "workdir=/w".into(),
            "upperdir=/u".into(),
            r"lowerdir=/a\:b/fs:/c/fs".into(),
            "index=off".into(),
            "ro".into(),
        ])
        .unwrap();
        assert_eq!(o.lower, vec![r"/a\:b/fs".to_string(), "/c/fs".to_string()]);
        assert_eq!(unescape_path(&o.lower[0]), "/a:b/fs");
        assert_eq!(
            (o.upper.as_deref(), o.work.as_deref()),
            (Some("/u"), Some("/w"))
        );
        assert_eq!(o.other, vec!["index=off".to_string()]);
        assert_eq!(
            o.data(&o.lower),
            r"index=off,upperdir=/u,workdir=/w,lowerdir=/a\:b/fs:/c/fs"
        );
        assert!(Overlay::parse(&["upperdir=/u".into()]).is_err());
        assert!(Overlay::parse(&["lowerdir=/a::/b".into()]).is_err());
        assert!(Overlay::parse(&["lowerdir=/a".into(), "upperdir=/u".into()]).is_err());
        assert_eq!(parse_release("6.18.44-fc-v669\n"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0"), Some((5, 10)));
    }

    #[test]
    fn lowerdirs_compact_to_their_common_parent() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            compact_lowerdirs(&v(&["/r/snapshots/1/fs", "/r/snapshots/12/fs"])),
            Some(("/r/snapshots".into(), v(&["1/fs", "12/fs"])))
        );
        // Not a string prefix ("/r/snapshots/1" is one of "/r/snapshots/12"): components.
        assert_eq!(
            compact_lowerdirs(&v(&["/r/snapshots/12/fs", "/r/snapshots/1/fs"])),
            Some(("/r/snapshots".into(), v(&["12/fs", "1/fs"])))
        );
        assert_eq!(
            compact_lowerdirs(&v(&["/r/trees/ab", "/r/snapshots/3/fs"])),
            Some(("/r".into(), v(&["trees/ab", "snapshots/3/fs"])))
        );
        // The common dir is never one of the lowerdirs themselves.
        assert_eq!(
            compact_lowerdirs(&v(&["/r/x", "/r/x/y"])),
            Some(("/r".into(), v(&["x", "x/y"])))
        );
        assert_eq!(
            compact_lowerdirs(&v(&["/r/x", "/r/x"])),
            Some(("/r".into(), v(&["x", "x"])))
        );
        assert_eq!(compact_lowerdirs(&v(&["/a/x", "/b/y"])), None);
        assert_eq!(compact_lowerdirs(&v(&["/a/x"])), None);
        assert_eq!(compact_lowerdirs(&v(&["a/x", "a/y"])), None);
        // 500 snapshot layers under any root fit a page once relative.
        let root = format!("/{}", "long-root-".repeat(20));
        let many: Vec<String> = (1..=500)
            .map(|i| format!("{root}/snapshots/{i}/fs"))
            .collect();
        let o = Overlay {
            lower: many.clone(),
            upper: None,
            work: None,
            other: vec![],
        };
        assert!(o.data(&many).len() > MOUNT_DATA_MAX);
        let (dir, rel) = compact_lowerdirs(&many).unwrap();
        assert_eq!(dir, format!("{root}/snapshots"));
        assert!(
            o.data(&rel).len() <= MOUNT_DATA_MAX,
            "{}",
            o.data(&rel).len()
        );
    }

    /// Root only (mounts); skipped loudly elsewhere, failing under CI.
    fn root_or_skip(what: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} needs root (CI is set)"
        );
        eprintln!("\n!!! SKIPPED {what}: needs root !!!\n");
        false
    }

    /// `n` layers under `root/snapshots/<i>/fs`: each adds `f-<i>` and rewrites `top`.
    fn layers(root: &Path, n: usize) -> Vec<String> {
        (1..=n)
            .rev()
            .map(|i| {
                let d = root.join(format!("snapshots/{i}/fs"));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join(format!("f-{i}")), i.to_string()).unwrap();
                std::fs::write(d.join("top"), i.to_string()).unwrap();
                d.to_string_lossy().into_owned()
            })
            .collect()
    }

    fn check_all_layers(target: &Path, n: usize) {
        assert_eq!(
            std::fs::read_to_string(target.join("top")).unwrap(),
            n.to_string(),
            "the top layer wins"
        );
        let files = std::fs::read_dir(target).unwrap().count();
        assert_eq!(files, n + 1, "every layer is in the mount");
    }

    #[test]
    fn deep_overlays_mount_every_layer_or_fail_loudly() {
        if !root_or_skip("deep_overlays_mount_every_layer_or_fail_loudly") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        // A long root: 200 absolute lowerdirs would be ~45 KB of options.
        let root = d.path().join("r".repeat(150));
        let target = d.path().join("mnt");
        std::fs::create_dir_all(&target).unwrap();
        let lower = layers(&root, 500);
        let view = |n: usize| Overlay {
            lower: lower[500 - n..].to_vec(),
            upper: None,
            work: None,
            other: vec![],
        };

        // mount(2) with relative lowerdirs, from a thread that chdir()s.
        for n in [2, 140, 200, 500] {
            mount_overlay(&view(n), &target, true, Strategy::Legacy).unwrap();
            check_all_layers(&target, n);
            assert!(std::fs::write(target.join("x"), b"").is_err(), "read-only");
            unmount(&target).unwrap();
        }
        // The cwd of the test's own threads never moved.
        assert_eq!(
            std::env::current_dir().unwrap(),
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        );

        if kernel_has_lowerdir_plus() {
            for n in [2, 200, 500] {
                mount_overlay(&view(n), &target, true, Strategy::MountApi).unwrap();
                check_all_layers(&target, n);
                assert!(std::fs::write(target.join("x"), b"").is_err(), "read-only");
                unmount(&target).unwrap();
            }
            // Writable, on 499 lowers.
            let (up, work) = (root.join("up"), root.join("work"));
            std::fs::create_dir_all(&up).unwrap();
            std::fs::create_dir_all(&work).unwrap();
            let mut active = view(499);
            active.upper = Some(up.to_string_lossy().into_owned());
            active.work = Some(work.to_string_lossy().into_owned());
            mount_overlay(&active, &target, false, Strategy::Auto).unwrap();
            check_all_layers(&target, 499);
            std::fs::write(target.join("new"), b"n").unwrap();
            unmount(&target).unwrap();
            assert_eq!(std::fs::read(up.join("new")).unwrap(), b"n");
        } else {
            eprintln!("\n!!! SKIPPED the mount API half: no lowerdir+ on this kernel !!!\n");
        }

        // Past overlayfs' 500 layers, or past a page even when relative: an error, never a
        // mount with fewer layers.
        let more = layers(&root.join("more"), 1000);
        let big = Overlay {
            lower: more,
            upper: None,
            work: None,
            other: vec![],
        };
        for how in [Strategy::Auto, Strategy::Legacy] {
            let e = mount_overlay(&big, &target, true, how).unwrap_err();
            assert!(!is_mounted(&target), "{how:?}: {e}");
            eprintln!("{how:?}: {e}");
        }
        let e = mount_overlay(&big, &target, true, Strategy::Legacy).unwrap_err();
        assert!(e.to_string().contains("one-page limit"), "{e}");
    }

    #[test]
    fn mount_all_binds_writable_and_read_only() {
        if !root_or_skip("mount_all_binds_writable_and_read_only") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (src, target) = (d.path().join("src"), d.path().join("mnt"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        mount_all(
            &[m("bind", src.to_str().unwrap(), &["rbind", "rw"])],
            &target,
            false,
        )
        .unwrap();
        std::fs::write(target.join("w"), b"1").unwrap();
        unmount(&target).unwrap();
        assert_eq!(std::fs::read(src.join("w")).unwrap(), b"1");
        mount_readonly(
            &[m("bind", src.to_str().unwrap(), &["rbind", "rw"])],
            &target,
        )
        .unwrap();
        assert!(std::fs::write(target.join("w2"), b"1").is_err());
        unmount(&target).unwrap();
        assert!(
            mount_readonly(
                &[m(
                    "overlay",
                    "overlay",
                    &["upperdir=/u", "workdir=/w", "lowerdir=/l"]
                )],
                &target
            )
            .is_err()
        );
    }
}
