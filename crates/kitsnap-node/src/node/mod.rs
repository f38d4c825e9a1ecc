//! ModelKits on a node: pulled into containerd once ([`pull`]), shown to containers as
//! read-only host mounts of containerd Views ([`Node::mount`]), measured by [`Node::df`].
//! The daemon owns this state; the CLI, the gRPC `kitsnap.v1.Node` service
//! ([`service`]) and the Docker volume plugin are its clients.

pub mod fill;
pub mod locks;
pub mod pull;
pub mod service;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::Database;
use serde::{Deserialize, Serialize};

use kitsnap_core::layers::{self, Filter, FilterType};
use kitsnap_core::reference::Reference;
use kitsnap_registry::client::ClientOptions;

use crate::api::node as pb;
use crate::containerd::Containerd;
use crate::error::{Error, Result};
use crate::labels as label;
use crate::records::{JsonTable, RecordError};
use crate::snapshotter::Snapshotter;
use crate::snapshotter::compose::KitRecord;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_MOUNT_ROOT: &str = "/run/kitsnap/mounts";
/// Holders a CLI `kitsnap mount` registers are `cli-<unique>`: one per mount request.
pub const CLI_HOLDER_PREFIX: &str = "cli";
/// containerd snapshot keys of kitsnap's views.
const VIEW_PREFIX: &str = "kitsnap-view/";

const MOUNTS: JsonTable<MountRecord> = JsonTable::new("mounts");
/// Named volumes (Docker's volume plugin makes them): name -> Volume.
const VOLUMES: JsonTable<Volume> = JsonTable::new("volumes");

/// A named volume of a ModelKit: `docker volume create` / `--mount type=volume` through
/// the Docker plugin; each container mounting it is a holder of the mount `docker-NAME`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Volume {
    pub name: String,
    pub reference: String,
    pub namespace: String,
    pub filters: Vec<String>,
    pub plain_http: bool,
}

impl Volume {
    pub fn mount_name(&self) -> String {
        format!("docker-{}", self.name)
    }
}

/// A host mount of a ModelKit view.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MountRecord {
    pub name: String,
    pub path: PathBuf,
    pub reference: String,
    pub namespace: String,
    pub filters: Vec<String>,
    pub holders: BTreeSet<String>,
    pub view: String,
    /// The mounted filesystem (device and root), to find containers still using it.
    #[serde(default)]
    pub id: Option<crate::mountinfo::MountId>,
    /// The host mount is gone but containers still use the view: it is removed once the
    /// last of them stops ([`Node::sweep`]).
    #[serde(default)]
    pub detached: bool,
}

pub struct MountRequest {
    pub reference: Reference,
    pub namespace: String,
    pub filters: Vec<String>,
    pub name: Option<String>,
    pub holder: String,
    pub store: Option<PathBuf>,
    pub registry: ClientOptions,
}

pub struct Mounted {
    pub record: MountRecord,
    pub pulled: bool,
    /// The holder this mount request added.
    pub holder: String,
}

/// What an unmount did.
pub struct Unmounted {
    pub record: MountRecord,
    /// The host mount is gone (no holder left, or forced).
    pub unmounted: bool,
    /// Processes (one per container) that still use the view: its files stay for them.
    pub still_used_by: Vec<u32>,
}

pub struct Node {
    pub snap: Arc<Snapshotter>,
    pub containerd: PathBuf,
    pub mount_root: PathBuf,
    /// Registry settings for pulls the daemon starts itself (Docker volumes).
    pub registry: ClientOptions,
    db: Arc<Database>,
    /// Mount and unmount of one name are one at a time; other names go on in parallel.
    names: locks::KeyedLocks,
    puller: Arc<pull::Puller>,
    work: Work,
}

/// Pulls and mounts in flight, so that a stopping daemon can cancel them and wait for
/// their cleanup while its snapshotter still answers containerd.
#[derive(Default)]
struct Work {
    stopping: CancellationToken,
    running: tokio::sync::watch::Sender<usize>,
}

struct WorkGuard<'a>(&'a Work);

impl Drop for WorkGuard<'_> {
    fn drop(&mut self) {
        self.0.running.send_modify(|n| *n -= 1);
    }
}

impl Work {
    fn enter(&self) -> Result<WorkGuard<'_>> {
        if self.stopping.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        self.running.send_modify(|n| *n += 1);
        Ok(WorkGuard(self))
    }
}

/// Runs blocking work (redb commits, mount syscalls, /proc scans) on tokio's blocking
/// pool, off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task: {e}")))?
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

