#[path = "it/snapshot_conformance.rs"]
mod snapshot_conformance;
