//! kitsnap-node: ModelKits on a containerd node.
//!
//! [`api`] holds every generated gRPC type; [`labels`] every label kitsnap reads or writes.
//! [`containerd`] is the client of containerd's services, [`mount`] the host mount
//! syscalls. [`snapshotter`] is the snapshots.v1 proxy snapshotter (metadata, overlay
//! mounts, ModelKit composition); [`node`] pulls ModelKits into containerd and keeps host
//! views ([`records`] keeps their state in redb); [`dockerplugin`] adapts the node to Docker's volume plugin protocol; [`daemon`]
//! runs it all as `kitsnap serve`.

pub mod api;
pub mod containerd;
pub mod daemon;
pub mod dockerplugin;
pub mod error;
pub mod labels;
pub mod lazy;
pub mod metrics;
pub mod mirror;
pub mod mount;
pub mod mountinfo;
pub mod node;
pub mod records;
pub mod registration;
pub mod snapshotter;

pub use error::{Error, Result};
