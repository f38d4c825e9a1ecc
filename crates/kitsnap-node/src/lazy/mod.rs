//! Lazy layers: a ModelKit layer served to containers before all of it has arrived.
//!
//! When a pushed ModelKit carries a lazy index (`kitsnap_core::lazy`: a table of contents
//! and a BLAKE3 digest per 4 MiB chunk, published as an OCI referrer), the fill commits the
//! layer's snapshot at once and mounts a read-only FUSE file system on it. A read waits for
//! the chunks it needs: one streamed GET of the whole blob fills them in order while a
//! read of a chunk that stream has not reached asks for it with a `Range` GET of its own.
//! Every chunk is checked against the index before a container sees a byte of it, and the
//! whole blob against the layer's SHA-256 once complete: a layer that fails that check
//! fails every later read (EIO) and is logged, never served as it is.
//!
//! The snapshot directory keeps the blob (`lazy.blob`, sparse until filled), the index of
//! the layer and where it came from (`lazy.json`), and `lazy.done` once the blob is whole
//! and verified, so a restarted daemon mounts it again and fetches only what it lacks.
//! The file system lives in the daemon: while it is down, containers reading a lazy
//! layer get errors (ENOTCONN), as with any FUSE snapshotter (stargz, SOCI).

mod fs;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use kitsnap_core::digest::{Digest, HashingReader};
use kitsnap_core::lazy::{LazyLayer, chunk_hash};
use kitsnap_core::oci::Descriptor;
use kitsnap_registry::client::{BlobSink, Registry};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const BLOB: &str = "lazy.blob";
pub const META: &str = "lazy.json";
pub const DONE: &str = "lazy.done";
/// Written when the blob failed its digest or its index: it is never served again, across
/// restarts too.
pub const FAILED: &str = "lazy.failed";
/// Range requests in flight for reads ahead of the stream.
const RANGE_CONCURRENCY: usize = 4;
/// How long a read waits for its bytes before it fails (the registry retries meanwhile).
const READ_WAIT: Duration = Duration::from_secs(600);

/// What `lazy.json` records: enough to mount and fetch again after a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub registry: String,
    pub repository: String,
    pub media_type: String,
    pub layer: LazyLayer,
    /// The registry speaks plain HTTP (as the pull that made it was told).
    #[serde(default)]
    pub plain_http: bool,
    /// The pull's own TLS settings, beyond the daemon's (`kitsnap pull --containerd --lazy
    /// --ca-file ... --tls-verify=false --hosts-dir ...`): a restart fetches the rest with
    /// them too.
    #[serde(default)]
    pub tls_verify_off: bool,
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
    #[serde(default)]
    pub hosts_dir: Option<PathBuf>,
}

