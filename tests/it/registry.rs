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
    /// Like `run_in`, with more environment variables.
    fn run_env(&self, store: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(bin())
            .env("KITSNAP_STORE", self.p(store))
            .env("DOCKER_CONFIG", self.p("docker"))
            .env("KITSNAP_HOSTS_DIR", self.p("hosts"))
            .env_remove("KITSNAP_LOG")
            .env_remove("KITSNAP_DEBUG")
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap()
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

/// `kitsnap pack SRC -t R --push --plain-http EXTRA...` with no usable local store.
fn pack_push(c: &Ctx, src: &Path, r: &str, extra: &[&str]) -> std::process::Output {
    Command::new(bin())
        .env("KITSNAP_STORE", c.p("unused"))
        .args([
            "pack",
            src.to_str().unwrap(),
            "-t",
            r,
            "--push",
            "--plain-http",
        ])
        .args(extra)
        .output()
        .unwrap()
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
        let o = pack_push(&c, &src, &r, &[]);
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
    let o = pack_push(&c, &src, &r, &["--retries", "1"]);
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

/// After its first chunk a layer streams up in PATCHes of unknown length, which cannot be
/// replayed: when one fails, `pack --push` produces the layer again from its files into a
/// new upload, and when one is refused it falls back to one PUT per layer; either way the
/// result is the ModelKit `pack` makes.
#[test]
fn pack_push_sends_a_broken_layer_again() {
    require_registry!();
    let c = Ctx::new();
    let src = c.p("src");
    big_tree(&src);
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let d = c.pack(&format!("{}/again/local:v1", reg.addr()), &[]);
    let proxy = start_proxy(&reg.addr(), Faults::default());
    proxy.faults.streamed_patch_500s.store(1, Ordering::SeqCst);
    let r = format!("{}/again/streamed:v1", proxy.addr());
    let o = pack_push(&c, &src, &r, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d);
    assert_eq!(proxy.faults.streamed_patch_500s.load(Ordering::SeqCst), 0);
    assert_eq!(proxy.faults.streamed_patches.load(Ordering::SeqCst), 2);
    assert!(
        err.contains("the streamed upload broke at byte") && err.contains("again from its start"),
        "{err}"
    );
    assert_eq!(c.ok("s2", &["pull", &r, "--plain-http"]), d);

    // A front end that refuses a streamed PATCH (411 Length Required) but takes ranged
    // chunks: the layers go up as one PUT each, as for a registry refusing chunks.
    let proxy = start_proxy(&reg.addr(), Faults::default());
    proxy
        .faults
        .refuse_streamed_patch
        .store(411, Ordering::SeqCst);
    let r = format!("{}/again/refused:v1", proxy.addr());
    let o = pack_push(&c, &src, &r, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d);
    assert!(err.contains("refuses chunked uploads"), "{err}");
    assert!(proxy.faults.puts_with_body.load(Ordering::SeqCst) >= 1);
    assert_eq!(c.ok("s3", &["pull", &r, "--plain-http"]), d);
}

/// An upload has no time limit, only a stall watch: a registry that stops taking a blob's
/// bytes is given up on after `--stall-timeout` and the upload resumed from what the
/// registry holds (`push`) or produced again (`pack --push`), with the ModelKit `pack`
/// makes either way.
#[test]
fn stalled_uploads_are_resumed() {
    require_registry!();
    let c = Ctx::new();
    let src = c.p("src");
    demo_tree(&src);
    // Over 64 MiB, so that `push` streams it rather than PUT it whole.
    fs::write(src.join("models/weights.safetensors"), bytes(80 << 20, 5)).unwrap();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let proxy = start_proxy(&reg.addr(), Faults::default());
    let f = &proxy.faults;
    let r = format!("{}/stall/pushed:v1", proxy.addr());
    let d = c.pack(&r, &[]);
    f.stall_uploads.store(1, Ordering::SeqCst);
    let o = c.run_env(
        "s1",
        &["push", &r, "--plain-http"],
        &[("KITSNAP_STALL_TIMEOUT", "2")],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d);
    assert_eq!(
        f.uploads_stalled.load(Ordering::SeqCst),
        1,
        "the fault was hit"
    );
    assert!(
        err.contains("the registry took no bytes of the upload"),
        "{err}"
    );
    assert_eq!(c.ok("s2", &["pull", &r, "--plain-http"]), d);

    let r = format!("{}/stall/streamed:v1", proxy.addr());
    f.stall_uploads.store(1, Ordering::SeqCst);
    // The flag this time (the variable above).
    let o = pack_push(&c, &src, &r, &["--stall-timeout", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d);
    assert_eq!(f.uploads_stalled.load(Ordering::SeqCst), 2);
    assert!(err.contains("the streamed upload broke at byte"), "{err}");
    assert_eq!(c.ok("s3", &["pull", &r, "--plain-http"]), d);
}

/// A minimal HTTP forward proxy (absolute-form requests; no CONNECT), counting the
/// requests it forwards. Bodies are buffered: the test kits are small.
struct ForwardProxy {
    port: u16,
    forwarded: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

fn start_forward_proxy() -> ForwardProxy {
    use http_body_util::{BodyExt, Full};
    type Resp = hyper::Response<Full<bytes::Bytes>>;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = forwarded.clone();
    rt.spawn(async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (seen, client) = (seen.clone(), client.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, client) = (seen.clone(), client.clone());
                        async move {
                            let status = |code: u16, msg: String| -> Resp {
                                hyper::Response::builder()
                                    .status(code)
                                    .body(Full::new(msg.into()))
                                    .unwrap()
                            };
                            // A request sent to a proxy names the whole URL; one that does not
                            // was meant for the registry itself.
                            if req.uri().scheme().is_none() {
                                return Ok::<_, std::convert::Infallible>(status(
                                    400,
                                    "not a proxy request".into(),
                                ));
                            }
                            seen.fetch_add(1, Ordering::SeqCst);
                            let mut up =
                                client.request(req.method().clone(), req.uri().to_string());
                            for (k, v) in req.headers() {
                                if k != "host" && k != "proxy-connection" {
                                    up = up.header(k, v);
                                }
                            }
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let resp = match up.body(body).send().await {
                                Ok(r) => r,
                                Err(e) => return Ok(status(502, e.to_string())),
                            };
                            let mut out = hyper::Response::builder().status(resp.status().as_u16());
                            for (k, v) in resp.headers() {
                                if k != "transfer-encoding" && k != "connection" {
                                    out = out.header(k, v);
                                }
                            }
                            let body = resp.bytes().await.unwrap_or_default();
                            Ok(out.body(Full::new(body)).unwrap())
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    ForwardProxy {
        port,
        forwarded,
        _rt: rt,
    }
}

/// kit's network flags: `--proxy` (over the environment's proxies), `--tls-verify` as a
/// plain flag, `--concurrency`.
#[test]
fn proxy_tls_verify_and_concurrency_flags_as_kit() {
    require_registry!();
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let proxy = start_forward_proxy();
    let via = format!("http://127.0.0.1:{}", proxy.port);
    let r = format!("{}/prox/m:v1", reg.addr());
    let d = c.pack(&r, &[]);

    // `--tls-verify` alone is kit's form (true); `--concurrency N` bounds the transfers.
    assert_eq!(
        c.ok(
            "s1",
            &[
                "push",
                &r,
                "--tls-verify",
                "--plain-http",
                "--proxy",
                &via,
                "--concurrency",
                "2"
            ]
        ),
        d
    );
    let pushed = proxy.forwarded.load(Ordering::SeqCst);
    assert!(
        pushed > 8,
        "the push went through the proxy ({pushed} requests)"
    );

    // --proxy wins over the environment's proxies (which point nowhere here).
    let dead = format!("http://127.0.0.1:{}", free_port());
    let env = [
        ("HTTP_PROXY", dead.as_str()),
        ("http_proxy", dead.as_str()),
        ("ALL_PROXY", dead.as_str()),
    ];
    let o = c.run_env(
        "s2",
        &[
            "pull",
            &r,
            "--plain-http",
            "--proxy",
            &via,
            "--tls-verify=true",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d);
    assert!(
        proxy.forwarded.load(Ordering::SeqCst) > pushed,
        "the pull too"
    );

    // A proxy that is not there fails the pull: the connections really go to it.
    let e = c.fails(
        "s3",
        &[
            "pull",
            &r,
            "--plain-http",
            "--proxy",
            &dead,
            "--retries",
            "0",
        ],
    );
    assert!(e.contains("error"), "{e}");
    let e = c.fails(
        "s3",
        &["pull", &r, "--plain-http", "--proxy", "http://[bad"],
    );
    assert!(e.contains("proxy"), "{e}");
    let e = c.fails("s3", &["pull", &r, "--plain-http", "--concurrency", "0"]);
    assert!(e.contains("--concurrency"), "{e}");
}

/// Makes a client certificate signed by the test CA in `dir` (see `make_tls`).
fn make_client_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let sh = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    sh(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=kitsnap test client",
    ]);
    fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    sh(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.crt",
        "-days",
        "2",
        "-extfile",
        "client.ext",
    ]);
    (dir.join("client.crt"), dir.join("client.key"))
}

/// A registry that demands a client certificate from `tls.ca` (distribution's
/// `http.tls.clientcas`); killed when dropped.
struct MtlsRegistry {
    port: u16,
    child: std::process::Child,
}

impl Drop for MtlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_mtls_registry(dir: &Path, tls: &Tls) -> MtlsRegistry {
    fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let cfg = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: kitsnap-test\n  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n",
        dir.join("data").display(),
        tls.cert.display(),
        tls.key.display(),
        tls.ca.display()
    );
    fs::write(dir.join("config.yml"), cfg).unwrap();
    let child = Command::new(REGISTRY_BIN)
        .args(["serve", dir.join("config.yml").to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(dir.join("registry.log")).unwrap())
        .spawn()
        .unwrap();
    let reg = MtlsRegistry { port, child };
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "the mTLS registry did not start: {}",
            fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    reg
}

/// `--cert`/`--key` (or KITOPS_CLIENT_CERT/KITOPS_CLIENT_KEY, as kit reads them) present a
/// client certificate to a registry that requires one.
#[test]
fn client_certificates_for_mutual_tls() {
    require_registry!();
    require!(
        have_cmd("openssl"),
        "the openssl CLI (apt-get install openssl)"
    );
    let c = Ctx::new();
    fs::create_dir_all(c.p("tls")).unwrap();
    let tls = make_tls(&c.p("tls"));
    let (cert, key) = make_client_cert(&c.p("tls"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let reg = start_mtls_registry(&c.p("reg"), &tls);
    let r = format!("127.0.0.1:{}/mtls/m:v1", reg.port);
    let ca = tls.ca.to_str().unwrap();
    let d = c.pack(&r, &[]);

    let e = c.fails("s1", &["push", &r, "--ca-file", ca, "--retries", "0"]);
    assert!(
        e.starts_with("error: pushing"),
        "no certificate, no entry: {e}"
    );
    assert_eq!(
        c.ok(
            "s1",
            &["push", &r, "--ca-file", ca, "--cert", cert, "--key", key]
        ),
        d
    );
    let env = [("KITOPS_CLIENT_CERT", cert), ("KITOPS_CLIENT_KEY", key)];
    let o = c.run_env("s2", &["pull", &r, "--ca-file", ca], &env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d);
    let o = c.run_env("s2", &["inspect", "-r", &r, "--ca-file", ca], &env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Half a client certificate is a mistake, said before anything is sent.
    let e = c.fails("s3", &["pull", &r, "--cert", cert]);
    assert!(e.contains("--key"), "{e}");
    let e = c.fails("s3", &["pull", &r, "--cert", ca, "--key", ca]);
    assert!(e.contains("client certificate"), "{e}");
}

/// `info --remote` and `--filter`, `list REGISTRY/REPO`, `remove --remote`: kit's verbs
/// against a registry, with kit's table, messages and errors.
#[test]
fn remote_info_list_and_remove_as_kit() {
    require_registry!();
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let repo = format!("{}/org/demo", reg.addr());
    let (v1, v2) = (format!("{repo}:v1"), format!("{repo}:v2"));
    let d = c.pack(&v1, &[]);
    c.ok("s1", &["tag", &v1, &v2]);
    c.ok("s1", &["push", &v1, "--plain-http"]);
    c.ok("s1", &["push", &v2, "--plain-http"]);
    // Not a ModelKit: left out of the listing.
    push_plain_image(&reg.addr(), "org/demo", "not-a-kit");

    // info --remote prints what info prints for the local copy; nothing is pulled.
    let local = c.ok("s1", &["info", &v1]);
    assert_eq!(c.ok("s2", &["info", "-r", &v1, "--plain-http"]), local);
    assert_eq!(
        c.ok("s2", &["list", "-q"]),
        "",
        "info --remote pulled nothing"
    );
    let name = c.ok(
        "s2",
        &[
            "info",
            "--remote",
            &v1,
            "--plain-http",
            "-f",
            ".package.name",
        ],
    );
    assert_eq!(name, c.ok("s1", &["info", &v1, "--filter", "package.name"]));
    assert!(!name.is_empty() && !name.contains(':'), "{name}");
    let e = c.fails("s2", &["info", &v1, "-f", "model[0]"]);
    assert!(e.contains("array access"), "{e}");
    let e = c.fails("s2", &["info", "-r", "demo:v1"]);
    assert!(e.contains("not a registry"), "{e}");

    // list REPO: one line per tag, REPOSITORY without the registry, as kit prints it.
    let table = c.ok("s2", &["list", &repo, "--plain-http"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("REPOSITORY") && lines[0].ends_with("DIGEST"),
        "{table}"
    );
    let mut tags = Vec::new();
    for line in &lines[1..] {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], "org/demo", "{table}");
        tags.push(cols[1]);
        assert_eq!(cols.last().copied(), Some(d.as_str()), "{table}");
    }
    tags.sort();
    assert_eq!(tags, ["v1", "v2"], "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&c.ok("s2", &["list", &repo, "--plain-http", "--format", "json"]))
            .unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{json}");
    assert!(
        rows.iter()
            .all(|r| r["repo"] == "org/demo" && r["tags"].as_array().map(Vec::len) == Some(1))
    );
    let one = c.ok("s2", &["list", &v2, "--plain-http", "-q"]);
    assert_eq!(one, d);

    // remove --remote deletes the manifest by digest: both tags go.
    let o = c.run_in("s2", &["remove", "-r", &v1, "--plain-http"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&d));
    let e = c.fails("s2", &["info", "-r", &v2, "--plain-http"]);
    assert!(e.contains("404"), "{e}");
    let e = c.fails("s2", &["remove", "--remote", &v1, "--plain-http"]);
    assert!(e.contains(&format!("model {v1} not found")), "{e}");
    let e = c.fails("s2", &["remove", "--remote", "--all"]);
    assert!(e.contains("cannot be used"), "{e}");
    // The local store is untouched.
    assert!(c.ok("s1", &["list", "-q"]).contains(&d));
}

/// Pushes a minimal OCI image (config `{}`, no layers) as REPO:TAG.
fn push_plain_image(addr: &str, repo: &str, tag: &str) {
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let config = b"{}".to_vec();
    let digest = format!("sha256:{}", sha256_hex(&config));
    let up = http
        .post(format!("http://{addr}/v2/{repo}/blobs/uploads/"))
        .send()
        .unwrap();
    let loc = up.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with('/') {
        format!("http://{addr}{loc}")
    } else {
        loc
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let put = http
        .put(format!("{loc}{sep}digest={digest}"))
        .body(config.clone())
        .send()
        .unwrap();
    assert!(put.status().is_success(), "{:?}", put.status());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": config.len()},
        "layers": []
    });
    let put = http
        .put(format!("http://{addr}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_string())
        .send()
        .unwrap();
    assert!(put.status().is_success(), "{:?}", put.status());
}

/// A registry that refuses deletes (distribution's default) gets kit's message.
#[test]
fn remove_remote_where_the_registry_refuses_deletes() {
    require_registry!();
    let c = Ctx::new();
    let dir = c.p("reg");
    fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    fs::write(
        dir.join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(REGISTRY_BIN)
        .args(["serve", dir.join("config.yml").to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _reg = MtlsRegistry { port, child };
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < std::time::Duration::from_secs(15));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let r = format!("127.0.0.1:{port}/nodel/m:v1");
    c.pack(&r, &[]);
    c.ok("s1", &["push", &r, "--plain-http"]);
    let e = c.fails("s1", &["remove", "-r", &r, "--plain-http"]);
    assert!(
        e.contains(&format!(
            "removing models is unsupported by registry 127.0.0.1:{port}"
        )),
        "{e}"
    );
}

/// kit's global flags, before or after the verb: --config DIR (the store is DIR/storage),
/// --log-level and -v (diagnostics), --progress.
#[test]
fn global_flags_as_kit() {
    require_registry!();
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let proxy = start_proxy(&reg.addr(), Faults::default());
    let r = format!("{}/glob/m:v1", proxy.addr());
    let d = c.pack(&r, &[]);
    c.ok("s1", &["push", &r, "--plain-http"]);

    let home = c.p("kit-config");
    let home = home.to_str().unwrap();
    let pull = |store: &str, args: &[&str]| {
        proxy.faults.blob_get_500s.store(1, Ordering::SeqCst);
        let o = c.run_env(store, args, &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d);
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // A retry is a warning: shown by default and with -v, not at --log-level error.
    let quiet = pull(
        "s2",
        &[
            "--config",
            home,
            "--log-level",
            "error",
            "--progress",
            "none",
            "pull",
            &r,
            "--plain-http",
        ],
    );
    assert!(!quiet.contains("retrying"), "{quiet}");
    assert!(
        Path::new(home).join("storage/index.json").is_file(),
        "--config DIR keeps the store in DIR/storage"
    );
    let loud = pull(
        "s3",
        &[
            "pull",
            &r,
            "--plain-http",
            "-v",
            "--progress=plain",
            "--retries",
            "3",
        ],
    );
    assert!(loud.contains("retrying"), "{loud}");
    let listed = c.ok("elsewhere", &["list", "-q", "--config", home]);
    assert_eq!(
        listed, d,
        "the store under --config, whatever KITSNAP_STORE says"
    );

    let e = c.fails("s2", &["--log-level", "loud", "list"]);
    assert!(e.contains("invalid log level 'loud'"), "{e}");
    let e = c.fails("s2", &["list", "--progress", "sparkly"]);
    assert!(e.contains("none, plain, fancy"), "{e}");
}

/// Parent ModelKits as kit reads and fetches them: `model.path` naming a ModelKit (kit's
/// rule: a `:` or `@` and a reference that parses, registry `localhost` by default) is
/// pulled with its child, and fetched from its registry by `unpack` when the store lacks
/// it; `demo:v1` (no registry) comes from the store only, and its absence is an error.
#[test]
fn parent_modelkits_are_pulled_and_unpacked_as_kit_does() {
    require_registry!();
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("registry"), None, None);
    let base = format!("{}/org/base:v1", reg.addr());
    c.pack(&base, &[]);
    c.ok("s1", &["push", &base, "--plain-http"]);
    let child_src = c.p("child");
    fs::create_dir_all(child_src.join("src")).unwrap();
    fs::write(child_src.join("src/finetune.py"), b"train()\n").unwrap();
    fs::write(
        child_src.join("Kitfile"),
        format!("manifestVersion: 1.0.0\nmodel:\n  path: {base}\ncode:\n  - path: src\n"),
    )
    .unwrap();
    let child = format!("{}/org/child:v1", reg.addr());
    c.ok("s1", &["pack", child_src.to_str().unwrap(), "-t", &child]);
    c.ok("s1", &["push", &child, "--plain-http"]);
    let weights = fs::read(c.p("src/models/weights.safetensors")).unwrap();

    // pull brings the parent too.
    let o = c.run_in("s2", &["pull", &child, "--plain-http"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{base}: pulled (parent ModelKit)")),
        "{err}"
    );
    let out = c.p("out2");
    c.ok("s2", &["unpack", &child, "-d", out.to_str().unwrap()]);
    assert_eq!(
        fs::read(out.join("models/weights.safetensors")).unwrap(),
        weights
    );
    assert_eq!(fs::read(out.join("src/finetune.py")).unwrap(), b"train()\n");

    // unpack of the child from the registry, into a store without either.
    let out = c.p("out3");
    c.ok(
        "s3",
        &[
            "unpack",
            &child,
            "-d",
            out.to_str().unwrap(),
            "--plain-http",
        ],
    );
    assert_eq!(
        fs::read(out.join("models/weights.safetensors")).unwrap(),
        weights
    );

    // kit's short form: `demo:v1` is localhost/demo:v1, from the store.
    c.pack("demo:v1", &[]);
    fs::write(
        child_src.join("Kitfile"),
        "manifestVersion: 1.0.0\nmodel:\n  path: demo:v1\ncode:\n  - path: src\n",
    )
    .unwrap();
    c.ok(
        "s1",
        &["pack", child_src.to_str().unwrap(), "-t", "child2:v1"],
    );
    let out = c.p("out4");
    c.ok("s1", &["unpack", "child2:v1", "-d", out.to_str().unwrap()]);
    assert_eq!(
        fs::read(out.join("models/weights.safetensors")).unwrap(),
        weights
    );
    c.ok("s1", &["remove", "demo:v1"]);
    let e = c.fails(
        "s1",
        &["unpack", "child2:v1", "-d", c.p("out5").to_str().unwrap()],
    );
    assert!(
        e.contains("parent ModelKit localhost/demo:v1") && e.contains("pack or pull it first"),
        "{e}"
    );
}

/// `kitsnap push` publishes the kit's lazy index as a referrer (the distribution spec's
/// `sha256-<hex>` fallback tag on a registry without the referrers API), leaves the kit's
/// own manifest as it was, lists only the kit under its repository, and treats a registry
/// that refuses the referrer as a warning: the push itself succeeded. `--no-lazy-index`
/// publishes nothing.
#[test]
fn push_publishes_a_lazy_index_and_a_refused_one_is_a_warning() {
    require_registry!();
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let proxy = start_proxy(&reg.addr(), Faults::default());
    let referrers = |repo: &str, digest: &str| {
        reqwest::blocking::Client::new()
            .get(format!(
                "http://{}/v2/{repo}/manifests/{}",
                reg.addr(),
                digest.replace(':', "-")
            ))
            .header("accept", "application/vnd.oci.image.index.v1+json")
            .send()
            .unwrap()
    };

    let r = format!("{}/lazy/m:v1", reg.addr());
    let d = c.pack(&r, &[]);
    let o = c.run_in("s1", &["push", &r, "--plain-http"], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        d,
        "the kit's digest is unchanged"
    );
    assert!(err.contains("lazy index sha256:"), "{err}");
    let list: serde_json::Value = referrers("lazy/m", &d).json().unwrap();
    let entry = &list["manifests"][0];
    assert_eq!(
        entry["artifactType"], "application/vnd.kitsnap.lazy.index.v1+json",
        "{list}"
    );
    let m: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!(
            "http://{}/v2/lazy/m/manifests/{}",
            reg.addr(),
            entry["digest"].as_str().unwrap()
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(m["subject"]["digest"], d.as_str(), "{m}");
    let listed = c.ok(
        "s2",
        &["list", &format!("{}/lazy/m", reg.addr()), "--plain-http"],
    );
    assert_eq!(
        listed.lines().count(),
        2,
        "the header and the kit, not the referrer tag: {listed}"
    );

    // A registry that refuses the fallback tag: the kit is pushed, the index is not.
    proxy
        .faults
        .refuse_referrer_tags
        .store(true, Ordering::SeqCst);
    let r2 = format!("{}/lazy/refused:v1", proxy.addr());
    let d2 = c.pack(&r2, &[]);
    let o = c.run_in("s1", &["push", &r2, "--plain-http"], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d2);
    assert!(
        err.contains("warning:") && err.contains("lazy index not published"),
        "{err}"
    );

    let r3 = format!("{}/lazy/none:v1", reg.addr());
    let d3 = c.pack(&r3, &[]);
    let err = String::from_utf8_lossy(
        &c.run_in(
            "s1",
            &["push", &r3, "--plain-http", "--no-lazy-index"],
            None,
        )
        .stderr,
    )
    .into_owned();
    assert!(!err.contains("lazy index"), "{err}");
    assert_eq!(referrers("lazy/none", &d3).status(), 404);
    // A kit pushed without one (by another tool, or `pack --push`) gets its index from a
    // pull and a push again: the blobs are there already, only the index goes up.
    c.ok("s3", &["pull", &r3, "--plain-http"]);
    let o = c.run_in("s3", &["push", &r3, "--plain-http"], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains(": pushed 0 blobs"),
        "{err}"
    );
    assert!(err.contains("lazy index sha256:"), "{err}");
    assert_eq!(referrers("lazy/none", &d3).status(), 200);
}
