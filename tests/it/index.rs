//! ModelKit indexes (`kitsnap index`, `unpack -l`, `pull -l`), modelled on kit's own
//! tests (`testing/index_test.go` and `testing/testdata/index/*.yaml` in kitops): two
//! variants of one model packed into one repository, grouped by an index and chosen by
//! label. The real `kit` is not needed (kit v1.7.0 has no index verbs).

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::registry::RegistryProc;
use crate::support::*;

/// A private store and work directory.
struct Ctx {
    dir: tempfile::TempDir,
}

impl Ctx {
    fn new() -> Ctx {
        Ctx {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    fn store(&self) -> PathBuf {
        self.p("store")
    }

    fn ok(&self, args: &[&str]) -> String {
        ok(&self.store(), args)
    }

    /// Runs and returns stdout and stderr together, as kit's tests read output.
    fn out(&self, args: &[&str]) -> String {
        let o = run(&self.store(), args);
        assert!(
            o.status.success(),
            "kitsnap {args:?} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    fn fails(&self, args: &[&str]) -> String {
        fails(&self.store(), args)
    }

    /// `kitsnap index add ARGS...`
    fn index_add(&self, args: &[&str]) -> String {
        self.ok(&[&["index", "add"][..], args].concat())
    }

    /// Packs a one-file model (`model.bin` holding `weights`) as `tag`; returns its digest.
    fn pack(&self, tag: &str, weights: &str) -> String {
        let dir = self.p(&format!("src-{}", tag.replace(['/', ':'], "_")));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("Kitfile"),
            "manifestVersion: 1.0.0\npackage:\n  name: index-testing\nmodel:\n  path: model.bin\n",
        )
        .unwrap();
        fs::write(dir.join("model.bin"), weights).unwrap();
        self.ok(&["pack", dir.to_str().unwrap(), "-t", tag])
            .trim()
            .to_string()
    }

    /// kit's `setupIndexTest`: q4_0 and q8_0 variants of test/model.
    fn two_variants(&self, repo: &str) -> (String, String) {
        (
            self.pack(&format!("{repo}:q4_0"), "weights-q4"),
            self.pack(&format!("{repo}:q8_0"), "weights-q8"),
        )
    }

    /// `two_variants` of `repo` grouped by the index `{repo}:all`, each labelled with its
    /// quantization; returns the two ModelKit digests and the index's.
    fn labelled_index(&self, repo: &str) -> (String, String, String) {
        let (q4, q8) = self.two_variants(repo);
        let all = format!("{repo}:all");
        self.ok(&["index", "create", &all]);
        let mut index = String::new();
        for q in ["q4_0", "q8_0"] {
            let label = format!("quantization={q}");
            index = self.index_add(&[&all, &format!("{repo}:{q}"), "-l", &label]);
        }
        (q4, q8, index.trim().to_string())
    }

    /// `unpack INDEX -l LABEL -d <dir> EXTRA...`; returns the model's bytes.
    fn unpack_selected(&self, index: &str, label: &str, dir: &str, extra: &[&str]) -> String {
        let d = self.p(dir);
        let args = [
            &["unpack", index, "-l", label, "-d", d.to_str().unwrap()][..],
            extra,
        ]
        .concat();
        self.ok(&args);
        model_bytes(&d)
    }
}

fn line_matches(out: &str, pred: impl Fn(&[&str]) -> bool) -> bool {
    out.lines()
        .any(|l| pred(&l.split_whitespace().collect::<Vec<_>>()))
}

fn model_bytes(dir: &Path) -> String {
    fs::read_to_string(dir.join("model.bin")).unwrap()
}

#[test]
fn round_trip_create_add_info_inspect_remove_delete() {
    let c = Ctx::new();
    let (q4, q8) = c.two_variants("test/model");
    let created = c.out(&["index", "create", "test/model:all"]);
    assert!(
        created.contains("Created index test/model:all (digest sha256:"),
        "{created}"
    );
    let again = c.fails(&["index", "create", "test/model:all"]);
    assert!(
        again.contains("index test/model:all already exists"),
        "{again}"
    );
    let empty = c.ok(&["index", "info", "test/model:all"]);
    assert!(empty.contains("Index contains no ModelKits"), "{empty}");

    let added = c.out(&["index", "add", "test/model:all", "test/model:q4_0"]);
    assert!(
        added.contains("Added test/model:q4_0 to index test/model:all (digest sha256:"),
        "{added}"
    );
    c.index_add(&["test/model:all", "test/model:q8_0"]);
    let info = c.ok(&["index", "info", "test/model:all"]);
    assert!(info.contains("2 ModelKits:"), "{info}");
    assert!(info.contains(&q4) && info.contains(&q8), "{info}");
    let inspect = c.ok(&["index", "inspect", "test/model:all"]);
    let doc: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(
        doc["artifactType"],
        "application/vnd.kitops.modelkit.index.v1+json"
    );
    assert_eq!(doc["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(doc["manifests"][0]["digest"], q4.as_str());
    assert_eq!(
        doc["manifests"][0]["artifactType"],
        "application/vnd.kitops.modelkit.manifest.v1+json"
    );

    let removed = c.out(&["index", "remove", "test/model:all", "test/model:q4_0"]);
    assert!(
        removed.contains("Removed test/model:q4_0 from index test/model:all (digest "),
        "{removed}"
    );
    let info = c.ok(&["index", "info", "test/model:all"]);
    assert!(!info.contains(&q4) && info.contains(&q8), "{info}");
    let absent = c.fails(&[
        "index",
        "remove",
        "test/model:all",
        &format!("test/model@{q4}"),
    ]);
    assert!(
        absent.contains(&format!("index test/model:all does not contain {q4}")),
        "{absent}"
    );

    let deleted = c.out(&["index", "delete", "test/model:all"]);
    assert!(
        deleted.contains("Deleted index test/model:all (digest "),
        "{deleted}"
    );
    let gone = c.fails(&["index", "info", "test/model:all"]);
    assert!(
        gone.contains("could not find index test/model:all in local storage"),
        "{gone}"
    );
    // An index verb on a ModelKit's reference says what it is.
    let kit = c.fails(&["index", "delete", "test/model:q8_0"]);
    assert!(kit.contains("is not a ModelKit index"), "{kit}");
}

#[test]
fn labels_annotations_and_add_by_digest() {
    let c = Ctx::new();
    let (_, q8) = c.two_variants("test/model");
    c.ok(&["index", "create", "test/model:all"]);
    c.index_add(&[
        "test/model:all",
        "test/model:q4_0",
        "-l",
        "quantization=q4_0",
        "-l",
        "vram=6GB",
        "-l",
        r#"gpuArchs:=["sm_80", "sm_90"]"#,
        "-l",
        "activeParameters:=7000000000",
        "-l",
        "huge:=123456789012345678901234567890.50",
        "--annotate",
        "org.example.tested=true",
    ]);
    let info = c.ok(&["index", "info", "test/model:all"]);
    for want in [
        "quantization=q4_0",
        "vram=6GB",
        r#"gpuArchs=["sm_80","sm_90"]"#,
        "activeParameters=7000000000",
        "org.example.tested=true",
    ] {
        assert!(info.contains(want), "{want} missing:\n{info}");
    }
    // The tag the ModelKit was added by is recorded and has its own column.
    assert!(
        line_matches(&info, |w| w.first() == Some(&"test/model:q4_0")
            && w.get(1..3) == Some(&["2.0", "KiB"][..])),
        "{info}"
    );
    assert!(!info.contains("ml.kitops.modelkit"), "{info}");

    let inspect = c.ok(&["index", "inspect", "test/model:all"]);
    assert!(inspect.contains(r#""quantization": "q4_0""#), "{inspect}");
    assert!(
        inspect.contains(r#""org.example.tested": "true""#),
        "{inspect}"
    );
    assert!(
        inspect.contains(r#""ml.kitops.modelkit.original-tag": "q4_0""#),
        "{inspect}"
    );
    // Numbers survive byte for byte: no 7e+09, no rounding of the big one.
    assert!(
        inspect.contains(r#""activeParameters": 7000000000"#),
        "{inspect}"
    );
    assert!(
        inspect.contains(r#""huge": 123456789012345678901234567890.50"#),
        "{inspect}"
    );
    let json = c.ok(&["index", "info", "test/model:all", "--format", "json"]);
    assert!(json.contains(r#""activeParameters": 7000000000"#), "{json}");
    assert!(
        json.lines().any(|l| l.trim() == r#""size": 2048,"#),
        "{json}"
    );

    // Re-adding merges: the untouched label survives, the removed one goes.
    c.index_add(&["test/model:all", "test/model:q4_0", "-l", "vram-"]);
    let info = c.ok(&["index", "info", "test/model:all"]);
    assert!(info.contains("quantization=q4_0"), "{info}");
    assert!(!info.contains("vram="), "{info}");
    assert!(info.contains("org.example.tested=true"), "{info}");
    c.index_add(&[
        "test/model:all",
        "test/model:q4_0",
        "--annotate",
        "org.example.tested-",
    ]);
    let info = c.ok(&["index", "info", "test/model:all"]);
    assert!(!info.contains("org.example.tested"), "{info}");

    // Added by digest: no reference recorded, shown as <none>.
    c.index_add(&["test/model:all", &format!("test/model@{q8}")]);
    let info = c.ok(&["index", "info", "test/model:all"]);
    assert!(
        line_matches(&info, |w| w.first() == Some(&"<none>")
            && w.last() == Some(&q8.as_str())),
        "{info}"
    );

    for (args, msg) in [
        (
            vec!["-l", "bad"],
            "expected key=value to set, or key- to remove",
        ),
        (vec!["-l", "has space=x"], "invalid label key"),
        (vec!["-l", "x:=[1,"], "value is not valid JSON"),
        (vec!["--annotate", "a:=1"], "annotation values are strings"),
        (vec!["--annotate", "ml.kitops.modelkit.size=1"], "reserved"),
    ] {
        let mut full = vec!["index", "add", "test/model:all", "test/model:q8_0"];
        full.extend(args);
        let err = c.fails(&full);
        assert!(err.contains(msg), "{full:?}: {err}");
    }
    let other = c.pack("other/model:v1", "other");
    assert!(!other.is_empty());
    let err = c.fails(&["index", "add", "test/model:all", "other/model:v1"]);
    assert!(
        err.contains("is not in the same repository as index"),
        "{err}"
    );
    let err = c.fails(&["index", "add", "test/model:none", "test/model:q8_0"]);
    assert!(
        err.contains("use 'kitsnap index create' to create it"),
        "{err}"
    );
}

#[test]
fn list_hides_indexes_and_delete_keeps_the_modelkits() {
    let c = Ctx::new();
    let (q4, q8) = c.two_variants("test/model");
    c.ok(&["index", "create", "test/model:all"]);
    c.index_add(&["test/model:all", "test/model:q4_0"]);
    c.index_add(&["test/model:all", "test/model:q8_0"]);
    let list = c.ok(&["list"]);
    assert!(!line_matches(&list, |w| w.get(1) == Some(&"all")), "{list}");
    let indexes = c.ok(&["index", "list"]);
    assert!(
        line_matches(&indexes, |w| w.get(..3)
            == Some(&["test/model", "all", "2"][..])),
        "{indexes}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&c.ok(&["index", "list", "--format", "json"])).unwrap();
    assert_eq!(json[0]["modelKits"], 2);
    assert_eq!(json[0]["tags"][0], "all");

    c.ok(&["index", "delete", "test/model:all"]);
    let list = c.ok(&["list"]);
    for (tag, d) in [("q4_0", &q4), ("q8_0", &q8)] {
        assert!(
            line_matches(&list, |w| w.get(..2) == Some(&["test/model", tag][..])
                && w.last() == Some(&d.as_str())),
            "{list}"
        );
        // inspect and info read the manifest and the config: both must have survived.
        let r = format!("test/model:{tag}");
        assert!(c.ok(&["inspect", &r]).contains("index-testing"));
        assert!(c.ok(&["info", &r]).contains("index-testing"));
        c.ok(&["unpack", &r, "-d", c.p(tag).to_str().unwrap()]);
    }
    assert!(!line_matches(&c.ok(&["index", "list"]), |w| w.first()
        == Some(&"test/model")));
}

#[test]
fn remove_keeps_a_modelkit_while_an_index_refers_to_it() {
    let c = Ctx::new();
    let (q4, _) = c.two_variants("test/model");
    c.ok(&["index", "create", "test/model:all"]);
    c.index_add(&[
        "test/model:all",
        "test/model:q4_0",
        "-l",
        "quantization=q4_0",
    ]);
    c.ok(&["remove", "test/model:q4_0"]);
    c.ok(&["remove", "--all", "--force"]);
    assert!(!c.ok(&["list"]).contains("q4_0"));
    // The index still has it: its recorded size, and its bytes.
    let info = c.ok(&["index", "info", "test/model:all"]);
    assert!(
        line_matches(&info, |w| w.first() == Some(&"test/model:q4_0")
            && w.get(3) == Some(&"quantization=q4_0")),
        "{info}"
    );
    assert_eq!(
        c.unpack_selected("test/model:all", "quantization=q4_0", "u", &[]),
        "weights-q4"
    );
    // With the index gone nothing keeps it: its manifest blob goes.
    let q4_blob = c
        .store()
        .join("blobs/sha256")
        .join(q4.trim_start_matches("sha256:"));
    assert!(q4_blob.exists());
    c.ok(&["index", "delete", "test/model:all"]);
    assert!(!q4_blob.exists(), "{} is still there", q4_blob.display());
}

/// ModelKit verbs given an index (its digest or a tag only an index has) refuse and name
/// `kitsnap index`; they never drop it.
#[test]
fn modelkit_verbs_leave_indexes_alone() {
    let c = Ctx::new();
    c.two_variants("test/model");
    let digest = c
        .ok(&["index", "create", "test/model:all"])
        .trim()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    c.index_add(&["test/model:all", "test/model:q4_0"]);
    let digest = c
        .ok(&["index", "add", "test/model:all", "test/model:q8_0"])
        .trim()
        .to_string();
    let by_digest = format!("test/model@{digest}");
    let e = c.fails(&["remove", &by_digest]);
    assert!(
        e.contains("ModelKit index") && e.contains("kitsnap index"),
        "{e}"
    );
    let e = c.fails(&["tag", &by_digest, "test/model:x"]);
    assert!(e.contains("is a ModelKit index"), "{e}");
    let e = c.fails(&["remove", "test/model:all"]);
    assert!(
        e.contains("`kitsnap index delete") && e.contains("test/model:all`"),
        "{e}"
    );
    let e = c.fails(&["index", "info", "test/model:q4_0"]);
    assert!(e.contains("could not find index"), "{e}");
    let info = c.ok(&["index", "info", "test/model:all"]);
    assert!(info.contains("2 ModelKits:"), "{info}");
    // --all alone has nothing to delete (kitsnap keeps no untagged index).
    let out = c.out(&["index", "delete", "--all"]);
    assert!(out.contains("No untagged indexes to delete"), "{out}");
    c.ok(&["index", "info", "test/model:all"]);
}

/// An index blob that cannot be read stops garbage collection: the ModelKits only it keeps
/// are not freed on a guess.
#[test]
fn gc_stops_on_an_unreadable_index() {
    let c = Ctx::new();
    let (q4, _) = c.two_variants("test/model");
    c.ok(&["index", "create", "test/model:all"]);
    let index = c
        .index_add(&["test/model:all", "test/model:q4_0"])
        .trim()
        .to_string();
    c.ok(&["remove", "test/model:q4_0"]);
    let blob = |d: &str| {
        c.store()
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    assert!(blob(&q4).exists(), "the index keeps q4_0");
    fs::write(blob(&index), b"{not an index").unwrap();
    let e = c.fails(&["remove", "test/model:q8_0"]);
    assert!(
        e.contains("garbage collection stopped") && e.contains("kitsnap index delete"),
        "{e}"
    );
    assert!(
        blob(&q4).exists(),
        "q4_0 was collected although an index may refer to it"
    );
}

#[test]
fn an_index_and_a_modelkit_share_a_reference() {
    let c = Ctx::new();
    c.pack("test/model:q4_0", "weights-q4");
    c.pack("test/model:all", "weights-all");
    c.ok(&["index", "create", "test/model:all"]);
    c.index_add(&["test/model:all", "test/model:q4_0"]);
    let kit = c.ok(&["inspect", "test/model:all"]);
    // `inspect` is the ModelKit's document (kit 1.7's manifest has no mediaType).
    assert!(
        kit.contains("\"layers\"") && kit.contains("index-testing"),
        "{kit}"
    );
    assert!(
        c.ok(&["index", "inspect", "test/model:all"])
            .contains("modelkit.index.v1+json")
    );
    assert!(line_matches(&c.ok(&["list"]), |w| w.get(..2)
        == Some(&["test/model", "all"][..])));
    c.fails(&["index", "info", "test/model:q4_0"]);
    c.ok(&["index", "delete", "test/model:all"]);
    c.ok(&["inspect", "test/model:all"]);
    c.ok(&["index", "create", "test/model:all"]);
    c.ok(&["remove", "test/model:all"]);
    c.ok(&["index", "info", "test/model:all"]);
    c.fails(&["inspect", "test/model:all"]);
}

#[test]
fn unpack_selects_by_label() {
    let c = Ctx::new();
    c.two_variants("test/model");
    c.ok(&["index", "create", "test/model:all"]);
    c.index_add(&[
        "test/model:all",
        "test/model:q4_0",
        "-l",
        "quantization=q4_0",
        "-l",
        "gpu=cuda",
    ]);
    c.index_add(&[
        "test/model:all",
        "test/model:q8_0",
        "-l",
        "quantization=q8_0",
        "-l",
        "gpu=cuda",
    ]);

    let d = c.p("q8");
    c.ok(&[
        "unpack",
        "test/model:all",
        "-l",
        "quantization=q8_0",
        "-d",
        d.to_str().unwrap(),
    ]);
    assert_eq!(model_bytes(&d), "weights-q8");
    let d = c.p("q4");
    c.ok(&[
        "unpack",
        "test/model:all",
        "-l",
        "gpu=cuda",
        "-l",
        "quantization=q4_0",
        "-d",
        d.to_str().unwrap(),
    ]);
    assert_eq!(model_bytes(&d), "weights-q4");
    let d = c.p("kitfile-only");
    c.ok(&[
        "unpack",
        "test/model:all",
        "-l",
        "quantization=q4_0",
        "--filter=kitfile",
        "-d",
        d.to_str().unwrap(),
    ]);
    assert!(d.join("Kitfile").is_file() && !d.join("model.bin").exists());

    let tmp = c.p("x");
    let tmp = tmp.to_str().unwrap();
    let none = c.fails(&[
        "unpack",
        "test/model:all",
        "-l",
        "quantization=q2_k",
        "-d",
        tmp,
    ]);
    assert!(
        none.contains("ModelKit in the index has quantization=q2_k"),
        "{none}"
    );
    assert!(
        none.contains("test/model:q4_0  (gpu=cuda, quantization=q4_0)"),
        "{none}"
    );
    let many = c.fails(&["unpack", "test/model:all", "-l", "gpu=cuda", "-d", tmp]);
    assert!(many.contains("2 ModelKits in the index match"), "{many}");
    let bare = c.fails(&["unpack", "test/model:all", "-d", tmp]);
    assert!(
        bare.contains("select the ModelKit to unpack with --label"),
        "{bare}"
    );
    // Labels select from an index, so a ModelKit is not used for them.
    let kit = c.fails(&[
        "unpack",
        "test/model:q4_0",
        "-l",
        "quantization=q8_0",
        "-d",
        tmp,
    ]);
    assert!(kit.contains("find ModelKit index"), "{kit}");
    let bad = c.fails(&["unpack", "test/model:all", "-l", "quantization-", "-d", tmp]);
    assert!(bad.contains("expected key=value"), "{bad}");
    assert!(!Path::new(tmp).join("model.bin").exists());
}

#[test]
fn push_and_pull_through_a_registry() {
    require_registry!();
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let repo = format!("{}/team/model", reg.addr());
    let (q4, q8) = (
        c.pack(&format!("{repo}:q4_0"), "weights-q4"),
        c.pack(&format!("{repo}:q8_0"), "weights-q8"),
    );
    let all = format!("{repo}:all");
    c.ok(&["index", "create", &all]);
    c.index_add(&[
        &all,
        &format!("{repo}:q4_0"),
        "-l",
        "quantization=q4_0",
        "-l",
        "n:=7000000000",
    ]);
    c.index_add(&[&all, &format!("{repo}:q8_0"), "-l", "quantization=q8_0"]);
    let local = c.ok(&["index", "inspect", &all]);

    // Kit's way first: only the index, whose ModelKits the registry lacks.
    let refused = c.fails(&["index", "push", &all, "--plain-http", "--index-only"]);
    assert!(
        refused.contains("does not contain every ModelKit the index references"),
        "{refused}"
    );
    let pushed = c.out(&["index", "push", &all, "--plain-http"]);
    assert!(pushed.contains("Pushed index sha256:"), "{pushed}");
    let remote = c.ok(&["index", "inspect", "--remote", &all, "--plain-http"]);
    assert_eq!(remote, local, "the registry holds the same bytes");
    let info = c.ok(&["index", "info", "--remote", &all, "--plain-http"]);
    assert!(
        info.contains(&q4) && info.contains(&q8) && info.contains("n=7000000000"),
        "{info}"
    );

    // A second machine: pull the index (and its ModelKits), then unpack offline.
    let other = Ctx::new();
    let pulled = other.out(&["index", "pull", &all, "--plain-http"]);
    assert!(pulled.contains("Pulled index sha256:"), "{pulled}");
    assert_eq!(
        other.ok(&["index", "inspect", &all]),
        local,
        "the digest is kept"
    );
    assert!(
        !other.ok(&["list"]).contains("q4_0"),
        "the index's ModelKits are not listed"
    );
    drop(reg);
    let d = other.p("u");
    other.ok(&[
        "unpack",
        &all,
        "-l",
        "quantization=q8_0",
        "-d",
        d.to_str().unwrap(),
    ]);
    assert_eq!(model_bytes(&d), "weights-q8");
}

/// `index push` of an index whose ModelKit the store holds only in part (unpacked with a
/// filter straight from the registry) skips that ModelKit, says so, and pushes the rest.
#[test]
fn index_push_skips_a_modelkit_held_in_part() {
    require_registry!();
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let repo = format!("{}/team/model", reg.addr());
    c.pack(&format!("{repo}:q4_0"), "weights-q4");
    c.pack(&format!("{repo}:q8_0"), "weights-q8");
    let all = format!("{repo}:all");
    c.ok(&["index", "create", &all]);
    c.index_add(&[&all, &format!("{repo}:q4_0"), "-l", "q=4"]);
    c.index_add(&[&all, &format!("{repo}:q8_0"), "-l", "q=8"]);
    c.ok(&["index", "push", &all, "--plain-http"]);

    let other = Ctx::new();
    other.ok(&["index", "pull", &all, "--plain-http", "--index-only"]);
    let d = other.p("kf");
    other.ok(&[
        "unpack",
        &all,
        "-l",
        "q=4",
        "--filter=kitfile",
        "--plain-http",
        "-d",
        d.to_str().unwrap(),
    ]);
    let out = other.out(&["index", "push", &all, "--plain-http"]);
    assert!(
        out.contains("is not whole in the store") && out.contains("Pushed index sha256:"),
        "{out}"
    );
}

#[test]
fn pull_and_unpack_select_from_a_remote_index() {
    require_registry!();
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let repo = format!("{}/team/model", reg.addr());
    let (_, q8, _) = c.labelled_index(&repo);
    let all = format!("{repo}:all");
    c.ok(&["index", "push", &all, "--plain-http"]);

    let other = Ctx::new();
    let bare = other.fails(&["pull", &all, "--plain-http"]);
    assert!(
        bare.contains("select the ModelKit to pull with --label"),
        "{bare}"
    );
    // The selected ModelKit takes the index's tag, as kit's pull -l does.
    let out = other.ok(&["pull", &all, "-l", "quantization=q8_0", "--plain-http"]);
    assert_eq!(out.trim(), q8);
    let list = other.ok(&["list"]);
    assert!(
        line_matches(&list, |w| w.get(1) == Some(&"all")
            && w.last() == Some(&q8.as_str())),
        "{list}"
    );
    let third = Ctx::new();
    let bare = third.fails(&[
        "unpack",
        &all,
        "--plain-http",
        "-d",
        third.p("x").to_str().unwrap(),
    ]);
    assert!(
        bare.contains("select the ModelKit to unpack with --label"),
        "{bare}"
    );
    let d = third.p("u");
    third.ok(&[
        "unpack",
        &all,
        "-l",
        "quantization=q4_0",
        "--plain-http",
        "-d",
        d.to_str().unwrap(),
    ]);
    assert_eq!(model_bytes(&d), "weights-q4");
    let kit = third.fails(&[
        "unpack",
        &format!("{repo}:q4_0"),
        "-l",
        "quantization=q4_0",
        "--plain-http",
        "-d",
        d.to_str().unwrap(),
    ]);
    assert!(kit.contains("find ModelKit index"), "{kit}");
}

/// `pull -l` selects from the registry's index even when an older copy is in the store,
/// and a remote `list` of a repository holding an index lists its ModelKits.
#[test]
fn pull_l_reads_the_registrys_index_and_remote_list_skips_it() {
    require_registry!();
    let c = Ctx::new();
    let reg = RegistryProc::start(&c.p("reg"), None, None);
    let repo = format!("{}/team/model", reg.addr());
    c.pack(&format!("{repo}:q4_0"), "weights-q4");
    let q8 = c.pack(&format!("{repo}:q8_0"), "weights-q8");
    let all = format!("{repo}:all");
    let q4_ref = format!("{repo}:q4_0");
    c.ok(&["index", "create", &all]);
    c.index_add(&[&all, &q4_ref, "-l", "pick=yes"]);
    c.ok(&["index", "push", &all, "--plain-http"]);
    let other = Ctx::new();
    other.ok(&["index", "pull", &all, "--plain-http"]);
    // The registry's index moves on: q8_0 is now the pick.
    c.index_add(&[&all, &q4_ref, "-l", "pick-"]);
    c.index_add(&[&all, &format!("{repo}:q8_0"), "-l", "pick=yes"]);
    c.ok(&["index", "push", &all, "--plain-http"]);
    let got = other.ok(&["pull", &all, "-l", "pick=yes", "--plain-http"]);
    assert_eq!(got.trim(), q8);
    // `index push` sends the ModelKits by digest; tagged ones too, for `list`.
    for t in ["q4_0", "q8_0"] {
        c.ok(&["push", &format!("{repo}:{t}"), "--plain-http"]);
    }
    let list = other.ok(&["list", &repo, "--plain-http"]);
    assert!(
        line_matches(&list, |w| w.get(1) == Some(&"q4_0"))
            && line_matches(&list, |w| w.get(1) == Some(&"q8_0"))
            && !line_matches(&list, |w| w.get(1) == Some(&"all")),
        "{list}"
    );
}

/// Rewrites a kitsnap store into the layout kit writes (kit's `LocalRepo`): index.json
/// without annotations, and per repository `<base64url(repo)>-tags.json` (tag to
/// descriptor, an index's too) and `-index.json` (every manifest and index).
fn into_kits_layout(store: &Path) {
    use base64::Engine;
    use std::collections::BTreeMap;
    let idx_path = store.join("index.json");
    let idx: serde_json::Value = serde_json::from_slice(&fs::read(&idx_path).unwrap()).unwrap();
    let mut plain_all = Vec::new();
    let mut repos: BTreeMap<String, (serde_json::Map<_, _>, Vec<serde_json::Value>)> =
        BTreeMap::new();
    for m in idx["manifests"].as_array().unwrap() {
        let reference = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .or(m["annotations"]["dev.kitsnap.index.ref.name"].as_str())
            .unwrap();
        let (repo, tag) = reference.rsplit_once(':').unwrap();
        let mut plain = m.clone();
        plain.as_object_mut().unwrap().remove("annotations");
        let (tags, manifests) = repos.entry(repo.to_string()).or_default();
        tags.insert(tag.to_string(), plain.clone());
        manifests.push(plain.clone());
        plain_all.push(plain);
    }
    for (repo, (tags, manifests)) in repos {
        let enc = base64::engine::general_purpose::URL_SAFE.encode(&repo);
        fs::write(
            store.join(format!("{enc}-tags.json")),
            serde_json::Value::Object(tags).to_string(),
        )
        .unwrap();
        fs::write(
            store.join(format!("{enc}-index.json")),
            serde_json::json!({"schemaVersion": 2, "manifests": manifests}).to_string(),
        )
        .unwrap();
    }
    fs::write(
        &idx_path,
        serde_json::json!({"schemaVersion": 2, "manifests": plain_all}).to_string(),
    )
    .unwrap();
}

/// A store `kit` wrote, holding a ModelKit index (`kit index create/add`): kitsnap lists
/// the index as an index (never as a ModelKit), selects from it, keeps its ModelKits
/// through garbage collection, edits it into an entry of its own and refuses to delete
/// kit's, naming `kit index delete`.
#[test]
fn reads_indexes_in_a_store_kit_wrote() {
    use base64::Engine;
    let c = Ctx::new();
    let (q4, q8, kits_index) = c.labelled_index("test/model");
    into_kits_layout(&c.store());

    let list = c.ok(&["list"]);
    assert!(!line_matches(&list, |w| w.get(1) == Some(&"all")), "{list}");
    for (tag, d) in [("q4_0", &q4), ("q8_0", &q8)] {
        assert!(
            line_matches(&list, |w| w.get(..2) == Some(&["test/model", tag][..])
                && w.last() == Some(&d.as_str())),
            "{list}"
        );
    }
    let indexes = c.ok(&["index", "list"]);
    assert!(
        line_matches(&indexes, |w| w.get(..3)
            == Some(&["test/model", "all", "2"][..])),
        "{indexes}"
    );
    let info = c.ok(&["index", "info", "test/model:all"]);
    assert!(
        info.contains("2 ModelKits:") && info.contains(&q8),
        "{info}"
    );
    assert_eq!(
        c.unpack_selected("test/model:all", "quantization=q8_0", "q8", &[]),
        "weights-q8"
    );

    // kit untags q4_0 (its tag and entries go, the index still names it), and the index
    // is left only in kit's tags file (not in index.json): a garbage collection by kitsnap
    // (removing a kit of its own) must keep q4_0 for kit's index.
    let enc = base64::engine::general_purpose::URL_SAFE.encode("localhost/test/model");
    let tags_path = c.store().join(format!("{enc}-tags.json"));
    let mut tags: serde_json::Value =
        serde_json::from_slice(&fs::read(&tags_path).unwrap()).unwrap();
    tags.as_object_mut().unwrap().remove("q4_0");
    fs::write(&tags_path, tags.to_string()).unwrap();
    for f in [
        c.store().join("index.json"),
        c.store().join(format!("{enc}-index.json")),
    ] {
        let mut idx: serde_json::Value = serde_json::from_slice(&fs::read(&f).unwrap()).unwrap();
        idx["manifests"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["digest"] != q4.as_str() && m["digest"] != kits_index.as_str());
        fs::write(&f, idx.to_string()).unwrap();
    }
    c.pack("test/other:v1", "other");
    c.ok(&["remove", "test/other:v1"]);
    assert_eq!(
        c.unpack_selected("test/model:all", "quantization=q4_0", "q4", &[]),
        "weights-q4"
    );

    let e = c.fails(&["index", "delete", "test/model:all"]);
    assert!(
        e.contains("written by kit") && e.contains("`kit index delete test/model:all`"),
        "{e}"
    );
    let out = c.out(&["index", "delete", "--all", "--force"]);
    assert!(
        out.contains("Left index test/model:all (written by kit"),
        "{out}"
    );

    // kitsnap's own tag on kit's index (as `index pull` under another tag would make):
    // deleting by kit's tag still refuses, deleting by kitsnap's removes only that one.
    let idx_path = c.store().join("index.json");
    let mut idx: serde_json::Value = serde_json::from_slice(&fs::read(&idx_path).unwrap()).unwrap();
    let size = fs::metadata(
        c.store()
            .join("blobs/sha256")
            .join(kits_index.trim_start_matches("sha256:")),
    )
    .unwrap()
    .len();
    idx["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": kits_index, "size": size,
            "annotations": {"dev.kitsnap.index.ref.name": "localhost/test/model:mine"}
        }));
    fs::write(&idx_path, idx.to_string()).unwrap();
    let e = c.fails(&["index", "delete", "test/model:all"]);
    assert!(e.contains("written by kit"), "{e}");
    let out = c.out(&["index", "delete", "test/model:mine"]);
    assert!(
        out.contains("Removed tags: mine") && out.contains("Left kit's tags of this index: all"),
        "{out}"
    );
    let indexes = c.ok(&["index", "list"]);
    assert!(
        line_matches(&indexes, |w| w.get(..2) == Some(&["test/model", "all"][..])),
        "{indexes}"
    );

    // An edit becomes kitsnap's own entry over kit's; kit's files stay as kit wrote them.
    let before = fs::read(&tags_path).unwrap();
    let edited = c
        .index_add(&["test/model:all", "test/model:q8_0", "-l", "tested=true"])
        .trim()
        .to_string();
    assert_ne!(edited, kits_index);
    assert_eq!(fs::read(&tags_path).unwrap(), before);
    let info = c.ok(&["index", "info", "test/model:all"]);
    assert!(info.contains("tested") && info.contains(&edited), "{info}");
    // Deleting kitsnap's version leaves kit's in view again.
    c.ok(&["index", "delete", "test/model:all"]);
    let info = c.ok(&["index", "info", "test/model:all"]);
    assert!(
        !info.contains("tested") && info.contains(&kits_index),
        "{info}"
    );
}
