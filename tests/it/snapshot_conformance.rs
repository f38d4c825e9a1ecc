//! containerd's snapshotter conformance suite (`core/snapshots/testsuite`: testsuite.go,
//! issues.go, helpers.go), its cases ported to `kitsnap serve` driven over its own
//! snapshots.v1 gRPC socket, plus what kitsnap adds on top: gRPC error codes, Usage,
//! persistence across a crash, the remote-snapshot protocol, Cleanup racing Prepares, and
//! 500 layers under a long root.
//!
//! Every test starts its own daemon on a fresh root. Cases that mount need root; the
//! others run anywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kitsnap_node::api::snapshots as pb;
use kitsnap_node::api::snapshots::snapshots_client::SnapshotsClient;
use kitsnap_node::api::types::Mount;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Root (mounts) or a loud skip; under CI a failure. (Replaced by the shared `require!`.)
/// Root (mounts need it): skips loudly, or fails under CI, through the shared `missing`.
fn require_root(what: &str) -> bool {
    if crate::support::prereq::is_root() {
        return true;
    }
    crate::support::prereq::missing(what, "root privileges (mounts need them)");
    false
}

// ---------------------------------------------------------------------------------------
// The daemon, and a blocking client of it.

type Labels = HashMap<String, String>;

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// containerd's suite labels everything with a GC root; so do these tests.
fn opt() -> Labels {
    labels(&[("containerd.io/gc.root", "2026-01-01T00:00:00Z")])
}

struct Daemon {
    dir: tempfile::TempDir,
    root: PathBuf,
    sock: PathBuf,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    client: Option<SnapshotsClient<Channel>>,
}

impl Daemon {
    fn start() -> Daemon {
        Self::start_with_root("root")
    }

    /// `root` is relative to the test's temporary directory.
    fn start_with_root(root: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon {
            root: dir.path().join(root),
            sock: dir.path().join("kitsnap.sock"),
            dir,
            child: None,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
            client: None,
        };
        d.spawn();
        d
    }

