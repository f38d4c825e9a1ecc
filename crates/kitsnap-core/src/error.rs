//! kitsnap-core's error type: formats, the store and extraction. Registry and containerd
//! errors are the crates above this one's; the CLI adds context with `anyhow` at the edges.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    #[error("{path}: {source}")]
    IoAt {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid digest {0:?} (expected sha256:<64 lowercase hex digits>)")]
    InvalidDigest(String),

    #[error("invalid reference {0:?}: {1}")]
    InvalidReference(String, String),

    #[error("Kitfile {file}: {msg}")]
    Kitfile { file: String, msg: String },

    #[error("invalid .kitignore pattern {0:?}: {1}")]
    Ignore(String, String),

    #[error("{0} not found in the local store (see `kitsnap list`)")]
    NotFound(String),

    #[error("{0}")]
    NotAModelKit(String),

    #[error("blob {digest}: content does not match its digest (got {actual})")]
    DigestMismatch { digest: String, actual: String },

    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },

    #[error("unsafe layer {layer}: {msg}")]
    UnsafeLayer { layer: String, msg: String },

    #[error("{0} already exists (use --overwrite to replace it)")]
    Exists(PathBuf),

    #[error("{} in the target: {}; nothing was written (use --overwrite to replace them)",
        if .0.len() == 1 { "1 file already exists".to_string() } else { format!("{} files already exist", .0.len()) },
        conflict_list(.0))]
    Conflicts(Vec<PathBuf>),

    #[error("invalid JSON in {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Index(#[from] crate::index::IndexError),

    #[error("internal error: {0}")]
    Internal(String),
}

/// The first few paths of a conflict, for one readable line.
fn conflict_list(paths: &[PathBuf]) -> String {
    const SHOWN: usize = 5;
    let mut s = paths
        .iter()
        .take(SHOWN)
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > SHOWN {
        s.push_str(&format!(", and {} more", paths.len() - SHOWN));
    }
    s
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the path to an I/O error, which `std::io::Error` never carries itself.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::IoAt {
            path: path.into(),
            source,
        })
    }
}
