//! End-to-end tests of the packaging CLI on generated trees.

use std::fs;
use std::time::Duration;

use kitsnap_core::oci::{LayerType, Manifest, ModelFormat};

use crate::support::*;

fn manifest(store: &std::path::Path, r: &str) -> Manifest {
    serde_json::from_value(
        serde_json::from_str::<serde_json::Value>(&ok(store, &["inspect", r])).unwrap()["manifest"]
            .clone(),
    )
    .unwrap()
}

#[test]
fn round_trip_every_format_and_compression() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    demo_tree(&src);
    let mut expected = files(&src);
    expected.retain(|(p, _)| p != "scratch.log" && p != ".kitignore" && p != "Kitfile");
    for mp in [false, true] {
        for comp in ["none", "gzip", "gzip-fastest", "zstd"] {
            let tag = format!("demo:{comp}-{mp}");
            let mut args = vec![
                "pack",
                src.to_str().unwrap(),
                "-t",
                &tag,
                "--compression",
                comp,
            ];
            if mp {
                args.push("--use-model-pack");
            }
            let digest = ok(&store, &args);
            assert!(digest.trim().starts_with("sha256:"), "{digest}");
            let m = manifest(&store, &tag);
            assert_eq!(
                m.layers.len(),
                7,
                "model, part, code, 2 datasets, docs, prompt"
            );
            for l in &m.layers {
                let lt = LayerType::parse(&l.media_type).expect("known media type");
                assert_eq!(lt.format == ModelFormat::ModelPack, mp);
                // ModelPack names each layer's path; kit writes no layer annotations.
                assert_eq!(l.annotations.contains_key("org.cncf.model.filepath"), mp);
            }
            let out = t.path().join(format!("out-{comp}-{mp}"));
            ok(&store, &["unpack", &tag, "-d", out.to_str().unwrap()]);
            let mut got = files(&out);
            let kitfile = got
                .iter()
                .position(|(p, _)| p == "Kitfile")
                .expect("Kitfile unpacked");
            let (_, kf) = got.remove(kitfile);
            assert!(String::from_utf8(kf).unwrap().contains("demo-model"));
            assert_eq!(got, expected, "{comp} model-pack={mp}");
        }
    }
}

#[test]
fn kit_manifest_matches_kitops_format() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    demo_tree(&src);
    ok(
        &store,
        &[
            "pack",
            src.to_str().unwrap(),
            "-t",
            "demo:v1",
            "--compression",
            "gzip",
        ],
    );
    let m = manifest(&store, "demo:v1");
    // As kit marshals it: neither field is written; the config media type says "ModelKit".
    assert_eq!(m.media_type, None);
    assert_eq!(m.artifact_type, None);
    // No layer annotations but the prompt subtype (kit v1.7 has no prompts layer).
    assert!(
        m.layers.iter().all(|l| l
            .annotations
            .keys()
            .all(|k| k == "ml.kitops.modelkit.layer-subtype")),
        "{:?}",
        m.layers
    );
    assert_eq!(
        m.config.media_type,
        "application/vnd.kitops.modelkit.config.v1+json"
    );
    let types: Vec<&str> = m.layers.iter().map(|l| l.media_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "application/vnd.kitops.modelkit.model.v1.tar+gzip",
            "application/vnd.kitops.modelkit.modelpart.v1.tar+gzip",
            "application/vnd.kitops.modelkit.code.v1.tar+gzip",
            "application/vnd.kitops.modelkit.dataset.v1.tar+gzip",
            "application/vnd.kitops.modelkit.dataset.v1.tar+gzip",
            "application/vnd.kitops.modelkit.docs.v1.tar+gzip",
            "application/vnd.kitops.modelkit.code.v1.tar+gzip",
        ]
    );
    assert_eq!(
        m.layers[6]
            .annotations
            .get("ml.kitops.modelkit.layer-subtype")
            .map(String::as_str),
        Some("prompt")
    );
    assert!(m.annotations.contains_key("ml.kitops.modelkit.cli-version"));
    // The config is the Kitfile as Go would marshal it, with each layer's digest/diffId.
    let cfg = fs::read(store.join("blobs/sha256").join(m.config.digest.hex())).unwrap();
    let cfg = String::from_utf8(cfg).unwrap();
    assert!(cfg.starts_with(r#"{"manifestVersion":"1.0.0","package":{"name":"demo","version":"1.0.0","description":"A demo \u003cmodel\u003e \u0026 friends","license":"Apache-2.0","authors":["Kitsnap Tests"]},"model":{"name":"demo-model","path":"models/weights.safetensors","format":"safetensors","parts":[{"name":"tokenizer","path":"models/tokenizer.json","type":"tokenizer","digest":"sha256:"#), "{cfg}");
    let v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(
        v["model"]["digest"].as_str(),
        Some(m.layers[0].digest.as_str())
    );
    assert_ne!(
        v["model"]["diffId"], v["model"]["digest"],
        "gzip: diffId is the uncompressed digest"
    );
    // Layer tars hold paths relative to the context, parents first, uid 1000 (as kit
    // writes them), mtime 0.
    let blob = fs::File::open(store.join("blobs/sha256").join(m.layers[2].digest.hex())).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    let names: Vec<(String, u64, u64)> = ar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().uid().unwrap(),
                e.header().mtime().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("src".to_string(), 1000, 0),
            ("src/app.py".to_string(), 1000, 0),
            ("src/lib".to_string(), 1000, 0),
            ("src/lib/util.py".to_string(), 1000, 0)
        ]
    );
}

