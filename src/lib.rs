//! kitsnap: ModelKits (KitOps) and ModelPacks (CNCF) as first-class container artifacts.
//!
//! The library is split by job: `kitfile` (schema), `oci` (formats), `store` (local OCI
//! layout), `pack` / `unpack` (layers), `init` (Kitfile generation), `reference`, `ignore`,
//! `digest`; `registry` (distribution-v2 client), `credentials` (Docker config),
//! `hosts` (containerd mirrors) and `transfer` (push/pull); `snapshotter` (containerd's
//! snapshots.v1 server), `containerd` (client of containerd's services), `node` (ModelKits
//! pulled into containerd, views, `df`), `mount` (host mounts), `dockerplugin` (Docker
//! volume plugin), `daemon` (`kitsnap serve`); `cli` is the front end.

pub mod cli;
pub mod containerd;
pub mod credentials;
pub mod daemon;
pub mod digest;
pub mod dockerplugin;
pub mod error;
pub mod hosts;
pub mod ignore;
pub mod init;
pub mod kitfile;
pub mod mount;
pub mod node;
pub mod oci;
pub mod pack;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod snapshotter;
pub mod store;
pub mod transfer;
pub mod unpack;

pub use error::{Error, Result};

/// Formats a byte count for people (`1.5 GiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
