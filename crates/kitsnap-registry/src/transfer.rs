//! Moving ModelKits between the local store and registries: `pull`, `push`, and the
//! selective fetch behind `unpack` of a remote reference. Several blobs move at once;
//! each lands in the store only whole and verified, so a failed transfer leaves the store
//! as it was (apart from temporary files that `remove` collects).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt, stream};

use kitsnap_core::digest::{Digest, DirectWrite, HashedRead, ThreadedHasher};
use kitsnap_core::imageview;
use kitsnap_core::index::{IndexError, ModelKitIndex};
use kitsnap_core::layers::{self, Filter, FilterType};
use kitsnap_core::lazy::{self, LazyIndex};
use kitsnap_core::oci::{Descriptor, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, Manifest};
use kitsnap_core::pack::{self, PackOptions};
use kitsnap_core::progress;
use kitsnap_core::reference::{DEFAULT_REGISTRY, Reference};
use kitsnap_core::store::Store;

use crate::client::{PushOutcome, Registry};
use crate::error::{CoreError, Error, Result};

#[derive(Clone, Debug)]
pub struct TransferOptions {
    /// Blobs in flight at once.
    pub concurrency: usize,
    pub progress: bool,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            concurrency: 4,
            progress: true,
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub manifest: Option<Descriptor>,
    /// Blobs moved over the network.
    pub transferred: usize,
    /// Blobs the other side already had (or mounted).
    pub skipped: usize,
    pub bytes: u64,
    /// Wall time of the transfer.
    pub elapsed: std::time::Duration,
}

impl Report {
    /// One line for people: "pushed 3 blobs, 2.0 GiB in 12.3 s (170.4 MiB/s); 1 already there".
    pub fn summary(&self, verb: &str, already: &str) -> String {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            format!(
                " ({}/s)",
                kitsnap_core::human_bytes((self.bytes as f64 / secs) as u64)
            )
        } else {
            String::new()
        };
        let mut s = format!(
            "{verb} {} blob{}, {} in {secs:.1} s{rate}",
            self.transferred,
            if self.transferred == 1 { "" } else { "s" },
            kitsnap_core::human_bytes(self.bytes)
        );
        if self.skipped > 0 {
            s.push_str(&format!("; {} {already}", self.skipped));
        }
        s
    }
}

/// What each blob of `m` is, for progress bars: `config`, or the layer's type and path.
pub fn blob_labels(
    m: &Manifest,
    kf: Option<&kitsnap_core::kitfile::Kitfile>,
) -> HashMap<Digest, String> {
    let mut out = HashMap::new();
    out.insert(m.config.digest.clone(), "config".to_string());
    if let Ok(plan) = layers::plan_layers(m, kf) {
        for l in plan {
            let path = if l.path.is_empty() {
                l.desc.digest.short().to_string()
            } else {
                l.path
            };
            out.insert(l.desc.digest, format!("{} {path}", l.kind.user_str()));
        }
    }
    out
}

fn label(labels: &HashMap<Digest, String>, d: &Descriptor) -> String {
    labels
        .get(&d.digest)
        .cloned()
        .unwrap_or_else(|| d.digest.short().to_string())
}

/// Refuses references that name the local store rather than a registry.
pub fn check_remote(r: &Reference) -> Result<()> {
    if r.registry == DEFAULT_REGISTRY {
        return Err(CoreError::Invalid(format!(
            "{r} names the local store, not a registry; tag it with a registry first (kitsnap tag {r} registry.example.com/{}:TAG)",
            r.repository
        )).into());
    }
    Ok(())
}

fn remote_ref(r: &Reference) -> String {
    match (&r.digest, r.tag_or_default()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => "latest".into(),
    }
}

/// Fetches and checks a remote ModelKit manifest (refusing indexes and other artifacts).
pub async fn remote_manifest(
    reg: &Registry,
    r: &Reference,
) -> Result<(Vec<u8>, Manifest, Descriptor)> {
    let (bytes, media_type, digest) = reg.get_manifest(&r.repository, &remote_ref(r)).await?;
    kit_manifest(r, bytes, &media_type, digest)
}

/// Checks fetched manifest bytes as a ModelKit manifest (refusing indexes and other
/// artifacts) and describes them.
fn kit_manifest(
    r: &Reference,
    bytes: Vec<u8>,
    media_type: &str,
    digest: Digest,
) -> Result<(Vec<u8>, Manifest, Descriptor)> {
    if media_type.starts_with(MEDIA_TYPE_INDEX) || media_type.contains("manifest.list") {
        // A ModelKit index needs labels to choose one of its ModelKits.
        if ModelKitIndex::parse(&bytes).is_ok() {
            return Err(CoreError::from(IndexError::NeedsLabel {
                reference: r.to_string(),
                verb: "pull or unpack",
                remote: " --remote",
            })
            .into());
        }
        return Err(CoreError::NotAModelKit(format!(
            "{r} is {}; kitsnap pulls ModelKit manifests",
            describe_index(&bytes)
        ))
        .into());
    }
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|source| CoreError::Json {
        what: format!("manifest of {r}"),
        source,
    })?;
    if m.model_format().is_none() {
        let what = describe_image(&bytes).unwrap_or_default();
        return Err(
            CoreError::NotAModelKit(format!("{}{what}", layers::not_a_modelkit(&m))).into(),
        );
    }
    let desc = Descriptor {
        media_type: m
            .media_type
            .clone()
            .unwrap_or_else(|| MEDIA_TYPE_MANIFEST.into()),
        digest,
        size: bytes.len() as u64,
        ..Default::default()
    };
    Ok((bytes, m, desc))
}

