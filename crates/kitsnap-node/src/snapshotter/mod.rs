//! An overlay snapshotter with containerd's snapshot semantics, metadata in redb.
//!
//! Layout under the root (default `/var/lib/kitsnap`): `metadata.redb`,
//! `snapshots/<id>/{fs,work}`, `trees/<name>` (ModelKit trees, see [`compose`]) and
//! `staging/` (layers being unpacked by pulls before their snapshot exists).
//!
//! Every lookup is indexed ([`index`]): parent -> children, (parent, target ref) ->
//! snapshot, id -> key, tree -> users, (namespace, name) -> key, each kept in the same
//! write transaction as the records. No lock spans whole-tree work; redb's single writer
//! orders the metadata, and the directory lifecycle follows containerd's overlay
//! snapshotter:
//!
//! - **Prepare/View**: heavy work first, outside any lock (composing a ModelKit tree holds
//!   only a claim on that one tree). Then, inside one write transaction: the snapshot's
//!   directories are made under `snapshots/new-<random>`, renamed to `snapshots/<id>`,
//!   and the record and its index entries are committed. A crash leaves at most a
//!   `new-*` directory or a directory whose id no record names.
//! - **Remove**: the record goes in one transaction; after the commit, outside any lock,
//!   `snapshots/<id>` is renamed to `snapshots/rm-<id>` and deleted. A crash leaves an
//!   `rm-*` directory (or an unnamed id).
//! - **Cleanup** (and start-up) lists `snapshots/` inside a write transaction, so no
//!   Prepare is between making its `new-*` directory and committing its record, and
//!   deletes, after the transaction, every entry that is not the id of a record.
//!
//! Commit and Update are single transactions.

pub mod compose;
pub mod filter;
mod index;
pub mod service;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::labels as label;
use crate::records::{JsonTable, RecordError};
use index::{ReadTables, Tables};

/// ModelKits pulled into containerd on this node: `namespace\nreference` -> KitRecord.
const KITS: JsonTable<compose::KitRecord> = JsonTable::new("modelkits");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error("snapshot {0:?}: not found")]
    NotFound(String),
    #[error("snapshot {0:?}: already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("metadata")]
    Metadata(#[from] redb::Error),
    #[error("filesystem")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("{0}")]
    Internal(String),
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(impl From<$t> for SnapError {
        fn from(e: $t) -> Self { SnapError::Metadata(e.into()) }
    })*};
}
redb_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T> = std::result::Result<T, SnapError>;

/// A stored snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub kind: Kind,
    pub parent: String,
    pub labels: BTreeMap<String, String>,
    /// (seconds, nanoseconds) since the epoch.
    pub created: (i64, u32),
    pub updated: (i64, u32),
    /// Disk usage, recorded at commit.
    pub size: i64,
    pub inodes: i64,
    /// A ModelKit tree (under `trees/`) mounted as an extra lower layer.
    #[serde(default)]
    pub tree: Option<String>,
}

/// What containerd gets back: a `containerd.types.Mount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// ModelKit trees some Prepare/View is building or about to record. Neither Cleanup nor
/// the removal of a tree's last user deletes a claimed tree; builds of one tree wait for
/// each other (builds of different trees do not).
#[derive(Default)]
struct TreeClaims {
    claims: Mutex<HashMap<String, Claim>>,
}

/// Prepares/Views claiming one tree, and the lock its builders take.
struct Claim {
    users: usize,
    build: Arc<Mutex<()>>,
}

impl TreeClaims {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Claim>> {
        // Only counters inside: a panic elsewhere leaves them usable.
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A claim on one tree, released on drop.
struct TreeClaim<'a> {
    claims: &'a TreeClaims,
    name: String,
    build: Arc<Mutex<()>>,
}

impl Drop for TreeClaim<'_> {
    fn drop(&mut self) {
        let mut m = self.claims.lock();
        if let Some(c) = m.get_mut(&self.name) {
            c.users -= 1;
            if c.users == 0 {
                m.remove(&self.name);
            }
        }
    }
}

pub struct Snapshotter {
    root: PathBuf,
    db: Database,
    trees: TreeClaims,
    /// Lazy layers this daemon serves (FUSE), unmounted before their snapshot goes.
    lazy: crate::lazy::Mounts,
}

fn now() -> (i64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

fn decode(name: &str, v: &[u8]) -> Result<Record> {
    serde_json::from_slice(v)
        .map_err(|e| SnapError::Internal(format!("metadata of {name:?} is corrupt: {e}")))
}

fn encode(r: &Record) -> Result<Vec<u8>> {
    serde_json::to_vec(r).map_err(|e| SnapError::Internal(e.to_string()))
}

/// A name no other directory made by this process has (pid, counter, clock).
fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{}-{}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        t & 0xffff_ffff
    )
}

/// Deletes a directory tree; one that is already gone (a concurrent Cleanup) is fine,
/// other failures are logged: the record is gone, so the next Cleanup retries.
fn remove_tree(p: &Path) -> bool {
    if p.join(crate::lazy::META).exists() {
        // A lazy layer's FUSE mount (one this daemon held, or left by a crash) goes first:
        // deleting through it would fail, and the mount point could not be removed.
        let _ = rustix::mount::unmount(p.join("fs"), rustix::mount::UnmountFlags::DETACH);
    }
    match fs::remove_dir_all(p) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "removing a snapshot directory");
            false
        }
    }
}

/// Removes a directory made for a snapshot whose transaction did not commit.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            remove_tree(&p);
        }
    }
}

/// Disk usage of a tree: bytes in allocated blocks and inodes, hardlinks counted once.
pub fn disk_usage(dir: &Path) -> Result<(i64, i64)> {
    disk_usage_many(&[dir.to_path_buf()])
}

/// Like [`disk_usage`] over several trees, an inode shared between them counted once.
pub fn disk_usage_many(dirs: &[PathBuf]) -> Result<(i64, i64)> {
    let mut seen = HashSet::new();
    let mut size = 0i64;
    let mut inodes = 0i64;
    let mut stack = dirs.to_vec();
    while let Some(d) = stack.pop() {
        let m = match fs::symlink_metadata(&d) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if seen.insert((m.dev(), m.ino())) {
            size += (m.blocks() * 512) as i64;
            inodes += 1;
        }
        if m.is_dir() {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                // Removed meanwhile (a snapshot going away while `df` walks).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            for e in rd {
                stack.push(e?.path());
            }
        }
    }
    Ok((size, inodes))
}

