//! The `kitsnap.v1.Node` gRPC service (proto/kitsnap.proto) over [`Node`].

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use kitsnap_core::reference::Reference;
use kitsnap_registry::client::ClientOptions;

use super::{MountRequest, Node, pull};
use crate::api::node::{self as pb, node_server};
use crate::error::Error;

pub struct Service {
    pub node: Arc<Node>,
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        use kitsnap_core::Error as C;
        use kitsnap_registry::Error as R;
        let msg = crate::error::chain(&e);
        match &e {
            Error::Core(
                C::NotAModelKit(_)
                | C::Invalid(_)
                | C::InvalidReference(..)
                | C::InvalidDigest(_)
                | C::Kitfile { .. },
            ) => Status::invalid_argument(msg),
            Error::Core(C::NotFound(_)) => Status::not_found(msg),
            Error::Registry(R::Unauthorized(_)) => Status::unauthenticated(msg),
            Error::Core(
                C::DigestMismatch { .. } | C::SizeMismatch { .. } | C::UnsafeLayer { .. },
            )
            | Error::Registry(R::Core(C::DigestMismatch { .. } | C::SizeMismatch { .. })) => {
                Status::data_loss(msg)
            }
            Error::Registry(R::Core(C::NotAModelKit(_) | C::Invalid(_) | C::Index(_))) => {
                Status::invalid_argument(msg)
            }
            Error::Registry(R::Core(C::NotFound(_))) => Status::not_found(msg),
            Error::Registry(_) | Error::Containerd(_) => Status::unavailable(msg),
            Error::Aborted(_) => Status::aborted(msg),
            Error::ShuttingDown => Status::unavailable(msg),
            _ => Status::internal(msg),
        }
    }
}

/// Registry options of a request on top of the daemon's own (hosts dir, credentials).
fn registry_options(base: &ClientOptions, o: Option<pb::RegistryOptions>) -> ClientOptions {
    let mut c = base.clone();
    if let Some(o) = o {
        c.plain_http |= o.plain_http;
        c.tls_verify &= !o.insecure_skip_verify;
        c.ca_files.extend(
            o.ca_files
                .into_iter()
                .filter(|f| !f.is_empty())
                .map(PathBuf::from),
        );
        if !o.hosts_dir.is_empty() {
            c.hosts_dir = Some(PathBuf::from(o.hosts_dir));
        }
    }
    c
}

/// A client names its own local store for the daemon (root) to read a ModelKit from:
/// only one that the client's user owns (or any, for root), so that the daemon never
/// reads a store on behalf of someone who could not read it.
fn check_store<T>(req: &Request<T>, store: &str) -> Result<(), Status> {
    if store.is_empty() {
        return Ok(());
    }
    let peer = req
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| c.uid());
    let owner = std::fs::metadata(store).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    match (peer, owner) {
        (Some(0), _) => Ok(()),
        (Some(p), Some(o)) if p == o => Ok(()),
        (_, None) => Err(Status::not_found(format!("store {store}: not found"))),
        (p, Some(o)) => Err(Status::permission_denied(format!(
            "store {store} belongs to uid {o}, not to the caller (uid {}): kitsnap serve reads a local store only for its owner",
            p.map_or("unknown".into(), |p| p.to_string())
        ))),
    }
}

