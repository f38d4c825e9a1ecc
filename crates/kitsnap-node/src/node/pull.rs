//! `kitsnap pull --containerd`: a ModelKit into containerd, the way containerd's own
//! unpacker would put an image there, but for artifacts containerd cannot unpack.
//!
//! Under a lease: one snapshot per layer is prepared *through containerd* (snapshotter
//! `kitsnap`, chained in manifest order, named by the chain of layer digests), the layer is
//! streamed from the registry straight into the snapshot's directory and committed; then
//! the config (labelled `containerd.io/gc.ref.snapshot.kitsnap=<top>`) and the manifest
//! (labelled with its content references) go into the content store and the image record
//! is written last. Deleting the lease then leaves the image as the only thing keeping it
//! all: `ctr images rm` lets containerd's GC remove every snapshot, and a failed pull
//! deletes its lease synchronously so that nothing half-registered stays.
//!
//! Disk: an uncompressed layer's blob is exactly the tar of its snapshot, so it is not
//! stored a second time in the content store (the bytes go to the snapshot only). A
//! compressed blob is kept (teed into the content store while streaming), because it
//! cannot be rebuilt byte for byte from the files.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use kitsnap_core::digest::{Digest, HashingReader};
use kitsnap_core::extract::{self, ByteLimit};
use kitsnap_core::imageview::{self, ImageView, Kit};
use kitsnap_core::layers::{self, LayerPlan};
use kitsnap_core::lazy::LazyLayer;
use kitsnap_core::oci::{Compression, Descriptor, MEDIA_TYPE_INDEX, Manifest};
use kitsnap_core::reference::Reference;
use kitsnap_core::store::Store;
use kitsnap_registry::client::{BlobSink, ClientOptions, Registry};
use kitsnap_registry::transfer;

use crate::api::node as pb;
use crate::containerd::{self, Containerd, ContentWriter};
use crate::error::{Error, RegistryError, Result};
use crate::labels as label;
use crate::node::blocking;
use crate::node::locks::KeyedLocks;
use crate::snapshotter::Snapshotter;
use crate::snapshotter::compose::{KitLayer, KitRecord};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

/// Where a pull reports progress: a client's event stream, or nobody. Reporting never
/// holds the pull up for long: a slow reader loses byte counts, and without a reader
/// (a mount, a Docker volume) nothing is sent at all.
#[derive(Clone, Default)]
pub struct Events(Option<tokio::sync::mpsc::Sender<pb::PullEvent>>);

impl Events {
    pub fn to(tx: tokio::sync::mpsc::Sender<pb::PullEvent>) -> Events {
        Events(Some(tx))
    }

    /// Nobody listens (mounts and Docker volumes that pull on first use).
    pub fn none() -> Events {
        Events(None)
    }

    /// Lossy: for byte counts.
    fn offer(&self, ev: pb::PullEvent) {
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(ev);
        }
    }

    /// For state changes, which a reader should see; a reader that went away is ignored.
    async fn send(&self, ev: pb::PullEvent) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(ev).await;
        }
    }
}

/// Limits on what one pull may put on the node.
#[derive(Clone, Copy, Debug)]
pub struct PullLimits {
    /// Layers in one ModelKit.
    pub max_layers: usize,
    /// A compressed layer may unpack to at most this many times its size (plus 1 MiB).
    pub max_expansion: u64,
    /// Bytes all the layers of one ModelKit may unpack to.
    pub max_kit_bytes: u64,
    /// Layers one pull downloads and unpacks at once: a slow layer no longer holds up the
    /// next ones, and a 64-layer kit still opens no more than this many connections.
    pub concurrency: usize,
}

impl Default for PullLimits {
    fn default() -> Self {
        PullLimits {
            max_layers: 4096,
            max_expansion: 200,
            max_kit_bytes: 4 << 40,
            concurrency: 4,
        }
    }
}

/// What every pull of one daemon shares.
pub struct Puller {
    /// containerd's socket.
    pub containerd: PathBuf,
    pub snap: Arc<Snapshotter>,
    /// Each layer blob is downloaded and unpacked once on the node, whoever pulls it.
    pub layers: KeyedLocks,
    pub limits: PullLimits,
    /// Value of [`label::LEASE_OWNER`] on this daemon's pull leases: its state directory, so
    /// that a restarted daemon finds (and drops) the leases of pulls it was running.
    pub owner: String,
    /// This daemon process, in its lease ids (which process made a lease, for people).
    pub instance: String,
    /// Leases of the pulls running now. Any other lease with this daemon's owner label is
    /// stale: its pull died with an earlier process, or could not delete it because
    /// containerd was down; the reaper deletes those.
    pub active: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Diff IDs this daemon computed while unpacking, by blob digest: a pull that waited on
    /// a layer's lock finds it held by chain ID, in any namespace.
    pub diff_ids: std::sync::Mutex<HashMap<Digest, Digest>>,
    /// The daemon's `lazy` setting: pulls that ask for lazy layers get them.
    pub lazy: bool,
}

/// Keeps a lease id in [`Puller::active`] while its pull runs.
struct ActiveLease<'a>(&'a Puller, String);

impl Drop for ActiveLease<'_> {
    fn drop(&mut self) {
        let mut a = self.0.active.lock().unwrap_or_else(|p| p.into_inner());
        a.remove(&self.1);
    }
}

impl Puller {
    fn track(&self, id: &str) -> ActiveLease<'_> {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        a.insert(id.to_string());
        ActiveLease(self, id.to_string())
    }

    /// Whether `id` is the lease of a pull running in this process.
    pub fn is_active(&self, id: &str) -> bool {
        let a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        a.contains(id)
    }
}

