//! kitsnap-core: ModelKits (KitOps) and ModelPacks (CNCF) on disk, with no async runtime.
//!
//! Formats: [`digest`], [`reference`], [`oci`] (media types, manifests, Go-exact JSON),
//! [`kitfile`] and [`ignore`] (`.kitignore`), [`modelpack`] (model-spec file metadata, a
//! Kitfile for a ModelPack without one). Layers: [`layers`] (which manifest layer is
//! which Kitfile entry, `--filter`), [`extract`] (safe, digest-checked tar extraction),
//! [`pack`], [`unpack`], [`init`]. The local OCI image-layout [`store`], and ModelKit
//! indexes ([`index`]). Registries and containerd live in the crates above this one.

pub mod cleanup;
pub mod digest;
pub mod error;
pub mod extract;
pub mod goyaml;
pub mod ignore;
pub mod imageview;
pub mod index;
pub mod init;
pub mod kitfile;
pub mod layers;
pub mod lazy;
pub mod modelpack;
pub mod oci;
pub mod pack;
pub mod pargz;
pub mod progress;
pub mod reference;
pub mod store;
pub mod tarfmt;
pub mod unpack;

pub use error::{Error, IoContext, Result};

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

/// RFC 3339 in UTC to the second (`2026-11-18T11:06:40Z`), as containerd's labels and
/// model-spec's `createdAt` write it.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let t = |s: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        assert_eq!(rfc3339(t(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(t(1_700_000_000)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(t(1_795_000_000)), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
