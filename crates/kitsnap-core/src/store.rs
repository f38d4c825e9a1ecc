//! The local store: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`).
//!
//! Crash safety: a blob is written under `ingest/`, fsynced, checked against its digest and
//! renamed into `blobs/`; `index.json` is replaced by rename after the blobs it names exist
//! (and after `blobs/sha256` itself is fsynced, once for all the renames since the last time).
//! A killed writer therefore leaves at most stray files in `ingest/`, never a torn blob or
//! an index entry without its content. Two lock files order concurrent processes:
//! `gc.lock` (shared by writers, exclusive for garbage collection) and `index.lock`
//! (exclusive around every read-modify-write of `index.json`).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cleanup::TempPath;
use crate::digest::{Digest, HashingReader};
use crate::error::{Error, IoContext, Result};
use crate::oci::{self, ANNOTATION_REF_NAME, Descriptor, Index, MEDIA_TYPE_MANIFEST, Manifest};
use crate::reference::Reference;

/// Keeps the repository of a manifest whose tag moved elsewhere, so it still lists.
pub const ANNOTATION_UNTAGGED_REPO: &str = "dev.kitsnap.repository";
/// The tag (`registry/repo:tag`) of a ModelKit index. Indexes have tags of their own, not
/// `org.opencontainers.image.ref.name`: as in kit, an index and a ModelKit may share a
/// reference, and ModelKit verbs (`list`, `remove`) never see indexes.
pub const ANNOTATION_INDEX_REF: &str = "dev.kitsnap.index.ref.name";
/// Manifests and configs are small; anything larger is refused rather than read into memory.
pub const MAX_METADATA_BLOB: u64 = 4 << 20;

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// Blobs renamed into `blobs/sha256` (or found there) since its directory was last
    /// fsynced: one directory fsync before `index.json` names them, instead of one per blob.
    blobs_unsynced: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A tagged (or untagged) ModelKit in the store.
#[derive(Clone, Debug)]
pub struct Entry {
    /// `registry/repository`
    pub name: String,
    pub tag: Option<String>,
    pub descriptor: Descriptor,
}

impl Entry {
    pub fn display_ref(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}", self.name),
            None => format!("{}@{}", self.name, self.descriptor.digest),
        }
    }
}

/// A lock held for as long as the guard lives.
pub struct LockGuard(File);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// A blob being written. Dropped without `commit` (or interrupted by SIGINT/SIGTERM in
/// the CLI, see [`crate::cleanup`]), its temporary file is removed.
pub struct Ingest {
    path: PathBuf,
    file: Option<File>,
    tmp: Option<TempPath>,
}