/// Prefix of pull lease ids.
pub const LEASE_PREFIX: &str = "kitsnap-pull-";

/// How long a crashed pull's lease keeps its partial content before containerd's GC.
const LEASE_TTL: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct PullSpec {
    pub reference: Reference,
    pub namespace: String,
    /// A local store to take the ModelKit from, if it holds the reference.
    pub store: Option<PathBuf>,
    pub registry: ClientOptions,
    /// Every layer blob also into the content store (see `PullRequest.keep_blobs`).
    pub keep_blobs: bool,
    /// Layers with a lazy index are served as they arrive (see `PullRequest.lazy`).
    pub lazy: bool,
}

/// Where blobs come from.
#[derive(Clone)]
enum Source {
    Store(Arc<Store>),
    Registry(Arc<Registry>, String),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Source::Store(_) => "store",
            Source::Registry(..) => "registry",
        }
    }

    async fn small_blob(&self, d: &Descriptor) -> Result<Vec<u8>> {
        match self {
            Source::Store(s) => {
                let (s, d) = (s.clone(), d.clone());
                crate::node::blocking(move || Ok(s.read_blob(&d)?)).await
            }
            Source::Registry(reg, repo) => Ok(reg.get_small_blob(repo, d).await?),
        }
    }
}

async fn resolve(spec: &PullSpec) -> Result<(Source, Vec<u8>, Manifest, Descriptor)> {
    if let Some(dir) = spec.store.clone() {
        let reference = spec.reference.clone();
        // A client's store is only read, never created or changed (the daemon is root).
        let found = crate::node::blocking(move || {
            let store = Store::open_existing(dir)?;
            let Ok(desc) = store.resolve(&reference) else {
                return Ok(None);
            };
            let m = store.manifest(&desc)?;
            if m.model_format().is_none() {
                return Err(layers::not_a_modelkit(&m).into());
            }
            let bytes = store.read_blob(&desc)?;
            Ok(Some((store, bytes, m, desc)))
        })
        .await?;
        if let Some((store, bytes, m, desc)) = found {
            return Ok((Source::Store(Arc::new(store)), bytes, m, desc));
        }
    }
    transfer::check_remote(&spec.reference)?;
    // Credentials may come from a helper process: off the async workers.
    let (host, opts) = (spec.reference.registry.clone(), spec.registry.clone());
    let reg = crate::node::blocking(move || Ok(Registry::new(&host, opts)?)).await?;
    let (bytes, m, desc) = transfer::remote_manifest(&reg, &spec.reference).await?;
    Ok((
        Source::Registry(Arc::new(reg), spec.reference.repository.clone()),
        bytes,
        m,
        desc,
    ))
}

/// Per layer, its lazy index entry when the pull asked for lazy layers, the daemon allows
/// them, the kit comes from a registry that has its index, and the layer qualifies. A
/// lookup that fails only costs the laziness (logged).
async fn lazy_layers(
    p: &Puller,
    spec: &PullSpec,
    src: &Source,
    kit: &Kit,
    plans: &[LayerPlan],
) -> Vec<Option<LazyLayer>> {
    let none = vec![None; plans.len()];
    let Source::Registry(reg, repo) = src else {
        return none;
    };
    // Blobs kept for another snapshotter are downloaded anyway: nothing to gain.
    if !(p.lazy && spec.lazy) || spec.keep_blobs || !plans.iter().any(transfer::lazy_eligible) {
        return none;
    }
    let index = match transfer::find_lazy_index(reg, repo, &kit.desc.digest).await {
        Ok(Some(i)) => i,
        Ok(None) => return none,
        Err(e) => {
            tracing::warn!(reference = %spec.reference, error = %crate::error::chain(&e), "no lazy index (layers are pulled whole)");
            return none;
        }
    };
    plans
        .iter()
        .map(|l| {
            let e = index.layer(&l.desc.digest)?;
            (transfer::lazy_eligible(l) && e.size == l.desc.size).then(|| e.clone())
        })
        .collect()
}

pub(crate) fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}-{}", std::process::id(), t.as_nanos())
}

#[derive(Clone)]
pub(crate) struct Progress {
    events: Events,
    layer: pb::LayerProgress,
    last: Instant,
}

impl Progress {
    pub(crate) fn new(events: &Events, index: usize, l: &LayerPlan) -> Progress {
        Progress {
            events: events.clone(),
            layer: pb::LayerProgress {
                index: index as u32,
                digest: l.desc.digest.to_string(),
                kind: l.kind.user_str().into(),
                path: l.path.clone(),
                size: l.desc.size,
                done: 0,
                state: "fetching".into(),
            },
            last: Instant::now(),
        }
    }

    fn add(&mut self, n: u64) {
        self.layer.done += n;
        if self.last.elapsed() >= Duration::from_millis(100) {
            self.last = Instant::now();
            // Lossy on purpose: a slow client must not slow the pull.
            self.events.offer(self.event());
        }
    }

    fn event(&self) -> pb::PullEvent {
        pb::PullEvent {
            event: Some(pb::pull_event::Event::Layer(self.layer.clone())),
        }
    }

    async fn state(&mut self, state: &str) {
        self.layer.state = state.into();
        if state != "fetching" {
            self.layer.done = self.layer.size;
        }
        self.events.send(self.event()).await;
    }
}

