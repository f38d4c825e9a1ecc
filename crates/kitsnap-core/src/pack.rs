//! `pack`: turns a directory and its Kitfile into a ModelKit (or ModelPack) in the store.
//!
//! Each Kitfile entry becomes one tar layer whose entry names are relative to the context
//! directory, as KitOps writes them. Tar layers are reproducible: entries sorted by name,
//! mtime 0, uid 1000 / gid 0, no user or group names, headers as Go's archive/tar
//! writes them (see `tarfmt`). Files are streamed through the tar
//! writer, the compressor and two hashers (diffId and digest) into a temporary blob, so
//! memory stays flat whatever the file sizes.
//!
//! A ModelPack packed with [`LayerFormat::Raw`] has instead one `.raw` layer per entry, the
//! entry's single file as it is (streamed and hashed in one pass), annotated as modctl
//! annotates its raw layers: `org.cncf.model.filepath` and
//! `org.cncf.model.file.metadata+json` (name, permission bits, uid, gid, size, mtime), so
//! its manifest depends on the files' mtimes and owners, as modctl's does
//! (SOURCE_DATE_EPOCH caps the mtimes).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;

use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, IoContext, Result};
use crate::ignore::{IGNORE_FILE, IgnoreRules};
use crate::kitfile::{self, Kitfile, LayerInfo};
use crate::modelpack::FileMetadata;
use crate::oci::{
    self, ANNOTATION_CLI_VERSION, ANNOTATION_FILE_METADATA, ANNOTATION_FILEPATH,
    ANNOTATION_KITFILE, ANNOTATION_LAYER_SUBTYPE, ARTIFACT_TYPE_KIT, ARTIFACT_TYPE_MODELPACK,
    Compression, Descriptor, KIT_CONFIG_MEDIA_TYPE, LAYER_SUBTYPE_PROMPT, LayerKind, LayerType,
    MEDIA_TYPE_MANIFEST, MODELPACK_CONFIG_MEDIA_TYPE, Manifest, ModelFormat, ModelFs,
    ModelPackConfig, ModelPackDescriptor, ModelPackExec,
};
use crate::progress::{self, ProgressReader};
use crate::reference::Reference;
use crate::store::{Store, WriteBehind};
use crate::tarfmt;

const IO_BUF: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct PackOptions {
    pub context: PathBuf,
    /// Kitfile path; by default `Kitfile`, `kitfile` or `.kitfile` in the context.
    pub kitfile: Option<PathBuf>,
    pub reference: Reference,
    pub compression: Compression,
    pub format: ModelFormat,
    /// Tar layers, or (ModelPack only, uncompressed) one raw file per entry.
    pub layer_format: LayerFormat,
    pub progress: bool,
}

/// What a layer holds: a tar of the Kitfile entry (ModelKit or ModelPack), or, for a
/// ModelPack, the entry's one file as it is (model-spec's `.raw` media types; what `modctl
/// build` writes by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerFormat {
    #[default]
    Tar,
    Raw,
}

impl std::str::FromStr for LayerFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tar" => Ok(LayerFormat::Tar),
            "raw" => Ok(LayerFormat::Raw),
            _ => Err(Error::Invalid(format!(
                "invalid layer format {s:?}: must be tar or raw"
            ))),
        }
    }
}

#[derive(Debug)]
pub struct PackResult {
    pub manifest: Descriptor,
    pub layers: Vec<(LayerKind, String, Descriptor)>,
    /// Layers whose blob was already in the store.
    pub reused: usize,
    pub warnings: Vec<String>,
}

/// One file or directory to put in a layer.
#[derive(Debug)]
struct Item {
    rel: String,
    abs: PathBuf,
    dir: bool,
    size: u64,
    mode: u32,
}

/// Finds the Kitfile: the given path, or the first default name in the context.
pub fn find_kitfile(context: &Path, given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    kitfile::DEFAULT_NAMES
        .iter()
        .map(|n| context.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "no Kitfile in {} (looked for {}); run `kitsnap init {}` to write one",
                context.display(),
                kitfile::DEFAULT_NAMES.join(", "),
                context.display()
            ))
        })
}

