//! A distribution-v2 registry client for ModelKits: anonymous, basic and bearer-token auth,
//! mirrors from `hosts.toml`, retries with backoff, `Range`-resumed downloads, monolithic,
//! chunked and cross-repository-mount uploads. Bodies stream; memory does not grow with
//! blob size. Every downloaded byte is hashed, and a blob is only accepted whole and with
//! the digest and size its descriptor promises.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use reqwest::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;
use url::Url;

use kitsnap_core::digest::Digest;
use kitsnap_core::oci::{Descriptor, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use kitsnap_core::store::WritebackPacer;

use crate::credentials::{Credentials, DockerConfig};
use crate::error::{CoreError, Error, ErrorEnvelope, Result};
use crate::hosts::{self, HostEndpoint};
use crate::retry::{Backoff, retryable_status, retryable_transport};

/// Manifests beyond this size are refused rather than buffered.
pub const MAX_MANIFEST: usize = 4 << 20;
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Talk plain HTTP to the upstream registry.
    pub plain_http: bool,
    /// Verify TLS certificates (off: `--tls-verify=false`).
    pub tls_verify: bool,
    /// Extra CA certificates (PEM) to trust.
    pub ca_files: Vec<PathBuf>,
    /// containerd-style hosts directory for mirrors.
    pub hosts_dir: Option<PathBuf>,
    /// Docker config with credentials; default `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// Attempts after the first for 5xx answers and broken connections.
    pub retries: u32,
    /// 0: each blob goes up as one stream, resumed from the registry's offset if it breaks.
    /// Otherwise blobs above this size go in chunks of this size (for front ends that cap
    /// request bodies).
    pub chunk_size: u64,
    /// First backoff delay; doubles per attempt, capped at 5 s.
    pub backoff: Duration,
    /// A download that receives fewer than `stall_bytes` in `stall_window` of waiting on
    /// the network is broken off and resumed (a registry that trickles a byte now and
    /// then would otherwise hold a pull forever); so is an upload the registry takes no
    /// bytes of for `stall_window`.
    pub stall_window: Duration,
    pub stall_bytes: u64,
    /// Send every request through this proxy (`--proxy`); it replaces the proxies the
    /// environment names (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), as kit's `--proxy` does.
    pub proxy: Option<String>,
    /// Client certificate for registries that require mutual TLS.
    pub client_cert: Option<ClientCert>,
}

/// A client certificate chain and its private key, both PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            plain_http: false,
            tls_verify: true,
            ca_files: Vec::new(),
            hosts_dir: None,
            docker_config: None,
            retries: 5,
            chunk_size: 0,
            backoff: Duration::from_millis(200),
            stall_window: Duration::from_secs(30),
            stall_bytes: 64 << 10,
            proxy: None,
            client_cert: None,
        }
    }
}

struct Endpoint {
    cfg: HostEndpoint,
    client: Client,
    /// For upload bodies: no read timeout, which in reqwest runs from the request's start
    /// to its answer and so would bound how long a healthy upload may take. Uploads are
    /// watched for stalls instead ([`Registry::send_upload`]).
    upload: Client,
    /// A loopback `https://` endpoint found to speak plain HTTP: used as `http://`.
    plain_fallback: std::sync::atomic::AtomicBool,
}

impl Endpoint {
    fn fell_back(&self) -> bool {
        self.plain_fallback
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How an upload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Exists,
    Mounted,
    Uploaded,
}

pub struct Registry {
    pub host: String,
    endpoints: Vec<Endpoint>,
    creds: Option<Credentials>,
    /// Bearer tokens by (endpoint, scope).
    tokens: Mutex<HashMap<(usize, String), String>>,
    /// Endpoints that asked for basic auth.
    basic: Mutex<Vec<usize>>,
    opts: ClientOptions,
}

fn http_err(url: &str, source: reqwest::Error) -> Error {
    // The URL is said once, by this error; reqwest's own copy would repeat it.
    Error::Http {
        url: url.to_string(),
        source: source.without_url(),
    }
}

/// Whether the TLS handshake was answered by something that is not TLS: a registry that
/// speaks plain HTTP on that port.
fn speaks_plain_http(e: &reqwest::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) =
            err.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        // rustls' error travels inside (nested) io::Errors, whose `source` skips it.
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// Whether `api` (an endpoint URL) is on this machine: like Docker, such a registry
/// that does not speak TLS is used over plain HTTP without being told.
fn is_loopback(api: &str) -> bool {
    match Url::parse(api)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Blobs up to this size go up in one PUT (POST, PUT), unless `chunk_size` is smaller:
/// starting one again is cheap, so it needs no resume.
pub const WHOLE_PUT_MAX: u64 = 64 << 20;

/// How long a registry may take to answer an upload once it has all of its bytes.
const UPLOAD_ANSWER: Duration = Duration::from_secs(120);

/// What an upload's body reports as it is sent: a registry that stops taking bytes is
/// noticed without any limit on how long a healthy upload may take.
struct Watch {
    start: std::time::Instant,
    /// Milliseconds after `start` when the body last handed the connection a piece.
    last: std::sync::atomic::AtomicU64,
    /// The body's length when the request declares one: hyper stops polling such a body
    /// after its last byte, so its end is seen by counting.
    len: Option<u64>,
    taken: std::sync::atomic::AtomicU64,
    /// The body has been sent whole.
    sent: std::sync::atomic::AtomicBool,
}

impl Watch {
    /// A watch for a body of `len` bytes, or of unknown length.
    fn new(len: Option<u64>) -> Arc<Watch> {
        Arc::new(Watch {
            start: std::time::Instant::now(),
            last: 0.into(),
            len,
            taken: 0.into(),
            sent: false.into(),
        })
    }

    fn tick(&self, n: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, Relaxed);
        let taken = self.taken.fetch_add(n as u64, Relaxed) + n as u64;
        if self.len.is_some_and(|l| taken >= l) {
            self.sent.store(true, Relaxed);
        }
    }

    fn silence(&self) -> Duration {
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    /// Why the upload counts as stalled, if it does: silent for `window` while sending,
    /// or unanswered for `answer` once sent.
    fn stalled(&self, window: Duration, answer: Duration) -> Option<String> {
        let silent = self.silence();
        if self.sent.load(std::sync::atomic::Ordering::Relaxed) {
            (silent > answer).then(|| {
                format!(
                    "no answer {:.0} s after the last byte of the upload",
                    silent.as_secs_f64()
                )
            })
        } else {
            (silent > window).then(|| {
                format!(
                    "stalled: the registry took no bytes of the upload for {:.0} s",
                    silent.as_secs_f64()
                )
            })
        }
    }

    /// `body`, reporting each piece the connection takes and its end to this watch.
    fn body<S, E>(
        self: &Arc<Self>,
        body: S,
    ) -> impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, E>> + Send + 'static
    where
        S: futures_util::Stream<Item = std::result::Result<bytes::Bytes, E>> + Send + 'static,
        E: Send + 'static,
    {
        let (w, end) = (self.clone(), self.clone());
        body.inspect(move |r| w.tick(r.as_ref().map_or(0, |b| b.len())))
            .chain(futures_util::stream::poll_fn(move |_| {
                end.tick(0);
                end.sent.store(true, std::sync::atomic::Ordering::Relaxed);
                std::task::Poll::Ready(None)
            }))
    }
}

/// Chunk size of streamed uploads: small enough that memory stays flat (`pack --push`
/// holds about five at once: 8 MiB chunks took its peak RSS to 77 MiB, 4 MiB keep it under
/// 64 MiB), large enough that per-chunk overhead is small.
pub const STREAM_CHUNK: usize = 4 << 20;

/// A `Write` that hands every [`STREAM_CHUNK`] bytes to an async uploader. A closed channel
/// (the uploader stopped) is a broken pipe for the writer.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(STREAM_CHUNK),
        ));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    fn send_rest(mut self) -> Result<()> {
        self.flush_chunk()
            .map_err(|e| Error::Aborted(format!("upload: {e}")))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(STREAM_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == STREAM_CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn protocol(url: impl Into<String>, msg: impl Into<String>) -> Error {
    Error::Protocol {
        url: url.into(),
        msg: msg.into(),
    }
}

/// Parses `Bearer realm="...",service="...",scope="..."` (or `Basic realm=...`).
pub fn parse_challenge(h: &str) -> Option<(String, HashMap<String, String>)> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n)
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                val.push(*c);
                chars.next();
            }
        }
        params.insert(key, val.trim().to_string());
    }
    Some((scheme.to_ascii_lowercase(), params))
}

async fn error_of(method: &str, resp: Response) -> Error {
    let url = resp.url().to_string();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let (errors, body) = match serde_json::from_str::<ErrorEnvelope>(&body) {
        Ok(env) if !env.errors.is_empty() => (env.errors, String::new()),
        _ => (Vec::new(), body.chars().take(200).collect()),
    };
    Error::Status {
        method: method.to_string(),
        url,
        status,
        errors,
        body,
    }
}