/// One layer to unpack ahead of its turn (see [`Leased::stage_ahead`]).
struct Stage {
    ctr: Containerd,
    src: Source,
    l: LayerPlan,
    /// The staging area.
    root: PathBuf,
    progress: Progress,
    /// What is left of the kit's byte budget.
    budget: Arc<AtomicU64>,
    expansion: u64,
    keep_all: bool,
    cancel: CancellationToken,
    tx: oneshot::Sender<Result<Staged>>,
}

impl Stage {
    async fn run(self, permit: tokio::sync::OwnedSemaphorePermit) {
        let Stage {
            ctr,
            src,
            l,
            root,
            progress,
            budget,
            expansion,
            keep_all,
            cancel,
            tx,
        } = self;
        let work = async {
            let dir = StageDir(root.join(format!("{}-{}", nonce(), l.desc.digest.hex())));
            let tree = dir.0.join("fs");
            let t = tree.clone();
            blocking(move || Ok(std::fs::create_dir_all(&t)?)).await?;
            let max_bytes = layer_budget(&l, budget.load(Ordering::Relaxed), expansion);
            let fill = fill_layer(&ctr, &src, &l, tree, progress, max_bytes, keep_all, &cancel);
            let (written, diff) = tokio::select! {
                r = fill => r?,
                e = containerd_gone(&ctr, "kitsnap-staging") => return Err(e),
                _ = cancel.cancelled() => return Err(Error::Aborted(
                    "pull cancelled (the client went away, kitsnap serve is stopping, or another layer failed)".into()
                )),
            };
            spend(&budget, written, &l)?;
            Ok(Staged { dir, diff })
        };
        let r = work.await;
        drop(permit);
        // Nobody waits any more (the pull failed): the staged tree is deleted on drop.
        let _ = tx.send(r);
    }
}

/// A layer unpacked in the staging area, waiting for its snapshot.
struct Staged {
    dir: StageDir,
    diff: Digest,
}

impl Staged {
    fn tree(&self) -> PathBuf {
        self.dir.0.join("fs")
    }
}

/// A directory of the staging area, deleted (off the async workers) when dropped.
struct StageDir(PathBuf);

impl Drop for StageDir {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.0);
        let rm = move || {
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %dir.display(), error = %e, "removing a staged layer");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(rm)),
            Err(_) => rm(),
        }
    }
}

/// Puts a staged tree in place of a new snapshot's empty directory: one rename on the same
/// filesystem, keeping the directory's mode as the snapshotter made it.
fn adopt(tree: &Path, dir: &Path) -> std::io::Result<()> {
    let perm = std::fs::metadata(dir)?.permissions();
    std::fs::rename(tree, dir)?;
    std::fs::set_permissions(dir, perm)
}

/// Takes `written` bytes from what the kit may still unpack to.
fn spend(budget: &AtomicU64, written: u64, l: &LayerPlan) -> Result<()> {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(written)
        })
        .map(|_| ())
        .map_err(|_| {
            Error::invalid(format!(
                "layer {}: the ModelKit unpacks to more than this node allows per kit (max_kit_gib)",
                l.desc.digest
            ))
        })
}

/// Download side: feeds the extractor (which verifies the digest) and, for a blob kept in
/// the content store, containerd.
struct ExtractSink {
    tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
    content: Option<ContentWriter>,
    progress: Progress,
    started: bool,
    /// The extracting thread stopped taking bytes: its own error is the one to report.
    extractor_gone: bool,
}

impl BlobSink for ExtractSink {
    async fn reset(&mut self) -> kitsnap_registry::Result<()> {
        if self.started {
            return Err(RegistryError::Aborted(format!(
                "layer {}: the registry restarted the download from byte 0, and a layer being unpacked cannot start over; retry the pull",
                self.progress.layer.digest
            )));
        }
        Ok(())
    }

    async fn write(&mut self, data: Bytes) -> kitsnap_registry::Result<()> {
        self.started = true;
        self.progress.add(data.len() as u64);
        if let Some(c) = self.content.as_mut() {
            c.send(data.clone())
                .await
                .map_err(|e| RegistryError::Sink(Box::new(e)))?;
        }
        let sent = match &self.tx {
            Some(tx) => tx.send(data).await.is_ok(),
            None => false,
        };
        if !sent {
            self.extractor_gone = true;
            return Err(RegistryError::Aborted("extraction stopped".into()));
        }
        Ok(())
    }

    async fn finish(&mut self) -> kitsnap_registry::Result<()> {
        self.tx = None;
        Ok(())
    }

    fn verifies(&self) -> bool {
        true
    }
}

/// A reader that reports progress and stops when the pull is cancelled (store source:
/// the extracting thread cannot be dropped like the download task).
struct CountingReader<R> {
    inner: R,
    progress: Progress,
    cancel: CancellationToken,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other("pull cancelled"));
        }
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

/// How many bytes layer `l` may unpack to: what is left of the ModelKit's budget, and for
/// a compressed layer no more than `expansion` times its size (decompression bombs); the
/// error names whichever setting binds.
pub(crate) fn layer_budget(l: &LayerPlan, kit_left: u64, expansion: u64) -> ByteLimit {
    let kit = ByteLimit {
        bytes: kit_left,
        why: "more than this node allows per kit (max_kit_gib)",
    };
    let bomb = l
        .desc
        .size
        .saturating_mul(expansion)
        .saturating_add(1 << 20);
    if l.compression == Compression::None || kit_left <= bomb {
        kit
    } else {
        ByteLimit {
            bytes: bomb,
            why: "a decompression bomb (max_expansion)",
        }
    }
}

