//! Layers kitsnap fills itself when containerd asks for them (the remote-snapshot protocol,
//! as stargz and nydus use it).
//!
//! containerd's unpacker prepares each layer of an image view with
//! `containerd.io/snapshot.ref=<chain ID>` and, inherited from the view's layer annotations,
//! `containerd.io/snapshot/kitsnap.layer=<the kit's blob digest>`. When the node mirror has
//! just served that view, kitsnap knows where the blob lives: it streams it from the
//! registry straight into a snapshot of its own (one write, as `kitsnap pull --containerd`
//! does), checks that the unpacked bytes hash to the chain ID asked for, commits the
//! snapshot with that target label on the same parent, and answers ALREADY_EXISTS.
//! containerd then adopts the snapshot and never downloads the blob into its content store.
//!
//! Anything else (no source known, a fetch that fails, bytes that do not hash to the chain
//! ID) falls back to containerd's own unpack: the fill makes pulls faster, never a new way
//! for them to fail. It uses the node's own registry settings and credentials, like
//! `kitsnap pull --containerd`; a registry the node cannot read is left to containerd, which
//! pulls with the client's credentials through the mirror.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kitsnap_core::digest::Digest;
use kitsnap_core::extract;
use kitsnap_core::imageview;
use kitsnap_core::layers::LayerPlan;
use kitsnap_core::lazy::LazyIndex;
use kitsnap_registry::client::{ClientOptions, Registry};
use kitsnap_registry::transfer;

use crate::error::{Error, Result};
use crate::labels as label;
use crate::node::blocking;
use crate::node::locks::KeyedLocks;
use crate::node::pull::{self, Events, Progress, PullLimits};
use crate::snapshotter::{Kind, Snapshotter};

/// How many layer sources are remembered; past that the oldest half is forgotten (a pull
/// prepares its layers right after fetching the view, so only recent ones matter).
const MAX_SOURCES: usize = 4096;

/// Where a layer blob of a recently served image view can be read.
#[derive(Clone, Debug)]
struct LayerSource {
    registry: String,
    repository: String,
    /// The ModelKit manifest the view was made of: where a lazy index hangs.
    kit: Option<Digest>,
    plan: LayerPlan,
    /// When it was recorded (order of forgetting).
    seq: u64,
}

/// A lazy index lookup's answer and when it was made.
type Looked = (Option<Arc<LazyIndex>>, std::time::Instant);

pub struct Filler {
    snap: Arc<Snapshotter>,
    registry: ClientOptions,
    /// Registries the node reaches over plain HTTP.
    plain_http: Vec<String>,
    limits: PullLimits,
    sources: Mutex<(u64, HashMap<Digest, LayerSource>)>,
    /// One fill per chain ID at a time: a second Prepare of it waits, then finds it held.
    locks: KeyedLocks,
    /// Serve layers with a lazy index before they have arrived (FUSE).
    lazy: bool,
    /// Lazy indexes looked up, by ModelKit manifest, and when (None: it had none then).
    indexes: Mutex<HashMap<Digest, Looked>>,
}

impl Filler {
    pub fn new(
        snap: Arc<Snapshotter>,
        registry: ClientOptions,
        plain_http: Vec<String>,
        limits: PullLimits,
        lazy: bool,
    ) -> Filler {
        Filler {
            snap,
            registry,
            plain_http,
            limits,
            sources: Mutex::new((0, HashMap::new())),
            locks: KeyedLocks::default(),
            lazy,
            indexes: Mutex::new(HashMap::new()),
        }
    }

