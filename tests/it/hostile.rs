//! Unpack must refuse hostile layers and never write outside its target directory.
//! The layers are tar streams written byte by byte here, since tar libraries refuse to
//! produce most of these entries.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use kitsnap_core::oci::{self, Descriptor, Manifest};
use kitsnap_core::store::Store;

use crate::support::*;

/// One raw ustar entry.
fn entry(name: &str, typeflag: u8, link: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tar_of(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut t: Vec<u8> = entries.concat();
    t.extend_from_slice(&[0u8; 1024]);
    t
}

/// Stores a one-layer ModelKit whose model layer is `layer`, tagged `name`.
fn store_kit(store: &Path, name: &str, layer: &[u8]) {
    let s = Store::open(store).unwrap();
    let l = s
        .put_bytes("application/vnd.kitops.modelkit.model.v1.tar", layer)
        .unwrap();
    let cfg = format!(
        r#"{{"manifestVersion":"1.0.0","package":{{"name":"evil"}},"model":{{"path":"m","digest":"{}"}}}}"#,
        l.digest
    );
    let c = s
        .put_bytes(oci::KIT_CONFIG_MEDIA_TYPE, cfg.as_bytes())
        .unwrap();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_MANIFEST.into()),
        artifact_type: Some(oci::ARTIFACT_TYPE_KIT.into()),
        config: c,
        layers: vec![l],
        subject: None,
        annotations: BTreeMap::new(),
    };
    let md = s
        .put_bytes(oci::MEDIA_TYPE_MANIFEST, &oci::to_go_json(&m).unwrap())
        .unwrap();
    s.tag(&name.parse().unwrap(), &md).unwrap();
}

/// Unpacks into `<tmp>/sandbox/out` and checks that the sandbox holds nothing else.
fn assert_refused(layer: Vec<u8>, expect: &str) {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    store_kit(&store, "evil:1", &layer);
    let sandbox = t.path().join("sandbox");
    let out = sandbox.join("out");
    fs::create_dir_all(&out).unwrap();
    let e = fails(
        &store,
        &[
            "unpack",
            "evil:1",
            "-d",
            out.to_str().unwrap(),
            "--filter",
            "model",
        ],
    );
    assert!(e.contains(expect), "expected {expect:?} in: {e}");
    let outside: Vec<_> = fs::read_dir(&sandbox)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, ["out"], "something was written beside the target");
    assert!(!t.path().join("evil").exists() && !Path::new("/tmp/kitsnap-evil").exists());
    // What the layer managed to create before it was refused has been removed again.
    assert!(files(&out).is_empty(), "left behind: {:?}", files(&out));
}

#[test]
fn refuses_parent_traversal() {
    assert_refused(
        tar_of(&[
            entry("m/ok", b'0', "", b"x"),
            entry("../evil", b'0', "", b"x"),
        ]),
        "contains `..`",
    );
    assert_refused(
        tar_of(&[entry("m/../../evil", b'0', "", b"x")]),
        "contains `..`",
    );
}

#[test]
fn refuses_absolute_paths() {
    assert_refused(
        tar_of(&[entry("/tmp/kitsnap-evil", b'0', "", b"x")]),
        "absolute path",
    );
}

#[test]
fn refuses_symlinks_leaving_the_target() {
    assert_refused(tar_of(&[entry("m/l", b'2', "/etc", b"")]), "absolute path");
    assert_refused(
        tar_of(&[entry("m/l", b'2', "../../evil", b"")]),
        "outside the target",
    );
}

#[test]
fn refuses_writing_through_a_symlink() {
    // The link itself stays inside, but a later entry tries to write through it.
    assert_refused(
        tar_of(&[entry("m/d", b'2', ".", b""), entry("m/d/f", b'0', "", b"x")]),
        "through the symlink",
    );
}

#[test]
fn refuses_hardlinks_leaving_the_target() {
    assert_refused(
        tar_of(&[entry("m/h", b'1', "/etc/passwd", b"")]),
        "hardlink",
    );
    assert_refused(tar_of(&[entry("m/h", b'1', "../../x", b"")]), "hardlink");
    assert_refused(
        tar_of(&[entry("m/h", b'1', "m/not-earlier", b"")]),
        "earlier in the same layer",
    );
}