    fn work(&self) -> PathBuf {
        let w = self.dir.path().join("work");
        fs::create_dir_all(&w).unwrap();
        w
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kitsnap.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kitsnap"))
            .arg("serve")
            .arg("--root")
            .arg(&self.root)
            .arg("--address")
            .arg(&self.sock)
            .arg("--no-docker-plugin")
            .args(["--mirror-addr", "off"])
            .arg("--containerd-address")
            .arg(self.dir.path().join("no-containerd.sock"))
            .arg("--mount-root")
            .arg(self.dir.path().join("mounts"))
            .args(["--log-level", "debug"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kitsnap serve");
        self.child = Some(child);
        self.client = Some(self.connect());
    }

    /// Connects once the daemon answers (a stale socket of a killed daemon refuses).
    fn connect(&mut self) -> SnapshotsClient<Channel> {
        let start = Instant::now();
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("kitsnap serve exited: {st}\n{}", self.log());
            }
            let sock = self.sock.clone();
            let answered = self.rt.block_on(async move {
                let ch = kitsnap_node::containerd::unix_channel(&sock).await.ok()?;
                let mut c = SnapshotsClient::new(ch);
                let r = c
                    .stat(pb::StatSnapshotRequest {
                        key: "kitsnap-conformance-probe".into(),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Err(s) if s.code() == Code::NotFound => Some(c),
                    _ => None,
                }
            });
            if let Some(c) = answered {
                return c;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "kitsnap serve did not answer on {}\n{}",
                self.sock.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("kitsnap.log")).unwrap_or_default()
    }

    /// SIGKILL: as a crash (or power loss after the last commit) leaves things.
    fn kill9(&mut self) {
        self.client = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self) {
        self.client = None;
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    fn c(&self) -> SnapshotsClient<Channel> {
        self.client.clone().expect("daemon running")
    }

    fn prepare(&self, key: &str, parent: &str, l: Labels) -> Result<Vec<Mount>, Status> {
        let mut c = self.c();
        let req = pb::PrepareSnapshotRequest {
            key: key.into(),
            parent: parent.into(),
            labels: l,
            ..Default::default()
        };
        self.rt
            .block_on(c.prepare(req))
            .map(|r| r.into_inner().mounts)
    }

    fn view(&self, key: &str, parent: &str, l: Labels) -> Result<Vec<Mount>, Status> {
        let mut c = self.c();
        let req = pb::ViewSnapshotRequest {
            key: key.into(),
            parent: parent.into(),
            labels: l,
            ..Default::default()
        };
        self.rt.block_on(c.view(req)).map(|r| r.into_inner().mounts)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>, Status> {
        let mut c = self.c();
        let req = pb::MountsRequest {
            key: key.into(),
            ..Default::default()
        };
        self.rt
            .block_on(c.mounts(req))
            .map(|r| r.into_inner().mounts)
    }

    fn commit(&self, name: &str, key: &str, l: Labels) -> Result<(), Status> {
        let mut c = self.c();
        let req = pb::CommitSnapshotRequest {
            name: name.into(),
            key: key.into(),
            labels: l,
            ..Default::default()
        };
        self.rt.block_on(c.commit(req)).map(|_| ())
    }

    fn remove(&self, key: &str) -> Result<(), Status> {
        let mut c = self.c();
        let req = pb::RemoveSnapshotRequest {
            key: key.into(),
            ..Default::default()
        };
        self.rt.block_on(c.remove(req)).map(|_| ())
    }

    fn stat(&self, key: &str) -> Result<pb::Info, Status> {
        let mut c = self.c();
        let req = pb::StatSnapshotRequest {
            key: key.into(),
            ..Default::default()
        };
        self.rt
            .block_on(c.stat(req))
            .map(|r| r.into_inner().info.expect("info"))
    }

    fn update(&self, info: pb::Info, paths: &[&str]) -> Result<pb::Info, Status> {
        let mut c = self.c();
        let mut req = pb::UpdateSnapshotRequest {
            info: Some(info),
            ..Default::default()
        };
        if !paths.is_empty() {
            req.update_mask = Some(Default::default());
            req.update_mask.as_mut().unwrap().paths = paths.iter().map(|p| p.to_string()).collect();
        }
        self.rt
            .block_on(c.update(req))
            .map(|r| r.into_inner().info.expect("info"))
    }

    fn list(&self, filters: &[&str]) -> Result<Vec<pb::Info>, Status> {
        let mut c = self.c();
        let req = pb::ListSnapshotsRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        };
        self.rt.block_on(async move {
            let mut s = c.list(req).await?.into_inner();
            let mut out = Vec::new();
            while let Some(b) = s.message().await? {
                out.extend(b.info);
            }
            Ok(out)
        })
    }

    fn names(&self, filters: &[&str]) -> Vec<String> {
        let mut n: Vec<String> = self
            .list(filters)
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        n.sort();
        n
    }

    fn usage(&self, key: &str) -> Result<(i64, i64), Status> {
        let mut c = self.c();
        let req = pb::UsageRequest {
            key: key.into(),
            ..Default::default()
        };
        self.rt.block_on(c.usage(req)).map(|r| {
            let r = r.into_inner();
            (r.size, r.inodes)
        })
    }

    fn cleanup(&self) -> Result<(), Status> {
        let mut c = self.c();
        self.rt
            .block_on(c.cleanup(pb::CleanupRequest::default()))
            .map(|_| ())
    }

    /// Entries of `<root>/snapshots`.
    fn snapshot_dirs(&self) -> BTreeSet<String> {
        fs::read_dir(self.root.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn kind(i: &pb::Info) -> pb::Kind {
    pb::Kind::try_from(i.kind).unwrap_or(pb::Kind::Unknown)
}

fn created(i: &pb::Info) -> SystemTime {
    let t = i.created_at.as_ref().expect("created_at");
    UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

fn updated(i: &pb::Info) -> SystemTime {
    let t = i.updated_at.as_ref().expect("updated_at");
    UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32)
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(r: Result<T, Status>, code: Code) -> Status {
    match r {
        Err(s) if s.code() == code => s,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Mounts, and a small fstest: appliers and directory comparison.

/// A mount at a directory, undone on drop (also when a check panics).
struct Mounted(PathBuf);

impl Mounted {
    fn new(mounts: &[Mount], target: &Path, readonly: bool) -> Mounted {
        fs::create_dir_all(target).unwrap();
        kitsnap_node::mount::mount_all(mounts, target, readonly)
            .unwrap_or_else(|e| panic!("mounting {mounts:?} at {}: {e}", target.display()));
        Mounted(target.to_path_buf())
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for _ in 0..mounts_at(&self.0) {
            kitsnap_node::mount::unmount(&self.0).unwrap();
        }
    }
}

/// How many mounts are stacked exactly at `p`.
fn mounts_at(p: &Path) -> usize {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = p.to_string_lossy();
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(&*want))
        .count()
}

#[derive(Clone, Debug)]
enum Op {
    File(String, Vec<u8>, u32),
    Dir(String, u32),
    RemoveAll(String),
    Chown(String, u32, u32),
    Rename(String, String),
    Link(String, String),
}

fn file(p: impl Into<String>, c: impl AsRef<[u8]>, mode: u32) -> Op {
    Op::File(p.into(), c.as_ref().to_vec(), mode)
}
fn dir(p: impl Into<String>, mode: u32) -> Op {
    Op::Dir(p.into(), mode)
}
fn remove_all(p: impl Into<String>) -> Op {
    Op::RemoveAll(p.into())
}
fn chown(p: impl Into<String>, uid: u32, gid: u32) -> Op {
    Op::Chown(p.into(), uid, gid)
}
fn rename(a: impl Into<String>, b: impl Into<String>) -> Op {
    Op::Rename(a.into(), b.into())
}
fn link(old: impl Into<String>, new: impl Into<String>) -> Op {
    Op::Link(old.into(), new.into())
}

fn at(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Applies `ops` under `root`, modes exact whatever the umask.
fn apply(root: &Path, ops: &[Op]) {
    for op in ops {
        match op {
            Op::File(p, c, mode) => {
                let p = at(root, p);
                fs::write(&p, c).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
            }
            Op::Dir(p, mode) => {
                let p = at(root, p);
                fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
            }
            Op::RemoveAll(p) => {
                let p = at(root, p);
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(&p).unwrap(),
                    Ok(_) => fs::remove_file(&p).unwrap(),
                    Err(_) => {}
                }
            }
            Op::Chown(p, u, g) => {
                std::os::unix::fs::lchown(at(root, p), Some(*u), Some(*g)).unwrap();
            }
            Op::Rename(a, b) => fs::rename(at(root, a), at(root, b)).unwrap(),
            Op::Link(old, new) => fs::hard_link(at(root, old), at(root, new)).unwrap(),
        }
    }
}

/// Everything visible under `root` (not `root` itself): type, mode, owner, contents.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let head = format!("{:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid());
            let v = if m.is_dir() {
                stack.push(p.clone());
                format!("dir {head}")
            } else if m.file_type().is_symlink() {
                format!("symlink {head} -> {}", fs::read_link(&p).unwrap().display())
            } else {
                let c = fs::read(&p).unwrap();
                format!("file {head} {:?}", String::from_utf8_lossy(&c))
            };
            out.insert(rel, v);
        }
    }
    out
}

#[track_caller]
fn assert_same_tree(want: &Path, got: &Path, what: &str) {
    let (w, g) = (tree(want), tree(got));
    if w != g {
        let only_w: Vec<_> = w.iter().filter(|(k, v)| g.get(*k) != Some(v)).collect();
        let only_g: Vec<_> = g.iter().filter(|(k, v)| w.get(*k) != Some(v)).collect();
        panic!("{what}: trees differ\n expected only: {only_w:#?}\n got only: {only_g:#?}");
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn seq() -> usize {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// helpers.go `createSnapshot`: Prepare on `parent`, mount, apply, unmount, Commit.
fn create_snapshot(d: &Daemon, parent: &str, ops: &[Op]) -> String {
    let n = format!("snap-{}", seq());
    let prepare = format!("{n}-prepare");
    let m = d.prepare(&prepare, parent, opt()).unwrap();
    {
        let mnt = Mounted::new(&m, &d.work().join(format!("prepare-{n}")), false);
        apply(mnt.path(), ops);
    }
    d.commit(&n, &prepare, opt()).unwrap();
    n
}

/// helpers.go `checkSnapshot`: a View of `name` mounted equals `want`.
fn check_snapshot(d: &Daemon, name: &str, want: &Path) {
    let view = format!("{name}-view");
    let m = d.view(&view, name, opt()).unwrap();
    {
        let mnt = Mounted::new(&m, &d.work().join(format!("check-{}", seq())), true);
        assert_same_tree(want, mnt.path(), &format!("view of {name}"));
    }
    d.remove(&view).unwrap();
}

/// helpers.go `checkSnapshots`: a chain of snapshots, one per applier, each checked in a
/// View against the same changes applied to one plain directory.
fn check_snapshots(d: &Daemon, layers: &[Vec<Op>]) {
    let flat = d.work().join(format!("flat-{}", seq()));
    fs::create_dir_all(&flat).unwrap();
    let mut parent = String::new();
    for ops in layers {
        let s = create_snapshot(d, &parent, ops);
        apply(&flat, ops);
        check_snapshot(d, &s, &flat);
        parent = s;
    }
}

// ---------------------------------------------------------------------------------------
// testsuite.go

#[test]
fn basic() {
    if !require_root("snapshot_conformance::basic") {
        return;
    }
    let d = Daemon::start();
    let work = d.work();
    let initial = vec![
        file("/foo", "foo\n", 0o777),
        dir("/a", 0o755),
        dir("/a/b", 0o755),
        dir("/a/b/c", 0o755),
    ];
    let diff = vec![
        file("/bar", "bar\n", 0o777),
        file("/foo", "bar\n", 0o777),
        remove_all("/a/b"),
    ];
    let preparing = work.join("preparing").to_string_lossy().into_owned();
    let m = d.prepare(&preparing, "", opt()).unwrap();
    assert!(!m.is_empty());
    {
        let mnt = Mounted::new(&m, Path::new(&preparing), false);
        apply(mnt.path(), &initial);
    }
    let committed = work.join("committed").to_string_lossy().into_owned();
    d.commit(&committed, &preparing, opt()).unwrap();
    let si = d.stat(&committed).unwrap();
    assert_eq!(si.parent, "");
    assert_eq!(kind(&si), pb::Kind::Committed);
    assert_code(d.stat(&preparing), Code::NotFound);

    let next = work.join("nextlayer").to_string_lossy().into_owned();
    let m = d.prepare(&next, &committed, opt()).unwrap();
    {
        let mnt = Mounted::new(&m, Path::new(&next), false);
        let expect = work.join("expect-initial");
        fs::create_dir_all(&expect).unwrap();
        apply(&expect, &initial);
        assert_same_tree(&expect, mnt.path(), "next layer before the diff");
        apply(mnt.path(), &diff);
    }
    let ni = d.stat(&next).unwrap();
    assert_eq!(ni.parent, committed);
    assert_eq!(kind(&ni), pb::Kind::Active);

    let next_committed = work.join("committed-next").to_string_lossy().into_owned();
    d.commit(&next_committed, &next, opt()).unwrap();
    let si2 = d.stat(&next_committed).unwrap();
    assert_eq!(si2.parent, committed);
    assert_eq!(kind(&si2), pb::Kind::Committed);
    assert_code(d.stat(&next), Code::NotFound);

    // Walk returns exactly what Stat does.
    let walked: HashMap<String, pb::Info> = d
        .list(&[])
        .unwrap()
        .into_iter()
        .map(|i| (i.name.clone(), i))
        .collect();
    assert_eq!(walked.get(&committed), Some(&si));
    assert_eq!(walked.get(&next_committed), Some(&si2));

    let nextnext = work.join("nextnextlayer").to_string_lossy().into_owned();
    let m = d.view(&nextnext, &next_committed, opt()).unwrap();
    {
        let mnt = Mounted::new(&m, Path::new(&nextnext), true);
        let expect = work.join("expect-both");
        fs::create_dir_all(&expect).unwrap();
        apply(&expect, &initial);
        apply(&expect, &diff);
        assert_same_tree(&expect, mnt.path(), "view of both layers");
    }
    d.remove(&nextnext).unwrap();
    let e = assert_code(d.remove(&committed), Code::FailedPrecondition);
    assert!(e.message().contains("remove"), "{}", e.message());
    d.remove(&next_committed).unwrap();
    d.remove(&committed).unwrap();
}

#[test]
fn stat_active() {
    let d = Daemon::start();
    let preparing = d.work().join("preparing").to_string_lossy().into_owned();
    let m = d.prepare(&preparing, "", opt()).unwrap();
    assert!(!m.is_empty());
    if require_root("snapshot_conformance::stat_active (mount)") {
        drop(Mounted::new(&m, Path::new(&preparing), false));
    }
    let si = d.stat(&preparing).unwrap();
    assert_eq!(si.name, preparing);
    assert_eq!(kind(&si), pb::Kind::Active);
    assert_eq!(si.parent, "");
}

#[test]
fn stat_committed() {
    let d = Daemon::start();
    let preparing = d.work().join("preparing").to_string_lossy().into_owned();
    let m = d.prepare(&preparing, "", opt()).unwrap();
    assert!(!m.is_empty());
    let committed = d.work().join("committed").to_string_lossy().into_owned();
    d.commit(&committed, &preparing, opt()).unwrap();
    let si = d.stat(&committed).unwrap();
    assert_eq!(si.name, committed);
    assert_eq!(kind(&si), pb::Kind::Committed);
    assert_eq!(si.parent, "");
}

#[test]
fn transitivity() {
    if !require_root("snapshot_conformance::transitivity") {
        return;
    }
    let d = Daemon::start();
    let work = d.work();
    let prep = |name: &str, parent: &str, content: &str| {
        let key = work.join(name).to_string_lossy().into_owned();
        let m = d.prepare(&key, parent, opt()).unwrap();
        let mnt = Mounted::new(&m, Path::new(&key), false);
        apply(mnt.path(), &[file("/foo", content, 0o777)]);
        key
    };
    let preparing = prep("preparing", "", "foo\n");
    let snap_a = work.join("snapA").to_string_lossy().into_owned();
    d.commit(&snap_a, &preparing, opt()).unwrap();
    let next = prep("next", &snap_a, "foo bar\n");
    let snap_b = work.join("snapB").to_string_lossy().into_owned();
    d.commit(&snap_b, &next, opt()).unwrap();
    let (si_a, si_b) = (d.stat(&snap_a).unwrap(), d.stat(&snap_b).unwrap());
    let si_parent_b = d.stat(&si_b.parent).unwrap();
    assert_eq!(si_a.parent, "");
    assert_eq!(si_b.parent, snap_a);
    assert_eq!(si_parent_b.parent, "");
}

#[test]
fn prepare_and_view_with_one_key_fail() {
    let d = Daemon::start();
    d.prepare("preparing", "", opt()).unwrap();
    d.commit("snapA", "preparing", opt()).unwrap();
    d.prepare("newlayer", "snapA", opt()).unwrap();
    assert_code(d.view("newlayer", "snapA", opt()), Code::AlreadyExists);
    d.prepare("prepLayer", "snapA", opt()).unwrap();
    assert_code(d.prepare("prepLayer", "snapA", opt()), Code::AlreadyExists);
    d.view("viewLayer", "snapA", opt()).unwrap();
    assert_code(d.view("viewLayer", "snapA", opt()), Code::AlreadyExists);
    // A committed name is taken for Prepare and View too.
    assert_code(d.prepare("snapA", "", opt()), Code::AlreadyExists);
}

/// testsuite.go `baseTestSnapshots`.
fn base_test_snapshots(d: &Daemon) {
    d.prepare("c1-a", "", opt()).unwrap();
    d.commit("c1", "c1-a", opt()).unwrap();
    d.prepare("c2-a", "c1", opt()).unwrap();
    d.commit("c2", "c2-a", opt()).unwrap();
    d.prepare("a1", "c2", opt()).unwrap();
    d.prepare("a2", "", opt()).unwrap();
    d.view("v1", "c2", opt()).unwrap();
    d.view("v2", "", opt()).unwrap();
}

#[test]
fn update() {
    let d = Daemon::start();
    let t1 = SystemTime::now();
    base_test_snapshots(&d);
    let t2 = SystemTime::now();
    let cases = [
        ("c1", pb::Kind::Committed, ""),
        ("c2", pb::Kind::Committed, "c1"),
        ("a1", pb::Kind::Active, "c2"),
        ("a2", pb::Kind::Active, ""),
        ("v1", pb::Kind::View, "c2"),
        ("v2", pb::Kind::View, ""),
    ];
    for (name, k, parent) in cases {
        let st = d.stat(name).unwrap();
        assert!(
            created(&st) >= t1 && created(&st) <= t2,
            "{name}: created out of range"
        );
        assert_eq!(created(&st), updated(&st), "{name}: updated == created");
        assert_eq!(kind(&st), k, "{name}");
        assert_eq!(st.parent, parent, "{name}");
        assert_eq!(st.name, name);
        let created_at = created(&st);

        let root_time = "2026-02-02T00:00:00Z";
        let expected = labels(&[
            ("l1", "v1"),
            ("l2", "v2"),
            ("l3", "v3"),
            ("containerd.io/gc.root", root_time),
        ]);
        let mut st = st;
        st.parent = "doesnotexist".into();
        st.labels = expected.clone();
        let u1 = SystemTime::now();
        let st = d.update(st, &[]).unwrap();
        let u2 = SystemTime::now();
        assert_eq!(created(&st), created_at, "{name}: created kept");
        assert!(
            updated(&st) >= u1 && updated(&st) <= u2,
            "{name}: updated out of range"
        );
        assert_eq!(kind(&st), k);
        assert_eq!(st.parent, parent, "{name}: parent is immutable");
        assert_eq!(st.name, name);
        assert_eq!(st.labels, expected);

        let mut st = st;
        st.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        let st = d.update(st, &["labels.l1", "labels.l2"]).unwrap();
        assert_eq!(
            st.labels,
            labels(&[
                ("l1", "updated"),
                ("l3", "v3"),
                ("containerd.io/gc.root", root_time)
            ])
        );

        let mut st = st;
        let expected = labels(&[("l4", "v4"), ("containerd.io/gc.root", root_time)]);
        st.labels = expected.clone();
        let st = d.update(st, &["labels"]).unwrap();
        assert_eq!(st.labels, expected);

        let mut st = st;
        st.parent = "doesnotexist".into();
        assert_code(d.update(st, &["parent"]), Code::InvalidArgument);
        assert_eq!(d.stat(name).unwrap().labels, expected, "{name}: kept");
    }
    let mut ghost = d.stat("c1").unwrap();
    ghost.name = "ghost".into();
    assert_code(d.update(ghost, &[]), Code::NotFound);
}

#[test]
fn remove() {
    let d = Daemon::start();
    d.prepare("committed-a", "", opt()).unwrap();
    d.commit("committed-1", "committed-a", opt()).unwrap();
    d.prepare("reuse-1", "committed-1", opt()).unwrap();
    d.remove("reuse-1").unwrap();
    d.view("reuse-1", "committed-1", opt()).unwrap();
    d.remove("reuse-1").unwrap();
    d.prepare("reuse-1", "", opt()).unwrap();
    d.remove("committed-1").unwrap();
    d.commit("committed-1", "reuse-1", opt()).unwrap();
    // Removed snapshots leave no directories behind.
    assert_eq!(d.snapshot_dirs().len(), 1);
    assert_code(d.remove("committed-a"), Code::NotFound);
}

#[test]
fn walk_with_filters() {
    let d = Daemon::start();
    let gc = |extra: &[(&str, &str)]| {
        let mut l = labels(&[("containerd.io/gc.root", "check-walk")]);
        l.extend(labels(extra));
        l
    };
    d.prepare("a-np", "", gc(&[])).unwrap();
    d.prepare("p-tmp", "", gc(&[])).unwrap();
    d.commit("p", "p-tmp", gc(&[])).unwrap();
    d.prepare("a", "p", gc(&[])).unwrap();
    d.view("v", "p", gc(&[])).unwrap();
    d.prepare("p-wl-tmp", "", gc(&[])).unwrap();
    d.commit("p-wl", "p-wl-tmp", gc(&[("l", "1")])).unwrap();
    d.prepare("a-wl", "p-wl", gc(&[("l", "2")])).unwrap();
    d.view("v-wl", "p-wl", gc(&[("l", "3")])).unwrap();
    d.prepare("a-np-wl", "", gc(&[("l", "2")])).unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
            &[r#"labels."containerd.io/gc.root"==check-walk"#],
        ),
        (
            &["a-np", "a", "a-wl", "a-np-wl"],
            &[r#"kind==active,labels."containerd.io/gc.root"==check-walk"#],
        ),
        (
            &["v", "v-wl"],
            &[r#"kind==view,labels."containerd.io/gc.root"==check-walk"#],
        ),
        (
            &["p", "p-wl"],
            &[r#"kind==committed,labels."containerd.io/gc.root"==check-walk"#],
        ),
        (&["p", "a-np-wl"], &["name==p", "name==a-np-wl"]),
        (&["a-wl"], &["name==a-wl,labels.l"]),
        (&["a", "v"], &["parent==p"]),
        (
            &["a", "v", "a-wl", "v-wl"],
            &[r#"parent!="",labels."containerd.io/gc.root"==check-walk"#],
        ),
        (&["p-wl", "a-wl", "v-wl", "a-np-wl"], &["labels.l"]),
        (&["a-wl", "a-np-wl"], &["labels.l==2"]),
    ];
    for (i, (want, filters)) in cases.iter().enumerate() {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(d.names(filters), want, "case {i}: {filters:?}");
    }
    assert_code(d.list(&["labels.\"unterminated"]), Code::InvalidArgument);
}

#[test]
fn layer_file_update() {
    if !require_root("snapshot_conformance::layer_file_update") {
        return;
    }
    let d = Daemon::start();
    let l1 = vec![
        dir("/etc", 0o700),
        file("/etc/hosts", "mydomain 10.0.0.1", 0o644),
        file("/etc/profile", "PATH=/usr/bin", 0o644),
    ];
    let l2 = vec![
        file("/etc/hosts", "mydomain 10.0.0.2", 0o644),
        file("/etc/profile", "PATH=/usr/bin", 0o666),
        dir("/root", 0o700),
        file("/root/.bashrc", "PATH=/usr/sbin:/usr/bin", 0o644),
    ];
    // Several times, across second boundaries (mtime granularity issues).
    for _ in 0..3 {
        check_snapshots(&d, &[l1.clone(), l2.clone()]);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        std::thread::sleep(Duration::from_nanos(
            1_000_000_000 - now.subsec_nanos() as u64,
        ));
    }
}

#[test]
fn remove_directory_in_lower_layer() {
    if !require_root("snapshot_conformance::remove_directory_in_lower_layer") {
        return;
    }
    let d = Daemon::start();
    check_snapshots(
        &d,
        &[
            vec![dir("/lib", 0o700), file("/lib/hidden", "", 0o644)],
            vec![
                remove_all("/lib"),
                dir("/lib", 0o700),
                file("/lib/not-hidden", "", 0o644),
            ],
            vec![file("/lib/newfile", "", 0o644)],
        ],
    );
}

#[test]
fn chown_in_upper_layer() {
    if !require_root("snapshot_conformance::chown_in_upper_layer") {
        return;
    }
    let d = Daemon::start();
    check_snapshots(
        &d,
        &[
            vec![
                dir("/opt", 0o700),
                dir("/opt/a", 0o700),
                dir("/opt/a/b", 0o700),
                file("/opt/a/b/file.txt", "hello", 0o644),
            ],
            vec![
                chown("/opt", 1, 1),
                chown("/opt/a", 1, 1),
                chown("/opt/a/b", 1, 1),
                chown("/opt/a/b/file.txt", 1, 1),
            ],
        ],
    );
}

#[test]
fn directory_permission_on_commit() {
    if !require_root("snapshot_conformance::directory_permission_on_commit") {
        return;
    }
    let d = Daemon::start();
    check_snapshots(
        &d,
        &[
            vec![
                dir("/dir1", 0o700),
                dir("/dir2", 0o700),
                dir("/dir3", 0o700),
                dir("/dir4", 0o700),
                file("/dir4/f1", "...", 0o644),
                dir("/dir5", 0o700),
                file("/dir5/f1", "...", 0o644),
                chown("/dir1", 1, 1),
                chown("/dir2", 1, 1),
                chown("/dir3", 1, 1),
                chown("/dir5", 1, 1),
                chown("/dir5/f1", 1, 1),
            ],
            vec![
                chown("/dir2", 0, 0),
                remove_all("/dir3"),
                chown("/dir4", 1, 1),
                chown("/dir4/f1", 1, 1),
            ],
            vec![
                dir("/dir3", 0o700),
                chown("/dir3", 1, 1),
                remove_all("/dir5"),
                dir("/dir5", 0o700),
                chown("/dir5", 1, 1),
            ],
        ],
    );
}

#[test]
fn remove_intermediate_snapshot() {
    let d = Daemon::start();
    d.prepare("base", "", opt()).unwrap();
    d.commit("committed-base", "base", opt()).unwrap();
    d.prepare("intermediate", "committed-base", opt()).unwrap();
    d.commit("committed-inter", "intermediate", opt()).unwrap();
    d.prepare("toplayer", "committed-inter", opt()).unwrap();
    assert_code(d.remove("committed-inter"), Code::FailedPrecondition);
    d.remove("toplayer").unwrap();
    d.remove("committed-inter").unwrap();
    d.remove("committed-base").unwrap();
    assert!(d.list(&[]).unwrap().is_empty());
    assert!(d.snapshot_dirs().is_empty());
}

#[test]
fn deleted_files_in_child_snapshot() {
    if !require_root("snapshot_conformance::deleted_files_in_child_snapshot") {
        return;
    }
    let d = Daemon::start();
    check_snapshots(
        &d,
        &[
            vec![
                file("/foo", "foo\n", 0o777),
                file("/foobar", "foobar\n", 0o777),
            ],
            vec![remove_all("/foobar")],
            vec![],
        ],
    );
}

#[test]
fn move_file_from_lower_layer() {
    if !require_root("snapshot_conformance::move_file_from_lower_layer") {
        return;
    }
    let d = Daemon::start();
    check_snapshots(
        &d,
        &[
            vec![
                dir("/dir1", 0o700),
                file("/dir1/f1", "Hello", 0o644),
                dir("dir2", 0o700),
                file("dir2/f2", "...", 0o644),
            ],
            vec![
                dir("/dir3", 0o700),
                file("/dir3/f1", "Hello", 0o644),
                remove_all("/dir1"),
                link("dir2/f2", "dir3/f2"),
                remove_all("dir2/f2"),
            ],
        ],
    );
}

#[test]
fn view_is_read_only() {
    if !require_root("snapshot_conformance::view_is_read_only") {
        return;
    }
    let d = Daemon::start();
    let work = d.work();
    d.prepare("preparing", "", opt()).unwrap();
    d.commit("committed", "preparing", opt()).unwrap();
    // A view of one layer (a read-only bind), of two (an overlay), of none.
    d.prepare("upper", "committed", opt()).unwrap();
    d.commit("committed2", "upper", opt()).unwrap();
    for (view, parent) in [
        ("view", "committed"),
        ("view2", "committed2"),
        ("view0", ""),
    ] {
        let m = d.view(view, parent, opt()).unwrap();
        let mnt = Mounted::new(&m, &work.join(format!("{view}-mount")), false);
        let e = fs::write(mnt.path().join("testfile"), b"testcontent").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{view}: {e}");
        drop(mnt);
        d.remove(view).unwrap();
    }
    d.remove("committed2").unwrap();
    d.remove("committed").unwrap();
}

#[test]
fn stat_in_walk() {
    let d = Daemon::start();
    let prefix = "stats-in-walk-";
    let (c1, c2) = (format!("{prefix}c1"), format!("{prefix}c2"));
    d.prepare(&format!("{c1}-a"), "", opt()).unwrap();
    d.commit(&c1, &format!("{c1}-a"), opt()).unwrap();
    d.prepare(&format!("{c2}-a"), &c1, opt()).unwrap();
    d.commit(&c2, &format!("{c2}-a"), opt()).unwrap();
    d.prepare(&format!("{prefix}a1"), &c2, opt()).unwrap();
    d.view(&format!("{prefix}v1"), &c2, opt()).unwrap();
    let all = d.list(&[]).unwrap();
    assert_eq!(all.len(), 4);
    for si in all {
        assert_eq!(d.stat(&si.name).unwrap(), si);
    }
}

#[test]
fn root_permission() {
    if !require_root("snapshot_conformance::root_permission") {
        return;
    }
    let d = Daemon::start();
    let key = d.work().join("preparing").to_string_lossy().into_owned();
    let m = d.prepare(&key, "", opt()).unwrap();
    let mnt = Mounted::new(&m, Path::new(&key), false);
    let mode = fs::metadata(mnt.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "got {mode:o}");
}

#[test]
fn rename_files_in_upper_layer() {
    if !require_root("snapshot_conformance::rename_files_in_upper_layer") {
        return;
    }
    let d = Daemon::start();
    // As for containerd's overlayfs: renaming a lower directory needs redirect_dir, so
    // only the file renames of the case.
    check_snapshots(
        &d,
        &[
            vec![
                dir("/dir1", 0o700),
                dir("/somefiles", 0o700),
                file("/somefiles/f1", "was here first!", 0o644),
                file("/somefiles/f2", "nothing interesting", 0o644),
            ],
            vec![
                file("/somefiles/f1-overwrite", "new content 1", 0o644),
                rename("/somefiles/f1-overwrite", "/somefiles/f1"),
                rename("/somefiles/f2", "/somefiles/f3"),
            ],
        ],
    );
}

/// testsuite.go `check128LayersMount`, for `n` layers: every layer's active snapshot is
/// mounted and compared with a plain directory before and after its change, then a View
/// of the top is.
fn layers_mount(d: &Daemon, n: usize) {
    let work = d.work();
    let flat = work.join("flat");
    fs::create_dir_all(&flat).unwrap();
    let mut layers = vec![vec![
        file("/bottom", "way at the bottom\n", 0o777),
        file("/overwriteme", "FIRST!\n", 0o777),
        dir("/addhere", 0o755),
        dir("/onlyme", 0o755),
        file("/onlyme/bottom", "bye!\n", 0o777),
    ]];
    for i in 1..n {
        layers.push(vec![
            file("/overwriteme", format!("{i} WAS HERE!\n"), 0o777),
            file(format!("/addhere/file-{i}"), "same\n", 0o755),
            remove_all("/onlyme"),
            dir("/onlyme", 0o755),
            file(format!("/onlyme/file-{i}"), "only me!\n", 0o777),
        ]);
    }
    let mut parent = String::new();
    let started = Instant::now();
    for (i, ops) in layers.iter().enumerate() {
        let preparing = work.join(format!("prepare-layer-{i}"));
        let key = preparing.to_string_lossy().into_owned();
        let m = d
            .prepare(&key, &parent, opt())
            .unwrap_or_else(|e| panic!("[layer {i}] prepare: {e}"));
        {
            let mnt = Mounted::new(&m, &preparing, false);
            assert_same_tree(&flat, mnt.path(), &format!("[layer {i}] before apply"));
            apply(&flat, ops);
            apply(mnt.path(), ops);
            assert_same_tree(&flat, mnt.path(), &format!("[layer {i}] after apply"));
        }
        fs::remove_dir(&preparing).unwrap();
        parent = work
            .join(format!("committed-{i}"))
            .to_string_lossy()
            .into_owned();
        d.commit(&parent, &key, opt())
            .unwrap_or_else(|e| panic!("[layer {i}] commit: {e}"));
    }
    let view = work.join("fullview");
    let m = d.view(&view.to_string_lossy(), &parent, opt()).unwrap();
    let options: usize = m.iter().flat_map(|m| &m.options).map(String::len).sum();
    let t = Instant::now();
    let mnt = Mounted::new(&m, &view, true);
    let mounted_in = t.elapsed();
    assert_same_tree(&flat, mnt.path(), "full view");
    assert_eq!(
        fs::read_dir(mnt.path().join("addhere")).unwrap().count(),
        n - 1,
        "every layer's file is in the view"
    );
    eprintln!(
        "{n} layers: prepared, mounted, checked and committed in {:?}; the view's options \
         are {options} bytes, mounted in {mounted_in:?}",
        started.elapsed()
    );
}

#[test]
fn layers_128_mount() {
    if !require_root("snapshot_conformance::layers_128_mount") {
        return;
    }
    let d = Daemon::start();
    layers_mount(&d, 128);
}

#[test]
fn layers_500_mount_under_a_long_root() {
    // 500 commits with fsync: one at a time with the other disk-heavy tests.
    let _heavy = crate::support::heavy();
    if !require_root("snapshot_conformance::layers_500_mount_under_a_long_root") {
        return;
    }
    // 500 absolute lowerdirs under this root are ~80 KB of options: twenty pages.
    let d = Daemon::start_with_root(&format!("root-{}", "x".repeat(120)));
    layers_mount(&d, 500);
}

// ---------------------------------------------------------------------------------------
// What kitsnap adds to the suite.

#[test]
fn errors_map_to_grpc_codes() {
    let d = Daemon::start();
    d.prepare("a", "", opt()).unwrap();
    d.commit("c", "a", opt()).unwrap();
    let active = d.prepare("active", "c", opt()).unwrap();
    let view = d.view("view", "c", opt()).unwrap();
    assert_code(d.prepare("x", "missing", opt()), Code::NotFound);
    assert_code(d.view("x", "missing", opt()), Code::NotFound);
    // Only committed snapshots are parents: not an active one, not a view (no view of
    // a view).
    assert_code(d.prepare("x", "active", opt()), Code::InvalidArgument);
    assert_code(d.view("x", "view", opt()), Code::InvalidArgument);
    assert_code(d.prepare("", "", opt()), Code::InvalidArgument);
    assert_code(d.commit("x", "view", opt()), Code::FailedPrecondition);
    assert_code(d.commit("x", "c", opt()), Code::FailedPrecondition);
    assert_code(d.commit("c", "active", opt()), Code::AlreadyExists);
    assert_code(d.commit("x", "missing", opt()), Code::NotFound);
    assert_code(d.mounts("c"), Code::FailedPrecondition);
    assert_code(d.mounts("missing"), Code::NotFound);
    assert_code(d.stat("missing"), Code::NotFound);
    assert_code(d.usage("missing"), Code::NotFound);
    assert_code(d.remove("missing"), Code::NotFound);
    let e = assert_code(d.remove("c"), Code::FailedPrecondition);
    assert!(e.message().contains("remove"), "{}", e.message());
    // Refused requests changed nothing.
    assert_eq!(d.names(&[]), vec!["active", "c", "view"]);
    // Mounts of active snapshots and views are what Prepare/View returned.
    assert_eq!(d.mounts("active").unwrap(), active);
    assert_eq!(d.mounts("view").unwrap(), view);
    d.remove("view").unwrap();
    d.remove("active").unwrap();
    d.remove("c").unwrap();
}

#[test]
fn mounts_name_every_layer_top_first() {
    let d = Daemon::start();
    let mut parent = String::new();
    let mut dirs = Vec::new();
    for i in 0..4 {
        let m = d.prepare(&format!("a{i}"), &parent, opt()).unwrap();
        let up = kitsnap_node::mount::writable_dir(&m).unwrap();
        dirs.push(up.to_string_lossy().into_owned());
        d.commit(&format!("c{i}"), &format!("a{i}"), opt()).unwrap();
        parent = format!("c{i}");
    }
    dirs.reverse();
    let m = d.view("v", &parent, opt()).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, "overlay");
    assert_eq!(m[0].options, vec![format!("lowerdir={}", dirs.join(":"))]);
    let m = d.prepare("top", &parent, opt()).unwrap();
    assert_eq!(m, d.mounts("top").unwrap());
    let lower = m[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap();
    assert_eq!(lower, dirs.join(":"));
    assert!(m[0].options.iter().any(|o| o.starts_with("upperdir=")));
    assert!(m[0].options.iter().any(|o| o.starts_with("workdir=")));
}

#[test]
fn usage_is_live_for_active_and_recorded_at_commit() {
    let d = Daemon::start();
    d.prepare("base-a", "", opt()).unwrap();
    d.commit("base", "base-a", opt()).unwrap();
    for parent in ["", "base"] {
        let key = format!("a-on-{parent}");
        let m = d.prepare(&key, parent, opt()).unwrap();
        let up = kitsnap_node::mount::writable_dir(&m).unwrap();
        let (s0, i0) = d.usage(&key).unwrap();
        fs::write(up.join("blob"), vec![7u8; 64 * 1024]).unwrap();
        fs::create_dir(up.join("d")).unwrap();
        let (s1, i1) = d.usage(&key).unwrap();
        assert!(s1 >= s0 + 64 * 1024, "{key}: {s0} -> {s1}");
        assert_eq!(i1, i0 + 2, "{key}: a file and a directory");
        let name = format!("c-on-{parent}");
        d.commit(&name, &key, opt()).unwrap();
        assert_eq!(d.usage(&name).unwrap(), (s1, i1), "{name}: as at commit");
    }
    d.view("v", "base", opt()).unwrap();
    assert_eq!(d.usage("v").unwrap(), (0, 0));
}

#[test]
fn remote_snapshot_protocol() {
    // containerd's unpacker: Prepare with the target label; a snapshotter holding the
    // layer answers ALREADY_EXISTS and containerd finds it with this List filter.
    let d = Daemon::start();
    let target = "containerd.io/snapshot.ref";
    let filter =
        |t: &str, p: &str| format!(r#"labels."containerd.io/snapshot.ref"=={t},parent=="{p}""#);
    let l0 = labels(&[(target, "sha256:l0")]);
    d.prepare("default/1/extract-l0", "", l0.clone()).unwrap();
    d.commit("default/2/sha256:l0", "default/1/extract-l0", l0.clone())
        .unwrap();
    assert_code(
        d.prepare("default/3/extract-l0", "", l0.clone()),
        Code::AlreadyExists,
    );
    assert_eq!(
        d.names(&[&filter("sha256:l0", "")]),
        vec!["default/2/sha256:l0"]
    );
    // The same layer on another parent is not held.
    d.prepare("default/4/base-a", "", opt()).unwrap();
    d.commit("default/5/base", "default/4/base-a", opt())
        .unwrap();
    d.prepare("default/6/extract-l0", "default/5/base", l0.clone())
        .unwrap();
    let found = d.list(&[&filter("sha256:l0", "default/5/base")]).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(kind(&found[0]), pb::Kind::Active, "the extraction itself");
    // An active snapshot carrying the label is not held either.
    d.prepare("default/7/again", "default/5/base", l0.clone())
        .unwrap();
    // Held again once committed; removing it frees the target.
    d.commit("default/8/sha256:l0", "default/6/extract-l0", l0.clone())
        .unwrap();
    assert_code(
        d.prepare("default/9/x", "default/5/base", l0.clone()),
        Code::AlreadyExists,
    );
    d.remove("default/8/sha256:l0").unwrap();
    d.prepare("default/9/x", "default/5/base", l0).unwrap();
}

#[test]
fn persistence_across_a_crash() {
    let mut d = Daemon::start();
    d.prepare("c1-a", "", opt()).unwrap();
    let m = d.prepare("c1-b", "", opt()).unwrap();
    let up = kitsnap_node::mount::writable_dir(&m).unwrap();
    fs::write(up.join("kept"), b"across restarts").unwrap();
    d.remove("c1-a").unwrap();
    d.commit("c1", "c1-b", labels(&[("l", "1")])).unwrap();
    d.prepare("c2-a", "c1", opt()).unwrap();
    d.commit("c2", "c2-a", opt()).unwrap();
    d.prepare("a1", "c2", opt()).unwrap();
    d.view("v1", "c2", opt()).unwrap();
    let before = {
        let mut l = d.list(&[]).unwrap();
        l.sort_by(|a, b| a.name.cmp(&b.name));
        l
    };
    let dirs = d.snapshot_dirs();
    d.kill9();
    // What crashes leave: a staged Prepare, an interrupted Remove, an id whose
    // transaction never committed.
    for o in ["new-1-2-3/fs", "rm-99/fs/f", "12345/fs"] {
        fs::create_dir_all(d.root.join("snapshots").join(o)).unwrap();
    }
    d.spawn();
    let after = {
        let mut l = d.list(&[]).unwrap();
        l.sort_by(|a, b| a.name.cmp(&b.name));
        l
    };
    assert_eq!(after, before, "every record, label and timestamp kept");
    assert_eq!(d.snapshot_dirs(), dirs, "the orphans went at start-up");
    assert_code(d.remove("c1"), Code::FailedPrecondition);
    assert_code(d.prepare("c2", "", opt()), Code::AlreadyExists);
    if require_root("snapshot_conformance::persistence_across_a_crash (view)") {
        let m = d.view("check", "c1", opt()).unwrap();
        let mnt = Mounted::new(&m, &d.work().join("check"), true);
        assert_eq!(
            fs::read(mnt.path().join("kept")).unwrap(),
            b"across restarts"
        );
    }
    // And it goes on: the ids of new snapshots are new.
    d.prepare("c3-a", "c2", opt()).unwrap();
    d.commit("c3", "c3-a", opt()).unwrap();
    d.stop();
    d.spawn();
    assert_eq!(d.stat("c3").unwrap().parent, "c2");
}

#[test]
fn cleanup_rpc_takes_only_orphans() {
    let d = Daemon::start();
    d.prepare("a", "", opt()).unwrap();
    d.commit("c", "a", opt()).unwrap();
    d.prepare("b", "c", opt()).unwrap();
    let live = d.snapshot_dirs();
    for o in ["new-x/fs", "rm-3/fs", "777"] {
        fs::create_dir_all(d.root.join("snapshots").join(o)).unwrap();
    }
    d.cleanup().unwrap();
    assert_eq!(d.snapshot_dirs(), live);
    d.stat("b").unwrap();
}

#[test]
fn cleanup_racing_prepares_over_grpc() {
    // containerd's GC calls Cleanup while clients Prepare, Commit and Remove.
    let d = Daemon::start();
    d.prepare("base-a", "", opt()).unwrap();
    d.commit("base", "base-a", opt()).unwrap();
    let c = d.c();
    let root = d.root.clone();
    d.rt.block_on(async move {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cleaner = {
            let (mut c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    c.cleanup(pb::CleanupRequest::default()).await.unwrap();
                    n += 1;
                }
                n
            })
        };
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let mut c = c.clone();
                let root = root.clone();
                tokio::spawn(async move {
                    for i in 0..40 {
                        let (key, name) = (format!("w{w}-a{i}"), format!("w{w}-c{i}"));
                        let m = c
                            .prepare(pb::PrepareSnapshotRequest {
                                key: key.clone(),
                                parent: "base".into(),
                                ..Default::default()
                            })
                            .await
                            .unwrap()
                            .into_inner()
                            .mounts;
                        let up = kitsnap_node::mount::writable_dir(&m).unwrap();
                        assert!(up.starts_with(&root));
                        tokio::fs::write(up.join("f"), format!("{w}/{i}"))
                            .await
                            .unwrap_or_else(|e| panic!("{key} lost its directory: {e}"));
                        c.commit(pb::CommitSnapshotRequest {
                            name: name.clone(),
                            key,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                        if i % 2 == 0 {
                            c.remove(pb::RemoveSnapshotRequest {
                                key: name,
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let n = cleaner.await.unwrap();
        assert!(n > 0);
    });
    d.cleanup().unwrap();
    let names = d.names(&[]);
    assert_eq!(names.len(), 1 + 4 * 20);
    assert_eq!(d.snapshot_dirs().len(), names.len());
    // Each committed layer kept what was written into it.
    let m = d.prepare("probe", "w3-c39", opt()).unwrap();
    let lower = m[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        fs::read_to_string(Path::new(&lower).join("f")).unwrap(),
        "3/39"
    );
}