impl Ingest {
    pub fn file(&mut self) -> Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| Error::Internal("ingest already closed".into()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[derive(Debug, Default)]
pub struct GcStats {
    pub blobs_removed: usize,
    /// Bytes of the removed blobs and temporary files together.
    pub bytes_freed: u64,
    pub temp_files_removed: usize,
}

static INGEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// KitOps' home: $KITOPS_HOME, else $XDG_DATA_HOME/kitops, else ~/.local/share/kitops
/// (its store is `storage/`, its logins `credentials.json`).
pub fn kit_home() -> PathBuf {
    if let Some(h) = std::env::var_os("KITOPS_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("kitops")
}

impl Store {
    fn at(root: PathBuf) -> Store {
        Store {
            root,
            blobs_unsynced: Default::default(),
        }
    }

    /// `$KITSNAP_HOME/storage`, else `$XDG_DATA_HOME/kitsnap/storage`, else
    /// `~/.local/share/kitsnap/storage` (KitOps' layout under our own name).
    pub fn default_root() -> PathBuf {
        if let Some(h) = std::env::var_os("KITSNAP_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(h).join("storage");
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("/var/lib"));
        data.join("kitsnap").join("storage")
    }

    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for d in [root.join("blobs/sha256"), root.join("ingest")] {
            fs::create_dir_all(&d).at(&d)?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            let s = Store::at(root.clone());
            s.write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let store = Store::at(root);
        if !store.root.join("index.json").exists() {
            let _l = store.lock_index()?;
            if !store.root.join("index.json").exists() {
                store.write_index(&Index::default())?;
            }
        }
        Ok(store)
    }

    /// Opens an existing store without creating or changing anything: for a reader
    /// acting for someone else (kitsnap serve taking a client's store).
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for f in ["oci-layout", "index.json"] {
            let p = root.join(f);
            if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                return Err(Error::NotFound(format!(
                    "{}: not a kitsnap store (no {f})",
                    root.display()
                )));
            }
        }
        Ok(Store::at(root))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self, name: &str, exclusive: bool) -> Result<LockGuard> {
        let p = self.root.join(name);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .at(&p)?;
        if exclusive {
            f.lock().at(&p)?;
        } else {
            f.lock_shared().at(&p)?;
        }
        Ok(LockGuard(f))
    }

    /// Held by anything that writes blobs before naming them in the index, so that a
    /// concurrent garbage collection cannot delete them half-way.
    pub fn writer_lock(&self) -> Result<LockGuard> {
        self.lock("gc.lock", false)
    }

    fn lock_index(&self) -> Result<LockGuard> {
        self.lock("index.lock", true)
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.algorithm()).join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("blob {d}")),
            _ => Error::IoAt { path: p, source: e },
        })
    }

    /// Reads a small blob (manifest, config) and verifies its digest and size.
    pub fn read_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size > MAX_METADATA_BLOB {
            return Err(Error::Invalid(format!(
                "blob {} is {} bytes, over the {} byte limit for manifests and configs",
                desc.digest, desc.size, MAX_METADATA_BLOB
            )));
        }
        let mut data = Vec::with_capacity(desc.size as usize);
        self.open_blob(&desc.digest)?
            .take(MAX_METADATA_BLOB + 1)
            .read_to_end(&mut data)?;
        let actual = Digest::of(&data);
        if actual != desc.digest {
            return Err(Error::DigestMismatch {
                digest: desc.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        if data.len() as u64 != desc.size {
            return Err(Error::SizeMismatch {
                digest: desc.digest.to_string(),
                expected: desc.size,
                actual: data.len() as u64,
            });
        }
        Ok(data)
    }

    /// Starts writing a blob whose digest is not known yet.
    pub fn ingest(&self) -> Result<Ingest> {
        let name = format!(
            "{}-{}-{}.tmp",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            INGEST_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.root.join("ingest").join(name);
        let tmp = TempPath::register(path.clone());
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .read(true)
            .open(&path)
            .at(&path)?;
        Ok(Ingest {
            path,
            file: Some(file),
            tmp: Some(tmp),
        })
    }

    /// Moves a fully written ingest into `blobs/` under `digest`. The caller computed the
    /// digest while writing; with `verify`, the file is re-read and checked, for content
    /// that came from elsewhere.
    pub fn commit(&self, mut ingest: Ingest, digest: &Digest, verify: bool) -> Result<()> {
        let file = ingest
            .file
            .take()
            .ok_or_else(|| Error::Internal("ingest already closed".into()))?;
        file.sync_all().at(&ingest.path)?;
        drop(file);
        if verify {
            let mut r = HashingReader::new(File::open(&ingest.path).at(&ingest.path)?);
            std::io::copy(&mut r, &mut std::io::sink())?;
            let (actual, _) = r.finish()?;
            if &actual != digest {
                return Err(Error::DigestMismatch {
                    digest: digest.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        let dest = self.blob_path(digest);
        // Its directory entry is made durable before index.json names it (another writer's
        // rename of the same blob may not be yet).
        self.blobs_unsynced.store(true, Ordering::Release);
        if dest.exists() {
            // Same content already stored: the ingest is dropped (and deleted).
            return Ok(());
        }
        fs::rename(&ingest.path, &dest).at(&dest)?;
        if let Some(t) = ingest.tmp.take() {
            t.keep();
        }
        Ok(())
    }

    /// Stores a small in-memory blob and returns its descriptor.
    pub fn put_bytes(&self, media_type: &str, data: &[u8]) -> Result<Descriptor> {
        let digest = Digest::of(data);
        if !self.has_blob(&digest) {
            let mut ing = self.ingest()?;
            ing.file()?.write_all(data)?;
            self.commit(ing, &digest, false)?;
        }
        Ok(Descriptor {
            media_type: media_type.to_string(),
            digest,
            size: data.len() as u64,
            ..Default::default()
        })
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        {
            let mut f = File::create(&tmp).at(&tmp)?;
            f.write_all(data).at(&tmp)?;
            f.sync_all().at(&tmp)?;
        }
        fs::rename(&tmp, path).at(path)?;
        sync_dir(&self.root);
        Ok(())
    }

    pub fn read_index(&self) -> Result<Index> {
        let p = self.root.join("index.json");
        let data = fs::read(&p).at(&p)?;
        serde_json::from_slice(&data).map_err(|source| Error::Json {
            what: p.display().to_string(),
            source,
        })
    }

    fn write_index(&self, idx: &Index) -> Result<()> {
        self.sync_blobs_dir();
        let data = oci::to_go_json(idx)?;
        self.write_atomic(&self.root.join("index.json"), &data)
    }

    /// Read-modify-write of the index under its lock.
    fn update_index<T>(&self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let _l = self.lock_index()?;
        let mut idx = self.read_index()?;
        let out = f(&mut idx)?;
        self.write_index(&idx)?;
        Ok(out)
    }

    /// Records a pulled manifest under the reference it was pulled by: tagged, or, for a
    /// digest alone, untagged in that repository.
    pub fn name_pulled(&self, reference: &Reference, desc: &Descriptor) -> Result<()> {
        if reference.digest.is_some() && reference.tag.is_none() {
            self.add_untagged(&reference.name(), desc)
        } else {
            self.tag(reference, desc)
        }
    }

    /// Points `reference` (which must carry a tag) at `desc`. A manifest that loses its
    /// last tag stays listed as untagged until removed.
    pub fn tag(&self, reference: &Reference, desc: &Descriptor) -> Result<()> {
        let tag = reference
            .tag_or_default()
            .ok_or_else(|| Error::Invalid(format!("{reference}: a tag is needed here")))?;
        let full = format!("{}:{tag}", reference.name());
        let name = reference.name();
        self.update_index(|idx| {
            let mut orphaned = None;
            idx.manifests.retain(|m| {
                let r = m.annotations.get(ANNOTATION_REF_NAME);
                if r == Some(&full) {
                    orphaned = Some(m.clone());
                    return false;
                }
                // Drop an untagged entry of the manifest being tagged (never an index's).
                !(r.is_none()
                    && m.digest == desc.digest
                    && !m.annotations.contains_key(ANNOTATION_INDEX_REF))
            });
            let mut entry = desc.clone();
            entry.annotations.remove(ANNOTATION_UNTAGGED_REPO);
            entry
                .annotations
                .insert(ANNOTATION_REF_NAME.into(), full.clone());
            idx.manifests.push(entry);
            if let Some(mut old) = orphaned
                && old.digest != desc.digest
                && !idx.manifests.iter().any(|m| m.digest == old.digest)
            {
                old.annotations.remove(ANNOTATION_REF_NAME);
                old.annotations
                    .insert(ANNOTATION_UNTAGGED_REPO.into(), name.clone());
                idx.manifests.push(old);
            }
            Ok(())
        })
    }

    /// Records a manifest fetched by digest: listed untagged under `name` until tagged.
    pub fn add_untagged(&self, name: &str, desc: &Descriptor) -> Result<()> {
        self.update_index(|idx| {
            if !idx.manifests.iter().any(|m| m.digest == desc.digest) {
                let mut e = desc.clone();
                e.annotations.clear();
                e.annotations
                    .insert(ANNOTATION_UNTAGGED_REPO.into(), name.to_string());
                idx.manifests.push(e);
            }
            Ok(())
        })
    }

    /// Every ModelKit in the store, tagged ones first, in index order.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let idx = self.read_index()?;
        let mut out = Vec::new();
        for m in &idx.manifests {
            if let Some(r) = m.annotations.get(ANNOTATION_REF_NAME) {
                let (name, tag) = match r.rsplit_once(':') {
                    Some((n, t)) if !t.contains('/') => (n.to_string(), Some(t.to_string())),
                    _ => (r.clone(), None),
                };
                out.push(Entry {
                    name,
                    tag,
                    descriptor: m.clone(),
                });
            } else if let Some(repo) = m.annotations.get(ANNOTATION_UNTAGGED_REPO) {
                out.push(Entry {
                    name: repo.clone(),
                    tag: None,
                    descriptor: m.clone(),
                });
            }
        }
        self.kit_entries(&mut out)?;
        Ok(out)
    }

    /// The ModelKits of a store that KitOps' `kit` wrote (its `$KITOPS_HOME/storage`):
    /// kit keeps the same blobs and index.json, and its tags per repository in
    /// `<base64url(registry/repo)>-tags.json` (manifests in `-index.json`), so kitsnap reads
    /// kit's kits where they are, without a registry. kit's ModelKit indexes live in the
    /// same files; they are [`Store::index_tags`]' and never listed here.
    fn kit_entries(&self, out: &mut Vec<Entry>) -> Result<()> {
        for (repo, tag, desc) in self
            .kit_files::<BTreeMap<String, Descriptor>>("-tags.json")?
            .into_iter()
            .flat_map(|(repo, tags)| tags.into_iter().map(move |(t, d)| (repo.clone(), t, d)))
        {
            if is_index(&desc)
                || out
                    .iter()
                    .any(|e| e.name == repo && e.tag.as_deref() == Some(tag.as_str()))
            {
                continue;
            }
            out.push(Entry {
                name: repo,
                tag: Some(tag),
                descriptor: desc,
            });
        }
        for (repo, idx) in self.kit_files::<Index>("-index.json")? {
            for m in idx.manifests {
                if is_index(&m)
                    || out
                        .iter()
                        .any(|e| e.name == repo && e.descriptor.digest == m.digest)
                {
                    continue;
                }
                out.push(Entry {
                    name: repo.clone(),
                    tag: None,
                    descriptor: m,
                });
            }
        }
        Ok(())
    }

    /// kit's per-repository files `<base64url(registry/repo)><suffix>`, parsed, by name order.
    fn kit_files<T: serde::de::DeserializeOwned>(&self, suffix: &str) -> Result<Vec<(String, T)>> {
        use base64::Engine;
        let dir = match fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(_) => return Ok(Vec::new()),
        };
        let mut files: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        files.sort();
        let mut out = Vec::new();
        for f in &files {
            let Some(repo) = f.strip_suffix(suffix).and_then(|enc| {
                base64::engine::general_purpose::URL_SAFE
                    .decode(enc)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
            }) else {
                continue;
            };
            let p = self.root.join(f);
            let parsed =
                serde_json::from_slice(&fs::read(&p).at(&p)?).map_err(|source| Error::Json {
                    what: p.display().to_string(),
                    source,
                })?;
            out.push((repo, parsed));
        }
        Ok(out)
    }

    /// Finds the manifest a reference names: by digest (anywhere in the store) or by tag.
    pub fn resolve(&self, reference: &Reference) -> Result<Descriptor> {
        let entries = self.list()?;
        if let Some(d) = &reference.digest {
            if let Some(e) = entries.iter().find(|e| &e.descriptor.digest == d) {
                let mut desc = e.descriptor.clone();
                desc.annotations.clear();
                return Ok(desc);
            }
            if self.index_tags()?.iter().any(|t| &t.descriptor.digest == d) {
                return Err(Error::Invalid(format!(
                    "{reference} is a ModelKit index, not a ModelKit: see `kitsnap index --help`"
                )));
            }
            if self.has_blob(d) {
                let size = fs::metadata(self.blob_path(d))?.len();
                return Ok(Descriptor {
                    media_type: MEDIA_TYPE_MANIFEST.into(),
                    digest: d.clone(),
                    size,
                    ..Default::default()
                });
            }
            return Err(Error::NotFound(reference.to_string()));
        }
        let tag = reference.tag_or_default().unwrap_or("latest");
        let name = reference.name();
        entries
            .into_iter()
            .find(|e| e.name == name && e.tag.as_deref() == Some(tag))
            .map(|e| {
                let mut d = e.descriptor;
                d.annotations.clear();
                d
            })
            .ok_or_else(|| Error::NotFound(format!("{name}:{tag}")))
    }

    pub fn manifest(&self, desc: &Descriptor) -> Result<Manifest> {
        let data = self.read_blob(desc)?;
        serde_json::from_slice(&data).map_err(|source| Error::Json {
            what: format!("manifest {}", desc.digest),
            source,
        })
    }

    /// The Kitfile of a stored ModelKit (None for a ModelPack without KitOps' annotation).
    pub fn kitfile(&self, manifest: &Manifest) -> Result<Option<crate::kitfile::Kitfile>> {
        crate::layers::kitfile_of(manifest, || self.read_blob(&manifest.config))
    }

    /// Removes a tag, or (for a digest reference) every index entry of that manifest.
    /// Returns how many entries went. Blobs are left for `gc`.
    pub fn untag(&self, reference: &Reference) -> Result<usize> {
        let name = reference.name();
        let tag = reference.tag_or_default().map(str::to_string);
        let digest = reference.digest.clone();
        self.update_index(|idx| {
            let before = idx.manifests.len();
            idx.manifests.retain(|m| {
                // A ModelKit index's entries go through `untag_index`/`delete_index` only.
                if m.annotations.contains_key(ANNOTATION_INDEX_REF) {
                    return true;
                }
                if let Some(d) = &digest {
                    return &m.digest != d;
                }
                let full = format!("{name}:{}", tag.as_deref().unwrap_or("latest"));
                m.annotations.get(ANNOTATION_REF_NAME) != Some(&full)
            });
            let removed = before - idx.manifests.len();
            if removed == 0 {
                return Err(Error::NotFound(reference.to_string()));
            }
            Ok(removed)
        })
    }

    /// Drops every ModelKit's entry (ModelKit indexes stay).
    pub fn untag_all(&self) -> Result<usize> {
        self.update_index(|idx| {
            let n = idx.manifests.len();
            idx.manifests
                .retain(|m| m.annotations.contains_key(ANNOTATION_INDEX_REF));
            Ok(n - idx.manifests.len())
        })
    }

    /// Removes untagged manifests from the index.
    pub fn prune_untagged(&self) -> Result<usize> {
        self.update_index(|idx| {
            let before = idx.manifests.len();
            idx.manifests.retain(|m| {
                m.annotations.contains_key(ANNOTATION_REF_NAME)
                    || m.annotations.contains_key(ANNOTATION_INDEX_REF)
            });
            Ok(before - idx.manifests.len())
        })
    }

    /// Deletes blobs no index entry reaches, and temporary files of dead writers.
    pub fn gc(&self) -> Result<GcStats> {
        let _gc = self.lock("gc.lock", true)?;
        let _idx = self.lock_index()?;
        let idx = self.read_index()?;
        let mut live: HashSet<String> = HashSet::new();
        let keep_manifest = |m: &Descriptor, live: &mut HashSet<String>| {
            live.insert(m.digest.hex().to_string());
            // A manifest we cannot read keeps only itself alive; its layers may go.
            if let Ok(man) = self.manifest(m) {
                live.insert(man.config.digest.hex().to_string());
                for l in &man.layers {
                    live.insert(l.digest.hex().to_string());
                }
            }
        };
        for m in &idx.manifests {
            keep_manifest(m, &mut live);
            // Another image index (kit's top-level index.json lists its ModelKit indexes
            // untagged): what it lists lives with it. Tagged ModelKit indexes come below.
            if is_index(m)
                && !m.annotations.contains_key(ANNOTATION_INDEX_REF)
                && let Some(other) = self
                    .read_blob(m)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
            {
                for e in &other.manifests {
                    keep_manifest(e, &mut live);
                }
            }
        }
        // The ModelKits a tagged index (kitsnap's or kit's) refers to live as long as the
        // index, tagged or not. An index that cannot be read stops the collection: its
        // ModelKits may have nothing else keeping them.
        for t in self.index_tags_in(&idx)? {
            keep_manifest(&t.descriptor, &mut live);
            let kit_index = self.read_kit_index(&t.descriptor).map_err(|e| {
                let fix = if t.kit { "`kit index delete" } else { "`kitsnap index delete" };
                Error::Invalid(format!(
                    "garbage collection stopped, nothing deleted: ModelKit index {}:{} ({}) cannot be read ({e}), so the ModelKits it refers to are kept; {fix} {}:{}` removes it",
                    t.name, t.tag, t.descriptor.digest, t.name, t.tag
                ))
            })?;
            for e in &kit_index.manifests {
                keep_manifest(&e.descriptor(), &mut live);
            }
        }
        let mut stats = GcStats::default();
        let blobs = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blobs).at(&blobs)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                stats.bytes_freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path()).at(e.path())?;
                stats.blobs_removed += 1;
            }
        }
        // With gc.lock held exclusively no writer is running: every ingest file is stale.
        let ingest = self.root.join("ingest");
        for e in fs::read_dir(&ingest).at(&ingest)? {
            let e = e?;
            stats.bytes_freed += e.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(e.path()).at(e.path())?;
            stats.temp_files_removed += 1;
        }
        Ok(stats)
    }
}

