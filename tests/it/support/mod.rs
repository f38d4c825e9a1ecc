//! Helpers shared by every suite: run the built binary against a private store, make
//! test trees, take the `heavy()` lock. What a test needs from the machine (`require!`) is
//! in [`prereq`]; the real peers (a registry and a fault-injecting proxy; containerd
//! daemons and images; containerd's CRI driven as kubelet does) in [`registry`],
//! [`containerd`] and [`cri`].

pub mod containerd;
pub mod cri;
pub mod prereq;
pub mod registry;

pub(crate) use prereq::{
    have_cmd, have_oras, missing, require, require_containers, require_registry, test_name,
};

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};

use kitsnap_node::api::snapshots::snapshots_client::SnapshotsClient;

/// Tests that start containerd or dockerd, or move gigabytes, hold this while they run: the
/// machine (2 cores) cannot take several at once, and containers started by different
/// containerd daemons share runc's state and cgroup paths (`/run/containerd/runc/<ns>/<id>`).
static HEAVY: Mutex<()> = Mutex::new(());

/// Takes the heavy-test lock (a test that panicked while holding it does not poison it for
/// the others). Hold the guard first, so that it is dropped last, after the daemons.
pub fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Polls `f` until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// sha256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A snapshots.v1 client over kitsnap's unix socket, for tests that talk to the daemon.
pub async fn snapshots_client(sock: &Path) -> SnapshotsClient<tonic::transport::Channel> {
    SnapshotsClient::new(kitsnap_node::containerd::unix_channel(sock).await.unwrap())
}

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

/// Runs `kitsnap ARGS`, asserts success, and returns stdout and the process's peak
/// resident memory in KiB (`VmHWM` of its own address space, sampled until it exits).
///
/// Not `wait4`'s `ru_maxrss`: a child spawned with vfork/posix_spawn inherits the parent's
/// high-water mark at exec, so every child of this (large, multi-test) process would look
/// as big as the test binary itself.
pub fn ok_with_peak_rss(store: &Path, args: &[&str]) -> (String, i64) {
    let mut child = Command::new(bin())
        .env("KITSNAP_STORE", store)
        .env_remove("KITSNAP_HOME")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kitsnap");
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let done = done.clone();
        move || {
            let mut peak = 0i64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("VmHWM:"))
                            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    });
                peak = peak.max(hwm.unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        }
    });
    let out = {
        let mut err = child.stderr.take().unwrap();
        let err = std::thread::spawn(move || {
            let mut v = Vec::new();
            err.read_to_end(&mut v).unwrap();
            v
        });
        let mut stdout = Vec::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut stdout)
            .unwrap();
        (stdout, err.join().unwrap())
    };
    let st = child.wait().expect("wait for kitsnap");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert!(
        st.success(),
        "kitsnap {args:?} failed ({st}):\n{}",
        String::from_utf8_lossy(&out.1)
    );
    assert!(peak > 0, "no memory sample of kitsnap {args:?}");
    (String::from_utf8_lossy(&out.0).into_owned(), peak)
}

/// How many regular files named `name` with this sha256 lie under `root` (on its own
/// filesystem: mounted views are not counted).
/// Whether the tar at `path` has a file named `name` with this sha256.
fn tar_holds(path: &Path, name: &str, sha256: &str) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut ar = tar::Archive::new(f);
    let Ok(entries) = ar.entries() else {
        return false;
    };
    entries.flatten().any(|mut e| {
        let named = e
            .path()
            .is_ok_and(|p| p.file_name().is_some_and(|f| f == name));
        let mut b = Vec::new();
        named && std::io::Read::read_to_end(&mut e, &mut b).is_ok() && sha256_hex(&b) == sha256
    })
}

pub fn copies_under(root: &Path, name: &str, sha256: &str) -> usize {
    files_under(root, name, sha256).len()
}

/// The regular files named `name` with this sha256 under `root`, on its own filesystem,
/// and the lazy layers' blobs (`lazy.blob`, a tar) that hold such a file.
pub fn files_under(root: &Path, name: &str, sha256: &str) -> Vec<PathBuf> {
    let Ok(dev) = std::fs::symlink_metadata(root).map(|m| m.dev()) else {
        return Vec::new();
    };
    let mut n = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file()
                && ((e.file_name() == name
                    && std::fs::read(e.path()).is_ok_and(|b| sha256_hex(&b) == sha256))
                    || (e.file_name() == "lazy.blob" && tar_holds(&e.path(), name, sha256)))
            {
                n.push(e.path());
            }
        }
    }
    n
}

/// A Go peer tool built by `scripts/install-peers.sh` (under `.cache/peers/bin`), if built.
pub fn peer(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/peers/bin")
        .join(name);
    p.is_file().then_some(p)
}
