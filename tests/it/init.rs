//! `kitsnap init` on trees shaped like real repositories, followed through `pack` and
//! `unpack --filter model`: what comes out must be what a loader needs, nothing less.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use crate::support::{bytes, files, ok};

fn write(root: &Path, rel: &str, data: impl AsRef<[u8]>) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn names(dir: &Path) -> BTreeSet<String> {
    files(dir).into_iter().map(|(n, _)| n).collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `save_pretrained` output of a sharded causal LM with remote code, as cloned from a hub
/// with the usual company: card, license, scripts, caches, a virtualenv, notebooks, data.
fn sharded_llm_repo(p: &Path) {
    let shards: Vec<String> = (1..=4)
        .map(|i| format!("model-{i:05}-of-00004.safetensors"))
        .collect();
    for (i, s) in shards.iter().enumerate() {
        write(p, s, bytes(50_000 + i * 10, i as u64));
    }
    let weight_map: Vec<String> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| format!("\"model.layers.{i}.weight\": \"{s}\""))
        .collect();
    write(
        p,
        "model.safetensors.index.json",
        format!(
            "{{\"metadata\": {{\"total_size\": 200060}}, \"weight_map\": {{{}}}}}",
            weight_map.join(", ")
        ),
    );
    write(
        p,
        "config.json",
        r#"{"architectures": ["TinyForCausalLM"], "model_type": "tiny",
"auto_map": {"AutoConfig": "configuration_tiny.TinyConfig",
"AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"}}"#,
    );
    write(p, "configuration_tiny.py", "class TinyConfig: pass\n");
    write(p, "modeling_tiny.py", "class TinyForCausalLM: pass\n");
    write(p, "generation_config.json", r#"{"max_new_tokens": 32}"#);
    write(p, "tokenizer.json", r#"{"model": {"type": "BPE"}}"#);
    write(
        p,
        "tokenizer_config.json",
        r#"{"tokenizer_class": "PreTrainedTokenizerFast"}"#,
    );
    write(p, "special_tokens_map.json", r#"{"eos_token": "</s>"}"#);
    write(p, "tokenizer.model", bytes(2_000, 9));
    write(
        p,
        "README.md",
        "---\nlicense: apache-2.0\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n# Tiny\n",
    );
    write(p, "LICENSE", "Apache License\nVersion 2.0, January 2004\n");
    write(
        p,
        ".gitattributes",
        "*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    );
    write(p, ".git/HEAD", "ref: refs/heads/main\n");
    write(p, "train.py", "import transformers\n");
    write(p, "requirements.txt", "torch\ntransformers\n");
    write(p, "__pycache__/train.cpython-312.pyc", bytes(300, 3));
    write(p, "prompts/system.md", "You are a helpful assistant.\n");
    write(p, "data/train.jsonl", "{\"text\": \"hi\"}\n");
    write(p, "notebooks/eval.ipynb", "{}");
    write(
        p,
        "notebooks/.ipynb_checkpoints/eval-checkpoint.ipynb",
        "{}",
    );
    write(p, "notebooks/__pycache__/x.pyc", "x");
    write(p, "venv/pyvenv.cfg", "home = /usr/bin\n");
    write(p, "venv/lib/python3.12/site-packages/torch/__init__.py", "");
}

#[test]
fn init_pack_unpack_model_yields_exactly_what_from_pretrained_loads() {
    let t = tempfile::tempdir().unwrap();
    let (src, store, out) = (
        t.path().join("tiny-llm"),
        t.path().join("store"),
        t.path().join("out"),
    );
    sharded_llm_repo(&src);
    let table = ok(&store, &["init", src.to_str().unwrap()]);
    // The table says where everything went.
    let row = |path: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(path))
            .unwrap_or_else(|| panic!("no row for {path} in\n{table}"))
            .to_string()
    };
    assert!(table.starts_with("PATH"), "{table}");
    assert!(
        row("model-00001-of-00004.safetensors").contains(" model "),
        "{table}"
    );
    assert!(row("model.safetensors.index.json").contains("model part (config)"));
    assert!(row("tokenizer.model").contains("model part (tokenizer)"));
    assert!(row("modeling_tiny.py").contains("model part (code)"));
    assert!(row("requirements.txt").contains("code"));
    assert!(row("prompts").contains("prompt"));
    assert!(row("data").contains("dataset"));
    assert!(row("__pycache__").contains("ignored (.kitignore)"));
    assert!(row("venv").contains("ignored (.kitignore)"));
    assert!(row("notebooks/.ipynb_checkpoints").contains("ignored (.kitignore)"));
    assert!(row(".git").contains("ignored (.kitignore)"));
    let kitfile = fs::read_to_string(src.join("Kitfile")).unwrap();
    assert!(kitfile.contains("license: Apache-2.0"), "{kitfile}");
    let kitignore = fs::read_to_string(src.join(".kitignore")).unwrap();
    assert!(
        kitignore.lines().any(|l| l == "**/__pycache__"),
        "{kitignore}"
    );
    assert!(kitignore.lines().any(|l| l == "venv"), "{kitignore}");

    ok(
        &store,
        &["pack", src.to_str().unwrap(), "-t", "tiny-llm:v1"],
    );
    ok(
        &store,
        &[
            "unpack",
            "tiny-llm:v1",
            "-d",
            out.to_str().unwrap(),
            "--filter",
            "model",
        ],
    );
    let expected = set(&[
        "config.json",
        "configuration_tiny.py",
        "generation_config.json",
        "model-00001-of-00004.safetensors",
        "model-00002-of-00004.safetensors",
        "model-00003-of-00004.safetensors",
        "model-00004-of-00004.safetensors",
        "model.safetensors.index.json",
        "modeling_tiny.py",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]);
    assert_eq!(names(&out), expected);
    for (name, data) in files(&out) {
        assert_eq!(data, fs::read(src.join(&name)).unwrap(), "{name}");
    }
    // What from_pretrained resolves from the folder: every shard the index maps, and
    // every module config.json's auto_map names (trust_remote_code).
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let shards: BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(shards.len(), 4);
    for s in shards {
        assert!(out.join(s).is_file(), "{s} missing");
    }
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("config.json")).unwrap()).unwrap();
    for v in config["auto_map"].as_object().unwrap().values() {
        let module = v.as_str().unwrap().rsplit_once('.').unwrap().0;
        assert!(out.join(format!("{module}.py")).is_file(), "{module}");
    }

    // The whole kit holds everything else but none of the caches or the virtualenv.
    let all = t.path().join("all");
    ok(
        &store,
        &["unpack", "tiny-llm:v1", "-d", all.to_str().unwrap()],
    );
    let got = names(&all);
    for want in [
        "README.md",
        "LICENSE",
        "train.py",
        "requirements.txt",
        "prompts/system.md",
        "data/train.jsonl",
        "notebooks/eval.ipynb",
        "Kitfile",
    ] {
        assert!(got.contains(want), "{want} missing from {got:?}");
    }
    for name in &got {
        assert!(
            !name.contains("__pycache__")
                && !name.contains(".ipynb_checkpoints")
                && !name.starts_with("venv/")
                && !name.starts_with(".git"),
            "{name} should have been left out"
        );
    }
}

