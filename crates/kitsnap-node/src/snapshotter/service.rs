//! The `containerd.services.snapshots.v1.Snapshots` gRPC service over [`Snapshotter`].
//! Metadata work is blocking (redb, disk usage walks), so each call runs on tokio's
//! blocking pool.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use super::{Kind, Mount, Record, SnapError, Snapshotter};

use crate::api::snapshots as pb;
use crate::api::snapshots::snapshots_server::Snapshots;

impl From<SnapError> for Status {
    fn from(e: SnapError) -> Status {
        let msg = crate::error::chain(&e);
        match e {
            SnapError::NotFound(_) => Status::not_found(msg),
            SnapError::AlreadyExists(_) => Status::already_exists(msg),
            SnapError::FailedPrecondition(_) => Status::failed_precondition(msg),
            SnapError::InvalidArgument(_) => Status::invalid_argument(msg),
            SnapError::Metadata(_)
            | SnapError::Io(_)
            | SnapError::Record(_)
            | SnapError::Internal(_) => Status::internal(msg),
        }
    }
}

fn ts((s, n): (i64, u32)) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: s,
        nanos: n as i32,
    })
}

fn info(name: String, r: Record) -> pb::Info {
    pb::Info {
        name,
        parent: r.parent,
        kind: match r.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: ts(r.created),
        updated_at: ts(r.updated),
        labels: r.labels.into_iter().collect(),
    }
}

pub(crate) fn to_api_mounts(m: Vec<Mount>) -> Vec<crate::api::types::Mount> {
    m.into_iter()
        .map(|m| crate::api::types::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn labels(l: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

/// Provides a layer itself when containerd prepares it with the remote-snapshot label
/// (`containerd.io/snapshot.ref`): true once a committed snapshot carrying that target
/// exists on `parent`, so that Prepare answers ALREADY_EXISTS and containerd adopts it.
/// False leaves the Prepare to go on as usual (containerd unpacks the layer itself).
#[tonic::async_trait]
pub trait Provider: Send + Sync {
    async fn provide(
        &self,
        parent: &str,
        labels: &std::collections::HashMap<String, String>,
    ) -> bool;
}

#[derive(Clone)]
pub struct Service {
    pub snap: Arc<Snapshotter>,
    pub provider: Option<Arc<dyn Provider>>,
}

impl Service {
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Snapshotter) -> super::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let s = self.snap.clone();
        let res = tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| Status::internal(format!("{op}: {e}")))?;
        match &res {
            Err(SnapError::Internal(m)) => tracing::error!(op, error = %m, "snapshotter error"),
            Err(e) => tracing::debug!(op, error = %e, "request refused"),
            Ok(_) => tracing::trace!(op, "ok"),
        }
        res.map_err(Status::from)
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(
        &self,
        r: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = r.into_inner();
        tracing::debug!(key = %r.key, parent = %r.parent, labels = ?r.labels, "prepare");
        // kitsnap's own pull unpacks its layers itself (a held one is still adopted: see
        // `create`); only containerd's unpacks are filled.
        if let (Some(p), Some(target)) = (&self.provider, r.labels.get(crate::labels::TARGET_REF))
            && !crate::labels::is_pull_extract_key(&r.key)
            && p.provide(&r.parent, &r.labels).await
        {
            return Err(Status::already_exists(format!(
                "target {target} (held by this snapshotter)"
            )));
        }
        let m = self
            .blocking("prepare", move |s| {
                s.create(Kind::Active, &r.key, &r.parent, labels(r.labels))
            })
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: to_api_mounts(m),
        }))
    }

    async fn view(
        &self,
        r: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = r.into_inner();
        tracing::debug!(key = %r.key, parent = %r.parent, "view");
        let m = self
            .blocking("view", move |s| {
                s.create(Kind::View, &r.key, &r.parent, labels(r.labels))
            })
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: to_api_mounts(m),
        }))
    }

    async fn mounts(
        &self,
        r: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let key = r.into_inner().key;
        let m = self.blocking("mounts", move |s| s.mounts(&key)).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: to_api_mounts(m),
        }))
    }

    async fn commit(&self, r: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        tracing::debug!(key = %r.key, name = %r.name, "commit");
        self.blocking("commit", move |s| {
            s.commit(&r.name, &r.key, labels(r.labels))
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, r: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let key = r.into_inner().key;
        tracing::debug!(key = %key, "remove");
        self.blocking("remove", move |s| s.remove(&key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        r: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let key = r.into_inner().key;
        let rec = self
            .blocking("stat", {
                let key = key.clone();
                move |s| s.get(&key)
            })
            .await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info(key, rec)),
        }))
    }

    async fn update(
        &self,
        r: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let i = r
            .info
            .ok_or_else(|| Status::invalid_argument("update without info"))?;
        let mask = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let name = i.name.clone();
        let rec = self
            .blocking("update", move |s| {
                s.update(&i.name, labels(i.labels), &mask)
            })
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info(name, rec)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        r: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<ListStream>, Status> {
        let filters = r.into_inner().filters;
        let all = self.blocking("list", move |s| s.list(&filters)).await?;
        // Batches keep each message well under gRPC's size limit.
        let batches: Vec<Result<pb::ListSnapshotsResponse, Status>> = all
            .chunks(100)
            .map(|c| {
                Ok(pb::ListSnapshotsResponse {
                    info: c.iter().cloned().map(|(n, r)| info(n, r)).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(batches))))
    }

    async fn usage(
        &self,
        r: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let key = r.into_inner().key;
        let (size, inodes) = self.blocking("usage", move |s| s.usage(&key)).await?;
        Ok(Response::new(pb::UsageResponse { size, inodes }))
    }

    async fn cleanup(&self, _r: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let n = self.blocking("cleanup", |s| s.cleanup()).await?;
        tracing::info!(removed = n, "cleanup");
        Ok(Response::new(()))
    }
}