/// A streaming request body of `len` bytes of `path` from `offset`, advancing `bar` and
/// reporting to `watch`.
fn file_body(
    path: &Path,
    offset: u64,
    len: u64,
    bar: &ProgressBar,
    watch: &Arc<Watch>,
) -> Result<reqwest::Body> {
    let mut f = File::open(path).map_err(|source| CoreError::IoAt {
        path: path.into(),
        source,
    })?;
    f.seek(SeekFrom::Start(offset))?;
    let reader = tokio::fs::File::from_std(f).take(len);
    let bar = bar.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 << 10)
        .inspect_ok(move |b| bar.inc(b.len() as u64));
    Ok(reqwest::Body::wrap_stream(watch.body(stream)))
}

/// Where a downloaded blob goes, in order. `reset` restarts at byte 0 (a server that
/// ignored `Range`, or the next endpoint); a sink that cannot restart returns
/// [`Error::Aborted`].
pub trait BlobSink: Send {
    fn reset(&mut self) -> impl Future<Output = Result<()>> + Send;
    fn write(&mut self, data: bytes::Bytes) -> impl Future<Output = Result<()>> + Send;
    /// Called once after the last byte.
    fn finish(&mut self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
    /// True when the sink checks the digest itself (so it is not hashed twice).
    fn verifies(&self) -> bool {
        false
    }
}

/// A streamed request body: it can be sent once, while [`Registry::send`] builds a request
/// again for each attempt (a retry of a streamed upload fails instead of sending nothing).
struct OnceBody(std::sync::Mutex<Option<reqwest::Body>>);

impl OnceBody {
    fn new<S>(stream: S) -> OnceBody
    where
        S: futures_util::TryStream + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        bytes::Bytes: From<S::Ok>,
    {
        OnceBody(std::sync::Mutex::new(Some(reqwest::Body::wrap_stream(
            stream,
        ))))
    }

    fn take(&self, method: &str) -> Result<reqwest::Body> {
        self.0
            .lock()
            .map_err(|_| Error::Aborted("upload body".into()))?
            .take()
            .ok_or_else(|| Error::Aborted(format!("a streamed {method} cannot be sent twice")))
    }
}

/// Gathers the pieces a socket yields (tens of KiB each) into [`GATHERED`]-byte ones before
/// a download hands them to its sink: sinks that pass bytes to another thread (unpack's
/// extractor, the node's) woke it once per piece, and the copy costs less (a 1 GiB
/// `unpack`: 1.78 -> 1.55 CPU-seconds). Each copied piece is a buffer of exactly
/// [`GATHERED`] bytes (heaptrack: a `BytesMut` left to grow reallocated to 2 MiB, 33 of a
/// 4-layer unpack's 61 MiB) from the download's own [`PiecePool`]. A socket piece of
/// [`GATHERED`] bytes or more goes through as it is, uncopied.
#[derive(Default)]
struct Gather {
    pending: Vec<u8>,
    /// The part of the last socket piece not yet gathered.
    incoming: bytes::Bytes,
    pool: Arc<PiecePool>,
}

/// What [`Gather`] hands over at once.
const GATHERED: usize = 1 << 20;

impl Gather {
    /// Takes the socket's next piece; [`Gather::next`] then hands over what it filled.
    fn add(&mut self, data: bytes::Bytes) {
        debug_assert!(self.incoming.is_empty(), "next() drains each piece");
        self.incoming = data;
    }

    /// The next full piece, until the added bytes are all gathered.
    fn next(&mut self) -> Option<bytes::Bytes> {
        if self.pending.is_empty() && self.incoming.len() >= GATHERED {
            // Big enough already: no copy.
            return Some(std::mem::take(&mut self.incoming));
        }
        if self.incoming.is_empty() {
            return None;
        }
        if self.pending.capacity() == 0 {
            self.pending = self.pool.take();
        }
        let take = (GATHERED - self.pending.len()).min(self.incoming.len());
        self.pending
            .extend_from_slice(&self.incoming.split_to(take));
        (self.pending.len() == GATHERED).then(|| self.hand_over())
    }

    /// What is left after the last byte.
    fn rest(&mut self) -> Option<bytes::Bytes> {
        (!self.pending.is_empty()).then(|| self.hand_over())
    }

    fn hand_over(&mut self) -> bytes::Bytes {
        bytes::Bytes::from_owner(Pooled {
            buf: std::mem::take(&mut self.pending),
            pool: self.pool.clone(),
        })
    }
}

/// A download's [`GATHERED`]-byte buffers, back from the pieces its sink, hasher and
/// extractor have dropped (on whichever thread). Fresh buffers, each freed on another
/// thread than the one that made it, kept glibc trimming its heap and faulting it back in:
/// about 100,000 page faults for a 2 GiB pull, where reusing them takes 3,000.
#[derive(Default)]
struct PiecePool(std::sync::Mutex<Vec<Vec<u8>>>);

/// The most idle buffers a pool keeps: more than a download holds at once (the node's:
/// its pipe of four, the reader's, the hasher's three, the content store's writes).
const POOLED: usize = 16;

impl PiecePool {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| Vec::with_capacity(GATHERED))
    }
}

/// A gathered piece's buffer: back to its pool when the piece's last holder drops it.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<PiecePool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if let Ok(mut p) = self.pool.0.lock()
            && p.len() < POOLED
        {
            p.push(buf);
        }
    }
}

/// A blob file being downloaded. Each piece is written as it is (no copy into a buffer)
/// on tokio's blocking pool, never on the async workers, one write in flight so that the
/// next piece downloads meanwhile. Now and then it starts the disk writing back what has
/// arrived (`store::start_writeback`), so the commit's fsync does not wait for the whole
/// blob.
struct FileSink {
    file: Arc<File>,
    /// Where the next piece goes.
    offset: u64,
    pacer: WritebackPacer,
    writing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl FileSink {
    fn new(file: File) -> FileSink {
        FileSink {
            file: Arc::new(file),
            offset: 0,
            pacer: WritebackPacer::default(),
            writing: None,
        }
    }

    /// Waits for the write in flight.
    async fn settle(&mut self) -> Result<()> {
        if let Some(w) = self.writing.take() {
            w.await
                .map_err(|e| Error::Aborted(format!("writing a blob: {e}")))??;
        }
        Ok(())
    }
}

impl BlobSink for FileSink {
    async fn reset(&mut self) -> Result<()> {
        self.settle().await?;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.set_len(0))
            .await
            .map_err(|e| Error::Aborted(format!("truncating a blob: {e}")))??;
        self.offset = 0;
        self.pacer = WritebackPacer::default();
        Ok(())
    }
    async fn write(&mut self, data: bytes::Bytes) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.settle().await?;
        let (file, at) = (self.file.clone(), self.offset);
        self.offset += data.len() as u64;
        let writeback = self.pacer.wrote(data.len());
        self.writing = Some(tokio::task::spawn_blocking(move || {
            file.write_all_at(&data, at)?;
            if writeback {
                kitsnap_core::store::start_writeback(&file);
            }
            Ok(())
        }));
        Ok(())
    }
    async fn finish(&mut self) -> Result<()> {
        self.settle().await
    }
}

/// The digest of a download, computed on a thread of its own from the downloaded pieces
/// themselves: 1 MiB ones go as they are, smaller ones are gathered first (one wake-up of
/// the thread per MiB). The async side awaits room in the queue, where a
/// [`kitsnap_core::digest::ThreadedHasher`] would block an async worker. Not on tokio's
/// blocking pool: a thread held for a whole download there could starve the writes that
/// downloads wait for.
pub struct PieceHasher {
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    done: tokio::sync::oneshot::Receiver<Digest>,
    gather: Gather,
}

/// Pieces queued for a [`PieceHasher`], as many as a `ThreadedHasher` queues.
const HASH_QUEUE: usize = 2;

impl PieceHasher {
    pub fn new() -> Result<PieceHasher> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(HASH_QUEUE);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let (d, _) =
                    kitsnap_core::digest::digest_pieces(std::iter::from_fn(|| rx.blocking_recv()));
                let _ = done_tx.send(d);
            })
            .map_err(|e| Error::Aborted(format!("starting a hashing thread: {e}")))?;
        Ok(PieceHasher {
            tx,
            done,
            gather: Gather::default(),
        })
    }

    /// Takes the next piece, waiting while the thread is behind.
    pub async fn update(&mut self, piece: bytes::Bytes) {
        self.gather.add(piece);
        while let Some(p) = self.gather.next() {
            // The receiver only goes away if the hashing thread panicked; finish() says so.
            let _ = self.tx.send(p).await;
        }
    }

    /// The digest of every piece taken.
    pub async fn finish(mut self) -> Result<Digest> {
        if let Some(p) = self.gather.rest() {
            let _ = self.tx.send(p).await;
        }
        drop(self.tx);
        self.done
            .await
            .map_err(|_| Error::Aborted("the hashing thread stopped".into()))
    }
}