/// Reads and parses a Kitfile; `-` is standard input (kit's `-f -`).
pub fn load_kitfile(path: &Path) -> Result<Kitfile> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).at("standard input")?;
        return Kitfile::from_yaml(&text, "Kitfile from standard input");
    }
    let text = fs::read_to_string(path).at(path)?;
    Kitfile::from_yaml(&text, &path.display().to_string())
}

/// What a pack will write: the Kitfile and, per layer, its entry, normalised path and the
/// files in it. Every path is checked before any byte is written.
pub struct Plan {
    pub kitfile: Kitfile,
    pub layers: Vec<PlannedLayer>,
    /// Bytes of file content in all layers (the progress total).
    pub total: u64,
    pub warnings: Vec<String>,
}

pub struct PlannedLayer {
    pub entry: kitfile::LayerEntry,
    pub path: String,
    items: Vec<Item>,
    /// A `.raw` layer: `items` is the one file.
    raw: bool,
}

impl PlannedLayer {
    /// Bytes of file content in the layer.
    pub fn items_size(&self) -> u64 {
        self.items.iter().map(|i| i.size).sum()
    }
}

/// A layer as written: its descriptor (media type, digest, size, annotations) and diff ID.
pub struct Written {
    pub desc: Descriptor,
    pub diff_id: Digest,
}

/// Reads the Kitfile and walks every layer's files.
pub fn plan(opts: &PackOptions) -> Result<Plan> {
    let raw = opts.layer_format == LayerFormat::Raw;
    if raw && opts.format != ModelFormat::ModelPack {
        return Err(Error::Invalid(
            "--layer-format raw needs --use-model-pack: raw layers are a ModelPack (CNCF model-spec) format; a KitOps ModelKit's layers are tars".into(),
        ));
    }
    if raw && opts.compression != Compression::None {
        return Err(Error::Invalid(
            "--layer-format raw writes each file as it is: it takes no --compression".into(),
        ));
    }
    let context = fs::canonicalize(&opts.context).at(&opts.context)?;
    if !context.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a directory",
            context.display()
        )));
    }
    let kf_path = find_kitfile(&context, opts.kitfile.as_deref())?;
    let kf = load_kitfile(&kf_path)?;
    let mut early_warnings = Vec::new();
    if kf.manifest_version.trim().is_empty() {
        early_warnings.push(format!(
            "{}: no manifestVersion (packed as kit packs it; the Kitfile format wants \"1.0.0\")",
            kf_path.display()
        ));
    }
    let ignore = match fs::read_to_string(context.join(IGNORE_FILE)) {
        Ok(t) => IgnoreRules::parse(&t)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => IgnoreRules::default(),
        Err(e) => {
            return Err(Error::IoAt {
                path: context.join(IGNORE_FILE),
                source: e,
            });
        }
    };
    let entries = kf.layer_entries();
    let mut warnings = early_warnings;

    // As kit does: the root Kitfile (any default name) and .kitignore never go into a
    // layer, whichever Kitfile -f names; the Kitfile travels as the config.
    let always_skip: Vec<String> = kitfile::DEFAULT_NAMES
        .iter()
        .map(|n| n.to_string())
        .chain([IGNORE_FILE.to_string()])
        .collect();

    let mut layers = Vec::new();
    for e in &entries {
        let norm = kitfile::check_relative_path(&e.path)
            .map_err(|m| Error::Invalid(format!("{} path: {m}", e.kind.user_str())))?;
        // Paths of other entries nested inside this one belong to those entries.
        let mut skip = always_skip.clone();
        skip.extend(entries.iter().filter_map(|o| {
            let on = kitfile::check_relative_path(&o.path).ok()?;
            (on != norm && is_under(&on, &norm)).then_some(on)
        }));
        let mut items = collect(&context, &norm, &skip, &ignore, &mut warnings)?;
        if raw {
            items = one_file(&context, e, &norm, items)?;
        } else if !items.iter().any(|i| !i.dir) {
            warnings.push(format!(
                "{} layer {:?} contains no files",
                e.kind.user_str(),
                e.path
            ));
        }
        layers.push(PlannedLayer {
            entry: e.clone(),
            path: norm,
            items,
            raw,
        });
    }
    let total = layers.iter().flat_map(|p| &p.items).map(|i| i.size).sum();
    Ok(Plan {
        kitfile: kf,
        layers,
        total,
        warnings,
    })
}

