//! Helpers shared by the integration tests: run the built binary against a private store.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kitsnap"))
}

/// Runs `kitsnap ARGS` with its store at `store`.
pub fn run(store: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .env("KITSNAP_STORE", store)
        .env_remove("KITSNAP_HOME")
        .args(args)
        .output()
        .expect("spawn kitsnap")
}

/// Runs and asserts success; returns stdout.
pub fn ok(store: &Path, args: &[&str]) -> String {
    let o = run(store, args);
    assert!(
        o.status.success(),
        "kitsnap {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs and asserts failure; returns stderr.
pub fn fails(store: &Path, args: &[&str]) -> String {
    let o = run(store, args);
    assert!(
        !o.status.success(),
        "kitsnap {args:?} unexpectedly succeeded"
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small model tree with every kind of Kitfile entry.
pub fn demo_tree(dir: &Path) {
    let w = |p: &str, data: &[u8]| {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    };
    w("models/weights.safetensors", &bytes(300_000, 1));
    w("models/tokenizer.json", b"{\"vocab\": [\"<s>\", \"&\"]}");
    w("data/train.csv", b"x,y\n1,2\n3,4\n");
    w("data/val.csv", b"x,y\n5,6\n");
    w("src/app.py", b"print('hello')\n");
    w("src/lib/util.py", b"def f():\n    return 1\n");
    w("README.md", b"# Demo model\n");
    w("prompts/system.md", b"You are a helpful model.\n");
    w("scratch.log", b"ignored\n");
    w(".kitignore", b"*.log\n");
    w(
        "Kitfile",
        br#"manifestVersion: 1.0.0
package:
  name: demo
  version: 1.0.0
  description: A demo <model> & friends
  authors: [Kitsnap Tests]
  license: Apache-2.0
model:
  name: demo-model
  path: models/weights.safetensors
  format: safetensors
  parameters:
    temperature: 0.7
    layers: 2
  parts:
    - name: tokenizer
      path: models/tokenizer.json
      type: tokenizer
code:
  - path: src
    description: inference code
datasets:
  - name: train
    path: data/train.csv
  - name: val
    path: data/val.csv
docs:
  - path: README.md
prompts:
  - path: prompts/system.md
"#,
    );
}

/// Every regular file below `dir`, relative, sorted, with contents.
pub fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(root, &e.path(), out);
            } else if ft.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

pub fn blob_count(store: &Path) -> usize {
    std::fs::read_dir(store.join("blobs/sha256"))
        .unwrap()
        .count()
}

/// Peak RSS (KiB) of the largest child this test process has waited for.
pub fn children_max_rss_kib() -> i64 {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid initial value.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru.ru_maxrss
    }
}