/// What a remote reference names, for the verbs that take both kinds.
pub enum Remote {
    Kit(Vec<u8>, Manifest, Descriptor),
    Index(Vec<u8>, ModelKitIndex, Descriptor),
}

/// Fetches a remote manifest that is either a ModelKit (or ModelPack) or a ModelKit index.
pub async fn remote_kit_or_index(reg: &Registry, r: &Reference) -> Result<Remote> {
    check_remote(r)?;
    let (bytes, media_type, digest) = reg.get_manifest(&r.repository, &remote_ref(r)).await?;
    if media_type.starts_with(MEDIA_TYPE_INDEX) {
        let idx = ModelKitIndex::parse(&bytes).map_err(CoreError::from)?;
        let desc = Descriptor {
            media_type: MEDIA_TYPE_INDEX.into(),
            digest,
            size: bytes.len() as u64,
            ..Default::default()
        };
        return Ok(Remote::Index(bytes, idx, desc));
    }
    let (bytes, m, desc) = kit_manifest(r, bytes, &media_type, digest)?;
    Ok(Remote::Kit(bytes, m, desc))
}

// Manifests that are not ModelKits are read with oci-spec's types: any valid OCI image or
// index, described for the error. (ModelKit manifests keep kitsnap_core's own types,
// which write the Go-exact bytes KitOps does.)

/// "an image index for linux/amd64, linux/arm64".
fn describe_index(bytes: &[u8]) -> String {
    let Ok(idx) = serde_json::from_slice::<oci_spec::image::ImageIndex>(bytes) else {
        return "an image index".into();
    };
    let platforms: Vec<String> = idx
        .manifests()
        .iter()
        .filter_map(|m| m.platform().as_ref())
        .map(|p| format!("{}/{}", p.os(), p.architecture()))
        .collect();
    if platforms.is_empty() {
        format!("an image index of {} manifest(s)", idx.manifests().len())
    } else {
        format!("an image index for {}", platforms.join(", "))
    }
}

/// "; it is a container image (config ..., N layers)" for an OCI or Docker image.
fn describe_image(bytes: &[u8]) -> Option<String> {
    let m = serde_json::from_slice::<oci_spec::image::ImageManifest>(bytes).ok()?;
    let config = m.config().media_type().to_string();
    config.contains("image.config").then(|| {
        format!(
            "; it is a container image ({} layer(s)): use ctr, nerdctl or docker for it",
            m.layers().len()
        )
    })
}

async fn download(
    store: &Store,
    reg: &Registry,
    repo: &str,
    desc: &Descriptor,
    bar: &indicatif::ProgressBar,
) -> Result<bool> {
    if store.has_blob(&desc.digest) {
        bar.finish_with_message("stored");
        return Ok(false);
    }
    let mut ingest = store.ingest()?;
    let file = ingest.file()?.try_clone()?;
    bar.reset_elapsed();
    reg.fetch_blob(repo, desc, file, bar).await?;
    // Verified while streaming: digest and size. The commit fsyncs the whole blob: off
    // the async workers.
    let (store, digest) = (store.clone(), desc.digest.clone());
    tokio::task::spawn_blocking(move || store.commit(ingest, &digest, false))
        .await
        .map_err(|e| Error::Aborted(format!("storing a blob: {e}")))??;
    bar.finish_with_message("pulled");
    Ok(true)
}

