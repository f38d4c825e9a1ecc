//! The image view of a ModelKit: a plain OCI image over the kit's own layer blobs, so that
//! containerd's unpacker, nerdctl and the CRI (Kubernetes image volumes) accept a ModelKit
//! as they accept any image.
//!
//! Format, version 2 (`org.kitsnap.image-view.version: "2"`; version 1 gave raw files mode
//! 0644 and mtime 0 whatever their metadata said). Given a ModelKit or ModelPack
//! manifest, its config and the layers selected by a filter (all by default), in manifest order:
//! - each layer is the kit's blob relabelled with the OCI layer media type of its compression
//!   (`application/vnd.oci.image.layer.v1.tar`, `+gzip`, `+zstd`), its annotations kept and
//!   [`label::SNAPSHOT_LAYER`] added (the kit's blob digest); a
//!   `.raw` layer (one file's bytes) becomes a generated uncompressed tar holding that file at
//!   its `org.cncf.model.filepath` (uid/gid 0; mode and mtime from the layer's file-metadata
//!   annotation, else 0644 and 0), see [`RawWrapper`];
//! - for each platform in [`PLATFORMS`], an OCI image config naming it (`architecture`,
//!   `variant`, `os: linux`), with `config.Labels` naming the kit (see [`label`]) and
//!   `rootfs.diff_ids` (the digest of each layer's uncompressed tar), and an OCI image
//!   manifest over that config and those layers, `subject` = the ModelKit's manifest,
//!   annotations = the config's labels;
//! - the index lists those manifests, one per platform, so every node's platform matcher
//!   picks one, and carries the same annotations.
//!
//! The configs differ only in the platform, so every platform's image has the same diff IDs
//! and chain IDs: a node unpacks the same snapshots whichever it picks. (One manifest listed
//! for every platform is not enough: containerd 2.x's transfer service then fetches no layer
//! at all, and a config without an architecture matches no unpack platform.)
//!
//! Every document is written as Go's `json.Marshal` writes it (fixed field order, maps sorted,
//! empty fields left out), so the view's digest is a pure function of the kit's manifest, its
//! config and the diff IDs, themselves a function of the kit's blobs: the same kit has the same
//! view on every machine. A change to any byte here is a new format version.
//!
//! Diff IDs are the one input not in the manifest: an uncompressed layer's diff ID is its blob
//! digest; a compressed or raw layer's is computed by streaming the blob once ([`diff_id_of`]).
//! A ModelPack config's `modelfs.diffIds` is used as given (containerd and kitsnap verify
//! every diff ID while extracting, so a lying config fails the unpack, it cannot mislead it).

use std::collections::BTreeMap;
use std::io::Read;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, HashedRead, HashingReader};
use crate::error::{Error, Result};
use crate::kitfile::Kitfile;
use crate::layers::{self, Filter, FilterType, LayerPlan};
use crate::modelpack::FileMetadata;
use crate::oci::{
    self, Compression, Descriptor, Index, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, Manifest,
    ModelFormat, ModelPackConfig, Platform,
};

/// The format version written in every view.
pub const FORMAT_VERSION: &str = "2";

pub const MEDIA_TYPE_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The labels (config) and annotations (manifest, index) of a view.
pub mod label {
    pub const VERSION: &str = "org.kitsnap.image-view.version";
    /// The ModelKit manifest's digest.
    pub const KIT_DIGEST: &str = "org.kitsnap.modelkit.digest";
    /// `kitops` or `modelpack`.
    pub const FORMAT: &str = "org.kitsnap.modelkit.format";
    pub const NAME: &str = "org.kitsnap.modelkit.name";
    pub const PACKAGE_VERSION: &str = "org.kitsnap.modelkit.version";
    /// The `--filter` values the view was made with (absent: the whole kit).
    pub const FILTER: &str = "org.kitsnap.modelkit.filter";
    /// On a generated raw-file tar layer: the digest of the kit's raw blob it wraps.
    pub const RAW_SOURCE: &str = "org.kitsnap.layer.raw-source";
    /// On every layer: the kit's blob behind it. containerd hands a layer's annotations
    /// under `containerd.io/snapshot/` to the snapshotter as labels when it unpacks, so
    /// kitsnap's snapshotter learns which blob a Prepare is for and can fill the layer
    /// itself.
    pub const SNAPSHOT_LAYER: &str = "containerd.io/snapshot/kitsnap.layer";
}

