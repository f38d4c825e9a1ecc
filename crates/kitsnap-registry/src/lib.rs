//! kitsnap-registry: the OCI distribution API, client side.
//!
//! [`client`] speaks to one registry (auth challenges and tokens, HEAD-skips, cross-repo
//! mounts, chunked and resumable transfers, digest checks while streaming), [`retry`] says
//! when and how long to wait, [`hosts`] reads containerd's `hosts.toml` mirrors,
//! [`credentials`] the Docker config and its helpers, and [`transfer`] moves ModelKits
//! between a registry and the local store.

pub mod client;
pub mod credentials;
pub mod error;
pub mod hosts;
pub mod retry;
pub mod transfer;

pub use client::{ClientOptions, Registry};
pub use error::{Error, Result};