/// A raw layer's one file: the entry must name a regular file (as modctl's `BuildLayer`
/// refuses directories), and `.kitignore` must not leave it out.
fn one_file(
    context: &Path,
    e: &kitfile::LayerEntry,
    norm: &str,
    items: Vec<Item>,
) -> Result<Vec<Item>> {
    let what = format!("{} {:?}", e.kind.user_str(), e.path);
    if context.join(norm).is_dir() {
        return Err(Error::Invalid(format!(
            "{what} is a directory, and a raw layer holds one file (modctl refuses directories too): name its files one by one in the Kitfile, or pack with --layer-format tar"
        )));
    }
    let file: Vec<Item> = items.into_iter().filter(|i| !i.dir).collect();
    if file.len() != 1 {
        return Err(Error::Invalid(format!(
            "{what} is ignored by .kitignore, and a raw layer needs its file"
        )));
    }
    Ok(file)
}

/// SOURCE_DATE_EPOCH, when set to a whole number of seconds.
fn source_date_epoch() -> Option<i64> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
}

/// A raw layer: the file's bytes, streamed into `w` and hashed as they are read, with the
/// annotations modctl writes (its `localOutput.OutputLayer` and `addFileMetadata`): the
/// path, and the file's metadata as of the open file (mtime capped at SOURCE_DATE_EPOCH).
fn encode_raw<W: Write>(w: W, layer: &PlannedLayer, bar: &ProgressBar) -> Result<(W, Written)> {
    let it = layer
        .items
        .first()
        .ok_or_else(|| Error::Internal(format!("raw layer {} without its file", layer.path)))?;
    let f = File::open(&it.abs).at(&it.abs)?;
    let meta = f.metadata().at(&it.abs)?;
    let name = it.rel.rsplit('/').next().unwrap_or(&it.rel);
    let fm = FileMetadata::for_file(name, &meta, source_date_epoch())?;
    let mut out = HashingWriter::new(w);
    let mut r = ProgressReader::new(f, bar.clone());
    let mut buf = vec![0u8; IO_BUF];
    let mut n: u64 = 0;
    loop {
        let k = std::io::Read::read(&mut r, &mut buf).at(&it.abs)?;
        if k == 0 {
            break;
        }
        out.write_all(&buf[..k])?;
        n += k as u64;
    }
    if n != it.size || meta.len() != it.size {
        return Err(Error::Invalid(format!(
            "{} changed size while being packed ({} bytes expected, {} read)",
            it.abs.display(),
            it.size,
            n
        )));
    }
    let (w, digest, size) = out.finish()?;
    let lt = LayerType {
        format: ModelFormat::ModelPack,
        kind: layer.entry.kind,
        compression: Compression::None,
        raw: true,
    };
    let mut desc = Descriptor {
        media_type: lt.media_type(),
        digest: digest.clone(),
        size,
        ..Default::default()
    };
    desc.annotations
        .insert(ANNOTATION_FILEPATH.into(), layer.path.clone());
    desc.annotations
        .insert(ANNOTATION_FILE_METADATA.into(), fm.to_json()?);
    if layer.entry.kind == LayerKind::Prompt {
        desc.annotations
            .insert(ANNOTATION_LAYER_SUBTYPE.into(), LAYER_SUBTYPE_PROMPT.into());
    }
    // A raw layer's diff ID is its digest, as modctl's config lists it.
    Ok((
        w,
        Written {
            desc,
            diff_id: digest,
        },
    ))
}

