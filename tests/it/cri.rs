//! Kubernetes image volumes (KEP-4639) through containerd 2.x's real CRI, driven over gRPC
//! as kubelet drives it: PullImage, RunPodSandbox (host network), CreateContainer with a
//! `Mount { image }`, StartContainer; the container reads a file of the volume. Each case is
//! one call of `support::cri::image_volume_case` with the volume's reference and the
//! expected file: an ordinary OCI image today, ModelKits once their image view lands.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::support::containerd::{Version, busybox_layer};
use crate::support::cri::*;
use crate::support::registry::{RegistryProc, free_port};
use crate::support::*;

/// Everything a CRI test needs from the machine; the containerd 2.x build, or None (a
/// loud skip; a failure under CI).
macro_rules! require_cri {
    () => {{
        require_containers!();
        require_registry!();
        require!(
            have_cmd("skopeo"),
            "skopeo (apt-get install skopeo; scripts/install-deps.sh does it)"
        );
        match cri_version(test_name!()) {
            Some(v) => v,
            None => return,
        }
    }};
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An ordinary OCI image, as `docker build` would make for a data image: the busybox
/// layer (uncompressed) and a gzip layer holding `data/model.bin` (`model`), pushed with
/// skopeo to `reference` over plain HTTP. Returns the file's path in the image.
fn push_data_image(dir: &Path, reference: &str, model: &[u8]) -> &'static str {
    const PATH: &str = "data/model.bin";
    let layout = dir.join("data-image");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = digest(data);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), data).unwrap();
        d
    };

    let base = busybox_layer();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    tar.append_data(&mut h, "data", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(model.len() as u64);
    tar.append_data(&mut h, PATH, model).unwrap();
    let data = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&data).unwrap();
    let data_gz = gz.finish().unwrap();

    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(&base), digest(&data)]}
    })
    .to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(config.as_bytes()), "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar",
             "digest": put(&base), "size": base.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             "digest": put(&data_gz), "size": data_gz.len()}
        ]
    })
    .to_string();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": put(manifest.as_bytes()), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let o = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://{reference}"),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "skopeo copy to {reference}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    PATH
}

/// A ModelKit with one model file (`model`), packed and pushed (plain HTTP) as `reference`
/// with kitsnap. Returns the model's path in the kit (and in its image view).
fn push_kit(dir: &Path, reference: &str, model: &[u8]) -> &'static str {
    const PATH: &str = "model.bin";
    let tree = dir.join("kit");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join(PATH), model).unwrap();
    std::fs::write(
        tree.join("Kitfile"),
        "manifestVersion: 1.0.0\npackage:\n  name: cri-volume\n  version: 1.0.0\nmodel:\n  name: m\n  path: model.bin\n",
    )
    .unwrap();
    let store = dir.join("store");
    ok(&store, &["pack", tree.to_str().unwrap(), "-t", reference]);
    ok(&store, &["push", reference, "--plain-http"]);
    PATH
}

/// The ordinary-image case on `snapshotter`: PullImage from a plain-HTTP registry named in
/// hosts.toml.
fn ordinary_image(v: &Version, snapshotter: Snapshotter) {
    let mut node = CriNode::start(v, snapshotter, &[], None);
    let reg = RegistryProc::start(&node.dir.join("registry"), None, None);
    node.hosts_toml(&reg.addr(), None);
    let reference = format!("{}/volumes/data:v1", reg.addr());
    let model = bytes(3 << 20, 11);
    let path = push_data_image(&node.dir, &reference, &model);
    image_volume_case(
        &mut node,
        Pull::Cri,
        &reference,
        Expected {
            path,
            sha256: &sha256_hex(&model),
        },
    );
}

#[test]
fn ordinary_image_as_an_image_volume_on_overlayfs() {
    let v = require_cri!();
    let _heavy = heavy();
    ordinary_image(&v, Snapshotter::Overlayfs);
}

#[test]
fn ordinary_image_as_an_image_volume_on_the_kitsnap_snapshotter() {
    let v = require_cri!();
    let _heavy = heavy();
    ordinary_image(&v, Snapshotter::Kitsnap);
}

/// A ModelKit pre-pulled with `kitsnap pull --containerd -n k8s.io` (no mirror): kubelet
/// finds it present and mounts it.
fn modelkit_prepulled(v: &Version, snapshotter: Snapshotter) {
    let mut node = CriNode::start(v, snapshotter, &[], None);
    let reg = RegistryProc::start(&node.dir.join("registry"), None, None);
    let reference = format!("{}/kits/model:v1", reg.addr());
    let model = bytes(3 << 20, 12);
    let path = push_kit(&node.dir, &reference, &model);
    image_volume_case(
        &mut node,
        Pull::KitsnapPull,
        &reference,
        Expected {
            path,
            sha256: &sha256_hex(&model),
        },
    );
}

/// A ModelKit pulled by the CRI itself (kubelet's PullImage, no kitsnap command) through
/// `kitsnap serve`'s registry mirror, named in hosts.toml.
fn modelkit_through_the_mirror(v: &Version, snapshotter: Snapshotter) {
    let mirror = format!("127.0.0.1:{}", free_port());
    let t = tempfile::tempdir().unwrap();
    let reg = RegistryProc::start(&t.path().join("registry"), None, None);
    // The mirror reaches the registry over plain HTTP.
    let serve_config = format!("plain_http = [\"{}\"]\n", reg.addr());
    let mut node = CriNode::start(
        v,
        snapshotter,
        &["--mirror-addr", &mirror],
        Some(&serve_config),
    );
    node.hosts_toml(&reg.addr(), Some(&mirror));
    let reference = format!("{}/kits/model:v1", reg.addr());
    let model = bytes(3 << 20, 13);
    let path = push_kit(t.path(), &reference, &model);
    image_volume_case(
        &mut node,
        Pull::Cri,
        &reference,
        Expected {
            path,
            sha256: &sha256_hex(&model),
        },
    );
    // On the kitsnap snapshotter the CRI's unpack asks for each layer with the
    // remote-snapshot label: kitsnap fills it from the registry itself (one write).
    let filled = node.ks.log().contains("fill: layer ");
    assert_eq!(
        filled,
        snapshotter == Snapshotter::Kitsnap,
        "layers filled by kitsnap on {snapshotter:?}"
    );
}

#[test]
fn modelkit_pulled_by_kitsnap_as_an_image_volume_on_overlayfs() {
    let v = require_cri!();
    let _heavy = heavy();
    modelkit_prepulled(&v, Snapshotter::Overlayfs);
}

#[test]
fn modelkit_pulled_by_kitsnap_as_an_image_volume_on_the_kitsnap_snapshotter() {
    let v = require_cri!();
    let _heavy = heavy();
    modelkit_prepulled(&v, Snapshotter::Kitsnap);
}

#[test]
fn modelkit_pulled_through_the_mirror_as_an_image_volume_on_overlayfs() {
    let v = require_cri!();
    let _heavy = heavy();
    modelkit_through_the_mirror(&v, Snapshotter::Overlayfs);
}

#[test]
fn modelkit_pulled_through_the_mirror_as_an_image_volume_on_the_kitsnap_snapshotter() {
    let v = require_cri!();
    let _heavy = heavy();
    modelkit_through_the_mirror(&v, Snapshotter::Kitsnap);
}