/// Mounts a view's mounts read-only at `path` (creating it); returns what was mounted.
async fn mount_view(
    mounts: Vec<crate::api::types::Mount>,
    path: PathBuf,
) -> Result<Option<crate::mountinfo::MountId>> {
    blocking(move || {
        std::fs::create_dir_all(&path)?;
        crate::mount::mount_readonly(&mounts, &path)
            .map_err(|e| Error::mount(format!("mounting {}", path.display()), e))?;
        Ok(crate::mountinfo::of(&path))
    })
    .await
}

/// A mount name from a reference: `[A-Za-z0-9_.-]`, plus a filter hash when filtered.
pub fn mount_name(reference: &str, filters: &[String]) -> String {
    let mut n: String = reference
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !filters.is_empty() {
        let d = kitsnap_core::digest::Digest::of(filters.join(";").as_bytes());
        n.push('-');
        n.push_str(&d.hex()[..8]);
    }
    n
}

fn check_name(n: &str) -> Result<()> {
    if n.is_empty()
        || n.starts_with('.')
        || n.len() > 200
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(Error::invalid(format!(
            "mount name {n:?}: use letters, digits, `_`, `.`, `-` (not first)"
        )));
    }
    Ok(())
}

impl Node {
    pub fn open(
        snap: Arc<Snapshotter>,
        containerd: PathBuf,
        mount_root: PathBuf,
        registry: ClientOptions,
        limits: pull::PullLimits,
        lazy: bool,
    ) -> Result<Node> {
        let path = snap.root().join("node.redb");
        let db = Database::create(&path).map_err(|e| Error::Record(RecordError::Db(e.into())))?;
        MOUNTS.create(&db)?;
        VOLUMES.create(&db)?;
        let db = Arc::new(db);
        let puller = Arc::new(pull::Puller {
            containerd: containerd.clone(),
            snap: snap.clone(),
            layers: locks::KeyedLocks::default(),
            limits,
            owner: snap.root().display().to_string(),
            instance: pull::nonce(),
            active: Default::default(),
            diff_ids: Default::default(),
            lazy,
        });
        Ok(Node {
            snap,
            containerd,
            mount_root,
            registry,
            db,
            names: locks::KeyedLocks::default(),
            puller,
            work: Work::default(),
        })
    }

    /// Pulls a ModelKit into containerd (see [`pull`]). The pull runs as its own task:
    /// if this future is dropped (the client went away), the pull is cancelled and
    /// cleans up after itself (its lease is deleted) instead of being cut off mid-way.
    pub async fn pull(
        &self,
        spec: &pull::PullSpec,
        events: &pull::Events,
    ) -> Result<pb::PullResult> {
        let _work = self.work.enter()?;
        let cancel = self.work.stopping.child_token();
        let _cancel_on_drop = cancel.clone().drop_guard();
        let (p, spec, events) = (self.puller.clone(), spec.clone(), events.clone());
        let r = tokio::spawn(async move { pull::pull(&p, &spec, &events, &cancel).await })
            .await
            .map_err(|e| Error::Internal(format!("pull task: {e}")))?;
        let m = crate::metrics::metrics();
        match &r {
            Ok(res) => {
                m.pulls
                    .get_or_create(&crate::metrics::Outcome { result: "ok" })
                    .inc();
                m.pull_bytes.inc_by(res.bytes_fetched);
                m.layers_unpacked.inc_by(u64::from(res.layers_unpacked));
            }
            Err(_) => {
                m.pulls
                    .get_or_create(&crate::metrics::Outcome { result: "error" })
                    .inc();
                m.error("pull");
            }
        }
        r
    }

    /// Stops taking pulls and mounts, cancels the running ones and waits (at most
    /// `grace`) for them to clean up. The gRPC services keep answering meanwhile:
    /// cleaning up a pull means containerd calling back into the snapshotter.
    pub async fn drain(&self, grace: std::time::Duration) {
        self.work.stopping.cancel();
        let mut running = self.work.running.subscribe();
        let idle = running.wait_for(|n| *n == 0);
        if tokio::time::timeout(grace, idle).await.is_err() {
            tracing::warn!(
                running = *self.work.running.borrow(),
                "pulls still running after the shutdown grace period"
            );
        }
    }