/// A tag of a ModelKit index in the store.
#[derive(Clone, Debug)]
pub struct IndexTag {
    /// `registry/repository`
    pub name: String,
    pub tag: String,
    pub descriptor: Descriptor,
    /// Tagged in kit's files of a store kit wrote: kitsnap reads it, never rewrites it.
    pub kit: bool,
}

/// ModelKit indexes: entries of `index.json` marked with [`ANNOTATION_INDEX_REF`].
impl Store {
    /// Every index tag, in `index.json` order, then those of kit's files (`kit index` in a
    /// store kit wrote) that kitsnap's own do not shadow.
    pub fn index_tags(&self) -> Result<Vec<IndexTag>> {
        self.index_tags_in(&self.read_index()?)
    }

    /// [`Store::index_tags`] with `index.json` already read.
    fn index_tags_in(&self, idx: &Index) -> Result<Vec<IndexTag>> {
        let mut out: Vec<IndexTag> = idx
            .manifests
            .iter()
            .filter_map(|m| {
                let (name, tag) = m.annotations.get(ANNOTATION_INDEX_REF)?.rsplit_once(':')?;
                let mut descriptor = m.clone();
                descriptor.annotations.clear();
                Some(IndexTag {
                    name: name.to_string(),
                    tag: tag.to_string(),
                    descriptor,
                    kit: false,
                })
            })
            .collect();
        for (name, tags) in self.kit_files::<BTreeMap<String, Descriptor>>("-tags.json")? {
            for (tag, mut descriptor) in tags {
                if !is_index(&descriptor) || out.iter().any(|t| t.name == name && t.tag == tag) {
                    continue;
                }
                descriptor.annotations.clear();
                out.push(IndexTag {
                    name: name.clone(),
                    tag,
                    descriptor,
                    kit: true,
                });
            }
        }
        Ok(out)
    }

