//! Progress bars on stderr, drawn only when stderr is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-counting bar with throughput and ETA, or a hidden one when not on a terminal.
pub fn bytes(total: u64, msg: impl Into<String>, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg:20!} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {eta:>4}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(msg.into());
    pb
}

/// A set of bars drawn together (one per layer in transfers); hidden off a terminal.
pub fn multi(enabled: bool) -> indicatif::MultiProgress {
    if enabled && std::io::stderr().is_terminal() {
        indicatif::MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
    } else {
        indicatif::MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    }
}

/// Adds a byte bar to `m`.
pub fn multi_bytes(
    m: &indicatif::MultiProgress,
    total: u64,
    msg: impl Into<String>,
) -> ProgressBar {
    if m.is_hidden() {
        return ProgressBar::hidden();
    }
    m.add(bytes(total, msg, true))
}

/// Wraps a reader so that every byte read advances the bar.
pub struct ProgressReader<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R> ProgressReader<R> {
    pub fn new(inner: R, bar: ProgressBar) -> Self {
        ProgressReader { inner, bar }
    }
}

impl<R: std::io::Read> std::io::Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}