/// Every platform a view is listed for: (architecture, variant), all `os: linux`.
pub const PLATFORMS: [(&str, Option<&str>); 6] = [
    ("amd64", None),
    ("arm64", None),
    ("arm", Some("v7")),
    ("ppc64le", None),
    ("s390x", None),
    ("riscv64", None),
];

/// A ModelKit as the view is made from it.
#[derive(Clone, Debug)]
pub struct Kit {
    /// The kit's manifest descriptor (digest and size of `manifest`'s bytes).
    pub desc: Descriptor,
    pub manifest: Manifest,
    pub config: Vec<u8>,
}

impl Kit {
    pub fn new(desc: Descriptor, manifest: Manifest, config: Vec<u8>) -> Result<Kit> {
        let format = manifest
            .model_format()
            .ok_or_else(|| layers::not_a_modelkit(&manifest))?;
        if format == ModelFormat::ModelPack {
            // Parsed up front so that a bad config is an error here, not a silent default.
            serde_json::from_slice::<ModelPackConfig>(&config).map_err(|source| Error::Json {
                what: "ModelPack config".into(),
                source,
            })?;
        }
        Ok(Kit {
            desc,
            manifest,
            config,
        })
    }

    fn format(&self) -> ModelFormat {
        self.manifest.model_format().unwrap_or(ModelFormat::Kit)
    }

    fn kitfile(&self) -> Result<Option<Kitfile>> {
        layers::kitfile_of(&self.manifest, || Ok(self.config.clone()))
    }

    fn modelpack(&self) -> Option<ModelPackConfig> {
        (self.format() == ModelFormat::ModelPack)
            .then(|| serde_json::from_slice(&self.config).ok())
            .flatten()
    }

    /// Every layer, in manifest order, with its Kitfile entry.
    pub fn plans(&self) -> Result<Vec<LayerPlan>> {
        layers::plan_layers(&self.manifest, self.kitfile()?.as_ref())
    }

    /// The layers a view with `filters` holds (all of them without filters); an error that
    /// lists what the kit holds when nothing matches.
    pub fn select(&self, filters: &[Filter]) -> Result<Vec<LayerPlan>> {
        let all = self.plans()?;
        let held: Vec<String> = all.iter().map(describe_layer).collect();
        let chosen: Vec<LayerPlan> = all
            .into_iter()
            .filter(|p| layers::selected(filters, FilterType::for_kind(p.kind), &p.name, &p.path))
            .collect();
        if chosen.is_empty() {
            return Err(Error::Invalid(format!(
                "no layer of {} matches the filter; it holds: {}",
                self.desc.digest.short(),
                if held.is_empty() {
                    "no layers".to_string()
                } else {
                    held.join(", ")
                }
            )));
        }
        Ok(chosen)
    }

    /// The diff ID of a layer when it can be known without reading the blob: an uncompressed
    /// tar's blob digest, or what a ModelPack config declares.
    pub fn known_diff_id(&self, l: &LayerPlan) -> Option<Digest> {
        if l.raw {
            return None;
        }
        if l.compression == Compression::None {
            return Some(l.desc.digest.clone());
        }
        let mp = self.modelpack()?;
        let i = self
            .manifest
            .layers
            .iter()
            .position(|d| d.digest == l.desc.digest)?;
        (mp.modelfs.diff_ids.len() == self.manifest.layers.len())
            .then(|| mp.modelfs.diff_ids[i].clone())
    }

