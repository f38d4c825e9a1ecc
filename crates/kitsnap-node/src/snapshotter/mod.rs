//! An overlay snapshotter with containerd's snapshot semantics, metadata in redb.
//!
//! Layout under the root (default `/var/lib/kitsnap`):
//! `metadata.redb` and `snapshots/<id>/{fs,work}`. Crash safety comes from ordering:
//! a snapshot's directories are made before the transaction that records it, and a
//! removed snapshot's record goes before its directories; so a crash leaves at most
//! directories without a record, which `Cleanup` (and start-up) deletes. Commit and
//! Update are single transactions.

pub mod compose;
pub mod filter;
pub mod service;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::labels as label;
use crate::records::{JsonTable, RecordError};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
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
#[derive(Clone, Debug, Serialize, Deserialize)]
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

pub struct Snapshotter {
    root: PathBuf,
    db: Database,
    /// Orders directory creation and removal against `cleanup`: containerd calls Cleanup
    /// from its GC while other clients Prepare, and a directory made for a snapshot whose
    /// record is not committed yet must not look like an orphan.
    fs_ops: std::sync::Mutex<()>,
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
            for e in fs::read_dir(&d)? {
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
        let w = db.begin_write()?;
        {
            w.open_table(SNAPSHOTS)?;
            w.open_table(META)?;
        }
        w.commit()?;
        KITS.create(&db)?;
        let s = Snapshotter {
            root,
            db,
            fs_ops: std::sync::Mutex::new(()),
        };
        // Finish what a crash interrupted.
        s.cleanup()?;
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn fs_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic elsewhere leaves the data consistent (the lock guards no data).
        self.fs_ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn trees_dir(&self) -> PathBuf {
        self.root.join("trees")
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    pub fn fs_dir(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    pub fn get(&self, key: &str) -> Result<Record> {
        let r = self.db.begin_read()?;
        let t = r.open_table(SNAPSHOTS)?;
        let v = t
            .get(key)?
            .ok_or_else(|| SnapError::NotFound(key.to_string()))?;
        decode(key, v.value())
    }

    fn all(&self) -> Result<Vec<(String, Record)>> {
        let r = self.db.begin_read()?;
        let t = r.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            let (k, v) = e?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// Parent chain of a record, nearest first (fs dirs).
    fn lowers(&self, mut parent: String) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        while !parent.is_empty() {
            let p = self.get(&parent)?;
            out.push(self.fs_dir(p.id));
            parent = p.parent;
        }
        Ok(out)
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
        let _fs = self.fs_lock();
        if let Ok(existing) = self.get(key) {
            let _ = existing;
            return Err(SnapError::AlreadyExists(key.to_string()));
        }
        if !parent.is_empty() {
            let p = self
                .get(parent)
                .map_err(|_| SnapError::NotFound(parent.to_string()))?;
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
        {
            let held = self.all()?.into_iter().any(|(_, r)| {
                r.kind == Kind::Committed
                    && r.parent == parent
                    && r.labels.get(label::TARGET_REF) == Some(target)
            });
            if held {
                return Err(SnapError::AlreadyExists(format!(
                    "target {target} (held by this snapshotter)"
                )));
            }
        }
        let tree = self.tree_for(key, &labels)?;
        if kind == Kind::View
            && let Some(v) = labels.get(label::LAYERS)
        {
            // Checked now so that a bad selection fails the View, not a later Mounts.
            self.select_layers(self.lowers(parent.to_string())?, v)?;
        }
        let w = self.db.begin_write()?;
        let id = {
            let mut meta = w.open_table(META)?;
            let id = meta.get("next_id")?.map(|v| v.value()).unwrap_or(1);
            meta.insert("next_id", id + 1)?;
            id
        };
        // Directories first: a crash before the commit below leaves only an orphan dir.
        let dir = self.dir(id);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("fs"))?;
        if kind == Kind::Active {
            fs::create_dir_all(dir.join("work"))?;
        }
        let t = now();
        let rec = Record {
            id,
            kind,
            parent: parent.to_string(),
            labels,
            created: t,
            updated: t,
            size: 0,
            inodes: 0,
            tree,
        };
        {
            let mut snaps = w.open_table(SNAPSHOTS)?;
            if snaps.get(key)?.is_some() {
                drop(snaps);
                let _ = fs::remove_dir_all(&dir);
                return Err(SnapError::AlreadyExists(key.to_string()));
            }
            snaps.insert(key, encode(&rec)?.as_slice())?;
        }
        w.commit()?;
        self.mounts_of(&rec)
    }

    fn mounts_of(&self, r: &Record) -> Result<Vec<Mount>> {
        let mut lowers = self.lowers(r.parent.clone())?;
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
                    format!(
                        "lowerdir={}",
                        lowers.iter().map(|p| s(p)).collect::<Vec<_>>().join(":")
                    ),
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
                options: vec![format!(
                    "lowerdir={}",
                    lowers.iter().map(|p| s(p)).collect::<Vec<_>>().join(":")
                )],
            },
        };
        Ok(vec![m])
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let r = self.get(key)?;
        if r.kind == Kind::Committed {
            return Err(SnapError::FailedPrecondition(format!(
                "snapshot {key:?} is committed; mount a view of it"
            )));
        }
        self.mounts_of(&r)
    }

    /// Turns the active snapshot `key` into the committed snapshot `name`.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let r = self.get(key)?;
        if r.kind != Kind::Active {
            return Err(SnapError::FailedPrecondition(format!(
                "snapshot {key:?} is not active"
            )));
        }
        // Usage is measured once, outside the transaction: committed layers do not change.
        let (size, inodes) = disk_usage(&self.fs_dir(r.id))?;
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(SNAPSHOTS)?;
            if t.get(name)?.is_some() {
                return Err(SnapError::AlreadyExists(name.to_string()));
            }
            let cur = t
                .get(key)?
                .ok_or_else(|| SnapError::NotFound(key.to_string()))?;
            let mut rec = decode(key, cur.value())?;
            drop(cur);
            if rec.kind != Kind::Active {
                return Err(SnapError::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            rec.kind = Kind::Committed;
            rec.labels.extend(labels);
            rec.updated = now();
            rec.size = size;
            rec.inodes = inodes;
            t.remove(key)?;
            t.insert(name, encode(&rec)?.as_slice())?;
        }
        w.commit()?;
        // The work dir is only for the overlay upper of an active snapshot.
        let _ = fs::remove_dir_all(self.dir(r.id).join("work"));
        Ok(())
    }

    pub fn remove(&self, key: &str) -> Result<()> {
        let _fs = self.fs_lock();
        let w = self.db.begin_write()?;
        let id_rec = {
            let mut t = w.open_table(SNAPSHOTS)?;
            let rec = match t.get(key)? {
                Some(v) => decode(key, v.value())?,
                None => return Err(SnapError::NotFound(key.to_string())),
            };
            for e in t.iter()? {
                let (k, v) = e?;
                if decode(k.value(), v.value())?.parent == key {
                    return Err(SnapError::FailedPrecondition(format!(
                        "cannot remove snapshot {key:?}: snapshot {:?} is its child",
                        k.value()
                    )));
                }
            }
            t.remove(key)?;
            rec
        };
        w.commit()?;
        let id = id_rec.id;
        if let Some(tree) = id_rec.tree {
            let used = self
                .all()?
                .iter()
                .any(|(_, r)| r.tree.as_ref() == Some(&tree));
            if !used {
                let _ = fs::remove_dir_all(self.trees_dir().join(tree));
            }
        }
        // Record first, then the files: a crash here leaves an orphan that Cleanup removes.
        let dir = self.dir(id);
        let tomb = self.root.join("snapshots").join(format!("rm-{id}"));
        if fs::rename(&dir, &tomb).is_ok() {
            let _ = fs::remove_dir_all(&tomb);
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
            let mut t = w.open_table(SNAPSHOTS)?;
            let mut rec = match t.get(key)? {
                Some(v) => decode(key, v.value())?,
                None => return Err(SnapError::NotFound(key.to_string())),
            };
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
            t.insert(key, encode(&rec)?.as_slice())?;
            rec
        };
        w.commit()?;
        Ok(rec)
    }

    pub fn list(&self, filters: &[String]) -> Result<Vec<(String, Record)>> {
        let f = filter::Filter::parse(filters).map_err(SnapError::InvalidArgument)?;
        Ok(self
            .all()?
            .into_iter()
            .filter(|(name, r)| {
                f.matches(&filter::Fields {
                    name,
                    parent: &r.parent,
                    kind: r.kind.as_str(),
                    labels: &r.labels,
                })
            })
            .collect())
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

    /// The ModelKit tree a Prepare/View asks for with `kitsnap.modelkit`, built if needed.
    fn tree_for(&self, key: &str, labels: &BTreeMap<String, String>) -> Result<Option<String>> {
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
        let mut layers = self.lowers(top_key)?;
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
        compose::ensure_tree(&self.trees_dir(), &layers, &dest).map(Some)
    }

    /// The snapshot containerd calls `name` in namespace `ns` (backend key `ns/<seq>/name`).
    pub fn find_named(&self, ns: &str, name: &str) -> Result<Option<(String, Record)>> {
        Ok(self.all()?.into_iter().find(|(k, _)| {
            k.strip_prefix(ns)
                .and_then(|r| r.strip_prefix('/'))
                .and_then(|r| r.split_once('/'))
                .is_some_and(|(seq, n)| n == name && seq.bytes().all(|b| b.is_ascii_digit()))
        }))
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
        let snaps = disk_usage(&self.root.join("snapshots"))?.0;
        let both = disk_usage_many(&[self.root.join("snapshots"), self.trees_dir()])?.0;
        Ok((snaps, both - snaps))
    }

    /// Deletes directories that no record names (left by crashes or interrupted removes).
    pub fn cleanup(&self) -> Result<usize> {
        let _fs = self.fs_lock();
        let live: HashSet<String> = self
            .all()?
            .into_iter()
            .map(|(_, r)| r.id.to_string())
            .collect();
        let mut removed = 0;
        for e in fs::read_dir(self.root.join("snapshots"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                fs::remove_dir_all(e.path())?;
                removed += 1;
            }
        }
        let trees: HashSet<String> = self
            .all()?
            .into_iter()
            .filter_map(|(_, r)| r.tree)
            .collect();
        if let Ok(rd) = fs::read_dir(self.trees_dir()) {
            for e in rd {
                let e = e?;
                if !trees.contains(&*e.file_name().to_string_lossy()) {
                    fs::remove_dir_all(e.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(k: &str, v: &str) -> BTreeMap<String, String> {
        [(k.to_string(), v.to_string())].into()
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
        // An orphan as a crash between mkdir and the transaction would leave.
        fs::create_dir_all(d.path().join("snapshots/999/fs")).unwrap();
        let s = Snapshotter::open(d.path()).unwrap();
        assert_eq!(s.get("c").unwrap().kind, Kind::Committed);
        assert!(!d.path().join("snapshots/999").exists());
        // New ids never reuse old ones.
        s.create(Kind::Active, "n", "c", BTreeMap::new()).unwrap();
        assert!(s.get("n").unwrap().id > s.get("c").unwrap().id);
    }
}