/// Streams one layer (tar, compressed as asked; or a raw file) into `w`, hashing as it
/// goes. Returns the sink and the layer's descriptor and diff ID.
pub fn encode_layer<W: Write>(
    w: W,
    layer: &PlannedLayer,
    opts: &PackOptions,
    bar: &ProgressBar,
) -> Result<(W, Written)> {
    if layer.raw {
        return encode_raw(w, layer, bar);
    }
    let out = HashingWriter::new(w);
    let (out, diff_id) = match opts.compression {
        Compression::None => (write_tar(out, &layer.items, bar)?, None),
        Compression::Gzip | Compression::GzipFastest => {
            let level = if opts.compression == Compression::Gzip {
                flate2::Compression::default()
            } else {
                flate2::Compression::fast()
            };
            // Two deflate workers, as zstd gets two below: about twice one core's speed,
            // memory flat (see `pargz`).
            let enc = crate::pargz::ParGzWriter::new(out, level, 2)?;
            let tw = write_tar(HashingWriter::new(enc), &layer.items, bar)?;
            let (enc, diff, _) = tw.finish()?;
            (enc.finish()?, Some(diff))
        }
        Compression::Zstd => {
            let mut enc = zstd::Encoder::new(out, 3)?;
            // Two workers with 2 MiB jobs: about twice `zstd -1`'s single-thread speed at
            // level 3, and peak RSS near 57 MiB whatever the core count or model size (4 MiB
            // jobs: 82 MiB, for 2% less time and 2 KB less output on 2 GiB). zstd's output
            // does not depend on the worker count.
            enc.multithread(2)?;
            enc.set_parameter(zstd::zstd_safe::CParameter::JobSize(2 << 20))?;
            let tw = write_tar(HashingWriter::new(enc), &layer.items, bar)?;
            let (enc, diff, _) = tw.finish()?;
            (enc.finish()?, Some(diff))
        }
    };
    let (w, digest, size) = out.finish()?;
    let diff_id = diff_id.unwrap_or_else(|| digest.clone());
    let lt = LayerType {
        format: opts.format,
        kind: layer.entry.kind,
        compression: opts.compression,
        raw: false,
    };
    let mut desc = Descriptor {
        media_type: lt.media_type(),
        digest,
        size,
        ..Default::default()
    };
    // kit writes no layer annotations (the Kitfile in the config says which path each
    // layer holds); ModelPack names the path on the layer.
    if opts.format == ModelFormat::ModelPack {
        desc.annotations
            .insert(ANNOTATION_FILEPATH.into(), layer.path.clone());
    }
    if layer.entry.kind == LayerKind::Prompt {
        desc.annotations
            .insert(ANNOTATION_LAYER_SUBTYPE.into(), LAYER_SUBTYPE_PROMPT.into());
    }
    Ok((w, Written { desc, diff_id }))
}

/// A ModelKit's config and manifest, ready to store or push.
pub struct Assembled {
    pub config: Descriptor,
    pub config_bytes: Vec<u8>,
    pub manifest: Descriptor,
    pub manifest_bytes: Vec<u8>,
}