    /// Deletes this daemon's pull leases that no running pull holds: those of pulls it was
    /// running when it died (kill -9, crash), and those a failed pull could not delete
    /// because containerd was down. Their partial layers go with containerd's next garbage
    /// collection instead of lingering for the lease's hour. Returns how many went.
    pub async fn reap_stale_leases(&self) -> Result<usize> {
        let ctr = self.ctr("default").await?;
        let mut n = 0;
        for ns in ctr.namespaces().await? {
            let c = ctr.in_namespace(&ns);
            for (id, labels) in c.leases_list().await? {
                let stale = id.starts_with(pull::LEASE_PREFIX)
                    && labels.get(label::LEASE_OWNER) == Some(&self.puller.owner)
                    && !self.puller.is_active(&id);
                if stale {
                    c.lease_delete(&id, false).await?;
                    tracing::info!(namespace = %ns, lease = %id, "deleted the lease of an interrupted pull");
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    pub async fn ctr(&self, ns: &str) -> Result<Containerd> {
        Ok(Containerd::connect(&self.containerd, ns).await?)
    }

    pub fn mounts(&self) -> Result<Vec<MountRecord>> {
        Ok(MOUNTS.all(&self.db)?)
    }

    pub fn volumes(&self) -> Result<Vec<Volume>> {
        Ok(VOLUMES.all(&self.db)?)
    }

    pub async fn put_volume(&self, v: &Volume) -> Result<()> {
        let (db, v) = (self.db.clone(), v.clone());
        blocking(move || Ok(VOLUMES.put(&db, &v.name, &v)?)).await
    }

    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        let (db, name) = (self.db.clone(), name.to_string());
        blocking(move || Ok(VOLUMES.remove(&db, &name)?)).await
    }

    async fn put_mount(&self, m: &MountRecord) -> Result<()> {
        let (db, m) = (self.db.clone(), m.clone());
        blocking(move || Ok(MOUNTS.put(&db, &m.name, &m)?)).await
    }

    async fn delete_mount(&self, name: &str) -> Result<()> {
        let (db, name) = (self.db.clone(), name.to_string());
        blocking(move || Ok(MOUNTS.remove(&db, &name)?)).await
    }

    /// The ModelKit's record if its snapshots are still in containerd's namespace `ns`.
    async fn present_kit(&self, ctr: &Containerd, reference: &str) -> Result<Option<KitRecord>> {
        let Some(k) = self.snap.kit(ctr.namespace(), reference)? else {
            return Ok(None);
        };
        if k.namespace != ctr.namespace() {
            return Ok(None);
        }
        Ok(ctr.stat(k.top()).await?.map(|_| k))
    }

    /// Pulls (if needed) and mounts a read-only view; an existing mount of the same name
    /// gains a holder.
    pub async fn mount(&self, req: MountRequest, events: &pull::Events) -> Result<Mounted> {
        let _work = self.work.enter()?;
        self.sweep().await;
        let holder = if req.holder.is_empty() {
            format!("{CLI_HOLDER_PREFIX}-{}", pull::nonce())
        } else {
            req.holder.clone()
        };
        let reference = req.reference.to_string();
        let filters: Vec<Filter> = req
            .filters
            .iter()
            .map(|f| f.parse::<Filter>().map_err(Error::from))
            .collect::<Result<_>>()?;
        if filters
            .iter()
            .any(|f| f.types.contains(&FilterType::Kitfile))
        {
            return Err(Error::invalid(
                "the kitfile filter does not apply to mounts (views hold layers only)",
            ));
        }
        let name = req
            .name
            .clone()
            .unwrap_or_else(|| mount_name(&reference, &req.filters));
        check_name(&name)?;
        let _name = self.names.lock(&name).await;
        let ctr = self.ctr(&req.namespace).await?;

        if let Some(mut rec) = self.mounts()?.into_iter().find(|m| m.name == name) {
            if rec.reference != reference
                || rec.filters != req.filters
                || rec.namespace != req.namespace
            {
                return Err(Error::invalid(format!(
                    "mount name {name:?} is already used for {} (filters {:?}); choose another --name",
                    rec.reference, rec.filters
                )));
            }
            if !crate::mountinfo::is_mounted(&rec.path) {
                // After a reboot (/run is gone), a manual umount, or a view kept for
                // containers after its last holder left: mount the view again.
                let mounts = ctr.mounts(&rec.view).await?;
                rec.id = mount_view(mounts, rec.path.clone()).await?;
            }
            rec.detached = false;
            rec.holders.insert(holder.clone());
            self.put_mount(&rec).await?;
            return Ok(Mounted {
                record: rec,
                pulled: false,
                holder,
            });
        }

        let mut pulled = false;
        let kit = match self.present_kit(&ctr, &reference).await? {
            Some(k) => k,
            None => {
                let spec = pull::PullSpec {
                    reference: req.reference.clone(),
                    namespace: req.namespace.clone(),
                    store: req.store.clone(),
                    registry: req.registry.clone(),
                    keep_blobs: false,
                    // A mount is what a container is about to read: it need not wait for
                    // the whole model when the kit has a lazy index.
                    lazy: true,
                };
                self.pull(&spec, events).await?;
                pulled = true;
                self.present_kit(&ctr, &reference).await?.ok_or_else(|| {
                    Error::Internal(format!("{reference} vanished after its pull"))
                })?
            }
        };
        let mut labels = HashMap::from([(
            label::GC_ROOT.to_string(),
            kitsnap_core::rfc3339(std::time::SystemTime::now()),
        )]);
        if !filters.is_empty() {
            let picked: Vec<String> = kit
                .layers
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    layers::selected(
                        &filters,
                        FilterType::from_user_str(&l.kind),
                        &l.name,
                        &l.path,
                    )
                })
                .map(|(i, _)| i.to_string())
                .collect();
            if picked.is_empty() {
                return Err(Error::not_found(format!(
                    "no layer of {reference} matches the filters {:?}",
                    req.filters
                )));
            }
            labels.insert(label::LAYERS.to_string(), picked.join(","));
        }
        let view = format!("{VIEW_PREFIX}{name}");
        let mounts = match ctr.view(&view, kit.top(), labels.clone()).await {
            Err(e) if e.is_already_exists() => {
                // Left by a mount interrupted before its record was written: replace it.
                tracing::info!(%view, "replacing a stale view");
                ctr.remove(&view).await?;
                ctr.view(&view, kit.top(), labels).await?
            }
            r => r?,
        };
        let path = self.mount_root.join(&name);
        let id = match mount_view(mounts, path.clone()).await {
            Ok(id) => id,
            Err(e) => {
                let _ = ctr.remove(&view).await;
                return Err(e);
            }
        };
        let rec = MountRecord {
            name,
            path,
            reference,
            namespace: req.namespace.clone(),
            filters: req.filters.clone(),
            holders: BTreeSet::from([holder.clone()]),
            view,
            id,
            detached: false,
        };
        self.put_mount(&rec).await?;
        Ok(Mounted {
            record: rec,
            pulled,
            holder,
        })
    }

    /// Drops `holder` ("" = one CLI holder); the last holder (or `force`) unmounts the
    /// host side. The view itself, and so the model's files, stay as long as a container
    /// still has them mounted: they go with the last user ([`Node::sweep`]).
    pub async fn unmount(
        &self,
        name_or_path: &str,
        holder: &str,
        force: bool,
    ) -> Result<Unmounted> {
        self.sweep().await;
        let find = || -> Result<MountRecord> {
            self.mounts()?
                .into_iter()
                .find(|m| m.name == name_or_path || m.path == Path::new(name_or_path))
                .ok_or_else(|| Error::not_found(format!("no kitsnap mount named {name_or_path:?}")))
        };
        let _name = self.names.lock(&find()?.name).await;
        // Read again under the lock: a concurrent mount or unmount may have changed it.
        let mut rec = find()?;
        let released = if holder.is_empty() {
            rec.holders
                .iter()
                .find(|h| h.starts_with(CLI_HOLDER_PREFIX))
                .cloned()
        } else {
            rec.holders.contains(holder).then(|| holder.to_string())
        };
        if let Some(h) = &released {
            rec.holders.remove(h);
        }
        if !rec.holders.is_empty() && !force {
            self.put_mount(&rec).await?;
            return Ok(Unmounted {
                record: rec,
                unmounted: false,
                still_used_by: Vec::new(),
            });
        }
        let (id, path) = (rec.id.clone(), rec.path.clone());
        let users = blocking(move || {
            crate::mount::unmount(&path)
                .map_err(|e| Error::mount(format!("unmounting {}", path.display()), e))?;
            let _ = std::fs::remove_dir(&path);
            // Looked for after the unmount: copies of the mount that other namespaces got
            // by propagation go with it; a container's own bind of it does not.
            Ok(id.as_ref().map(crate::mountinfo::users).unwrap_or_default())
        })
        .await?;
        rec.holders.clear();
        if users.is_empty() {
            self.drop_view(&rec).await?;
        } else {
            tracing::info!(mount = %rec.name, ?users, "host mount gone; view kept while containers use it");
            rec.detached = true;
            self.put_mount(&rec).await?;
        }
        Ok(Unmounted {
            record: rec,
            unmounted: true,
            still_used_by: users,
        })
    }

    async fn drop_view(&self, rec: &MountRecord) -> Result<()> {
        let ctr = self.ctr(&rec.namespace).await?;
        match ctr.remove(&rec.view).await {
            Err(e) if !e.is_not_found() => return Err(e.into()),
            _ => {}
        }
        self.delete_mount(&rec.name).await
    }

    /// Removes the views that were kept for containers once no container uses them.
    pub async fn sweep(&self) {
        let Ok(records) = self.mounts() else { return };
        for rec in records.into_iter().filter(|r| r.detached) {
            let _name = self.names.lock(&rec.name).await;
            let id = rec.id.clone();
            let in_use = blocking(move || {
                Ok(id
                    .as_ref()
                    .is_some_and(|id| !crate::mountinfo::users(id).is_empty()))
            })
            .await;
            if !matches!(in_use, Ok(false)) {
                continue;
            }
            match self.drop_view(&rec).await {
                Ok(()) => tracing::info!(mount = %rec.name, "last container gone: view removed"),
                Err(e) => {
                    tracing::warn!(mount = %rec.name, error = %crate::error::chain(&e), "removing a kept view")
                }
            }
        }
    }

    /// Disk used by ModelKits on this node.
    pub async fn df(&self) -> Result<pb::DfResponse> {
        let mut out = pb::DfResponse::default();
        let mut namespaces = BTreeSet::new();
        for k in self.snap.kits()? {
            let ctr = self.ctr(&k.namespace).await?;
            if ctr.stat(k.top()).await?.is_none() {
                // Removed from containerd since (images rm + GC): not on this node.
                continue;
            }
            namespaces.insert(k.namespace.clone());
            let mut kit = pb::DfKit {
                reference: k.reference.clone(),
                namespace: k.namespace.clone(),
                manifest_digest: k.manifest_digest.clone(),
                layers: k.layers.len() as u32,
                model_bytes: k.layers.iter().map(|l| l.size).sum(),
                ..Default::default()
            };
            let mut blobs: Vec<&str> = k.layers.iter().map(|l| l.digest.as_str()).collect();
            blobs.push(&k.manifest_digest);
            // The image view's own documents (index, manifest, config).
            blobs.extend(k.view.iter().map(String::as_str));
            for b in blobs {
                if let Some(i) = ctr.content_info(b).await? {
                    kit.content_bytes += i.size.max(0) as u64;
                }
            }
            if let Some(img) = ctr.image_get(&k.reference).await?
                && let Some(t) = img.target
                && (t.digest == k.manifest_digest || k.view.first() == Some(&t.digest))
            {
                // The config is small but real: count it too.
                if let Ok(Some(m)) = self.config_of(&ctr, &k.manifest_digest).await {
                    kit.content_bytes += m;
                }
            }
            for l in &k.layers {
                if let Some((_, r)) = self.snap.find_named(&k.namespace, &l.chain)? {
                    kit.snapshot_bytes += r.size.max(0) as u64;
                }
            }
            out.kits.push(kit);
        }
        for ns in namespaces {
            let ctr = self.ctr(&ns).await?;
            out.content_bytes += ctr
                .content_list()
                .await?
                .iter()
                .map(|i| i.size.max(0) as u64)
                .sum::<u64>();
        }
        let s = self.snap.clone();
        let (snaps, trees) = tokio::task::spawn_blocking(move || s.disk_totals())
            .await
            .map_err(internal)??;
        out.snapshot_bytes = snaps.max(0) as u64;
        out.tree_bytes = trees.max(0) as u64;
        out.total_bytes = out.content_bytes + out.snapshot_bytes + out.tree_bytes;
        Ok(out)
    }

    /// Size of the config blob of a manifest in the content store (None if absent).
    async fn config_of(&self, ctr: &Containerd, manifest: &str) -> Result<Option<u64>> {
        let Some(info) = ctr.content_info(manifest).await? else {
            return Ok(None);
        };
        let Some(cfg) = info.labels.get(label::GC_CONTENT_CONFIG) else {
            return Ok(None);
        };
        Ok(ctr.content_info(cfg).await?.map(|i| i.size.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_names() {
        assert_eq!(
            mount_name("localhost:5000/kits/m:v1", &[]),
            "localhost_5000_kits_m_v1"
        );
        let f = mount_name("r/m:v1", &["model".into()]);
        assert!(f.starts_with("r_m_v1-") && f.len() == "r_m_v1-".len() + 8);
        assert_ne!(f, mount_name("r/m:v1", &["datasets".into()]));
        assert!(check_name("ok-name_1.2").is_ok());
        for bad in ["", ".hidden", "a/b", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
