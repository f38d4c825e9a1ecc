//! Snapshot metadata at scale: Prepare+Commit per layer as a chain grows (or, with
//! BENCH_FLAT=1, as unrelated snapshots accumulate), then Cleanup and removing them all.
//! `cargo bench -p kitsnap-node --bench metadata` (BENCH_LAYERS=5000; BENCH_DIR=/dev/shm
//! takes fsync out of the numbers).

use std::collections::BTreeMap;
use std::time::Instant;

use kitsnap_node::labels as label;
use kitsnap_node::snapshotter::{Kind, Snapshotter};

fn main() {
    let n: usize = std::env::var("BENCH_LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    // BENCH_DIR=/dev/shm takes fsync out of the numbers.
    let d = match std::env::var("BENCH_DIR") {
        Ok(dir) => tempfile::tempdir_in(dir).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let s = Snapshotter::open(d.path()).unwrap();
    let mut parent = String::new();
    let mut t = Instant::now();
    for i in 0..n {
        let key = format!("default/{}/extract-{i}", 2 * i);
        let name = format!("default/{}/sha256:{i:064}", 2 * i + 1);
        let labels: BTreeMap<String, String> =
            [(label::TARGET_REF.to_string(), format!("sha256:{i:064}"))].into();
        s.create(Kind::Active, &key, &parent, labels.clone())
            .unwrap();
        s.commit(&name, &key, labels).unwrap();
        // BENCH_FLAT=1: unrelated snapshots (how many exist, not how deep the chain).
        if std::env::var_os("BENCH_FLAT").is_none() {
            parent = name;
        }
        if (i + 1) % 100 == 0 && ((i + 1) == 100 || (i + 1) % 1000 == 0) {
            eprintln!(
                "layers {}..{}: {:.3} ms per Prepare+Commit",
                i + 1 - 100,
                i + 1,
                t.elapsed().as_secs_f64() * 1000.0 / 100.0
            );
        }
        if (i + 1) % 100 == 0 {
            t = Instant::now();
        }
    }
    let t = Instant::now();
    s.cleanup().unwrap();
    eprintln!("cleanup with {n}: {:?}", t.elapsed());
    let t = Instant::now();
    let names: Vec<String> = s.list(&[]).unwrap().into_iter().map(|(k, _)| k).collect();
    let mut names = names;
    names.sort_by_key(|k| std::cmp::Reverse(s.get(k).unwrap().id));
    for (i, k) in names.iter().enumerate() {
        s.remove(k).unwrap();
        if i == 99 {
            eprintln!(
                "first 100 removes: {:.3} ms each",
                t.elapsed().as_secs_f64() * 10.0
            );
        }
    }
    eprintln!("remove all {n}: {:?}", t.elapsed());
}