/// The config (the Kitfile with every layer's digest and diff ID, or ModelPack's config)
/// and the manifest for `written`, one per planned layer in order.
pub fn assemble(plan: &Plan, written: &[Written], format: ModelFormat) -> Result<Assembled> {
    let mut kf = plan.kitfile.clone();
    for (l, w) in plan.layers.iter().zip(written) {
        kf.set_layer_info(
            &l.entry,
            LayerInfo {
                digest: Some(w.desc.digest.to_string()),
                diff_id: Some(w.diff_id.to_string()),
            },
        );
    }
    let mut annotations = BTreeMap::new();
    annotations.insert(
        ANNOTATION_CLI_VERSION.to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    let kit_json = kf.to_config_json()?;
    let (config_type, config_bytes, artifact_type) = match format {
        ModelFormat::Kit => (KIT_CONFIG_MEDIA_TYPE, kit_json, ARTIFACT_TYPE_KIT),
        ModelFormat::ModelPack => {
            let cfg = modelpack_config(&kf, written.iter().map(|w| w.diff_id.clone()).collect());
            annotations.insert(
                ANNOTATION_KITFILE.to_string(),
                String::from_utf8_lossy(&kit_json).into_owned(),
            );
            (
                MODELPACK_CONFIG_MEDIA_TYPE,
                oci::to_go_json(&cfg)?,
                ARTIFACT_TYPE_MODELPACK,
            )
        }
    };
    let config = Descriptor {
        media_type: config_type.into(),
        digest: Digest::of(&config_bytes),
        size: config_bytes.len() as u64,
        ..Default::default()
    };
    // A ModelKit manifest as kit marshals it: no mediaType or artifactType (the config
    // media type identifies it), so that the same tree gives the same bytes as `kit pack`
    // but for kit's cli-version annotation. ModelPack manifests carry both, as modctl's do.
    let typed = format == ModelFormat::ModelPack;
    let manifest = Manifest {
        schema_version: 2,
        media_type: typed.then(|| MEDIA_TYPE_MANIFEST.into()),
        artifact_type: typed.then(|| artifact_type.into()),
        config: config.clone(),
        layers: written.iter().map(|w| w.desc.clone()).collect(),
        subject: None,
        annotations,
    };
    let manifest_bytes = oci::to_go_json(&manifest)?;
    Ok(Assembled {
        config,
        config_bytes,
        manifest: Descriptor {
            media_type: MEDIA_TYPE_MANIFEST.into(),
            digest: Digest::of(&manifest_bytes),
            size: manifest_bytes.len() as u64,
            ..Default::default()
        },
        manifest_bytes,
    })
}

/// Threads that fsync and rename finished blobs (see `pack_into`).
const COMMITTERS: usize = 4;

pub fn pack(store: &Store, opts: &PackOptions) -> Result<PackResult> {
    pack_into(store, opts, true)
}

/// [`pack`] without a tag, as `kit pack` without `-t`: the ModelKit is stored untagged
/// (listed as `<none>`, removed by `remove --all`).
pub fn pack_untagged(store: &Store, opts: &PackOptions) -> Result<PackResult> {
    pack_into(store, opts, false)
}

fn pack_into(store: &Store, opts: &PackOptions, tagged: bool) -> Result<PackResult> {
    // Walk everything first: this checks every path before any blob is written, and
    // gives the progress bar its total.
    let plan = plan(opts)?;
    let bar = progress::bytes(plan.total, "packing", opts.progress);
    let _writer = store.writer_lock()?;
    let mut written = Vec::new();
    let mut reused = 0;
    // Blobs are fsynced and renamed into place by a few threads while the next layers are
    // encoded: many small layers would otherwise wait on one fsync each, in turn (the
    // filesystem's journal commits concurrent fsyncs together).
    let (tx, rx) = std::sync::mpsc::sync_channel::<(crate::store::Ingest, Digest)>(4);
    let rx = std::sync::Mutex::new(rx);
    std::thread::scope(|scope| -> Result<()> {
        let committers: Vec<_> = (0..COMMITTERS)
            .map(|_| {
                let rx = &rx;
                scope.spawn(move || -> Result<()> {
                    loop {
                        let next = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => {
                                return Err(Error::Internal("blob commit queue poisoned".into()));
                            }
                        };
                        let Ok((ingest, digest)) = next else {
                            return Ok(());
                        };
                        store.commit(ingest, &digest, false)?;
                    }
                })
            })
            .collect();
        let encoded = (|| -> Result<()> {
            for layer in &plan.layers {
                bar.set_message(format!("{} {}", layer.entry.kind.user_str(), layer.path));
                let mut ingest = store.ingest()?;
                let file = ingest.file()?.try_clone()?;
                let (mut buf, w) = encode_layer(
                    BufWriter::with_capacity(IO_BUF, WriteBehind::new(file)),
                    layer,
                    opts,
                    &bar,
                )?;
                buf.flush()?;
                drop(buf);
                reused += store.has_blob(&w.desc.digest) as usize;
                // A send fails only once the committer stopped on an error: join says which.
                if tx.send((ingest, w.desc.digest.clone())).is_err() {
                    break;
                }
                written.push(w);
            }
            Ok(())
        })();
        drop(tx);
        let mut committed = Ok(());
        for c in committers {
            let r = c
                .join()
                .map_err(|_| Error::Internal("blob commit thread panicked".into()))?;
            committed = committed.and(r);
        }
        encoded.and(committed)
    })?;
    bar.finish_and_clear();
    let a = assemble(&plan, &written, opts.format)?;
    store.put_bytes(&a.config.media_type, &a.config_bytes)?;
    let mdesc = store.put_bytes(MEDIA_TYPE_MANIFEST, &a.manifest_bytes)?;
    if tagged {
        store.tag(&opts.reference, &mdesc)?;
    } else {
        store.add_untagged("", &mdesc)?;
    }
    Ok(PackResult {
        manifest: mdesc,
        layers: plan
            .layers
            .iter()
            .zip(written)
            .map(|(l, w)| (l.entry.kind, l.entry.path.clone(), w.desc))
            .collect(),
        reused,
        warnings: plan.warnings,
    })
}