/// Resolves (with the error to report) once containerd stops answering, so that a pull
/// stops at once rather than downloading the rest of a layer it cannot commit.
async fn containerd_gone(ctr: &Containerd, key: &str) -> Error {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match ctr.stat(key).await {
            Err(e @ crate::containerd::CtrError::Connect { .. }) => return e.into(),
            Err(e) if e.code() == Some(tonic::Code::Unavailable) => return e.into(),
            _ => {}
        }
    }
}

/// Streams one layer into `dir` (and a compressed blob, or with `keep_all` any blob, into
/// the content store); returns the bytes unpacked and the layer's diff ID (computed from
/// the bytes unpacked).
#[allow(clippy::too_many_arguments)]
async fn fill_layer(
    ctr: &Containerd,
    src: &Source,
    l: &LayerPlan,
    dir: PathBuf,
    mut progress: Progress,
    max_bytes: ByteLimit,
    keep_all: bool,
    cancel: &CancellationToken,
) -> Result<(u64, Digest)> {
    let opts = extract::ExtractOptions {
        overwrite: false,
        skip_existing: false,
        max_bytes: Some(max_bytes),
    };
    let (written, diff);
    let keep_blob = (keep_all || l.compression != Compression::None)
        && ctr.content_info(l.desc.digest.as_str()).await?.is_none();
    match src {
        Source::Registry(reg, repo) => {
            let content = if keep_blob {
                ctr.write_stream(l.desc.digest.as_str(), l.desc.size as i64)
                    .await?
            } else {
                None
            };
            (written, diff) = stream_layer(reg, repo, l, dir, opts, progress, content).await?;
        }
        Source::Store(store) => {
            let file = store.open_blob(&l.desc.digest)?;
            let plan = l.clone();
            let p2 = progress.clone();
            let cancel = cancel.clone();
            (written, diff) = tokio::task::spawn_blocking(move || {
                let r = HashingReader::new(CountingReader {
                    inner: std::io::BufReader::with_capacity(1 << 20, file),
                    progress: p2,
                    cancel,
                });
                extract::extract_with_diff_id(r, &plan, &dir, opts)
            })
            .await
            .map_err(|e| Error::Internal(format!("extraction task: {e}")))??;
            if keep_blob {
                copy_to_content(ctr, store, &l.desc, &diff).await?;
            }
            progress.state("unpacked").await;
        }
    }
    Ok((written, diff))
}

/// A blob into the content store alone (a layer the node already holds, pulled with
/// `keep_blobs`): containerd checks the digest when the write is committed.
async fn blob_to_content(
    ctr: &Containerd,
    src: &Source,
    d: &Descriptor,
    diff: &Digest,
) -> Result<()> {
    let (reg, repo) = match src {
        Source::Store(store) => return copy_to_content(ctr, store, d, diff).await,
        Source::Registry(reg, repo) => (reg, repo),
    };
    let Some(w) = ctr.write_stream(d.digest.as_str(), d.size as i64).await? else {
        return Ok(()); // containerd has it already
    };
    let mut sink = ContentSink {
        writer: Some(w),
        started: false,
    };
    reg.fetch_blob_into(repo, d, &mut sink, &indicatif::ProgressBar::hidden())
        .await?;
    if let Some(w) = sink.writer.take() {
        w.commit(HashMap::from([(
            label::UNCOMPRESSED.to_string(),
            diff.to_string(),
        )]))
        .await?;
    }
    Ok(())
}

/// Download side of [`blob_to_content`].
struct ContentSink {
    writer: Option<ContentWriter>,
    started: bool,
}

impl BlobSink for ContentSink {
    async fn reset(&mut self) -> kitsnap_registry::Result<()> {
        if self.started {
            return Err(RegistryError::Aborted(
                "the registry restarted a download from byte 0 that containerd's content store cannot take back; retry the pull".into(),
            ));
        }
        Ok(())
    }

    async fn write(&mut self, data: Bytes) -> kitsnap_registry::Result<()> {
        self.started = true;
        match self.writer.as_mut() {
            Some(w) => w
                .send(data)
                .await
                .map_err(|e| RegistryError::Sink(Box::new(e))),
            None => Err(RegistryError::Aborted("content write closed".into())),
        }
    }

    fn verifies(&self) -> bool {
        true
    }
}

/// Streams layer `l` from the registry into `dir`, extracting on a blocking thread while it
/// downloads (and into `content`, committed once the diff ID is known); returns the bytes
/// unpacked and the diff ID.
pub(crate) async fn stream_layer(
    reg: &Registry,
    repo: &str,
    l: &LayerPlan,
    dir: PathBuf,
    opts: extract::ExtractOptions,
    progress: Progress,
    content: Option<ContentWriter>,
) -> Result<(u64, Digest)> {
    // Bounded whatever the layer size: four 1 MiB pieces queued for the extractor, and up
    // to three more taken by its hasher.
    let (tx, reader) = transfer::ChannelReader::hashed_pipe(4);
    let plan = l.clone();
    let worker = tokio::task::spawn_blocking(move || {
        extract::extract_with_diff_id(reader, &plan, &dir, opts)
    });
    let mut sink = ExtractSink {
        tx: Some(tx),
        content,
        progress,
        started: false,
        extractor_gone: false,
    };
    let fetched = reg
        .fetch_blob_into(repo, &l.desc, &mut sink, &indicatif::ProgressBar::hidden())
        .await;
    sink.tx = None;
    let extracted = worker
        .await
        .map_err(|e| Error::Internal(format!("extraction task: {e}")))?;
    let (written, diff) = match (fetched, extracted) {
        (Ok(()), Ok(r)) => r,
        // The extractor's error says what was wrong with the bytes.
        (Ok(()), Err(e)) => return Err(e.into()),
        (Err(_), Err(e)) if sink.extractor_gone => return Err(e.into()),
        (Err(e), _) => return Err(e.into()),
    };
    if let Some(c) = sink.content.take() {
        c.commit(HashMap::from([(
            label::UNCOMPRESSED.to_string(),
            diff.to_string(),
        )]))
        .await?;
    }
    sink.progress.state("unpacked").await;
    Ok((written, diff))
}