impl Meta {
    /// What reaches the layer's registry as the pull that made it did: `opts` (the
    /// daemon's) with the pull's own settings on top.
    pub fn reach(&self, opts: &mut kitsnap_registry::client::ClientOptions) {
        opts.plain_http |= self.plain_http;
        opts.tls_verify &= !self.tls_verify_off;
        for f in &self.ca_files {
            if !opts.ca_files.contains(f) {
                opts.ca_files.push(f.clone());
            }
        }
        if self.hosts_dir.is_some() {
            opts.hosts_dir.clone_from(&self.hosts_dir);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Missing,
    Wanted,
    Ready,
    /// Its last fetch failed; the next read asks again.
    Error,
}

struct State {
    chunks: Vec<Chunk>,
    ready: usize,
    /// Set when the blob can never be served (it failed its digest): every read fails.
    failed: Option<String>,
    /// The snapshot is gone: waiting reads give up, the fetch stops.
    closed: bool,
}

/// One layer's blob as it fills: what readers wait on and fetchers complete.
pub struct LazyBlob {
    meta: Meta,
    file: std::fs::File,
    dir: PathBuf,
    state: Mutex<State>,
    /// Woken at every change of `state` (waiting reads).
    changed: tokio::sync::Notify,
    wants: tokio::sync::mpsc::UnboundedSender<usize>,
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl LazyBlob {
    /// The blob recorded in snapshot directory `dir` (nothing verified yet: see `rescan`),
    /// and the queue of chunks readers want.
    fn open(dir: &Path) -> Result<(Arc<LazyBlob>, tokio::sync::mpsc::UnboundedReceiver<usize>)> {
        let meta: Meta = serde_json::from_slice(&std::fs::read(dir.join(META))?)
            .map_err(|e| Error::invalid(format!("{}: {e}", dir.join(META).display())))?;
        meta.layer
            .check()
            .map_err(|e| Error::invalid(e.to_string()))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(BLOB))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let n = meta.layer.chunks.len();
        let blob = Arc::new(LazyBlob {
            meta,
            file,
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                chunks: vec![Chunk::Missing; n],
                ready: 0,
                failed: None,
                closed: false,
            }),
            changed: tokio::sync::Notify::new(),
            wants: tx,
        });
        Ok((blob, rx))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn layer(&self) -> &LazyLayer {
        &self.meta.layer
    }

    pub fn is_complete(&self) -> bool {
        let s = self.lock();
        s.ready == s.chunks.len() && s.failed.is_none()
    }

    /// Waits until blob bytes `start..end` are present and verified, asking the fetch for
    /// the chunks they lack. A waiting read holds no thread: a thousand readers of a slow
    /// registry must not take the blocking pool the snapshotter needs. Errors are errnos
    /// for the reader.
    pub async fn ensure(&self, start: u64, end: u64) -> std::result::Result<(), i32> {
        if start >= end {
            return Ok(());
        }
        let cs = self.meta.layer.chunk_size;
        let (first, last) = ((start / cs) as usize, ((end - 1) / cs) as usize);
        let deadline = tokio::time::Instant::now() + READ_WAIT;
        let mut asked = false;
        loop {
            // Registered before the state is read, so that a change in between wakes it.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(r) = self.settled(first, last, &mut asked) {
                return r;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(libc::ETIMEDOUT);
            }
        }
    }

    /// Whether chunks `first..=last` settle a read: all ready (Ok), or an error for it.
    /// None: it waits, and the chunks nobody asked for yet are asked for.
    fn settled(
        &self,
        first: usize,
        last: usize,
        asked: &mut bool,
    ) -> Option<std::result::Result<(), i32>> {
        let mut s = self.lock();
        if let Some(why) = &s.failed {
            tracing::warn!(blob = %self.meta.layer.digest, %why, "lazy read refused");
            return Some(Err(libc::EIO));
        }
        if s.closed {
            return Some(Err(libc::EIO));
        }
        let mut all = true;
        for k in first..=last {
            match s.chunks[k] {
                Chunk::Ready => {}
                Chunk::Wanted => all = false,
                // One failed attempt per read: the reader gets EIO, the next read retries.
                Chunk::Error if *asked => return Some(Err(libc::EIO)),
                Chunk::Missing | Chunk::Error => {
                    all = false;
                    s.chunks[k] = Chunk::Wanted;
                    let _ = self.wants.send(k);
                }
            }
        }
        *asked = true;
        all.then_some(Ok(()))
    }

    /// Whether blob bytes `start..end` are all here (a read that will not wait).
    pub fn has(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let cs = self.meta.layer.chunk_size;
        let s = self.lock();
        s.failed.is_none()
            && s.chunks[(start / cs) as usize..=((end - 1) / cs) as usize]
                .iter()
                .all(|c| *c == Chunk::Ready)
    }

