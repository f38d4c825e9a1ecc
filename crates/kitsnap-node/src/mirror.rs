//! The node-local registry mirror: the OCI distribution read API (`/v2/`, manifests and
//! blobs, GET and HEAD, Range) on loopback, named as a mirror in containerd's `hosts.toml`
//! (`capabilities = ["pull", "resolve"]`), as Spegel and Dragonfly are.
//!
//! Each request goes to the upstream named by containerd's `?ns=` parameter, through the
//! node's other mirrors for that host (its `hosts.toml`), never back to this one:
//! - ordinary images pass through unchanged (status, digests, bytes, streamed);
//! - a ModelKit or ModelPack manifest asked for by tag is answered with its image view
//!   ([`kitsnap_core::imageview`]); the view's own documents (index, manifest, config, the
//!   tar around a raw layer) are served from here, the kit's blobs stream from upstream;
//! - a ModelKit manifest asked for by its own digest cannot be substituted (the digest
//!   would not match): the answer is an error naming the view's digest;
//! - kitsnap's own clients (User-Agent `kitsnap/*`: the daemon's pulls, the CLI) get the
//!   kit itself, so they may share containerd's hosts directory.
//!
//! The mirror holds no credentials. The client's `Authorization` goes upstream and the
//! upstream's `WWW-Authenticate` challenge comes back, so containerd (and kubelet's pull
//! secrets) authenticate as without the mirror; a generated document is only served after
//! the upstream has let the same client see the kit it was made from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use kitsnap_core::digest::Digest;
use kitsnap_core::imageview::{self, ImageView, Kit};
use kitsnap_core::oci::{Descriptor, MEDIA_TYPE_MANIFEST, Manifest};
use kitsnap_registry::client::{ClientOptions, http_client};
use kitsnap_registry::hosts::{self, HostEndpoint};
use kitsnap_registry::transfer::ChannelReader;

/// Default listen address (loopback only: containerd on this node is the one client).
pub const DEFAULT_ADDR: &str = "127.0.0.1:5050";
/// Marks the mirror's own upstream requests, so a hosts.toml that sends them back here is
/// caught at once.
const LOOP_HEADER: &str = "x-kitsnap-mirror";
/// Largest manifest or config the mirror reads into memory.
const MAX_DOC: u64 = 4 << 20;

type Body = BoxBody<Bytes, std::io::Error>;

/// Where the mirror listens: `HOST:PORT`, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorAddr(pub Option<SocketAddr>);

impl std::str::FromStr for MirrorAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<MirrorAddr, String> {
        match s {
            "off" | "" => Ok(MirrorAddr(None)),
            _ => s.parse().map(|a| MirrorAddr(Some(a))).map_err(|_| {
                format!("{s:?} is not an address: use IP:PORT (e.g. {DEFAULT_ADDR}) or off")
            }),
        }
    }
}

