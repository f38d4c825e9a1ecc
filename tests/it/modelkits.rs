//! ModelKits in containers, end to end with real components: a Debian docker-registry,
//! containerd 1.6 / 1.7 / 2.x, runc, busybox containers. `kitsnap pull --containerd`,
//! `kitsnap mount` + `ctr run --mount`, rootfs composition with a snapshot label, GC.

use std::path::Path;
use std::process::{Command, Output};

use kitsnap_node::api::node as pb;

use crate::support::containerd::*;
use crate::support::{self, *};

const NS: &str = "kitsnap-test";

/// kitsnap CLI with its store at `store`, talking to the daemon at `ks`.
fn kit(store: &Path, ks: &Kitsnap, args: &[&str]) -> Output {
    Command::new(support::bin())
        .env("KITSNAP_STORE", store)
        .env("KITSNAP_ADDRESS", &ks.sock)
        .env("CONTAINERD_NAMESPACE", NS)
        .env_remove("KITSNAP_HOME")
        .args(args)
        .output()
        .expect("spawn kitsnap")
}

fn kit_ok(store: &Path, ks: &Kitsnap, args: &[&str]) -> String {
    let o = kit(store, ks, args);
    assert!(
        o.status.success(),
        "kitsnap {args:?} failed:\n{}\n--- daemon log tail:\n{}",
        String::from_utf8_lossy(&o.stderr),
        tail(&ks.log())
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn kit_err(store: &Path, ks: &Kitsnap, args: &[&str]) -> String {
    let o = kit(store, ks, args);
    assert!(!o.status.success(), "kitsnap {args:?} unexpectedly worked");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A model tree; `docs` varies so that two kits share the model layer only.
fn model_tree(dir: &Path, model: &[u8], docs: &str) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("model.bin"), model).unwrap();
    std::fs::write(dir.join("data/train.csv"), b"x,y\n1,2\n").unwrap();
    std::fs::write(dir.join("README.md"), docs).unwrap();
    std::fs::write(
        dir.join("Kitfile"),
        "manifestVersion: 1.0.0\npackage:\n  name: tiny\nmodel:\n  name: tiny\n  path: model.bin\ndatasets:\n  - name: train\n    path: data/train.csv\ndocs:\n  - path: README.md\n",
    )
    .unwrap();
}

struct Kits {
    a: String,
    b: String,
    gz: String,
    mp: String,
    /// zstd, only in the local store (never pushed).
    zst: String,
    model_sha: String,
    model_digest_a_layer: String,
}

/// Packs and pushes the test kits to `reg`: A, B (same model as A), a gzip kit and a
/// ModelPack, plus the model's sha256.
fn push_kits(store: &Path, dir: &Path, reg: &str) -> Kits {
    let model = support::bytes(3 << 20, 7);
    let (ta, tb) = (dir.join("tree-a"), dir.join("tree-b"));
    model_tree(&ta, &model, "# A\n");
    model_tree(&tb, &model, "# B, other docs\n");
    let a = format!("{reg}/kits/a:v1");
    let b = format!("{reg}/kits/b:v1");
    let gz = format!("{reg}/kits/gz:v1");
    let mp = format!("{reg}/kits/mp:v1");
    support::ok(store, &["pack", ta.to_str().unwrap(), "-t", &a]);
    support::ok(store, &["pack", tb.to_str().unwrap(), "-t", &b]);
    support::ok(
        store,
        &[
            "pack",
            ta.to_str().unwrap(),
            "-t",
            &gz,
            "--compression",
            "gzip",
        ],
    );
    support::ok(
        store,
        &["pack", ta.to_str().unwrap(), "-t", &mp, "--use-model-pack"],
    );
    let zst = format!("{reg}/kits/zst:v1");
    support::ok(
        store,
        &[
            "pack",
            tb.to_str().unwrap(),
            "-t",
            &zst,
            "--compression",
            "zstd",
        ],
    );
    for r in [&a, &b, &gz, &mp] {
        support::ok(store, &["push", r, "--plain-http"]);
    }
    let m = serde_json::from_str::<serde_json::Value>(&support::ok(store, &["inspect", &a]))
        .unwrap()["manifest"]
        .clone();
    Kits {
        a,
        b,
        gz,
        mp,
        zst,
        model_sha: sha256_hex(&model),
        model_digest_a_layer: m["layers"][0]["digest"].as_str().unwrap().to_string(),
    }
}

fn committed_kitsnap(ctd: &Containerd) -> Vec<String> {
    ctd.snap_ok(&["ls"])
        .lines()
        .skip(1)
        .filter(|l| l.contains("Committed"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn run_out(ctd: &Containerd, args: &[&str]) -> (bool, String) {
    let o = ctd.ctr(args);
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Pulls over `kitsnap.v1.Node` directly: (finished layer events, the result).
fn pull_events(sock: &Path, reference: &str) -> (usize, pb::PullResult) {
    let sock = sock.to_path_buf();
    let reference = reference.to_string();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let ch = kitsnap_node::containerd::unix_channel(&sock).await.unwrap();
            let mut c = pb::node_client::NodeClient::new(ch);
            let mut s = c
                .pull(pb::PullRequest {
                    reference,
                    namespace: NS.into(),
                    store: String::new(),
                    registry: Some(pb::RegistryOptions {
                        plain_http: true,
                        ..Default::default()
                    }),
                    keep_blobs: false,
                    lazy: false,
                })
                .await
                .unwrap()
                .into_inner();
            let mut finished = 0;
            while let Some(ev) = s.message().await.unwrap() {
                match ev.event {
                    Some(pb::pull_event::Event::Layer(l)) if l.state != "fetching" => finished += 1,
                    Some(pb::pull_event::Event::Result(r)) => return (finished, r),
                    _ => {}
                }
            }
            panic!("pull stream ended without a result");
        })
}

/// `skopeo`: skopeo is installed (for the not-a-ModelKit case).
fn suite(v: &Version, skopeo: bool) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let ctx = format!("containerd {}", v.name);
    let reg = registry::RegistryProc::start(&dir.join("registry"), None, None);
    let store = dir.join("store");
    let kits = push_kits(&store, dir, &reg.addr());
    let mut ks = Kitsnap::start(dir);
    let ctd = Containerd::start(v, &dir.join("containerd"), &ks.sock);
    let img = dir.join("busybox.tar");
    busybox_image(&img);
    ctd.ctr_ok(&[
        "images",
        "import",
        "--snapshotter",
        "kitsnap",
        img.to_str().unwrap(),
    ]);
    let image_layers = committed_kitsnap(&ctd).len();
    // Pulls below come from the registry, not the store the kits were packed in.
    let empty = dir.join("empty-store");

    // --- pull: content + image record + one committed snapshot per layer.
    let out = kit(
        &empty,
        &ks,
        &["pull", "--containerd", &kits.a, "--plain-http"],
    );
    assert!(
        out.status.success(),
        "{ctx}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&ks.log())
    );
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("3 layer(s) unpacked"), "{ctx}: {msg}");
    let images = ctd.ctr_ok(&["images", "ls", "-q"]);
    assert!(
        images.lines().any(|l| l == kits.a),
        "{ctx}: image record missing:\n{images}"
    );
    let snaps = committed_kitsnap(&ctd);
    assert_eq!(snaps.len(), image_layers + 3, "{ctx}: {snaps:?}");
    assert!(
        snaps.contains(&kits.model_digest_a_layer),
        "{ctx}: the first layer's snapshot is named by its digest: {snaps:?}"
    );
    // The config carries containerd's GC reference to the top snapshot.
    let content = ctd.ctr_ok(&["content", "ls"]);
    assert!(
        content.contains("containerd.io/gc.ref.snapshot.kitsnap="),
        "{ctx}: no snapshot GC label in\n{content}"
    );
    // Uncompressed layers live only in their snapshots.
    assert!(
        !content.contains(&kits.model_digest_a_layer),
        "{ctx}: uncompressed layer blob stored twice:\n{content}"
    );

    // --- a second kit sharing the model layer reuses it.
    let out = kit_ok(
        &empty,
        &ks,
        &["pull", "--containerd", &kits.b, "--plain-http"],
    );
    let log = ks.log();
    let snaps_b = committed_kitsnap(&ctd);
    // Model and dataset are the same bytes at the same place: only the docs layer is new.
    assert_eq!(
        snaps_b.len(),
        image_layers + 4,
        "{ctx}: model and dataset layers reused: {snaps_b:?}"
    );
    assert!(out.is_empty() || out.starts_with("sha256:"), "{ctx}: {out}");
    let o = kit(
        &empty,
        &ks,
        &["pull", "--containerd", &kits.b, "--plain-http"],
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("0 layer(s) unpacked"),
        "{ctx}: re-pull must not unpack: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        tail(&log)
    );

    // --- compressed and ModelPack kits.
    kit_ok(
        &empty,
        &ks,
        &["pull", "--containerd", &kits.gz, "--plain-http"],
    );
    // The ModelPack through the daemon's own API: the progress stream has every layer.
    let (layers, result) = pull_events(&ks.sock, &kits.mp);
    assert_eq!(layers, 3, "{ctx}: one finished progress event per layer");
    assert_eq!(
        result.layers_unpacked + result.layers_reused,
        3,
        "{ctx}: {result:?}"
    );
    assert_eq!(result.source, "registry");
    // A kit only in the local store the CLI names (zstd) comes from there.
    let o = kit(&store, &ks, &["pull", "--containerd", &kits.zst]);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && msg.contains("from the store"),
        "{ctx}: {msg}\n{}",
        tail(&ks.log())
    );
    let content = ctd.ctr_ok(&["content", "ls"]);
    assert!(
        content.contains("containerd.io/gc.ref.content.l.0"),
        "{ctx}: compressed layer blobs are kept and referenced:\n{content}"
    );

    // --- mount: a read-only host view, used by a container via a bind mount.
    let path = kit_ok(&empty, &ks, &["mount", &kits.a]).trim().to_string();
    assert!(Path::new(&path).starts_with(&ks.mounts), "{ctx}: {path}");
    assert_eq!(
        sha256_hex(&std::fs::read(Path::new(&path).join("model.bin")).unwrap()),
        kits.model_sha
    );
    assert!(Path::new(&path).join("data/train.csv").exists());
    let w = std::fs::write(Path::new(&path).join("x"), b"x").unwrap_err();
    assert_eq!(
        w.raw_os_error(),
        Some(libc::EROFS),
        "{ctx}: host write: {w}"
    );
    let mnt = format!("type=bind,src={path},dst=/models,options=rbind:ro");
    let (ok, out) = run_out(
        &ctd,
        &[
            "run",
            "--rm",
            "--snapshotter",
            "kitsnap",
            "--mount",
            &mnt,
            IMAGE,
            "m1",
            "sh",
            "-c",
            "sha256sum /models/model.bin; echo x > /models/y",
        ],
    );
    assert!(
        out.contains(&kits.model_sha),
        "{ctx}: in-container sha256:\n{out}"
    );
    assert!(
        !ok && out.contains("Read-only file system"),
        "{ctx}: write in the container must fail read-only:\n{out}"
    );
    // Filtered view: only the dataset.
    let fpath = kit_ok(&empty, &ks, &["mount", &kits.a, "--filter", "datasets"])
        .trim()
        .to_string();
    assert!(Path::new(&fpath).join("data/train.csv").exists(), "{ctx}");
    assert!(
        !Path::new(&fpath).join("model.bin").exists(),
        "{ctx}: filter ignored"
    );
    let list = kit_ok(&empty, &ks, &["mount", "--list"]);
    assert_eq!(list.lines().count(), 3, "{ctx}: {list}");
    let json: serde_json::Value = serde_json::from_str(&kit_ok(
        &empty,
        &ks,
        &["mount", "--list", "--format", "json"],
    ))
    .unwrap();
    let paths = kit_ok(&empty, &ks, &["mount", "--list", "-q"]);
    assert_eq!(json.as_array().map(Vec::len), Some(2), "{ctx}: {json}");
    assert!(paths.lines().any(|p| p == fpath), "{ctx}: {paths}");
    assert!(
        json[0]["holders"].is_array() && json[0]["path"].is_string(),
        "{json}"
    );
    // A daemon restart keeps the mounts and their records.
    ks.restart();
    ctd.ctr_ok_after_restart(&["snapshots", "--snapshotter", "kitsnap", "ls"]);
    assert_eq!(
        kit_ok(&empty, &ks, &["mount", "--list"]),
        list,
        "{ctx}: mounts after a restart"
    );
    assert!(Path::new(&fpath).join("data/train.csv").exists(), "{ctx}");
    // A mounted view keeps its ModelKit alive through `images rm` + GC.
    ctd.ctr_ok(&["images", "rm", "--sync", &kits.a]);
    assert_eq!(
        sha256_hex(&std::fs::read(Path::new(&path).join("model.bin")).unwrap()),
        kits.model_sha,
        "{ctx}: GC removed a mounted view's layers"
    );
    kit_ok(&empty, &ks, &["umount", &path]);
    kit_ok(&empty, &ks, &["umount", &fpath]);
    assert!(!Path::new(&path).exists(), "{ctx}: mount dir left");

    // --- rootfs composition: the kit under /models as extra lower layers of the image.
    let label = format!(
        "containerd.io/snapshot/kitsnap.modelkit={}:/models/llm",
        kits.b
    );
    let (ok, out) = run_out(
        &ctd,
        &[
            "run",
            "--rm",
            "--snapshotter",
            "kitsnap",
            "--snapshotter-label",
            &label,
            IMAGE,
            "c1",
            "sh",
            "-c",
            "sha256sum /models/llm/model.bin && cat /models/llm/README.md && ls /bin/busybox",
        ],
    );
    assert!(
        ok && out.contains(&kits.model_sha) && out.contains("# B, other docs"),
        "{ctx}: composed rootfs:\n{out}\n{}",
        tail(&ks.log())
    );
    // No copy: the tree's file is the snapshot's file (one inode, two links at least).
    let trees = ks.root.join("trees");
    let (ok, out) = run_out(
        &ctd,
        &[
            "run",
            "--rm",
            "--snapshotter",
            "kitsnap",
            "--snapshotter-label",
            &label,
            IMAGE,
            "c2",
            "sh",
            "-c",
            "stat -c %h /models/llm/model.bin; echo new > /models/llm/model.bin; cat /models/llm/model.bin",
        ],
    );
    assert!(
        ok && out.contains("new"),
        "{ctx}: a container's write lands in its own upper layer:\n{out}"
    );
    let links: u64 = out
        .lines()
        .next()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        links >= 2,
        "{ctx}: model file not hardlinked (links {links})"
    );
    let p2 = kit_ok(&empty, &ks, &["mount", &kits.b]).trim().to_string();
    assert_eq!(
        sha256_hex(&std::fs::read(Path::new(&p2).join("model.bin")).unwrap()),
        kits.model_sha,
        "{ctx}: the shared copy changed"
    );
    kit_ok(&empty, &ks, &["umount", &p2]);
    // containerd removes a container's snapshot from the backend at its next GC.
    let tree_count = || std::fs::read_dir(&trees).map(|d| d.count()).unwrap_or(0);
    let start = std::time::Instant::now();
    while tree_count() > 0 && start.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        tree_count(),
        0,
        "{ctx}: tree left after its containers went"
    );
    let (ok, out) = run_out(
        &ctd,
        &[
            "run",
            "--rm",
            "--snapshotter",
            "kitsnap",
            "--snapshotter-label",
            "containerd.io/snapshot/kitsnap.modelkit=nowhere.example/none:v1",
            IMAGE,
            "c3",
            "true",
        ],
    );
    assert!(!ok && out.contains("is not on this node"), "{ctx}: {out}");

    // --- df accounts for content and snapshots.
    let df = kit_ok(&empty, &ks, &["df"]);
    assert!(
        df.contains(&kits.b) && df.contains("On this node"),
        "{ctx}: {df}"
    );
    let dfj: serde_json::Value =
        serde_json::from_str(&kit_ok(&empty, &ks, &["df", "--format", "json"])).unwrap();
    assert!(
        dfj["kits"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k["reference"] == kits.b.as_str()))
            && dfj["totalBytes"].as_u64().is_some_and(|t| t > 0),
        "{ctx}: {dfj}"
    );
    let refs = kit_ok(
        &empty,
        &ks,
        &["df", "--format", "{{.Reference}} {{.Layers}}"],
    );
    assert!(
        refs.lines().any(|l| l.starts_with(&format!("{} ", kits.b))),
        "{ctx}: {refs}"
    );

    // --- errors: not a ModelKit; a registry failure mid-pull leaves nothing behind.
    if skopeo {
        let dst = format!("docker://{}/images/busybox:1", reg.addr());
        let o = Command::new("skopeo")
            .args([
                "copy",
                "--dest-tls-verify=false",
                &format!("oci-archive:{}", img.display()),
                &dst,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let e = kit_err(
            &empty,
            &ks,
            &[
                "pull",
                "--containerd",
                &format!("{}/images/busybox:1", reg.addr()),
                "--plain-http",
            ],
        );
        assert!(e.contains("not a ModelKit"), "{ctx}: {e}");
    }
    let proxy = registry::start_proxy(&reg.addr(), registry::Faults::default());
    // A kit whose model layer is new to the node, while its dataset layer is not.
    let fresh = dir.join("tree-f");
    model_tree(&fresh, &support::bytes(1 << 20, 99), "# A\n");
    let f_ref = format!("{}/kits/f:v1", proxy.addr());
    support::ok(&store, &["pack", fresh.to_str().unwrap(), "-t", &f_ref]);
    support::ok(&store, &["push", &f_ref, "--plain-http"]);
    let m = serde_json::from_str::<serde_json::Value>(&support::ok(&store, &["inspect", &f_ref]))
        .unwrap()["manifest"]
        .clone();
    let docs_layer = m["layers"][2]["digest"].as_str().unwrap().to_string();
    *proxy.faults.corrupt_digest.lock().unwrap() = Some(docs_layer.clone());
    let before = committed_kitsnap(&ctd);
    let e = kit_err(
        &empty,
        &ks,
        &["pull", "--containerd", &f_ref, "--plain-http"],
    );
    // Either the tar reader or the digest check catches it; the error names the layer.
    assert!(e.contains(&docs_layer[..19]), "{ctx}: {e}");
    assert!(
        !ctd.ctr_ok(&["images", "ls", "-q"]).contains("kits/f"),
        "{ctx}: image registered after a failed pull"
    );
    assert_eq!(
        committed_kitsnap(&ctd),
        before,
        "{ctx}: snapshots of a failed pull stayed"
    );
    let all = ctd.snap_ok(&["ls"]);
    assert!(
        !all.contains("kitsnap-extract"),
        "{ctx}: active extraction left:\n{all}"
    );

    // --- images rm + GC removes every kitsnap snapshot (after the container image too).
    for r in [&kits.b, &kits.gz, &kits.mp, &kits.zst, &IMAGE.to_string()] {
        ctd.ctr_ok(&["images", "rm", "--sync", r]);
    }
    ks.wait_until_empty();
    assert_eq!(
        ks.snapshot_dirs(),
        0,
        "{ctx}: snapshots left after images rm:\n{}",
        ctd.snap_ok(&["ls"])
    );
}

#[test]
fn modelkits_in_containers_with_every_containerd_version() {
    require_containers!();
    require_registry!();
    // Without skopeo only the not-a-ModelKit case is left out (a failure under CI).
    let skopeo = have_cmd("skopeo");
    if !skopeo {
        missing(
            test_name!(),
            "skopeo (apt-get install skopeo); only the not-a-ModelKit case is skipped",
        );
    }
    let _heavy = heavy();
    let versions = versions(test_name!());
    for v in &versions {
        eprintln!("--- containerd {}", v.name);
        suite(v, skopeo);
    }
    assert!(
        !versions.is_empty(),
        "no containerd at all: apt-get install containerd"
    );
}