#[test]
fn model_pack_config_and_kitfile_annotation() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    demo_tree(&src);
    ok(
        &store,
        &[
            "pack",
            src.to_str().unwrap(),
            "-t",
            "demo:mp",
            "--use-model-pack",
            "--compression",
            "zstd",
        ],
    );
    let m = manifest(&store, "demo:mp");
    assert_eq!(
        m.artifact_type.as_deref(),
        Some("application/vnd.cncf.model.manifest.v1+json")
    );
    assert_eq!(
        m.config.media_type,
        "application/vnd.cncf.model.config.v1+json"
    );
    assert_eq!(
        m.layers[0].media_type,
        "application/vnd.cncf.model.weight.v1.tar+zstd"
    );
    assert_eq!(
        m.layers[1].media_type,
        "application/vnd.cncf.model.weight.config.v1.tar+zstd"
    );
    assert_eq!(
        m.layers[5].media_type,
        "application/vnd.cncf.model.doc.v1.tar+zstd"
    );
    let cfg: serde_json::Value = serde_json::from_slice(
        &fs::read(store.join("blobs/sha256").join(m.config.digest.hex())).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["modelfs"]["type"], "layers");
    assert_eq!(cfg["modelfs"]["diffIds"].as_array().unwrap().len(), 7);
    assert_eq!(cfg["descriptor"]["name"], "demo");
    assert_eq!(cfg["descriptor"]["licenses"][0], "Apache-2.0");
    assert_eq!(cfg["config"]["format"], "safetensors");
    let kf = m
        .annotations
        .get("ml.kitops.modelkit.kitfile")
        .expect("Kitfile annotation");
    assert!(kf.contains("\"demo-model\""));
    let info = ok(&store, &["info", "demo:mp"]);
    assert!(info.contains("name: demo-model"), "{info}");
}

#[test]
fn packing_is_reproducible_and_deduplicated() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    demo_tree(&src);
    let s1 = t.path().join("s1");
    let s2 = t.path().join("s2");
    let d1 = ok(
        &s1,
        &[
            "pack",
            src.to_str().unwrap(),
            "-t",
            "a:1",
            "--compression",
            "gzip",
        ],
    );
    // New mtimes, a fresh store: the digest must not change.
    for f in ["models/weights.safetensors", "src/app.py"] {
        let p = src.join(f);
        let data = fs::read(&p).unwrap();
        let before = fs::metadata(&p).unwrap().modified().unwrap();
        fs::write(&p, data).unwrap();
        // Rewritten an hour later, as far as the file system is concerned.
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(before + Duration::from_secs(3600))
            .unwrap();
        assert_ne!(fs::metadata(&p).unwrap().modified().unwrap(), before);
    }
    let d2 = ok(
        &s2,
        &[
            "pack",
            src.to_str().unwrap(),
            "-t",
            "b:2",
            "--compression",
            "gzip",
        ],
    );
    assert_eq!(d1, d2);

    // A second kit sharing the weights adds only its new blobs.
    let before = blob_count(&s1);
    fs::write(src.join("README.md"), b"# Changed docs\n").unwrap();
    ok(
        &s1,
        &[
            "pack",
            src.to_str().unwrap(),
            "-t",
            "a:2",
            "--compression",
            "gzip",
        ],
    );
    // New docs layer, new config, new manifest; the weights and the rest are shared.
    assert_eq!(blob_count(&s1), before + 3);
}

