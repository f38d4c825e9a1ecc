//! Docker's (legacy, daemon-managed) volume plugin protocol, served by `kitsnap serve` at
//! `/run/docker/plugins/kitsnap.sock`: HTTP with JSON bodies over a unix socket.
//!
//! `docker run --mount type=volume,volume-driver=kitsnap,src=NAME,dst=/models,volume-opt=ref=REF`
//! creates the volume NAME for REF; its first Mount pulls the ModelKit into containerd (if
//! needed) and mounts a read-only view; each container's Mount/Unmount adds/drops a
//! holder, so the view goes away with the last container. Volume options: `ref`
//! (required), `filter` (unpack-style, `;`-separated), `namespace` (containerd namespace,
//! default `default`), `plain-http=true`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::node::{MountRequest, Node, Volume};
use kitsnap_core::reference::Reference;

pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/kitsnap.sock";
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
const MAX_BODY: usize = 1 << 20;

struct Plugin {
    node: Arc<Node>,
    plain_http: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Req {
    name: String,
    #[serde(rename = "ID")]
    id: String,
    opts: Option<BTreeMap<String, String>>,
}

/// Binds the socket and serves it on the current tokio runtime.
pub fn start(
    node: Arc<Node>,
    sock: &Path,
    plain_http: Vec<String>,
) -> Result<(
    tokio::task::JoinHandle<()>,
    crate::daemon::systemd::BoundSocket,
)> {
    let (listener, bound) = crate::daemon::systemd::bind(sock, None)?;
    tracing::info!(socket = %sock.display(), "serving the Docker volume plugin");
    let plugin = Arc::new(Plugin { node, plain_http });
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "docker plugin accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let plugin = plugin.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let plugin = plugin.clone();
                    async move { Ok::<_, Infallible>(plugin.handle(req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await
                {
                    tracing::debug!(error = %e, "docker plugin connection");
                }
            });
        }
    });
    Ok((task, bound))
}

fn reply(v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    if let Ok(ct) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, ct);
    }
    r
}