async fn download_all(
    store: &Store,
    reg: &Registry,
    repo: &str,
    blobs: Vec<Descriptor>,
    labels: &HashMap<Digest, String>,
    opts: &TransferOptions,
    report: &mut Report,
) -> Result<()> {
    let started = std::time::Instant::now();
    let mp = progress::multi(opts.progress);
    // Every bar up front, in manifest order: lines never move or shrink while drawn.
    let bars: Vec<_> = blobs
        .iter()
        .map(|d| progress::multi_bytes(&mp, d.size, label(labels, d)))
        .collect();
    let results: Vec<(bool, u64)> = stream::iter(blobs.into_iter().zip(bars))
        .map(|(d, bar)| async move {
            download(store, reg, repo, &d, &bar)
                .await
                .map(|moved| (moved, d.size))
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    for (moved, size) in results {
        if moved {
            report.transferred += 1;
            report.bytes += size;
        } else {
            report.skipped += 1;
        }
    }
    report.elapsed += started.elapsed();
    Ok(())
}

/// `pull`: the ModelKit and all its blobs into the store, tagged as `r`.
pub async fn pull(
    store: &Store,
    reg: &Registry,
    r: &Reference,
    opts: &TransferOptions,
) -> Result<Report> {
    let _w = store.writer_lock()?;
    let report = pull_content(store, reg, r, opts).await?;
    if let Some(stored) = &report.manifest {
        store.name_pulled(r, stored)?;
    }
    Ok(report)
}

/// The ModelKit's manifest and blobs into the store, with no tag or entry of its own (for
/// `pull`, and for a ModelKit that a ModelKit index keeps). The caller holds the store's
/// writer lock until the manifest is named (tagged, or kept by a tagged index), or garbage
/// collection may take it.
pub async fn pull_content(
    store: &Store,
    reg: &Registry,
    r: &Reference,
    opts: &TransferOptions,
) -> Result<Report> {
    check_remote(r)?;
    let (bytes, m, desc) = remote_manifest(reg, r).await?;
    let mut report = Report::default();
    // The config first (small): its Kitfile names the layers on the progress bars.
    let mut labels = blob_labels(&m, None);
    download_all(
        store,
        reg,
        &r.repository,
        vec![m.config.clone()],
        &labels,
        &TransferOptions {
            progress: false,
            ..opts.clone()
        },
        &mut report,
    )
    .await?;
    if let Ok(Some(kf)) = store.kitfile(&m) {
        labels = blob_labels(&m, Some(&kf));
    }
    download_all(
        store,
        reg,
        &r.repository,
        m.layers.clone(),
        &labels,
        opts,
        &mut report,
    )
    .await?;
    let stored = store.put_bytes(&desc.media_type, &bytes)?;
    report.manifest = Some(stored);
    Ok(report)
}

/// The parent ModelKits up the chain from `r` (stored as `desc`; a Kitfile's `model.path`
/// naming a ModelKit, as kit reads it), each pulled into the store unless it is there
/// already. A parent without a registry (kit's default, `localhost`) can only come from the
/// store. Returns the parents pulled.
pub async fn pull_parents(
    store: &Store,
    r: &Reference,
    desc: &Descriptor,
    client: &crate::client::ClientOptions,
    opts: &TransferOptions,
) -> Result<Vec<Reference>> {
    let mut pulled = Vec::new();
    let mut chain = vec![r.clone()];
    let mut cur_desc = desc.clone();
    loop {
        let cur = chain[chain.len() - 1].clone();
        let m = store.manifest(&cur_desc)?;
        let Some(parent) = store.kitfile(&m)?.and_then(|k| k.model_parent()) else {
            return Ok(pulled);
        };
        let names = || {
            chain
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" -> ")
        };
        if chain.contains(&parent) {
            return Err(CoreError::Invalid(format!(
                "parent ModelKits form a cycle: {} -> {parent}",
                names()
            ))
            .into());
        }
        if chain.len() > kitsnap_core::unpack::MAX_PARENT_CHAIN {
            return Err(CoreError::Invalid(format!(
                "more than {} chained parent ModelKits: {}",
                kitsnap_core::unpack::MAX_PARENT_CHAIN,
                names()
            ))
            .into());
        }
        if store.resolve(&parent).is_err() {
            if parent.registry == DEFAULT_REGISTRY {
                return Err(CoreError::NotFound(format!(
                    "parent ModelKit {parent} (the model.path of {cur}) is not in the local store and names no registry to pull it from: pack or pull it first"
                ))
                .into());
            }
            let (host, copts) = (parent.registry.clone(), client.clone());
            // Credentials may come from a helper process: off the async workers.
            let reg = tokio::task::spawn_blocking(move || Registry::new(&host, copts))
                .await
                .map_err(|e| Error::Aborted(format!("setting up a registry client: {e}")))??;
            pull(store, &reg, &parent, opts).await?;
            pulled.push(parent.clone());
        }
        cur_desc = store.resolve(&parent)?;
        chain.push(parent);
    }
}

/// For `unpack` of a remote reference: fetches the manifest, the config and only the
/// layers the filters select. The manifest is stored untagged; returns its descriptor.
pub async fn fetch_selected(
    store: &Store,
    reg: &Registry,
    r: &Reference,
    filters: &[Filter],
    opts: &TransferOptions,
) -> Result<(Descriptor, Report)> {
    check_remote(r)?;
    let (bytes, m, desc) = remote_manifest(reg, r).await?;
    let mut report = Report::default();
    download_all(
        store,
        reg,
        &r.repository,
        vec![m.config.clone()],
        &blob_labels(&m, None),
        &TransferOptions {
            progress: false,
            ..opts.clone()
        },
        &mut report,
    )
    .await?;
    let kf = store.kitfile(&m)?;
    let labels = blob_labels(&m, kf.as_ref());
    let wanted: Vec<Descriptor> = layers::plan_layers(&m, kf.as_ref())?
        .into_iter()
        .filter(|l| layers::selected(filters, FilterType::for_kind(l.kind), &l.name, &l.path))
        .map(|l| l.desc)
        .collect();
    download_all(
        store,
        reg,
        &r.repository,
        wanted,
        &labels,
        opts,
        &mut report,
    )
    .await?;
    let stored = store.put_bytes(&desc.media_type, &bytes)?;
    store.add_untagged(&r.name(), &stored)?;
    Ok((stored, report))
}

/// Other repositories of the same registry that (per the local store) hold each blob:
/// candidates for a cross-repository mount instead of an upload.
fn mount_sources(
    store: &Store,
    registry: &str,
    repo: &str,
) -> Result<HashMap<Digest, Vec<String>>> {
    let mut out: HashMap<Digest, Vec<String>> = HashMap::new();
    let prefix = format!("{registry}/");
    for e in store.list()? {
        let Some(other) = e.name.strip_prefix(&prefix) else {
            continue;
        };
        if other == repo {
            continue;
        }
        let Ok(m) = store.manifest(&e.descriptor) else {
            continue;
        };
        for d in std::iter::once(&m.config).chain(m.layers.iter()) {
            let v = out.entry(d.digest.clone()).or_default();
            if !v.iter().any(|x| x == other) {
                v.push(other.to_string());
            }
        }
    }
    Ok(out)
}

/// `push`: the local ModelKit `local` to the registry location `remote`.
pub async fn push(
    store: &Store,
    reg: &Registry,
    local: &Reference,
    remote: &Reference,
    opts: &TransferOptions,
) -> Result<Report> {
    check_remote(remote)?;
    let desc = store.resolve(local)?;
    let bytes = store.read_blob(&desc)?;
    let m = store.manifest(&desc)?;
    if m.model_format().is_none() {
        return Err(layers::not_a_modelkit(&m).into());
    }
    let mounts = mount_sources(store, &remote.registry, &remote.repository)?;
    let labels = blob_labels(&m, store.kitfile(&m).ok().flatten().as_ref());
    let started = std::time::Instant::now();
    let mp = progress::multi(opts.progress);
    let blobs: Vec<Descriptor> = m
        .layers
        .iter()
        .cloned()
        .chain(std::iter::once(m.config.clone()))
        .collect();
    for b in &blobs {
        if !store.has_blob(&b.digest) {
            return Err(CoreError::NotFound(format!(
                "blob {} of {local} (was the store pruned?)",
                b.digest
            ))
            .into());
        }
    }
    // Every bar up front, in manifest order: lines never move or shrink while drawn.
    let bars: Vec<_> = blobs
        .iter()
        .map(|d| progress::multi_bytes(&mp, d.size, label(&labels, d)))
        .collect();
    let outcomes: Vec<(PushOutcome, u64)> = stream::iter(blobs.into_iter().zip(bars))
        .map(|(d, bar)| {
            let from = mounts.get(&d.digest).cloned().unwrap_or_default();
            async move {
                let path = store.blob_path(&d.digest);
                bar.reset_elapsed();
                let o = reg
                    .push_blob(&remote.repository, &d, &path, &from, &bar)
                    .await?;
                bar.finish_with_message(match o {
                    PushOutcome::Uploaded => "pushed",
                    PushOutcome::Mounted => "mounted",
                    PushOutcome::Exists => "exists",
                });
                Ok::<_, Error>((o, d.size))
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    let mut report = Report {
        elapsed: started.elapsed(),
        ..Report::default()
    };
    for (o, size) in outcomes {
        if o == PushOutcome::Uploaded {
            report.transferred += 1;
            report.bytes += size;
        } else {
            report.skipped += 1;
        }
    }
    let media_type = m
        .media_type
        .clone()
        .unwrap_or_else(|| MEDIA_TYPE_MANIFEST.into());
    reg.put_manifest(&remote.repository, &remote_ref(remote), &bytes, &media_type)
        .await?;
    report.manifest = Some(desc);
    Ok(report)
}

/// Gathered 1 MiB pieces in flight from a layer's download to the thread reading it: two
/// are as fast as four, and 2 MiB less per layer downloaded at once.
const LAYER_PIPE: usize = 2;

/// Bytes from an async download to a blocking consumer (extraction, hashing) on another
/// thread; `None` from the channel is the end of the blob. It hashes the blob as it
/// receives it, handing each piece to the hasher thread as it is (a `HashingReader` would
/// copy every byte once more): what the extractor verifies a downloaded layer with.
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    cur: bytes::Bytes,
    hasher: ThreadedHasher,
    /// Large files' content goes from the pieces straight to the file.
    direct: DirectWrite,
}

impl ChannelReader {
    /// A bounded pipe: at most `chunks` chunks in flight whatever the blob's size.
    pub fn hashed_pipe(chunks: usize) -> (tokio::sync::mpsc::Sender<bytes::Bytes>, ChannelReader) {
        let (tx, rx) = tokio::sync::mpsc::channel(chunks);
        (
            tx,
            ChannelReader {
                rx,
                cur: bytes::Bytes::new(),
                hasher: ThreadedHasher::new(),
                direct: DirectWrite::default(),
            },
        )
    }

    fn recv(&mut self) -> Option<bytes::Bytes> {
        let b = self.rx.blocking_recv()?;
        self.hasher.update_shared(b.clone());
        Some(b)
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        let piece = self.cur.split_to(n);
        if !self.direct.write(&piece)? {
            buf[..n].copy_from_slice(&piece);
        }
        Ok(n)
    }
}

impl HashedRead for ChannelReader {
    fn finish(mut self) -> kitsnap_core::Result<(Digest, u64)> {
        // What the consumer left unread is hashed as it is received.
        while self.recv().is_some() {}
        self.hasher.finish()
    }

    fn direct(&self) -> Option<DirectWrite> {
        Some(self.direct.clone())
    }
}

/// Feeds a [`ChannelReader`]; the blocking side verifies the digest.
struct PipeSink {
    tx: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    started: bool,
}

impl crate::client::BlobSink for PipeSink {
    async fn reset(&mut self) -> Result<()> {
        if self.started {
            return Err(Error::Aborted(
                "the registry restarted a download from byte 0 that cannot start over; retry"
                    .into(),
            ));
        }
        Ok(())
    }
    async fn write(&mut self, data: bytes::Bytes) -> Result<()> {
        self.started = true;
        match &self.tx {
            Some(tx) if tx.send(data).await.is_ok() => Ok(()),
            _ => Err(Error::Aborted("the reader of the blob stopped".into())),
        }
    }
    async fn finish(&mut self) -> Result<()> {
        self.tx = None;
        Ok(())
    }
    fn verifies(&self) -> bool {
        true
    }
}

impl PipeSink {
    fn new(tx: tokio::sync::mpsc::Sender<bytes::Bytes>) -> PipeSink {
        PipeSink {
            tx: Some(tx),
            started: false,
        }
    }
}

/// The diff IDs of `layers` of a remote kit: known ones from the kit itself, the others
/// (compressed and raw layers) by streaming their blobs once.
pub async fn diff_ids(
    reg: &Registry,
    repo: &str,
    kit: &imageview::Kit,
    layers: &[layers::LayerPlan],
) -> Result<Vec<Digest>> {
    let mut out = Vec::with_capacity(layers.len());
    for l in layers {
        if let Some(d) = kit.known_diff_id(l) {
            out.push(d);
            continue;
        }
        let (tx, reader) = ChannelReader::hashed_pipe(LAYER_PIPE);
        let plan = l.clone();
        let worker = tokio::task::spawn_blocking(move || imageview::diff_id_of(reader, &plan));
        let mut sink = PipeSink::new(tx);
        let fetched = reg
            .fetch_blob_into(repo, &l.desc, &mut sink, &indicatif::ProgressBar::hidden())
            .await;
        sink.tx = None;
        let hashed = worker
            .await
            .map_err(|e| CoreError::Internal(format!("hashing task: {e}")))?;
        match (fetched, hashed) {
            (Ok(()), r) => out.push(r?),
            // The hasher's error says what was wrong with the bytes.
            (Err(Error::Aborted(_)), Err(e)) => return Err(e.into()),
            (Err(e), _) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hashed pipe's digest covers every byte sent, read or not, and its reader gives
    /// them back in order.
    #[test]
    fn hashed_pipe_covers_what_was_sent() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (tx, mut reader) = ChannelReader::hashed_pipe(2);
        let pieces: Vec<bytes::Bytes> = data
            .chunks(700_001)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let sender = std::thread::spawn(move || {
            rt.block_on(async {
                for p in pieces {
                    tx.send(p).await.unwrap();
                }
            })
        });
        let mut first = vec![0u8; 1_000_000];
        std::io::Read::read_exact(&mut reader, &mut first).unwrap();
        assert_eq!(first, data[..1_000_000]);
        let (d, n) = HashedRead::finish(reader).unwrap();
        sender.join().unwrap();
        assert_eq!((d, n), (Digest::of(&data), data.len() as u64));
    }

    #[test]
    fn foreign_manifests_are_described() {
        let d = format!("sha256:{}", "a".repeat(64));
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":1,"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#
        );
        assert_eq!(
            describe_index(idx.as_bytes()),
            "an image index for linux/amd64, linux/arm64"
        );
        let img = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":1}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":1}}]}}"#
        );
        let what = describe_image(img.as_bytes()).unwrap();
        assert!(what.contains("container image (1 layer(s))"), "{what}");
        assert_eq!(describe_index(b"junk"), "an image index");
    }
}