#[test]
fn selective_unpack_with_filters() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    demo_tree(&src);
    ok(&store, &["pack", src.to_str().unwrap(), "-t", "demo:v1"]);
    let names = |d: &std::path::Path| files(d).into_iter().map(|f| f.0).collect::<Vec<_>>();

    let o = t.path().join("o1");
    ok(
        &store,
        &[
            "unpack",
            "demo:v1",
            "-d",
            o.to_str().unwrap(),
            "--filter",
            "model",
        ],
    );
    assert_eq!(
        names(&o),
        ["models/tokenizer.json", "models/weights.safetensors"]
    );

    let o = t.path().join("o2");
    ok(
        &store,
        &[
            "unpack",
            "demo:v1",
            "-d",
            o.to_str().unwrap(),
            "--filter",
            "datasets:train",
            "--filter",
            "kitfile",
        ],
    );
    assert_eq!(names(&o), ["Kitfile", "data/train.csv"]);

    let o = t.path().join("o3");
    ok(
        &store,
        &[
            "unpack",
            "demo:v1",
            "-d",
            o.to_str().unwrap(),
            "--filter",
            "code,docs:src,README.md",
        ],
    );
    assert_eq!(names(&o), ["README.md", "src/app.py", "src/lib/util.py"]);

    let o = t.path().join("o4");
    ok(
        &store,
        &[
            "unpack",
            "demo:v1",
            "-d",
            o.to_str().unwrap(),
            "--filter",
            "prompts",
            "--filter",
            "model:tokenizer",
        ],
    );
    assert_eq!(names(&o), ["models/tokenizer.json", "prompts/system.md"]);

    let e = fails(
        &store,
        &[
            "unpack",
            "demo:v1",
            "-d",
            o.to_str().unwrap(),
            "--filter",
            "weights",
        ],
    );
    assert!(e.contains("invalid filter type"), "{e}");
    // Existing files are kept unless --overwrite.
    let e = fails(
        &store,
        &[
            "unpack",
            "demo:v1",
            "-d",
            o.to_str().unwrap(),
            "--filter",
            "prompts",
        ],
    );
    assert!(e.contains("already exists"), "{e}");
    ok(
        &store,
        &[
            "unpack",
            "demo:v1",
            "-d",
            o.to_str().unwrap(),
            "--filter",
            "prompts",
            "--overwrite",
        ],
    );
}

#[test]
fn tag_list_remove_and_gc() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    demo_tree(&src);
    let d = ok(&store, &["pack", src.to_str().unwrap(), "-t", "demo:v1"]);
    ok(
        &store,
        &["tag", "demo:v1", "registry.example.com/team/demo:prod"],
    );
    let list = ok(&store, &["list"]);
    assert!(
        list.contains("demo ") && list.contains("registry.example.com/team/demo"),
        "{list}"
    );
    assert!(list.contains(d.trim()));
    let by_digest = ok(&store, &["inspect", &format!("demo@{}", d.trim())]);
    assert!(by_digest.contains("schemaVersion"));
    ok(&store, &["remove", "demo:v1"]);
    assert!(blob_count(&store) > 0, "still referenced by the other tag");
    let e = fails(&store, &["inspect", "demo:v1"]);
    assert!(e.contains("not found"), "{e}");
    ok(&store, &["remove", "registry.example.com/team/demo:prod"]);
    assert_eq!(blob_count(&store), 0, "garbage collected");
    assert!(fails(&store, &["remove", "nothing:here"]).contains("not found"));
    assert!(fails(&store, &["remove"]).contains("--all"));
}

