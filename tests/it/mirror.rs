//! ModelKits pulled natively by containerd through `kitsnap serve`'s registry mirror, with
//! real components: Debian's docker-registry, containerd 1.6 / 1.7 / 2.x with `ctr` (its
//! own resolver, fetcher and unpacker), runc and busybox containers, skopeo.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;

use crate::support::containerd::*;
use crate::support::registry::{RegistryProc, free_port};
use crate::support::{self, *};

struct Setup {
    _t: tempfile::TempDir,
    dir: std::path::PathBuf,
    reg: RegistryProc,
    hosts: std::path::PathBuf,
    ks: Kitsnap,
    ctd: Containerd,
    mirror: String,
    /// The model's bytes and the references of a gzip and an uncompressed kit.
    model: Vec<u8>,
    gz: String,
    plain: String,
}

fn setup(v: &Version, auth: Option<(&str, &str)>) -> Setup {
    setup_sized(v, auth, 3 << 20)
}

/// [`setup`] with a model of `model_bytes` (one lazy chunk is 4 MiB).
fn setup_sized(v: &Version, auth: Option<(&str, &str)>, model_bytes: usize) -> Setup {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let reg = RegistryProc::start(&dir.join("registry"), None, auth);
    let store = dir.join("store");
    let tree = dir.join("tree");
    let model = support::bytes(model_bytes, 11);
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("model.bin"), &model).unwrap();
    std::fs::write(tree.join("README.md"), b"# the docs\n").unwrap();
    std::fs::write(
        tree.join("Kitfile"),
        "manifestVersion: 1.0.0\npackage: {name: tiny, version: 1.0.0}\nmodel: {path: model.bin}\ndocs: [{path: README.md}]\n",
    )
    .unwrap();
    let gz = format!("{}/kits/gz:v1", reg.addr());
    let plain = format!("{}/kits/plain:v1", reg.addr());
    let t_ = tree.to_str().unwrap();
    support::ok(&store, &["pack", t_, "-t", &gz, "--compression", "gzip"]);
    support::ok(&store, &["pack", t_, "-t", &plain]);
    if let Some((u, p)) = auth {
        let docker = dir.join("docker");
        std::fs::create_dir_all(&docker).unwrap();
        let o = Command::new(support::bin())
            .env("KITSNAP_STORE", &store)
            .env("DOCKER_CONFIG", &docker)
            .args([
                "login",
                &reg.addr(),
                "-u",
                u,
                "--password-stdin",
                "--plain-http",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(p.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for r in [&gz, &plain] {
            let o = Command::new(support::bin())
                .env("KITSNAP_STORE", &store)
                .env("DOCKER_CONFIG", &docker)
                .args(["push", r, "--plain-http"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
    } else {
        for r in [&gz, &plain] {
            support::ok(&store, &["push", r, "--plain-http"]);
        }
    }
    let mirror_addr = format!("127.0.0.1:{}", free_port());
    let mirror = format!("http://{mirror_addr}");
    let hosts = dir.join("certs.d");
    // The documented install step writes containerd's hosts.toml.
    let out = support::ok(
        &store,
        &[
            "hosts",
            "install",
            &reg.addr(),
            "--hosts-dir",
            hosts.to_str().unwrap(),
            "--mirror",
            &mirror,
            "--plain-http",
        ],
    );
    assert!(out.contains(&mirror), "{out}");
    let cfg = dir.join("kitsnap.toml");
    std::fs::write(&cfg, format!("hosts_dir = {:?}\n", hosts.to_str().unwrap())).unwrap();
    let ks = Kitsnap::start_with_args(
        &dir,
        Path::new(""),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--mirror-addr",
            &mirror_addr,
        ],
    );
    let ctd = Containerd::start(v, &dir.join("containerd"), &ks.sock);
    Setup {
        _t: t,
        dir,
        reg,
        hosts,
        ks,
        ctd,
        mirror,
        model,
        gz,
        plain,
    }
}

impl Setup {
    /// Points the mirror's upstream at `proxy` (in front of the registry), pulls the
    /// uncompressed kit through it natively into `ns` and checks that kitsnap served its
    /// layers lazily: the reference through the proxy.
    fn pull_lazily_through(
        &self,
        proxy: &crate::support::registry::Proxy,
        ns: &str,
        ctx: &str,
    ) -> String {
        support::ok(
            &self.dir.join("store"),
            &[
                "hosts",
                "install",
                &proxy.addr(),
                "--hosts-dir",
                self.hosts.to_str().unwrap(),
                "--mirror",
                &self.mirror,
                "--plain-http",
            ],
        );
        let reference = self.plain.replace(&self.reg.addr(), &proxy.addr());
        self.import_busybox(ns);
        let (ok, out) = self.ctr_pull(ns, "kitsnap", &reference, &[]);
        assert!(ok, "{ctx}: {out}");
        assert!(
            self.ks.log().contains("fill: layer served lazily"),
            "{ctx}: {}",
            tail(&self.ks.log())
        );
        reference
    }

    fn ctr_pull(
        &self,
        ns: &str,
        snapshotter: &str,
        reference: &str,
        extra: &[&str],
    ) -> (bool, String) {
        let mut args = vec![
            "images",
            "pull",
            "--hosts-dir",
            self.hosts.to_str().unwrap(),
            "--snapshotter",
            snapshotter,
        ];
        args.extend_from_slice(extra);
        args.push(reference);
        let o = self.ctd.ctr_ns(ns, &args);
        (
            o.status.success(),
            format!(
                "{}{}\n--- kitsnap log:\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                tail(&self.ks.log())
            ),
        )
    }

    /// `ctr images mount`s `reference`, runs a busybox container with it bound read-only at
    /// /models, and returns what the container printed.
    fn run_with_model(&self, ns: &str, snapshotter: &str, reference: &str) -> String {
        let mnt = self.dir.join(format!("mnt-{ns}-{snapshotter}"));
        std::fs::create_dir_all(&mnt).unwrap();
        let m = self.ctd.ctr_ns(
            ns,
            &[
                "images",
                "mount",
                "--snapshotter",
                snapshotter,
                reference,
                mnt.to_str().unwrap(),
            ],
        );
        assert!(
            m.status.success(),
            "images mount: {}",
            String::from_utf8_lossy(&m.stderr)
        );
        assert_eq!(std::fs::read(mnt.join("model.bin")).unwrap(), self.model);
        let bind = format!(
            "type=bind,src={},dst=/models,options=rbind:ro",
            mnt.display()
        );
        let id = format!("mirror-{}", free_port());
        let o = self.ctd.ctr_ns(
            ns,
            &[
                "run",
                "--rm",
                "--snapshotter",
                "kitsnap",
                "--mount",
                &bind,
                IMAGE,
                &id,
                "sh",
                "-c",
                "sha256sum /models/model.bin; cat /models/README.md; touch /models/x 2>/dev/null && echo WRITABLE || echo READONLY",
            ],
        );
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let _ = self
            .ctd
            .ctr_ns(ns, &["images", "unmount", mnt.to_str().unwrap()]);
        assert!(o.status.success(), "ctr run: {out}");
        out
    }

    /// `kitsnap pull --containerd -n NS REFERENCE` (plain HTTP, no local store).
    fn kitsnap_pull(&self, ns: &str, reference: &str) -> std::process::Output {
        Command::new(support::bin())
            .env("KITSNAP_ADDRESS", &self.ks.sock)
            .env("KITSNAP_STORE", self.dir.join("empty"))
            .args(["pull", "--containerd", "-n", ns, reference, "--plain-http"])
            .output()
            .unwrap()
    }

    fn import_busybox(&self, ns: &str) {
        let img = self.dir.join("busybox.tar");
        if !img.exists() {
            busybox_image(&img);
        }
        self.ctd.import_image(ns, "kitsnap", &img);
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// The layer digests of the ModelKit `reference` (`REGISTRY/REPO:TAG`), as the registry has it.
/// The manifest of `reference` (a ModelKit in the test registry) as the registry has it.
fn kit_manifest(s: &Setup, reference: &str) -> serde_json::Value {
    let (repo, tag) = reference
        .strip_prefix(&format!("{}/", s.reg.addr()))
        .and_then(|r| r.rsplit_once(':'))
        .expect("a reference in the test registry");
    get(
        &format!("http://{}/v2/{repo}/manifests/{tag}", s.reg.addr()),
        None,
    )
    .json()
    .unwrap()
}

fn kit_layers(s: &Setup, reference: &str) -> Vec<String> {
    kit_manifest(s, reference)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// A request to the mirror as containerd makes it.
fn get(url: &str, auth: Option<&str>) -> reqwest::blocking::Response {
    let c = reqwest::blocking::Client::new();
    let mut r = c.get(url).header(
        "Accept",
        "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
    );
    if let Some(a) = auth {
        r = r.header("Authorization", a);
    }
    r.send().unwrap()
}

/// Pulls a ModelKit natively with `ctr` through the mirror, on overlayfs (containerd
/// unpacks the view itself) and on the kitsnap snapshotter (shared with `kitsnap pull
/// --containerd`), and runs a container that reads it.
fn native_pulls(v: &Version) {
    let ctx = format!("containerd {}", v.name);
    let s = setup(v, None);
    let model_sha = sha256_hex(&s.model);
    // containerd 2's ctr unpacks through the transfer service, configured (by the test
    // support) for the kitsnap snapshotter only.
    let first = if v.name.starts_with('2') {
        "kitsnap"
    } else {
        "overlayfs"
    };
    for (ns, reference) in [("plain-ns", &s.plain), ("gz-ns", &s.gz)] {
        s.import_busybox(ns);
        let (ok, out) = s.ctr_pull(ns, first, reference, &[]);
        assert!(ok, "{ctx}: ctr pull {reference} through the mirror:\n{out}");
        let ls = String::from_utf8_lossy(&s.ctd.ctr_ns(ns, &["images", "ls"]).stdout).into_owned();
        assert!(
            ls.lines()
                .any(|l| l.starts_with(reference.as_str()) && l.contains("image.index")),
            "{ctx}: {ls}"
        );
        if first == "kitsnap" {
            // containerd 2.x prepares each layer with the remote-snapshot label and the
            // view's layer annotation: kitsnap fills the layer itself from the registry,
            // and containerd never downloads the blob into its content store.
            assert!(
                s.ks.log().contains("fill: layer "),
                "{ctx}: {}",
                tail(&s.ks.log())
            );
            let content =
                String::from_utf8_lossy(&s.ctd.ctr_ns(ns, &["content", "ls", "-q"]).stdout)
                    .into_owned();
            for layer in kit_layers(&s, reference) {
                assert!(!content.contains(&layer), "{ctx}: {layer} was downloaded");
            }
        }
        let out = s.run_with_model(ns, first, reference);
        assert!(out.contains(&model_sha), "{ctx}: {out}");
        assert!(
            out.contains("# the docs") && out.contains("READONLY"),
            "{ctx}: {out}"
        );
    }

    // The kitsnap snapshotter: `kitsnap pull --containerd` in one namespace, a native pull
    // in another; both register the same image view.
    let o = s.kitsnap_pull("side-door", &s.plain);
    assert!(
        o.status.success(),
        "{ctx}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(msg.contains("image view sha256:"), "{ctx}: {msg}");
    s.import_busybox("native");
    let (ok, out) = s.ctr_pull("native", "kitsnap", &s.plain, &[]);
    assert!(ok, "{ctx}: {out}");
    let out = s.run_with_model("native", "kitsnap", &s.plain);
    assert!(out.contains(&model_sha), "{ctx}: {out}");
    // Both namespaces name the same image view.
    let digest = |ns: &str| {
        let o = s.ctd.ctr_ns(ns, &["images", "ls"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with(s.plain.as_str()))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
            .unwrap_or_default()
    };
    assert_eq!(digest("native"), digest("side-door"), "{ctx}");
    assert!(digest("native").starts_with("sha256:"), "{ctx}");
    // Both label the view with where it came from, under the same key (the host without
    // its port), so that Spegel serves it to other nodes whichever way it was pulled.
    for ns in ["native", "side-door"] {
        let o = s.ctd.ctr_ns(ns, &["content", "ls"]);
        let ls = String::from_utf8_lossy(&o.stdout).into_owned();
        let index = ls
            .lines()
            .find(|l| l.starts_with(&digest(ns)))
            .unwrap_or_default();
        assert!(
            index.contains("containerd.io/distribution.source.127.0.0.1=kits/plain"),
            "{ctx}: {ns}: {ls}"
        );
    }
    // containerd 2.x (transfer service) unpacks with the remote-snapshot label, so the
    // native pull finds the layers `kitsnap pull --containerd` unpacked in another
    // namespace, and the earlier native pulls on kitsnap, plain and gzip alike (same diff
    // IDs), shared them too: one copy on the node. `ctr images pull` of 1.6/1.7 unpacks
    // client-side with no label (rootfs.ApplyLayer), so containerd never asks kitsnap
    // whether it holds the layer: a second copy.
    let want = if v.name.starts_with('2') { 1 } else { 2 };
    assert_eq!(
        support::copies_under(&s.ks.root, "model.bin", &model_sha),
        want,
        "{ctx}: copies of the model under kitsnap's root"
    );
    // Removing the images (and the leases `ctr images mount` left: 1.7's and 2.x's
    // `ctr images unmount` keep them) lets containerd's GC remove every layer, filled
    // ones included.
    for (ns, reference) in [
        ("plain-ns", &s.plain),
        ("gz-ns", &s.gz),
        ("side-door", &s.plain),
        ("native", &s.plain),
    ] {
        let leases = s.ctd.ctr_ns(ns, &["leases", "ls", "-q"]);
        for id in String::from_utf8_lossy(&leases.stdout).split_whitespace() {
            let o = s.ctd.ctr_ns(ns, &["leases", "rm", id]);
            assert!(
                o.status.success(),
                "{ctx}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let o = s.ctd.ctr_ns(ns, &["images", "rm", "--sync", reference]);
        assert!(
            o.status.success(),
            "{ctx}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(
        support::copies_under(&s.ks.root, "model.bin", &model_sha),
        0,
        "{ctx}: copies left under kitsnap's root after every image went"
    );
    // The mirror remembers where those layers came from (to fill them for containerd).
    // `kitsnap pull --containerd` unpacks its layers itself: the filler must not unpack
    // them a second time.
    let fills = |s: &Setup| s.ks.log().matches("fill: layer ").count();
    let before = fills(&s);
    let o = s.kitsnap_pull("after-gc", &s.plain);
    assert!(
        o.status.success(),
        "{ctx}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(fills(&s), before, "{ctx}: {}", tail(&s.ks.log()));
    assert_eq!(
        support::copies_under(&s.ks.root, "model.bin", &model_sha),
        1,
        "{ctx}: one copy after kitsnap pull --containerd"
    );

    raw_files_keep_their_metadata(&s, &ctx, first);
}

/// A ModelPack with raw layers: the file's mode and mtime (with its nanoseconds) come from
/// the layer's file-metadata annotation, whether containerd's applier unpacks the view's
/// tar (overlayfs), kitsnap fills the layer for containerd 2.x, or `kitsnap pull
/// --containerd` unpacks it.
fn raw_files_keep_their_metadata(s: &Setup, ctx: &str, snapshotter: &str) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tree = s.dir.join("tree");
    let readme = tree.join("README.md");
    let docs = b"# the raw docs\n";
    std::fs::write(&readme, docs).unwrap();
    std::fs::set_permissions(&readme, std::fs::Permissions::from_mode(0o750)).unwrap();
    let when = std::time::UNIX_EPOCH + std::time::Duration::new(1_614_834_367, 123_456_789);
    std::fs::File::options()
        .write(true)
        .open(&readme)
        .and_then(|f| f.set_modified(when))
        .unwrap();
    let raw = format!("{}/kits/raw:v1", s.reg.addr());
    let store = s.dir.join("store");
    let t = tree.to_str().unwrap();
    support::ok(
        &store,
        &[
            "pack",
            t,
            "-t",
            &raw,
            "--use-model-pack",
            "--layer-format",
            "raw",
        ],
    );
    support::ok(&store, &["push", &raw, "--plain-http"]);
    // Read in the snapshotters' own directories: what the applier or kitsnap wrote.
    let sha = sha256_hex(docs);
    let check = |step: &str, root: &Path| {
        let files = support::files_under(root, "README.md", &sha);
        assert!(
            !files.is_empty(),
            "{ctx}: {step}: no README.md under {}",
            root.display()
        );
        for f in files {
            let m = std::fs::metadata(&f).unwrap();
            let got = (m.mode() & 0o7777, m.mtime(), m.mtime_nsec());
            assert_eq!(
                got,
                (0o750, 1_614_834_367, 123_456_789),
                "{ctx}: {step}: {}",
                f.display()
            );
        }
    };
    let (ok, out) = s.ctr_pull("raw-native", snapshotter, &raw, &[]);
    assert!(ok, "{ctx}: ctr pull {raw}:\n{out}");
    let root = if snapshotter == "kitsnap" {
        &s.ks.root
    } else {
        &s.ctd.dir
    };
    check(&format!("ctr pull on {snapshotter}"), root);
    let o = s.kitsnap_pull("raw-kitsnap", &raw);
    assert!(
        o.status.success(),
        "{ctx}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    check("kitsnap pull --containerd", &s.ks.root);
}

#[test]
fn native_pulls_through_the_mirror_with_every_containerd_version() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let versions = versions(test_name!());
    for v in &versions {
        eprintln!("--- containerd {}", v.name);
        native_pulls(v);
    }
    assert!(!versions.is_empty(), "no containerd at all");
}

/// What the mirror does with what is not a ModelKit pulled by tag, and with failures.
#[test]
fn mirror_passes_images_through_and_answers_errors_clearly() {
    require_containers!();
    require_registry!();
    require!(have_cmd("skopeo"), "skopeo (apt-get install skopeo)");
    let _heavy = heavy();
    let Some(v) = versions(test_name!()).into_iter().next() else {
        panic!("no containerd at all");
    };
    let s = setup(&v, None);
    let ns = format!("ns={}", s.reg.addr());

    // An ordinary image passes through unchanged: same digest as the registry's.
    let img = s.dir.join("busybox.tar");
    busybox_image(&img);
    let dst = format!("{}/images/busybox:1", s.reg.addr());
    let o = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci-archive:{}", img.display()),
            &format!("docker://{dst}"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let direct = get(
        &format!("http://{}/v2/images/busybox/manifests/1", s.reg.addr()),
        None,
    );
    let want = direct.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let (ok, out) = s.ctr_pull("images", "kitsnap", &dst, &[]);
    assert!(ok, "{out}");
    let ls =
        String::from_utf8_lossy(&s.ctd.ctr_ns("images", &["images", "ls"]).stdout).into_owned();
    assert!(
        ls.contains(&want),
        "image digest changed by the mirror: want {want} in\n{ls}"
    );

    // A ModelKit by its own digest: an error naming the view's digest.
    let head = get(
        &format!("http://{}/v2/kits/plain/manifests/v1", s.reg.addr()),
        None,
    );
    let kit_d = head.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let r = get(
        &format!("{}/v2/kits/plain/manifests/{kit_d}?{ns}", s.mirror),
        None,
    );
    assert_eq!(r.status().as_u16(), 404);
    let body = r.text().unwrap();
    let view = get(
        &format!("{}/v2/kits/plain/manifests/v1?{ns}", s.mirror),
        None,
    );
    assert_eq!(view.status().as_u16(), 200);
    let view_d = view.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        body.contains("MANIFEST_UNKNOWN")
            && body.contains(&view_d)
            && body.contains("--image-view"),
        "{body}"
    );
    // The CLI computes the same view digest (a pure function of the kit).
    let cli = support::ok(&s.dir.join("store"), &["inspect", "--image-view", &s.plain]);
    assert!(cli.contains(&format!("\"digest\": \"{view_d}\"")), "{cli}");

    // A client that goes away mid-blob: the mirror serves the next request.
    {
        use std::io::Read;
        let m = serde_json::from_str::<serde_json::Value>(&support::ok(
            &s.dir.join("store"),
            &["inspect", &s.plain],
        ))
        .unwrap()["manifest"]
            .clone();
        let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
        let mut r = get(
            &format!("{}/v2/kits/plain/blobs/{layer}?{ns}", s.mirror),
            None,
        );
        let mut buf = [0u8; 4096];
        r.read_exact(&mut buf).unwrap();
        drop(r);
        let again = get(
            &format!("{}/v2/kits/plain/blobs/{layer}?{ns}", s.mirror),
            None,
        );
        assert_eq!(again.status().as_u16(), 200);
        let direct = get(
            &format!("http://{}/v2/kits/plain/blobs/{layer}", s.reg.addr()),
            None,
        );
        assert_eq!(again.bytes().unwrap(), direct.bytes().unwrap());
    }

    // Requests without ?ns= and a hosts.toml that names only the mirror: clear errors.
    let r = get(&format!("{}/v2/kits/plain/manifests/v1", s.mirror), None);
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("ns="));
    let loop_host = "loop.example:5000";
    let lh = s.hosts.join(loop_host);
    std::fs::create_dir_all(&lh).unwrap();
    std::fs::write(
        lh.join("hosts.toml"),
        format!("server = \"{}\"\n", s.mirror),
    )
    .unwrap();
    let r = get(
        &format!("{}/v2/kits/plain/manifests/v1?ns={loop_host}", s.mirror),
        None,
    );
    assert_eq!(r.status().as_u16(), 508);
    assert!(r.text().unwrap().contains("server"));
    // The mirror is still serving.
    assert_eq!(
        get(&format!("{}/v2/?{ns}", s.mirror), None)
            .status()
            .as_u16(),
        200
    );
    // An unreachable registry: 502 naming it.
    let r = get(
        &format!(
            "{}/v2/x/manifests/v1?ns=127.0.0.1:{}",
            s.mirror,
            free_port()
        ),
        None,
    );
    assert_eq!(r.status().as_u16(), 502);
    assert!(r.text().unwrap().contains("could not reach"));
}

/// A private registry: the mirror holds no credentials; the upstream's challenge reaches
/// the client, and the client's credentials reach the upstream.
#[test]
fn mirror_passes_credentials_through() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let versions = versions(test_name!());
    assert!(!versions.is_empty(), "no containerd at all");
    // The oldest and the newest: on 2.x kitsnap tries to fill the layers itself, and
    // (the node has no credentials) must leave them to containerd.
    let mut picked = vec![versions[0].clone()];
    picked.extend(
        versions
            .last()
            .filter(|l| l.name != versions[0].name)
            .cloned(),
    );
    for v in &picked {
        credentials_through_the_mirror(v);
    }
}

fn credentials_through_the_mirror(v: &Version) {
    let s = setup(v, Some(("alice", "s3cret")));
    let ns = format!("ns={}", s.reg.addr());
    let r = get(
        &format!("{}/v2/kits/plain/manifests/v1?{ns}", s.mirror),
        None,
    );
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        r.headers().contains_key("www-authenticate"),
        "{:?}",
        r.headers()
    );
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:s3cret")
    );
    let r = get(
        &format!("{}/v2/kits/plain/manifests/v1?{ns}", s.mirror),
        Some(&basic),
    );
    assert_eq!(r.status().as_u16(), 200);
    let view_d = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    // The view, once made, is not served to a client without credentials either.
    let r = get(
        &format!("{}/v2/kits/plain/manifests/{view_d}?{ns}", s.mirror),
        None,
    );
    assert_eq!(r.status().as_u16(), 401);
    // containerd with the credentials pulls through the mirror.
    s.import_busybox("private");
    let (ok, out) = s.ctr_pull("private", "kitsnap", &s.gz, &["--user", "alice:s3cret"]);
    assert!(ok, "{out}");
    if v.name.starts_with('2') {
        let log = s.ks.log();
        assert!(
            log.contains("fill: left to containerd") && !log.contains("fill: layer "),
            "{}",
            tail(&log)
        );
    }
    let (ok, out) = s.ctr_pull("nocreds", "kitsnap", &s.plain, &[]);
    assert!(!ok, "pulled a private kit without credentials: {out}");
}

/// Uploads `data` as a blob of `repo` (monolithic upload, as any registry client may).
fn put_blob(reg: &str, repo: &str, data: &[u8]) -> String {
    let c = reqwest::blocking::Client::new();
    let digest = format!("sha256:{}", sha256_hex(data));
    let r = c
        .post(format!("http://{reg}/v2/{repo}/blobs/uploads/"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{:?}", r.text());
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let url = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{reg}{loc}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{url}{sep}digest={digest}"))
        .body(data.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
    digest
}

/// Bad input the mirror and `kitsnap pull --containerd` meet: an artifact that is neither
/// an image nor a kit passes through the mirror unchanged; a gzip ModelPack whose config
/// lies about a layer's diff ID is refused by containerd's unpack (through the mirror) and
/// by kitsnap's pull, which leaves nothing behind; the same lie about an uncompressed layer
/// is harmless (its diff ID is its blob digest, never taken from the config); the mirror
/// goes on serving. On containerd 2.x the native pull goes to the kitsnap snapshotter,
/// whose fill checks the chain ID and leaves a lying layer to containerd (which refuses it).
#[test]
fn mirror_and_pull_meet_artifacts_and_lying_kits() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    // The newest: on 2.x the native pull unpacks on kitsnap, which tries to fill.
    let v = versions(test_name!())
        .into_iter()
        .last()
        .expect("a containerd");
    let snapshotter = if v.name.starts_with('2') {
        "kitsnap"
    } else {
        "overlayfs"
    };
    let s = setup(&v, None);
    let reg = s.reg.addr();
    let ns = format!("ns={reg}");

    // Neither image nor kit: an OCI artifact with its own config type.
    let cfg = br#"{"hello":"world"}"#;
    let blob = b"some artifact payload";
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.thing.v1",
        "config": {"mediaType": "application/vnd.example.thing.config.v1+json",
                   "digest": put_blob(&reg, "other/thing", cfg), "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.example.thing.layer.v1",
                    "digest": put_blob(&reg, "other/thing", blob), "size": blob.len()}]
    })
    .to_string();
    let r = reqwest::blocking::Client::new()
        .put(format!("http://{reg}/v2/other/thing/manifests/v1"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
    let via = get(
        &format!("{}/v2/other/thing/manifests/v1?{ns}", s.mirror),
        None,
    );
    assert_eq!(via.status().as_u16(), 200);
    assert_eq!(
        via.text().unwrap(),
        manifest,
        "an artifact must pass through unchanged"
    );

    let tree = s.dir.join("tree");
    for (compression, lie_counts) in [("gzip", true), ("none", false)] {
        let ctx = format!("{compression} ModelPack with a lying config");
        let liar = format!("{reg}/kits/liar-{compression}:v1");
        push_lying_modelpack(&s.dir.join("store"), &tree, &liar, compression);
        let ns_native = format!("liar-native-{compression}");
        let ns_pull = format!("liar-{compression}");

        // Natively, through the mirror: containerd's unpack checks the diff ID (at pull
        // time, or at mount time where the pull does not unpack).
        let (pulled, out) = s.ctr_pull(&ns_native, snapshotter, &liar, &[]);
        let mnt = s.dir.join(format!("liar-mnt-{compression}"));
        std::fs::create_dir_all(&mnt).unwrap();
        let mounted = pulled && {
            let o = s.ctd.ctr_ns(
                &ns_native,
                &[
                    "images",
                    "mount",
                    "--snapshotter",
                    snapshotter,
                    liar.as_str(),
                    mnt.to_str().unwrap(),
                ],
            );
            if o.status.success() {
                assert_eq!(std::fs::read(mnt.join("model.bin")).unwrap(), s.model);
                s.ctd
                    .ctr_ns(&ns_native, &["images", "unmount", mnt.to_str().unwrap()]);
            } else {
                let e = String::from_utf8_lossy(&o.stderr);
                assert!(e.contains("diff id"), "{ctx}: {e}");
            }
            o.status.success()
        };
        if !pulled {
            assert!(out.contains("diff id"), "{ctx}: {out}");
        }
        assert_eq!(mounted, !lie_counts, "{ctx}: native pull and mount");
        if snapshotter == "kitsnap" && lie_counts {
            let log = s.ks.log();
            assert!(
                log.contains("fill: left to containerd"),
                "{ctx}: {}",
                tail(&log)
            );
        }

        // kitsnap's own pull: an error that names the fault, and nothing left behind.
        let o = s.kitsnap_pull(&ns_pull, &liar);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.success(), !lie_counts, "{ctx}: {err}");
        if lie_counts {
            assert!(
                err.contains("the ModelKit's config is wrong"),
                "{ctx}: {err}"
            );
            for what in ["images", "leases"] {
                let o = s.ctd.ctr_ns(&ns_pull, &[what, "ls", "-q"]);
                let left = String::from_utf8_lossy(&o.stdout);
                assert_eq!(left.trim(), "", "{ctx}: {what} left");
            }
        }
    }

    // The mirror goes on serving.
    let view = get(
        &format!("{}/v2/kits/plain/manifests/v1?{ns}", s.mirror),
        None,
    );
    assert_eq!(view.status().as_u16(), 200);
}

/// Packs `tree` as a ModelPack (`compression`), rewrites its config in the store so that
/// `modelfs.diffIds[0]` names the wrong digest, and pushes it as `reference`.
fn push_lying_modelpack(store: &Path, tree: &Path, reference: &str, compression: &str) {
    let t = tree.to_str().unwrap();
    let args = [
        "pack",
        t,
        "-t",
        reference,
        "--use-model-pack",
        "--compression",
        compression,
    ];
    support::ok(store, &args);
    let index_path = store.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let blob_path = |d: &str| {
        store
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let read_json = |d: &serde_json::Value| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(blob_path(d.as_str().unwrap())).unwrap()).unwrap()
    };
    let write_blob = |data: &[u8]| {
        let d = format!("sha256:{}", sha256_hex(data));
        std::fs::write(blob_path(&d), data).unwrap();
        d
    };
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == reference)
        .expect("the packed ModelPack in index.json");
    let mut m = read_json(&entry["digest"]);
    let mut c = read_json(&m["config"]["digest"]);
    c["modelfs"]["diffIds"][0] = format!("sha256:{}", sha256_hex(b"not the layer")).into();
    let cbytes = serde_json::to_vec(&c).unwrap();
    m["config"]["digest"] = write_blob(&cbytes).into();
    m["config"]["size"] = cbytes.len().into();
    let mbytes = serde_json::to_vec(&m).unwrap();
    entry["digest"] = write_blob(&mbytes).into();
    entry["size"] = mbytes.len().into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    support::ok(store, &["push", reference, "--plain-http"]);
}

/// The real nerdctl and a containerd 2.x to run it against (nerdctl v2 needs 1.7 or 2.x),
/// or a loud skip (a failure under CI).
macro_rules! require_nerdctl {
    () => {{
        require_containers!();
        require_registry!();
        let Some(real) = support::peer("nerdctl") else {
            require!(false, "nerdctl (run scripts/install-peers.sh nerdctl)");
            return;
        };
        let Some(v) = versions(test_name!())
            .into_iter()
            .find(|v| v.name.starts_with('2'))
        else {
            require!(false, "containerd 2.x (run scripts/fetch-containerd.sh)");
            return;
        };
        (real, v)
    }};
}

/// The real nerdctl (v2.3.5, built by scripts/install-peers.sh) on containerd 2.x: `nerdctl
/// pull` of a ModelKit through the mirror onto the kitsnap snapshotter (kitsnap fills the
/// layers), `nerdctl images` lists it, a container started by `nerdctl run` reads the
/// model from a read-only bind of `kitsnap mount` and cannot write to it, `nerdctl rmi`
/// removes it.
#[test]
fn nerdctl_pulls_runs_and_removes_a_modelkit_through_the_mirror() {
    let (real, v) = require_nerdctl!();
    let _heavy = heavy();
    let s = setup(&v, None);
    const NS: &str = "nerd";
    s.import_busybox(NS);
    let model_sha = sha256_hex(&s.model);
    let path = s.ctd.path_env();
    let nerd = |args: &[&str]| nerdctl_ok(&s, &real, &path, NS, "kitsnap", args);

    nerd(&["pull", &s.plain]);
    assert!(s.ks.log().contains("fill: layer "), "{}", tail(&s.ks.log()));
    let content =
        String::from_utf8_lossy(&s.ctd.ctr_ns(NS, &["content", "ls", "-q"]).stdout).into_owned();
    for layer in kit_layers(&s, &s.plain) {
        assert!(
            !content.contains(&layer),
            "{layer} was downloaded by containerd"
        );
    }
    let images = nerd(&["images"]);
    assert!(images.contains("kits/plain"), "{images}");

    let path = Command::new(support::bin())
        .env("KITSNAP_ADDRESS", &s.ks.sock)
        .env("KITSNAP_STORE", s.dir.join("empty"))
        .args([
            "mount",
            "-n",
            NS,
            &s.plain,
            "--name",
            "nerd-model",
            "--plain-http",
        ])
        .output()
        .unwrap();
    assert!(
        path.status.success(),
        "{}",
        String::from_utf8_lossy(&path.stderr)
    );
    let path = String::from_utf8_lossy(&path.stdout).trim().to_string();
    let out = nerd(&[
        "run",
        "--rm",
        "--net",
        "host",
        "-v",
        &format!("{path}:/models:ro"),
        IMAGE,
        "sh",
        "-c",
        "sha256sum /models/model.bin; touch /models/x 2>/dev/null && echo WRITABLE || echo READONLY",
    ]);
    assert!(
        out.contains(&model_sha) && out.contains("READONLY"),
        "{out}"
    );
    let o = Command::new(support::bin())
        .env("KITSNAP_ADDRESS", &s.ks.sock)
        .args(["umount", "nerd-model"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    nerd(&["rmi", &s.plain]);
    let images = nerd(&["images"]);
    assert!(!images.contains("kits/plain"), "{images}");
}

/// Runs `program` (nerdctl, or kitsnap's front for it) against the test's containerd in
/// namespace `ns`, on the kitsnap snapshotter, with the test's hosts directory.
fn nerdctl(s: &Setup, program: &Path, path: &str, ns: &str, args: &[&str]) -> Output {
    nerdctl_on(s, program, path, ns, "kitsnap", args)
}

/// [`nerdctl`] on another snapshotter.
fn nerdctl_on(
    s: &Setup,
    program: &Path,
    path: &str,
    ns: &str,
    snapshotter: &str,
    args: &[&str],
) -> Output {
    Command::new(program)
        .env("PATH", path)
        .env("KITSNAP_ADDRESS", &s.ks.sock)
        .args(["--address", s.ctd.sock.to_str().unwrap(), "--namespace", ns])
        .args([
            "--snapshotter",
            snapshotter,
            "--hosts-dir",
            s.hosts.to_str().unwrap(),
        ])
        .args(["--data-root", s.dir.join("nerdctl").to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

/// [`nerdctl_on`], asserting success; stdout and stderr together.
fn nerdctl_ok(
    s: &Setup,
    program: &Path,
    path: &str,
    ns: &str,
    snapshotter: &str,
    args: &[&str],
) -> String {
    let o = nerdctl_on(s, program, path, ns, snapshotter, args);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "{} --snapshotter {snapshotter} {args:?}: {out}\n--- kitsnap log:\n{}",
        program.display(),
        tail(&s.ks.log())
    );
    out
}

/// Waits (bounded) until `kitsnap mount --list` shows no mount; returns the listing.
fn no_mounts_left(s: &Setup) -> String {
    let list = || {
        Command::new(support::bin())
            .env("KITSNAP_ADDRESS", &s.ks.sock)
            .args(["mount", "--list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let start = std::time::Instant::now();
    while list().lines().count() > 1 && start.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    list()
}

/// `nerdctl run --mount type=modelkit,...` exactly as typed, through kitsnap's nerdctl
/// front (`kitsnap front install`) in front of the real nerdctl v2.3.5: the container reads
/// the model read-only, a filter selects layers, exit codes and output are nerdctl's, the
/// mount's holder goes when nerdctl exits; bad input is a one-line error with no container
/// created and nothing left mounted; `kitsnap front remove` takes the front out.
#[test]
fn nerdctl_front_mounts_modelkits_as_typed() {
    let (real, v) = require_nerdctl!();
    let _heavy = heavy();
    let s = setup(&v, None);
    const NS: &str = "front";
    s.import_busybox(NS);
    let model_sha = sha256_hex(&s.model);
    let front_dir = s.dir.join("sbin");
    let front = front_dir.join("nerdctl");
    let store = s.dir.join("store");
    support::ok(
        &store,
        &["front", "install", "--dir", front_dir.to_str().unwrap()],
    );
    assert!(std::fs::read_link(&front).is_ok(), "no front installed");
    let path = format!(
        "{}:{}:{}",
        front_dir.display(),
        real.parent().unwrap().display(),
        s.ctd.path_env()
    );
    let run = |args: &[&str]| nerdctl(&s, &front, &path, NS, args);
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    // Untouched without type=modelkit: the real nerdctl's own answer.
    let plain = Command::new(&real).arg("--version").output().unwrap();
    let via = Command::new(&front)
        .env("PATH", &path)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(via.stdout, plain.stdout);
    assert_eq!(via.status.code(), plain.status.code());

    // As typed; the container's exit code comes back.
    let mount = format!("type=modelkit,src={},dst=/models", s.plain);
    let o = run(&[
        "run",
        "--rm",
        "--net",
        "host",
        "--mount",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "sha256sum /models/model.bin; cat /models/README.md; touch /models/x 2>/dev/null && echo WRITABLE || echo READONLY; exit 7",
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(7), "{out}");
    assert!(
        out.contains(&model_sha) && out.contains("# the docs") && out.contains("READONLY"),
        "{out}"
    );
    // The front's holder goes once nerdctl has exited.
    let left = no_mounts_left(&s);
    assert_eq!(left.lines().count(), 1, "left mounted:\n{left}");

    // A filter: only the docs.
    let o = run(&[
        "run",
        "--rm",
        "--net",
        "host",
        &format!("--mount={mount},filter=docs"),
        IMAGE,
        "ls",
        "/models",
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("README.md") && !out.contains("model.bin"),
        "{out}"
    );
    no_mounts_left(&s);

    // Bad input: one line naming the fix, exit code 1, no container, nothing mounted.
    let reg = s.reg.addr();
    let cases: Vec<(String, &str)> = vec![
        ("type=modelkit,dst=/models".into(), "needs src=REF"),
        (format!("{mount},filter=nosuchtype"), "nosuchtype"),
        (
            format!("type=modelkit,src={reg}/kits/absent:v1,dst=/models"),
            "absent",
        ),
    ];
    for (bad, says) in &cases {
        let o = run(&[
            "run", "--rm", "--net", "host", "--mount", bad, IMAGE, "true",
        ]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{bad}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{bad}: {err}");
        assert!(
            err.contains("kitsnap front") && err.contains(says),
            "{bad}: {err}"
        );
        let ps = text(&run(&["ps", "-a", "-q"]));
        assert_eq!(ps.trim(), "", "{bad}: a container was created");
        let left = no_mounts_left(&s);
        assert_eq!(left.lines().count(), 1, "{bad}: left mounted:\n{left}");
    }
    // The daemon down.
    let o = Command::new(&front)
        .env("PATH", &path)
        .env("KITSNAP_ADDRESS", s.dir.join("no-such.sock"))
        .args(["--address", s.ctd.sock.to_str().unwrap(), "-n", NS])
        .args(["run", "--rm", "--mount", &mount, IMAGE, "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("kitsnap serve"), "{err}");

    // Removed: plain nerdctl again, which refuses the mount type.
    support::ok(
        &store,
        &["front", "remove", "--dir", front_dir.to_str().unwrap()],
    );
    assert!(front.symlink_metadata().is_err());
    let o = nerdctl(
        &s,
        &real,
        &s.ctd.path_env(),
        NS,
        &["run", "--rm", "--mount", &mount, IMAGE, "true"],
    );
    assert!(!o.status.success());
}

/// nerdctl's own `--mount type=image` (nerdctl's main branch, PR 4990; in no release up to
/// v2.3.5) with a ModelKit, on the kitsnap and on the overlayfs snapshotter: pulled natively
/// (`nerdctl pull` through the mirror: the image view) and by `kitsnap pull --containerd
/// --keep-blobs`. The container reads the model's bytes and cannot write them.
///
/// Needs a nerdctl built from main: the Go module proxy serves nerdctl's tags but no
/// pseudo-version of main, so the project's scripts cannot build it and CI does not run
/// this test: it is ignored by default (reported as "ignored", never as passed), and
/// scripts/test.sh runs it when `KITSNAP_NERDCTL_MAIN=/path/to/nerdctl` is set or
/// `.cache/peers/bin/nerdctl-main` exists.
#[test]
#[ignore = "needs nerdctl built from main (KITSNAP_NERDCTL_MAIN); scripts/test.sh runs it when there is one"]
fn nerdctl_main_mounts_a_modelkit_with_type_image() {
    require_containers!();
    require_registry!();
    let real = std::env::var_os("KITSNAP_NERDCTL_MAIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| support::peer("nerdctl-main"))
        .expect("no nerdctl built from main: set KITSNAP_NERDCTL_MAIN=/path/to/nerdctl");
    let Some(v) = versions(test_name!())
        .into_iter()
        .find(|v| v.name.starts_with('2'))
    else {
        require!(false, "containerd 2.x (run scripts/fetch-containerd.sh)");
        return;
    };
    let _heavy = heavy();
    let s = setup(&v, None);
    let model_sha = sha256_hex(&s.model);
    let img = s.dir.join("busybox.tar");
    busybox_image(&img);
    for snapshotter in ["kitsnap", "overlayfs"] {
        let ns = format!("img-{snapshotter}");
        let path = s.ctd.path_env();
        let nerd = |args: &[&str]| nerdctl_ok(&s, &real, &path, &ns, snapshotter, args);
        s.ctd.import_image(&ns, snapshotter, &img);
        // Natively (the mirror answers with the image view), then a kit kitsnap pulled.
        nerd(&["pull", &s.plain]);
        let pulled = Command::new(support::bin())
            .env("KITSNAP_ADDRESS", &s.ks.sock)
            .env("KITSNAP_STORE", s.dir.join("empty"))
            .args(["pull", "--containerd", "-n", &ns, &s.gz, "--plain-http"])
            .arg("--keep-blobs")
            .output()
            .unwrap();
        assert!(
            pulled.status.success(),
            "{}",
            String::from_utf8_lossy(&pulled.stderr)
        );
        for kit in [&s.plain, &s.gz] {
            let out = nerd(&[
                "run",
                "--rm",
                "--net",
                "host",
                "--mount",
                &format!("type=image,src={kit},dst=/models"),
                IMAGE,
                "sh",
                "-c",
                "sha256sum /models/model.bin; touch /models/x 2>/dev/null && echo WRITABLE || echo READONLY",
            ]);
            assert!(
                out.contains(&model_sha) && out.contains("READONLY"),
                "{snapshotter}, {kit}: {out}"
            );
        }
    }

    // kitsnap's nerdctl front in front of this nerdctl: `type=modelkit` becomes nerdctl's
    // own `type=image` (the front pulls the kit first, keeping blobs for overlayfs), so no
    // kitsnap mount exists while the container runs; a filtered mount stays a bind of a
    // `kitsnap mount` (containerd views of image layers cannot be filtered).
    let front_dir = s.dir.join("sbin");
    support::ok(
        &s.dir.join("store"),
        &["front", "install", "--dir", front_dir.to_str().unwrap()],
    );
    let front = front_dir.join("nerdctl");
    let path = format!(
        "{}:{}:{}",
        front_dir.display(),
        real.parent().unwrap().display(),
        s.ctd.path_env()
    );
    for snapshotter in ["kitsnap", "overlayfs"] {
        let ns = format!("front-{snapshotter}");
        let nerd = |args: &[&str]| nerdctl_ok(&s, &front, &path, &ns, snapshotter, args);
        s.ctd.import_image(&ns, snapshotter, &img);
        let mount = format!("type=modelkit,src={},dst=/models", s.gz);
        nerd(&[
            "run", "-d", "--name", "held", "--net", "host", "--mount", &mount, IMAGE, "sleep",
            "300",
        ]);
        let listed = Command::new(support::bin())
            .env("KITSNAP_ADDRESS", &s.ks.sock)
            .args(["mount", "--list", "-q"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&listed.stdout).trim(),
            "",
            "{snapshotter}: type=image needs no kitsnap mount"
        );
        let out = nerd(&[
            "exec",
            "held",
            "sh",
            "-c",
            "sha256sum /models/model.bin; touch /models/x 2>/dev/null && echo WRITABLE || echo READONLY",
        ]);
        assert!(
            out.contains(&model_sha) && out.contains("READONLY"),
            "{snapshotter}: {out}"
        );
        nerd(&["rm", "-f", "held"]);
        let out = nerd(&[
            "run",
            "--rm",
            "--net",
            "host",
            &format!("--mount={mount},filter=docs"),
            IMAGE,
            "ls",
            "/models",
        ]);
        assert!(
            out.contains("README.md") && !out.contains("model.bin"),
            "{snapshotter}: {out}"
        );
    }
}

/// The registry's stored copy of blob `digest` (docker-registry's filesystem driver).
fn stored_blob(s: &Setup, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let mut stack = vec![s.dir.join("registry")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.ends_with(format!("blobs/sha256/{}/{hex}", &hex[..2])) {
                    return p.join("data");
                }
                stack.push(p);
            }
        }
    }
    panic!("blob {digest} not in the registry's storage");
}

/// containerd 2.x, the one whose pulls ask kitsnap to fill layers; None (reported as
/// missing: a failure under CI) without it.
fn containerd_2(test: &str) -> Option<Version> {
    let v = versions(test).into_iter().find(|v| v.name.starts_with('2'));
    if v.is_none() {
        support::missing(test, "containerd 2.x (scripts/install-containerd.sh)");
    }
    v
}

/// The digest of the plain kit's model layer (its largest).
fn model_layer(s: &Setup) -> String {
    kit_manifest(s, &s.plain)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .unwrap()
}

fn lazy_mounts(s: &Setup) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(s.ks.root.to_str().unwrap()) && l.contains(" - fuse"))
        .count()
}

/// A ModelKit pushed by `kitsnap push` carries a lazy index (an OCI referrer): containerd
/// 2.x pulling it natively through the mirror gets its uncompressed layers committed at
/// once and served through FUSE as they arrive, each chunk verified. The bytes a container
/// reads are the model's; after a crash the daemon mounts the layers again; a registry
/// serving bytes that do not match the index gets I/O errors, never those bytes.
#[test]
fn lazy_layers_serve_verified_bytes_before_the_pull_has_them() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let Some(v) = containerd_2(test_name!()) else {
        return;
    };
    let ctx = format!("containerd {}", v.name);
    let mut s = setup(&v, None);
    let model_sha = sha256_hex(&s.model);

    // The referrer is where the distribution spec puts it for a registry without the
    // referrers API: the `sha256-<hex>` tag of the ModelKit's manifest.
    let (repo, tag) = s
        .plain
        .strip_prefix(&format!("{}/", s.reg.addr()))
        .unwrap()
        .rsplit_once(':')
        .unwrap();
    let m = get(
        &format!("http://{}/v2/{repo}/manifests/{tag}", s.reg.addr()),
        None,
    );
    let kit_digest = m.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let refs: serde_json::Value = get(
        &format!(
            "http://{}/v2/{repo}/manifests/{}",
            s.reg.addr(),
            kit_digest.replace(':', "-")
        ),
        None,
    )
    .json()
    .unwrap();
    assert_eq!(
        refs["manifests"][0]["artifactType"], "application/vnd.kitsnap.lazy.index.v1+json",
        "{ctx}: {refs}"
    );

    s.import_busybox("lazy");
    let (ok, out) = s.ctr_pull("lazy", "kitsnap", &s.plain, &[]);
    assert!(ok, "{ctx}: {out}");
    assert!(
        s.ks.log().contains("fill: layer served lazily"),
        "{ctx}: {}",
        tail(&s.ks.log())
    );
    // Two uncompressed layers (model, docs), each a FUSE mount; containerd downloaded neither.
    assert_eq!(
        lazy_mounts(&s),
        2,
        "{ctx}: {}",
        std::fs::read_to_string("/proc/self/mountinfo").unwrap()
    );
    let content = String::from_utf8_lossy(&s.ctd.ctr_ns("lazy", &["content", "ls", "-q"]).stdout)
        .into_owned();
    for layer in kit_layers(&s, &s.plain) {
        assert!(
            !content.contains(&layer),
            "{ctx}: {layer} was downloaded by containerd"
        );
    }
    let out = s.run_with_model("lazy", "kitsnap", &s.plain);
    assert!(
        out.contains(&model_sha) && out.contains("# the docs") && out.contains("READONLY"),
        "{ctx}: {out}"
    );
    let wait_complete = |s: &Setup, n: usize| {
        assert!(
            eventually(std::time::Duration::from_secs(10), || {
                s.ks.log()
                    .matches("lazy layer complete and verified")
                    .count()
                    >= n
            }),
            "{ctx}: lazy layers never completed: {}",
            tail(&s.ks.log())
        );
    };
    wait_complete(&s, 2);
    assert_eq!(
        support::copies_under(&s.ks.root, "model.bin", &model_sha),
        1,
        "{ctx}: one copy on the node"
    );

    // A crash: the FUSE mounts die with the daemon; the next one mounts them again.
    crash_and_restart(&mut s, "lazy", &ctx);
    let out = s.run_with_model("lazy", "kitsnap", &s.plain);
    assert!(out.contains(&model_sha), "{ctx}: {out}");

    // A registry that serves other bytes than those indexed: reads fail, nothing is served.
    let model_layer = model_layer(&s);
    for ns in ["lazy"] {
        let leases = s.ctd.ctr_ns(ns, &["leases", "ls", "-q"]);
        for id in String::from_utf8_lossy(&leases.stdout).split_whitespace() {
            s.ctd.ctr_ns(ns, &["leases", "rm", id]);
        }
        let o = s.ctd.ctr_ns(ns, &["images", "rm", "--sync", &s.plain]);
        assert!(
            o.status.success(),
            "{ctx}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(
        lazy_mounts(&s),
        0,
        "{ctx}: removed snapshots leave no mounts"
    );
    let path = stored_blob(&s, &model_layer);
    let mut blob = std::fs::read(&path).unwrap();
    let at = blob.len() / 2;
    blob[at] ^= 0xff;
    std::fs::write(&path, &blob).unwrap();
    s.import_busybox("tampered");
    let (ok, out) = s.ctr_pull("tampered", "kitsnap", &s.plain, &[]);
    assert!(ok, "{ctx}: {out}");
    let mnt = s.dir.join("mnt-tampered");
    std::fs::create_dir_all(&mnt).unwrap();
    let o = s.ctd.ctr_ns(
        "tampered",
        &[
            "images",
            "mount",
            "--snapshotter",
            "kitsnap",
            &s.plain,
            mnt.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "{ctx}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let read = std::fs::read(mnt.join("model.bin"));
    assert!(
        read.is_err(),
        "{ctx}: a tampered layer was served ({} bytes)",
        read.map(|b| b.len()).unwrap_or(0)
    );
    assert_eq!(
        std::fs::read_to_string(mnt.join("README.md")).unwrap(),
        "# the docs\n",
        "{ctx}"
    );
    let log = s.ks.log();
    assert!(
        log.contains("does not match the lazy index") || log.contains("does not match its digest"),
        "{ctx}: {}",
        tail(&log)
    );
    let _ = s
        .ctd
        .ctr_ns("tampered", &["images", "unmount", mnt.to_str().unwrap()]);
}

/// Reads of a lazy layer do not wait for the blob's stream: with the model layer's
/// whole-blob GETs held by a proxy, a container reads the whole model (fetched by `Range`,
/// chunk by chunk, each verified), and the stream completes the layer once let go.
#[test]
fn lazy_reads_are_served_ahead_of_the_stream() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let Some(v) = containerd_2(test_name!()) else {
        return;
    };
    let ctx = format!("containerd {}", v.name);
    let s = setup(&v, None);
    let model_layer = model_layer(&s);
    let proxy = crate::support::registry::start_proxy(&s.reg.addr(), Default::default());
    *proxy.faults.hold_whole_blob.lock().unwrap() = Some(model_layer.clone());
    let reference = s.pull_lazily_through(&proxy, "ahead", &ctx);
    let out = s.run_with_model("ahead", "kitsnap", &reference);
    assert!(out.contains(&sha256_hex(&s.model)), "{ctx}: {out}");
    let f = &proxy.faults;
    let held = f
        .whole_blob_gets_held
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(held >= 1, "{ctx}: the model's stream was not held ({held})");
    assert!(
        f.range_requests.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "{ctx}: the model was not read by range"
    );
    let done = format!("lazy layer complete and verified blob={model_layer}");
    assert!(
        !s.ks.log().contains(&done),
        "{ctx}: the model completed while its stream was held: {}",
        tail(&s.ks.log())
    );
    *f.hold_whole_blob.lock().unwrap() = None;
    wait_lazy_complete(&s, &model_layer, &ctx);
}

/// Waits (up to 20 s) for the daemon to log lazy layer `blob` complete and verified.
fn wait_lazy_complete(s: &Setup, blob: &str, ctx: &str) {
    let done = format!("lazy layer complete and verified blob={blob}");
    assert!(
        eventually(std::time::Duration::from_secs(20), || s
            .ks
            .log()
            .contains(&done)),
        "{ctx}: the model never completed: {}",
        tail(&s.ks.log())
    );
}

/// `kill -9` of the daemon and a new one on the same root, once it has mounted its lazy
/// layers again and containerd (which redials with a backoff) reaches it.
fn crash_and_restart(s: &mut Setup, ns: &str, ctx: &str) {
    s.ks.kill9();
    s.ks.start_again();
    // The socket is bound first; requests wait until the layers are mounted again.
    eventually(std::time::Duration::from_secs(10), || {
        s.ks.log().contains("lazy layers mounted again")
    });
    for _ in 0..100 {
        let o = s
            .ctd
            .ctr_ns(ns, &["snapshots", "--snapshotter", "kitsnap", "ls"]);
        if o.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        s.ks.log().contains("lazy layers mounted again"),
        "{ctx}: {}",
        tail(&s.ks.log())
    );
}

/// A registry that ignores `Range` (every ranged GET answered 200 with the whole blob):
/// a lazy layer never reads such an answer, reads ahead of the stream wait for it instead
/// of failing, and a daemon restarted with part of the blob on disk streams the blob once
/// more instead of reading it from byte 0 for every missing chunk (before: 8.4 times the
/// model's size). Then a lazy layer whose blob is lost while the daemon is down cannot be
/// mounted again: containerd is refused it with the fix, instead of an empty directory.
#[test]
fn lazy_layers_cope_with_ignored_ranges_and_refuse_a_lost_blob() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let Some(v) = containerd_2(test_name!()) else {
        return;
    };
    let ctx = format!("containerd {}", v.name);
    const MODEL: usize = 32 << 20;
    let mut s = setup_sized(&v, None, MODEL);
    let model_layer = model_layer(&s);
    let proxy = crate::support::registry::start_proxy(&s.reg.addr(), Default::default());
    let f = proxy.faults.clone();
    f.ignore_range.store(true, Ordering::SeqCst);
    // 4 MiB/s: the model's stream takes 8 s, so the crash lands in the middle of it.
    f.throttle_blob_bps.store(4 << 20, Ordering::SeqCst);
    let reference = s.pull_lazily_through(&proxy, "norange", &ctx);
    // A few chunks on disk, then a crash.
    let start = std::time::Instant::now();
    while f.blob_bytes_sent.load(Ordering::SeqCst) < 14 << 20 {
        assert!(
            start.elapsed().as_secs() < 60,
            "{ctx}: the model's stream did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = f.blob_bytes_sent.load(Ordering::SeqCst);
    crash_and_restart(&mut s, "norange", &ctx);
    let out = s.run_with_model("norange", "kitsnap", &reference);
    assert!(out.contains(&sha256_hex(&s.model)), "{ctx}: {out}");
    wait_lazy_complete(&s, &model_layer, &ctx);
    // The second stream, the answers to ranges cut off unread and the small blobs.
    let sent = f.blob_bytes_sent.load(Ordering::SeqCst) - before;
    assert!(
        sent < (MODEL + (8 << 20)) as u64,
        "{ctx}: {sent} bytes sent after the restart for a {MODEL}-byte model"
    );
    let ranges = f.range_requests.load(Ordering::SeqCst);
    eprintln!("{ctx}: {sent} bytes sent after the restart, {ranges} ranged GETs");
    assert!(
        ranges <= 16,
        "{ctx}: {ranges} ranged GETs to a registry that ignores them"
    );
    let log = s.ks.log();
    assert!(
        log.contains("the registry ignores Range: streaming the whole blob again"),
        "{ctx}: the restart did not fall back to a stream: {}",
        tail(&log)
    );

    // The model's blob lost while the daemon is down: its layer cannot be served again.
    s.ks.kill9();
    let lost = std::fs::read_dir(s.ks.root.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|d| {
            std::fs::read_to_string(d.join("lazy.json")).is_ok_and(|m| m.contains(&model_layer))
        })
        .expect("the model's lazy snapshot");
    std::fs::remove_file(lost.join("lazy.blob")).unwrap();
    s.ks.start_again();
    let mnt = s.dir.join("mnt-lost");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut refused = String::new();
    // containerd redials the snapshotter with a backoff: until it answers.
    for _ in 0..100 {
        let o = s.ctd.ctr_ns(
            "norange",
            &[
                "images",
                "mount",
                "--snapshotter",
                "kitsnap",
                &reference,
                mnt.to_str().unwrap(),
            ],
        );
        assert!(!o.status.success(), "{ctx}: a lost lazy layer was mounted");
        refused = String::from_utf8_lossy(&o.stderr).into_owned();
        if refused.contains("served lazily") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        refused.contains("could not mount it again") && refused.contains("pull them again"),
        "{ctx}: {refused}"
    );
    assert!(
        s.ks.log().contains("lazy layer not mounted again"),
        "{ctx}: {}",
        tail(&s.ks.log())
    );
}

/// kitsnap's own verbs take the lazy road too when asked: `kitsnap pull --containerd
/// --lazy` commits the kit's uncompressed layers at once (and says so), `kitsnap mount`
/// (which pulls what is missing, as the nerdctl front and the Docker plugin do) serves the
/// model's bytes from them; a gzip kit of the same files unpacks to the same chain IDs
/// and reuses those layers.
#[test]
fn kitsnap_pull_lazy_and_mount_serve_the_model_as_it_arrives() {
    require_containers!();
    require_registry!();
    let _heavy = heavy();
    let Some(v) = versions(test_name!()).into_iter().next() else {
        support::missing(test_name!(), "containerd (scripts/install-containerd.sh)");
        return;
    };
    let ctx = format!("containerd {}", v.name);
    let s = setup(&v, None);
    let kitsnap = |args: &[&str]| {
        Command::new(support::bin())
            .env("KITSNAP_ADDRESS", &s.ks.sock)
            .env("KITSNAP_STORE", s.dir.join("empty"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = kitsnap(&[
        "pull",
        "--containerd",
        "--lazy",
        "-n",
        "cli",
        &s.plain,
        "--plain-http",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{ctx}: {err}");
    assert!(err.contains("2 served lazily"), "{ctx}: {err}");
    // `kitsnap mount` of the kit pulled lazily, and of one not pulled in that namespace
    // (it pulls it itself): the model's bytes, read-only.
    for (reference, ns, name) in [(&s.plain, "cli", "lazy-cli"), (&s.gz, "other", "gz")] {
        let o = kitsnap(&["mount", reference, "-n", ns, "--name", name, "--plain-http"]);
        assert!(
            o.status.success(),
            "{ctx}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let path = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        assert_eq!(
            std::fs::read(path.join("model.bin")).unwrap(),
            s.model,
            "{ctx}: {name}"
        );
        assert!(
            std::fs::write(path.join("x"), b"x").is_err(),
            "{ctx}: {name} is writable"
        );
    }
    for name in ["lazy-cli", "gz"] {
        let o = kitsnap(&["umount", name]);
        assert!(
            o.status.success(),
            "{ctx}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
