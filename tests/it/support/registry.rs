//! A real OCI registry (Debian's `docker-registry`, CNCF distribution) started per test on
//! 127.0.0.1, optionally with TLS and htpasswd auth; and a loopback proxy in front of it
//! that can demand bearer tokens or inject faults.

use std::convert::Infallible;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// The registry binary is installed (`require_registry!()` checks it).
pub fn have_registry() -> bool {
    Path::new(REGISTRY_BIN).exists()
}

/// A port nothing listens on now, never handed out before in this process: the suites run
/// concurrently, and a port given to one test's registry (or kept dead on purpose) must not
/// be given to another's.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn wait_port(port: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
pub fn make_tls(dir: &Path) -> Tls {
    let sh = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    sh(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=kitsnap test CA",
    ]);
    sh(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    sh(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    Tls {
        ca: dir.join("ca.crt"),
        cert: dir.join("srv.crt"),
        key: dir.join("srv.key"),
    }
}

pub struct RegistryProc {
    pub port: u16,
    child: Child,
}

impl RegistryProc {
    /// Starts a registry storing under `dir`. `htpasswd` is (user, password).
    pub fn start(dir: &Path, tls: Option<&Tls>, htpasswd: Option<(&str, &str)>) -> RegistryProc {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: kitsnap-test\n",
            dir.join("data").display()
        );
        if let Some(t) = tls {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.cert.display(),
                t.key.display()
            ));
        }
        if let Some((u, p)) = htpasswd {
            let hash = bcrypt::hash(p, 5).unwrap();
            std::fs::write(dir.join("htpasswd"), format!("{u}:{hash}\n")).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kitsnap-test\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        std::fs::write(dir.join("config.yml"), cfg).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .args(["serve", dir.join("config.yml").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        wait_port(port);
        RegistryProc { port, child }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for RegistryProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy does to traffic; counters record what it saw.
#[derive(Default)]
pub struct Faults {
    /// Answer this many blob GETs with 500 first.
    pub blob_get_500s: AtomicUsize,
    /// Cut the connection after this many body bytes on the next full blob GET (0: off).
    pub cut_blob_after: AtomicU64,
    /// Flip a byte in every blob GET body.
    pub corrupt_blobs: AtomicBool,
    /// Flip a byte in the body of GETs of this one blob (a digest).
    pub corrupt_digest: std::sync::Mutex<Option<String>>,
    /// Answer this many PATCH requests with 500 (after reading their body).
    pub patch_500s: AtomicUsize,
    /// Answer this many streamed PATCHes (no Content-Length) with 500, after reading them.
    pub streamed_patch_500s: AtomicUsize,
    /// Streamed PATCHes seen.
    pub streamed_patches: AtomicUsize,
    /// Answer every streamed PATCH with this status (0: off), as a front end that takes
    /// ranged chunks but not a body of unknown length would.
    pub refuse_streamed_patch: std::sync::atomic::AtomicU16,
    /// Answer every PATCH with this status (0: off), as registries that refuse chunked
    /// uploads do (405, or Google Artifact Registry-style 201 without taking the data).
    pub refuse_patch: std::sync::atomic::AtomicU16,
    /// PATCH requests seen, and PUTs that carried a body (monolithic uploads).
    pub patches: AtomicUsize,
    pub puts_with_body: AtomicUsize,
    /// Serve this many bytes of junk as every manifest (0: off).
    pub huge_manifest: AtomicU64,
    /// Require `Authorization: Bearer` tokens from /token (basic-auth checked if set).
    pub bearer: Option<(String, String)>,
    pub tokens_issued: AtomicUsize,
    pub range_requests: AtomicUsize,
    pub unauthorized: AtomicUsize,
    pub requests: AtomicUsize,
    /// Send blob GET bodies at most this many bytes per second (0: as fast as they come).
    /// Read for every 4 KiB piece, so a test can slow a download down and let it go.
    pub throttle_blob_bps: AtomicU64,
    /// Blob GET body bytes sent to clients so far (to see that a download is under way).
    pub blob_bytes_sent: AtomicU64,
    /// Blob GET bodies being sent now, and the most at once so far.
    pub blob_gets_in_flight: AtomicUsize,
    pub blob_gets_peak: AtomicUsize,
    /// Hold whole-blob GETs (no `Range`) of this blob (a digest) until it is cleared;
    /// ranged GETs pass.
    pub hold_whole_blob: std::sync::Mutex<Option<String>>,
    /// Forward GETs without their `Range` header, as a registry that ignores it would:
    /// every ranged GET is answered 200 with the whole blob.
    pub ignore_range: AtomicBool,
    /// Whole-blob GETs that were held.
    pub whole_blob_gets_held: AtomicUsize,
    /// Answer PUTs of manifests under `sha256-*` tags (the referrers fallback) with 500.
    pub refuse_referrer_tags: AtomicBool,
    /// Stop reading this many upload bodies (PATCH or PUT, over 4 MiB or streamed) after
    /// their first MiB, as a registry that hangs would; none of it reaches the registry.
    pub stall_uploads: AtomicUsize,
    pub uploads_stalled: AtomicUsize,
}

/// Counts one blob GET body in flight for as long as it lives.
struct InFlight(Arc<Faults>);

impl InFlight {
    fn new(f: Arc<Faults>) -> InFlight {
        let n = f.blob_gets_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        f.blob_gets_peak.fetch_max(n, Ordering::SeqCst);
        InFlight(f)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.blob_gets_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;
type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, BoxError>> + Send + Sync>>;

/// A blob body sent in 4 KiB pieces at `throttle_blob_bps` (re-read for every piece),
/// counting what it sends in `blob_bytes_sent`.
fn throttled(inner: ByteStream, f: Arc<Faults>) -> ByteStream {
    const PIECE: usize = 4096;
    Box::pin(futures_util::stream::unfold(
        (inner, Bytes::new(), f),
        |(mut inner, mut pending, f)| async move {
            while pending.is_empty() {
                match inner.next().await {
                    None => return None,
                    Some(Err(e)) => return Some((Err(e), (inner, pending, f))),
                    Some(Ok(b)) => pending = b,
                }
            }
            let rate = f.throttle_blob_bps.load(Ordering::SeqCst);
            let n = pending.len().min(PIECE);
            // Rate 0 (no division): unthrottled, all at once.
            let piece = match (n as u64 * 1_000_000_000).checked_div(rate) {
                None => std::mem::take(&mut pending),
                Some(nanos) => {
                    tokio::time::sleep(Duration::from_nanos(nanos)).await;
                    pending.split_to(n)
                }
            };
            f.blob_bytes_sent
                .fetch_add(piece.len() as u64, Ordering::SeqCst);
            Some((Ok(piece), (inner, pending, f)))
        },
    ))
}

fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub struct Proxy {
    pub port: u16,
    pub faults: Arc<Faults>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Starts the proxy in front of `upstream` (plain HTTP registry address).
pub fn start_proxy(upstream: &str, faults: Faults) -> Proxy {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let faults = Arc::new(faults);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = upstream.to_string();
    let f = faults.clone();
    rt.spawn(async move {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (f, client, upstream) = (f.clone(), client.clone(), upstream.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (f, client, upstream) = (f.clone(), client.clone(), upstream.clone());
                    async move { Ok::<_, Infallible>(handle(req, f, &client, &upstream, port).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Proxy {
        port,
        faults,
        _rt: rt,
    }
}

fn repo_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    for marker in ["/blobs/", "/manifests/", "/tags/"] {
        if let Some(i) = rest.find(marker) {
            return Some(rest[..i].to_string());
        }
    }
    None
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    f: Arc<Faults>,
    client: &reqwest::Client,
    upstream: &str,
    port: u16,
) -> Response<Body> {
    f.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let method = req.method().clone();

    if let Some((user, pass)) = &f.bearer {
        if path == "/token" {
            let want = format!(
                "Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{user}:{pass}")
                )
            );
            let got = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if got != want {
                return Response::builder()
                    .status(401)
                    .body(full("bad credentials"))
                    .unwrap();
            }
            f.tokens_issued.fetch_add(1, Ordering::SeqCst);
            let scopes: Vec<String> =
                url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v.into_owned())
                    .collect();
            let tok = format!("tok:{}", scopes.join(" "));
            return Response::builder()
                .header("content-type", "application/json")
                .body(full(serde_json::json!({"token": tok}).to_string()))
                .unwrap();
        }
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let repo = repo_of(&path);
        let need = if method == hyper::Method::GET || method == hyper::Method::HEAD {
            "pull"
        } else {
            "push"
        };
        let ok = match &repo {
            None => auth.starts_with("Bearer tok:"),
            Some(r) => auth.strip_prefix("Bearer tok:").is_some_and(|t| {
                t.split(' ')
                    .any(|s| s.starts_with(&format!("repository:{r}:")) && s.contains(need))
            }),
        };
        if !ok {
            f.unauthorized.fetch_add(1, Ordering::SeqCst);
            let scope = repo
                .map(|r| format!(",scope=\"repository:{r}:{need}\""))
                .unwrap_or_default();
            return Response::builder()
                .status(401)
                .header("www-authenticate", format!("Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"kitsnap-test\"{scope}"))
                .body(full("{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"token required\"}]}"))
                .unwrap();
        }
    }

    let is_blob_get = method == hyper::Method::GET && path.contains("/blobs/sha256:");
    if is_blob_get && f.blob_get_500s.load(Ordering::SeqCst) > 0 {
        f.blob_get_500s.fetch_sub(1, Ordering::SeqCst);
        return Response::builder()
            .status(500)
            .body(full("injected"))
            .unwrap();
    }
    if method == hyper::Method::PUT
        && path.contains("/manifests/sha256-")
        && f.refuse_referrer_tags.load(Ordering::SeqCst)
    {
        return Response::builder()
            .status(500)
            .body(full("injected"))
            .unwrap();
    }
    if method == hyper::Method::GET && path.contains("/manifests/") {
        let n = f.huge_manifest.load(Ordering::SeqCst);
        if n > 0 {
            return Response::builder()
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body(full(vec![b' '; n as usize]))
                .unwrap();
        }
    }
    if req.headers().contains_key("range") {
        f.range_requests.fetch_add(1, Ordering::SeqCst);
    } else if is_blob_get {
        let held = || {
            f.hold_whole_blob
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|d| path.ends_with(d.as_str()))
        };
        if held() {
            f.whole_blob_gets_held.fetch_add(1, Ordering::SeqCst);
            while held() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    let mut up = client.request(method.clone(), format!("http://{upstream}{path}{query}"));
    for (k, v) in req.headers() {
        let dropped = k == "range" && f.ignore_range.load(Ordering::SeqCst);
        if k != "host" && !dropped && !(f.bearer.is_some() && k == "authorization") {
            up = up.header(k, v);
        }
    }
    // Let the registry build Location URLs that point back at the proxy.
    up = up
        .header("x-forwarded-host", format!("127.0.0.1:{port}"))
        .header("x-forwarded-proto", "http");
    let streamed = method == hyper::Method::PATCH && !req.headers().contains_key("content-length");
    let length = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let upload = (method == hyper::Method::PATCH || method == hyper::Method::PUT)
        && length.is_none_or(|n| n > 4 << 20);
    if upload
        && f.stall_uploads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        f.uploads_stalled.fetch_add(1, Ordering::SeqCst);
        let mut body = req.into_body();
        let mut got = 0;
        while got < 1 << 20 {
            match body.frame().await {
                Some(Ok(fr)) => got += fr.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
        // Reads nothing more: the client must notice and give up on this request.
        tokio::time::sleep(Duration::from_secs(600)).await;
        return Response::builder().status(500).body(full("")).unwrap();
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Response::builder().status(400).body(full("")).unwrap(),
    };
    if method == hyper::Method::PATCH {
        f.patches.fetch_add(1, Ordering::SeqCst);
        let st = f.refuse_patch.load(Ordering::SeqCst);
        if st != 0 {
            return Response::builder()
                .status(st)
                .body(full("chunked uploads are not supported"))
                .unwrap();
        }
    }
    if method == hyper::Method::PUT && !body.is_empty() {
        f.puts_with_body.fetch_add(1, Ordering::SeqCst);
    }
    if streamed {
        f.streamed_patches.fetch_add(1, Ordering::SeqCst);
        let st = f.refuse_streamed_patch.load(Ordering::SeqCst);
        if st != 0 {
            return Response::builder()
                .status(st)
                .body(full("a body of unknown length is refused"))
                .unwrap();
        }
        if f.streamed_patch_500s.load(Ordering::SeqCst) > 0 {
            f.streamed_patch_500s.fetch_sub(1, Ordering::SeqCst);
            return Response::builder()
                .status(500)
                .body(full("injected"))
                .unwrap();
        }
    }
    if method == hyper::Method::PATCH && f.patch_500s.load(Ordering::SeqCst) > 0 {
        f.patch_500s.fetch_sub(1, Ordering::SeqCst);
        return Response::builder()
            .status(500)
            .body(full("injected"))
            .unwrap();
    }
    let resp = match up.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(full(e.to_string()))
                .unwrap();
        }
    };
    let mut out = Response::builder().status(StatusCode::from_u16(resp.status().as_u16()).unwrap());
    for (k, v) in resp.headers() {
        out = out.header(k, v);
    }
    let full_get = is_blob_get && resp.status() == reqwest::StatusCode::OK;
    let cut = if full_get {
        f.cut_blob_after.load(Ordering::SeqCst)
    } else {
        0
    };
    let corrupt = is_blob_get
        && (f.corrupt_blobs.load(Ordering::SeqCst)
            || f.corrupt_digest
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|d| path.ends_with(d.as_str())));
    let mut sent = 0u64;
    let mut flipped = false;
    let tf = f.clone();
    let in_flight = full_get.then(|| InFlight::new(f.clone()));
    let stream = resp
        .bytes_stream()
        .map(move |chunk| -> Result<Bytes, BoxError> {
            let _counted = &in_flight;
            let mut chunk: Vec<u8> = chunk.map_err(|e| Box::new(e) as BoxError)?.to_vec();
            if corrupt && !flipped && !chunk.is_empty() {
                let i = chunk.len() / 2;
                chunk[i] ^= 0x55;
                flipped = true;
            }
            // Only one download is cut: the first that gets past `cut` bytes.
            if cut > 0
                && sent + chunk.len() as u64 > cut
                && f.cut_blob_after.swap(0, Ordering::SeqCst) != 0
            {
                return Err("injected connection cut".into());
            }
            sent += chunk.len() as u64;
            Ok(Bytes::from(chunk))
        });
    let stream: ByteStream = if is_blob_get {
        throttled(Box::pin(stream), tf)
    } else {
        Box::pin(stream)
    };
    out.body(BodyExt::boxed(StreamBody::new(
        stream.map(|r| r.map(Frame::data)),
    )))
    .unwrap()
}
