//! gzip on several cores, as pigz does it: the input is cut into blocks that worker
//! threads deflate independently, each ended by a sync flush (so they join into one valid
//! deflate stream), and written in order with one gzip header and trailer. The output is
//! an ordinary single-member gzip file that any gunzip reads, and it depends only on the
//! input and the level, not on thread timing. Memory is bounded: at most
//! `2 × workers` blocks are in flight. Blocks that deflate cannot shrink are stored (see
//! `Blocks`).
//!
//! (gzp does the same but panics in `Drop` when the sink fails, which a pack whose registry
//! goes away mid-upload would hit.)

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Input per block: large enough that the per-block flush costs nothing measurable, small
/// enough that memory stays flat.
const BLOCK: usize = 1 << 20;

type Job = (Vec<u8>, bool, mpsc::Sender<io::Result<Vec<u8>>>);

/// A `Write` that gzips into `out` on `workers` threads.
pub struct ParGzWriter<W: Write> {
    out: Option<W>,
    block: Vec<u8>,
    crc: Crc,
    jobs: Option<mpsc::SyncSender<Job>>,
    pending: VecDeque<mpsc::Receiver<io::Result<Vec<u8>>>>,
    workers: Vec<JoinHandle<()>>,
    max_pending: usize,
    /// Set by the first error: the stream is broken, every later call fails too.
    failed: bool,
}

impl<W: Write> ParGzWriter<W> {
    pub fn new(mut out: W, level: Compression, workers: usize) -> io::Result<Self> {
        // mtime 0 (reproducible), no name, OS "unknown" as flate2's encoder writes.
        let xfl = match level.level() {
            9.. => 2,
            1 => 4,
            _ => 0,
        };
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255])?;
        let workers = workers.max(1);
        let (tx, rx) = mpsc::sync_channel::<Job>(workers);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let handles = (0..workers)
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("kitsnap-gzip-{i}"))
                    .spawn(move || {
                        let mut c = Blocks::new(level);
                        loop {
                            // The lock is held only while waiting for the next job.
                            let job = match rx.lock() {
                                Ok(rx) => rx.recv(),
                                Err(_) => return,
                            };
                            let Ok((data, last, reply)) = job else { return };
                            let _ = reply.send(c.deflate(&data, last));
                        }
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ParGzWriter {
            out: Some(out),
            block: Vec::with_capacity(BLOCK),
            crc: Crc::new(),
            jobs: Some(tx),
            pending: VecDeque::new(),
            workers: handles,
            max_pending: 2 * workers,
            failed: false,
        })
    }

    /// Hands the current block to a worker; writes finished blocks out in order.
    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let (reply, result) = mpsc::channel();
        let jobs = self.jobs.as_ref().ok_or_else(closed)?;
        jobs.send((data, last, reply)).map_err(|_| worker_gone())?;
        self.pending.push_back(result);
        while self.pending.len() >= self.max_pending {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(r) = self.pending.pop_front() else {
            return Ok(());
        };
        let compressed = r.recv().map_err(|_| worker_gone())??;
        self.out.as_mut().ok_or_else(closed)?.write_all(&compressed)
    }

    /// Ends the stream (last block, CRC-32 and length) and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        if self.failed {
            return Err(broken());
        }
        self.dispatch(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        let mut out = self.out.take().ok_or_else(closed)?;
        out.write_all(&self.crc.sum().to_le_bytes())?;
        out.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(out)
    }
}

impl<W: Write> Write for ParGzWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(broken());
        }
        let n = buf.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        if self.block.len() == BLOCK
            && let Err(e) = self.dispatch(false)
        {
            self.failed = true;
            return Err(e);
        }
        Ok(n)
    }

    /// Blocks are cut at fixed sizes only (so the output does not depend on how the input
    /// was written); a flush writes out what workers have finished.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for ParGzWriter<W> {
    fn drop(&mut self) {
        // Closing the job channel ends the workers; results nobody reads are dropped.
        self.jobs.take();
        self.pending.clear();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Bytes of each probe, taken at the start and the middle of a block.
const PROBE: usize = 32 << 10;

/// A worker's compressors. A block whose probes shrink by less than 1/128 is stored, not
/// deflated: on incompressible bytes (quantized weights, archives, media) level 6 spends
/// ~20 ns a byte finding nothing, and storing them costs about that 1/128 of size. The
/// choice depends only on the block's bytes, so the output stays deterministic.
struct Blocks {
    deflate: Compress,
    store: Compress,
    probe: Compress,
    scratch: Vec<u8>,
}

impl Blocks {
    fn new(level: Compression) -> Self {
        Blocks {
            deflate: Compress::new(level, false),
            store: Compress::new(Compression::none(), false),
            probe: Compress::new(level, false),
            scratch: Vec::with_capacity(PROBE + PROBE / 8 + 64),
        }
    }

    fn deflate(&mut self, data: &[u8], last: bool) -> io::Result<Vec<u8>> {
        if self.incompressible(data)? {
            deflate_block(&mut self.store, data, last)
        } else {
            deflate_block(&mut self.deflate, data, last)
        }
    }

    /// Whether deflating both probes saves less than 1/128 of their bytes. Blocks too small
    /// to probe twice are deflated.
    fn incompressible(&mut self, data: &[u8]) -> io::Result<bool> {
        if data.len() < 2 * PROBE {
            return Ok(false);
        }
        let mid = data.len() / 2;
        let (mut taken, mut made) = (0, 0);
        for sample in [&data[..PROBE], &data[mid..mid + PROBE]] {
            self.probe.reset();
            self.scratch.clear();
            let status = self
                .probe
                .compress_vec(sample, &mut self.scratch, FlushCompress::Finish)
                .map_err(io::Error::other)?;
            if status != Status::StreamEnd {
                // Did not fit in 1/8 more than the input: nothing to gain.
                return Ok(true);
            }
            taken += sample.len();
            made += self.scratch.len();
        }
        Ok(made > taken - taken / 128)
    }
}

/// Raw deflate of one block: a sync flush after it (byte-aligned, not final), or the
/// final block of the stream.
fn deflate_block(c: &mut Compress, data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    c.reset();
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() + data.len() / 100 + 64);
    let mut consumed = 0;
    loop {
        if out.len() == out.capacity() {
            out.reserve(64 << 10);
        }
        let before = c.total_in();
        let status = c
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        consumed += (c.total_in() - before) as usize;
        let done = match status {
            Status::StreamEnd => true,
            // Sync flush is complete once all input is in and output room is left over.
            Status::Ok | Status::BufError => {
                !last && consumed == data.len() && out.len() < out.capacity()
            }
        };
        if done {
            return Ok(out);
        }
    }
}