async fn copy_to_content(
    ctr: &Containerd,
    store: &Store,
    d: &Descriptor,
    diff: &Digest,
) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::from_std(store.open_blob(&d.digest)?);
    let Some(mut w) = ctr.write_stream(d.digest.as_str(), d.size as i64).await? else {
        return Ok(()); // containerd has it already
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.send(Bytes::copy_from_slice(&buf[..n])).await?;
    }
    w.commit(HashMap::from([(
        label::UNCOMPRESSED.to_string(),
        diff.to_string(),
    )]))
    .await?;
    Ok(())
}

/// Pulls `spec` into containerd; see the module docs.
pub async fn pull(
    p: &Puller,
    spec: &PullSpec,
    events: &Events,
    cancel: &CancellationToken,
) -> Result<pb::PullResult> {
    let (src, mbytes, manifest, mdesc) = resolve(spec).await?;
    let config = src.small_blob(&manifest.config).await?;
    let kit = Kit::new(mdesc.clone(), manifest, config)?;
    let plans = kit.plans()?;
    if plans.is_empty() {
        return Err(Error::invalid(format!(
            "{} has no layers to mount",
            spec.reference
        )));
    }
    if plans.len() > p.limits.max_layers {
        return Err(Error::invalid(format!(
            "{} has {} layers; this node takes at most {} per ModelKit (max_layers)",
            spec.reference,
            plans.len(),
            p.limits.max_layers
        )));
    }
    // Diff IDs known before reading a byte: the kit's own (uncompressed layers, a ModelPack
    // config's), else what an earlier pull on this node computed for the same blob, else
    // containerd's label on the blob. The rest are computed while unpacking.
    let s = p.snap.clone();
    let earlier = tokio::task::spawn_blocking(move || s.kits())
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(|e| Error::Internal(e.to_string()))?;
    let ctr0 = Containerd::connect(&p.containerd, &spec.namespace).await?;
    let mut known: Vec<Option<Digest>> = Vec::with_capacity(plans.len());
    for l in &plans {
        let mut d = kit.known_diff_id(l).or_else(|| {
            earlier
                .iter()
                .flat_map(|k| &k.layers)
                .find(|e| e.digest == l.desc.digest.as_str() && !e.diff_id.is_empty())
                .and_then(|e| e.diff_id.parse().ok())
        });
        if d.is_none() {
            // containerd's own unpacker labels a compressed blob with its diff ID.
            d = ctr0
                .content_info(l.desc.digest.as_str())
                .await?
                .and_then(|i| i.labels.get(label::UNCOMPRESSED)?.parse().ok());
        }
        known.push(d);
    }
    let lazy = lazy_layers(p, spec, &src, &kit, &plans).await;

    let id = format!("{LEASE_PREFIX}{}-{}", p.instance, nonce());
    // Tracked before it exists, so the reaper never takes a lease being made.
    let _active = p.track(&id);
    let owner = HashMap::from([(label::LEASE_OWNER.to_string(), p.owner.clone())]);
    let ctr = ctr0.with_new_lease(&id, LEASE_TTL, owner).await?;
    let leased = Leased {
        ctr: &ctr,
        src: &src,
        spec,
        kit: &kit,
        plans: &plans,
        known: &known,
        puller: p,
        events,
        cancel,
        lazy: &lazy,
    };
    // Cancelled (the client went away, the daemon stops): the lease is deleted below,
    // synchronously, so nothing of this pull stays.
    // Cancellation first: the staging tasks stop with it too, and their error must not
    // be the one reported.
    let res = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Aborted(format!(
            "pull of {} cancelled (the client went away or kitsnap serve is stopping)",
            spec.reference
        ))),
        r = leased.run(&mbytes) => r,
    };
    match res {
        Ok((mut r, layers, view)) => {
            ctr.delete_lease(false).await?;
            let record = KitRecord {
                namespace: spec.namespace.clone(),
                reference: spec.reference.to_string(),
                manifest_digest: mdesc.digest.to_string(),
                layers,
                pulled: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
                view,
            };
            let s = p.snap.clone();
            tokio::task::spawn_blocking(move || s.put_kit(&record))
                .await
                .map_err(|e| Error::Internal(e.to_string()))?
                .map_err(|e| Error::Internal(e.to_string()))?;
            r.source = src.name().into();
            Ok(r)
        }
        Err(e) => {
            // Synchronous: when the error reaches the user, containerd's GC has already
            // removed what this pull alone held.
            if let Err(le) = ctr.delete_lease(true).await {
                tracing::warn!(error = %le, "deleting the lease of a failed pull");
            }
            Err(e)
        }
    }
}

/// A pull under its lease.
struct Leased<'a> {
    ctr: &'a Containerd,
    src: &'a Source,
    spec: &'a PullSpec,
    kit: &'a Kit,
    plans: &'a [LayerPlan],
    /// Diff IDs known in advance (see [`pull`]).
    known: &'a [Option<Digest>],
    puller: &'a Puller,
    events: &'a Events,
    cancel: &'a CancellationToken,
    /// Per layer: its entry in the ModelKit's lazy index, when it is served lazily.
    lazy: &'a [Option<LazyLayer>],
}

