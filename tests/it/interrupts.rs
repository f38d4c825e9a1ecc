//! Interrupted commands: SIGINT/SIGTERM/SIGKILL sent to `pack` and `unpack` at several
//! points (chosen by what the command has written so far, never by timing) leave no
//! truncated file under a final name, and Ctrl-C leaves no temporary file behind.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

const PART: &str = ".kitsnap-part";

fn spawn(store: &Path, args: &[&str]) -> Child {
    Command::new(bin())
        .env("KITSNAP_STORE", store)
        .env_remove("KITSNAP_HOME")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kitsnap")
}

/// Every entry below `dir` (files, relative), recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Polls until `cond` holds or the child exits; true when `cond` held.
fn wait_for(child: &mut Child, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if child.try_wait().expect("wait").is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn kill(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill {sig}");
}

/// A kit with one big model file and many dataset files, so an unpack takes a while.
fn big_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let w = |p: &str, data: &[u8]| {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    };
    w("model.safetensors", &bytes(96 << 20, 7));
    for i in 0..48 {
        w(&format!("data/shard-{i:03}.bin"), &bytes(1 << 20, 100 + i));
    }
    w(
        "Kitfile",
        b"manifestVersion: 1.0.0\npackage:\n  name: big\nmodel:\n  path: model.safetensors\ndatasets:\n  - path: data\n",
    );
    let mut f = files(dir);
    f.retain(|(p, _)| p != "Kitfile");
    f
}

#[test]
fn interrupted_unpack_leaves_no_truncated_file_under_a_final_name() {
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    let expected: std::collections::HashMap<String, Vec<u8>> = big_tree(&src).into_iter().collect();
    ok(&store, &["pack", src.to_str().unwrap(), "-t", "big:v1"]);

    // Each case: the signal, and the point to send it at (what is on disk by then).
    type Point = fn(&[PathBuf]) -> bool;
    let mid_model: Point = |fs| {
        fs.iter().any(|p| {
            p.to_string_lossy().contains("model.safetensors") && p.to_string_lossy().ends_with(PART)
        })
    };
    let some_shards: Point = |fs| {
        fs.iter()
            .filter(|p| {
                p.to_string_lossy().contains("shard-") && !p.to_string_lossy().ends_with(PART)
            })
            .count()
            >= 5
    };
    let first_file: Point = |fs| !fs.is_empty();
    let cases: [(i32, Point, &str); 6] = [
        (libc::SIGINT, mid_model, "SIGINT while the model is written"),
        (
            libc::SIGTERM,
            some_shards,
            "SIGTERM among the dataset files",
        ),
        (
            libc::SIGKILL,
            mid_model,
            "SIGKILL while the model is written",
        ),
        (
            libc::SIGKILL,
            some_shards,
            "SIGKILL among the dataset files",
        ),
        (libc::SIGINT, first_file, "SIGINT at the first file"),
        (libc::SIGKILL, first_file, "SIGKILL at the first file"),
    ];
    let mut interrupted = 0;
    for (i, (sig, point, what)) in cases.into_iter().enumerate() {
        let out = t.path().join(format!("out-{i}"));
        let mut child = spawn(&store, &["unpack", "big:v1", "-d", out.to_str().unwrap()]);
        let hit = wait_for(&mut child, || point(&walk(&out)));
        if hit {
            kill(&child, sig);
        }
        let status = child.wait().unwrap();
        if hit && status.signal() == Some(sig) {
            interrupted += 1;
        }
        let mut parts = 0;
        for p in walk(&out) {
            let rel = p.strip_prefix(&out).unwrap().to_string_lossy().into_owned();
            if rel.ends_with(PART) {
                parts += 1;
                continue;
            }
            if rel == "Kitfile" {
                continue;
            }
            let want = expected
                .get(&rel)
                .unwrap_or_else(|| panic!("{what}: unexpected file {rel}"));
            let got = std::fs::read(&p).unwrap();
            assert!(
                got == *want,
                "{what}: {rel} has {} bytes, wrong content ({} expected)",
                got.len(),
                want.len()
            );
        }
        if sig != libc::SIGKILL {
            assert_eq!(parts, 0, "{what}: temporary files left behind");
        }
        // What was written is kept; unpacking again with --overwrite completes the tree.
        ok(
            &store,
            &[
                "unpack",
                "big:v1",
                "-d",
                out.to_str().unwrap(),
                "--overwrite",
            ],
        );
        let mut got = files(&out);
        got.retain(|(p, _)| p != "Kitfile" && !p.ends_with(PART));
        assert_eq!(got.len(), expected.len(), "{what}");
        std::fs::remove_dir_all(&out).unwrap();
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} of the unpacks were stopped by their signal"
    );
}