impl Snapshotter {
    pub fn open(root: impl Into<PathBuf>) -> Result<Snapshotter> {
        let root = root.into();
        fs::create_dir_all(root.join("snapshots"))?;
        let db = Database::create(root.join("metadata.redb"))?;
        if let Some(n) = index::migrate(&db)? {
            tracing::info!(snapshots = n, "metadata indexes built");
        }
        KITS.create(&db)?;
        let s = Snapshotter {
            root,
            db,
            trees: TreeClaims::default(),
            lazy: crate::lazy::Mounts::default(),
        };
        // Finish what a crash interrupted.
        s.cleanup()?;
        remove_tree(&s.staging_dir());
        fs::create_dir_all(s.staging_dir())?;
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn trees_dir(&self) -> PathBuf {
        self.root.join("trees")
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(id.to_string())
    }

    pub fn fs_dir(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// The directory of snapshot `id` (its `fs`, and a lazy layer's blob beside it).
    pub fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.dir(id)
    }

    pub fn lazy(&self) -> &crate::lazy::Mounts {
        &self.lazy
    }

    fn read(&self) -> Result<ReadTables> {
        ReadTables::open(&self.db.begin_read()?)
    }

    pub fn get(&self, key: &str) -> Result<Record> {
        let r = self.db.begin_read()?;
        let t = r.open_table(index::SNAPSHOTS)?;
        index::get(&t, key)?.ok_or_else(|| SnapError::NotFound(key.to_string()))
    }

    fn all(&self) -> Result<Vec<(String, Record)>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(index::SNAPSHOTS)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// Parent chain of a record, nearest first (fs dirs).
    fn lowers(&self, parent: &str) -> Result<Vec<PathBuf>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(index::LINKS)?;
        self.lowers_in(&t, parent)
    }

