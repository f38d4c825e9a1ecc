//! What a test needs from the machine, and what happens when it is missing: `require!`
//! skips the test loudly on a developer machine and fails it when `CI` is set.

use std::io::Write;
use std::process::Command;

/// Skips the calling test when an external component is missing: when COND is false,
/// `require!(COND, FORMAT, ARGS...)` prints a loud `!!! SKIPPED <test>: missing <what> !!!`
/// line on stderr and returns from the test; with `CI` set (non-empty) it panics instead,
/// so that a missing component fails CI rather than passing silently.
macro_rules! require {
    ($ok:expr, $($what:tt)+) => {
        if !$ok {
            $crate::support::prereq::missing($crate::support::test_name!(), &format!($($what)+));
            return;
        }
    };
}
pub(crate) use require;

/// Like `require!`, for what running containers needs: root, runc, overlayfs and a static
/// busybox for the image.
macro_rules! require_containers {
    () => {
        $crate::support::require!(
            $crate::support::prereq::is_root(),
            "root privileges (containers need them)"
        );
        $crate::support::require!(
            $crate::support::prereq::have_cmd("runc"),
            "runc (apt-get install runc; scripts/install-deps.sh does it)"
        );
        $crate::support::require!(
            $crate::support::prereq::have_overlayfs(),
            "overlayfs in /proc/filesystems"
        );
        $crate::support::require!(
            std::path::Path::new($crate::support::containerd::BUSYBOX).exists(),
            "{} (apt-get install busybox-static; scripts/install-deps.sh does it)",
            $crate::support::containerd::BUSYBOX
        );
    };
}
pub(crate) use require_containers;

/// Like `require!`, for Debian's docker-registry (CNCF distribution).
macro_rules! require_registry {
    () => {
        $crate::support::require!(
            $crate::support::registry::have_registry(),
            "{} (apt-get install docker-registry; scripts/install-deps.sh does it)",
            $crate::support::registry::REGISTRY_BIN
        );
    };
}
pub(crate) use require_registry;

/// The path of the function it is used in (`it::registry::bearer_token_flow` in a test).
macro_rules! test_name {
    () => {{
        fn f() {}
        std::any::type_name_of_val(&f).trim_end_matches("::f")
    }};
}
pub(crate) use test_name;

/// True when the environment variable `CI` is set to anything non-empty.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Reports that `test` lacks `what`: panics under CI; otherwise prints a loud line straight
/// to stderr (not through the test harness's capture, so it shows for a "passing" test) and
/// returns, for the caller to skip what needs it.
pub fn missing(test: &str, what: &str) {
    if in_ci() {
        panic!("{test}: missing {what} (CI is set: a missing component fails the test)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n!!! SKIPPED {test}: missing {what} !!!\n"
    );
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `cmd` is on PATH.
pub fn have_cmd(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn have_overlayfs() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("overlay"))
}

/// The Python oras client.
pub fn have_oras() -> bool {
    Command::new("python3")
        .args(["-c", "import oras.client"])
        .output()
        .is_ok_and(|o| o.status.success())
}