#[test]
fn refuses_devices_fifos_and_duplicates() {
    assert_refused(tar_of(&[entry("m/null", b'3', "", b"")]), "device node");
    assert_refused(tar_of(&[entry("m/blk", b'4', "", b"")]), "device node");
    assert_refused(tar_of(&[entry("m/fifo", b'6', "", b"")]), "fifo");
    assert_refused(
        tar_of(&[entry("m/a", b'0', "", b"1"), entry("m/a", b'0', "", b"2")]),
        "duplicate entry",
    );
}

/// Stores `k:1`, one model layer whose blob has a byte flipped inside the file's bytes:
/// still a valid tar, but not the content its digest names.
fn store_corrupt_kit(store: &Path) {
    store_kit(
        store,
        "k:1",
        &tar_of(&[entry("m/weights", b'0', "", &bytes(5000, 3))]),
    );
    let s = Store::open(store).unwrap();
    let d = s.resolve(&"k:1".parse().unwrap()).unwrap();
    let path = s.blob_path(&s.manifest(&d).unwrap().layers[0].digest);
    let mut data = fs::read(&path).unwrap();
    data[600] ^= 0xff;
    fs::write(&path, &data).unwrap();
}

#[test]
fn failed_unpack_leaves_no_kitfile() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    store_corrupt_kit(&store);
    let out = t.path().join("out");
    // No filter: the Kitfile is wanted too, and must not describe files that are not there.
    let e = fails(&store, &["unpack", "k:1", "-d", out.to_str().unwrap()]);
    assert!(e.contains("does not match its digest"), "{e}");
    assert!(files(&out).is_empty(), "left behind: {:?}", files(&out));
}

#[test]
fn refuses_corrupt_blobs_and_rolls_back() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    store_corrupt_kit(&store);
    let s = Store::open(&store).unwrap();
    let d = s.resolve(&"k:1".parse().unwrap()).unwrap();
    let out = t.path().join("out");
    let e = fails(
        &store,
        &[
            "unpack",
            "k:1",
            "-d",
            out.to_str().unwrap(),
            "--filter",
            "model",
        ],
    );
    assert!(e.contains("does not match its digest"), "{e}");
    assert!(
        files(&out).is_empty(),
        "corrupt content was left: {:?}",
        files(&out)
    );

    // A tampered manifest is caught before any layer is read.
    let mpath = s.blob_path(&d.digest);
    let mut mb = fs::read(&mpath).unwrap();
    mb.push(b' ');
    fs::write(&mpath, &mb).unwrap();
    let e = fails(&store, &["inspect", "k:1"]);
    assert!(e.contains("does not match its digest"), "{e}");
}

#[test]
fn accepts_safe_links_inside_the_layer() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    store_kit(
        &store,
        "ok:1",
        &tar_of(&[
            entry("m", b'5', "", b""),
            entry("m/real", b'0', "", b"data"),
            entry("m/soft", b'2', "real", b""),
            entry("m/hard", b'1', "m/real", b""),
        ]),
    );
    let out = t.path().join("out");
    ok(
        &store,
        &[
            "unpack",
            "ok:1",
            "-d",
            out.to_str().unwrap(),
            "--filter",
            "model",
        ],
    );
    assert_eq!(fs::read(out.join("m/soft")).unwrap(), b"data");
    assert_eq!(fs::read(out.join("m/hard")).unwrap(), b"data");
}

#[test]
fn rejects_non_modelkit_artifacts() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let s = Store::open(&store).unwrap();
    let c = s
        .put_bytes("application/vnd.oci.image.config.v1+json", b"{}")
        .unwrap();
    let m = Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor { ..c },
        layers: vec![],
        subject: None,
        annotations: BTreeMap::new(),
    };
    let md = s
        .put_bytes(oci::MEDIA_TYPE_MANIFEST, &oci::to_go_json(&m).unwrap())
        .unwrap();
    s.tag(&"image:1".parse().unwrap(), &md).unwrap();
    let e = fails(
        &store,
        &[
            "unpack",
            "image:1",
            "-d",
            t.path().join("o").to_str().unwrap(),
        ],
    );
    assert!(e.contains("not a ModelKit"), "{e}");
}