impl<'de> Deserialize<'de> for MirrorAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MirrorAddr, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What the mirror serves itself, by digest (also kept on disk under `<root>/mirror`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Served {
    media_type: String,
    /// The ModelKit manifest it was made from: the upstream must show it to the client
    /// before the document is served.
    kit: Digest,
    /// A generated tar around this raw blob (the bytes stream from upstream).
    raw: Option<RawSource>,
    #[serde(skip)]
    bytes: Bytes,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RawSource {
    blob: Descriptor,
    path: String,
}

pub struct Mirror {
    addr: SocketAddr,
    dir: PathBuf,
    registry: ClientOptions,
    /// Hosts reached over plain HTTP when no hosts.toml names their scheme.
    plain_http: Vec<String>,
    served: Mutex<HashMap<Digest, Arc<Served>>>,
    /// Diff IDs computed by reading blobs (compressed, raw), by blob digest.
    diffs: Mutex<HashMap<Digest, Digest>>,
    clients: Mutex<HashMap<String, reqwest::Client>>,
    /// Told where the layers of every view served live, to fill them when containerd asks.
    filler: Option<Arc<crate::node::fill::Filler>>,
}

/// A failed request, as the distribution spec's error envelope.
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn fail(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        status,
        code,
        message: message.into(),
    }
}

/// An upstream answer passed to the client (error statuses, auth challenges).
enum Reply {
    Failure(Failure),
    Upstream(Box<reqwest::Response>),
}

impl From<Failure> for Reply {
    fn from(f: Failure) -> Reply {
        Reply::Failure(f)
    }
}

impl Mirror {
    pub fn new(
        addr: SocketAddr,
        root: &std::path::Path,
        registry: ClientOptions,
        plain_http: Vec<String>,
        filler: Option<Arc<crate::node::fill::Filler>>,
    ) -> Mirror {
        Mirror {
            addr,
            dir: root.join("mirror"),
            registry,
            plain_http,
            served: Mutex::new(HashMap::new()),
            diffs: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            filler,
        }
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        stop: CancellationToken,
    ) {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = stop.cancelled() => return,
            };
            let (stream, _) = match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "mirror: accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let m = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let m = m.clone();
                    async move { Ok::<_, std::convert::Infallible>(m.handle(req).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await
                {
                    tracing::debug!(error = %e, "mirror: connection");
                }
            });
        }
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let started = std::time::Instant::now();
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let resp = match self.route(&req).await {
            Ok(r) => r,
            Err(Reply::Failure(f)) => error_response(&f, req.method() == Method::HEAD),
            Err(Reply::Upstream(r)) => passthrough(*r, req.method() == Method::HEAD),
        };
        tracing::debug!(%method, %path, status = resp.status().as_u16(), ms = started.elapsed().as_millis() as u64, "mirror");
        let m = crate::metrics::metrics();
        let what = if path.contains("/manifests/") {
            "manifest"
        } else if path.contains("/blobs/") {
            "blob"
        } else {
            "other"
        };
        m.observe(
            "mirror",
            &format!("{method} {what}"),
            started.elapsed().as_secs_f64(),
        );
        if resp.status().is_server_error() {
            m.error("mirror");
        }
        resp
    }

    async fn route(&self, req: &Request<hyper::body::Incoming>) -> Result<Response<Body>, Reply> {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                return Err(fail(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "UNSUPPORTED",
                    "the kitsnap mirror serves pulls only (GET, HEAD)",
                )
                .into());
            }
        };
        if req.headers().contains_key(LOOP_HEADER) {
            return Err(fail(
                StatusCode::LOOP_DETECTED,
                "UNSUPPORTED",
                "the kitsnap mirror received its own upstream request: a hosts.toml names the mirror as the upstream server; name the registry itself as `server`",
            )
            .into());
        }
        let path = req.uri().path();
        if path == "/v2/" || path == "/v2" {
            return Ok(json_response(
                StatusCode::OK,
                Bytes::from_static(b"{}"),
                head,
            ));
        }
        let ns = req
            .uri()
            .query()
            .and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "ns")
                    .map(|(_, v)| v.into_owned())
            })
            .ok_or_else(|| {
                fail(
                    StatusCode::BAD_REQUEST,
                    "UNSUPPORTED",
                    "no ?ns= parameter: the kitsnap mirror is used through containerd's hosts.toml, which names the upstream registry in ?ns=",
                )
            })?;
        let rest = path.strip_prefix("/v2/").ok_or_else(|| {
            fail(
                StatusCode::NOT_FOUND,
                "UNSUPPORTED",
                format!("{path}: not a /v2/ path"),
            )
        })?;
        if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
            self.manifest(&ns, name, reference, req.headers(), head)
                .await
        } else if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
            let digest: Digest = digest.parse().map_err(|_| {
                fail(
                    StatusCode::BAD_REQUEST,
                    "DIGEST_INVALID",
                    format!("{digest:?} is not a digest"),
                )
            })?;
            self.blob(&ns, name, &digest, req.headers(), head).await
        } else {
            Err(fail(
                StatusCode::NOT_FOUND,
                "UNSUPPORTED",
                format!("{path}: the kitsnap mirror serves manifests and blobs"),
            )
            .into())
        }
    }

    async fn manifest(
        &self,
        ns: &str,
        name: &str,
        reference: &str,
        client: &HeaderMap,
        head: bool,
    ) -> Result<Response<Body>, Reply> {
        let by_digest = reference.parse::<Digest>().ok();
        if let Some(d) = &by_digest
            && let Some(doc) = self.served(d).await
        {
            self.check_access(ns, name, &doc, client).await?;
            return Ok(doc_response(d, &doc, head));
        }
        let resp = self
            .upstream(
                ns,
                Method::GET,
                &format!("{name}/manifests/{reference}"),
                client,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(Reply::Upstream(Box::new(resp)));
        }
        let media_type = header_str(resp.headers(), header::CONTENT_TYPE);
        let upstream_digest = header_str(
            resp.headers(),
            HeaderName::from_static("docker-content-digest"),
        );
        let bytes = read_limited(resp, MAX_DOC).await?;
        // kitsnap's own clients (the daemon's pulls, the CLI through containerd's hosts
        // dir) want the kit itself.
        let kitsnap_client = header_str(client, header::USER_AGENT).starts_with("kitsnap/");
        let kit = serde_json::from_slice::<Manifest>(&bytes)
            .ok()
            .filter(|m| m.model_format().is_some() && !media_type.contains("index"))
            .filter(|_| !kitsnap_client);
        let Some(manifest) = kit else {
            // An ordinary image, index or anything else: unchanged.
            let mut r = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, media_type)
                .header(header::CONTENT_LENGTH, bytes.len());
            if !upstream_digest.is_empty() {
                r = r.header("docker-content-digest", upstream_digest);
            }
            return Ok(with_body(r, bytes, head));
        };
        let kit_desc = Descriptor {
            media_type: if media_type.is_empty() {
                MEDIA_TYPE_MANIFEST.into()
            } else {
                media_type
            },
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
            ..Default::default()
        };
        let view = self.view(ns, name, kit_desc, manifest, client).await?;
        if by_digest.is_some() {
            return Err(fail(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!(
                    "{name}@{reference} is a ModelKit manifest, which containerd cannot unpack, and a digest cannot be answered with another document: pull its image view {name}@{} (see `kitsnap inspect --image-view`), or pull by tag",
                    view.index.desc.digest
                ),
            )
            .into());
        }
        let d = view.index.desc.digest.clone();
        let doc = self.served(&d).await.ok_or_else(|| {
            fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "image view not kept",
            )
        })?;
        Ok(doc_response(&d, &doc, head))
    }

    async fn blob(
        &self,
        ns: &str,
        name: &str,
        digest: &Digest,
        client: &HeaderMap,
        head: bool,
    ) -> Result<Response<Body>, Reply> {
        let Some(doc) = self.served(digest).await else {
            let method = if head { Method::HEAD } else { Method::GET };
            let resp = self
                .upstream(ns, method, &format!("{name}/blobs/{digest}"), client)
                .await?;
            return Ok(passthrough(resp, head));
        };
        self.check_access(ns, name, &doc, client).await?;
        let Some(raw) = &doc.raw else {
            return Ok(doc_response(digest, &doc, head));
        };
        // A raw layer as a tar: the header, the kit's blob from upstream, the padding.
        let wrapper = imageview::RawWrapper::for_blob(&raw.path, &raw.blob)
            .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()))?;
        let r = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, wrapper.size())
            .header("docker-content-digest", digest.to_string());
        if head {
            return Ok(with_body(r, Bytes::new(), true));
        }
        let resp = self.whole_blob(ns, name, &raw.blob.digest, client).await?;
        let prefix = Bytes::from(wrapper.prefix().to_vec());
        let suffix = Bytes::from(wrapper.suffix());
        let stream = futures_util::stream::once(async move { Ok(prefix) })
            .chain(resp.bytes_stream().map_err(std::io::Error::other))
            .chain(futures_util::stream::once(async move { Ok(suffix) }));
        body_of(
            r,
            BodyExt::boxed(StreamBody::new(stream.map_ok(Frame::data))),
        )
    }

    /// A whole blob from upstream (no Range: the mirror reads it from its start), or the
    /// upstream's refusal passed on.
    async fn whole_blob(
        &self,
        ns: &str,
        name: &str,
        digest: &Digest,
        client: &HeaderMap,
    ) -> Result<reqwest::Response, Reply> {
        let mut plain = client.clone();
        plain.remove(header::RANGE);
        let resp = self
            .upstream(ns, Method::GET, &format!("{name}/blobs/{digest}"), &plain)
            .await?;
        if !resp.status().is_success() {
            return Err(Reply::Upstream(Box::new(resp)));
        }
        Ok(resp)
    }

    /// Asks the upstream, with the client's credentials, for the kit a document was made
    /// from: the document is only served when that succeeds.
    async fn check_access(
        &self,
        ns: &str,
        name: &str,
        doc: &Served,
        client: &HeaderMap,
    ) -> Result<(), Reply> {
        // GET, not HEAD: a refusal is passed on with its body. Only the client's
        // credentials go along; the Accept header is the kit's own type (a registry
        // refuses an OCI manifest to a client that does not accept it).
        let mut h = HeaderMap::new();
        for v in client.get_all(header::AUTHORIZATION) {
            h.append(header::AUTHORIZATION, v.clone());
        }
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(MEDIA_TYPE_MANIFEST),
        );
        let resp = self
            .upstream(
                ns,
                Method::GET,
                &format!("{name}/manifests/{}", doc.kit),
                &h,
            )
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Reply::Upstream(Box::new(resp)))
        }
    }

    /// The image view of a kit, kept for the requests that follow (by digest).
    async fn view(
        &self,
        ns: &str,
        name: &str,
        kit_desc: Descriptor,
        manifest: Manifest,
        client: &HeaderMap,
    ) -> Result<ImageView, Reply> {
        let bad_kit = |e: kitsnap_core::Error| {
            fail(
                StatusCode::BAD_GATEWAY,
                "MANIFEST_INVALID",
                format!("ModelKit {}: {e}", kit_desc.digest),
            )
        };
        let cfg = manifest.config.clone();
        if cfg.size > MAX_DOC {
            return Err(bad_kit(kitsnap_core::Error::Invalid(format!(
                "config of {} bytes",
                cfg.size
            )))
            .into());
        }
        let resp = self
            .upstream(
                ns,
                Method::GET,
                &format!("{name}/blobs/{}", cfg.digest),
                client,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(Reply::Upstream(Box::new(resp)));
        }
        let config = read_limited(resp, MAX_DOC).await?;
        if Digest::of(&config) != cfg.digest {
            return Err(fail(
                StatusCode::BAD_GATEWAY,
                "BLOB_UNKNOWN",
                format!(
                    "the upstream's config blob {} does not match its digest",
                    cfg.digest
                ),
            )
            .into());
        }
        let kit = Kit::new(kit_desc.clone(), manifest, config.to_vec()).map_err(bad_kit)?;
        let layers = kit.select(&[]).map_err(bad_kit)?;
        let mut diffs = Vec::with_capacity(layers.len());
        for l in &layers {
            let known = kit.known_diff_id(l).or_else(|| {
                self.diffs
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&l.desc.digest).cloned())
            });
            let d = match known {
                Some(d) => d,
                None => {
                    let d = self.compute_diff_id(ns, name, l, client).await?;
                    if let Ok(mut m) = self.diffs.lock() {
                        m.insert(l.desc.digest.clone(), d.clone());
                    }
                    d
                }
            };
            diffs.push(d);
        }
        let view = imageview::synthesize(&kit, &layers, &diffs, "").map_err(bad_kit)?;
        if let Some(f) = &self.filler {
            f.record(ns, name, Some(&kit_desc.digest), &layers);
        }
        let mut docs: Vec<_> = view
            .docs()
            .map(|d| (&d.desc, d.bytes.clone(), None))
            .collect();
        for l in &view.layers {
            if l.raw.is_some() {
                let raw = RawSource {
                    blob: l.plan.desc.clone(),
                    path: l.plan.path.clone(),
                };
                docs.push((&l.desc, Vec::new(), Some(raw)));
            }
        }
        for (desc, bytes, raw) in docs {
            let served = Served {
                media_type: desc.media_type.clone(),
                kit: kit_desc.digest.clone(),
                raw,
                bytes: Bytes::from(bytes),
            };
            self.keep(&desc.digest, served).await;
        }
        tracing::info!(kit = %kit_desc.digest, view = %view.index.desc.digest, %ns, %name, "mirror: image view");
        Ok(view)
    }

    /// Streams a compressed or raw layer from upstream once to learn its diff ID.
    async fn compute_diff_id(
        &self,
        ns: &str,
        name: &str,
        l: &kitsnap_core::layers::LayerPlan,
        client: &HeaderMap,
    ) -> Result<Digest, Reply> {
        let resp = self.whole_blob(ns, name, &l.desc.digest, client).await?;
        let (tx, reader) = ChannelReader::hashed_pipe(16);
        let plan = l.clone();
        let worker = tokio::task::spawn_blocking(move || imageview::diff_id_of(reader, &plan));
        let mut stream = resp.bytes_stream();
        let mut broken = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => {
                    if tx.send(b).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let hashed = worker
            .await
            .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()))?;
        if let Some(e) = broken {
            return Err(fail(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                format!("reading layer {} from the upstream: {e}", l.desc.digest),
            )
            .into());
        }
        hashed.map_err(|e| {
            fail(
                StatusCode::BAD_GATEWAY,
                "BLOB_UNKNOWN",
                format!("layer {} from the upstream: {e}", l.desc.digest),
            )
            .into()
        })
    }

    /// A document by digest: in memory, else from disk (kept across restarts).
    async fn served(&self, d: &Digest) -> Option<Arc<Served>> {
        if let Some(s) = self.served.lock().ok()?.get(d) {
            return Some(s.clone());
        }
        let (meta, data) = (self.doc_path(d, "json"), self.doc_path(d, "bin"));
        let loaded = tokio::task::spawn_blocking(move || -> Option<Served> {
            let mut s: Served = serde_json::from_slice(&std::fs::read(meta).ok()?).ok()?;
            s.bytes = Bytes::from(std::fs::read(data).ok()?);
            Some(s)
        })
        .await
        .ok()??;
        if loaded.raw.is_none() && Digest::of(&loaded.bytes) != *d {
            return None;
        }
        let s = Arc::new(loaded);
        self.served.lock().ok()?.insert(d.clone(), s.clone());
        Some(s)
    }

    async fn keep(&self, d: &Digest, s: Served) {
        let (meta, data, dir) = (
            self.doc_path(d, "json"),
            self.doc_path(d, "bin"),
            self.dir.clone(),
        );
        let json = serde_json::to_vec(&s).unwrap_or_default();
        let bytes = s.bytes.clone();
        if let Ok(mut m) = self.served.lock() {
            m.insert(d.clone(), Arc::new(s));
        }
        // Written whole (temporary name, then rename): a crash leaves the old file or none.
        let saved = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            for (path, content) in [(data, &bytes[..]), (meta, &json[..])] {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, content)?;
                std::fs::rename(&tmp, &path)?;
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(error = %e, "mirror: keeping a generated document on disk");
        }
    }

    fn doc_path(&self, d: &Digest, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", d.hex()))
    }

    /// The upstream's answer for `path` (after `/v2/`): the node's mirrors for `ns` in
    /// hosts.toml order, then the registry itself, skipping this mirror. Connection
    /// failures and 404s move on to the next endpoint, as containerd does.
    async fn upstream(
        &self,
        ns: &str,
        method: Method,
        path: &str,
        client: &HeaderMap,
    ) -> Result<reqwest::Response, Failure> {
        let endpoints = self.endpoints(ns).await?;
        let mut last = None;
        let n = endpoints.len();
        for (i, (ep, http)) in endpoints.into_iter().enumerate() {
            let url = format!("{}/{path}?ns={ns}", ep.api);
            let mut req = http.request(method.clone(), &url).header(LOOP_HEADER, "1");
            for h in [
                header::AUTHORIZATION,
                header::ACCEPT,
                header::RANGE,
                header::USER_AGENT,
            ] {
                for v in client.get_all(&h) {
                    req = req.header(h.clone(), v.clone());
                }
            }
            for (k, v) in &ep.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            match req.send().await {
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND && i + 1 < n => {
                    last = Some(format!("{url}: HTTP 404"));
                }
                Ok(r) => return Ok(r),
                Err(e) => {
                    last = Some(format!(
                        "{url}: {}",
                        kitsnap_registry::client::error_chain(&e)
                    ));
                }
            }
        }
        Err(fail(
            StatusCode::BAD_GATEWAY,
            "UNKNOWN",
            format!(
                "the kitsnap mirror could not reach {ns}: {}",
                last.unwrap_or_else(|| "no endpoint".into())
            ),
        ))
    }

    /// The endpoints for `ns` that can pull, without this mirror.
    async fn endpoints(&self, ns: &str) -> Result<Vec<(HostEndpoint, reqwest::Client)>, Failure> {
        let plain = self.plain_http.iter().any(|h| h == ns);
        let (ns2, opts) = (ns.to_string(), self.registry.clone());
        let eps = tokio::task::spawn_blocking(move || {
            hosts::endpoints(&ns2, opts.hosts_dir.as_deref(), plain)
        })
        .await
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()))?
        .map_err(|e| {
            fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                format!("hosts.toml for {ns}: {e}"),
            )
        })?;
        let mut out = Vec::new();
        for ep in eps.into_iter().filter(|e| e.pull && !self.is_self(&e.api)) {
            let key = format!("{}|{}|{:?}", ep.api, ep.skip_verify, ep.ca);
            let cached = self.clients.lock().ok().and_then(|m| m.get(&key).cloned());
            let client = match cached {
                Some(c) => c,
                None => {
                    let (opts, ep2) = (self.registry.clone(), ep.clone());
                    let c = tokio::task::spawn_blocking(move || http_client(&opts, &ep2))
                        .await
                        .map_err(|e| {
                            fail(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string())
                        })?
                        .map_err(|e| {
                            fail(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string())
                        })?;
                    if let Ok(mut m) = self.clients.lock() {
                        m.insert(key, c.clone());
                    }
                    c
                }
            };
            out.push((ep, client));
        }
        if out.is_empty() {
            return Err(fail(
                StatusCode::LOOP_DETECTED,
                "UNSUPPORTED",
                format!(
                    "hosts.toml for {ns} names only the kitsnap mirror: add the registry itself as `server`"
                ),
            ));
        }
        Ok(out)
    }

    /// Whether an endpoint URL is this mirror (its port on loopback or its own address).
    fn is_self(&self, api: &str) -> bool {
        let Ok(u) = url::Url::parse(api) else {
            return false;
        };
        if u.port_or_known_default() != Some(self.addr.port()) {
            return false;
        }
        match u.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => {
                ip.is_loopback() || self.addr.ip() == ip || self.addr.ip().is_unspecified()
            }
            Some(url::Host::Ipv6(ip)) => {
                ip.is_loopback() || self.addr.ip() == ip || self.addr.ip().is_unspecified()
            }
            None => false,
        }
    }
}

