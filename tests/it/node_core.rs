//! The node's core under stress, with real components (a Debian docker-registry behind the
//! fault proxy, containerd 1.6 / 1.7 / 2.x, runc): regression tests for mounts that pull
//! (deadlock, node-wide lock), content writes across namespaces and concurrent pulls,
//! mount holders and views kept for containers, interrupted pulls (kill -9, SIGTERM,
//! Ctrl-C, a dead daemon), a second daemon on a live socket, and pull limits.
//!
//! Every wait is bounded only to turn a hang into a failure: nothing here asserts timings.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kitsnap_node::api::node as pb;

use crate::support::containerd::*;
use crate::support::registry::{self, Proxy, RegistryProc};
use crate::support::{self, *};

/// Longest a single command may take before it counts as hung.
const LIMIT: Duration = Duration::from_secs(120);
/// Throttled downloads: slow enough that a 2 MiB layer takes half a minute, fast enough
/// for the registry client's stall detection (64 KiB in 30 s) never to fire.
const SLOW_BPS: u64 = 64 << 10;

// ---------------------------------------------------------------------------------------
// Processes with a bound on their run time.

/// A child process whose output is collected while it runs; killed if dropped running.
struct Proc {
    what: String,
    child: Child,
    out: Option<std::thread::JoinHandle<Vec<u8>>>,
    err: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Proc {
    fn spawn(mut cmd: Command, what: impl Into<String>) -> Proc {
        let what = what.into();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let reader = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        };
        let out = Some(reader(Box::new(child.stdout.take().unwrap())));
        let err = Some(reader(Box::new(child.stderr.take().unwrap())));
        Proc {
            what,
            child,
            out,
            err,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn collect(&mut self, status: std::process::ExitStatus) -> Output {
        Output {
            status,
            stdout: self
                .out
                .take()
                .map(|t| t.join().unwrap())
                .unwrap_or_default(),
            stderr: self
                .err
                .take()
                .map(|t| t.join().unwrap())
                .unwrap_or_default(),
        }
    }

    /// Waits for the exit; a process still running after `limit` is killed and the test
    /// fails (a hang).
    fn wait(&mut self, limit: Duration) -> Output {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return self.collect(st);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let st = self.child.wait().unwrap();
                let o = self.collect(st);
                panic!(
                    "{} did not return within {limit:?} (hung)\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Mounts whose /proc/self/mountinfo line is over 4 KiB (runc fails on one over 64 KiB:
/// "bufio.Scanner: token too long"): length and start of each.
fn long_mountinfo_lines() -> String {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.len() > 4096)
        .map(|l| format!("{} bytes: {}", l.len(), &l[..300.min(l.len())]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// ModelKits.

/// A ModelKit tree: model, one dataset, docs; the files its view must show.
struct Tree {
    dir: PathBuf,
    files: Vec<(String, Vec<u8>)>,
}

fn tree(dir: &Path, model: Vec<u8>, dataset: &[u8], docs: &str) -> Tree {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("model.bin"), &model).unwrap();
    std::fs::write(dir.join("data/train.csv"), dataset).unwrap();
    std::fs::write(dir.join("README.md"), docs).unwrap();
    std::fs::write(
        dir.join("Kitfile"),
        "manifestVersion: 1.0.0\npackage:\n  name: node-core\nmodel:\n  name: m\n  path: model.bin\ndatasets:\n  - name: train\n    path: data/train.csv\ndocs:\n  - path: README.md\n",
    )
    .unwrap();
    let mut files = vec![
        ("README.md".to_string(), docs.as_bytes().to_vec()),
        ("data/train.csv".to_string(), dataset.to_vec()),
        ("model.bin".to_string(), model),
    ];
    files.sort();
    Tree {
        dir: dir.to_path_buf(),
        files,
    }
}

/// A kit packed into `store` and pushed (plain HTTP) as `reference`.
struct Kit {
    reference: String,
    tree: Tree,
}

impl Kit {
    fn model_sha(&self) -> String {
        let m = self
            .tree
            .files
            .iter()
            .find(|(p, _)| p == "model.bin")
            .unwrap();
        sha256_hex(&m.1)
    }
}

fn pack_push(store: &Path, tree: Tree, reference: String, pack_args: &[&str]) -> Kit {
    pack_push_with(store, tree, reference, pack_args, &[])
}

/// `pack_push` with more `push` arguments (`--no-lazy-index`: a kit whose layers every
/// pull downloads whole before it returns).
fn pack_push_with(
    store: &Path,
    tree: Tree,
    reference: String,
    pack_args: &[&str],
    push_args: &[&str],
) -> Kit {
    let dir = tree.dir.to_str().unwrap().to_string();
    let mut args = vec!["pack", dir.as_str(), "-t", reference.as_str()];
    args.extend_from_slice(pack_args);
    support::ok(store, &args);
    let mut push = vec!["push", reference.as_str(), "--plain-http"];
    push.extend_from_slice(push_args);
    support::ok(store, &push);
    Kit { reference, tree }
}

/// A blob of the packing store (an OCI layout).
fn store_blob(store: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(store.join("blobs/sha256").join(hex)).unwrap()
}

/// The view at `path` holds exactly the kit's files.
fn assert_view(ctx: &str, path: &Path, kit: &Kit) {
    let got = support::files(path);
    let names: Vec<&String> = got.iter().map(|(n, _)| n).collect();
    assert!(
        got == kit.tree.files,
        "{ctx}: the view of {} at {} does not hold its files (has {names:?})",
        kit.reference,
        path.display()
    );
}

// ---------------------------------------------------------------------------------------
// A node: containerd and kitsnap serve, private to one temporary directory.

/// Unmounts (lazily) whatever is still mounted under a test's directory (views of a failed
/// test), once the daemons are gone.
struct UnmountUnder(PathBuf);

impl Drop for UnmountUnder {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                self.0.display()
            ))
            .output();
    }
}

struct Node {
    // Dropped in this order: containerd, kitsnap, leftover mounts, the directory.
    ctd: Containerd,
    ks: Kitsnap,
    _unmount: UnmountUnder,
    ctx: String,
    /// A store that holds nothing: kits come from the registry.
    empty: PathBuf,
    _t: tempfile::TempDir,
}

impl Node {
    fn start(v: &Version, serve_args: &[&str]) -> Node {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        let ks = Kitsnap::start_with_args(&dir, Path::new(""), serve_args);
        let ctd = Containerd::start(v, &dir.join("containerd"), &ks.sock);
        Node {
            ctd,
            ks,
            _unmount: UnmountUnder(dir.clone()),
            ctx: format!("containerd {}", v.name),
            empty: dir.join("empty-store"),
            _t: t,
        }
    }

    /// `kitsnap ARGS` against this node's daemon, in namespace `ns`, not started yet.
    fn cli(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new(support::bin());
        c.env("KITSNAP_STORE", &self.empty)
            .env("KITSNAP_ADDRESS", &self.ks.sock)
            .env("CONTAINERD_NAMESPACE", ns)
            .env_remove("KITSNAP_HOME")
            .env_remove("KITSNAP_LOG")
            .args(args);
        c
    }

    fn spawn(&self, ns: &str, args: &[&str]) -> Proc {
        Proc::spawn(self.cli(ns, args), format!("kitsnap {args:?}"))
    }

    fn run(&self, ns: &str, args: &[&str]) -> Output {
        self.spawn(ns, args).wait(LIMIT)
    }

    /// Runs and asserts success: (stdout, stderr).
    fn ok(&self, ns: &str, args: &[&str]) -> (String, String) {
        let o = self.run(ns, args);
        assert!(
            o.status.success(),
            "{}: kitsnap {args:?} failed ({}):\n{}\n--- daemon log tail:\n{}\n--- containerd log tail:\n{}",
            self.ctx,
            o.status,
            text(&o.stderr),
            tail(&self.ks.log()),
            self.ctd.log_tail()
        );
        (text(&o.stdout), text(&o.stderr))
    }

    /// Runs and asserts failure: stderr.
    fn err(&self, ns: &str, args: &[&str]) -> String {
        let o = self.run(ns, args);
        assert!(
            !o.status.success(),
            "{}: kitsnap {args:?} unexpectedly worked:\n{}{}",
            self.ctx,
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stderr)
    }

    fn ctr(&self, ns: &str, args: &[&str]) -> String {
        let o = self.ctd.ctr_ns(ns, args);
        assert!(
            o.status.success(),
            "{}: ctr -n {ns} {args:?} failed:\n{}{}\n--- containerd log tail:\n{}\n--- host mounts with long mountinfo lines:\n{}",
            self.ctx,
            text(&o.stdout),
            text(&o.stderr),
            self.ctd.log_tail(),
            long_mountinfo_lines()
        );
        text(&o.stdout)
    }

    fn namespaces(&self) -> Vec<String> {
        self.ctr("default", &["namespaces", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Pull leases (`kitsnap-pull-*`) in namespace `ns`.
    fn pull_leases(&self, ns: &str) -> Vec<String> {
        self.ctr(ns, &["leases", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .filter(|id| id.starts_with("kitsnap-pull-"))
            .map(str::to_string)
            .collect()
    }

    /// Pull leases in every namespace, as `ns/id`.
    fn all_pull_leases(&self) -> Vec<String> {
        self.namespaces()
            .iter()
            .flat_map(|ns| {
                self.pull_leases(ns)
                    .into_iter()
                    .map(move |l| format!("{ns}/{l}"))
            })
            .collect()
    }

    /// kitsnap snapshots of namespace `ns`: (key, kind).
    fn snapshots(&self, ns: &str) -> Vec<(String, String)> {
        self.ctr(ns, &["snapshots", "--snapshotter", "kitsnap", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.first()?.to_string(), f.last()?.to_string()))
            })
            .collect()
    }

    /// Ingests (`ctr content active`) of namespace `ns`.
    fn ingests(&self, ns: &str) -> Vec<String> {
        self.ctr(ns, &["content", "active"])
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    fn images(&self, ns: &str) -> Vec<String> {
        self.ctr(ns, &["images", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Runs containerd's garbage collection now (a lease deleted with --sync).
    fn gc(&self, ns: &str) {
        let id = format!("node-core-gc-{}", std::process::id());
        self.ctr(ns, &["leases", "create", "--id", &id]);
        self.ctr(ns, &["leases", "rm", "--sync", &id]);
    }

    /// Waits until containerd reaches the kitsnap snapshotter again after a daemon restart
    /// (out of its reconnect backoff). `snapshots ls` is no probe: containerd answers it
    /// from its own metadata; a Prepare (of a probe key, removed at once) reaches kitsnap.
    fn after_restart(&self) {
        let snap = |args: &[&str]| {
            self.ctd.ctr_ns(
                "node-core-probe",
                &[&["snapshots", "--snapshotter", "kitsnap"], args].concat(),
            )
        };
        let mut last = String::new();
        let up = eventually(Duration::from_secs(30), || {
            let o = snap(&["prepare", "probe"]);
            last = text(&o.stderr);
            o.status.success()
        });
        assert!(
            up,
            "{}: containerd does not reach the restarted kitsnap: {last}",
            self.ctx
        );
        let o = snap(&["rm", "probe"]);
        assert!(o.status.success(), "{}: {}", self.ctx, text(&o.stderr));
    }

    /// No pull lease, no active or view snapshot, no kitsnap extraction, no ingest, in any
    /// namespace.
    fn assert_no_leftovers(&self) {
        let ctx = &self.ctx;
        let leases = self.all_pull_leases();
        assert!(leases.is_empty(), "{ctx}: pull leases left: {leases:?}");
        for ns in self.namespaces() {
            let odd: Vec<_> = self
                .snapshots(&ns)
                .into_iter()
                .filter(|(k, kind)| kind != "Committed" || k.contains("kitsnap-extract"))
                .collect();
            assert!(
                odd.is_empty(),
                "{ctx}: {ns}: snapshots other than committed layers left: {odd:?}"
            );
            let ingests = self.ingests(&ns);
            assert!(ingests.is_empty(), "{ctx}: {ns}: ingests left: {ingests:?}");
        }
    }

    /// The holders of mount `name` (None: no such mount), from kitsnap.v1.Node.
    fn holders(&self, name: &str) -> Option<Vec<String>> {
        let sock = self.ks.sock.clone();
        let name = name.to_string();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                let ch = kitsnap_node::containerd::unix_channel(&sock).await.unwrap();
                let mut c = pb::node_client::NodeClient::new(ch);
                let r = c
                    .list_mounts(pb::ListMountsRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                r.mounts
                    .into_iter()
                    .find(|m| m.name == name)
                    .map(|m| m.holders)
            })
    }
}

/// The number just before `marker` in `s` ("3 layer(s) unpacked" -> 3).
fn number_before(s: &str, marker: &str) -> Option<u64> {
    let i = s.find(marker)?;
    let head = s[..i].trim_end();
    let digits: String = head
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

/// (unpacked, already on the node) from a `pull --containerd` report.
fn pull_counts(stderr: &str) -> (u64, u64) {
    match (
        number_before(stderr, "layer(s) unpacked"),
        number_before(stderr, "already on this node"),
    ) {
        (Some(u), Some(r)) => (u, r),
        _ => panic!("no layer counts in the pull report:\n{stderr}"),
    }
}

/// The holder a `kitsnap mount` reported ("holder cli-...;").
fn holder_of(stderr: &str) -> String {
    let i = stderr
        .find("holder ")
        .unwrap_or_else(|| panic!("no holder in the mount report:\n{stderr}"));
    stderr[i + "holder ".len()..]
        .split([';', ')', ' ', '\n'])
        .next()
        .unwrap()
        .to_string()
}

/// A registry, and the fault proxy in front of it.
fn registry_and_proxy(dir: &Path) -> (RegistryProc, Proxy) {
    let reg = RegistryProc::start(&dir.join("registry"), None, None);
    let proxy = registry::start_proxy(&reg.addr(), registry::Faults::default());
    (reg, proxy)
}

/// Waits for concurrent pulls of 3-layer kits, each of which must succeed; returns how many
/// layers they unpacked in all (the rest were already on the node).
fn wait_pulls(n: &Node, procs: &mut [Proc]) -> u64 {
    let ctx = &n.ctx;
    let mut unpacked = 0;
    for p in procs {
        let o = p.wait(LIMIT * 2);
        let err = text(&o.stderr);
        assert!(
            o.status.success(),
            "{ctx}: concurrent pull failed: {err}\n--- daemon log tail:\n{}",
            tail(&n.ks.log())
        );
        let (u, r) = pull_counts(&err);
        assert_eq!(u + r, 3, "{ctx}: {err}");
        unpacked += u;
    }
    unpacked
}

/// Runs `f` for every available containerd version.
fn each_version(test: &str, mut f: impl FnMut(&Version)) {
    let versions = versions(test);
    assert!(
        !versions.is_empty(),
        "no containerd at all: apt-get install containerd"
    );
    for v in &versions {
        eprintln!("--- {test}: containerd {}", v.name);
        f(v);
    }
}

/// Starts a throttled `pull --containerd` of `kit` in `ns` and returns once it is under
/// way: the proxy is sending layer bytes and the pull's lease exists.
fn start_slow_pull(n: &Node, proxy: &Proxy, ns: &str, kit: &Kit) -> Proc {
    proxy
        .faults
        .throttle_blob_bps
        .store(SLOW_BPS, Ordering::SeqCst);
    let sent = proxy.faults.blob_bytes_sent.load(Ordering::SeqCst);
    let mut pull = n.spawn(
        ns,
        &["pull", "--containerd", &kit.reference, "--plain-http"],
    );
    let started = eventually(LIMIT, || {
        !pull.running()
            || (proxy.faults.blob_bytes_sent.load(Ordering::SeqCst) > sent + (64 << 10)
                && !n.pull_leases(ns).is_empty())
    });
    assert!(
        started && pull.running(),
        "{}: the throttled pull of {} did not get under way (or ended): {:?}\n--- daemon log tail:\n{}",
        n.ctx,
        kit.reference,
        if pull.running() {
            None
        } else {
            Some(text(&pull.wait(LIMIT).stderr))
        },
        tail(&n.ks.log())
    );
    pull
}

// ---------------------------------------------------------------------------------------
// 1. Mounts that pull.

#[test]
fn mount_pulls_an_unpulled_kit_and_other_mounts_go_on_meanwhile() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (reg, proxy) = registry_and_proxy(t.path());
    let store = t.path().join("store");
    let k1 = pack_push(
        &store,
        tree(
            &t.path().join("t1"),
            support::bytes(1 << 20, 11),
            b"a,b\n1,11\n",
            "# one\n",
        ),
        format!("{}/node/one:v1", reg.addr()),
        &[],
    );
    // Reached through the proxy, which slows its download down; without a lazy index,
    // so that its mount waits for the whole download.
    let k2 = pack_push_with(
        &store,
        tree(
            &t.path().join("t2"),
            support::bytes(2 << 20, 12),
            b"a,b\n1,12\n",
            "# two\n",
        ),
        format!("{}/node/two:v1", proxy.addr()),
        &[],
        &["--no-lazy-index"],
    );
    each_version(test_name!(), |v| {
        let n = Node::start(v, &[]);
        let ctx = n.ctx.clone();
        proxy.faults.throttle_blob_bps.store(0, Ordering::SeqCst);

        // A 3-layer kit this node does not hold: the mount pulls it, returns, and shows it.
        let (path1, err) = n.ok("default", &["mount", &k1.reference, "--plain-http"]);
        assert!(
            err.contains("Pulled"),
            "{ctx}: the mount pulled nothing: {err}"
        );
        let path1 = PathBuf::from(path1.trim());
        assert_view(&ctx, &path1, &k1);
        assert!(n.images("default").contains(&k1.reference), "{ctx}");

        // While a slow mount-with-pull of another kit runs, a mount of the kit already
        // here (under another name), the list and an unmount all complete.
        proxy
            .faults
            .throttle_blob_bps
            .store(SLOW_BPS, Ordering::SeqCst);
        let sent = proxy.faults.blob_bytes_sent.load(Ordering::SeqCst);
        let mut slow = n.spawn("default", &["mount", &k2.reference, "--plain-http"]);
        let under_way = eventually(LIMIT, || {
            !slow.running() || proxy.faults.blob_bytes_sent.load(Ordering::SeqCst) > sent
        });
        assert!(
            under_way && slow.running(),
            "{ctx}: the slow mount is not downloading: {}",
            if slow.running() {
                String::new()
            } else {
                text(&slow.wait(LIMIT).stderr)
            }
        );
        let (path1b, err) = n.ok(
            "default",
            &[
                "mount",
                &k1.reference,
                "--name",
                "one-again",
                "--plain-http",
            ],
        );
        assert!(!err.contains("Pulled"), "{ctx}: pulled again: {err}");
        let path1b = PathBuf::from(path1b.trim());
        assert_ne!(path1b, path1, "{ctx}: another name, another view");
        assert_view(&ctx, &path1b, &k1);
        let (list, _) = n.ok("default", &["mount", "--list"]);
        assert!(list.contains("one-again"), "{ctx}: {list}");
        n.ok("default", &["umount", "one-again"]);
        assert!(
            slow.running(),
            "{ctx}: the slow mount ended before the others were done: the test proved nothing\n{}",
            text(&slow.wait(LIMIT).stderr)
        );

        // Let the slow one go: it completes too.
        proxy.faults.throttle_blob_bps.store(0, Ordering::SeqCst);
        let o = slow.wait(LIMIT);
        assert!(
            o.status.success(),
            "{ctx}: slow mount failed: {}\n{}",
            text(&o.stderr),
            tail(&n.ks.log())
        );
        let path2 = PathBuf::from(text(&o.stdout).trim());
        assert_view(&ctx, &path2, &k2);
        n.ok("default", &["umount", path1.to_str().unwrap()]);
        n.ok("default", &["umount", path2.to_str().unwrap()]);
        let (list, _) = n.ok("default", &["mount", "--list"]);
        assert_eq!(list.lines().count(), 1, "{ctx}: mounts left:\n{list}");
        n.assert_no_leftovers();
    });
}

// ---------------------------------------------------------------------------------------
// 2. Content writes: several namespaces, concurrent pulls.

/// `pull --containerd` downloads several layers at once (bounded by `pull_concurrency`),
/// commits them in order, and leaves nothing in its staging area; a failure part-way
/// leaves neither snapshots nor staged trees.
#[test]
fn pull_streams_several_layers_at_once_and_stages_nothing_for_good() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (_reg, proxy) = registry_and_proxy(t.path());
    let store = t.path().join("store");
    let src = t.path().join("many");
    let mut kitfile = String::from(
        "manifestVersion: 1.0.0\npackage:\n  name: many\nmodel:\n  name: m\n  path: model.bin\ndatasets:\n",
    );
    let mut files = vec![("model.bin".to_string(), support::bytes(512 << 10, 90))];
    for i in 0..5 {
        let rel = format!("d{i}.bin");
        files.push((rel.clone(), support::bytes(512 << 10, 91 + i)));
        kitfile.push_str(&format!("  - name: d{i}\n    path: {rel}\n"));
    }
    std::fs::create_dir_all(&src).unwrap();
    for (rel, data) in &files {
        std::fs::write(src.join(rel), data).unwrap();
    }
    std::fs::write(src.join("Kitfile"), kitfile).unwrap();
    files.sort();
    let reference = format!("{}/many/kit:v1", proxy.addr());
    let kit = pack_push(
        &store,
        Tree {
            dir: src.clone(),
            files,
        },
        reference.clone(),
        &[],
    );
    let cfg = t.path().join("kitsnap.toml");
    std::fs::write(&cfg, "pull_concurrency = 3\n").unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_string();
    each_version(test_name!(), |v| {
        let n = Node::start(v, &["--config", &cfg_arg]);
        let ctx = n.ctx.clone();
        let staging = n.ks.root.join("staging");

        // A failure part-way (one layer's bytes are wrong): nothing stays.
        let bad = {
            let m: serde_json::Value =
                serde_json::from_str(&support::ok(&store, &["inspect", &reference])).unwrap();
            m["manifest"]["layers"][4]["digest"]
                .as_str()
                .unwrap()
                .to_string()
        };
        *proxy.faults.corrupt_digest.lock().unwrap() = Some(bad.clone());
        let o = n
            .cli(
                "ns-a",
                &["pull", "--containerd", &reference, "--plain-http"],
            )
            .output()
            .unwrap();
        let err = text(&o.stderr);
        assert!(
            !o.status.success(),
            "{ctx}: a corrupt layer must fail the pull"
        );
        assert!(
            err.contains(&bad),
            "{ctx}: the error names the bad layer: {err}"
        );
        *proxy.faults.corrupt_digest.lock().unwrap() = None;
        assert!(
            eventually(LIMIT, || support::files(&staging).is_empty()),
            "{ctx}: staged trees left after a failed pull: {:?}",
            support::files(&staging)
                .iter()
                .map(|f| &f.0)
                .collect::<Vec<_>>()
        );

        // Slow downloads: several must be under way at once, never more than allowed.
        proxy.faults.blob_gets_peak.store(0, Ordering::SeqCst);
        proxy
            .faults
            .throttle_blob_bps
            .store(1 << 20, Ordering::SeqCst);
        let (_, err) = n.ok(
            "ns-a",
            &["pull", "--containerd", &reference, "--plain-http"],
        );
        proxy.faults.throttle_blob_bps.store(0, Ordering::SeqCst);
        assert_eq!(pull_counts(&err), (6, 0), "{ctx}: {err}");
        let peak = proxy.faults.blob_gets_peak.load(Ordering::SeqCst);
        assert!(
            (2..=3).contains(&peak),
            "{ctx}: {peak} layer download(s) at once; want 2..=3 (pull_concurrency = 3)"
        );
        assert!(
            support::files(&staging).is_empty(),
            "{ctx}: staged trees left after a pull"
        );
        let (mnt, _) = n.ok("ns-a", &["mount", &kit.reference, "--plain-http"]);
        assert_view(&ctx, Path::new(mnt.trim()), &kit);
    });
}

#[test]
fn pulls_into_several_namespaces_and_concurrent_pulls_unpack_each_layer_once() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (reg, _proxy) = registry_and_proxy(t.path());
    let store = t.path().join("store");
    let r = reg.addr();
    let ta = |name: &str, seed: u64, docs: &str| {
        tree(
            &t.path().join(name),
            support::bytes(1 << 20, seed),
            format!("x,y\n{seed},0\n").as_bytes(),
            docs,
        )
    };
    let plain = pack_push(
        &store,
        ta("ta", 21, "# a\n"),
        format!("{r}/ns/plain:v1"),
        &[],
    );
    let gz = pack_push(
        &store,
        ta("tgz", 21, "# a\n"),
        format!("{r}/ns/gz:v1"),
        &["--compression", "gzip"],
    );
    let c = pack_push(&store, ta("tc", 22, "# c\n"), format!("{r}/ns/c:v1"), &[]);
    // D and E share their model and dataset layers; their docs differ. gzip: their blobs
    // are kept in the content store too.
    let gzip = ["--compression", "gzip"];
    let d = pack_push(&store, ta("td", 23, "# d\n"), format!("{r}/ns/d:v1"), &gzip);
    let e = pack_push(&store, ta("te", 23, "# e\n"), format!("{r}/ns/e:v1"), &gzip);
    each_version(test_name!(), |v| {
        let n = Node::start(v, &[]);
        let ctx = n.ctx.clone();

        // --- the same kit into namespace A, then B: both work, B reuses A's layers.
        for kit in [&plain, &gz] {
            let pull = [
                "pull",
                "--containerd",
                kit.reference.as_str(),
                "--plain-http",
            ];
            let (digest, err) = n.ok("ns-a", &pull);
            // The gzip kit holds the same tars as the plain one: its layers have the same
            // diff IDs, so the same chain IDs, and the node keeps one copy.
            let want = if std::ptr::eq(kit, &gz) {
                (0, 3)
            } else {
                (3, 0)
            };
            assert_eq!(pull_counts(&err), want, "{ctx}: {err}");
            let (digest_b, err) = n.ok("ns-b", &pull);
            assert_eq!(digest_b, digest, "{ctx}");
            assert_eq!(
                pull_counts(&err),
                (0, 3),
                "{ctx}: B must reuse the layers A unpacked: {err}"
            );
            let digest = digest.trim();
            assert!(
                n.images("ns-b").contains(&kit.reference),
                "{ctx}: no image in ns-b"
            );
            // The manifest and config are in B's content store, byte for byte.
            let manifest = store_blob(&store, digest);
            let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
            let config = m["config"]["digest"].as_str().unwrap();
            let listed = n.ctr("ns-b", &["content", "ls"]);
            for (what, dg, want) in [
                ("manifest", digest, manifest.clone()),
                ("config", config, store_blob(&store, config)),
            ] {
                assert!(
                    listed.contains(dg),
                    "{ctx}: {what} {dg} not in ns-b's content:\n{listed}"
                );
                let o = n.ctd.ctr_ns("ns-b", &["content", "get", dg]);
                assert!(o.status.success(), "{ctx}: {}", text(&o.stderr));
                assert_eq!(
                    (o.stdout.len(), sha256_hex(&o.stdout)),
                    (want.len(), sha256_hex(&want)),
                    "{ctx}: {what} of {} in ns-b",
                    kit.reference
                );
            }
        }
        n.assert_no_leftovers();

        // --- 8 pulls of one kit at once in one namespace: each layer unpacked once.
        let mut procs: Vec<Proc> = (0..8)
            .map(|_| {
                n.spawn(
                    "ns-c",
                    &["pull", "--containerd", &c.reference, "--plain-http"],
                )
            })
            .collect();
        let unpacked = wait_pulls(&n, &mut procs);
        assert_eq!(
            unpacked, 3,
            "{ctx}: 8 concurrent pulls of a 3-layer kit unpacked {unpacked} layers"
        );
        assert!(n.images("ns-c").contains(&c.reference), "{ctx}");

        // --- two kits sharing two of their three layers, 4 pulls each, in two namespaces.
        let mut procs: Vec<Proc> = (0..8)
            .map(|i| {
                let (ns, kit) = if i % 2 == 0 {
                    ("ns-d", &d)
                } else {
                    ("ns-e", &e)
                };
                n.spawn(
                    ns,
                    &["pull", "--containerd", &kit.reference, "--plain-http"],
                )
            })
            .collect();
        let unpacked = wait_pulls(&n, &mut procs);
        // Distinct layer blobs: the shared model and dataset, and two docs layers.
        assert_eq!(
            unpacked, 4,
            "{ctx}: kits D and E have 4 distinct layers; the pulls unpacked {unpacked}"
        );
        assert!(n.images("ns-d").contains(&d.reference), "{ctx}");
        assert!(n.images("ns-e").contains(&e.reference), "{ctx}");
        n.assert_no_leftovers();
    });
}

// ---------------------------------------------------------------------------------------
// 3. Mount lifetime: holders, and views kept for containers.

/// A registry holding a 3-layer kit `node/NAME:v1` (a model of `size` bytes) pushed from
/// `dir`, and the busybox image archive for containers.
fn kit_and_image(dir: &Path, name: &str, size: usize, seed: u64) -> (RegistryProc, Kit, PathBuf) {
    let reg = RegistryProc::start(&dir.join("registry"), None, None);
    let kit = pack_push(
        &dir.join("store"),
        tree(
            &dir.join("t"),
            support::bytes(size, seed),
            format!("a,b\n{seed},1\n").as_bytes(),
            &format!("# {name}\n"),
        ),
        format!("{}/node/{name}:v1", reg.addr()),
        &[],
    );
    let img = dir.join("busybox.tar");
    busybox_image(&img);
    (reg, kit, img)
}

#[test]
fn mount_holders_and_a_view_kept_for_its_container() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (_reg, kit, img) = kit_and_image(t.path(), "held", 1 << 20, 31);
    const NS: &str = "kitsnap-test";
    each_version(test_name!(), |v| {
        let n = Node::start(v, &[]);
        let ctx = n.ctx.clone();
        let name = "held";
        let mount = [
            "mount",
            kit.reference.as_str(),
            "--name",
            name,
            "--plain-http",
        ];

        // --- three mounts, three holders.
        let mut holders = Vec::new();
        let mut path = String::new();
        for _ in 0..3 {
            let (p, err) = n.ok(NS, &mount);
            let h = holder_of(&err);
            assert!(h.starts_with("cli-"), "{ctx}: {err}");
            holders.push(h);
            assert!(path.is_empty() || path == p.trim(), "{ctx}: {path} vs {p}");
            path = p.trim().to_string();
        }
        let path = PathBuf::from(path);
        let mut want = holders.clone();
        want.sort();
        want.dedup();
        assert_eq!(want.len(), 3, "{ctx}: holders not unique: {holders:?}");
        let mut got = n.holders(name).expect("mount listed");
        got.sort();
        assert_eq!(got, want, "{ctx}");
        let (list, _) = n.ok(NS, &["mount", "--list"]);
        let line = list.lines().find(|l| l.starts_with(name)).unwrap_or("");
        assert_eq!(
            line.split_whitespace().nth(2),
            Some("3"),
            "{ctx}: mount --list:\n{list}"
        );

        // --- one given holder, then one CLI holder: still mounted.
        let (_, err) = n.ok(NS, &["umount", name, "--holder", &holders[1]]);
        assert!(err.contains("stays mounted"), "{ctx}: {err}");
        let mut left = n.holders(name).unwrap();
        left.sort();
        let mut want2 = vec![holders[0].clone(), holders[2].clone()];
        want2.sort();
        assert_eq!(left, want2, "{ctx}: --holder released another holder");
        let (_, err) = n.ok(NS, &["umount", name]);
        assert!(err.contains("stays mounted"), "{ctx}: {err}");
        assert_eq!(n.holders(name).map(|h| h.len()), Some(1), "{ctx}");
        assert_view(&ctx, &path, &kit);
        // --- the last one unmounts.
        let (_, err) = n.ok(NS, &["umount", name]);
        assert!(err.contains(&format!("Unmounted {name}")), "{ctx}: {err}");
        assert!(!path.exists(), "{ctx}: {} left", path.display());
        assert_eq!(n.holders(name), None, "{ctx}");
        let view = format!("kitsnap-view/{name}");
        assert!(
            !n.snapshots(NS).iter().any(|(k, _)| *k == view),
            "{ctx}: view left after the last umount"
        );

        // --- a container uses the mount; the kit is removed and the mount forced away:
        // the container keeps the files until it stops.
        n.ctr(
            NS,
            &[
                "images",
                "import",
                "--snapshotter",
                "kitsnap",
                img.to_str().unwrap(),
            ],
        );
        let (p, _) = n.ok(NS, &mount);
        let path = PathBuf::from(p.trim());
        let bind = format!(
            "type=bind,src={},dst=/models,options=rbind:ro",
            path.display()
        );
        n.ctr(
            NS,
            &[
                "run",
                "-d",
                "--snapshotter",
                "kitsnap",
                "--mount",
                &bind,
                IMAGE,
                "keeper",
                "sleep",
                "300",
            ],
        );
        let exec = |id: &str| {
            n.ctr(
                NS,
                &[
                    "task",
                    "exec",
                    "--exec-id",
                    id,
                    "keeper",
                    "sha256sum",
                    "/models/model.bin",
                ],
            )
        };
        assert!(exec("before").contains(&kit.model_sha()), "{ctx}");
        n.ctr(NS, &["images", "rm", "--sync", &kit.reference]);
        let (_, err) = n.ok(NS, &["umount", name, "--force"]);
        assert!(
            err.contains("files stay for the 1 container(s)"),
            "{ctx}: {err}"
        );
        assert!(!path.exists(), "{ctx}: the host mount stayed");
        let out = exec("after");
        assert!(
            out.contains(&kit.model_sha()),
            "{ctx}: the container lost the model after umount --force:\n{out}"
        );
        assert!(
            n.snapshots(NS).iter().any(|(k, _)| *k == view),
            "{ctx}: the view went while the container used it"
        );

        // --- the container stops: the next sweep removes the view, GC the kit.
        n.ctr(NS, &["task", "kill", "-s", "SIGKILL", "keeper"]);
        assert!(
            eventually(Duration::from_secs(30), || {
                n.ctd
                    .ctr_ns(NS, &["task", "delete", "keeper"])
                    .status
                    .success()
            }),
            "{ctx}: the container's task would not go"
        );
        n.ctr(NS, &["containers", "rm", "keeper"]);
        // Any mount or umount call sweeps first (this one then finds nothing to release);
        // the daemon also sweeps every 30 s.
        let gone = eventually(Duration::from_secs(40), || {
            let _ = n.run(NS, &["umount", name]);
            !n.snapshots(NS).iter().any(|(k, _)| *k == view)
        });
        assert!(
            gone,
            "{ctx}: the view stayed after its container went:\n{:?}\n{}",
            n.snapshots(NS),
            tail(&n.ks.log())
        );
        assert_eq!(n.holders(name), None, "{ctx}: the mount record stayed");
        n.ctr(NS, &["images", "rm", "--sync", IMAGE]);
        n.ks.wait_until_empty();
        assert_eq!(
            n.ks.snapshot_dirs(),
            0,
            "{ctx}: snapshots left after GC: {:?}",
            n.snapshots(NS)
        );
    });
}

// ---------------------------------------------------------------------------------------
// 4. Crash and shutdown.

/// A 3-layer kit behind the proxy, with a 2 MiB model (half a minute when throttled).
fn slow_kit(t: &Path, store: &Path, proxy: &Proxy, name: &str, seed: u64) -> Kit {
    pack_push(
        store,
        tree(
            &t.join(name),
            support::bytes(2 << 20, seed),
            format!("x,y\n{seed},4\n").as_bytes(),
            &format!("# {name}\n"),
        ),
        format!("{}/node/{name}:v1", proxy.addr()),
        &[],
    )
}

#[test]
fn a_killed_daemon_drops_its_pull_leases_when_restarted() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (_reg, proxy) = registry_and_proxy(t.path());
    let store = t.path().join("store");
    let kit = slow_kit(t.path(), &store, &proxy, "killed", 41);
    each_version(test_name!(), |v| {
        let mut n = Node::start(v, &[]);
        let ctx = n.ctx.clone();
        let ns = "ns-kill";
        let mut pull = start_slow_pull(&n, &proxy, ns, &kit);
        n.ks.kill9();
        let o = pull.wait(LIMIT);
        assert!(
            !o.status.success(),
            "{ctx}: the pull succeeded without its daemon"
        );
        eprintln!(
            "{ctx}: the pull whose daemon was killed ({}) says: {}",
            o.status,
            text(&o.stderr).trim()
        );
        assert!(
            !n.pull_leases(ns).is_empty(),
            "{ctx}: no lease of the interrupted pull: nothing to check"
        );
        n.ks.start_again();
        let clean = eventually(Duration::from_secs(60), || n.all_pull_leases().is_empty());
        assert!(
            clean,
            "{ctx}: the restarted daemon left the pull leases {:?}\n{}",
            n.all_pull_leases(),
            tail(&n.ks.log())
        );
        n.after_restart();
        // The partial layer goes with containerd's next GC.
        let swept = eventually(Duration::from_secs(30), || {
            n.gc(ns);
            n.snapshots(ns).iter().all(|(_, kind)| kind == "Committed")
        });
        assert!(swept, "{ctx}: {:?}", n.snapshots(ns));
        proxy.faults.throttle_blob_bps.store(0, Ordering::SeqCst);
        let (_, err) = n.ok(
            ns,
            &["pull", "--containerd", &kit.reference, "--plain-http"],
        );
        let (u, r) = pull_counts(&err);
        assert_eq!(u + r, 3, "{ctx}: {err}");
        assert!(n.images(ns).contains(&kit.reference), "{ctx}");
        n.assert_no_leftovers();
    });
}

/// A lazy layer pulled with the pull's own TLS settings (`--ca-file` of a CA the daemon
/// does not trust) and found incomplete after a crash is completed by the next daemon with
/// those settings, which the layer's `lazy.json` keeps. Before, the restart fetched with
/// the daemon's settings only: a TLS error, and EIO for the reader.
#[test]
fn a_lazy_layer_resumes_with_the_pulls_own_tls_settings() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("tls")).unwrap();
    let tls = registry::make_tls(&t.path().join("tls"));
    let reg = RegistryProc::start(&t.path().join("reg"), Some(&tls), None);
    let ca = tls.ca.to_str().unwrap();
    let store = t.path().join("store");
    let model = support::bytes(12 << 20, 93);
    let tr = tree(
        &t.path().join("kit"),
        model.clone(),
        b"a,b\n1,2\n",
        "# tls\n",
    );
    let reference = format!("{}/tls/lazy:v1", reg.addr());
    support::ok(
        &store,
        &["pack", tr.dir.to_str().unwrap(), "-t", &reference],
    );
    support::ok(&store, &["push", &reference, "--ca-file", ca]);
    let Some(v) = versions(test_name!()).into_iter().last() else {
        support::missing(test_name!(), "containerd (scripts/install-containerd.sh)");
        return;
    };
    let mut n = Node::start(&v, &[]);
    let ctx = n.ctx.clone();
    let ns = "ns-tls";
    let (_, err) = n.ok(
        ns,
        &[
            "pull",
            "--containerd",
            "--lazy",
            &reference,
            "--ca-file",
            ca,
        ],
    );
    assert!(err.contains("served lazily"), "{ctx}: {err}");
    let snapshot = std::fs::read_dir(n.ks.root.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|d| d.join("lazy.json").exists() && d.join("fs/model.bin").exists())
        .expect("the model's lazy snapshot");
    let completes = |secs| {
        eventually(Duration::from_secs(secs), || {
            snapshot.join("lazy.done").exists()
        })
    };
    assert!(
        completes(60),
        "{ctx}: the model never completed: {}",
        tail(&n.ks.log())
    );
    // A crash, and a chunk of the blob lost with it (as if the crash came first).
    n.ks.kill9();
    std::fs::remove_file(snapshot.join("lazy.done")).unwrap();
    let blob = std::fs::OpenOptions::new()
        .write(true)
        .open(snapshot.join("lazy.blob"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&blob, &[0u8; 1 << 20], 5 << 20).unwrap();
    drop(blob);
    n.ks.start_again();
    assert!(
        eventually(Duration::from_secs(30), || n
            .ks
            .log()
            .contains("lazy layers mounted again")),
        "{ctx}: {}",
        tail(&n.ks.log())
    );
    let got = std::fs::read(snapshot.join("fs/model.bin"));
    assert!(
        got.as_ref().is_ok_and(|b| *b == model),
        "{ctx}: reading the model after the restart: {:?}\n{}",
        got.map(|b| b.len()),
        tail(&n.ks.log())
    );
    assert!(completes(30), "{ctx}: {}", tail(&n.ks.log()));
}

#[test]
fn a_killed_containerd_stops_the_pull_and_its_lease_goes_when_it_is_back() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (_reg, proxy) = registry_and_proxy(t.path());
    let store = t.path().join("store");
    let kit = slow_kit(t.path(), &store, &proxy, "ctdkilled", 43);
    each_version(test_name!(), |v| {
        let mut n = Node::start(v, &[]);
        let ctx = n.ctx.clone();
        let ns = "ns-ctdkill";
        let mut pull = start_slow_pull(&n, &proxy, ns, &kit);
        n.ctd.kill9();
        // The pull stops at once (it does not download the rest of the layer first).
        let o = pull.wait(LIMIT);
        assert!(
            !o.status.success(),
            "{ctx}: the pull succeeded without containerd"
        );
        assert!(
            text(&o.stderr).contains("containerd"),
            "{ctx}: the error names containerd: {}",
            text(&o.stderr)
        );
        n.ctd.start_again();
        // The failed pull could not delete its lease while containerd was down: the
        // daemon's periodic check deletes it once containerd is back.
        let clean = eventually(Duration::from_secs(90), || n.all_pull_leases().is_empty());
        assert!(
            clean,
            "{ctx}: pull leases left after containerd came back: {:?}\n{}",
            n.all_pull_leases(),
            tail(&n.ks.log())
        );
        let swept = eventually(Duration::from_secs(30), || {
            n.gc(ns);
            n.snapshots(ns).iter().all(|(_, kind)| kind == "Committed")
        });
        assert!(swept, "{ctx}: {:?}", n.snapshots(ns));
        proxy.faults.throttle_blob_bps.store(0, Ordering::SeqCst);
        n.after_restart();
        let (_, err) = n.ok(
            ns,
            &["pull", "--containerd", &kit.reference, "--plain-http"],
        );
        let (u, r) = pull_counts(&err);
        assert_eq!(u + r, 3, "{ctx}: {err}");
        n.assert_no_leftovers();
    });
}

#[test]
fn sigterm_during_a_pull_stops_the_daemon_and_the_pull_cleanly() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (_reg, proxy) = registry_and_proxy(t.path());
    let store = t.path().join("store");
    let kit = slow_kit(t.path(), &store, &proxy, "termed", 42);
    each_version(test_name!(), |v| {
        let mut n = Node::start(v, &[]);
        let ctx = n.ctx.clone();
        let ns = "ns-term";
        let mut pull = start_slow_pull(&n, &proxy, ns, &kit);
        // The daemon's own grace is 30 s: well within this bound.
        let st = n.ks.terminate_within(Duration::from_secs(90));
        let log = n.ks.log();
        let st = st.unwrap_or_else(|| {
            panic!(
                "{ctx}: kitsnap serve did not exit after SIGTERM\n{}",
                tail(&log)
            )
        });
        assert!(
            st.success(),
            "{ctx}: kitsnap serve exited {st}\n{}",
            tail(&log)
        );
        let o = pull.wait(LIMIT);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{ctx}: the pull succeeded: {err}");
        eprintln!(
            "{ctx}: the stopped pull ({}) says: {}",
            o.status,
            err.trim()
        );
        assert!(
            (err.contains("cancelled") || err.contains("stopping"))
                && !err.contains("h2 protocol error"),
            "{ctx}: unclear error for a pull stopped with its daemon ({}):\n{err}",
            o.status
        );
        assert!(
            n.pull_leases(ns).is_empty(),
            "{ctx}: lease left by the stopped pull: {:?}",
            n.pull_leases(ns)
        );
        assert!(!n.images(ns).contains(&kit.reference), "{ctx}");
        n.ks.start_again();
        n.after_restart();
        let clean = eventually(Duration::from_secs(30), || {
            n.gc(ns);
            n.snapshots(ns).is_empty()
        });
        assert!(
            clean,
            "{ctx}: snapshots of the stopped pull left: {:?}",
            n.snapshots(ns)
        );
        n.ks.wait_until_empty();
        assert_eq!(n.ks.snapshot_dirs(), 0, "{ctx}");
        n.assert_no_leftovers();
    });
}

#[test]
fn ctrl_c_of_the_cli_cancels_its_pull() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (_reg, proxy) = registry_and_proxy(t.path());
    let store = t.path().join("store");
    let kit = slow_kit(t.path(), &store, &proxy, "interrupted", 43);
    each_version(test_name!(), |v| {
        let n = Node::start(v, &[]);
        let ctx = n.ctx.clone();
        let ns = "ns-int";
        let mut pull = start_slow_pull(&n, &proxy, ns, &kit);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pull.pid(), libc::SIGINT) };
        let o = pull.wait(LIMIT);
        assert!(!o.status.success(), "{ctx}: the pull survived Ctrl-C");
        let clean = eventually(Duration::from_secs(60), || n.pull_leases(ns).is_empty());
        assert!(
            clean,
            "{ctx}: the cancelled pull's lease stayed: {:?}\n{}",
            n.pull_leases(ns),
            tail(&n.ks.log())
        );
        assert!(
            !n.images(ns).contains(&kit.reference),
            "{ctx}: image registered by a cancelled pull"
        );
        let swept = eventually(Duration::from_secs(30), || {
            n.gc(ns);
            n.snapshots(ns).is_empty()
        });
        assert!(swept, "{ctx}: {:?}", n.snapshots(ns));
        n.assert_no_leftovers();
        // The daemon itself is fine.
        proxy.faults.throttle_blob_bps.store(0, Ordering::SeqCst);
        n.ok(
            ns,
            &["pull", "--containerd", &kit.reference, "--plain-http"],
        );
        assert!(n.images(ns).contains(&kit.reference), "{ctx}");
    });
}

