//! Registry transport against a real registry (CNCF distribution), with TLS, basic and
//! bearer auth, injected faults, mirrors, and skopeo / oras as independent clients.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;

use crate::support::registry::*;
use crate::support::*;

/// A private store, Docker config and (empty) hosts dir for one test.
struct Ctx {
    t: tempfile::TempDir,
}

impl Ctx {
    fn new() -> Ctx {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("hosts")).unwrap();
        Ctx { t }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.t.path().join(s)
    }
    fn run_in(&self, store: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = Command::new(bin());
        c.env("KITSNAP_STORE", self.p(store))
            .env("DOCKER_CONFIG", self.p("docker"))
            .env("KITSNAP_HOSTS_DIR", self.p("hosts"))
            .args(args);
        match stdin {
            Some(s) => {
                use std::io::Write;
                let mut child = c
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
                child.wait_with_output().unwrap()
            }
            None => c.output().unwrap(),
        }
    }
    fn ok(&self, store: &str, args: &[&str]) -> String {
        let o = self.run_in(store, args, None);
        assert!(
            o.status.success(),
            "kitsnap {args:?}:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
    fn fails(&self, store: &str, args: &[&str]) -> String {
        let o = self.run_in(store, args, None);
        assert!(
            !o.status.success(),
            "kitsnap {args:?} unexpectedly succeeded"
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
    /// Packs the demo tree into store `s1` as `tag`.
    fn pack(&self, tag: &str, extra: &[&str]) -> String {
        let src = self.p("src");
        if !src.exists() {
            demo_tree(&src);
        }
        let mut args = vec!["pack", src.to_str().unwrap(), "-t", tag];
        args.extend_from_slice(extra);
        self.ok("s1", &args)
    }
    fn expected_files(&self) -> Vec<(String, Vec<u8>)> {
        let mut f = files(&self.p("src"));
        f.retain(|(p, _)| p != "scratch.log" && p != ".kitignore" && p != "Kitfile");
        f
    }
}

fn unpacked_without_kitfile(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut f = files(dir);
    f.retain(|(p, _)| p != "Kitfile");
    f
}

#[test]
fn push_pull_round_trips_for_both_formats_and_all_compressions() {
    require_registry!();
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let mut n = 0;
    for mp in [false, true] {
        for comp in ["none", "gzip", "zstd"] {
            n += 1;
            let r = format!("{}/rt/m{n}:v1", reg.addr());
            let mut extra = vec!["--compression", comp];
            if mp {
                extra.push("--use-model-pack");
            }
            let d = c.pack(&r, &extra);
            assert_eq!(c.ok("s1", &["push", &r, "--plain-http"]), d);
            let remote = c.ok("s2", &["inspect", "--remote", &r, "--plain-http"]);
            assert!(remote.contains("layers"));
            assert_eq!(
                c.ok("s2", &["pull", &r, "--plain-http"]),
                d,
                "same digest after a round trip"
            );
            let out = c.p(&format!("out{n}"));
            c.ok("s2", &["unpack", &r, "-d", out.to_str().unwrap()]);
            assert_eq!(
                unpacked_without_kitfile(&out),
                c.expected_files(),
                "{comp} mp={mp}"
            );
        }
    }
    // A second pull downloads nothing.
    let r = format!("{}/rt/m1:v1", reg.addr());
    let o = c.run_in("s2", &["pull", &r, "--plain-http"], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(": pulled 0 blobs, 0 B in "), "{err}");
    // Not a terminal: no bars, no control characters.
    assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
}

#[test]
fn pull_by_digest_and_cross_repository_mount() {
    require_registry!();
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let a = format!("{}/team/a:v1", reg.addr());
    let b = format!("{}/team/b:v1", reg.addr());
    let d = c.pack(&a, &[]);
    c.ok("s1", &["push", &a, "--plain-http"]);
    c.ok("s1", &["tag", &a, &b]);
    let o = c.run_in("s1", &["push", &b, "--plain-http"], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(": pushed 0 blobs, 0 B in ") && err.contains("; 8 already there"),
        "every blob mounted from team/a: {err}"
    );
    let by_digest = format!("{}/team/b@{d}", reg.addr());
    assert_eq!(c.ok("s3", &["pull", &by_digest, "--plain-http"]), d);
    let list = c.ok("s3", &["list"]);
    assert!(list.contains("<none>") && list.contains(&d), "{list}");
}

#[test]
fn basic_auth_over_tls_with_login_and_logout() {
    require_registry!();
    require!(
        have_cmd("openssl"),
        "the openssl CLI (apt-get install openssl)"
    );
    let c = Ctx::new();
    fs::create_dir_all(c.p("tls")).unwrap();
    let tls = make_tls(&c.p("tls"));
    let reg = RegistryProc::start(&c.p("reg"), Some(&tls), Some(("alice", "s3cret")));
    let r = format!("{}/secure/m:v1", reg.addr());
    let ca = tls.ca.to_str().unwrap();
    let d = c.pack(&r, &["--compression", "gzip"]);

    let e = c.fails("s1", &["push", &r, "--ca-file", ca]);
    assert!(e.contains("authentication required"), "{e}");
    let o = c.run_in(
        "s1",
        &[
            "login",
            &reg.addr(),
            "-u",
            "alice",
            "--password-stdin",
            "--ca-file",
            ca,
        ],
        Some("wrong\n"),
    );
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("refused the credentials"), "{e}");
    assert!(
        !e.contains("run `kitsnap login"),
        "no advice to do what was just done: {e}"
    );
    let o = c.run_in(
        "s1",
        &[
            "login",
            &reg.addr(),
            "-u",
            "alice",
            "--password-stdin",
            "--ca-file",
            ca,
        ],
        Some("s3cret\n"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = c.p("docker/config.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(fs::read_to_string(&cfg).unwrap().contains(&reg.addr()));

    // Untrusted certificate: refused unless the CA is given or verification is off.
    let e = c.fails("s1", &["push", &r]);
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    assert_eq!(c.ok("s1", &["push", &r, "--ca-file", ca]), d);
    assert_eq!(c.ok("s2", &["pull", &r, "--tls-verify=false"]), d);
    let out = c.p("out");
    c.ok("s2", &["unpack", &r, "-d", out.to_str().unwrap()]);
    assert_eq!(unpacked_without_kitfile(&out), c.expected_files());

    c.ok("s1", &["logout", &reg.addr()]);
    assert!(!fs::read_to_string(&cfg).unwrap().contains(&reg.addr()));
    let e = c.fails("s3", &["pull", &r, "--ca-file", ca]);
    assert!(e.contains("authentication required"), "{e}");
}

#[test]
fn bearer_token_flow() {
    require_registry!();
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let proxy = start_proxy(
        &reg.addr(),
        Faults {
            bearer: Some(("bob".into(), "pw".into())),
            ..Default::default()
        },
    );
    let r = format!("{}/tok/m:v1", proxy.addr());
    let d = c.pack(&r, &[]);
    let e = c.fails("s1", &["push", &r, "--plain-http"]);
    assert!(e.contains("authentication required"), "{e}");
    let o = c.run_in(
        "s1",
        &[
            "login",
            &proxy.addr(),
            "-u",
            "bob",
            "--password-stdin",
            "--plain-http",
        ],
        Some("pw\n"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(c.ok("s1", &["push", &r, "--plain-http"]), d);
    assert_eq!(c.ok("s2", &["pull", &r, "--plain-http"]), d);
    assert!(
        proxy.faults.tokens_issued.load(Ordering::SeqCst) >= 2,
        "push and pull scopes"
    );
    assert!(
        proxy.faults.unauthorized.load(Ordering::SeqCst) >= 1,
        "the challenge was answered"
    );
}

#[test]
fn faults_retries_resume_and_clean_failures() {
    require_registry!();
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let proxy = start_proxy(&reg.addr(), Faults::default());
    let f = &proxy.faults;
    // A 3 MB model layer pushed in 1 MiB chunks; the first PATCH fails with a 500.
    let src = c.p("src");
    demo_tree(&src);
    fs::write(src.join("models/weights.safetensors"), bytes(3_000_000, 9)).unwrap();
    let r = format!("{}/faulty/m:v1", proxy.addr());
    let d = c.pack(&r, &[]);
    f.patch_500s.store(1, Ordering::SeqCst);
    assert_eq!(
        c.ok("s1", &["push", &r, "--plain-http", "--chunk-size-mib", "1"]),
        d
    );
    assert_eq!(f.patch_500s.load(Ordering::SeqCst), 0, "the fault was hit");

    // 500s on blob downloads are retried, and KITSNAP_LOG=info says so.
    f.blob_get_500s.store(2, Ordering::SeqCst);
    let o = Command::new(bin())
        .env("KITSNAP_STORE", c.p("s2"))
        .env("DOCKER_CONFIG", c.p("docker"))
        .env("KITSNAP_HOSTS_DIR", c.p("hosts"))
        .env("KITSNAP_LOG", "info")
        .args(["pull", &r, "--plain-http", "--concurrency", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d);
    assert!(
        err.contains("retrying (1/5)") && err.contains("HTTP 500"),
        "{err}"
    );
    assert_eq!(f.blob_get_500s.load(Ordering::SeqCst), 0);

    // A connection cut mid-blob is resumed with a Range request.
    f.cut_blob_after.store(1_000_000, Ordering::SeqCst);
    assert_eq!(
        c.ok("s3", &["pull", &r, "--plain-http", "--concurrency", "1"]),
        d
    );
    assert!(
        f.range_requests.load(Ordering::SeqCst) >= 1,
        "resumed with Range"
    );
    let out = c.p("out3");
    c.ok(
        "s3",
        &[
            "unpack",
            &r,
            "-d",
            out.to_str().unwrap(),
            "--filter",
            "model",
        ],
    );
    assert_eq!(
        fs::read(out.join("models/weights.safetensors")).unwrap(),
        bytes(3_000_000, 9)
    );

    // Corrupted bytes: a clear error, and the store is left as it was.
    c.ok("s4", &["list"]);
    let index_before = fs::read(c.p("s4/index.json")).unwrap();
    f.corrupt_blobs.store(true, Ordering::SeqCst);
    let e = c.fails("s4", &["pull", &r, "--plain-http", "--retries", "1"]);
    assert!(e.contains("does not match its digest"), "{e}");
    f.corrupt_blobs.store(false, Ordering::SeqCst);
    assert_eq!(
        fs::read(c.p("s4/index.json")).unwrap(),
        index_before,
        "no tag added"
    );
    assert_eq!(blob_count(&c.p("s4")), 0, "no corrupt blob stored");
    assert_eq!(
        fs::read_dir(c.p("s4/ingest")).unwrap().count(),
        0,
        "temporary files removed"
    );

    // A manifest over the size limit is refused.
    f.huge_manifest.store(5 << 20, Ordering::SeqCst);
    let e = c.fails("s4", &["pull", &r, "--plain-http"]);
    assert!(e.contains("byte limit"), "{e}");
    f.huge_manifest.store(0, Ordering::SeqCst);

    // Unpack straight from the registry downloads only the layers the filter selects,
    // streams them into their files and stores nothing.
    let before = f.requests.load(Ordering::SeqCst);
    let sent_before = f.blob_bytes_sent.load(Ordering::SeqCst);
    let out = c.p("out5");
    c.ok(
        "s5",
        &[
            "unpack",
            &r,
            "-d",
            out.to_str().unwrap(),
            "--filter",
            "datasets:train",
            "--plain-http",
        ],
    );
    assert_eq!(
        files(&out).into_iter().map(|x| x.0).collect::<Vec<_>>(),
        ["data/train.csv"]
    );
    assert!(
        !c.p("s5").join("blobs").exists() || blob_count(&c.p("s5")) == 0,
        "nothing stored"
    );
    assert!(f.requests.load(Ordering::SeqCst) > before);
    assert!(
        f.blob_bytes_sent.load(Ordering::SeqCst) - sent_before < 100_000,
        "the 3 MB model was not downloaded"
    );
}

#[test]
fn mirror_from_hosts_toml_with_fallback() {
    require_registry!();
    let c = Ctx::new();
    let upstream = RegistryProc::start(&c.p("up"), None, None);
    let mirror = RegistryProc::start(&c.p("mirror"), None, None);
    let up_ref = format!("{}/lib/m:v1", upstream.addr());
    let d = c.pack(&up_ref, &[]);
    c.ok("s1", &["push", &up_ref, "--plain-http"]);
    // The mirror holds the same content (as a pull-through cache would).
    let mirror_ref = format!("{}/lib/m:v1", mirror.addr());
    c.ok("s1", &["push", &up_ref, &mirror_ref, "--plain-http"]);
    let hosts = c.p("hosts").join(upstream.addr());
    fs::create_dir_all(&hosts).unwrap();
    let dead = free_port();
    fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n[host.\"http://127.0.0.1:{dead}\"]\n  capabilities = [\"pull\", \"resolve\"]\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            upstream.addr(),
            mirror.addr()
        ),
    )
    .unwrap();
    // Stop the upstream: the pull must come from the mirror (after the dead one).
    drop(upstream);
    assert_eq!(c.ok("s2", &["pull", &up_ref, "--retries", "0"]), d);
    let out = c.p("out");
    c.ok("s2", &["unpack", &up_ref, "-d", out.to_str().unwrap()]);
    assert_eq!(unpacked_without_kitfile(&out), c.expected_files());
}

#[test]
fn skopeo_reads_what_kitsnap_pushes() {
    require_registry!();
    require!(
        have_cmd("skopeo"),
        "skopeo (apt-get install skopeo; scripts/install-deps.sh does it)"
    );
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let r = format!("{}/interop/sk:v1", reg.addr());
    let d = c.pack(&r, &["--compression", "gzip"]);
    c.ok("s1", &["push", &r, "--plain-http"]);
    let raw = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{r}"),
        ])
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let got = format!("sha256:{}", sha256_hex(&raw.stdout));
    assert_eq!(
        got, d,
        "skopeo sees the manifest kitsnap pushed, byte for byte"
    );
    let oci = c.p("oci");
    let o = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{r}"),
            &format!("oci:{}:v1", oci.display()),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = serde_json::from_str::<serde_json::Value>(&c.ok("s1", &["inspect", &r])).unwrap()["manifest"].clone();
    for l in m["layers"].as_array().unwrap() {
        let dg = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let blob = fs::read(oci.join("blobs/sha256").join(dg)).expect("skopeo copied the layer");
        assert_eq!(sha256_hex(&blob), dg);
    }
    // skopeo can also read kitsnap's local store directly: it is an OCI layout.
    let o = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            &format!("oci:{}:{r}", c.p("s1").display()),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn oras_reads_kitsnap_pushes_and_kitsnap_reads_oras_modelpacks() {
    require_registry!();
    require!(
        have_oras(),
        "the Python oras package (pip install oras; scripts/install-deps.sh does it)"
    );
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let r = format!("{}/interop/or:v1", reg.addr());
    let d = c.pack(&r, &["--compression", "zstd", "--use-model-pack"]);
    c.ok("s1", &["push", &r, "--plain-http"]);
    let script = r#"
import hashlib, json, sys, os
import oras.provider
host, repo, out = sys.argv[1], sys.argv[2], sys.argv[3]
reg = oras.provider.Registry(hostname=host, insecure=True)
container = reg.get_container(f"{host}/{repo}")
resp = reg.do_request(f"http://{host}/v2/{repo}/manifests/v1", "GET",
    headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
print("sha256:" + hashlib.sha256(resp.content).hexdigest())
manifest = json.loads(resp.content)
for l in manifest["layers"] + [manifest["config"]]:
    path = os.path.join(out, l["digest"].replace(":", "_"))
    reg.download_blob(container, l["digest"], path)
    got = "sha256:" + hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert got == l["digest"], (got, l["digest"])
print("blobs ok")
"#;
    fs::write(c.p("pull.py"), script).unwrap();
    fs::create_dir_all(c.p("oras-out")).unwrap();
    let o = Command::new("python3")
        .args([
            c.p("pull.py").to_str().unwrap(),
            &reg.addr(),
            "interop/or",
            c.p("oras-out").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.starts_with(&d),
        "oras computes the same manifest digest: {stdout}"
    );
    assert!(stdout.contains("blobs ok"));

    // oras pushes a ModelPack (model-spec media types); kitsnap pulls and unpacks it.
    let mp = c.p("mp");
    fs::create_dir_all(mp.join("weights")).unwrap();
    fs::write(mp.join("weights/model.bin"), bytes(200_000, 5)).unwrap();
    let tar = Command::new("tar")
        .args(["-cf", "weights.tar", "weights"])
        .current_dir(&mp)
        .output()
        .unwrap();
    assert!(tar.status.success());
    fs::write(mp.join("config.json"), r#"{"descriptor":{"name":"from-oras"},"modelfs":{"type":"layers","diffIds":[]},"config":{"format":"bin"}}"#).unwrap();
    let push = format!(
        r#"
import oras.client, os
os.chdir({dir:?})
c = oras.client.OrasClient(hostname="{host}", insecure=True)
c.push(target="{host}/interop/from-oras:v1",
       files=["weights.tar:application/vnd.cncf.model.weight.v1.tar"],
       manifest_config="config.json:application/vnd.cncf.model.config.v1+json",
       disable_path_validation=True)
"#,
        dir = mp.display().to_string(),
        host = reg.addr()
    );
    let o = Command::new("python3")
        .args(["-c", &push])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "oras push: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let fr = format!("{}/interop/from-oras:v1", reg.addr());
    c.ok("s2", &["pull", &fr, "--plain-http"]);
    let out = c.p("out");
    c.ok("s2", &["unpack", &fr, "-d", out.to_str().unwrap()]);
    assert_eq!(
        fs::read(out.join("weights/model.bin")).unwrap(),
        bytes(200_000, 5)
    );
}

/// In a real terminal (tmux, 100 and 64 columns) a multi-layer push draws one bar per
/// blob, labelled with the layer's type and path, each ending full with its outcome, then
/// one summary line; no stale all-zero frame is left above the bars.
#[test]
fn progress_in_a_real_terminal() {
    require_registry!();
    require!(
        crate::support::prereq::have_cmd("tmux"),
        "tmux (apt-get install tmux; scripts/install-deps.sh does it)"
    );
    let c = Ctx::new();
    for (i, width) in [100, 64].into_iter().enumerate() {
        // A registry per width, so that every blob is uploaded (not mounted).
        let reg = RegistryProc::start(&c.p(&format!("reg{i}")), None, None);
        let r = format!("{}/progress/m:v1", reg.addr());
        c.pack(&r, &[]);
        let session = format!("kitsnap-progress-{}-{i}", std::process::id());
        let done = c.p(&format!("done{i}"));
        let cmd = format!(
            "KITSNAP_STORE={} {} push {r} --plain-http; touch {}; sleep 30",
            c.p("s1").display(),
            crate::support::bin().display(),
            done.display()
        );
        let tmux = |args: &[&str]| {
            Command::new("tmux")
                .args(["-L", &session])
                .args(args)
                .output()
                .unwrap()
        };
        let w = width.to_string();
        let o = tmux(&[
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            &w,
            "-y",
            "40",
            &cmd,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let start = std::time::Instant::now();
        while !done.exists() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "push hangs"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        // -J joins the rows a long line wrapped onto.
        let screen =
            String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-J", "-t", &session]).stdout)
                .into_owned();
        tmux(&["kill-server"]);
        let blobs = 8; // demo_tree: 7 layers and the config
        assert_eq!(
            screen.matches("[====================]").count(),
            blobs,
            "{width} cols: one full bar per blob:\n{screen}"
        );
        assert!(
            !screen.contains("[                    ]") && !screen.contains("       0 B/"),
            "{width} cols: a stale empty frame:\n{screen}"
        );
        assert_eq!(
            screen.matches(" pushed").count(),
            blobs + 1,
            "{width} cols:\n{screen}"
        );
        for label in ["model models/", "dataset data/train.csv", "config "] {
            assert!(
                screen.contains(label),
                "{width} cols: a {label:?} bar:\n{screen}"
            );
        }
        assert_eq!(
            screen
                .matches(&format!("{r}: pushed {blobs} blobs, "))
                .count(),
            1,
            "{width} cols: one summary line:\n{screen}"
        );
    }
}

/// The demo tree with 40 MiB more code (five streamed chunks in one layer).
fn big_tree(dir: &Path) {
    demo_tree(dir);
    fs::write(dir.join("src/big.bin"), bytes(40 << 20, 9)).unwrap();
}

/// `pack --push` streams every layer into the registry with no local copy (no store is
/// created), writes the same ModelKit as `pack` + `push` (same manifest digest), keeps
/// memory flat, and what it pushed pulls and unpacks byte for byte.
#[test]
fn pack_push_streams_without_a_local_copy() {
    require_registry!();
    let c = Ctx::new();
    let src = c.p("src");
    big_tree(&src);
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let local = format!("{}/pp/local:v1", reg.addr());
    let d = c.pack(&local, &[]);
    let r = format!("{}/pp/streamed:v1", reg.addr());
    let never = c.p("never-created");
    let (out, rss) = ok_with_peak_rss(
        &never,
        &[
            "pack",
            src.to_str().unwrap(),
            "-t",
            &r,
            "--push",
            "--plain-http",
        ],
    );
    assert_eq!(out.trim(), d, "the same manifest as pack");
    assert!(!never.exists(), "pack --push wrote a local store");
    assert!(rss < 64 << 10, "peak RSS {rss} KiB");
    assert_eq!(c.ok("s3", &["pull", &r, "--plain-http"]), d);
    let o = c.p("out");
    c.ok("s3", &["unpack", &r, "-d", o.to_str().unwrap()]);
    assert_eq!(
        fs::read(o.join("src/big.bin")).unwrap(),
        fs::read(src.join("src/big.bin")).unwrap()
    );
}

/// Registries that refuse chunked uploads (405, or Google Artifact Registry-style 201 on
/// PATCH): `pack --push` hashes each layer first and sends it in one streamed PUT, and
/// `push` of a blob over the chunk size sends it in one PUT; same digests. A registry
/// that fails mid-way leaves nothing tagged.
#[test]
fn uploads_fall_back_when_chunks_are_refused() {
    require_registry!();
    let c = Ctx::new();
    let src = c.p("src");
    big_tree(&src);
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let d = c.pack(&format!("{}/fb/local:v1", reg.addr()), &[]);
    for status in [405u16, 201] {
        let proxy = start_proxy(&reg.addr(), Faults::default());
        proxy.faults.refuse_patch.store(status, Ordering::SeqCst);
        let r = format!("{}/fb/streamed{status}:v1", proxy.addr());
        let o = Command::new(bin())
            .env("KITSNAP_STORE", c.p("unused"))
            .args([
                "pack",
                src.to_str().unwrap(),
                "-t",
                &r,
                "--push",
                "--plain-http",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{status}: {err}");
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d, "{status}");
        assert!(err.contains("refuses chunked uploads"), "{status}: {err}");
        assert!(proxy.faults.patches.load(Ordering::SeqCst) >= 1);
        assert!(
            proxy.faults.puts_with_body.load(Ordering::SeqCst) >= 7,
            "one PUT per layer"
        );
        assert_eq!(c.ok("s2", &["pull", &r, "--plain-http"]), d, "{status}");

        // push of a stored kit whose code layer (40 MiB) is over --chunk-size-mib 8.
        let r2 = format!("{}/fb/pushed{status}:v1", proxy.addr());
        c.ok("s1", &["tag", &format!("{}/fb/local:v1", reg.addr()), &r2]);
        let before = proxy.faults.puts_with_body.load(Ordering::SeqCst);
        assert_eq!(
            c.ok(
                "s1",
                &["push", &r2, "--plain-http", "--chunk-size-mib", "8"]
            ),
            d,
            "{status}"
        );
        assert!(proxy.faults.puts_with_body.load(Ordering::SeqCst) > before);
    }

    // Mid-way failure: every PATCH after the first fails; nothing is tagged.
    let proxy = start_proxy(&reg.addr(), Faults::default());
    proxy.faults.patch_500s.store(1_000_000, Ordering::SeqCst);
    let r = format!("{}/fb/broken:v1", proxy.addr());
    let o = Command::new(bin())
        .env("KITSNAP_STORE", c.p("unused"))
        .args([
            "pack",
            src.to_str().unwrap(),
            "-t",
            &r,
            "--push",
            "--plain-http",
            "--retries",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let head = reqwest::blocking::Client::new()
        .head(format!("http://{}/v2/fb/broken/manifests/v1", reg.addr()))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    assert_eq!(
        head.status().as_u16(),
        404,
        "nothing tagged after a failed pack --push"
    );
}