    fn lowers_in(
        &self,
        t: &impl ReadableTable<&'static str, (u64, &'static str)>,
        parent: &str,
    ) -> Result<Vec<PathBuf>> {
        index::chain(t, parent)?
            .into_iter()
            .map(|id| {
                self.check_lazy_served(id)?;
                Ok(self.fs_dir(id))
            })
            .collect()
    }

    /// A lazy layer's files exist only through its FUSE mount: one this daemon does not
    /// hold (it could not be mounted again after a restart) is an empty directory, and a
    /// container would start without its model rather than fail.
    fn check_lazy_served(&self, id: u64) -> Result<()> {
        if self.lazy.holds(id) {
            return Ok(());
        }
        let dir = self.dir(id);
        let lazy = [crate::lazy::META, crate::lazy::BLOB]
            .iter()
            .any(|f| dir.join(f).exists());
        if !lazy {
            return Ok(());
        }
        Err(SnapError::FailedPrecondition(format!(
            "layer snapshot {id} is served lazily, but kitsnap serve could not mount it again \
             (its log says why, under \"lazy layer not mounted again\"): remove the images \
             that use it (ctr images rm, nerdctl rmi) and pull them again"
        )))
    }

    /// What a Prepare/View must satisfy; checked before the heavy work and again inside
    /// the write transaction (the parent may have gone meanwhile).
    fn check_create(
        snaps: &impl ReadableTable<&'static str, &'static [u8]>,
        targets: &impl redb::ReadableMultimapTable<&'static str, &'static str>,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        if snaps.get(key)?.is_some() {
            return Err(SnapError::AlreadyExists(key.to_string()));
        }
        if !parent.is_empty() {
            let p = index::get(snaps, parent)?
                .ok_or_else(|| SnapError::NotFound(parent.to_string()))?;
            if p.kind != Kind::Committed {
                return Err(SnapError::InvalidArgument(format!(
                    "parent {parent:?} is not a committed snapshot"
                )));
            }
        }
        // Remote-snapshot protocol: a layer this daemon already holds (committed with the
        // same target label and parent) need not be unpacked again.
        if kind == Kind::Active
            && let Some(target) = labels.get(label::TARGET_REF)
            && index::held_target(snaps, targets, parent, target)?.is_some()
        {
            return Err(SnapError::AlreadyExists(format!(
                "target {target} (held by this snapshotter)"
            )));
        }
        Ok(())
    }

    /// Makes `snapshots/new-<random>/{fs,work}` (modes as containerd's overlay makes them).
    fn stage_dirs(&self, kind: Kind) -> Result<DirGuard> {
        let mut b = fs::DirBuilder::new();
        b.mode(0o700);
        let staged = loop {
            let p = self.snapshots_dir().join(format!("new-{}", unique()));
            match b.create(&p) {
                Ok(()) => break DirGuard(Some(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let p = staged.0.as_deref().expect("staged");
        let made = (|| -> std::io::Result<()> {
            for (sub, mode) in [("fs", 0o755), ("work", 0o711)] {
                if sub == "work" && kind != Kind::Active {
                    continue;
                }
                b.mode(mode).create(p.join(sub))?;
                // Independent of the daemon's umask.
                fs::set_permissions(p.join(sub), fs::Permissions::from_mode(mode))?;
            }
            fs::set_permissions(p, fs::Permissions::from_mode(0o755))
        })();
        made?;
        Ok(staged)
    }

    /// Creates an active snapshot (`Prepare`) or a read-only view (`View`) on `parent`.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(SnapError::InvalidArgument("snapshot key is empty".into()));
        }
        // Fail fast, before any heavy work, from a read transaction (no lock).
        {
            let t = self.read()?;
            Self::check_create(&t.snaps, &t.targets, kind, key, parent, &labels)?;
            if kind == Kind::View
                && let Some(v) = labels.get(label::LAYERS)
            {
                // Checked now so that a bad selection fails the View, not a later Mounts.
                self.select_layers(self.lowers_in(&t.links, parent)?, v)?;
            }
        }
        // Hardlinking a ModelKit tree may take long: only this tree is claimed meanwhile.
        let tree = self.tree_for(key, &labels)?;
        let res = self.record(kind, key, parent, labels, tree.as_ref());
        if let (Err(_), Some(claim)) = (&res, tree) {
            // A tree built for nothing goes again (unless someone else uses it).
            let name = claim.name.clone();
            drop(claim);
            let _ = self.release_tree(&name);
        }
        res
    }

    /// The transaction of a Prepare/View: directories staged, renamed into place and the
    /// record committed, or nothing.
    fn record(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        tree: Option<&TreeClaim<'_>>,
    ) -> Result<Vec<Mount>> {
        let w = self.db.begin_write()?;
        let (mounts, mut dir) = {
            let mut t = Tables::open(&w)?;
            Self::check_create(&t.snaps, &t.targets, kind, key, parent, &labels)?;
            let id = t.next_id()?;
            let ts = now();
            let rec = Record {
                id,
                kind,
                parent: parent.to_string(),
                labels,
                created: ts,
                updated: ts,
                size: 0,
                inodes: 0,
                tree: tree.map(|c| c.name.clone()),
            };
            let mounts = self.mounts_in(&t.links, &rec)?;
            let mut staged = self.stage_dirs(kind)?;
            let path = self.dir(id);
            // An id whose transaction never committed may come again: so may its directory.
            remove_tree(&path);
            fs::rename(staged.0.take().expect("staged"), &path)?;
            let dir = DirGuard(Some(path));
            t.put(key, &rec)?;
            (mounts, dir)
        };
        // On failure the guard removes the directory: no record names it.
        w.commit()?;
        dir.0 = None;
        Ok(mounts)
    }

    fn mounts_in(
        &self,
        t: &impl ReadableTable<&'static str, (u64, &'static str)>,
        r: &Record,
    ) -> Result<Vec<Mount>> {
        let mut lowers = self.lowers_in(t, &r.parent)?;
        if r.kind == Kind::View
            && let Some(v) = r.labels.get(label::LAYERS)
        {
            lowers = self.select_layers(lowers, v)?;
        }
        if let Some(t) = &r.tree {
            // On top of the image layers, under the container's own upper dir.
            lowers.insert(0, self.trees_dir().join(t));
        }
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let lowerdir = || {
            let mut o = String::from("lowerdir=");
            for (i, p) in lowers.iter().enumerate() {
                if i > 0 {
                    o.push(':');
                }
                o.push_str(&p.to_string_lossy());
            }
            o
        };
        let m = match (r.kind, lowers.len()) {
            (Kind::Active, 0) => Mount {
                kind: "bind".into(),
                source: s(&self.fs_dir(r.id)),
                options: vec!["rbind".into(), "rw".into()],
            },
            (Kind::Active, _) => Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!("workdir={}", s(&self.dir(r.id).join("work"))),
                    format!("upperdir={}", s(&self.fs_dir(r.id))),
                    lowerdir(),
                ],
            },
            (_, 0) => Mount {
                kind: "bind".into(),
                source: s(&self.fs_dir(r.id)),
                options: vec!["rbind".into(), "ro".into()],
            },
            (_, 1) => Mount {
                kind: "bind".into(),
                source: s(&lowers[0]),
                options: vec!["rbind".into(), "ro".into()],
            },
            (_, _) => Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![lowerdir()],
            },
        };
        Ok(vec![m])
    }

    /// Whether a committed snapshot on any parent carries `target` (see [`index::held_anywhere`]).
    pub fn holds_anywhere(&self, target: &str) -> Result<bool> {
        let t = self.read()?;
        index::held_anywhere(&t.snaps, &t.targets, target)
    }

    /// Where pulls unpack layers before a snapshot exists for them (on the snapshots'
    /// filesystem, so that a staged tree is renamed into its snapshot). Emptied at open:
    /// only this daemon's running pulls use it.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// Whether a committed snapshot on `parent` carries the remote-snapshot `target` label
    /// (the layer is held: containerd may adopt it instead of unpacking).
    pub fn holds(&self, parent: &str, target: &str) -> Result<bool> {
        let t = self.read()?;
        Ok(index::held_target(&t.snaps, &t.targets, parent, target)?.is_some())
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let t = self.read()?;
        let r = index::get(&t.snaps, key)?.ok_or_else(|| SnapError::NotFound(key.to_string()))?;
        if r.kind == Kind::Committed {
            return Err(SnapError::FailedPrecondition(format!(
                "snapshot {key:?} is committed; mount a view of it"
            )));
        }
        self.mounts_in(&t.links, &r)
    }

    /// Turns the active snapshot `key` into the committed snapshot `name`.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        if name.is_empty() {
            return Err(SnapError::InvalidArgument("snapshot name is empty".into()));
        }
        // A key removed and prepared again between the measure and the transaction is
        // measured again.
        for _ in 0..3 {
            let r = self.get(key)?;
            if r.kind != Kind::Active {
                return Err(SnapError::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            // Usage is measured once, outside any transaction: committed layers do not
            // change.
            let (size, inodes) = disk_usage(&self.fs_dir(r.id))?;
            let w = self.db.begin_write()?;
            {
                let mut t = Tables::open(&w)?;
                if t.snaps.get(name)?.is_some() {
                    return Err(SnapError::AlreadyExists(name.to_string()));
                }
                let cur = t
                    .get(key)?
                    .ok_or_else(|| SnapError::NotFound(key.to_string()))?;
                if cur.id != r.id {
                    continue;
                }
                if cur.kind != Kind::Active {
                    return Err(SnapError::FailedPrecondition(format!(
                        "snapshot {key:?} is not active"
                    )));
                }
                // A new snapshot: created and updated now, as containerd's storage does.
                let ts = now();
                let mut rec = cur.clone();
                rec.kind = Kind::Committed;
                rec.labels.extend(labels);
                rec.created = ts;
                rec.updated = ts;
                rec.size = size;
                rec.inodes = inodes;
                t.delete(key, &cur)?;
                t.put(name, &rec)?;
            }
            w.commit()?;
            // The work dir is only for the overlay upper of an active snapshot.
            let _ = fs::remove_dir_all(self.dir(r.id).join("work"));
            return Ok(());
        }
        Err(SnapError::Internal(format!(
            "snapshot {key:?} kept changing while it was committed"
        )))
    }

    pub fn remove(&self, key: &str) -> Result<()> {
        let w = self.db.begin_write()?;
        let rec = {
            let mut t = Tables::open(&w)?;
            let rec = t
                .get(key)?
                .ok_or_else(|| SnapError::NotFound(key.to_string()))?;
            if let Some(child) = index::first(&t.children, key)? {
                return Err(SnapError::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?}: snapshot {child:?} is its child"
                )));
            }
            t.delete(key, &rec)?;
            rec
        };
        w.commit()?;
        // Files after the record, outside any lock: renamed first so that a crash leaves
        // an `rm-` directory that Cleanup finishes.
        let dir = self.dir(rec.id);
        self.lazy.release(rec.id, &dir.join("fs"));
        let tomb = self.snapshots_dir().join(format!("rm-{}", rec.id));
        match fs::rename(&dir, &tomb) {
            Ok(()) => {
                remove_tree(&tomb);
            }
            // A concurrent Cleanup took it already.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "renaming a removed snapshot");
                remove_tree(&dir);
            }
        }
        if let Some(tree) = rec.tree {
            self.release_tree(&tree)?;
        }
        Ok(())
    }

    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        mask: &[String],
    ) -> Result<Record> {
        let w = self.db.begin_write()?;
        let rec = {
            let mut t = Tables::open(&w)?;
            let old = t
                .get(key)?
                .ok_or_else(|| SnapError::NotFound(key.to_string()))?;
            let mut rec = old.clone();
            if mask.is_empty() {
                rec.labels = labels;
            } else {
                for path in mask {
                    if path == "labels" {
                        rec.labels = labels.clone();
                    } else if let Some(k) = path.strip_prefix("labels.") {
                        match labels.get(k) {
                            Some(v) => rec.labels.insert(k.to_string(), v.clone()),
                            None => rec.labels.remove(k),
                        };
                    } else {
                        return Err(SnapError::InvalidArgument(format!(
                            "cannot update {path:?}: only labels are mutable"
                        )));
                    }
                }
            }
            rec.updated = now();
            t.replace(key, &old, &rec)?;
            rec
        };
        w.commit()?;
        Ok(rec)
    }

    /// Snapshots matching containerd filters. A filter whose every alternative pins the
    /// name, the parent, or the parent and target ref (the remote-snapshot protocol's
    /// question) is answered from the indexes; any other reads every record.
    pub fn list(&self, filters: &[String]) -> Result<Vec<(String, Record)>> {
        let f = filter::Filter::parse(filters).map_err(SnapError::InvalidArgument)?;
        let matches = |name: &str, r: &Record| {
            f.matches(&filter::Fields {
                name,
                parent: &r.parent,
                kind: r.kind.as_str(),
                labels: &r.labels,
            })
        };
        let Some(hints) = f.hints(label::TARGET_REF) else {
            return Ok(self
                .all()?
                .into_iter()
                .filter(|(name, r)| matches(name, r))
                .collect());
        };
        let t = self.read()?;
        let mut keys = BTreeSet::new();
        for h in hints {
            match h {
                filter::Hint::Name(n) => {
                    keys.insert(n);
                }
                filter::Hint::Parent(p) => keys.extend(index::values(&t.children, &p)?),
                filter::Hint::ParentLabel { parent, value } => keys.extend(index::values(
                    &t.targets,
                    &index::target_key(&parent, &value),
                )?),
            }
        }
        let mut out = Vec::new();
        for k in keys {
            if let Some(r) = index::get(&t.snaps, &k)?
                && matches(&k, &r)
            {
                out.push((k, r));
            }
        }
        Ok(out)
    }

    /// (bytes, inodes): measured now for an active snapshot, as recorded otherwise.
    pub fn usage(&self, key: &str) -> Result<(i64, i64)> {
        let r = self.get(key)?;
        if r.kind == Kind::Active {
            disk_usage(&self.fs_dir(r.id))
        } else {
            Ok((r.size, r.inodes))
        }
    }

    /// Keeps the layers `spec` names (indices from the bottom) of a chain given top first.
    fn select_layers(&self, lowers: Vec<PathBuf>, spec: &str) -> Result<Vec<PathBuf>> {
        let want = compose::parse_layers_label(spec)?;
        let n = lowers.len();
        if let Some(bad) = want.iter().find(|&&i| i >= n) {
            return Err(SnapError::InvalidArgument(format!(
                "{}: layer {bad} does not exist (the parent chain has {n})",
                label::LAYERS
            )));
        }
        if want.is_empty() {
            return Err(SnapError::InvalidArgument("no layers selected".into()));
        }
        // lowers[0] is the top, i.e. index n-1.
        Ok(lowers
            .into_iter()
            .enumerate()
            .filter(|(pos, _)| want.contains(&(n - 1 - pos)))
            .map(|(_, p)| p)
            .collect())
    }

    fn claim_tree(&self, name: &str) -> TreeClaim<'_> {
        let mut m = self.trees.lock();
        let c = m.entry(name.to_string()).or_insert_with(|| Claim {
            users: 0,
            build: Arc::new(Mutex::new(())),
        });
        c.users += 1;
        TreeClaim {
            claims: &self.trees,
            name: name.to_string(),
            build: c.build.clone(),
        }
    }

    /// Deletes a tree that no record names and no Prepare claims (after its last user
    /// went). The check and the rename away happen under the claims lock; the deletion
    /// after it.
    fn release_tree(&self, tree: &str) -> Result<()> {
        let doomed = {
            let claims = self.trees.lock();
            if claims.contains_key(tree) {
                return Ok(());
            }
            if index::first(&self.read()?.trees, tree)?.is_some() {
                return Ok(());
            }
            let path = self.trees_dir().join(tree);
            let tomb = self.trees_dir().join(format!("rm-{tree}-{}", unique()));
            match fs::rename(&path, &tomb) {
                Ok(()) => tomb,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        };
        remove_tree(&doomed);
        Ok(())
    }

    /// The ModelKit tree a Prepare/View asks for with `kitsnap.modelkit`, built if needed,
    /// claimed until the caller drops the claim (after its record is committed).
    fn tree_for(
        &self,
        key: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<TreeClaim<'_>>> {
        let Some(v) = labels.get(label::MODELKIT) else {
            return Ok(None);
        };
        let (reference, dest) = compose::parse_modelkit_label(v)?;
        // Pulls record normalised references (`registry/repo:tag`): compare the same way.
        let reference = reference
            .parse::<kitsnap_core::reference::Reference>()
            .map(|r| r.to_string())
            .unwrap_or(reference);
        // Backend keys are `<namespace>/<seq>/<name>`: prefer the container's namespace.
        let ns = key.split('/').next().unwrap_or_default();
        let kit = self.kit(ns, &reference)?.ok_or_else(|| {
            SnapError::FailedPrecondition(format!(
                "ModelKit {reference} is not on this node: run `kitsnap pull --containerd {reference}` first"
            ))
        })?;
        let (top_key, _) = self.find_named(&kit.namespace, kit.top())?.ok_or_else(|| {
            SnapError::FailedPrecondition(format!(
                "ModelKit {reference} was removed from containerd (namespace {}); pull it again",
                kit.namespace
            ))
        })?;
        let mut layers = self.lowers(&top_key)?;
        layers.reverse();
        if layers.len() != kit.layers.len() {
            return Err(SnapError::Internal(format!(
                "ModelKit {reference}: {} layer snapshots for {} layers",
                layers.len(),
                kit.layers.len()
            )));
        }
        if let Some(f) = labels.get(label::FILTER) {
            let filters = f
                .split(';')
                .map(|s| s.parse::<kitsnap_core::layers::Filter>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| SnapError::InvalidArgument(format!("{}: {e}", label::FILTER)))?;
            layers = layers
                .into_iter()
                .zip(&kit.layers)
                .filter(|(_, l)| {
                    kitsnap_core::layers::selected(
                        &filters,
                        kitsnap_core::layers::FilterType::from_user_str(&l.kind),
                        &l.name,
                        &l.path,
                    )
                })
                .map(|(p, _)| p)
                .collect();
        }
        let claim = self.claim_tree(&compose::tree_name(&layers, &dest));
        let build = claim.build.clone();
        let _one_builder = build.lock().unwrap_or_else(|e| e.into_inner());
        let name = compose::ensure_tree(&self.trees_dir(), &layers, &dest)?;
        debug_assert_eq!(name, claim.name);
        Ok(Some(claim))
    }

    /// The snapshot containerd calls `name` in namespace `ns` (backend key `ns/<seq>/name`).
    pub fn find_named(&self, ns: &str, name: &str) -> Result<Option<(String, Record)>> {
        let t = self.read()?;
        let Some(key) = index::first(&t.named, &format!("{ns}\0{name}"))? else {
            return Ok(None);
        };
        Ok(index::get(&t.snaps, &key)?.map(|r| (key, r)))
    }

    /// Records a ModelKit pulled into containerd.
    pub fn put_kit(&self, k: &compose::KitRecord) -> Result<()> {
        Ok(KITS.put(&self.db, &compose::kit_key(&k.namespace, &k.reference), k)?)
    }

    /// A pulled ModelKit by reference: in `ns` if there, else in any namespace.
    pub fn kit(&self, ns: &str, reference: &str) -> Result<Option<compose::KitRecord>> {
        if let Some(k) = KITS.get(&self.db, &compose::kit_key(ns, reference))? {
            return Ok(Some(k));
        }
        Ok(self.kits()?.into_iter().find(|k| k.reference == reference))
    }

    pub fn kits(&self) -> Result<Vec<compose::KitRecord>> {
        Ok(KITS.all(&self.db)?)
    }

    /// Every kitsnap snapshot and tree on disk, hardlinks counted once: (snapshots, trees).
    pub fn disk_totals(&self) -> Result<(i64, i64)> {
        let snaps = disk_usage(&self.snapshots_dir())?.0;
        let both = disk_usage_many(&[self.snapshots_dir(), self.trees_dir()])?.0;
        Ok((snaps, both - snaps))
    }

    /// Deletes directories that no record names (left by crashes, interrupted removes or
    /// failed creates). Returns how many it deleted.
    pub fn cleanup(&self) -> Result<usize> {
        let doomed: Vec<PathBuf> = {
            // A write transaction, so no Prepare is between staging its directories and
            // committing its record while the directory is listed; nothing else is done
            // under it (the deletions come after).
            let w = self.db.begin_write()?;
            let doomed = {
                let ids = w.open_table(index::IDS)?;
                let mut live = HashSet::new();
                for e in ids.iter()? {
                    live.insert(e?.0.value());
                }
                let mut doomed = Vec::new();
                for e in fs::read_dir(self.snapshots_dir())? {
                    let e = e?;
                    let name = e.file_name();
                    let id = name.to_str().and_then(|n| n.parse::<u64>().ok());
                    if !id.is_some_and(|id| live.contains(&id)) {
                        doomed.push(e.path());
                    }
                }
                doomed
            };
            w.abort()?;
            doomed
        };
        let mut removed = doomed.iter().filter(|p| remove_tree(p)).count();
        removed += self.cleanup_trees()?;
        Ok(removed)
    }

    /// Deletes trees no record names and no Prepare claims, and leftovers of builds.
    fn cleanup_trees(&self) -> Result<usize> {
        let doomed = {
            let claims = self.trees.lock();
            let rd = match fs::read_dir(self.trees_dir()) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e.into()),
            };
            let t = self.read()?;
            let mut doomed = Vec::new();
            for e in rd {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("rm-") {
                    doomed.push(e.path());
                } else if let Some(rest) = name.strip_prefix(".tmp-") {
                    let tree = rest.split('-').next().unwrap_or_default();
                    if !claims.contains_key(tree) {
                        doomed.push(e.path());
                    }
                } else if !claims.contains_key(&name) && index::first(&t.trees, &name)?.is_none() {
                    let tomb = self.trees_dir().join(format!("rm-{name}-{}", unique()));
                    fs::rename(e.path(), &tomb)?;
                    doomed.push(tomb);
                }
            }
            doomed
        };
        Ok(doomed.iter().filter(|p| remove_tree(p)).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(k: &str, v: &str) -> BTreeMap<String, String> {
        [(k.to_string(), v.to_string())].into()
    }

    /// A lazy layer this daemon does not serve (its mount could not be made again after a
    /// restart) is refused as a lower layer, never handed out as an empty directory.
    #[test]
    fn an_unserved_lazy_layer_is_refused_not_mounted_empty() {
        let d = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(d.path()).unwrap();
        s.create(Kind::Active, "a", "", BTreeMap::new()).unwrap();
        let id = s.get("a").unwrap().id;
        fs::write(s.dir(id).join(crate::lazy::META), b"{}").unwrap();
        s.commit("lazy", "a", l(label::LAZY, "true")).unwrap();
        for kind in [Kind::Active, Kind::View] {
            match s.create(kind, &format!("c-{kind:?}"), "lazy", BTreeMap::new()) {
                Err(SnapError::FailedPrecondition(m)) => {
                    assert!(m.contains("pull them again"), "{m}")
                }
                other => panic!("{kind:?} on an unserved lazy layer: {other:?}"),
            }
        }
        // The same layer as an ordinary one (no lazy record) mounts as before.
        fs::remove_file(s.dir(id).join(crate::lazy::META)).unwrap();
        s.create(Kind::View, "v", "lazy", BTreeMap::new()).unwrap();
    }

    #[test]
    fn lifecycle_mounts_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(d.path()).unwrap();
        let m = s.create(Kind::Active, "a", "", BTreeMap::new()).unwrap();
        assert_eq!(m[0].kind, "bind");
        fs::write(Path::new(&m[0].source).join("f"), vec![1u8; 10000]).unwrap();
        assert!(matches!(
            s.create(Kind::Active, "a", "", BTreeMap::new()),
            Err(SnapError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.create(Kind::Active, "b", "a", BTreeMap::new()),
            Err(SnapError::InvalidArgument(_))
        ));
        assert!(matches!(
            s.create(Kind::Active, "b", "nope", BTreeMap::new()),
            Err(SnapError::NotFound(_))
        ));
        s.commit("l1", "a", l(label::TARGET_REF, "sha256:1"))
            .unwrap();
        assert!(matches!(
            s.commit("l1", "a", BTreeMap::new()),
            Err(SnapError::NotFound(_))
        ));
        let l1 = s.get("l1").unwrap();
        assert_eq!(l1.kind, Kind::Committed);
        assert!(l1.size >= 10000);
        let m = s.create(Kind::Active, "b", "l1", BTreeMap::new()).unwrap();
        assert_eq!(m[0].kind, "overlay");
        assert!(m[0].options.iter().any(|o| o.starts_with("lowerdir=")));
        s.commit("l2", "b", BTreeMap::new()).unwrap();
        let v = s.create(Kind::View, "v", "l2", BTreeMap::new()).unwrap();
        assert_eq!(v[0].kind, "overlay");
        assert_eq!(v[0].options.len(), 1, "lowerdir only: read-only");
        let v1 = s.create(Kind::View, "v1", "l1", BTreeMap::new()).unwrap();
        assert_eq!(
            (v1[0].kind.as_str(), v1[0].options[1].as_str()),
            ("bind", "ro")
        );
        assert!(matches!(
            s.commit("x", "v1", BTreeMap::new()),
            Err(SnapError::FailedPrecondition(_))
        ));
        assert!(matches!(
            s.remove("l1"),
            Err(SnapError::FailedPrecondition(_))
        ));
        // Remote-snapshot protocol: the same target on the same parent is already held.
        assert!(matches!(
            s.create(Kind::Active, "again", "", l(label::TARGET_REF, "sha256:1")),
            Err(SnapError::AlreadyExists(_))
        ));
        let found = s
            .list(&[format!(
                r#"labels."{}"==sha256:1,parent=="""#,
                label::TARGET_REF
            )])
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "l1");
        let r = s
            .update(
                "l2",
                l("containerd.io/gc.root", "x"),
                &["labels.containerd.io/gc.root".into()],
            )
            .unwrap();
        assert_eq!(
            r.labels.get("containerd.io/gc.root").map(String::as_str),
            Some("x")
        );
        assert!(s.update("l2", BTreeMap::new(), &["parent".into()]).is_err());
        for k in ["v", "v1", "l2", "l1"] {
            s.remove(k).unwrap();
        }
        assert!(s.list(&[]).unwrap().is_empty());
        assert_eq!(fs::read_dir(d.path().join("snapshots")).unwrap().count(), 0);
    }

    #[test]
    fn cleanup_racing_prepare_never_takes_a_new_snapshot() {
        // containerd's GC calls Cleanup while other clients Prepare.
        let d = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Snapshotter::open(d.path()).unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cleaner = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    s.cleanup().unwrap();
                }
            })
        };
        for i in 0..300 {
            let key = format!("k{i}");
            let m = s.create(Kind::Active, &key, "", BTreeMap::new()).unwrap();
            assert!(
                Path::new(&m[0].source).is_dir(),
                "snapshot {key} lost its directory"
            );
            s.remove(&key).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        cleaner.join().unwrap();
    }

    #[test]
    fn restart_keeps_snapshots_and_cleans_orphans() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Snapshotter::open(d.path()).unwrap();
            s.create(Kind::Active, "a", "", BTreeMap::new()).unwrap();
            s.commit("c", "a", BTreeMap::new()).unwrap();
        }
        // Orphans as crashes leave them: an id whose transaction never committed, a
        // staged directory, an interrupted removal.
        for o in ["999/fs", "new-123-0-ab/fs", "rm-7/fs/x"] {
            fs::create_dir_all(d.path().join("snapshots").join(o)).unwrap();
        }
        let s = Snapshotter::open(d.path()).unwrap();
        assert_eq!(s.get("c").unwrap().kind, Kind::Committed);
        let left: Vec<_> = fs::read_dir(d.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec![s.get("c").unwrap().id.to_string()]);
        // New ids never reuse old ones.
        s.create(Kind::Active, "n", "c", BTreeMap::new()).unwrap();
        assert!(s.get("n").unwrap().id > s.get("c").unwrap().id);
    }

    /// Every index entry, recomputed from the records, equals what the tables hold.
    fn check_indexes(s: &Snapshotter) {
        type Pairs = BTreeSet<(String, String)>;
        let (mut ids, mut children, mut targets, mut trees, mut named) = (
            BTreeSet::new(),
            Pairs::new(),
            Pairs::new(),
            Pairs::new(),
            Pairs::new(),
        );
        let mut links = BTreeMap::new();
        for (k, r) in s.all().unwrap() {
            let e = index::entries(&k, &r);
            links.insert(k.clone(), (e.id, e.parent.clone()));
            ids.insert((e.id, k.clone()));
            children.insert((e.parent, k.clone()));
            for t in e.target {
                targets.insert((t, k.clone()));
            }
            e.tree.map(|t| trees.insert((t, k.clone())));
            e.named.map(|n| named.insert((n, k.clone())));
        }
        let t = s.read().unwrap();
        let r = s.db.begin_read().unwrap();
        let stored_ids: BTreeSet<(u64, String)> = r
            .open_table(index::IDS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value(), v.value().to_string())
            })
            .collect();
        assert_eq!(stored_ids, ids, "idx_ids");
        let stored_links: BTreeMap<String, (u64, String)> = t
            .links
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                let (id, p) = v.value();
                (k.value().to_string(), (id, p.to_string()))
            })
            .collect();
        assert_eq!(stored_links, links, "idx_links");
        let pairs = |m: &redb::ReadOnlyMultimapTable<&'static str, &'static str>| -> Pairs {
            use redb::ReadableMultimapTable;
            let mut out = Pairs::new();
            for e in m.iter().unwrap() {
                let (k, vs) = e.unwrap();
                for v in vs {
                    out.insert((k.value().to_string(), v.unwrap().value().to_string()));
                }
            }
            out
        };
        assert_eq!(pairs(&t.children), children, "idx_children");
        assert_eq!(pairs(&t.targets), targets, "idx_targets");
        assert_eq!(pairs(&t.trees), trees, "idx_trees");
        assert_eq!(pairs(&t.named), named, "idx_named");
    }

    #[test]
    fn indexes_follow_create_commit_update_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(d.path()).unwrap();
        let target = |t: &str| l(label::TARGET_REF, t);
        s.create(Kind::Active, "ns/1/x", "", target("t0")).unwrap();
        check_indexes(&s);
        s.commit("ns/2/l0", "ns/1/x", BTreeMap::new()).unwrap();
        check_indexes(&s);
        s.create(Kind::Active, "ns/3/y", "ns/2/l0", BTreeMap::new())
            .unwrap();
        s.commit("ns/4/l1", "ns/3/y", target("t1")).unwrap();
        s.create(Kind::View, "ns/5/v", "ns/4/l1", BTreeMap::new())
            .unwrap();
        s.create(Kind::Active, "plain", "ns/4/l1", BTreeMap::new())
            .unwrap();
        check_indexes(&s);
        // Remote-snapshot protocol, answered from the index.
        assert!(matches!(
            s.create(Kind::Active, "ns/6/z", "ns/2/l0", target("t1")),
            Err(SnapError::AlreadyExists(_))
        ));
        // Same target, other parent: not held.
        s.create(Kind::Active, "ns/6/z", "", target("t1")).unwrap();
        // Refused operations leave the indexes alone.
        assert!(s.commit("ns/4/l1", "ns/6/z", BTreeMap::new()).is_err());
        assert!(s.remove("ns/2/l0").is_err());
        assert!(
            s.create(Kind::Active, "plain", "", BTreeMap::new())
                .is_err()
        );
        check_indexes(&s);
        let kids: Vec<_> = s
            .list(&["parent==ns/4/l1".into()])
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(kids, vec!["ns/5/v".to_string(), "plain".to_string()]);
        assert_eq!(
            s.find_named("ns", "l1").unwrap().map(|(k, _)| k),
            Some("ns/4/l1".to_string())
        );
        assert!(s.find_named("ns", "plain").unwrap().is_none());
        // Update moves the target entry: held under the new target only.
        s.update(
            "ns/4/l1",
            target("t9"),
            &["labels.containerd.io/snapshot.ref".into()],
        )
        .unwrap();
        check_indexes(&s);
        assert!(
            s.create(Kind::Active, "ns/7/w", "ns/2/l0", target("t1"))
                .is_ok()
        );
        assert!(matches!(
            s.create(Kind::Active, "ns/8/w", "ns/2/l0", target("t9")),
            Err(SnapError::AlreadyExists(_))
        ));
        s.update("ns/4/l1", BTreeMap::new(), &[]).unwrap();
        check_indexes(&s);
        for k in ["ns/7/w", "ns/6/z", "plain", "ns/5/v", "ns/4/l1", "ns/2/l0"] {
            s.remove(k).unwrap();
            check_indexes(&s);
        }
        assert!(s.list(&[]).unwrap().is_empty());
        assert_eq!(fs::read_dir(d.path().join("snapshots")).unwrap().count(), 0);
    }

    #[test]
    fn list_from_indexes_equals_a_scan() {
        let d = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(d.path()).unwrap();
        let mut parent = String::new();
        for i in 0..6 {
            let labels = l(label::TARGET_REF, &format!("t{}", i % 3));
            s.create(Kind::Active, &format!("a{i}"), &parent, labels.clone())
                .unwrap();
            s.commit(&format!("c{i}"), &format!("a{i}"), labels)
                .unwrap();
            s.create(
                Kind::View,
                &format!("v{i}"),
                &format!("c{i}"),
                BTreeMap::new(),
            )
            .unwrap();
            parent = format!("c{i}");
        }
        s.create(Kind::Active, "top", &parent, l(label::TARGET_REF, "t0"))
            .unwrap();
        for f in [
            vec![r#"labels."containerd.io/snapshot.ref"==t1,parent=="c0""#],
            vec![r#"labels."containerd.io/snapshot.ref"==t0,parent=="""#],
            vec![r#"labels."containerd.io/snapshot.ref"==t0,parent=="c5""#],
            vec!["parent==c2", "name==v5", "name==nope"],
            vec!["parent==c2,kind==view"],
            vec![r#"parent=="""#],
            vec!["kind==committed"],
        ] {
            let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            let parsed = filter::Filter::parse(&f).unwrap();
            let scanned: Vec<String> = s
                .all()
                .unwrap()
                .into_iter()
                .filter(|(n, r)| {
                    parsed.matches(&filter::Fields {
                        name: n,
                        parent: &r.parent,
                        kind: r.kind.as_str(),
                        labels: &r.labels,
                    })
                })
                .map(|(n, _)| n)
                .collect();
            let listed: Vec<String> = s.list(&f).unwrap().into_iter().map(|(n, _)| n).collect();
            assert_eq!(listed, scanned, "{f:?}");
            assert!(!listed.is_empty() || f[0].contains("nope"), "{f:?}");
        }
    }

    #[test]
    fn index_less_database_is_indexed_at_open() {
        // A metadata.redb as kitsnap wrote it before the indexes: records and next_id.
        let d = tempfile::tempdir().unwrap();
        let rec = |id, kind, parent: &str, labels| Record {
            id,
            kind,
            parent: parent.to_string(),
            labels,
            created: (1, 0),
            updated: (1, 0),
            size: 0,
            inodes: 0,
            tree: None,
        };
        {
            let db = Database::create(d.path().join("metadata.redb")).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut snaps = w.open_table(index::SNAPSHOTS).unwrap();
                for (k, r) in [
                    (
                        "default/1/c1",
                        rec(1, Kind::Committed, "", l(label::TARGET_REF, "t1")),
                    ),
                    (
                        "default/2/c2",
                        rec(2, Kind::Committed, "default/1/c1", BTreeMap::new()),
                    ),
                    ("a1", rec(3, Kind::Active, "default/2/c2", BTreeMap::new())),
                ] {
                    snaps.insert(k, encode(&r).unwrap().as_slice()).unwrap();
                    fs::create_dir_all(d.path().join(format!("snapshots/{}/fs", r.id))).unwrap();
                }
                w.open_table(index::META)
                    .unwrap()
                    .insert("next_id", 4)
                    .unwrap();
            }
            w.commit().unwrap();
        }
        let s = Snapshotter::open(d.path()).unwrap();
        check_indexes(&s);
        // Cleanup trusted the migrated id index: every directory is still there.
        for id in 1..=3 {
            assert!(d.path().join(format!("snapshots/{id}/fs")).is_dir());
        }
        assert!(matches!(
            s.remove("default/2/c2"),
            Err(SnapError::FailedPrecondition(_))
        ));
        assert!(matches!(
            s.create(Kind::Active, "x", "", l(label::TARGET_REF, "t1")),
            Err(SnapError::AlreadyExists(_))
        ));
        assert_eq!(
            s.find_named("default", "c2").unwrap().map(|(k, _)| k),
            Some("default/2/c2".to_string())
        );
        s.create(Kind::Active, "new", "default/2/c2", BTreeMap::new())
            .unwrap();
        assert_eq!(s.get("new").unwrap().id, 4);
        check_indexes(&s);
        drop(s);
        // An older index layout (or a damaged index) is rebuilt from the records.
        {
            let db = Database::create(d.path().join("metadata.redb")).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut c = w.open_multimap_table(index::CHILDREN).unwrap();
                c.insert("a1", "ghost").unwrap();
                w.open_table(index::META)
                    .unwrap()
                    .insert("index_version", 0)
                    .unwrap();
            }
            w.commit().unwrap();
        }
        let s = Snapshotter::open(d.path()).unwrap();
        check_indexes(&s);
        drop(s);
        // Records written behind the indexes' back (an older kitsnap run on this root).
        {
            let db = Database::create(d.path().join("metadata.redb")).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut snaps = w.open_table(index::SNAPSHOTS).unwrap();
                let r = rec(9, Kind::Active, "default/2/c2", BTreeMap::new());
                snaps.insert("old", encode(&r).unwrap().as_slice()).unwrap();
            }
            w.commit().unwrap();
        }
        fs::create_dir_all(d.path().join("snapshots/9/fs")).unwrap();
        let s = Snapshotter::open(d.path()).unwrap();
        check_indexes(&s);
        assert!(d.path().join("snapshots/9/fs").is_dir());
        assert_eq!(
            index::migrate(&s.db).unwrap(),
            None,
            "indexed once, not at every open"
        );
        for k in ["old", "a1", "new"] {
            s.remove(k).unwrap();
        }
        check_indexes(&s);
    }

    #[test]
    fn modelkit_trees_are_claimed_shared_and_released() {
        let d = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(d.path()).unwrap();
        let m = s
            .create(Kind::Active, "default/1/ex", "", BTreeMap::new())
            .unwrap();
        fs::write(Path::new(&m[0].source).join("weights.bin"), b"w").unwrap();
        s.commit("default/2/sha256:l0", "default/1/ex", BTreeMap::new())
            .unwrap();
        let reference: String = "reg.example/m:v1"
            .parse::<kitsnap_core::reference::Reference>()
            .unwrap()
            .to_string();
        s.put_kit(&compose::KitRecord {
            namespace: "default".into(),
            reference: reference.clone(),
            manifest_digest: "sha256:m".into(),
            layers: vec![compose::KitLayer {
                digest: "sha256:d".into(),
                media_type: "x".into(),
                kind: "model".into(),
                name: "m".into(),
                path: "weights.bin".into(),
                size: 1,
                chain: "sha256:l0".into(),
                diff_id: "sha256:d".into(),
            }],
            pulled: 0,
            view: Vec::new(),
        })
        .unwrap();
        let want = l(label::MODELKIT, &format!("{reference}:/models"));
        let m1 = s
            .create(Kind::Active, "default/3/ctr1", "", want.clone())
            .unwrap();
        let m2 = s
            .create(Kind::Active, "default/4/ctr2", "", want.clone())
            .unwrap();
        check_indexes(&s);
        let tree = s.get("default/3/ctr1").unwrap().tree.unwrap();
        assert_eq!(s.get("default/4/ctr2").unwrap().tree.unwrap(), tree);
        let tdir = d.path().join("trees").join(&tree);
        assert!(m1[0].options.iter().any(|o| o.contains(&tree)), "{m1:?}");
        let lowerdir = |m: &[Mount]| {
            m[0].options
                .iter()
                .find(|o| o.starts_with("lowerdir="))
                .cloned()
        };
        assert_eq!(lowerdir(&m1), lowerdir(&m2), "one tree for both");
        assert_eq!(fs::read(tdir.join("models/weights.bin")).unwrap(), b"w");
        assert_eq!(s.cleanup().unwrap(), 0);
        s.remove("default/3/ctr1").unwrap();
        assert!(tdir.is_dir(), "still used by ctr2");
        s.remove("default/4/ctr2").unwrap();
        assert!(!tdir.exists(), "the last user took the tree with it");
        assert_eq!(fs::read_dir(d.path().join("trees")).unwrap().count(), 0);
        check_indexes(&s);

        // A tree claimed by a Prepare in flight (built, record not committed yet) is not
        // an orphan; an unclaimed unnamed one and build leftovers are.
        let claim = s.claim_tree("abc123");
        fs::create_dir_all(d.path().join("trees/abc123/models")).unwrap();
        fs::create_dir_all(d.path().join("trees/.tmp-abc123-1")).unwrap();
        fs::create_dir_all(d.path().join("trees/.tmp-def456-1")).unwrap();
        fs::create_dir_all(d.path().join("trees/rm-def456-1-2-3")).unwrap();
        assert_eq!(s.cleanup().unwrap(), 2);
        assert!(d.path().join("trees/abc123").is_dir());
        assert!(d.path().join("trees/.tmp-abc123-1").is_dir());
        drop(claim);
        assert_eq!(s.cleanup().unwrap(), 2);
        assert_eq!(fs::read_dir(d.path().join("trees")).unwrap().count(), 0);
    }

    #[test]
    fn a_failed_create_leaves_no_directory() {
        let d = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(d.path()).unwrap();
        s.create(Kind::Active, "a", "", BTreeMap::new()).unwrap();
        for _ in 0..3 {
            assert!(s.create(Kind::Active, "a", "", BTreeMap::new()).is_err());
            assert!(s.create(Kind::View, "v", "a", BTreeMap::new()).is_err());
        }
        let names: Vec<_> = fs::read_dir(d.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["1".to_string()]);
        let fs_dir = s.fs_dir(1);
        assert_eq!(
            fs::metadata(&fs_dir).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            fs::metadata(fs_dir.parent().unwrap().join("work"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o711
        );
    }

    #[test]
    fn concurrent_prepare_commit_remove_and_cleanup() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(Snapshotter::open(d.path()).unwrap());
        s.create(Kind::Active, "base-a", "", BTreeMap::new())
            .unwrap();
        s.commit("base", "base-a", BTreeMap::new()).unwrap();
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..60 {
                        let (k, n) = (format!("w{w}-a{i}"), format!("w{w}-c{i}"));
                        let m = s.create(Kind::Active, &k, "base", BTreeMap::new()).unwrap();
                        let up = crate::mount::writable_dir(&[crate::api::types::Mount {
                            r#type: m[0].kind.clone(),
                            source: m[0].source.clone(),
                            target: String::new(),
                            options: m[0].options.clone(),
                        }])
                        .unwrap();
                        fs::write(up.join("f"), format!("{w}/{i}")).unwrap();
                        if w % 2 == 0 {
                            s.cleanup().unwrap();
                        }
                        s.commit(&n, &k, BTreeMap::new()).unwrap();
                        let c = s.get(&n).unwrap();
                        assert_eq!(
                            fs::read_to_string(s.fs_dir(c.id).join("f")).unwrap(),
                            format!("{w}/{i}")
                        );
                        if i % 3 != 0 {
                            s.remove(&n).unwrap();
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        check_indexes(&s);
        s.cleanup().unwrap();
        let live = s.list(&[]).unwrap().len();
        assert_eq!(live, 1 + 4 * 20);
        assert_eq!(
            fs::read_dir(d.path().join("snapshots")).unwrap().count(),
            live
        );
    }
}
