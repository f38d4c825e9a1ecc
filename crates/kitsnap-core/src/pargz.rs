//! gzip on several cores, as pigz does it: the input is cut into blocks that worker
//! threads deflate independently, each ended by a sync flush (so they join into one valid
//! deflate stream), and written in order with one gzip header and trailer. The output is
//! an ordinary single-member gzip file that any gunzip reads, and it depends only on the
//! input and the level, not on thread timing. Memory is bounded: at most
//! `2 × workers` blocks are in flight.
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
                        let mut c = Compress::new(level, false);
                        loop {
                            // The lock is held only while waiting for the next job.
                            let job = match rx.lock() {
                                Ok(rx) => rx.recv(),
                                Err(_) => return,
                            };
                            let Ok((data, last, reply)) = job else { return };
                            let _ = reply.send(deflate_block(&mut c, &data, last));
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
