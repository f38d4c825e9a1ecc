//! Multi-GB behaviour: memory stays flat, and a killed pack never corrupts the store.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::support::*;

const GIB: u64 = 1 << 30;

/// A sparse file of `size` bytes with a few non-zero regions, and its sha256.
fn sparse_file(path: &std::path::Path, size: u64) -> String {
    let mut f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    use std::io::Seek;
    for off in [0, size / 3, size - 4096] {
        f.seek(std::io::SeekFrom::Start(off)).unwrap();
        f.write_all(&bytes(4096, off)).unwrap();
    }
    drop(f);
    sha256_file(path)
}

fn sha256_file(path: &std::path::Path) -> String {
    let mut h = Sha256::new();
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

#[test]
fn multi_gb_pack_and_unpack_in_flat_memory() {
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    fs::create_dir_all(&src).unwrap();
    let size = 5 * GIB / 2;
    let sum = sparse_file(&src.join("big.bin"), size);
    fs::write(
        src.join("Kitfile"),
        "manifestVersion: 1.0.0\nmodel:\n  path: big.bin\n",
    )
    .unwrap();
    let (_, pack_rss) = ok_with_peak_rss(&store, &["pack", src.to_str().unwrap(), "-t", "big:1"]);
    fs::remove_file(src.join("big.bin")).unwrap(); // keep disk use down
    let out = t.path().join("out");
    let (_, unpack_rss) = ok_with_peak_rss(
        &store,
        &[
            "unpack",
            "big:1",
            "-d",
            out.to_str().unwrap(),
            "--filter",
            "model",
        ],
    );
    assert_eq!(fs::metadata(out.join("big.bin")).unwrap().len(), size);
    assert_eq!(sha256_file(&out.join("big.bin")), sum);
    let rss_mib = pack_rss.max(unpack_rss) / 1024;
    eprintln!(
        "peak RSS of kitsnap children: {rss_mib} MiB for a {} GiB file",
        size / GIB
    );
    assert!(
        rss_mib < 64,
        "peak RSS {rss_mib} MiB; memory must not grow with the model"
    );
}

#[test]
fn killed_pack_leaves_a_valid_store() {
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    demo_tree(&src);
    ok(&store, &["pack", src.to_str().unwrap(), "-t", "demo:good"]);
    let index_before = fs::read(store.join("index.json")).unwrap();

    let big = t.path().join("big");
    fs::create_dir_all(&big).unwrap();
    sparse_file(&big.join("w.bin"), 2 * GIB);
    fs::write(
        big.join("Kitfile"),
        "manifestVersion: 1.0.0\nmodel:\n  path: w.bin\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(bin())
        .env("KITSNAP_STORE", &store)
        .args([
            "pack",
            big.to_str().unwrap(),
            "-t",
            "demo:big",
            "--compression",
            "gzip-fastest",
        ])
        .spawn()
        .unwrap();
    // Wait until the layer is being written, then kill -9.
    let start = Instant::now();
    let mut killed_mid_write = false;
    while start.elapsed() < Duration::from_secs(60) {
        let partial: u64 = fs::read_dir(store.join("ingest"))
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        if partial > 1 << 20 {
            child.kill().unwrap();
            killed_mid_write = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.wait();
    assert!(killed_mid_write, "pack finished before it could be killed");

    assert_eq!(
        fs::read(store.join("index.json")).unwrap(),
        index_before,
        "index untouched"
    );
    // Every blob present is complete: its content matches its name.
    for e in fs::read_dir(store.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            sha256_file(&e.path()),
            e.file_name().to_string_lossy(),
            "torn blob"
        );
    }
    let out = t.path().join("out");
    ok(
        &store,
        &["unpack", "demo:good", "-d", out.to_str().unwrap()],
    );
    assert!(fails(&store, &["inspect", "demo:big"]).contains("not found"));
    // Garbage collection clears the dead writer's temporary file.
    ok(&store, &["remove", "--prune"]);
    assert_eq!(fs::read_dir(store.join("ingest")).unwrap().count(), 0);
    ok(
        &store,
        &[
            "unpack",
            "demo:good",
            "-d",
            t.path().join("out2").to_str().unwrap(),
        ],
    );
}
