//! `init`: writes a Kitfile that describes a directory, like `kit init`.
//!
//! Every top-level file or directory becomes one entry, classified by extension (for a
//! directory: by the kind holding most of its bytes). The largest weights file becomes the
//! model; other weights and model configuration files become model parts.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::ignore::{IGNORE_FILE, IgnoreRules};
use crate::kitfile::{self, Code, Dataset, Docs, Kitfile, Model, ModelPart, Package, Prompt};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Weights,
    ModelConfig,
    Dataset,
    Code,
    Docs,
    Prompt,
    Other,
}

const WEIGHTS: &[&str] = &[
    "gguf",
    "ggml",
    "safetensors",
    "bin",
    "pt",
    "pth",
    "onnx",
    "h5",
    "hdf5",
    "keras",
    "pb",
    "tflite",
    "ckpt",
    "pkl",
    "pickle",
    "joblib",
    "mlmodel",
    "npz",
    "params",
    "engine",
    "plan",
    "mar",
    "nemo",
    "llamafile",
    "msgpack",
    "ot",
];
const MODEL_CONFIG: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "preprocessor_config.json",
];
const DATASET: &[&str] = &[
    "csv", "tsv", "parquet", "arrow", "jsonl", "ndjson", "avro", "orc", "feather", "tfrecord",
    "npy", "hdf", "db", "sqlite", "xlsx",
];
const CODE: &[&str] = &[
    "py", "ipynb", "sh", "js", "ts", "go", "rs", "java", "scala", "r", "jl", "c", "cc", "cpp", "h",
    "hpp", "rb", "toml", "cfg", "ini", "yaml", "yml", "lock", "mod", "sum",
];
const DOCS: &[&str] = &["md", "rst", "txt", "pdf", "html", "adoc", "tex"];
const PROMPT: &[&str] = &["prompt", "prompty", "jinja", "j2", "tmpl"];

fn classify_file(name: &str) -> Class {
    let lower = name.to_ascii_lowercase();
    if MODEL_CONFIG.contains(&lower.as_str()) {
        return Class::ModelConfig;
    }
    if lower.starts_with("readme") || lower.starts_with("license") || lower.starts_with("licence") {
        return Class::Docs;
    }
    if lower.ends_with(".prompt.md") || lower.contains("prompt") && lower.ends_with(".md") {
        return Class::Prompt;
    }
    let ext = lower.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    if WEIGHTS.contains(&ext) {
        Class::Weights
    } else if DATASET.contains(&ext) {
        Class::Dataset
    } else if CODE.contains(&ext) || lower == "makefile" || lower == "dockerfile" {
        Class::Code
    } else if DOCS.contains(&ext) {
        Class::Docs
    } else if PROMPT.contains(&ext) {
        Class::Prompt
    } else {
        Class::Other
    }
}