    /// The mirror served an image view of `registry/repository` (of ModelKit manifest
    /// `kit`) over these layers.
    pub fn record(
        &self,
        registry: &str,
        repository: &str,
        kit: Option<&Digest>,
        layers: &[LayerPlan],
    ) {
        let Ok(mut g) = self.sources.lock() else {
            return;
        };
        let (seq, map) = &mut *g;
        if map.len() + layers.len() > MAX_SOURCES {
            let mut seqs: Vec<u64> = map.values().map(|s| s.seq).collect();
            seqs.sort_unstable();
            let cut = seqs.get(seqs.len() / 2).copied().unwrap_or(u64::MAX);
            map.retain(|_, s| s.seq > cut);
        }
        for l in layers {
            *seq += 1;
            map.insert(
                l.desc.digest.clone(),
                LayerSource {
                    registry: registry.to_string(),
                    repository: repository.to_string(),
                    kit: kit.cloned(),
                    plan: l.clone(),
                    seq: *seq,
                },
            );
        }
    }

    fn source(&self, blob: &Digest) -> Option<LayerSource> {
        self.sources.lock().ok()?.1.get(blob).cloned()
    }

    /// Called on a Prepare of `parent` with `labels`: true when the layer asked for is now
    /// held (filled here, or already), so that containerd should adopt it.
    pub async fn fill(&self, parent: &str, labels: &HashMap<String, String>) -> bool {
        let (Some(target), Some(blob)) = (
            labels.get(label::TARGET_REF),
            labels
                .get(label::LAYER_DIGEST)
                .and_then(|d| d.parse::<Digest>().ok()),
        ) else {
            return false;
        };
        let Some(src) = self.source(&blob) else {
            return false;
        };
        let r = self.fill_from(parent, target, &blob, src).await;
        let result = match &r {
            Ok(true) => "filled",
            Ok(false) => "skipped",
            Err(_) => "left_to_containerd",
        };
        crate::metrics::metrics()
            .fills
            .get_or_create(&crate::metrics::Outcome { result })
            .inc();
        match r {
            Ok(filled) => filled,
            Err(e) => {
                tracing::info!(%target, %blob, error = %crate::error::chain(&e), "fill: left to containerd");
                false
            }
        }
    }

    async fn fill_from(
        &self,
        parent: &str,
        target: &str,
        blob: &Digest,
        src: LayerSource,
    ) -> Result<bool> {
        let _guard = self.locks.lock(target).await;
        let (snap, p, t) = (self.snap.clone(), parent.to_string(), target.to_string());
        if blocking(move || Ok(snap.holds(&p, &t)?)).await? {
            return Ok(true);
        }
        // The chain the parent stands for: the target must be that chain plus this layer.
        let parent_chain = if parent.is_empty() {
            None
        } else {
            let (snap, p) = (self.snap.clone(), parent.to_string());
            let chain = blocking(move || Ok(snap.get(&p)?.labels.get(label::TARGET_REF).cloned()))
                .await?
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "parent {parent} has no chain ID label to check the layer against"
                    ))
                })?;
            Some(
                chain
                    .parse::<Digest>()
                    .map_err(|e| Error::invalid(format!("parent {parent}: chain ID label: {e}")))?,
            )
        };

        if self.lazy && transfer::lazy_eligible(&src.plan) && src.kit.is_some() {
            match self
                .fill_lazy(parent, target, blob, &src, parent_chain.as_ref())
                .await
            {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%target, %blob, error = %crate::error::chain(&e), "lazy fill failed; unpacking the layer whole");
                }
            }
        }
        let started = std::time::Instant::now();
        let key = format!("kitsnap-fill/{}/{}", pull::nonce(), blob);
        let mut labels = BTreeMap::from([(label::LAYER_DIGEST.to_string(), blob.to_string())]);
        let (snap, k, p, l) = (
            self.snap.clone(),
            key.clone(),
            parent.to_string(),
            labels.clone(),
        );
        let mounts = blocking(move || Ok(snap.create(Kind::Active, &k, &p, l)?)).await?;
        let filled = async {
            let dir = crate::mount::writable_dir(&crate::snapshotter::service::to_api_mounts(mounts))
                .ok_or_else(|| Error::Internal("fill: the new snapshot has no directory".into()))?;
            let reg = self.registry_for(&src.registry).await?;
            let max_bytes = pull::layer_budget(&src.plan, self.limits.max_kit_bytes, self.limits.max_expansion);
            let eopts = extract::ExtractOptions {
                overwrite: false,
                skip_existing: false,
                max_bytes: Some(max_bytes),
            };
            let progress = Progress::new(&Events::none(), 0, &src.plan);
            let (written, diff) =
                pull::stream_layer(&reg, &src.repository, &src.plan, dir, eopts, progress, None).await?;
            let chain = imageview::chain_id(parent_chain.as_ref(), &diff);
            if chain.as_str() != target {
                return Err(Error::invalid(format!(
                    "layer {blob} unpacks to chain ID {chain}, not {target}"
                )));
            }
            labels.insert(label::TARGET_REF.to_string(), target.to_string());
            let name = format!("kitsnap-fill/{}/{target}", pull::nonce());
            let (snap, k) = (self.snap.clone(), key.clone());
            blocking(move || Ok(snap.commit(&name, &k, labels)?)).await?;
            tracing::info!(%target, %blob, registry = %src.registry, repository = %src.repository,
                bytes = written, secs = started.elapsed().as_secs_f64(), "fill: layer unpacked for containerd");
            Ok(true)
        }
        .await;
        if filled.is_err() {
            let (snap, k) = (self.snap.clone(), key);
            let _ = blocking(move || Ok(snap.remove(&k)?)).await;
        }
        filled
    }
}