fn modelpack_config(kf: &Kitfile, diff_ids: Vec<Digest>) -> ModelPackConfig {
    let mut licenses: Vec<String> = std::iter::once(kf.package.license.clone())
        .chain(kf.model.iter().flat_map(|m| {
            std::iter::once(m.license.clone()).chain(m.parts.iter().map(|p| p.license.clone()))
        }))
        .chain(kf.datasets.iter().map(|d| d.license.clone()))
        .chain(kf.code.iter().map(|c| c.license.clone()))
        .filter(|l| !l.is_empty())
        .collect();
    licenses.sort();
    licenses.dedup();
    // A wall-clock timestamp would make every pack differ; honour SOURCE_DATE_EPOCH only.
    let created_at = source_date_epoch()
        .and_then(|secs| u64::try_from(secs).ok())
        .map(|secs| crate::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)));
    ModelPackConfig {
        descriptor: ModelPackDescriptor {
            created_at,
            authors: kf.package.authors.clone(),
            name: kf.package.name.clone(),
            version: kf.package.version.clone(),
            licenses,
            title: kf.package.name.clone(),
            description: kf.package.description.clone(),
            ..Default::default()
        },
        modelfs: ModelFs {
            fs_type: "layers".into(),
            diff_ids,
        },
        config: ModelPackExec {
            format: kf
                .model
                .as_ref()
                .map(|m| m.format.clone())
                .unwrap_or_default(),
            ..Default::default()
        },
    }
}

