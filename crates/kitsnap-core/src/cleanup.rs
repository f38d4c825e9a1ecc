//! Temporary files that must not outlive an interrupted command.
//!
//! Every temporary file the core writes (store ingests, files being unpacked) is registered
//! here while it exists. The CLI's SIGINT/SIGTERM handler calls [`remove_all`] before the
//! process dies, so Ctrl-C leaves neither an `ingest/` blob nor a half-written sibling in
//! an unpack target. SIGKILL cannot be caught: what it leaves is found by `remove --prune`
//! (ingests) or is a hidden `.*.kitsnap-part` sibling, never a file under its final name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

static PENDING: Mutex<BTreeMap<u64, PathBuf>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A registered temporary path: removed (file and registration) when dropped, unless
/// [`TempPath::keep`] says it became permanent (was renamed into place).
#[derive(Debug)]
pub struct TempPath {
    id: u64,
    path: PathBuf,
}

impl TempPath {
    /// Registers `path` before it is created, so that an interrupt between creating and
    /// registering cannot leak it.
    pub fn register(path: PathBuf) -> TempPath {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        PENDING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, path.clone());
        TempPath { id, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Forgets the path without removing it: it was renamed, or is now owned elsewhere.
    pub fn keep(self) {
        unregister(self.id);
        std::mem::forget(self);
    }
}

fn unregister(id: u64) {
    PENDING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        unregister(self.id);
    }
}

/// Removes every registered temporary file, for a signal handler's thread just before the
/// process exits. The registry stays locked afterwards, so a thread still working cannot
/// register (and so create) another file before the exit. Returns how many were removed.
pub fn remove_all_and_freeze() -> usize {
    let pending = PENDING.lock().unwrap_or_else(PoisonError::into_inner);
    let n = pending
        .values()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count();
    std::mem::forget(pending);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(p: &Path) -> bool {
        PENDING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|q| q == p)
    }

    // `remove_all_and_freeze` ends the process's use of the registry, so it is tested
    // through the binary (SIGINT during pack and unpack in the integration tests).
    #[test]
    fn registered_files_are_removed_on_drop_unless_kept() {
        let d = tempfile::tempdir().unwrap();
        let a = TempPath::register(d.path().join("a"));
        assert!(registered(a.path()), "registered before it exists");
        std::fs::write(a.path(), b"x").unwrap();
        let c = TempPath::register(d.path().join("c"));
        std::fs::write(c.path(), b"z").unwrap();
        c.keep();
        assert!(d.path().join("c").exists(), "a kept file stays");
        assert!(!registered(&d.path().join("c")));
        drop(a);
        assert!(!d.path().join("a").exists());
        assert!(!registered(&d.path().join("a")));
    }
}