impl Filler {
    /// A client for `host` with the node's settings. Credentials may come from a helper
    /// process: built off the async workers.
    /// The daemon's client options for `host`: plain HTTP where it was told so.
    fn options_for(&self, host: &str) -> kitsnap_registry::client::ClientOptions {
        let mut opts = self.registry.clone();
        opts.plain_http |= self.plain_http.iter().any(|h| h == host);
        opts
    }

    async fn registry_for(&self, host: &str) -> Result<Registry> {
        let opts = self.options_for(host);
        let host = host.to_string();
        blocking(move || Ok(Registry::new(&host, opts)?)).await
    }

    /// The lazy index published for ModelKit `kit`: looked up once per ModelKit, and again
    /// after a minute when it had none (`kitsnap push` publishes it after the manifest).
    async fn lazy_index(
        &self,
        reg: &Registry,
        repo: &str,
        kit: &Digest,
    ) -> Result<Option<Arc<LazyIndex>>> {
        const RETRY_NONE: std::time::Duration = std::time::Duration::from_secs(60);
        if let Ok(cache) = self.indexes.lock()
            && let Some((i, at)) = cache.get(kit)
            && (i.is_some() || at.elapsed() < RETRY_NONE)
        {
            return Ok(i.clone());
        }
        // No lock held over the network: fills of other kits go on meanwhile.
        let found = transfer::find_lazy_index(reg, repo, kit)
            .await?
            .map(Arc::new);
        if let Ok(mut cache) = self.indexes.lock() {
            if cache.len() >= MAX_SOURCES {
                cache.clear();
            }
            cache.insert(kit.clone(), (found.clone(), std::time::Instant::now()));
        }
        Ok(found)
    }