    /// The index a reference names: by tag, or by digest among the repository's indexes.
    pub fn resolve_index(&self, reference: &Reference) -> Result<Descriptor> {
        let name = reference.name();
        let tags = self.index_tags()?;
        let found = match (&reference.digest, reference.tag_or_default()) {
            (Some(d), _) => tags
                .into_iter()
                .find(|t| t.name == name && &t.descriptor.digest == d),
            (None, tag) => {
                let tag = tag.unwrap_or(crate::reference::DEFAULT_TAG);
                tags.into_iter().find(|t| t.name == name && t.tag == tag)
            }
        };
        found
            .map(|t| t.descriptor)
            .ok_or_else(|| Error::NotFound(format!("index {reference}")))
    }

    /// Reads a stored ModelKit index.
    pub fn read_kit_index(&self, desc: &Descriptor) -> Result<crate::index::ModelKitIndex> {
        Ok(crate::index::ModelKitIndex::parse(&self.read_blob(desc)?)?)
    }

    /// Rewrites the index tagged `reference` (which must carry a tag) under the store's
    /// locks, so that concurrent edits never lose one another: `edit` gets the current
    /// index (None if the tag does not exist) and returns the new bytes, or None to leave
    /// it. The tag then names the new index; the old version goes with its last tag (its
    /// blob at the next garbage collection). Returns the new descriptor.
    pub fn edit_index<F>(&self, reference: &Reference, edit: F) -> Result<Option<Descriptor>>
    where
        F: FnOnce(Option<(Descriptor, Vec<u8>)>) -> Result<Option<Vec<u8>>>,
    {
        let tag = reference
            .tag
            .clone()
            .ok_or_else(|| Error::Invalid(format!("{reference}: an index is edited by tag")))?;
        let full = format!("{}:{tag}", reference.name());
        // The writer lock before the index lock, as garbage collection takes them.
        let _w = self.writer_lock()?;
        self.update_index(|idx| {
            let pos = idx
                .manifests
                .iter()
                .position(|m| m.annotations.get(ANNOTATION_INDEX_REF) == Some(&full));
            // kitsnap's tag, else one `kit index` wrote: the edit becomes kitsnap's entry,
            // over kit's.
            let current = match self
                .index_tags_in(idx)?
                .into_iter()
                .find(|t| t.name == reference.name() && t.tag == tag)
            {
                Some(t) => {
                    let bytes = self.read_blob(&t.descriptor)?;
                    Some((t.descriptor, bytes))
                }
                None => None,
            };
            let Some(bytes) = edit(current)? else {
                return Ok(None);
            };
            let mut desc = self.put_bytes(oci::MEDIA_TYPE_INDEX, &bytes)?;
            desc.artifact_type = Some(crate::index::ARTIFACT_TYPE_KIT_INDEX.to_string());
            let mut entry = desc.clone();
            entry
                .annotations
                .insert(ANNOTATION_INDEX_REF.into(), full.clone());
            match pos {
                Some(i) => idx.manifests[i] = entry,
                None => idx.manifests.push(entry),
            }
            Ok(Some(desc))
        })
    }

