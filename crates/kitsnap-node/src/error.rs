//! kitsnap-node's error type: what a pull into containerd, a mount or the daemon can hit.
//! The snapshotter has its own ([`crate::snapshotter::SnapError`]), mapped to the gRPC
//! codes containerd expects.

pub use kitsnap_core::Error as CoreError;
pub use kitsnap_registry::Error as RegistryError;

use crate::containerd::CtrError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] CoreError),

    #[error(transparent)]
    Registry(#[from] RegistryError),

    #[error(transparent)]
    Containerd(#[from] CtrError),

    #[error(transparent)]
    Snapshot(#[from] crate::snapshotter::SnapError),

    /// A mount or unmount syscall failed.
    #[error("{what}")]
    Mount {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// Node metadata (mount records, volumes) could not be read or written.
    #[error(transparent)]
    Record(#[from] crate::records::RecordError),

    /// A listening socket could not be set up.
    #[error("socket {path}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// The gRPC server failed.
    #[error("gRPC server")]
    Serve(#[source] tonic::transport::Error),

    /// A settings file or value that cannot be used.
    #[error("{what}: {msg}")]
    Config { what: String, msg: String },

    /// kitsnap serve is stopping and takes no new work.
    #[error("kitsnap serve is shutting down; retry once it is back")]
    ShuttingDown,

    /// The work stopped for good (cancelled, or its consumer went away).
    #[error("{0}")]
    Aborted(String),

    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Core(CoreError::Io(e))
    }
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::Core(CoreError::Invalid(msg.into()))
    }

    pub fn not_found(msg: impl Into<String>) -> Error {
        Error::Core(CoreError::NotFound(msg.into()))
    }

    pub fn mount(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Mount {
            what: what.into(),
            source,
        }
    }
}

/// An error and its sources on one line (gRPC status messages, logs): each part once.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    kitsnap_registry::client::error_chain(e)
}
