//! Content digests (`sha256:<hex>`) and a hasher that runs on its own thread so that
//! hashing overlaps with disk I/O on the caller's thread.

use std::fmt;
use std::str::FromStr;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn from_sha256_bytes(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(bytes)))
    }

    /// Digest of an in-memory buffer.
    pub fn of(data: &[u8]) -> Self {
        Self::from_sha256_bytes(&Sha256::digest(data))
    }

    pub fn algorithm(&self) -> &str {
        "sha256"
    }

    /// The hex part, used as the blob file name.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Short form for humans (`sha256:0123456789ab`).
    pub fn short(&self) -> &str {
        &self.0[..19]
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| Error::InvalidDigest(s.to_string()))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::InvalidDigest(s.to_string()));
        }
        Ok(Digest(s.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

const CHUNK: usize = 1 << 20;
/// Chunks queued for the hasher thread. Two absorb its jitter as well as four did (2 GiB
/// pack, pull and unpack timed alike), and an unpack of four layers at once holds 8 MiB
/// less.
const IN_FLIGHT: usize = 2;

/// SHA-256 computed on a background thread. `update` copies the bytes into a pooled
/// 1 MiB buffer and hands it over, and `update_shared` hands over a piece the caller owns
/// as it is, so memory stays at a few MiB whatever the input size. Both block while the
/// queue is full: call them off the async workers.
pub struct ThreadedHasher {
    buf: Vec<u8>,
    tx: Option<SyncSender<Piece>>,
    pool: Receiver<Vec<u8>>,
    /// Buffers made so far; at most [`BUFFERS`].
    made: usize,
    handle: Option<JoinHandle<(Sha256, u64)>>,
}

/// One being filled, [`IN_FLIGHT`] queued, one being hashed. Once all are made, `update`
/// waits for the hasher to hand one back instead of making another (heaptrack: a fifth
/// per hasher, 4 MiB of a 4-layer unpack's peak, for no speed).
const BUFFERS: usize = IN_FLIGHT + 2;

/// What the hasher thread takes: a pooled buffer (given back once hashed) or a piece the
/// caller already owns ([`ThreadedHasher::update_shared`]).
enum Piece {
    Pooled(Vec<u8>),
    Shared(bytes::Bytes),
}

/// Below this, a shared piece is copied like any slice: queuing many small pieces one by
/// one costs more than copying them.
const SHARE_MIN: usize = 64 << 10;

impl Default for ThreadedHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl ThreadedHasher {
    pub fn new() -> Self {
        let (tx, rx) = sync_channel::<Piece>(IN_FLIGHT);
        let (pool_tx, pool) = sync_channel::<Vec<u8>>(BUFFERS);
        let handle = std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let mut h = Sha256::new();
                let mut n = 0u64;
                for piece in rx {
                    match piece {
                        Piece::Pooled(mut chunk) => {
                            h.update(&chunk);
                            n += chunk.len() as u64;
                            chunk.clear();
                            let _ = pool_tx.try_send(chunk);
                        }
                        Piece::Shared(b) => {
                            h.update(&b);
                            n += b.len() as u64;
                        }
                    }
                }
                (h, n)
            })
            .ok();
        ThreadedHasher {
            buf: Vec::with_capacity(CHUNK),
            tx: Some(tx),
            pool,
            made: 1,
            handle,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = CHUNK - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK {
                self.flush();
            }
        }
    }

    /// Hashes a piece the caller owns without copying it (it is queued as it is), after
    /// what `update` took before it.
    pub fn update_shared(&mut self, data: bytes::Bytes) {
        if data.len() < SHARE_MIN {
            return self.update(&data);
        }
        if !self.buf.is_empty() {
            self.flush();
        }
        if let Some(tx) = &self.tx {
            // A hasher thread that is gone is reported by finish().
            let _ = tx.send(Piece::Shared(data));
        }
    }

    /// Hands the filled buffer to the hasher thread and takes an empty one.
    fn flush(&mut self) {
        if !self.send() {
            return;
        }
        self.buf = match self.pool.try_recv() {
            Ok(b) => b,
            Err(_) if self.made < BUFFERS => {
                self.made += 1;
                Vec::with_capacity(CHUNK)
            }
            // All made: the hasher returns one as it finishes a chunk (or has ended).
            Err(_) => self
                .pool
                .recv()
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK)),
        };
    }

    /// Sends what `buf` holds, if anything; false if nothing went.
    fn send(&mut self) -> bool {
        if self.buf.is_empty() {
            return false;
        }
        let full = std::mem::take(&mut self.buf);
        // The receiver only goes away if the hasher thread panicked; finish() reports it.
        self.tx
            .as_ref()
            .is_some_and(|tx| tx.send(Piece::Pooled(full)).is_ok())
    }

    /// Returns the digest and the number of bytes hashed.
    pub fn finish(mut self) -> Result<(Digest, u64)> {
        self.send();
        self.tx.take();
        let handle = self
            .handle
            .take()
            .ok_or_else(|| Error::Internal("could not start hasher thread".into()))?;
        let (h, n) = handle
            .join()
            .map_err(|_| Error::Internal("hasher thread panicked".into()))?;
        Ok((Digest::from_sha256_bytes(&h.finalize()), n))
    }
}

/// The SHA-256 and length of a blob given as its pieces in order: for a thread that
/// receives a download's pieces themselves, so nothing is copied to hash them.
pub fn digest_pieces<B: AsRef<[u8]>>(pieces: impl IntoIterator<Item = B>) -> (Digest, u64) {
    let mut h = Sha256::new();
    let mut n = 0u64;
    for p in pieces {
        h.update(p.as_ref());
        n += p.as_ref().len() as u64;
    }
    (Digest::from_sha256_bytes(&h.finalize()), n)
}