    pub fn read_at(&self, offset: u64, len: usize) -> std::result::Result<Vec<u8>, i32> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match self.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno(&e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    fn is_ready(&self, k: usize) -> bool {
        self.lock().chunks[k] == Chunk::Ready
    }

    fn closed(&self) -> bool {
        self.lock().closed
    }

    /// Verifies chunk `k` and writes it; false when it does not match the index.
    /// Blocking (hash and pwrite).
    fn put(&self, k: usize, bytes: &[u8]) -> std::io::Result<bool> {
        if self.is_ready(k) {
            return Ok(true);
        }
        if !self.matches(k, bytes) {
            return Ok(false);
        }
        self.file
            .write_all_at(bytes, self.meta.layer.chunk_range(k).0)?;
        self.mark_ready(k);
        Ok(true)
    }

    /// Whether `bytes` are chunk `k` as the index describes it. Blocking (hash).
    fn matches(&self, k: usize, bytes: &[u8]) -> bool {
        let (start, end) = self.meta.layer.chunk_range(k);
        bytes.len() as u64 == end - start
            && Some(chunk_hash(bytes)) == self.meta.layer.chunk_digest(k)
    }

    fn mark_ready(&self, k: usize) {
        let mut s = self.lock();
        if s.chunks[k] != Chunk::Ready {
            s.chunks[k] = Chunk::Ready;
            s.ready += 1;
        }
        drop(s);
        self.changed.notify_waiters();
    }

    fn set_chunk_error(&self, k: usize) {
        let mut s = self.lock();
        if s.chunks[k] != Chunk::Ready {
            s.chunks[k] = Chunk::Error;
        }
        drop(s);
        self.changed.notify_waiters();
    }

    fn fail(&self, why: String) {
        tracing::error!(blob = %self.meta.layer.digest, %why, "lazy layer failed; its reads fail from now on");
        let _ = std::fs::write(self.dir.join(FAILED), why.as_bytes());
        self.lock().failed = Some(why);
        self.changed.notify_waiters();
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    fn missing(&self) -> Vec<usize> {
        let s = self.lock();
        (0..s.chunks.len())
            .filter(|&k| s.chunks[k] != Chunk::Ready)
            .collect()
    }

    fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.meta.media_type.clone(),
            digest: self.meta.layer.digest.clone(),
            size: self.meta.layer.size,
            ..Descriptor::default()
        }
    }

    /// Marks every chunk the file already holds (after a restart) as ready. Blocking.
    fn rescan(&self) -> std::io::Result<()> {
        if let Ok(why) = std::fs::read_to_string(self.dir.join(FAILED)) {
            self.lock().failed = Some(why);
            return Ok(());
        }
        if self.dir.join(DONE).exists() {
            let mut s = self.lock();
            s.chunks.iter_mut().for_each(|c| *c = Chunk::Ready);
            s.ready = s.chunks.len();
            return Ok(());
        }
        for k in 0..self.meta.layer.chunks.len() {
            let (start, end) = self.meta.layer.chunk_range(k);
            let mut buf = vec![0u8; (end - start) as usize];
            self.file.read_exact_at(&mut buf, start)?;
            // Checked in place: a chunk already on disk is not written again.
            if self.matches(k, &buf) {
                self.mark_ready(k);
            }
        }
        Ok(())
    }

    /// Reads the blob once. Returns its SHA-256 when `hash` (when the stream did not vouch
    /// for it), and whether the index built again from it is the one served from: chunk
    /// digests and table of contents alike (a lying table of contents would otherwise stay
    /// wrong for good). Blocking.
    fn check_file(&self, hash: bool) -> std::io::Result<(Option<Digest>, bool)> {
        // Its own descriptor: a clone would share (and move) the file offset.
        let f = std::fs::File::open(self.dir.join(BLOB))?;
        let r = std::io::BufReader::with_capacity(1 << 20, f);
        let desc = self.descriptor();
        if !hash {
            let got = kitsnap_core::lazy::index_layer(r, &desc).map_err(std::io::Error::other)?;
            return Ok((None, self.index_is(got)?));
        }
        let mut r = HashingReader::new(r);
        let got = kitsnap_core::lazy::index_layer(&mut r, &desc);
        let (digest, _) = r.finish().map_err(std::io::Error::other)?;
        if digest != self.meta.layer.digest {
            // Not the layer: what its index says no longer matters.
            return Ok((Some(digest), false));
        }
        let got = got.map_err(std::io::Error::other)?;
        Ok((Some(digest), self.index_is(got)?))
    }

    /// Whether `got`, an index built from the blob, is the one served from.
    fn index_is(&self, mut got: Option<LazyLayer>) -> std::io::Result<bool> {
        let want = &self.meta.layer;
        if let Some(g) = got.as_mut() {
            // The chunk size is the index's to choose: compare at its size.
            if g.chunk_size != want.chunk_size {
                g.chunk_size = want.chunk_size;
                g.chunks = want
                    .chunks
                    .iter()
                    .enumerate()
                    .map(|(k, _)| {
                        let (s, e) = want.chunk_range(k);
                        let mut buf = vec![0u8; (e - s) as usize];
                        self.file.read_exact_at(&mut buf, s)?;
                        Ok(hex::encode(chunk_hash(&buf)))
                    })
                    .collect::<std::io::Result<_>>()?;
            }
        }
        Ok(got.as_ref() == Some(want))
    }