impl Plugin {
    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return reply(json!({ "Err": format!("reading the request: {e}") })),
        };
        let r: Req = if body.is_empty() {
            Req::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return reply(json!({ "Err": format!("bad request body: {e}") })),
            }
        };
        tracing::debug!(%path, name = %r.name, id = %r.id, "docker plugin call");
        let res = match path.as_str() {
            "/Plugin.Activate" => Ok(json!({ "Implements": ["VolumeDriver"] })),
            "/VolumeDriver.Capabilities" => Ok(json!({ "Capabilities": { "Scope": "local" } })),
            "/VolumeDriver.Create" => self.create(&r).await.map(|()| json!({ "Err": "" })),
            "/VolumeDriver.Remove" => self.remove(&r).await.map(|()| json!({ "Err": "" })),
            "/VolumeDriver.Mount" => self
                .mount(&r)
                .await
                .map(|p| json!({ "Mountpoint": p, "Err": "" })),
            "/VolumeDriver.Unmount" => self.unmount(&r).await.map(|()| json!({ "Err": "" })),
            "/VolumeDriver.Path" => self.volume(&r.name).map(
                |v| json!({ "Mountpoint": self.mountpoint(&v).unwrap_or_default(), "Err": "" }),
            ),
            "/VolumeDriver.Get" => self
                .volume(&r.name)
                .map(|v| json!({ "Volume": self.describe(&v), "Err": "" })),
            "/VolumeDriver.List" => self.node.volumes().map(|vs| {
                let list: Vec<Value> = vs.iter().map(|v| self.describe(v)).collect();
                json!({ "Volumes": list, "Err": "" })
            }),
            other => Err(Error::not_found(format!("unknown plugin call {other}"))),
        };
        match res {
            Ok(v) => reply(v),
            Err(e) => {
                tracing::warn!(%path, name = %r.name, error = %e, "docker plugin call failed");
                reply(json!({ "Err": e.to_string() }))
            }
        }
    }

    fn volume(&self, name: &str) -> Result<Volume> {
        self.node
            .volumes()?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| Error::not_found(format!("no kitsnap volume {name:?}")))
    }

    fn mountpoint(&self, v: &Volume) -> Option<String> {
        let name = v.mount_name();
        self.node
            .mounts()
            .ok()?
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.path.to_string_lossy().into_owned())
    }

    fn describe(&self, v: &Volume) -> Value {
        json!({
            "Name": v.name,
            "Mountpoint": self.mountpoint(v).unwrap_or_default(),
            "Status": { "reference": v.reference, "namespace": v.namespace, "filters": v.filters },
        })
    }

    async fn create(&self, r: &Req) -> Result<()> {
        let opts = r.opts.clone().unwrap_or_default();
        for k in opts.keys() {
            if !matches!(k.as_str(), "ref" | "filter" | "namespace" | "plain-http") {
                return Err(Error::invalid(format!(
                    "unknown volume option {k:?} (kitsnap takes ref, filter, namespace, plain-http)"
                )));
            }
        }
        let reference = opts.get("ref").ok_or_else(|| {
            Error::invalid("kitsnap volumes need the ModelKit: --opt ref=REGISTRY/REPO:TAG (or volume-opt=ref=...)")
        })?;
        let parsed: Reference = reference.parse()?;
        let filters: Vec<String> = opts
            .get("filter")
            .map(|f| {
                f.split(';')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        for f in &filters {
            f.parse::<kitsnap_core::layers::Filter>()?;
        }
        let v = Volume {
            name: r.name.clone(),
            reference: parsed.to_string(),
            namespace: opts
                .get("namespace")
                .cloned()
                .unwrap_or_else(|| crate::containerd::DEFAULT_NAMESPACE.into()),
            filters,
            plain_http: opts.get("plain-http").is_some_and(|v| v == "true")
                || self.plain_http.contains(&parsed.registry),
        };
        if let Ok(old) = self.volume(&r.name) {
            if old == v {
                return Ok(());
            }
            return Err(Error::invalid(format!(
                "volume {:?} exists for {}; remove it first",
                r.name, old.reference
            )));
        }
        self.node.put_volume(&v).await
    }

    async fn remove(&self, r: &Req) -> Result<()> {
        let v = self.volume(&r.name)?;
        if let Some(m) = self
            .node
            .mounts()?
            .into_iter()
            .find(|m| m.name == v.mount_name())
        {
            if !m.holders.is_empty() {
                return Err(Error::invalid(format!(
                    "volume {:?} is in use by {} container(s)",
                    r.name,
                    m.holders.len()
                )));
            }
            self.node.unmount(&m.name, "", true).await?;
        }
        self.node.delete_volume(&r.name).await
    }

    async fn mount(&self, r: &Req) -> Result<String> {
        let v = self.volume(&r.name)?;
        let mut registry = self.node.registry.clone();
        registry.plain_http |= v.plain_http;
        let m = self
            .node
            .mount(
                MountRequest {
                    reference: v.reference.parse()?,
                    namespace: v.namespace.clone(),
                    filters: v.filters.clone(),
                    name: Some(v.mount_name()),
                    holder: if r.id.is_empty() {
                        "docker".into()
                    } else {
                        r.id.clone()
                    },
                    store: None,
                    registry,
                },
                &crate::node::pull::Events::none(),
            )
            .await?;
        Ok(m.record.path.to_string_lossy().into_owned())
    }

    async fn unmount(&self, r: &Req) -> Result<()> {
        let v = self.volume(&r.name)?;
        let holder = if r.id.is_empty() {
            "docker"
        } else {
            r.id.as_str()
        };
        self.node.unmount(&v.mount_name(), holder, false).await?;
        Ok(())
    }
}