/// kit's remove semantics: `--all` takes untagged ModelKits only (a kit user's tagged
/// kits survive it), `--all --force` takes everything, `--force` with a tag takes every
/// tag of that manifest, `NAME:T1,T2` removes several tags.
#[test]
fn remove_all_keeps_tagged_kits_unless_forced() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    demo_tree(&src);
    ok(&store, &["pack", src.to_str().unwrap(), "-t", "demo:v1"]);
    // A second pack under the same tag leaves the first one untagged.
    std::fs::write(src.join("README.md"), "changed\n").unwrap();
    ok(&store, &["pack", src.to_str().unwrap(), "-t", "demo:v1"]);
    ok(&store, &["tag", "demo:v1", "demo:v2"]);
    ok(&store, &["tag", "demo:v1", "demo:v3"]);
    ok(&store, &["tag", "demo:v1", "other:keep"]);
    let list = ok(&store, &["list"]);
    assert!(list.contains("<none>"), "an untagged kit: {list}");

    let e = fails(&store, &["remove", "--all", "demo:v1"]);
    assert!(e.contains("--all"), "{e}");
    ok(&store, &["remove", "--all"]);
    let list = ok(&store, &["list"]);
    assert!(!list.contains("<none>"), "untagged kit removed: {list}");
    assert!(
        list.contains("v1") && list.contains("keep"),
        "tagged kits kept: {list}"
    );

    ok(&store, &["remove", "demo:v2,v3"]);
    let list = ok(&store, &["list"]);
    assert!(
        !list.contains("v2") && !list.contains("v3") && list.contains("v1"),
        "{list}"
    );

    ok(&store, &["remove", "--force", "demo:v1"]);
    let list = ok(&store, &["list"]);
    assert!(
        !list.contains("keep"),
        "--force takes every tag of the manifest: {list}"
    );
    assert_eq!(blob_count(&store), 0);

    ok(&store, &["pack", src.to_str().unwrap(), "-t", "demo:v1"]);
    ok(&store, &["remove", "--all", "--force"]);
    assert_eq!(blob_count(&store), 0, "--all --force removes everything");
}

