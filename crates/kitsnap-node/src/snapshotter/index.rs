//! The metadata tables: snapshot records and the indexes that answer every lookup that
//! used to scan all records.
//!
//! Each index is derived from a record by [`entries`] alone and maintained in the same
//! redb write transaction as the record ([`Tables::index`] / [`Tables::unindex`]), so an
//! index can never disagree with the records it describes. A database written before the
//! indexes existed, with an older index layout, or whose records an older kitsnap changed
//! since (its keys no longer match `idx_links`) is indexed once at open ([`migrate`]).
//!
//! | table          | key                      | value(s)                                   |
//! |----------------|--------------------------|--------------------------------------------|
//! | `snapshots`    | key                      | the record (JSON)                          |
//! | `idx_ids`      | id                       | key: which directories are live (Cleanup)  |
//! | `idx_links`    | key                      | (id, parent): parent chains, no JSON       |
//! | `idx_children` | parent key (`""`: roots) | child keys: Remove's check, `parent==` lists |
//! | `idx_targets`  | `parent\0target ref`     | keys carrying `containerd.io/snapshot.ref` |
//! | `idx_trees`    | ModelKit tree name       | keys mounting that tree                    |
//! | `idx_named`    | `namespace\0name`        | backend keys `namespace/<seq>/name`        |

use super::{Kind, Record, Result, SnapError, decode, encode};
use crate::labels as label;
use redb::{
    MultimapTable, MultimapTableDefinition, ReadOnlyMultimapTable, ReadOnlyTable, ReadTransaction,
    ReadableMultimapTable, ReadableTable, Table, TableDefinition, WriteTransaction,
};

pub(super) const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const IDS: TableDefinition<u64, &str> = TableDefinition::new("idx_ids");
pub(super) const LINKS: TableDefinition<&str, (u64, &str)> = TableDefinition::new("idx_links");
pub(super) const CHILDREN: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("idx_children");
pub(super) const TARGETS: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("idx_targets");
pub(super) const TREES: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("idx_trees");
pub(super) const NAMED: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("idx_named");

/// Bumped whenever what [`entries`] derives changes: the indexes are then rebuilt at open.
/// 2: targets also under [`any_parent_key`].
pub(super) const INDEX_VERSION: u64 = 2;
const INDEX_VERSION_KEY: &str = "index_version";
const NEXT_ID_KEY: &str = "next_id";

/// `parent\0target`: the remote-snapshot protocol's question (is this layer held on
/// this parent?) as one key.
pub(super) fn target_key(parent: &str, target: &str) -> String {
    format!("{parent}\0{target}")
}

/// `\u{1}\0target`: a target on any parent (no parent key starts with U+0001), so that a
/// pull asks "is this chain held anywhere on the node?" without a scan.
pub(super) fn any_parent_key(target: &str) -> String {
    format!("\u{1}\0{target}")
}

/// containerd names backend keys `<namespace>/<seq>/<name>`: `namespace\0name`.
pub(super) fn named_key(key: &str) -> Option<String> {
    let (ns, rest) = key.split_once('/')?;
    let (seq, name) = rest.split_once('/')?;
    seq.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| format!("{ns}\0{name}"))
}

/// Every index entry one record contributes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Entries {
    pub id: u64,
    pub parent: String,
    /// [`target_key`] and [`any_parent_key`] of a target label, or nothing.
    pub target: Vec<String>,
    pub tree: Option<String>,
    pub named: Option<String>,
}

pub(super) fn entries(key: &str, r: &Record) -> Entries {
    Entries {
        id: r.id,
        parent: r.parent.clone(),
        target: r
            .labels
            .get(label::TARGET_REF)
            .map(|t| vec![target_key(&r.parent, t), any_parent_key(t)])
            .unwrap_or_default(),
        tree: r.tree.clone(),
        named: named_key(key),
    }
}

/// The tables of one write transaction.
pub(super) struct Tables<'t> {
    pub snaps: Table<'t, &'static str, &'static [u8]>,
    pub meta: Table<'t, &'static str, u64>,
    pub ids: Table<'t, u64, &'static str>,
    pub links: Table<'t, &'static str, (u64, &'static str)>,
    pub children: MultimapTable<'t, &'static str, &'static str>,
    pub targets: MultimapTable<'t, &'static str, &'static str>,
    pub trees: MultimapTable<'t, &'static str, &'static str>,
    pub named: MultimapTable<'t, &'static str, &'static str>,
}