#[test]
fn init_gguf_quantisations_and_onnx_external_data_unpack_as_models() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");

    // GGUF quantisations: one model, each quantisation a named part.
    let gguf = t.path().join("tinyllama-gguf");
    write(&gguf, "tinyllama.Q2_K.gguf", bytes(20_000, 1));
    write(&gguf, "tinyllama.Q4_K_M.gguf", bytes(30_000, 2));
    write(&gguf, "tinyllama.Q8_0.gguf", bytes(60_000, 3));
    write(&gguf, "README.md", "---\nlicense: llama2\n---\n");
    ok(&store, &["init", gguf.to_str().unwrap()]);
    let kitfile = fs::read_to_string(gguf.join("Kitfile")).unwrap();
    assert!(kitfile.contains("path: tinyllama.Q8_0.gguf"), "{kitfile}");
    assert!(kitfile.contains("license: LicenseRef-llama2"), "{kitfile}");
    ok(&store, &["pack", gguf.to_str().unwrap(), "-t", "tl:gguf"]);
    let out = t.path().join("gguf-model");
    ok(
        &store,
        &[
            "unpack",
            "tl:gguf",
            "-d",
            out.to_str().unwrap(),
            "--filter",
            "model",
        ],
    );
    assert_eq!(
        names(&out),
        set(&[
            "tinyllama.Q2_K.gguf",
            "tinyllama.Q4_K_M.gguf",
            "tinyllama.Q8_0.gguf"
        ])
    );
    // One quantisation by its part name.
    let one = t.path().join("gguf-q4");
    ok(
        &store,
        &[
            "unpack",
            "tl:gguf",
            "-d",
            one.to_str().unwrap(),
            "--filter",
            "model:tinyllama.Q4_K_M",
        ],
    );
    assert_eq!(names(&one), set(&["tinyllama.Q4_K_M.gguf"]));

    // ONNX with external data in onnx/ and configs at the top (optimum's layout).
    let onnx = t.path().join("onnx-repo");
    write(&onnx, "onnx/model.onnx", bytes(1_000, 4));
    write(&onnx, "onnx/model.onnx_data", bytes(80_000, 5));
    write(&onnx, "config.json", "{}");
    write(&onnx, "tokenizer.json", "{}");
    write(&onnx, "tokenizer_config.json", "{}");
    write(&onnx, "example.py", "import onnxruntime\n");
    ok(&store, &["init", onnx.to_str().unwrap()]);
    ok(&store, &["pack", onnx.to_str().unwrap(), "-t", "tl:onnx"]);
    let out = t.path().join("onnx-model");
    ok(
        &store,
        &[
            "unpack",
            "tl:onnx",
            "-d",
            out.to_str().unwrap(),
            "--filter",
            "model",
        ],
    );
    assert_eq!(
        names(&out),
        set(&[
            "config.json",
            "onnx/model.onnx",
            "onnx/model.onnx_data",
            "tokenizer.json",
            "tokenizer_config.json"
        ])
    );
}

#[test]
fn init_dataset_repo_puts_the_data_and_its_license_in_datasets() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("ds"), t.path().join("store"));
    write(&src, "data/train-00000-of-00002.parquet", bytes(10_000, 1));
    write(&src, "data/train-00001-of-00002.parquet", bytes(10_000, 2));
    write(&src, "data/test-00000-of-00001.parquet", bytes(3_000, 3));
    write(
        &src,
        "README.md",
        "---\nlicense: cc-by-4.0\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n# A dataset\n",
    );
    ok(&store, &["init", src.to_str().unwrap()]);
    let kitfile = fs::read_to_string(src.join("Kitfile")).unwrap();
    assert!(!kitfile.contains("model:"), "{kitfile}");
    assert!(kitfile.contains("license: CC-BY-4.0"), "{kitfile}");
    ok(&store, &["pack", src.to_str().unwrap(), "-t", "ds:1"]);
    let out = t.path().join("out");
    ok(
        &store,
        &[
            "unpack",
            "ds:1",
            "-d",
            out.to_str().unwrap(),
            "--filter",
            "datasets",
        ],
    );
    assert_eq!(
        names(&out),
        set(&[
            "data/test-00000-of-00001.parquet",
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet"
        ])
    );
}