/// `list` in kit's shapes (table, json, Go template, plus -q), `inspect`'s kit document,
/// and `version`.
#[test]
fn list_inspect_and_version_output() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    demo_tree(&src);
    let d = ok(&store, &["pack", src.to_str().unwrap(), "-t", "demo:v1"]);
    let d = d.trim();
    ok(&store, &["tag", "demo:v1", "demo:v2"]);
    let table = ok(&store, &["list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and a line per tag: {table}");
    assert!(
        lines[0].starts_with("REPOSITORY   TAG   MAINTAINER      NAME   SIZE"),
        "{table}"
    );
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cols[0], "demo", "localhost/ is not shown: {table}");
    assert_eq!(cols.last(), Some(&d));

    let json: serde_json::Value =
        serde_json::from_str(&ok(&store, &["list", "--format", "json"])).unwrap();
    let kits = json.as_array().unwrap();
    assert_eq!(kits.len(), 1, "one object per ModelKit: {json}");
    let keys: Vec<&str> = kits[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in ["repo", "digest", "tags", "modelName", "size", "author"] {
        assert!(keys.contains(&k), "{k} in {keys:?}");
    }
    assert_eq!(kits[0]["tags"], serde_json::json!(["v1", "v2"]));

    let tpl = ok(
        &store,
        &[
            "list",
            "--format",
            "{{.Repo}}@{{.Digest}} {{join .Tags \",\"}}",
        ],
    );
    assert_eq!(tpl, format!("demo@{d} v1,v2\n"));
    assert_eq!(ok(&store, &["list", "-q"]), format!("{d}\n"));
    let e = fails(&store, &["list", "--format", "{{.Repo"]);
    assert!(e.contains("not a Go template"), "{e}");

    let doc: serde_json::Value =
        serde_json::from_str(&ok(&store, &["inspect", "demo:v1"])).unwrap();
    assert_eq!(doc["digest"], d);
    assert_eq!(doc["cliVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["kitfile"]["package"]["name"], "demo");
    assert_eq!(doc["manifest"]["schemaVersion"], 2);

    let v = ok(&store, &["version"]);
    assert!(
        v.starts_with(&format!("Version: {}\nCommit: ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(v.contains("Built: ") && v.contains("ModelPack"), "{v}");
    let vj: serde_json::Value = serde_json::from_str(&ok(&store, &["version", "--json"])).unwrap();
    assert!(vj["commit"].as_str().is_some_and(|c| !c.is_empty()));
}

/// `unpack -i` (kit's --ignore-existing) leaves existing files alone and writes the rest;
/// without it a conflict stops the run before anything is written.
#[test]
fn unpack_ignore_existing() {
    let t = tempfile::tempdir().unwrap();
    let (src, store, out) = (
        t.path().join("src"),
        t.path().join("store"),
        t.path().join("out"),
    );
    demo_tree(&src);
    ok(&store, &["pack", src.to_str().unwrap(), "-t", "demo:v1"]);
    std::fs::create_dir_all(out.join("src")).unwrap();
    std::fs::write(out.join("src/app.py"), "mine\n").unwrap();
    std::fs::write(out.join("Kitfile"), "my kitfile\n").unwrap();
    let e = fails(&store, &["unpack", "demo:v1", "-d", out.to_str().unwrap()]);
    assert!(e.contains("already exists"), "{e}");
    assert!(
        !out.join("README.md").exists(),
        "nothing written before the conflict check"
    );
    let e = fails(
        &store,
        &["unpack", "demo:v1", "-d", out.to_str().unwrap(), "-i", "-o"],
    );
    assert!(e.contains("cannot be used with"), "{e}");
    ok(
        &store,
        &["unpack", "demo:v1", "-d", out.to_str().unwrap(), "-i"],
    );
    assert_eq!(
        std::fs::read_to_string(out.join("src/app.py")).unwrap(),
        "mine\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("Kitfile")).unwrap(),
        "my kitfile\n"
    );
    assert_eq!(
        std::fs::read(out.join("models/weights.safetensors")).unwrap(),
        std::fs::read(src.join("models/weights.safetensors")).unwrap()
    );
    assert!(out.join("src/lib/util.py").exists() && out.join("README.md").exists());
}

#[test]
fn pack_refuses_bad_kitfiles() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    fs::create_dir_all(src.join("m")).unwrap();
    fs::write(src.join("m/w.bin"), b"w").unwrap();
    let case = |kitfile: &str| {
        fs::write(src.join("Kitfile"), kitfile).unwrap();
        fails(&store, &["pack", src.to_str().unwrap(), "-t", "x:1"])
    };
    let e = case("manifestVersion: 1.0.0\nmodel:\n  path: m/w.bin\n  wieghts: 1\n");
    assert!(
        e.contains("unknown field `wieghts`") && e.contains("line 4"),
        "{e}"
    );
    let e = case("manifestVersion: 1.0.0\ncode:\n  - path: ../outside\n");
    assert!(e.contains("outside the context"), "{e}");
    let e = case("manifestVersion: 1.0.0\ncode:\n  - path: missing\n");
    assert!(e.contains("does not exist"), "{e}");
    // A symlink inside the context that leads out of it.
    std::os::unix::fs::symlink("/etc", src.join("etc-link")).unwrap();
    let e = case("manifestVersion: 1.0.0\ncode:\n  - path: etc-link/hostname\n");
    assert!(e.contains("outside the context"), "{e}");
    assert!(
        fails(
            &store,
            &["pack", t.path().join("nope").to_str().unwrap(), "-t", "x:1"]
        )
        .contains("nope")
    );
    let list = ok(&store, &["list"]);
    assert_eq!(list.lines().count(), 1, "nothing was stored: {list}");
}

#[test]
fn init_writes_a_packable_kitfile() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("store"));
    demo_tree(&src);
    fs::remove_file(src.join("Kitfile")).unwrap();
    ok(
        &store,
        &[
            "init",
            src.to_str().unwrap(),
            "--name",
            "gen",
            "--author",
            "me",
        ],
    );
    let kf = fs::read_to_string(src.join("Kitfile")).unwrap();
    assert!(kf.contains("name: gen") && kf.contains("models"), "{kf}");
    assert!(fails(&store, &["init", src.to_str().unwrap()]).contains("--force"));
    ok(&store, &["pack", src.to_str().unwrap(), "-t", "gen:1"]);
    let out = t.path().join("out");
    ok(&store, &["unpack", "gen:1", "-d", out.to_str().unwrap()]);
    assert_eq!(
        fs::read(out.join("models/weights.safetensors")).unwrap(),
        fs::read(src.join("models/weights.safetensors")).unwrap()
    );
    assert!(!out.join("scratch.log").exists(), ".kitignore honoured");
}

#[test]
fn model_from_parent_modelkit() {
    let t = tempfile::tempdir().unwrap();
    let (base, child, store) = (
        t.path().join("base"),
        t.path().join("child"),
        t.path().join("store"),
    );
    demo_tree(&base);
    ok(&store, &["pack", base.to_str().unwrap(), "-t", "base:v1"]);
    fs::create_dir_all(child.join("src")).unwrap();
    fs::write(child.join("src/finetune.py"), b"train()\n").unwrap();
    fs::write(
        child.join("Kitfile"),
        "manifestVersion: 1.0.0\nmodel:\n  path: localhost/base:v1\ncode:\n  - path: src\n",
    )
    .unwrap();
    ok(&store, &["pack", child.to_str().unwrap(), "-t", "child:v1"]);
    let m = manifest(&store, "child:v1");
    assert_eq!(
        m.layers.len(),
        1,
        "the parent's model is referenced, not copied"
    );
    let out = t.path().join("out");
    ok(
        &store,
        &[
            "unpack",
            "child:v1",
            "-d",
            out.to_str().unwrap(),
            "--filter",
            "model",
        ],
    );
    assert_eq!(
        fs::read(out.join("models/weights.safetensors")).unwrap(),
        fs::read(base.join("models/weights.safetensors")).unwrap()
    );
    ok(&store, &["remove", "base:v1"]);
    let e = fails(
        &store,
        &[
            "unpack",
            "child:v1",
            "-d",
            t.path().join("o2").to_str().unwrap(),
            "--filter",
            "model",
        ],
    );
    assert!(e.contains("parent ModelKit"), "{e}");
}

/// `unpack REF` from a registry into an empty directory downloads several layers at once
/// (each written as it arrives, at most `TransferOptions::concurrency`), and a bad layer
/// fails the unpack with its digest named.
#[test]
fn unpack_from_a_registry_streams_layers_at_once() {
    use crate::support::registry::{Faults, RegistryProc, start_proxy};
    use std::sync::atomic::Ordering;
    require_registry!();
    let t = tempfile::tempdir().unwrap();
    let reg = RegistryProc::start(&t.path().join("registry"), None, None);
    let proxy = start_proxy(&reg.addr(), Faults::default());
    let src = t.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    let mut kitfile = String::from(
        "manifestVersion: 1.0.0\npackage:\n  name: wide\nmodel:\n  path: model.bin\ndatasets:\n",
    );
    fs::write(src.join("model.bin"), bytes(256 << 10, 70)).unwrap();
    for i in 0..5u64 {
        fs::write(src.join(format!("d/{i}.bin")), bytes(256 << 10, 71 + i)).unwrap();
        kitfile.push_str(&format!("  - name: d{i}\n    path: d/{i}.bin\n"));
    }
    fs::write(src.join("Kitfile"), &kitfile).unwrap();
    let store = t.path().join("store");
    let r = format!("{}/wide/kit:v1", proxy.addr());
    ok(&store, &["pack", src.to_str().unwrap(), "-t", &r]);
    ok(&store, &["push", &r, "--plain-http"]);
    let m = manifest(&store, &r);

    let empty = t.path().join("empty-store");
    let out = t.path().join("out");
    proxy
        .faults
        .throttle_blob_bps
        .store(1 << 20, Ordering::SeqCst);
    ok(
        &empty,
        &["unpack", &r, "-d", out.to_str().unwrap(), "--plain-http"],
    );
    proxy.faults.throttle_blob_bps.store(0, Ordering::SeqCst);
    let peak = proxy.faults.blob_gets_peak.load(Ordering::SeqCst);
    assert!(
        (2..=4).contains(&peak),
        "{peak} layer download(s) at once; want 2..=4"
    );
    let mut want = files(&src);
    want.retain(|(p, _)| p != "Kitfile");
    let mut got = files(&out);
    got.retain(|(p, _)| p != "Kitfile");
    assert!(got == want, "unpacked files differ from the source");

    let bad = m.layers[3].digest.to_string();
    *proxy.faults.corrupt_digest.lock().unwrap() = Some(bad.clone());
    let out2 = t.path().join("out2");
    let e = fails(
        &empty,
        &["unpack", &r, "-d", out2.to_str().unwrap(), "--plain-http"],
    );
    assert!(e.contains(&bad), "the error names the bad layer: {e}");
}