    fn labels(&self, filter: &str) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::from([
            (label::VERSION.to_string(), FORMAT_VERSION.to_string()),
            (label::KIT_DIGEST.to_string(), self.desc.digest.to_string()),
        ]);
        let (format, name, version) = match self.format() {
            ModelFormat::Kit => {
                let kf = self.kitfile()?;
                let pkg = kf.map(|k| k.package).unwrap_or_default();
                ("kitops", pkg.name, pkg.version)
            }
            ModelFormat::ModelPack => {
                let mp = self.modelpack().map(|m| m.descriptor).unwrap_or_default();
                ("modelpack", mp.name, mp.version)
            }
        };
        out.insert(label::FORMAT.into(), format.into());
        for (k, v) in [(label::NAME, name), (label::PACKAGE_VERSION, version)] {
            if !v.is_empty() {
                out.insert(k.into(), v);
            }
        }
        if !filter.is_empty() {
            out.insert(label::FILTER.into(), filter.into());
        }
        Ok(out)
    }
}

/// `model "llama" (weights/)`, for messages that list what a kit holds.
pub fn describe_layer(l: &LayerPlan) -> String {
    match (l.name.is_empty(), l.path.is_empty()) {
        (false, false) => format!("{} {:?} ({})", l.kind.user_str(), l.name, l.path),
        (false, true) => format!("{} {:?}", l.kind.user_str(), l.name),
        (true, false) => format!("{} {}", l.kind.user_str(), l.path),
        (true, true) => l.kind.user_str().to_string(),
    }
}

/// One document of a view (index, manifest or config): its bytes and descriptor.
#[derive(Clone, Debug)]
pub struct Doc {
    pub desc: Descriptor,
    pub bytes: Vec<u8>,
}

impl Doc {
    fn of<T: Serialize>(media_type: &str, value: &T) -> Result<Doc> {
        let bytes = oci::to_go_json(value)?;
        Ok(Doc {
            desc: Descriptor {
                media_type: media_type.to_string(),
                digest: Digest::of(&bytes),
                size: bytes.len() as u64,
                ..Default::default()
            },
            bytes,
        })
    }
}

/// A layer of a view.
#[derive(Clone, Debug)]
pub struct ViewLayer {
    /// As the view's manifest lists it.
    pub desc: Descriptor,
    pub diff_id: Digest,
    /// The kit's layer it comes from.
    pub plan: LayerPlan,
    /// Set when `desc` is a generated tar around the kit's raw blob.
    pub raw: Option<RawWrapper>,
}

/// An image view: see the module docs.
#[derive(Clone, Debug)]
pub struct ImageView {
    pub index: Doc,
    /// One per platform, in [`PLATFORMS`] order.
    pub images: Vec<PlatformImage>,
    pub layers: Vec<ViewLayer>,
}

/// One platform's image in a view: the view's layers under a config naming the platform.
#[derive(Clone, Debug)]
pub struct PlatformImage {
    pub platform: Platform,
    pub manifest: Doc,
    pub config: Doc,
}

impl ImageView {
    /// containerd's chain IDs of the layers (the snapshot names of an unpacked image).
    pub fn chain_ids(&self) -> Vec<Digest> {
        let diffs: Vec<Digest> = self.layers.iter().map(|l| l.diff_id.clone()).collect();
        chain_ids(&diffs)
    }

    /// The view's own documents by digest (what a registry serving the view must add to
    /// the kit's blobs).
    pub fn doc(&self, digest: &Digest) -> Option<&Doc> {
        self.docs().find(|d| &d.desc.digest == digest)
    }

    /// Every document of the view: the index, then each platform's manifest and config.
    pub fn docs(&self) -> impl Iterator<Item = &Doc> {
        std::iter::once(&self.index)
            .chain(self.images.iter().flat_map(|i| [&i.manifest, &i.config]))
    }

    /// The view's layer listed under `digest`.
    pub fn layer(&self, digest: &Digest) -> Option<&ViewLayer> {
        self.layers.iter().find(|l| &l.desc.digest == digest)
    }
}