fn is_under(path: &str, dir: &str) -> bool {
    dir == "." || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir == "." {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Lists what goes into the layer for `rel` (already normalised): its parent directories,
/// then the path itself and, for a directory, everything below it in name order.
fn collect(
    context: &Path,
    rel: &str,
    skip: &[String],
    ignore: &IgnoreRules,
    warnings: &mut Vec<String>,
) -> Result<Vec<Item>> {
    let abs = context.join(rel);
    let meta = fs::symlink_metadata(&abs).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Invalid(format!(
            "path {rel:?} in the Kitfile does not exist in {}",
            context.display()
        )),
        _ => Error::IoAt {
            path: abs.clone(),
            source: e,
        },
    })?;
    // Refuse paths that reach outside the context through a symlinked parent.
    let canon = fs::canonicalize(&abs).at(&abs)?;
    if !canon.starts_with(context) {
        return Err(Error::Invalid(format!(
            "path {rel:?} resolves to {} outside the context directory",
            canon.display()
        )));
    }
    if meta.file_type().is_symlink() {
        return Err(Error::Invalid(format!(
            "path {rel:?} is a symlink; name the file or directory it points to instead"
        )));
    }
    let mut out = Vec::new();
    if rel != "." {
        let mut prefix = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            prefix = join_rel(if prefix.is_empty() { "." } else { &prefix }, p);
            let m = fs::metadata(context.join(&prefix)).at(context.join(&prefix))?;
            out.push(Item {
                rel: prefix.clone(),
                abs: context.join(&prefix),
                dir: true,
                size: 0,
                mode: m.permissions().mode() & 0o7777,
            });
        }
    }
    if meta.is_file() {
        if ignore.is_ignored(rel) {
            warnings.push(format!("{rel} is ignored by .kitignore"));
            return Ok(out);
        }
        out.push(Item {
            rel: rel.to_string(),
            abs,
            dir: false,
            size: meta.len(),
            mode: meta.permissions().mode() & 0o7777,
        });
        return Ok(out);
    }
    if !meta.is_dir() {
        return Err(Error::Invalid(format!(
            "path {rel:?} is neither a file nor a directory"
        )));
    }
    if rel != "." {
        out.push(Item {
            rel: rel.to_string(),
            abs: abs.clone(),
            dir: true,
            size: 0,
            mode: meta.permissions().mode() & 0o7777,
        });
    }
    walk(&abs, rel, skip, ignore, warnings, &mut out)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    rel: &str,
    skip: &[String],
    ignore: &IgnoreRules,
    warnings: &mut Vec<String>,
    out: &mut Vec<Item>,
) -> Result<()> {
    let mut names: Vec<(Vec<u8>, std::ffi::OsString)> = fs::read_dir(dir)
        .at(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()
        .at(dir)?
        .into_iter()
        .map(|n| (n.as_encoded_bytes().to_vec(), n))
        .collect();
    names.sort();
    for (_, name) in names {
        let Some(name_str) = name.to_str() else {
            warnings.push(format!(
                "skipped {} in {rel}: name is not UTF-8",
                name.to_string_lossy()
            ));
            continue;
        };
        let child_rel = join_rel(rel, name_str);
        if skip.contains(&child_rel) {
            continue;
        }
        let abs = dir.join(&name);
        let meta = fs::symlink_metadata(&abs).at(&abs)?;
        let ignored = ignore.is_ignored(&child_rel);
        if meta.is_dir() {
            if ignored && !ignore.has_exceptions() {
                continue;
            }
            if !ignored {
                out.push(Item {
                    rel: child_rel.clone(),
                    abs: abs.clone(),
                    dir: true,
                    size: 0,
                    mode: meta.permissions().mode() & 0o7777,
                });
            }
            walk(&abs, &child_rel, skip, ignore, warnings, out)?;
        } else if meta.is_file() {
            if !ignored {
                out.push(Item {
                    rel: child_rel,
                    abs,
                    dir: false,
                    size: meta.len(),
                    mode: meta.permissions().mode() & 0o7777,
                });
            }
        } else if !ignored {
            warnings.push(format!(
                "skipped {child_rel}: only regular files and directories are packed (symlinks, devices and sockets are not)"
            ));
        }
    }
    Ok(())
}

fn write_tar<W: Write>(w: W, items: &[Item], bar: &ProgressBar) -> Result<W> {
    let mut tw = tarfmt::Writer::new(w);
    for it in items {
        let entry = tarfmt::Entry {
            name: &it.rel,
            mode: it.mode,
            size: it.size,
            dir: it.dir,
        };
        if it.dir {
            tw.append(&entry, &mut std::io::empty()).at(&it.abs)?;
            continue;
        }
        let f = File::open(&it.abs).at(&it.abs)?;
        // Unbuffered: the tar writer reads 1 MiB at a time into its own buffer.
        let mut r = ProgressReader::new(f, bar.clone());
        // `append` takes exactly the header's size, so a file that grew is cut; one that
        // shrank is caught here.
        let n = tw.append(&entry, &mut r).at(&it.abs)?;
        if n != it.size {
            return Err(Error::Invalid(format!(
                "{} changed size while being packed ({} bytes expected, {} read)",
                it.abs.display(),
                it.size,
                n
            )));
        }
    }
    tw.finish().map_err(Error::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting() {
        assert!(is_under("a/b", "a"));
        assert!(!is_under("ab", "a"));
        assert!(is_under("x", "."));
    }
}
