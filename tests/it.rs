//! kitsnap's integration tests: one test binary (one link) for every suite, run against the
//! built `kitsnap` binary and real peers (docker-registry, skopeo, oras, containerd 1.6 /
//! 1.7 / 2.x, runc, dockerd).
//!
//! The suites live in `tests/it/` and share one `support` tree. They run in one process,
//! concurrently: every test works in its own temporary directory with its own ports and
//! sockets, and the tests that start containerd or dockerd (or move gigabytes) take
//! `support::heavy()` so that only one of them runs at a time. A missing external component
//! skips a test loudly on a developer machine and fails it under CI (`support::require!`).

#[path = "it/support/mod.rs"]
mod support;

#[path = "it/architecture.rs"]
mod architecture;
#[path = "it/completions.rs"]
mod completions;
#[path = "it/containerd.rs"]
mod containerd;
#[path = "it/cri.rs"]
mod cri;
#[path = "it/daemon.rs"]
mod daemon;
#[path = "it/deploy.rs"]
mod deploy;
#[path = "it/docker.rs"]
mod docker;
#[path = "it/errors.rs"]
mod errors;
#[path = "it/hostile.rs"]
mod hostile;
#[path = "it/import.rs"]
mod import;
#[path = "it/index.rs"]
mod index;
#[path = "it/init.rs"]
mod init;
#[path = "it/interrupts.rs"]
mod interrupts;
#[path = "it/kit_conformance.rs"]
mod kit_conformance;
#[path = "it/large.rs"]
mod large;
#[path = "it/mirror.rs"]
mod mirror;
#[path = "it/modelkits.rs"]
mod modelkits;
#[path = "it/modelpack.rs"]
mod modelpack;
#[path = "it/node_core.rs"]
mod node_core;
#[path = "it/pack_unpack.rs"]
mod pack_unpack;
#[path = "it/registry.rs"]
mod registry;
#[path = "it/snapshot_conformance.rs"]
mod snapshot_conformance;