    fn mark_done(&self) -> std::io::Result<()> {
        self.file.sync_all()?;
        std::fs::write(self.dir.join(DONE), b"")?;
        Ok(())
    }
}

/// The stream of the whole blob, cut into chunks as it arrives.
struct ChunkSink {
    blob: Arc<LazyBlob>,
    buf: bytes::BytesMut,
    k: usize,
    /// A streamed chunk differed from the index (whether or not a range had filled it):
    /// if the stream's SHA-256 then passes, the index lies.
    mismatch: bool,
}

impl ChunkSink {
    async fn flush_chunk(&mut self, len: usize) -> kitsnap_registry::Result<()> {
        let chunk = self.buf.split_to(len).freeze();
        let (b, k) = (self.blob.clone(), self.k);
        self.k += 1;
        // Chunks a range filled already are checked against the stream's bytes too: the
        // stream is what the layer's SHA-256 covers.
        let ok = tokio::task::spawn_blocking(move || {
            if b.is_ready(k) {
                Ok(Some(chunk_hash(&chunk)) == b.meta.layer.chunk_digest(k))
            } else {
                b.put(k, &chunk)
            }
        })
        .await
        .map_err(|e| kitsnap_registry::Error::Aborted(format!("lazy chunk: {e}")))?
        .map_err(|e| kitsnap_registry::Error::Sink(Box::new(e)))?;
        if !ok {
            self.mismatch = true;
            // The blob's own digest decides below; this chunk is not served meanwhile.
            tracing::warn!(blob = %self.blob.meta.layer.digest, chunk = k, "streamed chunk does not match the lazy index");
        }
        Ok(())
    }
}

impl BlobSink for ChunkSink {
    async fn reset(&mut self) -> kitsnap_registry::Result<()> {
        self.buf.clear();
        self.k = 0;
        self.mismatch = false;
        Ok(())
    }

    async fn write(&mut self, data: bytes::Bytes) -> kitsnap_registry::Result<()> {
        if self.blob.closed() {
            return Err(kitsnap_registry::Error::Aborted(
                "the lazy snapshot was removed".into(),
            ));
        }
        self.buf.extend_from_slice(&data);
        loop {
            let (s, e) = self.blob.meta.layer.chunk_range(self.k);
            let len = (e - s) as usize;
            if len == 0 || self.buf.len() < len {
                return Ok(());
            }
            self.flush_chunk(len).await?;
        }
    }

    async fn finish(&mut self) -> kitsnap_registry::Result<()> {
        if !self.buf.is_empty() {
            let len = self.buf.len();
            self.flush_chunk(len).await?;
        }
        Ok(())
    }
}

/// Fetches chunk `k` with a `Range` GET and stores it if it matches the index; false (and
/// logged) when it could not be fetched or did not match. A registry that answers with the
/// whole blob sets `ignored` (warned once): its chunks can only come from a stream.
async fn fetch_chunk(blob: &Arc<LazyBlob>, reg: &Registry, ignored: &AtomicBool, k: usize) -> bool {
    if ignored.load(Ordering::SeqCst) {
        return false;
    }
    let digest = &blob.meta.layer.digest;
    let (s, e) = blob.meta.layer.chunk_range(k);
    let got = match reg.fetch_range(&blob.meta.repository, digest, s, e).await {
        Ok(bytes) => {
            let b = blob.clone();
            tokio::task::spawn_blocking(move || b.put(k, &bytes))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        }
        Err(e @ kitsnap_registry::Error::RangeIgnored { .. }) => {
            if !ignored.swap(true, Ordering::SeqCst) {
                tracing::warn!(blob = %digest, error = %e, "reads ahead of the stream wait for it from now on");
            }
            return false;
        }
        Err(e) => Err(kitsnap_registry::client::error_chain(&e)),
    };
    match got {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(blob = %digest, chunk = k, "range does not match the lazy index");
            false
        }
        Err(why) => {
            tracing::warn!(blob = %digest, chunk = k, %why, "lazy range fetch failed");
            false
        }
    }
}