fn parse_ref(s: &str) -> Result<Reference, Status> {
    s.parse::<Reference>()
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn namespace(ns: String) -> String {
    if ns.is_empty() {
        crate::containerd::DEFAULT_NAMESPACE.into()
    } else {
        ns
    }
}

fn opt_path(s: String) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::PullEvent, Status>> + Send>>;

#[tonic::async_trait]
impl node_server::Node for Service {
    type PullStream = EventStream;

    async fn pull(&self, req: Request<pb::PullRequest>) -> Result<Response<EventStream>, Status> {
        check_store(&req, &req.get_ref().store)?;
        let r = req.into_inner();
        let spec = pull::PullSpec {
            reference: parse_ref(&r.reference)?,
            namespace: namespace(r.namespace),
            store: opt_path(r.store),
            registry: registry_options(&self.node.registry, r.registry),
            keep_blobs: r.keep_blobs,
            lazy: r.lazy,
        };
        let (etx, mut erx) = tokio::sync::mpsc::channel::<pb::PullEvent>(64);
        let (otx, orx) = tokio::sync::mpsc::channel::<Result<pb::PullEvent, Status>>(64);
        let node = self.node.clone();
        tokio::spawn(async move {
            tracing::info!(reference = %spec.reference, namespace = %spec.namespace, "pull");
            let started = std::time::Instant::now();
            // Forward progress while the pull runs. A client that went away (Ctrl-C)
            // cancels the pull: dropping `work` makes it clean up and delete its lease.
            let res = {
                let events = pull::Events::to(etx.clone());
                let work = node.pull(&spec, &events);
                tokio::pin!(work);
                loop {
                    tokio::select! {
                        r = &mut work => break r,
                        Some(ev) = erx.recv() => { let _ = otx.send(Ok(ev)).await; }
                        _ = otx.closed() => {
                            tracing::info!(reference = %spec.reference, "client went away: pull cancelled");
                            return;
                        }
                    }
                }
            };
            drop(etx);
            while let Ok(ev) = erx.try_recv() {
                let _ = otx.send(Ok(ev)).await;
            }
            let last = match res {
                Ok(result) => {
                    tracing::info!(
                        reference = %spec.reference,
                        unpacked = result.layers_unpacked,
                        reused = result.layers_reused,
                        secs = started.elapsed().as_secs_f64(),
                        "pulled"
                    );
                    Ok(pb::PullEvent {
                        event: Some(pb::pull_event::Event::Result(result)),
                    })
                }
                Err(e) => {
                    tracing::warn!(reference = %spec.reference, error = %crate::error::chain(&e), "pull failed");
                    Err(Status::from(e))
                }
            };
            let _ = otx.send(last).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(orx),
        )))
    }

    async fn mount(
        &self,
        req: Request<pb::MountRequest>,
    ) -> Result<Response<pb::MountResponse>, Status> {
        check_store(&req, &req.get_ref().store)?;
        let r = req.into_inner();
        let m = MountRequest {
            reference: parse_ref(&r.reference)?,
            namespace: namespace(r.namespace),
            filters: r.filters,
            name: (!r.name.is_empty()).then_some(r.name),
            holder: r.holder,
            store: opt_path(r.store),
            registry: registry_options(&self.node.registry, r.registry),
        };
        let done = self.node.mount(m, &pull::Events::none()).await?;
        Ok(Response::new(pb::MountResponse {
            name: done.record.name.clone(),
            path: done.record.path.to_string_lossy().into_owned(),
            pulled: done.pulled,
            holders: done.record.holders.len() as u32,
            holder: done.holder,
        }))
    }

    async fn unmount(
        &self,
        req: Request<pb::UnmountRequest>,
    ) -> Result<Response<pb::UnmountResponse>, Status> {
        let r = req.into_inner();
        let u = self.node.unmount(&r.name, &r.holder, r.force).await?;
        Ok(Response::new(pb::UnmountResponse {
            unmounted: u.unmounted,
            holders: u.record.holders.len() as u32,
            still_used_by: u.still_used_by,
        }))
    }

    async fn list_mounts(
        &self,
        _req: Request<pb::ListMountsRequest>,
    ) -> Result<Response<pb::ListMountsResponse>, Status> {
        let mounts = self
            .node
            .mounts()?
            .into_iter()
            .map(|m| pb::MountInfo {
                name: m.name,
                path: m.path.to_string_lossy().into_owned(),
                reference: m.reference,
                namespace: m.namespace,
                filters: m.filters,
                holders: m.holders.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(pb::ListMountsResponse { mounts }))
    }

    async fn df(&self, _req: Request<pb::DfRequest>) -> Result<Response<pb::DfResponse>, Status> {
        let r = tokio::time::timeout(Duration::from_secs(300), self.node.df())
            .await
            .map_err(|_| Status::deadline_exceeded("df took more than 5 minutes"))??;
        Ok(Response::new(r))
    }
}