impl<'t> Tables<'t> {
    pub fn open(w: &'t WriteTransaction) -> Result<Tables<'t>> {
        Ok(Tables {
            snaps: w.open_table(SNAPSHOTS)?,
            meta: w.open_table(META)?,
            ids: w.open_table(IDS)?,
            links: w.open_table(LINKS)?,
            children: w.open_multimap_table(CHILDREN)?,
            targets: w.open_multimap_table(TARGETS)?,
            trees: w.open_multimap_table(TREES)?,
            named: w.open_multimap_table(NAMED)?,
        })
    }

    pub fn next_id(&mut self) -> Result<u64> {
        let id = self.meta.get(NEXT_ID_KEY)?.map(|v| v.value()).unwrap_or(1);
        self.meta.insert(NEXT_ID_KEY, id + 1)?;
        Ok(id)
    }

    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        get(&self.snaps, key)
    }

    /// Stores `r` under `key` with its index entries (`key` must not be stored yet).
    pub fn put(&mut self, key: &str, r: &Record) -> Result<()> {
        self.snaps.insert(key, encode(r)?.as_slice())?;
        self.index(key, r)
    }

    /// Deletes `key` (stored as `r`) and its index entries.
    pub fn delete(&mut self, key: &str, r: &Record) -> Result<()> {
        self.snaps.remove(key)?;
        self.unindex(key, r)
    }

    /// Replaces the record `old` stored under `key` by `new`.
    pub fn replace(&mut self, key: &str, old: &Record, new: &Record) -> Result<()> {
        self.unindex(key, old)?;
        self.snaps.insert(key, encode(new)?.as_slice())?;
        self.index(key, new)
    }

    fn index(&mut self, key: &str, r: &Record) -> Result<()> {
        let e = entries(key, r);
        self.ids.insert(e.id, key)?;
        self.links.insert(key, (e.id, e.parent.as_str()))?;
        self.children.insert(e.parent.as_str(), key)?;
        for t in &e.target {
            self.targets.insert(t.as_str(), key)?;
        }
        if let Some(t) = &e.tree {
            self.trees.insert(t.as_str(), key)?;
        }
        if let Some(n) = &e.named {
            self.named.insert(n.as_str(), key)?;
        }
        Ok(())
    }

    fn unindex(&mut self, key: &str, r: &Record) -> Result<()> {
        let e = entries(key, r);
        self.ids.remove(e.id)?;
        self.links.remove(key)?;
        self.children.remove(e.parent.as_str(), key)?;
        for t in &e.target {
            self.targets.remove(t.as_str(), key)?;
        }
        if let Some(t) = &e.tree {
            self.trees.remove(t.as_str(), key)?;
        }
        if let Some(n) = &e.named {
            self.named.remove(n.as_str(), key)?;
        }
        Ok(())
    }
}

/// The tables of one read transaction.
pub(super) struct ReadTables {
    pub snaps: ReadOnlyTable<&'static str, &'static [u8]>,
    pub links: ReadOnlyTable<&'static str, (u64, &'static str)>,
    pub children: ReadOnlyMultimapTable<&'static str, &'static str>,
    pub targets: ReadOnlyMultimapTable<&'static str, &'static str>,
    pub trees: ReadOnlyMultimapTable<&'static str, &'static str>,
    pub named: ReadOnlyMultimapTable<&'static str, &'static str>,
}

impl ReadTables {
    pub fn open(r: &ReadTransaction) -> Result<ReadTables> {
        Ok(ReadTables {
            snaps: r.open_table(SNAPSHOTS)?,
            links: r.open_table(LINKS)?,
            children: r.open_multimap_table(CHILDREN)?,
            targets: r.open_multimap_table(TARGETS)?,
            trees: r.open_multimap_table(TREES)?,
            named: r.open_multimap_table(NAMED)?,
        })
    }
}

