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
use kitsnap_registry::client::{ClientOptions, Registry};

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
    plan: LayerPlan,
    /// When it was recorded (order of forgetting).
    seq: u64,
}

pub struct Filler {
    snap: Arc<Snapshotter>,
    registry: ClientOptions,
    /// Registries the node reaches over plain HTTP.
    plain_http: Vec<String>,
    limits: PullLimits,
    sources: Mutex<(u64, HashMap<Digest, LayerSource>)>,
    /// One fill per chain ID at a time: a second Prepare of it waits, then finds it held.
    locks: KeyedLocks,
}

impl Filler {
    pub fn new(
        snap: Arc<Snapshotter>,
        registry: ClientOptions,
        plain_http: Vec<String>,
        limits: PullLimits,
    ) -> Filler {
        Filler {
            snap,
            registry,
            plain_http,
            limits,
            sources: Mutex::new((0, HashMap::new())),
            locks: KeyedLocks::default(),
        }
    }

    /// The mirror served an image view of `registry/repository` over these layers.
    pub fn record(&self, registry: &str, repository: &str, layers: &[LayerPlan]) {
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
            let mut opts = self.registry.clone();
            opts.plain_http |= self.plain_http.contains(&src.registry);
            let host = src.registry.clone();
            // Credentials may come from a helper process: off the async workers.
            let reg = blocking(move || Ok(Registry::new(&host, opts)?)).await?;
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

#[tonic::async_trait]
impl crate::snapshotter::service::Provider for Filler {
    async fn provide(&self, parent: &str, labels: &HashMap<String, String>) -> bool {
        self.fill(parent, labels).await
    }
}