#[test]
fn a_dead_daemon_is_named_in_the_error() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // No file; a socket file nobody listens on; the socket of a daemon killed with -9.
    let missing = dir.join("missing.sock");
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    std::fs::create_dir_all(dir.join("killed")).unwrap();
    let mut ks = Kitsnap::start(&dir.join("killed"));
    ks.kill9();
    assert!(ks.sock.exists(), "kill -9 leaves the socket file");
    for sock in [&missing, &stale, &ks.sock] {
        for args in [
            &["mount", "127.0.0.1:1/kits/none:v1"][..],
            &["mount", "--list"],
            &["umount", "none"],
            &["pull", "--containerd", "127.0.0.1:1/kits/none:v1"],
        ] {
            let mut cmd = Command::new(support::bin());
            cmd.env("KITSNAP_STORE", dir.join("store"))
                .env("KITSNAP_ADDRESS", sock)
                .env_remove("KITSNAP_HOME")
                .args(args);
            let o = Proc::spawn(cmd, format!("kitsnap {args:?}")).wait(LIMIT);
            let err = text(&o.stderr);
            assert!(
                !o.status.success(),
                "{args:?} at {}: worked",
                sock.display()
            );
            assert!(
                err.contains("kitsnap serve") && !err.contains("h2 protocol error"),
                "{args:?} at {}: the error does not say kitsnap serve is not running:\n{err}",
                sock.display()
            );
        }
    }
}