/// Collects a small blob in memory.
pub struct VecSink(pub Vec<u8>);

impl BlobSink for VecSink {
    async fn reset(&mut self) -> Result<()> {
        self.0.clear();
        Ok(())
    }
    async fn write(&mut self, data: bytes::Bytes) -> Result<()> {
        self.0.extend_from_slice(&data);
        Ok(())
    }
}

/// The HTTP client for one endpoint: its TLS settings (hosts.toml `skip_verify`, `ca`)
/// over `opts`' own. Reads CA files: call it off the async workers.
pub fn http_client(opts: &ClientOptions, cfg: &hosts::HostEndpoint) -> Result<Client> {
    build_client(opts, cfg, Some(Duration::from_secs(120)))
}

fn build_client(
    opts: &ClientOptions,
    cfg: &hosts::HostEndpoint,
    read_timeout: Option<Duration>,
) -> Result<Client> {
    let mut b = Client::builder()
        .user_agent(concat!("kitsnap/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .danger_accept_invalid_certs(!opts.tls_verify || cfg.skip_verify);
    if let Some(t) = read_timeout {
        b = b.read_timeout(t);
    }
    for ca in opts.ca_files.iter().chain(cfg.ca.iter()) {
        let pem = std::fs::read(ca).map_err(|source| CoreError::IoAt {
            path: ca.clone(),
            source,
        })?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| Error::Config {
            what: ca.display().to_string(),
            msg: format!("not a PEM certificate: {e}"),
        })?;
        b = b.add_root_certificate(cert);
    }
    if let Some(p) = &opts.proxy {
        let proxy = reqwest::Proxy::all(p).map_err(|source| Error::ClientSetup {
            what: format!("proxy {p} is not usable"),
            source,
        })?;
        b = b.proxy(proxy);
    }
    if let Some(c) = &opts.client_cert {
        b = b.identity(client_identity(c)?);
    }
    b.build().map_err(|e| http_err(&cfg.api, e))
}

/// The identity rustls presents: the certificate chain and the key in one PEM buffer.
fn client_identity(c: &ClientCert) -> Result<reqwest::Identity> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| CoreError::IoAt {
            path: p.clone(),
            source,
        })
    };
    let mut pem = read(&c.cert)?;
    pem.push(b'\n');
    pem.extend(read(&c.key)?);
    reqwest::Identity::from_pem(&pem).map_err(|source| Error::ClientSetup {
        what: format!(
            "client certificate {} with key {} is not a PEM certificate and private key",
            c.cert.display(),
            c.key.display()
        ),
        source,
    })
}

impl Registry {
    pub fn new(host: &str, opts: ClientOptions) -> Result<Registry> {
        let eps = hosts::endpoints(host, opts.hosts_dir.as_deref(), opts.plain_http)?;
        let mut endpoints = Vec::new();
        for cfg in eps {
            let client = http_client(&opts, &cfg)?;
            let upload = build_client(&opts, &cfg, None)?;
            endpoints.push(Endpoint {
                cfg,
                client,
                upload,
                plain_fallback: false.into(),
            });
        }
        let explicit = opts.docker_config.is_some();
        let cfg_path = opts
            .docker_config
            .clone()
            .unwrap_or_else(crate::credentials::default_path);
        let mut creds = DockerConfig::load(cfg_path)?.get(host)?;
        if creds.is_none() && !explicit {
            // `kit login` keeps its logins in the same format in $KITOPS_HOME.
            let kit = kitsnap_core::store::kit_home().join("credentials.json");
            if kit.is_file() {
                creds = DockerConfig::load(kit)?.get(host)?;
            }
        }
        Ok(Registry {
            host: host.to_string(),
            endpoints,
            creds,
            tokens: Mutex::new(HashMap::new()),
            basic: Mutex::new(Vec::new()),
            opts,
        })
    }

    /// Replaces the configured credentials (for `login`, before they are saved).
    pub fn with_credentials(mut self, c: Option<Credentials>) -> Self {
        self.creds = c;
        self
    }

    fn url(&self, ep: usize, path: &str) -> String {
        let e = &self.endpoints[ep].cfg;
        let mut u = format!("{}/{}", e.api, path.trim_start_matches('/'));
        if self.endpoints[ep].fell_back() {
            u = u.replacen("https://", "http://", 1);
        }
        // containerd tells mirrors which registry a request is for.
        if e.mirror {
            u.push(if u.contains('?') { '&' } else { '?' });
            u.push_str(&format!("ns={}", self.host));
        }
        u
    }

