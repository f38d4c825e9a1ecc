//! Progress bars on stderr, drawn only when stderr is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

fn style() -> ProgressStyle {
    // The rate and ETA come from indicatif's recent-weighted estimator: current speed,
    // not the average since the start.
    ProgressStyle::with_template(
        "{prefix:24!} [{bar:20}] {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} {eta:>3} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// A byte-counting bar with throughput and ETA, or a hidden one when not on a terminal.
pub fn bytes(total: u64, msg: impl Into<String>, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    pb.set_style(style());
    pb.set_prefix(msg.into());
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

/// Adds a byte bar labelled `msg` to `m` (its message is left for the outcome). The bar is styled before `m` draws it: a bar that drew on
/// its own first would leave a stray frame above the group.
pub fn multi_bytes(
    m: &indicatif::MultiProgress,
    total: u64,
    msg: impl Into<String>,
) -> ProgressBar {
    if m.is_hidden() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
        .with_style(style())
        .with_prefix(msg.into());
    m.add(pb)
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