#[test]
fn a_conflict_anywhere_stops_unpack_before_the_first_byte() {
    let t = tempfile::tempdir().unwrap();
    let (src, store, out) = (
        t.path().join("src"),
        t.path().join("store"),
        t.path().join("out"),
    );
    demo_tree(&src);
    ok(&store, &["pack", src.to_str().unwrap(), "-t", "demo:v1"]);
    // The prompt layer is the last one: its file exists, so nothing else may be written.
    std::fs::create_dir_all(out.join("prompts")).unwrap();
    std::fs::write(out.join("prompts/system.md"), b"mine\n").unwrap();
    std::fs::write(out.join("README.md"), b"mine too\n").unwrap();
    let e = fails(&store, &["unpack", "demo:v1", "-d", out.to_str().unwrap()]);
    assert!(e.contains("2 files already exist"), "{e}");
    assert!(
        e.contains("prompts/system.md") && e.contains("README.md"),
        "{e}"
    );
    assert!(e.contains("nothing was written"), "{e}");
    let left: Vec<String> = files(&out).into_iter().map(|(p, _)| p).collect();
    assert_eq!(left, ["README.md", "prompts/system.md"], "nothing written");
    assert_eq!(std::fs::read(out.join("README.md")).unwrap(), b"mine too\n");
    // A file where the kit needs a directory is a conflict too.
    let out2 = t.path().join("out2");
    std::fs::create_dir_all(&out2).unwrap();
    std::fs::write(out2.join("data"), b"a file named data\n").unwrap();
    let e = fails(&store, &["unpack", "demo:v1", "-d", out2.to_str().unwrap()]);
    assert!(
        e.contains("1 file already exists") && e.contains("data"),
        "{e}"
    );
    assert_eq!(files(&out2).len(), 1, "nothing written");
}

#[test]
fn interrupted_pack_leaves_no_ingest_and_prune_counts_what_it_frees() {
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    big_tree(&src);
    let ingest = store.join("ingest");
    let writing = |dir: &Path| {
        walk(dir)
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    };
    let mut stopped = 0;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut child = spawn(&store, &["pack", src.to_str().unwrap(), "-t", "big:v1"]);
        if wait_for(&mut child, || writing(&ingest)) {
            kill(&child, sig);
        }
        let st = child.wait().unwrap();
        if st.signal() == Some(sig) {
            stopped += 1;
            assert_eq!(walk(&ingest), Vec::<PathBuf>::new(), "signal {sig}");
        }
    }
    assert!(stopped >= 1, "no pack was stopped by its signal");

    // SIGKILL cannot be caught: the partial blob stays, and `remove --prune` frees it.
    let mut child = spawn(&store, &["pack", src.to_str().unwrap(), "-t", "big:v1"]);
    assert!(
        wait_for(&mut child, || writing(&ingest)),
        "pack finished before it could be killed"
    );
    kill(&child, libc::SIGKILL);
    child.wait().unwrap();
    let left: u64 = walk(&ingest)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(left > 0, "SIGKILL left a partial ingest");
    let o = run(&store, &["remove", "--prune"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("freed 0 B"), "{err}");
    assert!(err.contains("temporary file"), "{err}");
    assert_eq!(walk(&ingest), Vec::<PathBuf>::new());
}