/// A writer that hashes everything written through it (on the hasher thread) and
/// counts bytes.
pub struct HashingWriter<W> {
    inner: W,
    hasher: ThreadedHasher,
}

impl<W: std::io::Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: ThreadedHasher::new(),
        }
    }

    pub fn finish(self) -> Result<(W, Digest, u64)> {
        let (d, n) = self.hasher.finish()?;
        Ok((self.inner, d, n))
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: ThreadedHasher,
}

impl<R: std::io::Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: ThreadedHasher::new(),
        }
    }

    /// Drains what the consumer left unread (tar padding, trailing blocks) so the digest
    /// covers the whole stream, then returns it.
    pub fn finish(mut self) -> Result<(Digest, u64)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        self.hasher.finish()
    }
}

/// A blob being read that is hashed as it is read: what the extractor verifies a layer
/// with. [`HashingReader`] copies what passes to its hasher thread; a reader that receives
/// the blob in owned pieces can hand the pieces themselves over
/// ([`ThreadedHasher::update_shared`]).
pub trait HashedRead: std::io::Read {
    /// Reads what is left, so that the digest covers the whole blob, and returns the
    /// digest and the number of bytes.
    fn finish(self) -> Result<(Digest, u64)>;

    /// A reader holding its bytes in owned pieces (a download) can write a large file's
    /// content straight into the file: see [`DirectWrite`].
    fn direct(&self) -> Option<DirectWrite> {
        None
    }
}

/// Lets a reader write what it would hand out straight into a file, instead of copying it
/// into the caller's buffer first (the tar reader's buffer, which the extractor then
/// writes out: a second copy of every byte, on the core the extraction shares with the
/// download). While a target is set, the reader's `read` writes into it, advances as if
/// it had filled the buffer, and leaves the buffer untouched; the extractor then writes
/// nothing itself. Only for reads of one regular file's content, whose bytes the tar
/// reader passes through as they are.
#[derive(Clone, Default)]
pub struct DirectWrite(std::sync::Arc<std::sync::Mutex<DirectState>>);

#[derive(Default)]
struct DirectState {
    target: Option<std::fs::File>,
    error: Option<std::io::Error>,
}

impl DirectWrite {
    fn state(&self) -> std::sync::MutexGuard<'_, DirectState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads go into `file` (a handle sharing the destination's offset) from now on.
    pub fn set(&self, file: std::fs::File) {
        let mut s = self.state();
        s.target = Some(file);
        s.error = None;
    }

    /// Reads go into the caller's buffer again; the error a direct write met, if any.
    pub fn clear(&self) -> Option<std::io::Error> {
        let mut s = self.state();
        s.target = None;
        s.error.take()
    }

    /// For the reader: writes `bytes` into the target if one is set (true), or does
    /// nothing (false). A failed write is kept for [`DirectWrite::clear`] and returned.
    pub fn write(&self, bytes: &[u8]) -> std::io::Result<bool> {
        use std::io::Write;
        let mut s = self.state();
        let Some(f) = s.target.as_mut() else {
            return Ok(false);
        };
        match f.write_all(bytes) {
            Ok(()) => Ok(true),
            Err(e) => {
                let kind = e.kind();
                let msg = e.to_string();
                s.error = Some(e);
                Err(std::io::Error::new(kind, msg))
            }
        }
    }
}

impl<R: std::io::Read> HashedRead for HashingReader<R> {
    fn finish(self) -> Result<(Digest, u64)> {
        HashingReader::finish(self)
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn parses_and_rejects() {
        let d = Digest::of(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.as_str().parse::<Digest>().ok(), Some(d.clone()));
        assert!("sha256:abc".parse::<Digest>().is_err());
        assert!(
            "md5:e3b0c44298fc1c149afbf4c8996fb924"
                .parse::<Digest>()
                .is_err()
        );
        let upper = d.as_str().to_uppercase().replace("SHA256", "sha256");
        assert!(upper.parse::<Digest>().is_err());
        assert!(
            "sha256:../../../../etc/passwd0000000000000000000000000000000000000000"
                .parse::<Digest>()
                .is_err()
        );
    }

    #[test]
    fn threaded_hasher_matches_direct_hash() {
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = HashingWriter::new(Vec::new());
        for chunk in data.chunks(77_777) {
            w.write_all(chunk).unwrap();
        }
        let (out, d, n) = w.finish().unwrap();
        assert_eq!(out, data);
        assert_eq!(n, data.len() as u64);
        assert_eq!(d, Digest::of(&data));

        let mut r = HashingReader::new(&data[..]);
        let mut first = [0u8; 1000];
        r.read_exact(&mut first).unwrap();
        let (d2, n2) = r.finish().unwrap();
        assert_eq!(d2, d);
        assert_eq!(n2, data.len() as u64);
    }

    /// Owned pieces are queued as they are, in order with copied slices around them: after a
    /// partly filled buffer, small ones copied, any number in a row.
    #[test]
    fn shared_pieces_hash_in_order_with_copied_ones() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut h = ThreadedHasher::new();
        let mut at = 0;
        for (i, len) in [1000, 1 << 20, 300_000, 10, 70_000, 2 << 20, 900_000, 5]
            .into_iter()
            .cycle()
            .enumerate()
        {
            let end = (at + len).min(data.len());
            let piece = &data[at..end];
            if i % 3 == 0 {
                h.update(piece);
            } else {
                h.update_shared(bytes::Bytes::copy_from_slice(piece));
            }
            at = end;
            if at == data.len() {
                break;
            }
        }
        assert_eq!(h.finish().unwrap(), (Digest::of(&data), data.len() as u64));
        assert_eq!(
            digest_pieces(data.chunks(123_457)),
            (Digest::of(&data), data.len() as u64)
        );
    }
}