impl Leased<'_> {
    /// Unpacks the layers as snapshots named by the image view's chain IDs, then registers
    /// the view (and the kit it views) under the reference.
    async fn run(&self, mbytes: &[u8]) -> Result<(pb::PullResult, Vec<KitLayer>, Vec<String>)> {
        let Leased {
            ctr,
            spec,
            kit,
            plans,
            puller,
            ..
        } = *self;
        let mdesc = &kit.desc;
        let budget = Arc::new(AtomicU64::new(puller.limits.max_kit_bytes));
        let mut result = pb::PullResult {
            image: spec.reference.to_string(),
            manifest_digest: mdesc.digest.to_string(),
            ..Default::default()
        };
        let mut kept: Vec<bool> = Vec::with_capacity(plans.len());
        let mut diffs: Vec<Digest> = Vec::with_capacity(plans.len());
        let mut chain: Vec<Digest> = Vec::with_capacity(plans.len());
        // Every layer blob of the kit is locked for the whole unpack, in digest order (two
        // pulls then never wait on each other): one download and unpack per blob on the
        // node; a concurrent pull of a layer waits, then finds it held.
        let mut keys: Vec<&str> = plans.iter().map(|l| l.desc.digest.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut locks = Vec::with_capacity(keys.len());
        for k in keys {
            locks.push(puller.layers.lock(k).await);
        }
        // Layers are unpacked ahead, several at once, while they are committed in order.
        let cancel = self.cancel.child_token();
        let _stop = cancel.clone().drop_guard();
        let mut staged = self.stage_ahead(budget.clone(), cancel).await?;
        for (i, l) in plans.iter().enumerate() {
            let ahead = match staged[i].take() {
                Some(rx) => Some(rx.await.map_err(|_| {
                    Error::Internal(format!("layer {}: staging task ended", l.desc.digest))
                })??),
                None => None,
            };
            let (diff, name, unpacked) = self.layer(i, chain.last(), ahead, &budget).await?;
            if spec.keep_blobs && !unpacked {
                blob_to_content(ctr, self.src, &l.desc, &diff).await?;
            }
            kept.push(ctr.content_info(l.desc.digest.as_str()).await?.is_some());
            if unpacked && self.lazy[i].is_some() {
                result.layers_unpacked += 1;
                result.layers_lazy += 1;
            } else if unpacked {
                result.layers_unpacked += 1;
                result.bytes_fetched += l.desc.size;
            } else {
                result.layers_reused += 1;
            }
            diffs.push(diff);
            chain.push(name);
        }
        drop(locks);
        let view = imageview::synthesize(kit, plans, &diffs, "")?;
        result.top_snapshot = chain.last().map(|c| c.to_string()).unwrap_or_default();
        result.view_digest = view.index.desc.digest.to_string();
        self.register(mbytes, &view, &kept, &result.top_snapshot)
            .await?;
        let layers = plans
            .iter()
            .zip(chain.iter().zip(&diffs))
            .map(|(l, (c, d))| KitLayer {
                digest: l.desc.digest.to_string(),
                media_type: l.desc.media_type.clone(),
                kind: l.kind.user_str().into(),
                name: l.name.clone(),
                path: l.path.clone(),
                size: l.desc.size,
                chain: c.to_string(),
                diff_id: d.to_string(),
            })
            .collect();
        let docs = view.docs().map(|d| d.desc.digest.to_string()).collect();
        Ok((result, layers, docs))
    }

    /// Starts unpacking into the staging area, in manifest order and at most
    /// `concurrency` at a time, every layer the node does not hold already (as far as its
    /// chain ID is known in advance); each result comes back on its own channel. The
    /// others are left to [`Leased::layer`]: reused, or unpacked there.
    async fn stage_ahead(
        &self,
        budget: Arc<AtomicU64>,
        cancel: CancellationToken,
    ) -> Result<Vec<Option<oneshot::Receiver<Result<Staged>>>>> {
        let Leased {
            ctr,
            src,
            spec,
            plans,
            known,
            puller,
            events,
            ..
        } = *self;
        let mut targets = Vec::with_capacity(plans.len());
        let mut prev: Option<Digest> = None;
        for (i, l) in plans.iter().enumerate() {
            let d = known[i].clone().or_else(|| {
                let m = puller.diff_ids.lock().ok()?;
                m.get(&l.desc.digest).cloned()
            });
            // A chain ID needs every diff ID below it.
            let t = match (i == 0 || prev.is_some(), d) {
                (true, Some(d)) => Some(imageview::chain_id(prev.as_ref(), &d)),
                _ => None,
            };
            prev = t.clone();
            targets.push(t);
        }
        let snap = puller.snap.clone();
        let held = blocking(move || {
            targets
                .iter()
                .map(|t| match t {
                    Some(t) => Ok(snap.holds_anywhere(t.as_str())?),
                    None => Ok(false),
                })
                .collect::<Result<Vec<bool>>>()
        })
        .await?;
        let mut rxs = Vec::with_capacity(plans.len());
        let mut jobs = Vec::new();
        for (i, l) in plans.iter().enumerate() {
            // A lazy layer is not downloaded before it is committed.
            if held[i] || self.lazy[i].is_some() {
                rxs.push(None);
                continue;
            }
            let (tx, rx) = oneshot::channel();
            rxs.push(Some(rx));
            jobs.push(Stage {
                ctr: ctr.clone(),
                src: src.clone(),
                l: l.clone(),
                root: puller.snap.staging_dir(),
                progress: Progress::new(events, i, l),
                budget: budget.clone(),
                expansion: puller.limits.max_expansion,
                keep_all: spec.keep_blobs,
                cancel: cancel.clone(),
                tx,
            });
        }
        let sem = Arc::new(Semaphore::new(puller.limits.concurrency.max(1)));
        // Starts the layers in order as permits free up. It and what it started stop with
        // `cancel`: the pull failed, was cancelled, or is done.
        tokio::spawn(async move {
            for job in jobs {
                let permit = tokio::select! {
                    p = sem.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = cancel.cancelled() => return,
                };
                tokio::spawn(job.run(permit));
            }
        });
        Ok(rxs)
    }

    /// Layer `i` as a committed snapshot on top of `parent`: reused when the node holds it,
    /// else moved in from `staged` or unpacked here. Returns its diff ID, its chain ID, and whether it was unpacked here.
    async fn layer(
        &self,
        i: usize,
        parent: Option<&Digest>,
        staged: Option<Staged>,
        budget: &AtomicU64,
    ) -> Result<(Digest, Digest, bool)> {
        let Leased {
            ctr,
            src,
            plans,
            known,
            puller,
            events,
            cancel,
            ..
        } = *self;
        let l = &plans[i];
        let progress = Progress::new(events, i, l);
        let parent_name = parent.map(|p| p.to_string()).unwrap_or_default();
        let known_i = known[i].clone().or_else(|| {
            let m = puller.diff_ids.lock().ok()?;
            m.get(&l.desc.digest).cloned()
        });
        let target = known_i.as_ref().map(|d| imageview::chain_id(parent, d));
        let mut labels =
            HashMap::from([(label::LAYER_DIGEST.to_string(), l.desc.digest.to_string())]);
        if let Some(t) = &target {
            labels.insert(label::TARGET_REF.to_string(), t.to_string());
        }
        let key = format!("{}{}-{}", label::PULL_EXTRACT_KEY, nonce(), l.desc.digest);
        // Held already (this namespace, or the node via the remote-snapshot protocol): no
        // download, no unpack. Only possible when the chain ID is known in advance.
        let mounts = match ctr.prepare(&key, &parent_name, labels.clone()).await {
            Err(e) if e.is_already_exists() => {
                let mut progress = progress;
                progress.state("reused").await;
                if let (Some(d), Some(t)) = (known_i.clone(), target) {
                    return Ok((d, t, false));
                }
                return Err(Error::Internal(format!(
                    "layer {}: snapshot exists without a known chain ID",
                    l.desc.digest
                )));
            }
            r => r?,
        };
        let filled = async {
            let dir = crate::mount::writable_dir(&mounts).ok_or_else(|| {
                Error::Internal(format!(
                    "unexpected mounts from the kitsnap snapshotter: {mounts:?}"
                ))
            })?;
            if let (Some(ll), Source::Registry(reg, repo)) = (&self.lazy[i], src) {
                // The blob lands on the node whole in the end, as a tar of `ll.size` bytes.
                spend(budget, ll.size, l)?;
                return self
                    .lazy_layer(i, parent, &key, labels.clone(), &dir, ll, reg, repo)
                    .await;
            }
            let diff = match staged {
                // Unpacked ahead: its tree becomes the snapshot's (a rename, no copy).
                Some(st) => {
                    let tree = st.tree();
                    blocking(move || Ok(adopt(&tree, &dir)?)).await?;
                    st.diff.clone()
                }
                None => {
                    let max_bytes = layer_budget(
                        l,
                        budget.load(Ordering::Relaxed),
                        puller.limits.max_expansion,
                    );
                    let keep_all = self.spec.keep_blobs;
                    let fill = fill_layer(ctr, src, l, dir, progress, max_bytes, keep_all, cancel);
                    let (written, diff) = tokio::select! {
                        r = fill => r?,
                        e = containerd_gone(ctr, &key) => return Err(e),
                    };
                    spend(budget, written, l)?;
                    diff
                }
            };
            if let Ok(mut m) = puller.diff_ids.lock() {
                m.insert(l.desc.digest.clone(), diff.clone());
            }
            if let Some(k) = &known_i
                && *k != diff
            {
                return Err(Error::invalid(format!(
                    "layer {}: its uncompressed content has digest {diff}, but the kit declares the diff ID {k}; the ModelKit's config is wrong",
                    l.desc.digest
                )));
            }
            let name = imageview::chain_id(parent, &diff);
            labels.insert(label::TARGET_REF.to_string(), name.to_string());
            match ctr.commit(name.as_str(), &key, labels.clone()).await {
                Ok(()) => Ok((diff, name, true)),
                Err(e) if e.is_already_exists() => {
                    // A concurrent pull committed the same layer first.
                    let _ = ctr.remove(&key).await;
                    Ok((diff, name, false))
                }
                Err(e) => Err(e.into()),
            }
        }
        .await;
        if filled.is_err() {
            let _ = ctr.remove(&key).await;
        }
        filled
    }

    /// Commits layer `i`'s prepared snapshot (`key`, its directory `dir`) at once, served
    /// through FUSE while it fills from the registry (see `crate::lazy`). An uncompressed
    /// layer's diff ID is its digest, so its chain ID is known before any byte arrives.
    #[allow(clippy::too_many_arguments)]
    async fn lazy_layer(
        &self,
        i: usize,
        parent: Option<&Digest>,
        key: &str,
        mut labels: HashMap<String, String>,
        dir: &Path,
        layer: &LazyLayer,
        reg: &Arc<Registry>,
        repo: &str,
    ) -> Result<(Digest, Digest, bool)> {
        let (ctr, l) = (self.ctr, &self.plans[i]);
        let snapdir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let id: u64 = snapdir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "lazy layer: unexpected snapshot directory {}",
                    dir.display()
                ))
            })?;
        let meta = crate::lazy::Meta {
            registry: self.spec.reference.registry.clone(),
            repository: repo.to_string(),
            media_type: l.desc.media_type.clone(),
            layer: layer.clone(),
            plain_http: self.spec.registry.plain_http,
            tls_verify_off: !self.spec.registry.tls_verify,
            ca_files: self.spec.registry.ca_files.clone(),
            hosts_dir: self.spec.registry.hosts_dir.clone(),
        };
        let (sd, m) = (snapdir.clone(), meta);
        blocking(move || crate::lazy::Mounts::prepare(&sd, &m)).await?;
        let diff = l.desc.digest.clone();
        let name = imageview::chain_id(parent, &diff);
        labels.insert(label::TARGET_REF.to_string(), name.to_string());
        labels.insert(label::LAZY.to_string(), "true".to_string());
        match ctr.commit(name.as_str(), key, labels).await {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {
                let _ = ctr.remove(key).await;
                return Ok((diff, name, false));
            }
            Err(e) => return Err(e.into()),
        }
        let (snap, reg, rt) = (
            self.puller.snap.clone(),
            reg.clone(),
            tokio::runtime::Handle::current(),
        );
        let mounted = blocking(move || snap.lazy().mount(id, &snapdir, reg, &rt)).await;
        if let Err(e) = mounted {
            let _ = ctr.remove(name.as_str()).await;
            return Err(e);
        }
        if let Ok(mut m) = self.puller.diff_ids.lock() {
            m.insert(l.desc.digest.clone(), diff.clone());
        }
        Progress::new(self.events, i, l).state("lazy").await;
        Ok((diff, name, true))
    }

    /// Writes the kit (config, manifest) and its image view (config, manifest, index) into
    /// the content store, children first, with the labels that make containerd's GC keep
    /// all of it (and the snapshots) exactly as long as the image; then the image record,
    /// which names the view.
    async fn register(
        &self,
        mbytes: &[u8],
        view: &ImageView,
        kept: &[bool],
        top: &str,
    ) -> Result<()> {
        let Leased {
            ctr,
            src,
            spec,
            kit,
            plans,
            puller,
            ..
        } = *self;
        let mut source = HashMap::new();
        if let Source::Registry(_, repo) = src {
            // Lets a peer-to-peer mirror (Spegel) serve these blobs to other nodes. The key
            // names the host without its port, as containerd's own pulls write it.
            source.insert(
                label::distribution_source(&spec.reference.registry),
                repo.clone(),
            );
        }
        let with_source = |mut m: HashMap<String, String>| {
            m.extend(source.clone());
            m
        };
        let mut layer_refs = HashMap::new();
        for (i, (l, k)) in plans.iter().zip(kept).enumerate() {
            if *k {
                layer_refs.insert(
                    format!("{}.{i}", label::GC_CONTENT_LAYER),
                    l.desc.digest.to_string(),
                );
                if !source.is_empty() {
                    ctr.content_label(l.desc.digest.as_str(), source.clone())
                        .await?;
                }
            }
        }
        let mut docs: Vec<(&Descriptor, Vec<u8>, HashMap<String, String>)> = Vec::new();
        docs.push((
            &kit.manifest.config,
            kit.config.clone(),
            with_source(HashMap::new()),
        ));
        let mut mlabels = layer_refs.clone();
        mlabels.insert(
            label::GC_CONTENT_CONFIG.to_string(),
            kit.manifest.config.digest.to_string(),
        );
        docs.push((&kit.desc, mbytes.to_vec(), with_source(mlabels)));
        // Every platform's image: the configs all name the same top snapshot (same diff
        // IDs), as containerd's unpacker would label the one it unpacked.
        let mut index_refs = HashMap::new();
        for (i, img) in view.images.iter().enumerate() {
            docs.push((
                &img.config.desc,
                img.config.bytes.clone(),
                with_source(HashMap::from([(
                    format!("{}.{}", label::GC_SNAPSHOT, containerd::SNAPSHOTTER),
                    top.to_string(),
                )])),
            ));
            let mut vlabels = layer_refs.clone();
            vlabels.insert(
                label::GC_CONTENT_CONFIG.to_string(),
                img.config.desc.digest.to_string(),
            );
            vlabels.insert(
                label::GC_CONTENT_SUBJECT.to_string(),
                kit.desc.digest.to_string(),
            );
            docs.push((
                &img.manifest.desc,
                img.manifest.bytes.clone(),
                with_source(vlabels),
            ));
            index_refs.insert(
                format!("{}.{i}", label::GC_CONTENT_MANIFEST),
                img.manifest.desc.digest.to_string(),
            );
        }
        docs.push((
            &view.index.desc,
            view.index.bytes.clone(),
            with_source(index_refs),
        ));
        for (d, bytes, labels) in docs {
            // One writer per blob on the node (8 pulls of one kit would otherwise race on
            // containerd's ingest of the same blob).
            let _lock = puller.layers.lock(d.digest.as_str()).await;
            ctr.write_blob(d.digest.as_str(), bytes, labels).await?;
        }
        ctr.image_put(crate::api::containerd::images::Image {
            name: spec.reference.to_string(),
            labels: HashMap::from([(label::IMAGE_KIND.to_string(), "true".to_string())]),
            target: Some(crate::api::types::Descriptor {
                media_type: MEDIA_TYPE_INDEX.into(),
                digest: view.index.desc.digest.to_string(),
                size: view.index.desc.size as i64,
                annotations: HashMap::new(),
            }),
            ..Default::default()
        })
        .await?;
        Ok(())
    }
}