    /// Commits the layer's snapshot at once and serves it through FUSE while it fills.
    /// Ok(false) when the ModelKit has no lazy index for this layer.
    async fn fill_lazy(
        &self,
        parent: &str,
        target: &str,
        blob: &Digest,
        src: &LayerSource,
        parent_chain: Option<&Digest>,
    ) -> Result<bool> {
        let Some(kit) = &src.kit else {
            return Ok(false);
        };
        let reg = Arc::new(self.registry_for(&src.registry).await?);
        let Some(index) = self.lazy_index(&reg, &src.repository, kit).await? else {
            return Ok(false);
        };
        let Some(layer) = index.layer(blob).cloned() else {
            return Ok(false);
        };
        if layer.size > self.limits.max_kit_bytes {
            return Err(Error::invalid(format!(
                "layer {blob}: {} bytes, more than this node allows per kit (max_kit_gib)",
                layer.size
            )));
        }
        if layer.size != src.plan.desc.size {
            return Err(Error::invalid(format!(
                "the lazy index gives layer {blob} {} bytes, the manifest {}",
                layer.size, src.plan.desc.size
            )));
        }
        // An uncompressed layer's diff ID is its digest: the chain is known before any byte.
        if imageview::chain_id(parent_chain, blob).as_str() != target {
            return Ok(false);
        }
        let key = format!("kitsnap-fill/{}/{}", pull::nonce(), blob);
        let name = format!("kitsnap-fill/{}/{target}", pull::nonce());
        let labels = BTreeMap::from([
            (label::LAYER_DIGEST.to_string(), blob.to_string()),
            (label::LAZY.to_string(), "true".to_string()),
        ]);
        let meta = crate::lazy::Meta {
            registry: src.registry.clone(),
            repository: src.repository.clone(),
            media_type: src.plan.desc.media_type.clone(),
            layer,
            plain_http: self.plain_http.contains(&src.registry),
            // The daemon's own settings: a restart has them anyway.
            tls_verify_off: false,
            ca_files: Vec::new(),
            hosts_dir: None,
        };
        let (snap, k, n, p, t) = (
            self.snap.clone(),
            key.clone(),
            name.clone(),
            parent.to_string(),
            target.to_string(),
        );
        let rt = tokio::runtime::Handle::current();
        let made = blocking(move || {
            snap.create(Kind::Active, &k, &p, labels.clone())?;
            let id = snap.get(&k)?.id;
            let dir = snap.snapshot_dir(id);
            let mounted = (|| {
                crate::lazy::Mounts::prepare(&dir, &meta)?;
                let mut labels = labels;
                labels.insert(label::TARGET_REF.to_string(), t);
                snap.commit(&n, &k, labels)?;
                snap.lazy().mount(id, &dir, reg, &rt)
            })();
            if mounted.is_err() {
                let _ = snap.remove(&n);
                let _ = snap.remove(&k);
            }
            mounted
        })
        .await;
        made?;
        tracing::info!(%target, %blob, registry = %src.registry, repository = %src.repository,
            "fill: layer served lazily while it arrives");
        Ok(true)
    }

    /// Mounts again the lazy layers a previous run of the daemon served (their FUSE
    /// mounts died with it) and fetches what they still lack. Blocking; at startup,
    /// before containerd is served.
    pub fn resume_lazy(&self, rt: &tokio::runtime::Handle) -> usize {
        let Ok(all) = self.snap.list(&[]) else {
            return 0;
        };
        let mut n = 0;
        for (name, r) in all
            .into_iter()
            .filter(|(_, r)| r.labels.contains_key(label::LAZY))
        {
            let dir = self.snap.snapshot_dir(r.id);
            let res = (|| -> Result<()> {
                let meta: crate::lazy::Meta =
                    serde_json::from_slice(&std::fs::read(dir.join(crate::lazy::META))?)
                        .map_err(|e| Error::invalid(e.to_string()))?;
                let mut opts = self.options_for(&meta.registry);
                meta.reach(&mut opts);
                let reg = Arc::new(Registry::new(&meta.registry, opts)?);
                self.snap.lazy().mount(r.id, &dir, reg, rt)
            })();
            match res {
                Ok(()) => n += 1,
                Err(e) => tracing::error!(snapshot = %name, error = %crate::error::chain(&e),
                    "lazy layer not mounted again; the snapshotter refuses to mount it for containers until its image is pulled again"),
            }
        }
        n
    }
}

#[tonic::async_trait]
impl crate::snapshotter::service::Provider for Filler {
    async fn provide(&self, parent: &str, labels: &HashMap<String, String>) -> bool {
        self.fill(parent, labels).await
    }
}