/// A daemon that accepts each connection, sends its HTTP/2 SETTINGS and closes it (until
/// `stop`; returns how many it served): the CLI's next write meets a closed peer.
fn dying_daemon(
    sock: &Path,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    use std::io::Write;
    let l = std::os::unix::net::UnixListener::bind(sock).unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut served = 0;
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = [0u8; 65536];
                    let _ = c.read(&mut buf);
                    // An empty SETTINGS frame (the client must acknowledge it), then close.
                    let _ = c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        served
    })
}

#[test]
fn a_daemon_dying_during_a_call_gives_an_error_not_a_silent_death() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let sock = dir.join("dying.sock");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = dying_daemon(&sock, stop.clone());
    let mut bad = Vec::new();
    // The outcome depends on when the close lands: try each verb a few times.
    for _ in 0..5 {
        for args in [
            &["mount", "127.0.0.1:1/kits/none:v1"][..],
            &["mount", "--list"],
            &["pull", "--containerd", "127.0.0.1:1/kits/none:v1"],
        ] {
            let mut cmd = Command::new(support::bin());
            cmd.env("KITSNAP_STORE", dir.join("store"))
                .env("KITSNAP_ADDRESS", &sock)
                .env_remove("KITSNAP_HOME")
                .args(args);
            let o = Proc::spawn(cmd, format!("kitsnap {args:?}")).wait(LIMIT);
            let err = text(&o.stderr);
            // Killed by a signal (SIGPIPE: exit 141 in a shell) means no message at all.
            let clear = o.status.code().is_some_and(|c| c != 0)
                && err.contains("kitsnap serve")
                && !err.contains("h2 protocol error");
            if !clear {
                bad.push(format!("{args:?}: {} {:?}", o.status, err.trim()));
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    assert!(server.join().unwrap() > 0, "the CLI never connected");
    assert!(
        bad.is_empty(),
        "a daemon that went away during a call must give an error naming kitsnap serve (not a death by signal, not a bare transport error):\n{}",
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 5. One daemon per socket.

#[test]
fn a_second_daemon_on_a_live_socket_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let ks = Kitsnap::start(dir);
    let mut cmd = Command::new(support::bin());
    cmd.args([
        "serve",
        "--root",
        dir.join("root-2").to_str().unwrap(),
        "--address",
        ks.sock.to_str().unwrap(),
        "--mount-root",
        dir.join("mounts-2").to_str().unwrap(),
        "--containerd-address",
        dir.join("no-containerd.sock").to_str().unwrap(),
        "--no-docker-plugin",
        "--mirror-addr",
        "off",
    ]);
    let o = Proc::spawn(cmd, "the second kitsnap serve").wait(LIMIT);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "a second daemon served: {err}");
    assert!(
        err.contains("another process") && err.contains("listening"),
        "{err}"
    );
    assert!(
        ks.sock.exists(),
        "the second daemon removed the first's socket"
    );
    // The first one still serves.
    let mut list = Command::new(support::bin());
    list.env("KITSNAP_ADDRESS", &ks.sock)
        .env("KITSNAP_STORE", dir.join("store"))
        .env_remove("KITSNAP_HOME")
        .args(["mount", "--list"]);
    let o = Proc::spawn(list, "kitsnap mount --list").wait(LIMIT);
    assert!(
        o.status.success() && text(&o.stdout).starts_with("NAME"),
        "the first daemon stopped serving: {}\n{}",
        text(&o.stderr),
        ks.log()
    );
}

// ---------------------------------------------------------------------------------------
// 6. Limits from the daemon's config file.

#[test]
fn pull_limits_from_the_config_file() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (reg, _proxy) = registry_and_proxy(t.path());
    let store = t.path().join("store");
    let three = pack_push(
        &store,
        tree(
            &t.path().join("three"),
            support::bytes(256 << 10, 61),
            b"x,y\n6,1\n",
            "# three\n",
        ),
        format!("{}/limits/three:v1", reg.addr()),
        &[],
    );
    // Two layers: a small model and 50 MiB of zeros, gzip (a few KiB).
    let bomb_dir = t.path().join("bomb");
    std::fs::create_dir_all(bomb_dir.join("data")).unwrap();
    std::fs::write(bomb_dir.join("model.bin"), support::bytes(64 << 10, 62)).unwrap();
    std::fs::write(bomb_dir.join("data/zeros.bin"), vec![0u8; 50 << 20]).unwrap();
    std::fs::write(
        bomb_dir.join("Kitfile"),
        "manifestVersion: 1.0.0\npackage:\n  name: bomb\nmodel:\n  name: m\n  path: model.bin\ndatasets:\n  - name: zeros\n    path: data/zeros.bin\n",
    )
    .unwrap();
    let bomb = format!("{}/limits/bomb:v1", reg.addr());
    support::ok(
        &store,
        &[
            "pack",
            bomb_dir.to_str().unwrap(),
            "-t",
            &bomb,
            "--compression",
            "gzip",
        ],
    );
    support::ok(&store, &["push", &bomb, "--plain-http"]);
    let m = serde_json::from_str::<serde_json::Value>(&support::ok(&store, &["inspect", &bomb]))
        .unwrap()["manifest"]
        .clone();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let zeros = layers[1]["digest"].as_str().unwrap().to_string();
    assert!(
        layers[1]["size"].as_u64().unwrap() < 1 << 20,
        "the zeros compress: {m}"
    );
    let cfg = t.path().join("kitsnap.toml");
    std::fs::write(&cfg, "max_layers = 2\nmax_expansion = 10\n").unwrap();
    let small = t.path().join("small.toml");
    std::fs::write(&small, "max_kit_gib = 0\n").unwrap();
    each_version(test_name!(), |v| {
        let n = Node::start(v, &["--config", cfg.to_str().unwrap()]);
        let ctx = n.ctx.clone();
        let ns = "ns-limits";
        for args in [
            &[
                "pull",
                "--containerd",
                three.reference.as_str(),
                "--plain-http",
            ][..],
            &["mount", three.reference.as_str(), "--plain-http"],
        ] {
            let err = n.err(ns, args);
            assert!(err.contains("max_layers"), "{ctx}: {args:?}: {err}");
        }
        let err = n.err(ns, &["pull", "--containerd", &bomb, "--plain-http"]);
        assert!(err.contains("decompression bomb"), "{ctx}: {err}");
        assert!(n.images(ns).is_empty(), "{ctx}: {:?}", n.images(ns));
        assert!(
            n.snapshots(ns).is_empty(),
            "{ctx}: snapshots of refused kits: {:?}",
            n.snapshots(ns)
        );
        n.assert_no_leftovers();
        n.ks.wait_until_empty();
        assert_eq!(n.ks.snapshot_dirs(), 0, "{ctx}");
        assert!(
            !n.ctr(ns, &["content", "ls"]).contains(&zeros),
            "{ctx}: the bomb's blob stayed in the content store"
        );
        drop(n);
        // A kit over `max_kit_gib`, whole or lazy (the lazy blob lands whole in the end).
        let n = Node::start(v, &["--config", small.to_str().unwrap()]);
        for lazy in [false, true] {
            let mut args = vec![
                "pull",
                "--containerd",
                three.reference.as_str(),
                "--plain-http",
            ];
            if lazy {
                args.push("--lazy");
            }
            let err = n.err(ns, &args);
            assert!(err.contains("max_kit_gib"), "{ctx}: {args:?}: {err}");
            // Lazily: refused by the blob's size before anything is fetched.
            assert_eq!(
                err.contains("the ModelKit unpacks to more"),
                lazy,
                "{ctx}: {args:?}: {err}"
            );
        }
        assert!(n.images(ns).is_empty(), "{ctx}: {:?}", n.images(ns));
        n.assert_no_leftovers();
    });
}

// ---------------------------------------------------------------------------------------
// Many clients at once on one kit: simultaneous mounts of one ref (the kit not yet on the
// node), a mount racing `ctr images rm --sync`, and 20 containers composed at once.

#[test]
fn many_clients_on_one_kit_at_once() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let (_reg, kit, img) = kit_and_image(t.path(), "crowd", 3 << 20, 77);
    const NS: &str = "kitsnap-test";
    each_version(test_name!(), |v| {
        let n = Node::start(v, &[]);
        let ctx = n.ctx.clone();
        let mount = [
            "mount",
            kit.reference.as_str(),
            "--name",
            "crowd",
            "--plain-http",
        ];

        // --- 6 mounts of one unpulled ref at once: one pull, one view, six holders.
        let procs: Vec<Proc> = (0..6).map(|_| n.spawn(NS, &mount)).collect();
        let outs: Vec<Output> = procs.into_iter().map(|mut p| p.wait(LIMIT)).collect();
        let mut paths = Vec::new();
        for o in &outs {
            assert!(o.status.success(), "{ctx}: mount: {}", text(&o.stderr));
            paths.push(text(&o.stdout).trim().to_string());
        }
        paths.dedup();
        assert_eq!(paths.len(), 1, "{ctx}: one view for every mount: {paths:?}");
        assert_view(&ctx, Path::new(&paths[0]), &kit);
        assert_eq!(n.holders("crowd").map(|h| h.len()), Some(6), "{ctx}");
        let committed = n
            .snapshots(NS)
            .into_iter()
            .filter(|(_, kind)| kind == "Committed")
            .count();
        assert_eq!(
            committed,
            3,
            "{ctx}: each layer unpacked once: {:?}",
            n.snapshots(NS)
        );

        // --- 20 containers composed with the kit at once: all read the model.
        n.ctr(
            NS,
            &[
                "images",
                "import",
                "--snapshotter",
                "kitsnap",
                img.to_str().unwrap(),
            ],
        );
        let label = format!(
            "containerd.io/snapshot/kitsnap.modelkit={}:/models",
            kit.reference
        );
        let runs: Vec<_> = (0..20)
            .map(|i| {
                let (ctd, label, name) = (&n.ctd, label.clone(), format!("crowd{i}"));
                let args = vec![
                    "run".to_string(),
                    "--rm".into(),
                    "--snapshotter".into(),
                    "kitsnap".into(),
                    "--snapshotter-label".into(),
                    label,
                    IMAGE.into(),
                    name,
                    "sha256sum".into(),
                    "/models/model.bin".into(),
                ];
                (ctd, args)
            })
            .collect();
        let results: Vec<Output> = std::thread::scope(|s| {
            let handles: Vec<_> = runs
                .iter()
                .map(|(ctd, args)| {
                    s.spawn(move || {
                        let a: Vec<&str> = args.iter().map(String::as_str).collect();
                        ctd.ctr_ns(NS, &a)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, o) in results.iter().enumerate() {
            assert!(
                o.status.success() && text(&o.stdout).contains(&kit.model_sha()),
                "{ctx}: composed container {i}: {}{}\n--- daemon log tail:\n{}",
                text(&o.stdout),
                text(&o.stderr),
                tail(&n.ks.log())
            );
        }

        // --- a mount under another name while the image is removed: neither hangs; the
        // mount either wins (and holds the kit) or fails cleanly.
        let mut other = n.spawn(
            NS,
            &[
                "mount",
                kit.reference.as_str(),
                "--name",
                "racer",
                "--plain-http",
            ],
        );
        let rm = n
            .ctd
            .ctr_ns(NS, &["images", "rm", "--sync", &kit.reference]);
        let o = other.wait(LIMIT);
        assert!(
            rm.status.success(),
            "{ctx}: images rm: {}",
            text(&rm.stderr)
        );
        if o.status.success() {
            assert_view(&ctx, Path::new(text(&o.stdout).trim()), &kit);
            n.ok(NS, &["umount", "racer"]);
        } else {
            let e = text(&o.stderr);
            assert!(e.contains("error:"), "{ctx}: a clear error: {e}");
        }
        // The first view kept the kit through the removal.
        assert_view(&ctx, Path::new(&paths[0]), &kit);
        for _ in 0..6 {
            n.ok(NS, &["umount", "crowd"]);
        }
        assert_eq!(n.holders("crowd"), None, "{ctx}");
        n.gc(NS);
        n.assert_no_leftovers();
    });
}