fn closed() -> io::Error {
    io::Error::other("gzip stream already finished")
}

fn broken() -> io::Error {
    io::Error::other("the gzip stream failed earlier")
}

fn worker_gone() -> io::Error {
    io::Error::other("a gzip worker thread stopped")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn data(len: usize) -> Vec<u8> {
        // Compressible but not trivial.
        (0..len).map(|i| ((i * 7919) % 251 % 17) as u8).collect()
    }

    fn gz(input: &[u8], chunk: usize, workers: usize) -> Vec<u8> {
        let mut w = ParGzWriter::new(Vec::new(), Compression::default(), workers).unwrap();
        for c in input.chunks(chunk.max(1)) {
            w.write_all(c).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trips_at_block_edges_and_is_deterministic() {
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12345] {
            let input = data(len);
            let out = gz(&input, 64 << 10, 2);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&out[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, input, "{len} bytes");
            // Same bytes whatever the write sizes and worker count.
            assert_eq!(gz(&input, 1000, 1), out, "{len} bytes");
            assert_eq!(gz(&input, BLOCK * 2, 3), out, "{len} bytes");
        }
    }

    /// Bytes no deflate shrinks (xorshift: deterministic, no extra crate).
    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    #[test]
    fn incompressible_blocks_are_stored_and_the_rest_deflated() {
        let random = noise(3 * BLOCK + 777, 0x9e37_79b9_7f4a_7c15);
        let out = gz(&random, 64 << 10, 2);
        assert_eq!(gunzip(&out), random);
        // Deflate's own output for noise is stored blocks too, so size cannot tell the paths
        // apart; the probe's decision can.
        assert!(
            out.len() <= random.len() + random.len() / 1000,
            "{}",
            out.len()
        );
        let mut blocks = Blocks::new(Compression::default());
        assert!(blocks.incompressible(&random[..BLOCK]).unwrap());
        assert!(!blocks.incompressible(&data(BLOCK)).unwrap());
        assert!(
            !blocks.incompressible(&random[..PROBE]).unwrap(),
            "too small to probe"
        );
        assert_eq!(gz(&random, 1000, 1), out, "deterministic");

        // A block of noise between compressible ones: only it is stored.
        let mut mixed = data(BLOCK);
        mixed.extend_from_slice(&random[..BLOCK]);
        mixed.extend_from_slice(&data(BLOCK));
        let out = gz(&mixed, 64 << 10, 2);
        assert_eq!(gunzip(&out), mixed);
        assert!(
            out.len() > BLOCK && out.len() < BLOCK + BLOCK / 8,
            "{}",
            out.len()
        );

        // Noise only at the start of a block: the middle probe sees the rest compress.
        let mut head = random[..PROBE].to_vec();
        head.extend_from_slice(&data(BLOCK - PROBE));
        let out = gz(&head, 64 << 10, 2);
        assert_eq!(gunzip(&out), head);
        assert!(out.len() < BLOCK / 4, "{}", out.len());
        assert!(!blocks.incompressible(&head).unwrap());
    }

    #[test]
    fn a_failing_sink_is_an_error_not_a_panic() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(ParGzWriter::new(Broken, Compression::default(), 2).is_err());
        struct Later(usize);
        impl Write for Later {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::from(io::ErrorKind::BrokenPipe));
                }
                self.0 -= 1;
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = ParGzWriter::new(Later(2), Compression::default(), 2).unwrap();
        let input = data(10 * BLOCK);
        let r = w.write_all(&input).and_then(|_| w.finish().map(|_| ()));
        assert!(r.is_err());
    }
}