fn header_str(h: &HeaderMap, name: HeaderName) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn read_limited(resp: reqwest::Response, max: u64) -> Result<Bytes, Failure> {
    let url = resp.url().to_string();
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(fail(
            StatusCode::BAD_GATEWAY,
            "SIZE_INVALID",
            format!("{url}: more than {max} bytes for a manifest or config"),
        ));
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(c) = stream.next().await {
        let c = c.map_err(|e| {
            fail(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                format!("{url}: {}", kitsnap_registry::client::error_chain(&e)),
            )
        })?;
        out.extend_from_slice(&c);
        if out.len() as u64 > max {
            return Err(fail(
                StatusCode::BAD_GATEWAY,
                "SIZE_INVALID",
                format!("{url}: more than {max} bytes for a manifest or config"),
            ));
        }
    }
    Ok(Bytes::from(out))
}

fn body_of(r: hyper::http::response::Builder, body: Body) -> Result<Response<Body>, Reply> {
    r.body(body)
        .map_err(|e| fail(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()).into())
}

fn with_body(r: hyper::http::response::Builder, bytes: Bytes, head: bool) -> Response<Body> {
    let body = if head { Bytes::new() } else { bytes };
    r.body(Full::new(body).map_err(|never| match never {}).boxed())
        .unwrap_or_else(|_| {
            Response::new(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed(),
            )
        })
}