pub(super) fn get(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Record>> {
    t.get(key)?.map(|v| decode(key, v.value())).transpose()
}

/// Values of one multimap key, in ascending order.
/// Whether any committed snapshot, on any parent, carries `target` (asked once per layer
/// of a pull, to skip downloading a layer the node holds).
pub(super) fn held_anywhere(
    snaps: &impl ReadableTable<&'static str, &'static [u8]>,
    targets: &impl ReadableMultimapTable<&'static str, &'static str>,
    target: &str,
) -> Result<bool> {
    for key in values(targets, &any_parent_key(target))? {
        if get(snaps, &key)?.is_some_and(|r| r.kind == Kind::Committed) {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(super) fn values(
    t: &impl ReadableMultimapTable<&'static str, &'static str>,
    key: &str,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for v in t.get(key)? {
        out.push(v?.value().to_string());
    }
    Ok(out)
}

/// The first value of one multimap key.
pub(super) fn first(
    t: &impl ReadableMultimapTable<&'static str, &'static str>,
    key: &str,
) -> Result<Option<String>> {
    match t.get(key)?.next() {
        Some(v) => Ok(Some(v?.value().to_string())),
        None => Ok(None),
    }
}

/// Ids of `parent` and its ancestors, nearest first: one lookup per layer in the links
/// index, in the caller's transaction (so the chain is consistent).
pub(super) fn chain(
    links: &impl ReadableTable<&'static str, (u64, &'static str)>,
    parent: &str,
) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut next = parent.to_string();
    while !next.is_empty() {
        let v = links
            .get(next.as_str())?
            .ok_or_else(|| SnapError::NotFound(next.clone()))?;
        let (id, up) = v.value();
        out.push(id);
        next = up.to_string();
        drop(v);
        if out.len() > 1_000_000 {
            return Err(SnapError::Internal(format!(
                "the parent chain of {parent:?} does not end (a cycle in the metadata)"
            )));
        }
    }
    Ok(out)
}

/// Whether a committed snapshot with target `target` on `parent` is held.
pub(super) fn held_target(
    snaps: &impl ReadableTable<&'static str, &'static [u8]>,
    targets: &impl ReadableMultimapTable<&'static str, &'static str>,
    parent: &str,
    target: &str,
) -> Result<Option<String>> {
    for key in values(targets, &target_key(parent, target))? {
        if get(snaps, &key)?.is_some_and(|r| r.kind == Kind::Committed) {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// Whether the links index names exactly the stored records: not so after an older
/// kitsnap (which knows no indexes) created, committed or removed snapshots in this
/// database. Keys only, in order: no record is decoded.
fn same_keys(w: &WriteTransaction) -> Result<bool> {
    let snaps = w.open_table(SNAPSHOTS)?;
    let links = w.open_table(LINKS)?;
    let (mut a, mut b) = (snaps.iter()?, links.iter()?);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ok(true),
            (Some(x), Some(y)) => {
                if x?.0.value() != y?.0.value() {
                    return Ok(false);
                }
            }
            _ => return Ok(false),
        }
    }
}

/// Creates the tables if missing and (re)builds the indexes, once: when the database has
/// none, an older layout, or records the indexes do not name. Returns how many records
/// were indexed (`None`: the indexes were current).
pub(super) fn migrate(db: &redb::Database) -> Result<Option<usize>> {
    let w = db.begin_write()?;
    let version = {
        w.open_table(SNAPSHOTS)?;
        let meta = w.open_table(META)?;
        meta.get(INDEX_VERSION_KEY)?.map(|v| v.value())
    };
    if version == Some(INDEX_VERSION) && same_keys(&w)? {
        w.abort()?;
        return Ok(None);
    }
    w.delete_table(IDS)?;
    w.delete_table(LINKS)?;
    w.delete_multimap_table(CHILDREN)?;
    w.delete_multimap_table(TARGETS)?;
    w.delete_multimap_table(TREES)?;
    w.delete_multimap_table(NAMED)?;
    let n = {
        let mut t = Tables::open(&w)?;
        let mut records = Vec::new();
        for e in t.snaps.iter()? {
            let (k, v) = e?;
            records.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        for (k, r) in &records {
            t.index(k, r)?;
        }
        t.meta.insert(INDEX_VERSION_KEY, INDEX_VERSION)?;
        records.len()
    };
    w.commit()?;
    Ok(Some(n))
}