/// containerd's chain IDs: `chain[0] = diff[0]`, `chain[i] = sha256(chain[i-1] + " " +
/// diff[i])` (the OCI image spec's ChainID).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        out.push(chain_id(out.last(), d));
    }
    out
}

/// The chain ID of a layer with diff ID `diff` on top of the chain `parent`.
pub fn chain_id(parent: Option<&Digest>, diff: &Digest) -> Digest {
    match parent {
        None => diff.clone(),
        Some(p) => Digest::from_sha256_bytes(&Sha256::digest(format!("{p} {diff}"))),
    }
}

#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    os: &'a str,
    config: ExecConfig<'a>,
    rootfs: RootFs<'a>,
}

#[derive(Serialize)]
struct ExecConfig<'a> {
    #[serde(rename = "Labels")]
    labels: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    fs_type: &'a str,
    diff_ids: &'a [Digest],
}

/// Makes the view of `layers` (from [`Kit::select`]) with their diff IDs, in the same order.
/// `filter` is the user's filter text, recorded in the labels ("" for the whole kit).
pub fn synthesize(
    kit: &Kit,
    layers: &[LayerPlan],
    diff_ids: &[Digest],
    filter: &str,
) -> Result<ImageView> {
    if layers.len() != diff_ids.len() {
        return Err(Error::Invalid(format!(
            "image view: {} layers but {} diff IDs",
            layers.len(),
            diff_ids.len()
        )));
    }
    if layers.is_empty() {
        return Err(Error::Invalid(format!(
            "{} has no layers: it has no image view",
            kit.desc.digest.short()
        )));
    }
    let labels = kit.labels(filter)?;
    let mut view_layers = Vec::with_capacity(layers.len());
    for (l, diff) in layers.iter().zip(diff_ids) {
        let mut annotations = l.desc.annotations.clone();
        annotations.insert(label::SNAPSHOT_LAYER.into(), l.desc.digest.to_string());
        let (desc, raw) = if l.raw {
            let w = RawWrapper::for_layer(l)?;
            annotations.insert(label::RAW_SOURCE.into(), l.desc.digest.to_string());
            let d = Descriptor {
                media_type: MEDIA_TYPE_LAYER_TAR.into(),
                // Uncompressed: the tar's digest is its diff ID.
                digest: diff.clone(),
                size: w.size(),
                annotations,
                ..Default::default()
            };
            (d, Some(w))
        } else {
            let suffix = match l.compression {
                Compression::None => "",
                Compression::Gzip | Compression::GzipFastest => "+gzip",
                Compression::Zstd => "+zstd",
            };
            let d = Descriptor {
                media_type: format!("{MEDIA_TYPE_LAYER_TAR}{suffix}"),
                digest: l.desc.digest.clone(),
                size: l.desc.size,
                annotations,
                ..Default::default()
            };
            (d, None)
        };
        view_layers.push(ViewLayer {
            desc,
            diff_id: diff.clone(),
            plan: l.clone(),
            raw,
        });
    }
    let mut subject = kit.desc.clone();
    subject.media_type = MEDIA_TYPE_MANIFEST.into();
    subject.annotations.clear();
    subject.platform = None;
    let mut images = Vec::with_capacity(PLATFORMS.len());
    for (arch, variant) in PLATFORMS {
        let config = Doc::of(
            MEDIA_TYPE_IMAGE_CONFIG,
            &ImageConfig {
                architecture: arch,
                variant,
                os: "linux",
                config: ExecConfig { labels: &labels },
                rootfs: RootFs {
                    fs_type: "layers",
                    diff_ids,
                },
            },
        )?;
        let manifest = Doc::of(
            MEDIA_TYPE_MANIFEST,
            &Manifest {
                schema_version: 2,
                media_type: Some(MEDIA_TYPE_MANIFEST.into()),
                artifact_type: None,
                config: config.desc.clone(),
                layers: view_layers.iter().map(|l| l.desc.clone()).collect(),
                subject: Some(subject.clone()),
                annotations: labels.clone(),
            },
        )?;
        let platform = Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: variant.map(str::to_string),
        };
        images.push(PlatformImage {
            platform,
            manifest,
            config,
        });
    }
    let index = Doc::of(
        MEDIA_TYPE_INDEX,
        &Index {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_INDEX.into()),
            manifests: images
                .iter()
                .map(|i| Descriptor {
                    platform: Some(i.platform.clone()),
                    ..i.manifest.desc.clone()
                })
                .collect(),
            annotations: labels,
        },
    )?;
    Ok(ImageView {
        index,
        images,
        layers: view_layers,
    })
}

