//! `/proc/<pid>/mountinfo`: which mount sits at a path, and which other mount namespaces
//! (containers) still use it. A host mount of a ModelKit view that a container bind-mounted
//! must not lose its files when the host side is unmounted.

use std::path::Path;

/// What identifies a mounted filesystem tree across mount namespaces: the device
/// (`major:minor`; each overlay gets its own) and the root of the mount within it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountId {
    pub dev: String,
    pub root: String,
}

/// One mountinfo line: (mount id, device, root, mount point).
fn fields(line: &str) -> Option<(&str, &str, String, String)> {
    let mut f = line.split(' ');
    let id = f.next()?;
    let _parent = f.next()?;
    let dev = f.next()?;
    let root = unescape(f.next()?);
    let point = unescape(f.next()?);
    Some((id, dev, root, point))
}

/// The mount at exactly `target` in this process's namespace (the last one, if stacked).
pub fn of(target: &Path) -> Option<MountId> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = target.to_string_lossy();
    info.lines()
        .rev()
        .filter_map(fields)
        .find(|(_, _, _, point)| *point == want)
        .map(|(_, dev, root, _)| MountId {
            dev: dev.to_string(),
            root,
        })
}

/// Whether something is mounted exactly at `target`.
pub fn is_mounted(target: &Path) -> bool {
    of(target).is_some()
}

/// Processes, one per other mount namespace, that have `m` (or a tree inside it)
/// mounted. This process's own namespace is not counted.
pub fn users(m: &MountId) -> Vec<u32> {
    let ns_of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let own = ns_of("self");
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Some(ns) = ns_of(pid) else { continue };
        if Some(&ns) == own.as_ref() || !seen.insert(ns) {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
            continue;
        };
        let uses = info.lines().filter_map(fields).any(|(_, dev, root, _)| {
            dev == m.dev && (root == m.root || root.starts_with(&format!("{}/", m.root)))
        });
        if uses && let Ok(n) = pid.parse() {
            out.push(n);
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_find() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        let (_, dev, root, point) =
            fields("36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw")
                .unwrap();
        assert_eq!(
            (dev, root.as_str(), point.as_str()),
            ("98:0", "/mnt1", "/mnt/a b")
        );
        assert!(is_mounted(Path::new("/proc")));
        assert!(!is_mounted(Path::new("/definitely/not/mounted")));
        // /proc is this namespace's own: no other namespace counts as using it through us.
        let m = of(Path::new("/proc")).unwrap();
        assert!(!users(&m).contains(&std::process::id()));
    }
}