fn json_response(status: StatusCode, bytes: Bytes, head: bool) -> Response<Body> {
    let r = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, bytes.len())
        .header("docker-distribution-api-version", "registry/2.0");
    with_body(r, bytes, head)
}

fn doc_response(d: &Digest, doc: &Served, head: bool) -> Response<Body> {
    let r = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, doc.media_type.as_str())
        .header(header::CONTENT_LENGTH, doc.bytes.len())
        .header("docker-content-digest", d.to_string());
    with_body(r, doc.bytes.clone(), head)
}

fn error_response(f: &Failure, head: bool) -> Response<Body> {
    tracing::info!(status = f.status.as_u16(), code = f.code, message = %f.message, "mirror: error");
    let body = serde_json::json!({"errors": [{"code": f.code, "message": f.message}]});
    json_response(f.status, Bytes::from(body.to_string()), head)
}

/// The upstream's answer as it is: status, the headers a registry client reads, the body
/// streamed (a client that goes away drops the upstream connection with it).
fn passthrough(resp: reqwest::Response, head: bool) -> Response<Body> {
    let mut r = Response::builder().status(resp.status().as_u16());
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::ACCEPT_RANGES,
        header::ETAG,
        header::WWW_AUTHENTICATE,
        header::LAST_MODIFIED,
        HeaderName::from_static("docker-content-digest"),
        HeaderName::from_static("docker-distribution-api-version"),
    ] {
        for v in resp.headers().get_all(&name) {
            if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                r = r.header(name.clone(), v);
            }
        }
    }
    if head {
        return with_body(r, Bytes::new(), true);
    }
    let stream = resp
        .bytes_stream()
        .map_err(std::io::Error::other)
        .map_ok(Frame::data);
    r.body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| {
            Response::new(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed(),
            )
        })
}