/// Streams a layer's blob (`blob` hashes what it reads, as the extractor's does),
/// verifying its digest and size, and returns its diff ID: the digest of the uncompressed
/// tar (for a raw layer, of the tar [`RawWrapper`] makes).
pub fn diff_id_of<B: HashedRead>(mut blob: B, l: &LayerPlan) -> Result<Digest> {
    let hash_all = |r: &mut dyn Read| HashingReader::new(r).finish().map(|(d, _)| d);
    let diff = if l.raw {
        let w = RawWrapper::for_layer(l)?;
        let mut h = Sha256::new();
        h.update(w.prefix());
        std::io::copy(&mut blob, &mut h)?;
        h.update(w.suffix());
        Some(Digest::from_sha256_bytes(&h.finalize()))
    } else {
        match l.compression {
            Compression::None => None,
            Compression::Gzip | Compression::GzipFastest => {
                Some(hash_all(&mut flate2::read::GzDecoder::new(&mut blob))?)
            }
            Compression::Zstd => Some(hash_all(&mut zstd::stream::read::Decoder::new(&mut blob)?)?),
        }
    };
    crate::extract::verify(blob, &l.desc)?;
    Ok(diff.unwrap_or_else(|| l.desc.digest.clone()))
}

/// The diff IDs of `layers`: known ones from the kit, the others by reading the blobs that
/// `open` gives (a local store's files).
pub fn diff_ids_with<R: Read>(
    kit: &Kit,
    layers: &[LayerPlan],
    mut open: impl FnMut(&Digest) -> Result<R>,
) -> Result<Vec<Digest>> {
    layers
        .iter()
        .map(|l| match kit.known_diff_id(l) {
            Some(d) => Ok(d),
            None => diff_id_of(
                HashingReader::new(std::io::BufReader::with_capacity(
                    1 << 20,
                    open(&l.desc.digest)?,
                )),
                l,
            ),
        })
        .collect()
}

/// The tar a raw layer is served as: `prefix`, the raw blob's bytes, `suffix` (padding to a
/// 512-byte block and the two zero blocks that end an archive).
///
/// The one entry is the file at the layer's `org.cncf.model.filepath`, owned by 0:0, with
/// the permission bits and mtime of the layer's file-metadata annotation (what `modctl
/// extract` restores), else mode 0644 and mtime 0. An mtime with nanoseconds, or before
/// 1970, is also written as a PAX `mtime` record, as Go's archive/tar writes it, so that
/// containerd's applier restores it exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawWrapper {
    prefix: Vec<u8>,
    content: u64,
}

impl RawWrapper {
    /// The tar of raw layer `l`; a malformed metadata annotation is an error naming it.
    pub fn for_layer(l: &LayerPlan) -> Result<RawWrapper> {
        RawWrapper::for_blob(&l.path, &l.desc)
    }

    /// The tar of the raw blob `desc` (a kit's layer descriptor, annotations included),
    /// holding the file at `path`.
    pub fn for_blob(path: &str, desc: &Descriptor) -> Result<RawWrapper> {
        let what = format!("raw layer {path} ({})", desc.digest.short());
        let meta = crate::extract::raw_metadata(desc, &what)?;
        RawWrapper::with_metadata(path, desc.size, meta.as_ref(), &what)
    }