    /// Removes one tag of an index; the index itself goes with its last tag.
    pub fn untag_index(&self, reference: &Reference) -> Result<()> {
        let full = format!(
            "{}:{}",
            reference.name(),
            reference
                .tag_or_default()
                .unwrap_or(crate::reference::DEFAULT_TAG)
        );
        self.update_index(|idx| {
            let before = idx.manifests.len();
            idx.manifests
                .retain(|m| m.annotations.get(ANNOTATION_INDEX_REF) != Some(&full));
            if idx.manifests.len() == before {
                return Err(Error::NotFound(format!("index {reference}")));
            }
            Ok(())
        })
    }

    /// Removes every tag in `name` of the index with this digest; returns those tags. Its
    /// blob goes at the next garbage collection, the ModelKits it referred to stay (unless
    /// nothing else keeps them).
    pub fn delete_index(&self, name: &str, digest: &Digest) -> Result<Vec<String>> {
        let prefix = format!("{name}:");
        self.update_index(|idx| {
            let mut tags = Vec::new();
            idx.manifests.retain(|m| {
                let tag = m
                    .annotations
                    .get(ANNOTATION_INDEX_REF)
                    .and_then(|r| r.strip_prefix(&prefix))
                    .filter(|t| !t.contains('/'));
                match tag {
                    Some(t) if &m.digest == digest => {
                        tags.push(t.to_string());
                        false
                    }
                    _ => true,
                }
            });
            Ok(tags)
        })
    }
}