/// Streams of the whole blob one fill may start: the first, and one more when a registry
/// that ignores `Range` leaves the missing chunks nowhere else to come from.
const STREAMS: usize = 2;

/// Fills `blob` from the registry: the whole stream in order, and ranges that readers ask
/// for ahead of it. Ends when the blob is whole and verified, failed, or closed.
async fn fetch(
    blob: Arc<LazyBlob>,
    reg: Arc<Registry>,
    mut wants: tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    let started = std::time::Instant::now();
    let desc = blob.descriptor();
    // Set once a ranged GET came back whole: ranges are not asked for again.
    let ignored = Arc::new(AtomicBool::new(false));
    let stream = || {
        let (blob, reg, desc) = (blob.clone(), reg.clone(), desc.clone());
        async move {
            let mut sink = ChunkSink {
                blob: blob.clone(),
                buf: bytes::BytesMut::with_capacity(blob.meta.layer.chunk_size as usize),
                k: 0,
                mismatch: false,
            };
            let r = reg
                .fetch_blob_into(
                    &blob.meta.repository,
                    &desc,
                    &mut sink,
                    &indicatif::ProgressBar::hidden(),
                )
                .await;
            (r, sink.mismatch)
        }
    };
    let limit = Arc::new(tokio::sync::Semaphore::new(RANGE_CONCURRENCY));
    let ranges = async {
        while let Some(k) = wants.recv().await {
            // With `Range` ignored, the reader waits for the stream (never an EIO for it).
            if blob.is_ready(k) || blob.closed() || ignored.load(Ordering::SeqCst) {
                continue;
            }
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let (blob, reg, ignored) = (blob.clone(), reg.clone(), ignored.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if !blob.is_ready(k)
                    && !fetch_chunk(&blob, &reg, &ignored, k).await
                    && !ignored.load(Ordering::SeqCst)
                {
                    // The read that asked gets EIO; the next one asks again.
                    blob.set_chunk_error(k);
                }
            });
        }
    };
    tokio::pin!(ranges);
    // A blob some of which is on disk already (a restart) is completed by range: only what
    // it lacks is fetched.
    let mut stream_next = blob.lock().ready == 0;
    let mut streams = 0;
    let verified = loop {
        if stream_next {
            streams += 1;
            let (streamed, lied) = tokio::select! {
                r = stream() => r,
                // Never ends first: the sender lives in `blob`.
                _ = &mut ranges => return,
            };
            match streamed {
                // Bytes the layer's SHA-256 vouches for differ from what the index promised.
                Ok(()) if lied => {
                    blob.fail("the lazy index does not describe this layer".into());
                    return;
                }
                Ok(()) if blob.missing().is_empty() => break true,
                Ok(()) => {}
                Err(kitsnap_registry::Error::Core(
                    e @ kitsnap_core::Error::DigestMismatch { .. },
                )) => {
                    blob.fail(format!("the layer does not match its digest: {e}"));
                    return;
                }
                Err(e) if blob.closed() => {
                    tracing::debug!(error = %e, "lazy fetch stopped: snapshot removed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(blob = %desc.digest, error = %kitsnap_registry::client::error_chain(&e), "lazy stream broke; fetching the rest by range");
                }
            }
        }
        // Whatever is missing (the stream broke, a restart), by range, a few at a time,
        // while reads keep asking for theirs.
        let fill = futures_util::stream::iter(blob.missing())
            .map(|k| {
                let (blob, reg, ignored) = (blob.clone(), reg.clone(), ignored.clone());
                async move {
                    if blob.is_ready(k)
                        || blob.closed()
                        || fetch_chunk(&blob, &reg, &ignored, k).await
                        || blob.is_ready(k)
                    {
                        Ok(())
                    } else {
                        Err(k)
                    }
                }
            })
            .buffer_unordered(RANGE_CONCURRENCY)
            .try_collect::<Vec<()>>();
        let filled = tokio::select! {
            r = fill => r,
            _ = &mut ranges => return,
        };
        if blob.closed() {
            return;
        }
        match filled {
            Ok(_) => break false,
            Err(_) if ignored.load(Ordering::SeqCst) && streams < STREAMS => {
                tracing::warn!(blob = %desc.digest, "the registry ignores Range: streaming the whole blob again for the chunks it lacks");
                stream_next = true;
            }
            Err(k) => {
                blob.fail(format!("chunk {k} could not be fetched and verified"));
                return;
            }
        }
    };
    let b = blob.clone();
    let done = tokio::task::spawn_blocking(move || -> std::io::Result<(Option<Digest>, bool)> {
        // The stream hashed the blob on the way unless it had to fall back to ranges.
        let (actual, index_ok) = b.check_file(!verified)?;
        if index_ok {
            b.mark_done()?;
        }
        Ok((actual, index_ok))
    })
    .await;
    match done {
        Ok(Ok((Some(d), _))) if d != desc.digest => {
            blob.fail(format!("the blob hashes to {d}, not {}", desc.digest));
        }
        Ok(Ok((_, false))) => {
            blob.fail(
                "the lazy index does not describe this layer (read again from the verified blob)"
                    .into(),
            );
        }
        Ok(Ok(_)) => {
            tracing::info!(blob = %desc.digest, bytes = desc.size, secs = started.elapsed().as_secs_f64(), "lazy layer complete and verified");
        }
        Ok(Err(e)) => blob.fail(format!("finishing the blob: {e}")),
        Err(e) => blob.fail(format!("finishing the blob: {e}")),
    }
}