    /// The tar of a raw file of `size` bytes at `path`, with the mode and mtime of `meta`
    /// (checked already: see `extract::raw_metadata`); `what` names it in errors.
    pub fn with_metadata(
        path: &str,
        size: u64,
        meta: Option<&FileMetadata>,
        what: &str,
    ) -> Result<RawWrapper> {
        let mtime = match meta.map(FileMetadata::mtime_since_epoch).transpose() {
            Ok(t) => t.flatten(),
            Err(msg) => return Err(Error::Invalid(format!("{what}: {msg}"))),
        };
        RawWrapper::new(path, size, meta.and_then(FileMetadata::permissions), mtime)
    }

    pub fn new(
        path: &str,
        size: u64,
        mode: Option<u32>,
        mtime: Option<(i64, u32)>,
    ) -> Result<RawWrapper> {
        let path = crate::kitfile::check_relative_path(path)
            .map_err(|e| Error::Invalid(format!("raw layer file path: {e}")))?;
        let (secs, nanos) = mtime.unwrap_or((0, 0));
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode.unwrap_or(0o644));
        h.set_uid(0);
        h.set_gid(0);
        // ustar holds whole seconds from 1970 in 11 octal digits; PAX carries the rest.
        let ustar_secs = u64::try_from(secs).ok().filter(|s| *s < 0o77777777777);
        h.set_mtime(ustar_secs.unwrap_or(0));
        h.set_size(size);
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
        if nanos != 0 || ustar_secs.is_none() {
            pax.push(("mtime", pax_time(secs, nanos).into_bytes()));
        }
        // A name too long for a ustar header gets a PAX `path` record.
        if h.set_path(&path).is_err() {
            pax.push(("path", path.as_bytes().to_vec()));
            h.set_path(short_name(&path))?;
        }
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        if !pax.is_empty() {
            // Go's writer sorts PAX keys.
            pax.sort();
            b.append_pax_extensions(pax.iter().map(|(k, v)| (*k, v.as_slice())))?;
        }
        h.set_cksum();
        // The header only: the content is streamed by whoever serves the tar.
        b.append(&h, std::io::empty())?;
        // Not `into_inner`, which would end the archive after the header.
        let prefix = b.get_ref().clone();
        Ok(RawWrapper {
            prefix,
            content: size,
        })
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Zero padding to the block boundary, then the end-of-archive blocks.
    pub fn suffix(&self) -> Vec<u8> {
        let pad = (512 - self.content % 512) % 512;
        vec![0u8; pad as usize + 1024]
    }

    pub fn size(&self) -> u64 {
        self.prefix.len() as u64 + self.content + self.suffix().len() as u64
    }
}

/// A PAX time as Go's archive/tar formats it: seconds, then a fraction without trailing
/// zeros (`-1.5` is half a second before 1970).
fn pax_time(secs: i64, nanos: u32) -> String {
    if nanos == 0 {
        return secs.to_string();
    }
    // Go writes a time before 1970 as minus its distance from the epoch.
    let (sign, s, n) = if secs < 0 {
        ("-", (secs + 1).unsigned_abs(), 1_000_000_000 - nanos)
    } else {
        ("", secs.unsigned_abs(), nanos)
    };
    let frac = format!("{n:09}");
    format!("{sign}{s}.{}", frac.trim_end_matches('0'))
}

