//! Standard output for the verbs. A reader that goes away (`kitsnap list | head -1`) ends
//! the command quietly, as with other Unix tools, but only when it is *stdout* that
//! closed: SIGPIPE stays ignored, so a daemon dropping its socket is an error like any
//! other instead of killing the CLI silently.

use std::io::{self, Write};

/// Marks a write error as stdout's reader having gone away.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output closed")
    }
}

impl std::error::Error for StdoutClosed {}

pub struct Stdout(io::StdoutLock<'static>);

/// The locked standard output.
pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

fn mark(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Whether `e` is stdout's reader having gone away (then the command ends quietly).
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<StdoutClosed>())
            || c.is::<StdoutClosed>()
    })
}