/// What `pack --push` did.
#[derive(Debug)]
pub struct PackPushReport {
    pub manifest: Descriptor,
    pub layers: Vec<Descriptor>,
    pub bytes: u64,
    pub elapsed: std::time::Duration,
    /// The registry refused chunked uploads, so every layer was read twice (hash, then
    /// one PUT).
    pub fell_back: bool,
    pub warnings: Vec<String>,
}

/// `pack --push`: packs straight into `opts.reference`'s registry with no local copy.
/// Each layer is written into a chunked upload while it is hashed; the digest closes the
/// upload. A registry that refuses chunked uploads gets each layer hashed first, then sent
/// in one streamed PUT. The manifest goes last: a failure anywhere leaves nothing tagged.
pub async fn pack_push(reg: &Registry, opts: &PackOptions) -> Result<PackPushReport> {
    let r = &opts.reference;
    check_remote(r)?;
    let started = std::time::Instant::now();
    let plan = Arc::new({
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || pack::plan(&opts))
            .await
            .map_err(|e| Error::Aborted(format!("walking the tree: {e}")))??
    });
    let bar = progress::bytes(plan.total, "packing and pushing", opts.progress);
    let mut written: Vec<pack::Written> = Vec::new();
    let mut fell_back = false;
    'layers: for i in 0..plan.layers.len() {
        let l = &plan.layers[i];
        bar.set_message(format!("{} {}", l.entry.kind.user_str(), l.path));
        let before = bar.position();
        let encode = {
            let (plan, opts, bar) = (plan.clone(), opts.clone(), bar.clone());
            move |w: &mut dyn std::io::Write| -> Result<pack::Written> {
                let (_, out) = pack::encode_layer(w, &plan.layers[i], &opts, &bar)?;
                Ok(out)
            }
        };
        // A streamed upload that breaks cannot resume: the layer is produced again, from
        // its files, into a new upload.
        let mut backoff = reg.backoff();
        while !fell_back {
            let enc = encode.clone();
            match reg
                .push_stream(&r.repository, move |w| {
                    let out = enc(w)?;
                    let d = out.desc.digest.clone();
                    Ok((out, d))
                })
                .await
            {
                Ok((out, _, _)) => {
                    written.push(out);
                    continue 'layers;
                }
                Err(Error::ChunkedRefused { url, status }) => {
                    tracing::info!(%url, status, "chunked uploads refused: hashing each layer first, then one PUT");
                    fell_back = true;
                    bar.set_position(before);
                }
                Err(e @ Error::UploadBroken { .. }) => {
                    bar.set_position(before);
                    if !backoff
                        .wait(format!("{e}; sending {} again from its start", l.path))
                        .await
                    {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        // First pass: the digest and size, written nowhere.
        let out = {
            let enc = encode.clone();
            tokio::task::spawn_blocking(move || enc(&mut std::io::sink()))
                .await
                .map_err(|e| Error::Aborted(format!("hashing a layer: {e}")))??
        };
        bar.set_position(before);
        let (digest, size) = (out.desc.digest.clone(), out.desc.size);
        if !reg.blob_exists(&r.repository, &digest).await? {
            let want = digest.clone();
            let path = plan.layers[i].path.clone();
            reg.push_stream_whole(&r.repository, &digest, size, move |w| {
                let again = encode(w)?;
                if again.desc.digest != want {
                    return Err(Error::Aborted(format!(
                        "{path} changed while being pushed (digest {want} then {})",
                        again.desc.digest
                    )));
                }
                Ok(())
            })
            .await?;
        } else {
            bar.inc(plan.layers[i].items_size());
        }
        written.push(out);
    }
    bar.finish_and_clear();
    let a = pack::assemble(&plan, &written, opts.format)?;
    if !reg.blob_exists(&r.repository, &a.config.digest).await? {
        let bytes = a.config_bytes.clone();
        reg.push_stream_whole(&r.repository, &a.config.digest, a.config.size, move |w| {
            w.write_all(&bytes)
                .map_err(|e| Error::Aborted(format!("config: {e}")))
        })
        .await?;
    }
    reg.put_manifest(
        &r.repository,
        &remote_ref(r),
        &a.manifest_bytes,
        MEDIA_TYPE_MANIFEST,
    )
    .await?;
    let bytes = written.iter().map(|w| w.desc.size).sum::<u64>() + a.config.size;
    Ok(PackPushReport {
        manifest: a.manifest,
        layers: written.into_iter().map(|w| w.desc).collect(),
        bytes,
        elapsed: started.elapsed(),
        fell_back,
        warnings: plan.warnings.clone(),
    })
}

/// What `unpack_streaming` wrote.
#[derive(Debug, Default)]
pub struct StreamedUnpack {
    pub layers: Vec<(kitsnap_core::oci::LayerKind, String)>,
    pub bytes: u64,
    pub kitfile_written: bool,
    pub elapsed: std::time::Duration,
}

/// `unpack` of a remote ModelKit into an empty directory without a local copy: each
/// selected layer streams from the registry straight into extraction (digest checked as
/// it goes), so the files are written once and nothing is stored. Returns None when this
/// path does not apply (a parent ModelKit, no matching layer): the caller then goes
/// through the store.
pub async fn unpack_streaming(
    reg: &Registry,
    r: &Reference,
    filters: &[Filter],
    dest: &std::path::Path,
    progress: bool,
) -> Result<Option<StreamedUnpack>> {
    check_remote(r)?;
    let started = std::time::Instant::now();
    let (_, m, _) = remote_manifest(reg, r).await?;
    let kf = layers::kitfile_of(&m, || {
        Err(CoreError::Invalid("config is fetched below".into()))
    })
    .ok()
    .flatten();
    let kf = match (kf, m.model_format()) {
        (Some(k), _) => Some(k),
        (None, Some(kitsnap_core::oci::ModelFormat::Kit)) => {
            let cfg = reg.get_small_blob(&r.repository, &m.config).await?;
            Some(kitsnap_core::kitfile::Kitfile::from_config_json(&cfg)?)
        }
        _ => None,
    };
    if kf.as_ref().is_some_and(|k| k.model_parent().is_some()) {
        return Ok(None);
    }
    let want_kitfile = layers::wants(filters, FilterType::Kitfile);
    let plans: Vec<_> = layers::plan_layers(&m, kf.as_ref())?
        .into_iter()
        .filter(|l| layers::selected(filters, FilterType::for_kind(l.kind), &l.name, &l.path))
        .collect();
    if plans.is_empty() {
        return Ok(None);
    }
    std::fs::create_dir_all(dest).map_err(|source| CoreError::IoAt {
        path: dest.into(),
        source,
    })?;
    let labels = blob_labels(&m, kf.as_ref());
    let mp = progress::multi(progress);
    let bars: Vec<_> = plans
        .iter()
        .map(|l| progress::multi_bytes(&mp, l.desc.size, label(&labels, &l.desc)))
        .collect();
    let mut out = StreamedUnpack::default();
    // Several layers at once, each written as it arrives. The first failure stops the
    // others, and every extracting thread has ended before this returns (nothing writes
    // into `dest` behind the caller's cleanup).
    let stop = tokio_util::sync::CancellationToken::new();
    let first_error: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
    let done: Vec<Option<layers::LayerPlan>> = stream::iter(plans.into_iter().zip(bars))
        .map(|(l, bar)| {
            let (stop, first_error) = (&stop, &first_error);
            async move {
                let (tx, reader) = ChannelReader::hashed_pipe(LAYER_PIPE);
                let (plan, to) = (l.clone(), dest.to_path_buf());
                let extractor = tokio::task::spawn_blocking(move || {
                    kitsnap_core::extract::extract(
                        reader,
                        &plan,
                        &to,
                        kitsnap_core::extract::ExtractOptions::default(),
                    )
                });
                // The extracting thread checks the digest as it reads.
                let mut feed = PipeSink::new(tx);
                let fetched = tokio::select! {
                    r = reg.fetch_blob_into(&r.repository, &l.desc, &mut feed, &bar) => r,
                    _ = stop.cancelled() => Err(Error::Aborted("another layer failed".into())),
                };
                drop(feed);
                let extracted = extractor
                    .await
                    .map_err(|e| Error::Aborted(format!("unpacking a layer: {e}")));
                // The extractor's own error explains a download cut short by it.
                let res = extracted.and_then(|x| x.map_err(Error::from)).and(fetched);
                match res {
                    Ok(()) => {
                        bar.finish_with_message("unpacked");
                        Some(l)
                    }
                    Err(e) => {
                        if !stop.is_cancelled()
                            && let Ok(mut f) = first_error.lock()
                        {
                            f.get_or_insert(e);
                        }
                        stop.cancel();
                        None
                    }
                }
            }
        })
        .buffered(TransferOptions::default().concurrency)
        .collect()
        .await;
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    for l in done.into_iter().flatten() {
        out.bytes += l.desc.size;
        out.layers.push((l.kind, l.path.clone()));
    }
    if let (true, Some(kf)) = (want_kitfile, &kf) {
        let p = dest.join("Kitfile");
        std::fs::write(&p, kf.to_yaml()?).map_err(|source| CoreError::IoAt { path: p, source })?;
        out.kitfile_written = true;
    }
    out.elapsed = started.elapsed();
    Ok(Some(out))
}

/// The OCI empty descriptor's media type (a referrer's config).
const MEDIA_TYPE_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// The tag under which a registry without the referrers API lists the referrers of
/// `subject` (the distribution spec's fallback: `sha256-<hex>`).
fn referrers_tag(subject: &Digest) -> String {
    subject.as_str().replace(':', "-")
}

/// The referrers of `subject`: from the referrers API, or from the fallback tag.
pub async fn referrers(reg: &Registry, repo: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
    if let Some(list) = reg.referrers_api(repo, subject).await? {
        return Ok(list);
    }
    match reg.get_manifest(repo, &referrers_tag(subject)).await {
        Ok((body, _, _)) => Ok(serde_json::from_slice::<kitsnap_core::oci::Index>(&body)
            .map(|i| i.manifests)
            .unwrap_or_default()),
        Err(Error::Status { status: 404, .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Publishes `index` as a referrer of the ModelKit manifest `subject` in `repo` (the
/// empty config, the index blob, the referrer manifest, and the fallback tag where the
/// registry has no referrers API). Returns the referrer's digest.
pub async fn publish_lazy_index(
    reg: &Registry,
    repo: &str,
    subject: &Descriptor,
    index: &LazyIndex,
) -> Result<Digest> {
    let blob = serde_json::to_vec(index).map_err(|e| CoreError::Invalid(e.to_string()))?;
    let blob_desc = descriptor(lazy::ARTIFACT_TYPE, Digest::of(&blob), blob.len() as u64);
    reg.push_bytes(repo, &blob_desc.digest, &blob).await?;
    let empty = b"{}";
    let config = descriptor(MEDIA_TYPE_EMPTY, Digest::of(empty), empty.len() as u64);
    reg.push_bytes(repo, &config.digest, empty).await?;
    let mut subj = descriptor(MEDIA_TYPE_MANIFEST, subject.digest.clone(), subject.size);
    subj.media_type = subject.media_type.clone();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.to_string()),
        artifact_type: Some(lazy::ARTIFACT_TYPE.to_string()),
        config,
        layers: vec![blob_desc],
        subject: Some(subj),
        annotations: Default::default(),
    };
    let body = serde_json::to_vec(&m).map_err(|e| CoreError::Invalid(e.to_string()))?;
    let digest = Digest::of(&body);
    reg.put_manifest(repo, digest.as_str(), &body, MEDIA_TYPE_MANIFEST)
        .await?;
    if reg.referrers_api(repo, &subject.digest).await?.is_none() {
        // The fallback tag: an index of the subject's referrers, ours replacing older ones.
        let tag = referrers_tag(&subject.digest);
        let mut list = match reg.get_manifest(repo, &tag).await {
            Ok((b, _, _)) => {
                serde_json::from_slice::<kitsnap_core::oci::Index>(&b).unwrap_or_default()
            }
            Err(Error::Status { status: 404, .. }) => Default::default(),
            Err(e) => return Err(e),
        };
        list.manifests
            .retain(|d| d.artifact_type.as_deref() != Some(lazy::ARTIFACT_TYPE));
        let mut d = descriptor(MEDIA_TYPE_MANIFEST, digest.clone(), body.len() as u64);
        d.artifact_type = Some(lazy::ARTIFACT_TYPE.to_string());
        list.manifests.push(d);
        let b = serde_json::to_vec(&list).map_err(|e| CoreError::Invalid(e.to_string()))?;
        reg.put_manifest(repo, &tag, &b, MEDIA_TYPE_INDEX).await?;
    }
    Ok(digest)
}

/// The lazy index published for the ModelKit manifest `subject`, if any (the newest when
/// several are listed). An index that fails its own checks is an error, not None.
pub async fn find_lazy_index(
    reg: &Registry,
    repo: &str,
    subject: &Digest,
) -> Result<Option<LazyIndex>> {
    let Some(r) = referrers(reg, repo, subject)
        .await?
        .into_iter()
        .rfind(|d| d.artifact_type.as_deref() == Some(lazy::ARTIFACT_TYPE))
    else {
        return Ok(None);
    };
    let (body, _, _) = reg.get_manifest(repo, r.digest.as_str()).await?;
    let m: Manifest = serde_json::from_slice(&body).map_err(|e| CoreError::Json {
        what: format!("referrer {}", r.digest),
        source: e,
    })?;
    if m.subject.as_ref().map(|s| &s.digest) != Some(subject) {
        return Err(CoreError::Invalid(format!(
            "referrer {} does not name {subject} as its subject",
            r.digest
        ))
        .into());
    }
    let Some(blob) = m
        .layers
        .iter()
        .find(|l| l.media_type == lazy::ARTIFACT_TYPE)
    else {
        return Ok(None);
    };
    let bytes = reg.get_blob_limited(repo, blob, lazy::MAX_INDEX).await?;
    Ok(Some(LazyIndex::parse(&bytes)?))
}

/// The lazy index of the ModelKit `m`'s uncompressed tar layers, read from the store's
/// blobs; None when no layer qualifies. Blocking: reads every such layer once.
pub fn build_lazy_index(store: &Store, m: &Manifest) -> Result<Option<LazyIndex>> {
    let kf = store.kitfile(m).ok().flatten();
    let mut layers = Vec::new();
    for p in layers::plan_layers(m, kf.as_ref())? {
        if !lazy_eligible(&p) {
            continue;
        }
        let f = std::fs::File::open(store.blob_path(&p.desc.digest)).map_err(CoreError::Io)?;
        let r = std::io::BufReader::with_capacity(1 << 20, f);
        if let Some(l) = lazy::index_layer(r, &p.desc)? {
            layers.push(l);
        }
    }
    Ok((!layers.is_empty()).then_some(LazyIndex {
        schema_version: 1,
        layers,
    }))
}

/// Layers a node can serve lazily: uncompressed tar (kit's default), whose blob bytes are
/// the files' bytes.
pub fn lazy_eligible(p: &layers::LayerPlan) -> bool {
    !p.raw && p.compression == kitsnap_core::oci::Compression::None
}

fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        ..Descriptor::default()
    }
}