/// The last 100 bytes of a long path (what readers without PAX support see).
fn short_name(path: &str) -> &str {
    let mut start = path.len().saturating_sub(100);
    while !path.is_char_boundary(start) {
        start += 1;
    }
    &path[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kitfile::Kitfile;

    fn kit(compression: Compression) -> (Kit, Vec<u8>) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "model.bin", &b"hello"[..]).unwrap();
        let plain = tar.into_inner().unwrap();
        let blob = match compression {
            Compression::None => plain.clone(),
            Compression::Zstd => zstd::encode_all(&plain[..], 3).unwrap(),
            _ => {
                use std::io::Write;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&plain).unwrap();
                e.finish().unwrap()
            }
        };
        let kf: Kitfile = serde_yaml_ng::from_str(
            "manifestVersion: 1.0.0\npackage: {name: demo, version: 1.2.3}\nmodel: {path: model.bin}\n",
        )
        .unwrap();
        let config = oci::to_go_json(&kf).unwrap();
        let lt = oci::LayerType {
            format: ModelFormat::Kit,
            kind: oci::LayerKind::Model,
            compression,
            raw: false,
        };
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_MANIFEST.into()),
            artifact_type: None,
            config: Descriptor {
                media_type: oci::KIT_CONFIG_MEDIA_TYPE.into(),
                digest: Digest::of(&config),
                size: config.len() as u64,
                ..Default::default()
            },
            layers: vec![Descriptor {
                media_type: lt.media_type(),
                digest: Digest::of(&blob),
                size: blob.len() as u64,
                ..Default::default()
            }],
            subject: None,
            annotations: BTreeMap::new(),
        };
        let mbytes = oci::to_go_json(&manifest).unwrap();
        let desc = Descriptor {
            media_type: MEDIA_TYPE_MANIFEST.into(),
            digest: Digest::of(&mbytes),
            size: mbytes.len() as u64,
            ..Default::default()
        };
        (Kit::new(desc, manifest, config).unwrap(), blob)
    }

    #[test]
    fn view_of_an_uncompressed_kit_is_its_blobs_with_image_types() {
        let (k, blob) = kit(Compression::None);
        let layers = k.select(&[]).unwrap();
        let diffs: Vec<Digest> = layers.iter().map(|l| k.known_diff_id(l).unwrap()).collect();
        assert_eq!(diffs[0], Digest::of(&blob));
        let v = synthesize(&k, &layers, &diffs, "").unwrap();
        let idx: Index = serde_json::from_slice(&v.index.bytes).unwrap();
        assert_eq!(idx.manifests.len(), PLATFORMS.len());
        assert_eq!(v.images.len(), PLATFORMS.len());
        for (entry, img) in idx.manifests.iter().zip(&v.images) {
            // Each platform has its own manifest and config, naming that platform...
            assert_eq!(entry.digest, img.manifest.desc.digest);
            assert_eq!(entry.platform.as_ref(), Some(&img.platform));
            let m: Manifest = serde_json::from_slice(&img.manifest.bytes).unwrap();
            assert_eq!(m.config.digest, img.config.desc.digest);
            assert_eq!(m.layers[0].digest, Digest::of(&blob));
            assert_eq!(m.layers[0].media_type, MEDIA_TYPE_LAYER_TAR);
            // containerd hands this annotation to the snapshotter, which fills the layer.
            assert_eq!(
                m.layers[0].annotations.get(label::SNAPSHOT_LAYER),
                Some(&Digest::of(&blob).to_string())
            );
            assert_eq!(m.subject.as_ref().unwrap().digest, k.desc.digest);
            let cfg: serde_json::Value = serde_json::from_slice(&img.config.bytes).unwrap();
            assert_eq!(cfg["architecture"], img.platform.architecture.as_str());
            assert_eq!(cfg["os"], "linux");
            assert_eq!(
                cfg["variant"].as_str(),
                img.platform.variant.as_deref(),
                "{cfg}"
            );
            // ...over the same layers and diff IDs, so every platform unpacks the same
            // snapshots.
            assert_eq!(cfg["rootfs"]["diff_ids"][0], Digest::of(&blob).to_string());
            assert_eq!(cfg["config"]["Labels"][label::NAME], "demo");
            assert_eq!(cfg["config"]["Labels"][label::PACKAGE_VERSION], "1.2.3");
        }
        // No two entries share a manifest (containerd 2.x's transfer service fetches no
        // layer of a manifest listed twice).
        let mut digests: Vec<_> = idx.manifests.iter().map(|d| &d.digest).collect();
        digests.sort();
        digests.dedup();
        assert_eq!(digests.len(), PLATFORMS.len());
        assert_eq!(v.docs().count(), 1 + 2 * PLATFORMS.len());
        // Deterministic: the same kit gives the same bytes.
        let again = synthesize(&k, &layers, &diffs, "").unwrap();
        assert_eq!(again.index.bytes, v.index.bytes);
        // A filter changes the view (it is recorded), not the layers here.
        let f = synthesize(&k, &layers, &diffs, "model").unwrap();
        assert_ne!(f.index.desc.digest, v.index.desc.digest);
        assert_eq!(v.chain_ids(), diffs);
    }

    #[test]
    fn compressed_diff_ids_are_computed_and_verified() {
        for c in [Compression::Gzip, Compression::Zstd] {
            let (k, blob) = kit(c);
            let l = &k.select(&[]).unwrap()[0];
            assert!(k.known_diff_id(l).is_none());
            let (plain, _) = kit(Compression::None);
            let d = diff_id_of(HashingReader::new(&blob[..]), l).unwrap();
            assert_eq!(d, plain.manifest.layers[0].digest);
            let mut bad = blob.clone();
            bad.push(0);
            assert!(diff_id_of(HashingReader::new(&bad[..]), l).is_err());
        }
    }

    #[test]
    fn raw_wrapper_is_a_tar_of_the_file() {
        let data = b"raw weights".to_vec();
        let w = RawWrapper::new("weights/model.gguf", data.len() as u64, None, None).unwrap();
        let mut tar_bytes = w.prefix().to_vec();
        tar_bytes.extend_from_slice(&data);
        tar_bytes.extend_from_slice(&w.suffix());
        assert_eq!(tar_bytes.len() as u64, w.size());
        assert_eq!(tar_bytes.len() % 512, 0);
        let mut a = tar::Archive::new(&tar_bytes[..]);
        let mut entries = a.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some("weights/model.gguf"));
        let mut got = Vec::new();
        e.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        assert!(entries.next().is_none());
        let long = format!("{}/w.bin", "d".repeat(300));
        let w = RawWrapper::new(&long, 3, None, None).unwrap();
        let mut t = w.prefix().to_vec();
        t.extend_from_slice(b"abc");
        t.extend_from_slice(&w.suffix());
        let mut a = tar::Archive::new(&t[..]);
        let e = a.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some(long.as_str()));
        assert!(RawWrapper::new("../etc/passwd", 1, None, None).is_err());
    }

    /// The tar carries the file's metadata: containerd's applier restores it from there.
    #[test]
    fn raw_wrapper_carries_mode_and_mtime() {
        let tar_of = |w: &RawWrapper| {
            let mut t = w.prefix().to_vec();
            t.extend_from_slice(b"abc");
            t.extend_from_slice(&w.suffix());
            t
        };
        let w =
            RawWrapper::new("run.sh", 3, Some(0o755), Some((1_614_834_367, 123_456_789))).unwrap();
        let t = tar_of(&w);
        let mut a = tar::Archive::new(&t[..]);
        let mut e = a.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.header().mode().unwrap(), 0o755);
        assert_eq!(e.header().mtime().unwrap(), 1_614_834_367);
        let pax: Vec<(String, String)> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|p| {
                let p = p.unwrap();
                (p.key().unwrap().into(), p.value().unwrap().into())
            })
            .collect();
        assert_eq!(pax, [("mtime".into(), "1614834367.123456789".into())]);
        // Whole seconds fit the ustar header: no PAX record.
        let w = RawWrapper::new("run.sh", 3, Some(0o600), Some((1_614_834_367, 0))).unwrap();
        assert_eq!(w.prefix().len(), 512);
        assert_eq!(pax_time(-2, 500_000_000), "-1.5");
        assert_eq!(pax_time(5, 100_000_000), "5.1");
        assert_eq!(pax_time(-7, 0), "-7");
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        let expect = Digest::of(format!("{a} {b}").as_bytes());
        assert_eq!(c[1], expect);
    }
}