/// Sums bytes per class below `dir`, honouring .kitignore.
fn classify_dir(
    root: &Path,
    rel: &str,
    ignore: &IgnoreRules,
    acc: &mut BTreeMap<Class, u64>,
) -> Result<()> {
    let dir = root.join(rel);
    for e in fs::read_dir(&dir).at(&dir)? {
        let e = e.at(&dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let child = format!("{rel}/{name}");
        if ignore.is_ignored(&child) {
            continue;
        }
        let ft = e.file_type().at(e.path())?;
        if ft.is_dir() {
            classify_dir(root, &child, ignore, acc)?;
        } else if ft.is_file() {
            let size = e.metadata().map(|m| m.len()).unwrap_or(0).max(1);
            *acc.entry(classify_file(&name)).or_default() += size;
        }
    }
    Ok(())
}

pub struct InitOptions {
    pub name: Option<String>,
    pub description: Option<String>,
    pub author: Option<String>,
}

/// Builds the Kitfile for `dir` (does not write it).
pub fn generate(dir: &Path, opts: &InitOptions) -> Result<Kitfile> {
    let ignore = match fs::read_to_string(dir.join(IGNORE_FILE)) {
        Ok(t) => IgnoreRules::parse(&t)?,
        Err(_) => IgnoreRules::default(),
    };
    let mut names: Vec<(String, bool, u64)> = Vec::new();
    for e in fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.')
            || kitfile::DEFAULT_NAMES.contains(&name.as_str())
            || ignore.is_ignored(&name)
        {
            continue;
        }
        let ft = e.file_type().at(e.path())?;
        if ft.is_dir() {
            names.push((name, true, 0));
        } else if ft.is_file() {
            names.push((name, false, e.metadata().map(|m| m.len()).unwrap_or(0)));
        }
    }
    names.sort();

    let mut weights: Vec<(String, u64)> = Vec::new();
    let mut parts = Vec::new();
    let mut kf = Kitfile {
        manifest_version: "1.0.0".into(),
        package: Package {
            name: opts.name.clone().unwrap_or_else(|| {
                fs::canonicalize(dir)
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "modelkit".into())
            }),
            description: opts.description.clone().unwrap_or_default(),
            authors: opts.author.iter().cloned().collect(),
            ..Default::default()
        },
        ..Default::default()
    };
    for (name, is_dir, size) in names {
        let class = if is_dir {
            let mut acc = BTreeMap::new();
            classify_dir(dir, &name, &ignore, &mut acc)?;
            let total: u64 = acc.values().sum();
            if total == 0 {
                continue;
            }
            // The kind holding most bytes names the directory.
            let (c, bytes) = acc
                .iter()
                .max_by_key(|(_, b)| **b)
                .map(|(c, b)| (*c, *b))
                .unwrap_or((Class::Other, 0));
            if c == Class::Weights || c == Class::ModelConfig {
                weights.push((name.clone(), bytes));
                continue;
            }
            c
        } else {
            classify_file(&name)
        };
        match class {
            Class::Weights => weights.push((name, size)),
            Class::ModelConfig => parts.push(ModelPart {
                path: name,
                part_type: "config".into(),
                ..Default::default()
            }),
            Class::Dataset => kf.datasets.push(Dataset {
                name: name
                    .rsplit_once('.')
                    .map(|(b, _)| b.to_string())
                    .unwrap_or(name.clone()),
                path: name,
                ..Default::default()
            }),
            Class::Code => kf.code.push(Code {
                path: name,
                ..Default::default()
            }),
            Class::Docs | Class::Other => kf.docs.push(Docs {
                path: name,
                ..Default::default()
            }),
            Class::Prompt => kf.prompts.push(Prompt {
                path: name,
                ..Default::default()
            }),
        }
    }
    // The largest weights become the model, the rest model parts.
    weights.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut weights = weights.into_iter();
    if let Some((main, _)) = weights.next() {
        let ext = main
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        let mut extra: Vec<ModelPart> = weights
            .map(|(p, _)| ModelPart {
                name: p
                    .rsplit_once('.')
                    .map(|(b, _)| b.to_string())
                    .unwrap_or(p.clone()),
                path: p,
                ..Default::default()
            })
            .collect();
        extra.extend(parts);
        kf.model = Some(Model {
            name: main
                .rsplit_once('.')
                .map(|(b, _)| b.to_string())
                .unwrap_or(main.clone()),
            path: main,
            format: match ext.as_str() {
                "gguf" => "gguf",
                "safetensors" => "safetensors",
                "onnx" => "onnx",
                "pt" | "pth" => "pytorch",
                "h5" | "keras" => "keras",
                "tflite" => "tflite",
                _ => "",
            }
            .into(),
            parts: extra,
            ..Default::default()
        });
    } else if !parts.is_empty() {
        kf.model = Some(Model {
            parts,
            ..Default::default()
        });
    }
    Ok(kf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_a_typical_tree() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::write(p.join("model.gguf"), vec![0u8; 1000]).unwrap();
        fs::write(p.join("small.safetensors"), vec![0u8; 10]).unwrap();
        fs::write(p.join("tokenizer.json"), "{}").unwrap();
        fs::write(p.join("README.md"), "hi").unwrap();
        fs::write(p.join("train.csv"), "a,b").unwrap();
        fs::create_dir(p.join("src")).unwrap();
        fs::write(p.join("src/app.py"), "print(1)").unwrap();
        fs::write(p.join("system.prompt"), "be nice").unwrap();
        fs::write(p.join(".kitignore"), "*.log\n").unwrap();
        fs::write(p.join("debug.log"), "x").unwrap();
        let kf = generate(
            p,
            &InitOptions {
                name: Some("demo".into()),
                description: None,
                author: None,
            },
        )
        .unwrap();
        let m = kf.model.as_ref().unwrap();
        assert_eq!(m.path, "model.gguf");
        assert_eq!(m.format, "gguf");
        assert_eq!(m.parts.len(), 2);
        assert_eq!(kf.datasets[0].path, "train.csv");
        assert_eq!(kf.code[0].path, "src");
        assert_eq!(kf.docs[0].path, "README.md");
        assert_eq!(kf.prompts[0].path, "system.prompt");
        assert!(kf.validate().is_ok());
        // The YAML it writes parses back to the same Kitfile.
        let y = kf.to_yaml().unwrap();
        assert_eq!(Kitfile::from_yaml(&y, "K").unwrap(), kf);
    }
}