impl Store {
    /// Bytes of partial blobs in `ingest/` (writes in flight, or left by a killed one).
    pub fn ingest_bytes(&self) -> Result<u64> {
        let ingest = self.root.join("ingest");
        let mut total = 0;
        for e in fs::read_dir(&ingest).at(&ingest)? {
            total += e?.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(total)
    }

    /// Whether a writer (pull, pack, push into the store) holds the store now.
    pub fn writers_running(&self) -> bool {
        let p = self.root.join("gc.lock");
        File::open(&p).is_ok_and(|f| match f.try_lock() {
            Ok(()) => {
                let _ = f.unlock();
                false
            }
            Err(_) => true,
        })
    }

    /// Deletes the partial blobs left by killed writers (`kitsnap cache clear`): waits for
    /// running writers (gc.lock), so a transfer in flight never loses its file.
    pub fn clear_ingest(&self) -> Result<u64> {
        let _gc = self.lock("gc.lock", true)?;
        let ingest = self.root.join("ingest");
        let mut freed = 0;
        for e in fs::read_dir(&ingest).at(&ingest)? {
            let e = e?;
            freed += e.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(e.path()).at(e.path())?;
        }
        Ok(freed)
    }
}

impl Store {
    /// Makes the renames of committed blobs durable (see `blobs_unsynced`). Public for
    /// writers that name blobs elsewhere than index.json.
    pub fn sync_blobs_dir(&self) {
        if self.blobs_unsynced.swap(false, Ordering::AcqRel) {
            sync_dir(&self.root.join("blobs/sha256"));
        }
    }
}

/// An image index: in a store, a ModelKit index (kit's or kitsnap's) or a copied image's.
fn is_index(d: &Descriptor) -> bool {
    d.media_type == oci::MEDIA_TYPE_INDEX
}

/// Starts writing back what is dirty in `file` without waiting for it, so that the fsync
/// that commits a long download or pack finds most of it on disk already and the disk works
/// while the bytes still arrive (as RocksDB's `bytes_per_sync`). A hint: errors are ignored
/// (the commit's fsync reports them), and elsewhere than on Linux it does nothing.
pub fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; offset 0 and length 0 mean the whole file.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// How often a blob being written starts its write-back (see [`start_writeback`]).
const WRITEBACK_EVERY: u64 = 16 << 20;

/// Counts the bytes written to a blob file and says when to call [`start_writeback`]: every
/// [`WRITEBACK_EVERY`] bytes. The sync writer ([`WriteBehind`]) and the async download sink
/// share it.
#[derive(Default)]
pub struct WritebackPacer {
    unsynced: u64,
}

impl WritebackPacer {
    /// Counts `n` more bytes; true when a write-back is due.
    pub fn wrote(&mut self, n: usize) -> bool {
        self.unsynced += n as u64;
        let due = self.unsynced >= WRITEBACK_EVERY;
        if due {
            self.unsynced = 0;
        }
        due
    }
}

/// A blob file being written that starts its write-back every [`WRITEBACK_EVERY`] bytes.
pub struct WriteBehind {
    file: File,
    pacer: WritebackPacer,
}

impl WriteBehind {
    pub fn new(file: File) -> WriteBehind {
        WriteBehind {
            file,
            pacer: WritebackPacer::default(),
        }
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        if self.pacer.wrote(n) {
            start_writeback(&self.file);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// fsync a directory so a rename in it survives power loss; best effort.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_behind_keeps_every_byte_across_writeback_points() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut w = WriteBehind::new(File::create(&path).unwrap());
        // Odd-sized writes that straddle the write-back points, 2.5 times over.
        let data: Vec<u8> = (0..WRITEBACK_EVERY * 5 / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        for piece in data.chunks(999_983) {
            w.write_all(piece).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn blobs_tags_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(dir.path().join("oci-layout").exists());
        let a = s.put_bytes("x/y", b"hello").unwrap();
        assert_eq!(s.read_blob(&a).unwrap(), b"hello");
        let man = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_MANIFEST.into()),
            artifact_type: None,
            config: a.clone(),
            layers: vec![],
            subject: None,
            annotations: Default::default(),
        };
        let mdesc = s
            .put_bytes(MEDIA_TYPE_MANIFEST, &oci::to_go_json(&man).unwrap())
            .unwrap();
        let r1: Reference = "demo:v1".parse().unwrap();
        s.tag(&r1, &mdesc).unwrap();
        s.tag(&"demo:v2".parse().unwrap(), &mdesc).unwrap();
        assert_eq!(s.resolve(&r1).unwrap().digest, mdesc.digest);
        assert_eq!(s.list().unwrap().len(), 2);
        let junk = s.put_bytes("x/y", b"unreferenced").unwrap();
        let mut stray = s.ingest().unwrap();
        stray.file().unwrap().write_all(b"partial").unwrap();
        std::mem::forget(stray); // as if the writer had been killed
        let st = s.gc().unwrap();
        assert_eq!(st.blobs_removed, 1);
        assert_eq!(st.temp_files_removed, 1);
        assert_eq!(
            st.bytes_freed,
            (b"unreferenced".len() + b"partial".len()) as u64,
            "the stale ingest's bytes count as freed"
        );
        assert!(!s.has_blob(&junk.digest));
        assert!(s.has_blob(&a.digest));
        s.untag(&r1).unwrap();
        assert!(s.resolve(&r1).is_err());
        assert!(s.untag(&r1).is_err());
        s.untag_all().unwrap();
        s.gc().unwrap();
        assert!(!s.has_blob(&a.digest));
    }

    #[test]
    fn moved_tag_leaves_untagged_entry_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = s.put_bytes(MEDIA_TYPE_MANIFEST, b"{\"a\":1}").unwrap();
        let b = s.put_bytes(MEDIA_TYPE_MANIFEST, b"{\"b\":2}").unwrap();
        let r: Reference = "m:latest".parse().unwrap();
        s.tag(&r, &a).unwrap();
        s.tag(&r, &b).unwrap();
        let l = s.list().unwrap();
        assert_eq!(l.len(), 2);
        assert!(
            l.iter()
                .any(|e| e.tag.is_none() && e.descriptor.digest == a.digest)
        );
        assert_eq!(s.prune_untagged().unwrap(), 1);
        fs::write(s.blob_path(&b.digest), b"{\"b\":3}").unwrap();
        assert!(matches!(s.read_blob(&b), Err(Error::DigestMismatch { .. })));
    }
}
