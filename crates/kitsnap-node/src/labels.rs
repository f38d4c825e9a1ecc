//! Every label kitsnap reads or writes, in one place.
//!
//! containerd passes only `containerd.io/snapshot/*` and `containerd.io/snapshot.ref`
//! labels on to a proxy snapshotter, so everything the snapshotter must see lives under
//! `containerd.io/snapshot/kitsnap.*`.

/// On content and snapshots: keeps them from containerd's GC while set.
pub const GC_ROOT: &str = "containerd.io/gc.root";
/// On a lease: when containerd's GC may drop it (RFC 3339).
pub const GC_EXPIRE: &str = "containerd.io/gc.expire";
/// On a manifest: its config blob.
pub const GC_CONTENT_CONFIG: &str = "containerd.io/gc.ref.content.config";
/// On a manifest: `<prefix>.<i>` names layer blob i.
pub const GC_CONTENT_LAYER: &str = "containerd.io/gc.ref.content.l";
/// On a config: `<prefix>.<snapshotter>` names the top snapshot of the unpacked image.
pub const GC_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";
/// On content: `<prefix>.<registry host>` = repository it came from (Spegel reads it).
/// On a compressed blob: the digest of its uncompressed content (containerd's own label).
pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// From an image view's manifest to the ModelKit manifest it views (its `subject`).
pub const GC_CONTENT_SUBJECT: &str = "containerd.io/gc.ref.content.subject";
/// From an index to its manifests (`.<i>`).
pub const GC_CONTENT_MANIFEST: &str = "containerd.io/gc.ref.content.m";
pub const DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source";

/// The [`DISTRIBUTION_SOURCE`] key for a registry: `<prefix>.<host>`, the port dropped, as
/// containerd's `AppendDistributionSourceLabel` writes it (Spegel matches on that).
pub fn distribution_source(registry: &str) -> String {
    let host = match registry.rsplit_once(':') {
        // `[::1]:5000` and `host:5000`; a bare IPv6 address has no port to drop.
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => registry,
    };
    format!(
        "{DISTRIBUTION_SOURCE}.{}",
        host.trim_start_matches('[').trim_end_matches(']')
    )
}

/// Set by containerd on Prepare when a snapshotter may provide the layer itself
/// (the remote-snapshot protocol): the chain ID the committed snapshot must carry.
pub const TARGET_REF: &str = "containerd.io/snapshot.ref";

/// On each layer snapshot kitsnap commits: the layer blob it holds.
/// Also on every image-view layer, so that containerd's Prepare names the blob it wants.
pub const LAYER_DIGEST: &str = kitsnap_core::imageview::label::SNAPSHOT_LAYER;
/// On a layer snapshot served lazily (FUSE, filled as read; see `crate::lazy`).
pub const LAZY: &str = "containerd.io/snapshot/kitsnap.lazy";
/// On an active snapshot: compose ModelKit `REF:/DIR` into the rootfs.
pub const MODELKIT: &str = "containerd.io/snapshot/kitsnap.modelkit";
/// With [`MODELKIT`]: which of its layers (the `--filter` syntax).
pub const FILTER: &str = "containerd.io/snapshot/kitsnap.filter";
/// On a View: only these layers of the parent chain (0 = the bottom one), comma-separated.
pub const LAYERS: &str = "containerd.io/snapshot/kitsnap.layers";

/// On kitsnap's pull leases: the daemon (its state directory) that made them.
pub const LEASE_OWNER: &str = "dev.kitsnap.lease.owner";

/// On the image record of a ModelKit pulled by kitsnap.
pub const IMAGE_KIND: &str = "dev.kitsnap.modelkit";

/// Snapshot keys of `kitsnap pull --containerd`'s own layers (after containerd's
/// `<namespace>/<id>/` prefix). The pull unpacks such a layer itself, so a Prepare with this
/// key never asks the filler for it: that would download and unpack the layer twice.
pub const PULL_EXTRACT_KEY: &str = "kitsnap-extract-";

/// Whether a snapshotter key (as containerd passes it) is one of the pull's own.
pub fn is_pull_extract_key(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|k| k.starts_with(PULL_EXTRACT_KEY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_extract_keys_are_recognised_under_containerds_prefix() {
        assert!(is_pull_extract_key("ns/12/kitsnap-extract-5-sha256:ab"));
        assert!(!is_pull_extract_key("ns/12/extract-5-sha256:ab"));
        assert!(!is_pull_extract_key("kitsnap-extract-x/ns/12/other"));
    }

    #[test]
    fn distribution_source_drops_the_port_as_containerd_does() {
        use super::distribution_source as d;
        assert_eq!(d("ghcr.io"), "containerd.io/distribution.source.ghcr.io");
        assert_eq!(
            d("127.0.0.1:5000"),
            "containerd.io/distribution.source.127.0.0.1"
        );
        assert_eq!(d("[::1]:5000"), "containerd.io/distribution.source.::1");
    }
}