    /// A fresh retry schedule, as configured (`--retries`).
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.opts.backoff, self.opts.retries)
    }

    async fn authorize(&self, ep: usize, scope: &str, rb: RequestBuilder) -> RequestBuilder {
        let rb = self.endpoints[ep]
            .cfg
            .headers
            .iter()
            .fold(rb, |rb, (k, v)| rb.header(k.as_str(), v.as_str()));
        if let Some(t) = self.tokens.lock().await.get(&(ep, scope.to_string())) {
            return rb.bearer_auth(t);
        }
        if self.basic.lock().await.contains(&ep)
            && let Some(c) = &self.creds
        {
            return rb.basic_auth(&c.username, Some(&c.secret));
        }
        rb
    }

    /// Answers a 401 challenge: remembers basic auth or fetches a bearer token.
    async fn answer_challenge(&self, ep: usize, scope: &str, resp: &Response) -> Result<()> {
        let url = resp.url().to_string();
        let h = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let (scheme, params) =
            parse_challenge(h).ok_or_else(|| Error::Unauthorized(self.host.clone()))?;
        match scheme.as_str() {
            "basic" => {
                if self.creds.is_none() {
                    return Err(Error::Unauthorized(self.host.clone()));
                }
                self.basic.lock().await.push(ep);
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| protocol(&url, "bearer challenge without realm"))?;
                let mut turl = Url::parse(realm).map_err(|e| protocol(realm, e.to_string()))?;
                {
                    let mut q = turl.query_pairs_mut();
                    if let Some(s) = params.get("service") {
                        q.append_pair("service", s);
                    }
                    for s in scope.split(' ').filter(|s| !s.is_empty()) {
                        q.append_pair("scope", s);
                    }
                }
                let client = &self.endpoints[ep].client;
                let resp = match &self.creds {
                    Some(c) if c.is_identity_token() => {
                        let mut form = vec![
                            ("grant_type", "refresh_token".to_string()),
                            ("refresh_token", c.secret.clone()),
                            ("client_id", "kitsnap".to_string()),
                        ];
                        if let Some(s) = params.get("service") {
                            form.push(("service", s.clone()));
                        }
                        if !scope.is_empty() {
                            form.push(("scope", scope.to_string()));
                        }
                        client.post(realm).form(&form).send().await
                    }
                    Some(c) => {
                        client
                            .get(turl.clone())
                            .basic_auth(&c.username, Some(&c.secret))
                            .send()
                            .await
                    }
                    None => client.get(turl.clone()).send().await,
                }
                .map_err(|e| http_err(turl.as_str(), e))?;
                if resp.status() == StatusCode::UNAUTHORIZED
                    || resp.status() == StatusCode::FORBIDDEN
                {
                    return Err(Error::Unauthorized(self.host.clone()));
                }
                if !resp.status().is_success() {
                    return Err(error_of("GET", resp).await);
                }
                let v: serde_json::Value =
                    resp.json().await.map_err(|e| http_err(turl.as_str(), e))?;
                let tok = v
                    .get("token")
                    .or_else(|| v.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| protocol(turl.as_str(), "token response has no token"))?;
                self.tokens
                    .lock()
                    .await
                    .insert((ep, scope.to_string()), tok.to_string());
                Ok(())
            }
            _ => Err(Error::Unauthorized(self.host.clone())),
        }
    }

    /// Sends a request built by `make`, answering auth challenges, and (with `retry`)
    /// retrying 5xx answers and connection failures with exponential backoff.
    async fn send(
        &self,
        ep: usize,
        scope: &str,
        retry: bool,
        make: &(dyn Fn(&Client) -> Result<RequestBuilder> + Sync),
    ) -> Result<Response> {
        self.send_via(ep, scope, retry, false, make).await
    }

    /// Sends an upload whose body reports to `watch`, on the client without a read
    /// timeout: it fails as [`Error::Stalled`] when the registry takes no bytes for the
    /// stall window, or does not answer within [`UPLOAD_ANSWER`] of the last byte. Not
    /// retried here: the callers resume or start again.
    async fn send_upload(
        &self,
        ep: usize,
        scope: &str,
        watch: &Watch,
        url: &str,
        make: &(dyn Fn(&Client) -> Result<RequestBuilder> + Sync),
    ) -> Result<Response> {
        let send = self.send_via(ep, scope, false, true, make);
        tokio::pin!(send);
        let mut every = tokio::time::interval(Duration::from_millis(250));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = &mut send => return r,
                _ = every.tick() => {
                    if let Some(why) = watch.stalled(self.opts.stall_window, UPLOAD_ANSWER) {
                        return Err(Error::Stalled { url: url.to_string(), why });
                    }
                }
            }
        }
    }

    async fn send_via(
        &self,
        ep: usize,
        scope: &str,
        retry: bool,
        upload: bool,
        make: &(dyn Fn(&Client) -> Result<RequestBuilder> + Sync),
    ) -> Result<Response> {
        let endpoint = &self.endpoints[ep];
        let client = if upload {
            &endpoint.upload
        } else {
            &endpoint.client
        };
        let mut backoff = self.backoff();
        let mut auth_tries = 0;
        // Retry notices name the request once; the following ones only say what failed.
        let mut named: Option<String> = None;
        let mut name_once = |method: &str, url: &str| {
            if named.as_deref() == Some(url) {
                String::new()
            } else {
                named = Some(url.to_string());
                format!("{method} {url}: ")
            }
        };
        loop {
            let mut rb = self.authorize(ep, scope, make(client)?).await;
            if self.endpoints[ep].fell_back() {
                rb = to_plain_http(rb)?;
            }
            let (method, url) = match rb.try_clone().and_then(|r| r.build().ok()) {
                Some(r) => (r.method().to_string(), r.url().to_string()),
                None => (String::new(), String::new()),
            };
            match rb.send().await {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                    auth_tries += 1;
                    if auth_tries > 2 {
                        return Err(Error::Unauthorized(self.host.clone()));
                    }
                    self.answer_challenge(ep, scope, &resp).await?;
                }
                Ok(resp) if retry && retryable_status(resp.status().as_u16()) => {
                    let why = format!("{}HTTP {}", name_once(&method, &url), resp.status());
                    if !backoff.wait(why).await {
                        return Ok(resp);
                    }
                }
                Ok(resp) => return Ok(resp),
                Err(e) if speaks_plain_http(&e) => {
                    // Concurrent requests may all meet it; the next try goes over HTTP.
                    // After the switch every request goes over HTTP, so this cannot loop.
                    if is_loopback(&endpoint.cfg.api) && endpoint.cfg.api.starts_with("https://") {
                        if !endpoint
                            .plain_fallback
                            .swap(true, std::sync::atomic::Ordering::Relaxed)
                        {
                            tracing::info!(
                                "{} does not speak TLS; using plain HTTP as for any local registry",
                                endpoint.cfg.api
                            );
                        }
                        continue;
                    }
                    return Err(Error::PlainHttp(self.host.clone()));
                }
                Err(e) if retry && retryable_transport(&e) => {
                    let err = http_err(&url, e);
                    let why = match &err {
                        Error::Http { source, .. } => {
                            format!("{}{}", name_once(&method, &url), error_chain(source))
                        }
                        other => error_chain(other),
                    };
                    if !backoff.wait(why).await {
                        return Err(err);
                    }
                }
                Err(e) => return Err(http_err(&url, e)),
            }
        }
    }

    fn endpoints_for(&self, f: impl Fn(&HostEndpoint) -> bool) -> Vec<usize> {
        (0..self.endpoints.len())
            .filter(|i| f(&self.endpoints[*i].cfg))
            .collect()
    }

    /// `GET /v2/`: checks that the registry answers and the credentials are good.
    pub async fn ping(&self) -> Result<()> {
        let ep = *self.endpoints_for(|e| !e.mirror).first().unwrap_or(&0);
        let url = self.url(ep, "");
        let resp = self.send(ep, "", true, &|c| Ok(c.get(&url))).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(error_of("GET", resp).await)
        }
    }

    /// GET of one manifest from one endpoint, within the size limit: its bytes and media type.
    async fn manifest_at(
        &self,
        ep: usize,
        scope: &str,
        repo: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, String)> {
        let url = self.url(ep, &format!("{repo}/manifests/{reference}"));
        let resp = self
            .send(ep, scope, true, &|c| {
                Ok(c.get(&url).header(
                    ACCEPT,
                    [
                        MEDIA_TYPE_MANIFEST,
                        MEDIA_TYPE_INDEX,
                        DOCKER_MANIFEST,
                        DOCKER_LIST,
                    ]
                    .join(", "),
                ))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(error_of("GET", resp).await);
        }
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_MANIFEST as u64)
        {
            return Err(protocol(
                &url,
                format!("manifest is over the {MAX_MANIFEST} byte limit"),
            ));
        }
        let mt = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut body = Vec::new();
        let mut s = resp.bytes_stream();
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| http_err(&url, e))?;
            if body.len() + chunk.len() > MAX_MANIFEST {
                return Err(protocol(
                    &url,
                    format!("manifest is over the {MAX_MANIFEST} byte limit"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, mt))
    }

    /// Fetches a manifest by tag or digest, trying mirrors first. Returns its bytes, media
    /// type and digest (verified when the reference was a digest).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, String, Digest)> {
        let scope = format!("repository:{repo}:pull");
        let mut last = None;
        for ep in self.endpoints_for(|e| e.resolve || (e.pull && reference.starts_with("sha256:")))
        {
            let res = async {
                let (body, mt) = self.manifest_at(ep, &scope, repo, reference).await?;
                let d = Digest::of(&body);
                if reference.starts_with("sha256:") && d.as_str() != reference {
                    return Err(CoreError::DigestMismatch {
                        digest: reference.to_string(),
                        actual: d.to_string(),
                    }
                    .into());
                }
                Ok((body, mt, d))
            }
            .await;
            match res {
                Ok(v) => return Ok(v),
                Err(
                    e @ (Error::Core(CoreError::DigestMismatch { .. }) | Error::Unauthorized(_)),
                ) if !self.endpoints[ep].cfg.mirror => {
                    return Err(e);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| self.no_endpoint("resolve manifests")))
    }

    /// Downloads a blob into `file` (which must be empty), resuming with `Range` after a
    /// broken connection and falling back to the next endpoint on failure.
    pub async fn fetch_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        file: File,
        bar: &ProgressBar,
    ) -> Result<()> {
        let mut sink = FileSink::new(file);
        let fetched = self.fetch_blob_into(repo, desc, &mut sink, bar).await;
        // Nothing writes into the file once this returns, even after an error.
        let settled = sink.settle().await;
        fetched.and(settled)
    }

    /// Downloads a blob into any [`BlobSink`], with the same resume and fallback rules.
    /// Unless the sink verifies the digest itself, it is checked here.
    /// A small blob (a config) in memory, refusing more than the store's metadata limit.
    pub async fn get_small_blob(&self, repo: &str, desc: &Descriptor) -> Result<Vec<u8>> {
        self.get_blob_limited(repo, desc, kitsnap_core::store::MAX_METADATA_BLOB)
            .await
    }

    pub async fn fetch_blob_into<S: BlobSink>(
        &self,
        repo: &str,
        desc: &Descriptor,
        sink: &mut S,
        bar: &ProgressBar,
    ) -> Result<()> {
        let mut last = None;
        for ep in self.endpoints_for(|e| e.pull) {
            sink.reset().await?;
            bar.set_position(0);
            match self.fetch_from(ep, repo, desc, sink, bar).await {
                Ok(()) => return Ok(()),
                // Content that fails verification upstream will not get better elsewhere.
                Err(
                    e @ Error::Core(
                        CoreError::DigestMismatch { .. } | CoreError::SizeMismatch { .. },
                    ),
                ) if !self.endpoints[ep].cfg.mirror => {
                    return Err(e);
                }
                // A sink that failed or cannot start over ends the fetch.
                Err(e @ (Error::Aborted(_) | Error::Sink(_))) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| self.no_endpoint("pull blobs")))
    }

    async fn fetch_from<S: BlobSink>(
        &self,
        ep: usize,
        repo: &str,
        desc: &Descriptor,
        sink: &mut S,
        bar: &ProgressBar,
    ) -> Result<()> {
        let scope = format!("repository:{repo}:pull");
        let url = self.url(ep, &format!("{repo}/blobs/{}", desc.digest));
        let mut hasher = (!sink.verifies()).then(PieceHasher::new).transpose()?;
        let mut got: u64 = 0;
        // Bytes received (counted in `got`) not yet handed to the sink.
        let mut gather = Gather::default();
        let mut backoff = self.backoff();
        loop {
            let from = got;
            let resp = self
                .send(ep, &scope, true, &|c| {
                    let rb = c.get(&url);
                    Ok(if from > 0 {
                        rb.header(RANGE, format!("bytes={from}-"))
                    } else {
                        rb
                    })
                })
                .await?;
            let status = resp.status();
            if !status.is_success() {
                return Err(error_of("GET", resp).await);
            }
            let partial_ok = status == StatusCode::PARTIAL_CONTENT
                && resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok())
                    == Some(got);
            if got > 0 && !partial_ok {
                // The server ignored the Range: start over.
                sink.reset().await?;
                hasher = (!sink.verifies()).then(PieceHasher::new).transpose()?;
                gather = Gather::default();
                got = 0;
                bar.set_position(0);
            }
            let mut stream = resp.bytes_stream();
            let mut broken = None;
            // Time spent waiting on the network (not on the sink) and bytes it brought.
            let (mut waited, mut window_bytes) = (Duration::ZERO, 0u64);
            loop {
                let started = tokio::time::Instant::now();
                let left = self.opts.stall_window.saturating_sub(waited);
                let next = tokio::time::timeout(left, stream.next()).await;
                waited += started.elapsed();
                if waited >= self.opts.stall_window {
                    if window_bytes < self.opts.stall_bytes {
                        broken = Some(protocol(
                            &url,
                            format!(
                                "stalled: {window_bytes} bytes in {:.0} s",
                                self.opts.stall_window.as_secs_f64()
                            ),
                        ));
                        break;
                    }
                    (waited, window_bytes) = (Duration::ZERO, 0);
                }
                let chunk = match next {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(_) => continue, // the window ended with nothing: judged above
                };
                match chunk {
                    Ok(b) => {
                        if got + b.len() as u64 > desc.size {
                            return Err(CoreError::SizeMismatch {
                                digest: desc.digest.to_string(),
                                expected: desc.size,
                                actual: got + b.len() as u64,
                            }
                            .into());
                        }
                        got += b.len() as u64;
                        window_bytes += b.len() as u64;
                        bar.inc(b.len() as u64);
                        gather.add(b);
                        while let Some(piece) = gather.next() {
                            if let Some(h) = hasher.as_mut() {
                                h.update(piece.clone()).await;
                            }
                            sink.write(piece).await?;
                        }
                    }
                    Err(e) => {
                        broken = Some(http_err(&url, e));
                        break;
                    }
                }
            }
            if broken.is_none() && got == desc.size {
                break;
            }
            let why = format!("{url}: connection broke at byte {got}, resuming");
            if !backoff.wait(why).await {
                return Err(broken.unwrap_or_else(|| {
                    CoreError::SizeMismatch {
                        digest: desc.digest.to_string(),
                        expected: desc.size,
                        actual: got,
                    }
                    .into()
                }));
            }
        }
        let rest = gather.rest();
        if let Some(mut h) = hasher {
            if let Some(piece) = &rest {
                h.update(piece.clone()).await;
            }
            let actual = h.finish().await?;
            if actual != desc.digest {
                return Err(CoreError::DigestMismatch {
                    digest: desc.digest.to_string(),
                    actual: actual.to_string(),
                }
                .into());
            }
        }
        if let Some(piece) = rest {
            sink.write(piece).await?;
        }
        sink.finish().await
    }

    fn push_endpoint(&self) -> Result<usize> {
        self.endpoints_for(|e| e.push && !e.mirror)
            .into_iter()
            .next()
            .ok_or_else(|| self.no_endpoint("accept pushes"))
    }

    /// The tags of `repo` (`GET /v2/REPO/tags/list`, following `Link: rel="next"`
    /// pages), from the upstream registry: mirrors do not list.
    pub async fn list_tags(&self, repo: &str) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        // A registry whose pages point at each other must not keep us forever.
        const MAX_PAGES: usize = 10_000;
        let ep = self.push_endpoint()?;
        let scope = format!("repository:{repo}:pull");
        let mut url = self.url(ep, &format!("{repo}/tags/list"));
        let mut tags = Vec::new();
        for _ in 0..MAX_PAGES {
            let resp = self.send(ep, &scope, true, &|c| Ok(c.get(&url))).await?;
            if !resp.status().is_success() {
                return Err(error_of("GET", resp).await);
            }
            let next = resp
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .map(|target| {
                    Url::parse(&url)
                        .and_then(|u| u.join(&target))
                        .map_err(|e| protocol(&url, format!("bad Link header {target:?}: {e}")))
                })
                .transpose()?;
            let page: TagList = resp.json().await.map_err(|e| http_err(&url, e))?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) => url = n.to_string(),
                None => return Ok(tags),
            }
        }
        Err(protocol(
            url,
            format!("more than {MAX_PAGES} pages of tags"),
        ))
    }

    /// Deletes the manifest `reference` (a tag or a digest) names from the upstream
    /// registry, as `kit remove --remote` does: by digest, so every tag of that manifest
    /// goes with it. Returns the digest.
    pub async fn delete_manifest(&self, repo: &str, reference: &str) -> Result<Digest> {
        let ep = self.push_endpoint()?;
        let scope = format!("repository:{repo}:pull,delete");
        let digest = match reference.parse::<Digest>() {
            Ok(d) if reference.starts_with("sha256:") => d,
            // A tag: the digest of what the registry itself holds (not a mirror's copy).
            _ => Digest::of(&self.manifest_at(ep, &scope, repo, reference).await?.0),
        };
        let url = self.url(ep, &format!("{repo}/manifests/{digest}"));
        let resp = self.send(ep, &scope, true, &|c| Ok(c.delete(&url))).await?;
        if resp.status().is_success() {
            Ok(digest)
        } else {
            Err(error_of("DELETE", resp).await)
        }
    }

    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let ep = self.push_endpoint()?;
        let url = self.url(ep, &format!("{repo}/blobs/{digest}"));
        let scope = format!("repository:{repo}:pull,push");
        let resp = self.send(ep, &scope, true, &|c| Ok(c.head(&url))).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(error_of("HEAD", resp).await),
        }
    }

    fn location(resp: &Response) -> Result<String> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| protocol(resp.url().as_str(), "upload response has no Location"))?;
        resp.url()
            .join(loc)
            .map(|u| u.to_string())
            .map_err(|e| protocol(loc, e.to_string()))
    }

    fn with_query(loc: &str, k: &str, v: &str) -> Result<String> {
        let mut u = Url::parse(loc).map_err(|e| protocol(loc, e.to_string()))?;
        u.query_pairs_mut().append_pair(k, v);
        Ok(u.to_string())
    }

    /// Uploads the blob at `path` unless the registry has it. Tries a cross-repository
    /// mount from each of `mount_from` first; large blobs go in chunks that are resumed
    /// from the registry's reported offset after a failure.
    pub async fn push_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        path: &Path,
        mount_from: &[String],
        bar: &ProgressBar,
    ) -> Result<PushOutcome> {
        if self.blob_exists(repo, &desc.digest).await? {
            bar.set_position(desc.size);
            return Ok(PushOutcome::Exists);
        }
        let ep = self.push_endpoint()?;
        let mut session = None;
        for from in mount_from.iter().filter(|f| f.as_str() != repo) {
            let scope = format!("repository:{repo}:pull,push repository:{from}:pull");
            let url = self.url(ep, &format!("{repo}/blobs/uploads/"));
            let url = Self::with_query(&url, "mount", desc.digest.as_str())?;
            let url = Self::with_query(&url, "from", from)?;
            let resp = self
                .send(ep, &scope, true, &|c| {
                    Ok(c.post(&url).header(CONTENT_LENGTH, 0))
                })
                .await?;
            match resp.status() {
                StatusCode::CREATED => {
                    bar.set_position(desc.size);
                    return Ok(PushOutcome::Mounted);
                }
                StatusCode::ACCEPTED => {
                    session = Some(Self::location(&resp)?);
                    break;
                }
                _ => {}
            }
        }
        let scope = format!("repository:{repo}:pull,push");
        let mut backoff = self.backoff();
        let mut whole = false;
        loop {
            let loc = match session.take() {
                Some(l) => l,
                None => self.start_upload(ep, repo, &scope).await?,
            };
            let res = if whole || desc.size <= self.whole_put_max() {
                self.put_whole(ep, &scope, &loc, desc, path, bar).await
            } else {
                self.put_chunked(ep, &scope, loc, desc, path, bar).await
            };
            match res {
                Ok(()) => return Ok(PushOutcome::Uploaded),
                Err(e @ Error::Unauthorized(_)) => return Err(e),
                Err(Error::ChunkedRefused { url, status }) if !whole => {
                    // Google Artifact Registry-style: one streamed PUT of the whole blob.
                    tracing::info!(%url, status, "chunked upload refused: sending {} in one PUT", desc.digest);
                    whole = true;
                    bar.set_position(0);
                }
                Err(e) => {
                    let why = format!(
                        "upload of {} failed ({}), starting again",
                        desc.digest,
                        error_chain(&e)
                    );
                    if !backoff.wait(why).await {
                        return Err(e);
                    }
                    bar.set_position(0);
                }
            }
        }
    }

    /// Uploads a blob whose digest is known only once it is written: `produce` runs on a
    /// blocking thread and writes the blob into the writer it is given. The first
    /// [`STREAM_CHUNK`] bytes go up as one PATCH with their length and range, so that a
    /// registry that refuses chunked uploads (Google Artifact Registry-style: an error, or
    /// 201 Created) says so before anything streams: this then returns
    /// [`Error::ChunkedRefused`] and the caller can hash the blob first and use
    /// [`Registry::push_stream_whole`]. That chunk is sent again if it fails. The rest goes
    /// as one streamed PATCH (as `docker push` streams a layer), or PATCHes of
    /// `chunk_size` when that is set. A PUT with the digest `produce` returns closes the upload. Nothing touches the
    /// disk, and memory holds at most four chunks. A streamed PATCH cannot be replayed: if
    /// one breaks, the upload is cancelled and this returns [`Error::UploadBroken`], and the
    /// caller produces the blob again into a new upload.
    pub async fn push_stream<T: Send + 'static>(
        &self,
        repo: &str,
        produce: impl FnOnce(&mut dyn std::io::Write) -> Result<(T, Digest)> + Send + 'static,
    ) -> Result<(T, Digest, u64)> {
        let ep = self.push_endpoint()?;
        let scope = format!("repository:{repo}:pull,push");
        let mut loc = self.start_upload(ep, repo, &scope).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
        let producer = tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter {
                tx,
                buf: Vec::with_capacity(STREAM_CHUNK),
            };
            let r = produce(&mut w);
            w.send_rest()?;
            r
        });
        // Stops the producer (its writes then fail) and returns `e`.
        async fn stop<T, P>(
            rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
            producer: tokio::task::JoinHandle<P>,
            e: Error,
        ) -> Result<T> {
            drop(rx);
            let _ = producer.await;
            Err(e)
        }
        let mut offset = 0u64;
        if let Some(chunk) = rx.recv().await {
            match self.patch_first(ep, &scope, &loc, chunk).await {
                Ok(next) => {
                    loc = next.0;
                    offset = next.1;
                }
                Err(e) => return stop(rx, producer, e).await,
            }
        }
        // The rest: one streamed PATCH, or PATCHes of `chunk_size` if asked for. One PATCH
        // per 8 MiB chunk made the registry take 2 GiB about 30% slower. A streamed PATCH
        // has no time limit, only a stall watch: a 16 GB layer over a slow link goes up.
        let segment = match self.opts.chunk_size {
            0 => u64::MAX,
            c => c,
        };
        let mut next = rx.recv().await;
        while let Some(first) = next.take() {
            let (resp, seg) = {
                let (seg_tx, seg_rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
                let watch = Watch::new(None);
                let body = OnceBody::new(
                    watch.body(
                        tokio_stream::wrappers::ReceiverStream::new(seg_rx)
                            .map(Ok::<_, std::io::Error>),
                    ),
                );
                let seg_loc = loc.clone();
                let make = |c: &Client| -> Result<RequestBuilder> {
                    Ok(c.request(Method::PATCH, &seg_loc)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .body(body.take("PATCH")?))
                };
                let send = self.send_upload(ep, &scope, &watch, &seg_loc, &make);
                tokio::pin!(send);
                let mut seg = 0u64;
                let mut pending = Some(first);
                let mut answered = None;
                // Feed the segment; an answer before its end stops the feeding (a server
                // that answers and stops reading must not leave the producer blocked).
                while let Some(c) = pending.take() {
                    let len = c.len() as u64;
                    tokio::select! {
                        r = &mut send => {
                            answered = Some(r);
                            break;
                        }
                        permit = seg_tx.reserve() => match permit {
                            Ok(p) => p.send(c),
                            Err(_) => break,
                        },
                    }
                    seg += len;
                    if seg >= segment {
                        next = rx.recv().await;
                        break;
                    }
                    pending = rx.recv().await;
                }
                drop(seg_tx);
                let resp = match answered {
                    Some(r) => r,
                    None => send.await,
                };
                (resp, seg)
            };
            let status = resp.as_ref().map(|r| r.status()).ok();
            match (resp, status) {
                (Ok(r), Some(StatusCode::ACCEPTED)) => {
                    loc = Self::location(&r)?;
                    offset += seg;
                    continue;
                }
                (Err(e @ Error::Unauthorized(_)), _) => return stop(rx, producer, e).await,
                (Ok(r), Some(st)) if st == StatusCode::UNAUTHORIZED => {
                    let e = error_of("PATCH", r).await;
                    return stop(rx, producer, e).await;
                }
                // A registry that takes ranged chunks but refuses streamed ones: the caller
                // falls back to one PUT per layer, as for a registry refusing chunks.
                (Ok(_), Some(st)) if !retryable_status(st.as_u16()) => {
                    self.abandon(ep, &scope, &loc).await;
                    let e = Error::ChunkedRefused {
                        url: loc,
                        status: st.as_u16(),
                    };
                    return stop(rx, producer, e).await;
                }
                (res, _) => {
                    let why = match res {
                        Ok(r) => format!("PATCH answered HTTP {}", r.status()),
                        Err(e) => error_chain(&e),
                    };
                    self.abandon(ep, &scope, &loc).await;
                    let e = Error::UploadBroken {
                        url: loc,
                        offset: offset + seg,
                        why,
                    };
                    return stop(rx, producer, e).await;
                }
            }
        }
        let (t, digest) = producer
            .await
            .map_err(|e| Error::Aborted(format!("writing the blob: {e}")))??;
        let url = Self::with_query(&loc, "digest", digest.as_str())?;
        let resp = self
            .send(ep, &scope, true, &|c| {
                Ok(c.put(&url).header(CONTENT_LENGTH, 0))
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(error_of("PUT", resp).await);
        }
        Ok((t, digest, offset))
    }

    /// Cancels an upload that will not be finished, so that the registry can drop what it
    /// holds of it at once (best effort: it also expires on its own).
    async fn abandon(&self, ep: usize, scope: &str, loc: &str) {
        let _ = self.send(ep, scope, false, &|c| Ok(c.delete(loc))).await;
    }

    /// The first chunk of [`Registry::push_stream`], with its length and range, sent again
    /// after a failure; returns the next location and the offset after it.
    async fn patch_first(
        &self,
        ep: usize,
        scope: &str,
        loc: &str,
        chunk: bytes::Bytes,
    ) -> Result<(String, u64)> {
        let len = chunk.len() as u64;
        let mut loc = loc.to_string();
        let mut backoff = self.backoff();
        loop {
            let res = self
                .send(ep, scope, false, &|c| {
                    Ok(c.request(Method::PATCH, &loc)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, len)
                        .header(CONTENT_RANGE, format!("0-{}", len - 1))
                        .body(chunk.clone()))
                })
                .await;
            match res {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                    return Ok((Self::location(&resp)?, len));
                }
                Ok(resp) if !retryable_status(resp.status().as_u16()) => {
                    return Err(Error::ChunkedRefused {
                        url: loc,
                        status: resp.status().as_u16(),
                    });
                }
                Err(e @ Error::Unauthorized(_)) => return Err(e),
                _ => {}
            }
            if !backoff
                .wait("the first chunk of a streamed upload failed")
                .await
            {
                return Err(protocol(&loc, "streamed upload kept failing at byte 0"));
            }
            // The registry may have taken the chunk before the answer was lost.
            if let Ok((have, next)) = self.upload_offset(ep, scope, &loc).await {
                loc = next;
                if have == len {
                    return Ok((loc, len));
                }
                if have != 0 {
                    return Err(protocol(
                        &loc,
                        format!("the registry holds {have} bytes of the upload, expected 0"),
                    ));
                }
            }
        }
    }

    /// One streamed PUT of a blob whose digest and size are known (computed by a first
    /// pass), for registries that refuse chunked uploads: `produce` writes the same bytes
    /// again. Not retried: the body cannot be replayed.
    pub async fn push_stream_whole(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        produce: impl FnOnce(&mut dyn std::io::Write) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let ep = self.push_endpoint()?;
        let scope = format!("repository:{repo}:pull,push");
        let loc = self.start_upload(ep, repo, &scope).await?;
        let url = Self::with_query(&loc, "digest", digest.as_str())?;
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
        let producer = tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter {
                tx,
                buf: Vec::with_capacity(STREAM_CHUNK),
            };
            produce(&mut w)?;
            w.send_rest()
        });
        let watch = Watch::new(Some(size));
        let body = OnceBody::new(
            watch
                .body(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>)),
        );
        let resp = self
            .send_upload(ep, &scope, &watch, &url, &|c| {
                Ok(c.put(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(body.take("PUT")?))
            })
            .await;
        let produced = producer
            .await
            .map_err(|e| Error::Aborted(format!("writing the blob: {e}")));
        let resp = resp?;
        if resp.status() != StatusCode::CREATED {
            return Err(error_of("PUT", resp).await);
        }
        produced??;
        Ok(())
    }

    async fn start_upload(&self, ep: usize, repo: &str, scope: &str) -> Result<String> {
        let url = self.url(ep, &format!("{repo}/blobs/uploads/"));
        let resp = self
            .send(ep, scope, true, &|c| {
                Ok(c.post(&url).header(CONTENT_LENGTH, 0))
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(error_of("POST", resp).await);
        }
        Self::location(&resp)
    }

    /// Blobs up to this size go up in one PUT.
    fn whole_put_max(&self) -> u64 {
        match self.opts.chunk_size {
            0 => WHOLE_PUT_MAX,
            c => c.min(WHOLE_PUT_MAX),
        }
    }

    async fn put_whole(
        &self,
        ep: usize,
        scope: &str,
        loc: &str,
        desc: &Descriptor,
        path: &Path,
        bar: &ProgressBar,
    ) -> Result<()> {
        let url = Self::with_query(loc, "digest", desc.digest.as_str())?;
        bar.set_position(0);
        let watch = Watch::new(Some(desc.size));
        let resp = self
            .send_upload(ep, scope, &watch, &url, &|c| {
                Ok(c.put(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, desc.size)
                    .body(file_body(path, 0, desc.size, bar, &watch)?))
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(error_of("PUT", resp).await);
        }
        Ok(())
    }

    /// Where an upload session stands: the offset after the last byte the registry has.
    async fn upload_offset(&self, ep: usize, scope: &str, loc: &str) -> Result<(u64, String)> {
        let resp = self.send(ep, scope, true, &|c| Ok(c.get(loc))).await?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Err(error_of("GET", resp).await);
        }
        let next = Self::location(&resp).unwrap_or_else(|_| loc.to_string());
        let end = resp
            .headers()
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.rsplit('-').next())
            .and_then(|e| e.parse::<u64>().ok());
        // distribution says `0-0` for an empty upload too: resuming at 0 is right then, and
        // a registry that holds one byte refuses it (the upload then starts over).
        Ok((end.filter(|&e| e > 0).map_or(0, |e| e + 1), next))
    }

    async fn put_chunked(
        &self,
        ep: usize,
        scope: &str,
        mut loc: String,
        desc: &Descriptor,
        path: &Path,
        bar: &ProgressBar,
    ) -> Result<()> {
        let mut offset = 0u64;
        let mut backoff = self.backoff();
        while offset < desc.size {
            // One request for the rest of the blob unless chunks were asked for: a registry
            // takes one stream faster than many requests (10 GiB: 28-31 s against 34-36 s
            // in 64 MiB PATCHes), and a broken one is resumed from its offset all the same.
            let len = match self.opts.chunk_size {
                0 => desc.size - offset,
                c => c.min(desc.size - offset),
            };
            bar.set_position(offset);
            let watch = Watch::new(Some(len));
            let res = self
                .send_upload(ep, scope, &watch, &loc, &|c| {
                    Ok(c.request(Method::PATCH, &loc)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, len)
                        .header(CONTENT_RANGE, format!("{offset}-{}", offset + len - 1))
                        .body(file_body(path, offset, len, bar, &watch)?))
                })
                .await;
            let failed = match res {
                Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                    loc = Self::location(&resp)?;
                    offset += len;
                    continue;
                }
                Ok(resp) if offset == 0 && !retryable_status(resp.status().as_u16()) => {
                    return Err(Error::ChunkedRefused {
                        url: loc,
                        status: resp.status().as_u16(),
                    });
                }
                Ok(resp) if !retryable_status(resp.status().as_u16()) => {
                    return Err(error_of("PATCH", resp).await);
                }
                Ok(resp) => format!("HTTP {}", resp.status()),
                Err(Error::Stalled { why, .. }) => why,
                Err(Error::Http { source, .. }) => error_chain(&source),
                Err(e) => return Err(e),
            };
            let why = format!(
                "upload of {} from byte {offset} broke ({failed})",
                desc.digest
            );
            if !backoff.wait(why).await {
                return Err(protocol(
                    &loc,
                    format!(
                        "chunked upload of {} kept failing at byte {offset}",
                        desc.digest
                    ),
                ));
            }
            // Ask the registry how much it has and carry on from there.
            let (have, next) = self.upload_offset(ep, scope, &loc).await?;
            tracing::info!("registry has {have} bytes of {}, resuming", desc.digest);
            offset = have;
            loc = next;
        }
        let url = Self::with_query(&loc, "digest", desc.digest.as_str())?;
        let resp = self
            .send(ep, scope, true, &|c| {
                Ok(c.put(&url).header(CONTENT_LENGTH, 0))
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(error_of("PUT", resp).await);
        }
        Ok(())
    }

    /// Bytes `start..end` of a blob (`Range`), from the first endpoint that serves them;
    /// the caller verifies them. An endpoint that ignores `Range` is not read at all (its
    /// answer would be the blob from byte 0): [`Error::RangeIgnored`] if none serves it.
    pub async fn fetch_range(
        &self,
        repo: &str,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<bytes::Bytes> {
        let scope = format!("repository:{repo}:pull");
        let want = (end - start) as usize;
        let mut last = None;
        for ep in self.endpoints_for(|e| e.pull) {
            let url = self.url(ep, &format!("{repo}/blobs/{digest}"));
            let res = async {
                let resp = self
                    .send(ep, &scope, true, &|c| {
                        Ok(c.get(&url)
                            .header(RANGE, format!("bytes={start}-{}", end.saturating_sub(1))))
                    })
                    .await?;
                match resp.status() {
                    StatusCode::PARTIAL_CONTENT => {}
                    // Dropped unread: the connection closes instead of carrying the blob.
                    StatusCode::OK => return Err(Error::RangeIgnored { url: url.clone() }),
                    _ => return Err(error_of("GET", resp).await),
                }
                let mut out = bytes::BytesMut::with_capacity(want);
                let mut s = resp.bytes_stream();
                while out.len() < want {
                    let Some(b) = s.next().await else { break };
                    let b = b.map_err(|e| http_err(&url, e))?;
                    let take = b.len().min(want - out.len());
                    out.extend_from_slice(&b[..take]);
                }
                if out.len() != want {
                    return Err(protocol(
                        &url,
                        format!("range {start}-{end}: got {} of {want} bytes", out.len()),
                    ));
                }
                Ok(out.freeze())
            }
            .await;
            match res {
                Ok(b) => return Ok(b),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| self.no_endpoint("pull blobs")))
    }

    /// A blob in memory, verified, refusing more than `max` bytes.
    pub async fn get_blob_limited(
        &self,
        repo: &str,
        desc: &Descriptor,
        max: u64,
    ) -> Result<Vec<u8>> {
        if desc.size > max {
            return Err(CoreError::Invalid(format!(
                "blob {} is {} bytes; refusing more than {max}",
                desc.digest, desc.size
            ))
            .into());
        }
        let mut sink = VecSink(Vec::new());
        self.fetch_blob_into(repo, desc, &mut sink, &ProgressBar::hidden())
            .await?;
        Ok(sink.0)
    }

    /// The referrers of `subject` from the registry's referrers API (OCI distribution 1.1),
    /// or None when the registry has no such API (the caller then reads the tag schema).
    pub async fn referrers_api(
        &self,
        repo: &str,
        subject: &Digest,
    ) -> Result<Option<Vec<Descriptor>>> {
        let scope = format!("repository:{repo}:pull");
        let ep = *self.endpoints_for(|e| !e.mirror).first().unwrap_or(&0);
        let url = self.url(ep, &format!("{repo}/referrers/{subject}"));
        let resp = self
            .send(ep, &scope, true, &|c| {
                Ok(c.get(&url).header(ACCEPT, MEDIA_TYPE_INDEX))
            })
            .await?;
        let status = resp.status();
        let is_index = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(MEDIA_TYPE_INDEX));
        if !status.is_success() || !is_index {
            // 404 with an error body, or a registry that routes the path elsewhere.
            return if status.is_success()
                || matches!(
                    status,
                    StatusCode::NOT_FOUND
                        | StatusCode::BAD_REQUEST
                        | StatusCode::METHOD_NOT_ALLOWED
                ) {
                Ok(None)
            } else {
                Err(error_of("GET", resp).await)
            };
        }
        // Within the manifest limit, as any index from the registry.
        let mut body = Vec::new();
        let mut s = resp.bytes_stream();
        while let Some(chunk) = s.next().await {
            body.extend_from_slice(&chunk.map_err(|e| http_err(&url, e))?);
            if body.len() > MAX_MANIFEST {
                return Err(protocol(
                    &url,
                    format!("referrers list is over the {MAX_MANIFEST} byte limit"),
                ));
            }
        }
        let index: kitsnap_core::oci::Index =
            serde_json::from_slice(&body).map_err(|e| protocol(&url, format!("referrers: {e}")))?;
        Ok(Some(index.manifests))
    }

    /// Uploads a small blob held in memory, unless the registry has it.
    pub async fn push_bytes(&self, repo: &str, digest: &Digest, body: &[u8]) -> Result<()> {
        if self.blob_exists(repo, digest).await? {
            return Ok(());
        }
        let ep = self.push_endpoint()?;
        let scope = format!("repository:{repo}:pull,push");
        let loc = self.start_upload(ep, repo, &scope).await?;
        let url = Self::with_query(&loc, "digest", digest.as_str())?;
        let body = bytes::Bytes::copy_from_slice(body);
        let resp = self
            .send(ep, &scope, false, &|c| {
                Ok(c.put(&url)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, body.len())
                    .body(body.clone()))
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(error_of("PUT", resp).await);
        }
        Ok(())
    }

    /// Pushes a manifest under a tag or its digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        body: &[u8],
        media_type: &str,
    ) -> Result<Digest> {
        let ep = self.push_endpoint()?;
        let url = self.url(ep, &format!("{repo}/manifests/{reference}"));
        let scope = format!("repository:{repo}:pull,push");
        let body = body.to_vec();
        let resp = self
            .send(ep, &scope, true, &|c| {
                Ok(c.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(body.clone()))
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(error_of("PUT", resp).await);
        }
        Ok(Digest::of(&body))
    }
}