/// The lazy layers mounted by this daemon, by snapshot id.
#[derive(Default)]
pub struct Mounts {
    held: Mutex<HashMap<u64, (Arc<LazyBlob>, fuser::BackgroundSession)>>,
}

impl Mounts {
    /// Writes `meta` and a sparse blob into the snapshot directory `dir` (its `fs` still
    /// empty and unmounted). Blocking.
    pub fn prepare(dir: &Path, meta: &Meta) -> Result<()> {
        let f = std::fs::File::create(dir.join(BLOB))?;
        f.set_len(meta.layer.size)?;
        let j = serde_json::to_vec(meta).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(dir.join(META), j)?;
        Ok(())
    }

    /// Mounts the lazy layer recorded in `dir` on `dir/fs` and starts filling it, with
    /// `reg` (which must reach the layer's registry). Blocking; call it off the async
    /// workers with a runtime handle.
    pub fn mount(
        &self,
        id: u64,
        dir: &Path,
        reg: Arc<Registry>,
        rt: &tokio::runtime::Handle,
    ) -> Result<()> {
        if self.holds(id) {
            return Ok(());
        }
        let (blob, rx) = LazyBlob::open(dir)?;
        blob.rescan()?;
        let fs = fs::LazyFs::new(blob.clone(), rt.clone());
        // A mount left by a daemon that died is dead (ENOTCONN): this one replaces it.
        let _ = rustix::mount::unmount(dir.join("fs"), rustix::mount::UnmountFlags::DETACH);
        let session = fs::mount(fs, &dir.join("fs"))?;
        // Whole but never checked (a restart before the end): the fetch fetches nothing
        // and checks it.
        if !dir.join(DONE).exists() && blob.lock().failed.is_none() {
            rt.spawn(fetch(blob.clone(), reg, rx));
        }
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (blob, session));
        Ok(())
    }

    /// Whether this daemon serves snapshot `id`'s lazy layer.
    pub fn holds(&self, id: u64) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
    }

    /// Unmounts snapshot `id`'s lazy layer (if this daemon holds one) before its directory
    /// goes: waiting readers fail, the fetch stops. Blocking.
    pub fn release(&self, id: u64, fs_dir: &Path) {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some((blob, session)) = held {
            blob.close();
            // Detached: a container that still has it open keeps its view until it lets go.
            let _ = rustix::mount::unmount(fs_dir, rustix::mount::UnmountFlags::DETACH);
            drop(session);
        }
    }

    /// Unmounts every lazy layer (daemon shutdown).
    pub fn release_all(&self) {
        let all: Vec<_> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, (blob, session)) in all {
            blob.close();
            let fs_dir = blob.dir.join("fs");
            let _ = rustix::mount::unmount(&fs_dir, rustix::mount::UnmountFlags::DETACH);
            drop(session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kitsnap_core::lazy::index_layer;

    /// A lazy blob over a two-chunk-plus tar, prepared in a temporary snapshot directory.
    fn blob_of(
        chunk_size: u64,
    ) -> (
        tempfile::TempDir,
        Vec<u8>,
        Arc<LazyBlob>,
        tokio::sync::mpsc::UnboundedReceiver<usize>,
    ) {
        let mut b = tar::Builder::new(Vec::new());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "model.bin", &data[..]).unwrap();
        let tarball = b.into_inner().unwrap();
        let desc = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: Digest::of(&tarball),
            size: tarball.len() as u64,
            ..Descriptor::default()
        };
        let mut layer = index_layer(&tarball[..], &desc).unwrap().unwrap();
        // Smaller chunks than the format's, so that a small blob has several.
        layer.chunk_size = chunk_size;
        layer.chunks = tarball
            .chunks(chunk_size as usize)
            .map(|c| blake3::hash(c).to_hex().to_string())
            .collect();
        let t = tempfile::tempdir().unwrap();
        let meta = Meta {
            registry: "r".into(),
            repository: "x".into(),
            media_type: desc.media_type.clone(),
            layer,
            plain_http: true,
            tls_verify_off: false,
            ca_files: Vec::new(),
            hosts_dir: None,
        };
        Mounts::prepare(t.path(), &meta).unwrap();
        let (blob, rx) = LazyBlob::open(t.path()).unwrap();
        (t, tarball, blob, rx)
    }

    /// A read's wait for `start..end`, on a runtime of its own (as a FUSE read's task).
    fn wait(b: &LazyBlob, start: u64, end: u64) -> std::result::Result<(), i32> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(b.ensure(start, end))
    }

    /// Reads waiting on the network hold no thread: with a thousand of them waiting, the
    /// blocking pool (two threads here) still runs other work at once, and one chunk
    /// arriving releases them all.
    #[test]
    fn waiting_reads_hold_no_threads() {
        let (_t, tarball, blob, mut rx) = blob_of(100_000);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let readers: Vec<_> = (0..1000)
            .map(|i| {
                let b = blob.clone();
                rt.spawn(async move { b.ensure(i, i + 10).await })
            })
            .collect();
        assert_eq!(
            rx.blocking_recv(),
            Some(0),
            "the first read asks for chunk 0"
        );
        let other = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                tokio::task::spawn_blocking(|| "ran"),
            )
            .await
        });
        assert_eq!(other.ok().and_then(|r| r.ok()), Some("ran"));
        assert!(readers.iter().all(|r| !r.is_finished()), "they wait");
        let (s, e) = blob.meta.layer.chunk_range(0);
        assert!(blob.put(0, &tarball[s as usize..e as usize]).unwrap());
        for r in readers {
            assert_eq!(rt.block_on(r).unwrap(), Ok(()));
        }
        assert!(rx.try_recv().is_err(), "chunk 0 was asked for once");
    }

    #[test]
    fn only_chunks_matching_the_index_are_served() {
        let (_t, tarball, blob, mut rx) = blob_of(100_000);
        let (s, e) = blob.meta.layer.chunk_range(1);
        let mut bad = tarball[s as usize..e as usize].to_vec();
        bad[7] ^= 1;
        assert!(
            !blob.put(1, &bad).unwrap(),
            "a chunk that differs is refused"
        );
        assert!(!blob.has(s, e));
        assert!(blob.put(1, &tarball[s as usize..e as usize]).unwrap());
        assert!(blob.has(s, e));
        assert_eq!(wait(&blob, s + 10, e - 10), Ok(()));
        assert_eq!(
            blob.read_at(s, 100).unwrap(),
            &tarball[s as usize..s as usize + 100]
        );
        assert!(
            rx.try_recv().is_err(),
            "a read of ready bytes asks for nothing"
        );

        // A read across chunks 0..=1 asks for chunk 0 and waits for it.
        let (b2, t2) = (blob.clone(), tarball.clone());
        let reader = std::thread::spawn(move || {
            wait(&b2, 10, s + 10).map(|()| b2.read_at(10, s as usize).unwrap())
        });
        let k = rx.blocking_recv().unwrap();
        assert_eq!(k, 0);
        let (s0, e0) = blob.meta.layer.chunk_range(0);
        assert!(blob.put(0, &t2[s0 as usize..e0 as usize]).unwrap());
        assert_eq!(
            reader.join().unwrap().unwrap(),
            &tarball[10..10 + s as usize]
        );
    }

    #[test]
    fn failed_fetches_and_failed_blobs_are_errors_never_bytes() {
        let (_t, _tarball, blob, mut rx) = blob_of(100_000);
        let b2 = blob.clone();
        let reader = std::thread::spawn(move || wait(&b2, 0, 10));
        assert_eq!(rx.blocking_recv(), Some(0));
        blob.set_chunk_error(0);
        assert_eq!(
            reader.join().unwrap(),
            Err(libc::EIO),
            "the read that asked fails"
        );
        // The next read asks again.
        let b2 = blob.clone();
        let reader = std::thread::spawn(move || wait(&b2, 0, 10));
        assert_eq!(rx.blocking_recv(), Some(0));
        blob.fail("the blob hashes to something else".into());
        assert_eq!(reader.join().unwrap(), Err(libc::EIO));
        assert_eq!(
            wait(&blob, 0, 10),
            Err(libc::EIO),
            "a failed blob fails every read"
        );
        assert!(!blob.is_complete());
    }

    #[test]
    fn a_table_of_contents_that_lies_fails_once_the_blob_is_whole() {
        let (t, tarball, blob, _rx) = blob_of(100_000);
        for k in 0..blob.meta.layer.chunks.len() {
            let (s, e) = blob.meta.layer.chunk_range(k);
            assert!(blob.put(k, &tarball[s as usize..e as usize]).unwrap());
        }
        drop(blob);
        // Same chunks, a setuid bit the tar does not have.
        let mut meta: Meta =
            serde_json::from_slice(&std::fs::read(t.path().join(META)).unwrap()).unwrap();
        meta.layer.entries[0].mode |= 0o4000;
        std::fs::write(t.path().join(META), serde_json::to_vec(&meta).unwrap()).unwrap();
        let (lying, _rx) = LazyBlob::open(t.path()).unwrap();
        lying.rescan().unwrap();
        assert!(lying.is_complete(), "every chunk matches");
        assert_eq!(
            lying.check_file(true).unwrap(),
            (Some(lying.meta.layer.digest.clone()), false)
        );
        // A failed blob stays failed after a restart.
        lying.fail("the lazy index does not describe this layer".into());
        let (again, _rx) = LazyBlob::open(t.path()).unwrap();
        again.rescan().unwrap();
        assert_eq!(wait(&again, 0, 10), Err(libc::EIO));
    }

    #[test]
    fn a_restart_keeps_what_was_verified_and_a_removal_wakes_readers() {
        let (t, tarball, blob, _rx) = blob_of(100_000);
        let (s, e) = blob.meta.layer.chunk_range(2);
        assert!(blob.put(2, &tarball[s as usize..e as usize]).unwrap());
        drop(blob);
        let (again, mut rx) = LazyBlob::open(t.path()).unwrap();
        again.rescan().unwrap();
        assert!(again.has(s, e), "a verified chunk survives the restart");
        assert_eq!(
            again.missing(),
            (0..again.meta.layer.chunks.len())
                .filter(|&k| k != 2)
                .collect::<Vec<_>>()
        );
        let b2 = again.clone();
        let reader = std::thread::spawn(move || wait(&b2, 0, 10));
        assert_eq!(rx.blocking_recv(), Some(0));
        again.close();
        assert_eq!(reader.join().unwrap(), Err(libc::EIO));
        // Once whole and marked done, a restart trusts the file without reading it.
        for k in again.missing() {
            let (s, e) = again.meta.layer.chunk_range(k);
            assert!(again.put(k, &tarball[s as usize..e as usize]).unwrap());
        }
        assert_eq!(
            again.check_file(true).unwrap(),
            (Some(again.meta.layer.digest.clone()), true)
        );
        assert_eq!(again.check_file(false).unwrap(), (None, true));
        again.mark_done().unwrap();
        let (done, _rx) = LazyBlob::open(t.path()).unwrap();
        done.rescan().unwrap();
        assert!(done.is_complete());
    }
}