impl Registry {
    fn no_endpoint(&self, what: &str) -> Error {
        Error::Config {
            what: self.host.clone(),
            msg: format!("no endpoint (hosts.toml) can {what}"),
        }
    }
}

/// The target of a `Link: <URL>; rel="next"` header (the distribution spec's pagination).
fn next_link(h: &str) -> Option<String> {
    h.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            p.trim()
                .strip_prefix("rel=")
                .is_some_and(|v| v.trim_matches('"') == "next")
        });
        is_next.then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// `rb` sent to the same place over `http://` (a local registry without TLS).
fn to_plain_http(rb: RequestBuilder) -> Result<RequestBuilder> {
    let (client, req) = rb.build_split();
    let mut req = req.map_err(|e| http_err("", e))?;
    if req.url().scheme() == "https" {
        // Only fails for URLs without a host, which a request cannot have.
        let _ = req.url_mut().set_scheme("http");
    }
    Ok(RequestBuilder::from_parts(client, req))
}

/// An error and its sources on one line, for log lines and retry notices.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let m = s.to_string();
        // reqwest and hyper repeat their inner message; keep each part once.
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_pieces_are_whole_pooled_buffers() {
        // Socket-sized pieces that straddle every boundary.
        let input: Vec<u8> = (0..3 * GATHERED + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut g = Gather::default();
        let mut out = Vec::new();
        let (mut at, mut step) = (0, 1000);
        while at < input.len() {
            let end = (at + step).min(input.len());
            g.add(bytes::Bytes::copy_from_slice(&input[at..end]));
            while let Some(p) = g.next() {
                out.push(p);
            }
            at = end;
            step = if step == 1000 { 70_001 } else { 1000 };
        }
        out.extend(g.rest());
        assert_eq!(out.len(), 4);
        assert!(out[..3].iter().all(|p| p.len() == GATHERED));
        assert_eq!(out.concat(), input);
        // Each piece is one buffer of exactly its length (it never grew past it), taken
        // back by the pool once the piece is dropped, and handed out again.
        let pool = g.pool.clone();
        assert!(pool.0.lock().unwrap().is_empty());
        let ptrs: Vec<_> = out.iter().map(|p| p.as_ptr()).collect();
        drop(out);
        let kept: Vec<_> = pool
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|b| (b.as_ptr(), b.capacity(), b.len()))
            .collect();
        assert_eq!(kept.len(), 4);
        assert!(
            kept.iter()
                .all(|&(p, cap, len)| ptrs.contains(&p) && cap == GATHERED && len == 0)
        );
        g.add(bytes::Bytes::from(vec![7u8; 1000]));
        assert!(g.next().is_none());
        assert_eq!(g.pending.capacity(), GATHERED);
        assert!(
            ptrs.contains(&g.pending.as_ptr()),
            "a buffer of the pool, reused"
        );
        // A piece bigger than a whole one arrives while 1000 bytes wait: they are topped up
        // and handed over, and the rest of it goes through uncopied.
        let big = bytes::Bytes::from(vec![1u8; 2 * GATHERED]);
        g.add(big.clone());
        let first = g.next().expect("a topped-up piece");
        assert_eq!(first.len(), GATHERED);
        assert_eq!(&first[..1000], &[7u8; 1000][..]);
        assert!(ptrs.contains(&first.as_ptr()));
        let rest = g.next();
        assert_eq!(rest.as_ref().map(|p| p.len()), Some(GATHERED + 1000));
        assert_eq!(
            rest.map(|p| p.as_ptr()),
            Some(big[GATHERED - 1000..].as_ptr()),
            "passed through, no copy"
        );
        assert!(g.next().is_none());
        assert!(g.rest().is_none());
        // Exactly filling a piece hands it over at once, with nothing left waiting.
        g.add(bytes::Bytes::from(vec![2u8; 10]));
        assert!(g.next().is_none());
        g.add(bytes::Bytes::from(vec![3u8; GATHERED - 10]));
        assert_eq!(g.next().map(|p| p.len()), Some(GATHERED));
        assert!(g.next().is_none());
        assert!(g.rest().is_none());
        // The pool keeps no more than POOLED buffers, however many pieces were out at once.
        let many: Vec<_> = (0..POOLED + 3)
            .filter_map(|_| {
                g.add(bytes::Bytes::from(vec![4u8; GATHERED - 1]));
                assert!(g.next().is_none());
                g.add(bytes::Bytes::from(vec![5u8; 1]));
                g.next()
            })
            .collect();
        assert_eq!(many.len(), POOLED + 3);
        drop(many);
        assert_eq!(pool.0.lock().unwrap().len(), POOLED);
    }

    #[test]
    fn next_link_of_tag_pages() {
        assert_eq!(
            next_link(r#"</v2/r/tags/list?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/r/tags/list?last=b&n=2")
        );
        assert_eq!(
            next_link(r#"<https://x/a>; rel="prev", <https://x/b>; rel=next"#).as_deref(),
            Some("https://x/b")
        );
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#).unwrap();
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.example.com/token");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(
            (s.as_str(), p["realm"].as_str()),
            ("basic", "Registry Realm")
        );
    }

    /// An upload counts as stalled after a silence of the stall window while its body is
    /// being sent, however long it has run; once the body is sent (its declared length
    /// taken, or its stream ended) the registry has 120 s to answer, and no more.
    #[tokio::test]
    async fn an_upload_is_stalled_by_silence_not_by_its_length() {
        let window = Duration::from_millis(60);
        let piece = || Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"12345"));
        let w = Watch::new(Some(10));
        let mut body = Box::pin(w.body(futures_util::stream::iter(vec![piece(), piece()])));
        for _ in 0..3 {
            tokio::time::sleep(window / 2).await;
            w.tick(0);
            assert_eq!(
                w.stalled(window, UPLOAD_ANSWER),
                None,
                "pieces keep it alive"
            );
        }
        assert!(body.next().await.is_some());
        tokio::time::sleep(window * 2).await;
        let why = w
            .stalled(window, UPLOAD_ANSWER)
            .expect("silent for twice the window");
        assert!(why.contains("took no bytes"), "{why}");
        assert!(body.next().await.is_some());
        tokio::time::sleep(window * 2).await;
        assert_eq!(
            w.stalled(window, UPLOAD_ANSWER),
            None,
            "sent whole: waiting for the answer"
        );
        // An answer that does not come within its limit of the last byte is a stall too.
        let why = w
            .stalled(window, window)
            .expect("unanswered past the limit");
        assert!(why.contains("no answer"), "{why}");

        let unknown = Watch::new(None);
        let mut body = Box::pin(unknown.body(futures_util::stream::iter(vec![piece()])));
        assert!(body.next().await.is_some());
        assert!(body.next().await.is_none());
        tokio::time::sleep(window * 2).await;
        assert_eq!(
            unknown.stalled(window, UPLOAD_ANSWER),
            None,
            "a stream's end is its last byte"
        );
    }

    /// A registry that sends a blob one byte every 100 ms: the download is broken off as
    /// stalled (and, with no retries left, fails) instead of hanging.
    #[tokio::test]
    async fn a_trickling_registry_is_a_stalled_download() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut req = [0u8; 4096];
                    let _ = s.read(&mut req).await;
                    let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for _ in 0..1_000_000 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if s.write_all(b"x").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let d = tempfile::tempdir().unwrap();
        let reg = Registry::new(
            &host,
            ClientOptions {
                plain_http: true,
                docker_config: Some(d.path().join("none.json")),
                hosts_dir: Some(d.path().to_path_buf()),
                retries: 1,
                backoff: Duration::from_millis(10),
                stall_window: Duration::from_millis(700),
                stall_bytes: 100,
                ..ClientOptions::default()
            },
        )
        .unwrap();
        let desc = Descriptor {
            digest: Digest::of(b"never"),
            size: 1_000_000,
            ..Descriptor::default()
        };
        let started = std::time::Instant::now();
        let mut sink = VecSink(Vec::new());
        let e = reg
            .fetch_blob_into("r", &desc, &mut sink, &ProgressBar::hidden())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("stalled"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}
