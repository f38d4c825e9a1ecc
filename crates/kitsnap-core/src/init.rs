//! `init`: writes a Kitfile that describes a directory, like `kit init`.
//!
//! The layout follows KitOps' generator (pkg/lib/kitfile/generate) where it holds up on real
//! repositories: README/LICENSE are docs, weights become the model and its parts, JSON
//! metadata goes with the model (or, without one, to datasets), anything unknown is code.
//! On top of that it knows the conventions of Hugging Face-style folders, so that
//! `unpack --filter model` yields what `from_pretrained` loads:
//! - configs, `*.index.json`, tokenizer files and `auto_map` code stay with the model;
//! - shards (`model-00001-of-00004.safetensors`), ONNX external data and GGUF quantisations
//!   are grouped; the main group is the model, every other file a part;
//! - a directory holding weights or only model configs (`onnx/`, `unet/`, `tokenizer/`,
//!   `1_Pooling/`) is one model part; `data/` is a dataset, `prompts/` prompts;
//! - caches and environments (`__pycache__`, `*.pyc`, `.git`, `.venv`, a virtualenv,
//!   `.ipynb_checkpoints`) are skipped and written to `.kitignore` so that `pack` skips
//!   them too;
//! - the license is read from the README's model/dataset card (`license:`), else from the
//!   LICENSE file's text, as an SPDX id (non-SPDX licenses as `LicenseRef-<name>`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use crate::error::{IoContext, Result};
use crate::ignore::{IGNORE_FILE, IgnoreRules};
use crate::kitfile::{self, Code, Dataset, Docs, Kitfile, Model, ModelPart, Package, Prompt};
use crate::oci::LayerKind;

/// What `init` leaves out and lists in `.kitignore`: caches and environments, which
/// nobody wants in a ModelKit. `**/` makes each match at any depth.
pub const DEFAULT_IGNORES: &[&str] = &[
    "**/.git",
    "**/.venv",
    "**/__pycache__",
    "**/*.pyc",
    "**/.ipynb_checkpoints",
];

pub struct InitOptions {
    pub name: Option<String>,
    pub description: Option<String>,
    pub author: Option<String>,
}

/// [`Placement::section`] of a path `.kitignore` leaves out.
pub const IGNORED: &str = "ignored (.kitignore)";
/// [`Placement::section`] of a hidden top-level path (no entry names it).
pub const HIDDEN: &str = "not packed (hidden)";
/// [`Placement::section`] of a top-level symlink (`pack` refuses symlinked entries).
pub const SYMLINK: &str = "not packed (symlink)";

/// Where one path of the directory went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub path: String,
    /// `model`, `model part (tokenizer)`, `dataset`, `ignored (.kitignore)`, ...
    pub section: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectedLicense {
    /// An SPDX license id, or `LicenseRef-<name>` for licenses SPDX does not list.
    pub id: String,
    /// The file it was read from, and how.
    pub source: String,
}

/// The result of scanning a directory: the Kitfile and what to tell the user about it.
#[derive(Clone, Debug)]
pub struct InitPlan {
    pub kitfile: Kitfile,
    /// The Kitfile's entries in layer order, then the paths left out.
    pub placements: Vec<Placement>,
    pub license: Option<DetectedLicense>,
    /// The complete new `.kitignore` text, when it must be created or extended.
    pub kitignore: Option<String>,
    /// Things the user should look at (a shard index naming files that are not there).
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PartType {
    Config,
    Tokenizer,
    Code,
}

impl PartType {
    fn as_str(self) -> &'static str {
        match self {
            PartType::Config => "config",
            PartType::Tokenizer => "tokenizer",
            PartType::Code => "code",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Weights,
    /// Loaded together with the weights (`config.json`, tokenizer files, index files).
    ModelConfig(PartType),
    /// Other JSON: with the model if there is one, else a dataset (as KitOps does).
    Metadata,
    Dataset,
    Code,
    Docs,
    Prompt,
}

const WEIGHTS: &[&str] = &[
    "safetensors",
    "gguf",
    "ggml",
    "ggmf",
    "llamafile",
    "onnx",
    "onnx_data",
    "bin",
    "pt",
    "pth",
    "pt2",
    "ptl",
    "mar",
    "ckpt",
    "pb",
    "tflite",
    "h5",
    "hdf5",
    "keras",
    "pkl",
    "pickle",
    "joblib",
    "mlmodel",
    "caffemodel",
    "pmml",
    "npz",
    "params",
    "engine",
    "plan",
    "nemo",
    "msgpack",
    "ot",
];
/// Files `from_pretrained` and friends read next to the weights.
const MODEL_CONFIGS: &[&str] = &[
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "image_processor_config.json",
    "video_preprocessor_config.json",
    "feature_extractor_config.json",
    "adapter_config.json",
    "quantize_config.json",
    "quantization_config.json",
    "model_index.json",
    "scheduler_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "params.json",
];
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
];
const DATASET: &[&str] = &[
    "csv",
    "tsv",
    "parquet",
    "arrow",
    "jsonl",
    "ndjson",
    "avro",
    "orc",
    "feather",
    "tfrecord",
    "tfrecords",
    "npy",
    "hdf",
    "db",
    "sqlite",
    "xlsx",
    "tar",
    "zip",
];
const CODE_NAMES: &[&str] = &[
    "makefile",
    "dockerfile",
    "containerfile",
    "pipfile",
    "pipfile.lock",
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "environment.yml",
    "environment.yaml",
];
const DOCS: &[&str] = &[
    "md", "rst", "txt", "pdf", "html", "adoc", "tex", "png", "jpg", "jpeg", "gif", "svg", "webp",
];
const DOC_NAMES: &[&str] = &[
    "readme",
    "license",
    "licence",
    "copying",
    "notice",
    "authors",
    "changelog",
    "citation",
    "use_policy",
];
const PROMPT: &[&str] = &["prompt", "prompty", "jinja", "j2", "tmpl"];

fn ext_of(lower: &str) -> &str {
    lower.rsplit_once('.').map(|(_, e)| e).unwrap_or("")
}

fn stem_of(name: &str) -> &str {
    name.rsplit_once('.').map(|(b, _)| b).unwrap_or(name)
}

fn classify_file(name: &str) -> Kind {
    let lower = name.to_ascii_lowercase();
    let ext = ext_of(&lower);
    if TOKENIZER_FILES.contains(&lower.as_str()) || lower.starts_with("vocab.") || ext == "tiktoken"
    {
        return Kind::ModelConfig(PartType::Tokenizer);
    }
    // `model.safetensors.index.json`, `pytorch_model.bin.index.json`: the shard map.
    if MODEL_CONFIGS.contains(&lower.as_str()) || lower.ends_with(".index.json") {
        return Kind::ModelConfig(PartType::Config);
    }
    if DOC_NAMES.iter().any(|d| lower.starts_with(d)) {
        return Kind::Docs;
    }
    if (lower.starts_with("requirements") && ext == "txt") || CODE_NAMES.contains(&lower.as_str()) {
        return Kind::Code;
    }
    if lower.ends_with(".prompt.md") || (lower.contains("prompt") && ext == "md") {
        return Kind::Prompt;
    }
    if WEIGHTS.contains(&ext) || lower.ends_with(".onnx.data") {
        Kind::Weights
    } else if ext == "json" {
        // `train.json`, `eval_data.json`: a split, not a setting (KitOps would put it with
        // the model); `train_results.json` and `eval_metrics.json` are the Trainer's output.
        let stem = stem_of(&lower);
        let split = ["train", "test", "val", "valid", "validation", "eval", "dev"]
            .iter()
            .any(|s| {
                stem == *s
                    || stem.starts_with(&format!("{s}_"))
                    || stem.starts_with(&format!("{s}-"))
            })
            && !["result", "metric", "score"]
                .iter()
                .any(|m| stem.contains(m));
        if split || stem.contains("dataset") {
            Kind::Dataset
        } else {
            Kind::Metadata
        }
    } else if DATASET.contains(&ext) {
        Kind::Dataset
    } else if DOCS.contains(&ext) {
        Kind::Docs
    } else if PROMPT.contains(&ext) {
        Kind::Prompt
    } else {
        // Source files, and (as in KitOps) whatever cannot be placed otherwise.
        Kind::Code
    }
}

/// `model-00001-of-00004` -> `model`: the name shards share.
fn shard_base(stem: &str) -> Option<&str> {
    let (head, total) = stem.rsplit_once("-of-")?;
    let (base, index) = head.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(total) && digits(index) && !base.is_empty()).then_some(base)
}

/// The weights group a file belongs to, named like its main file: shards share
/// `model.safetensors`, ONNX external data joins its `.onnx` file.
fn group_key(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".onnx_data") || lower.ends_with(".onnx.data") {
        return name[..name.len() - 5].to_string();
    }
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match shard_base(stem_of(name)) {
        Some(base) => format!("{base}.{ext}"),
        None => name.to_string(),
    }
}

fn model_format(name: &str) -> &'static str {
    match ext_of(&name.to_ascii_lowercase()) {
        "gguf" => "gguf",
        "safetensors" => "safetensors",
        "onnx" | "onnx_data" => "onnx",
        "bin" | "pt" | "pth" | "pt2" => "pytorch",
        "h5" | "keras" => "keras",
        "tflite" => "tflite",
        "pkl" | "pickle" | "joblib" => "pickle",
        _ => "",
    }
}

/// Which weights win when several groups are about the same size: the formats that load
/// safely and fast first (a repository often ships one model as .safetensors and .bin).
fn format_rank(format: &str) -> u8 {
    match format {
        "safetensors" => 0,
        "gguf" => 1,
        "onnx" => 2,
        "pytorch" => 3,
        _ => 4,
    }
}

/// One file or directory of the scanned tree (ignored paths already left out).
struct Node {
    rel: String,
    name: String,
    size: u64,
    /// `Some` for a directory.
    children: Option<Vec<Node>>,
}

impl Node {
    fn files(&self) -> Vec<&Node> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(n) = stack.pop() {
            match &n.children {
                Some(c) => stack.extend(c.iter()),
                None => out.push(n),
            }
        }
        out
    }
}

struct Scanner<'a> {
    root: &'a Path,
    user: IgnoreRules,
    junk: Vec<(&'static str, IgnoreRules)>,
    /// Paths left out, with the reason.
    skipped: Vec<Placement>,
    /// Default patterns that matched something, and virtualenv directories found.
    needed: BTreeSet<String>,
}

impl Scanner<'_> {
    fn size_of(&self, rel: &str) -> u64 {
        fn walk(p: &Path) -> u64 {
            match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => fs::read_dir(p)
                    .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                    .unwrap_or(0),
                Ok(m) => m.len(),
                Err(_) => 0,
            }
        }
        walk(&self.root.join(rel))
    }

    fn skip(&mut self, rel: &str, section: &str) {
        let size = self.size_of(rel);
        self.skipped.push(Placement {
            path: rel.to_string(),
            section: section.to_string(),
            size,
        });
    }

    fn scan_dir(&mut self, rel: &str) -> Result<Vec<Node>> {
        let dir = if rel.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(rel)
        };
        let mut entries = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            entries.push((e.file_name().to_string_lossy().into_owned(), e));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        for (name, e) in entries {
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if rel.is_empty()
                && (kitfile::DEFAULT_NAMES.contains(&name.as_str()) || name == IGNORE_FILE)
            {
                continue;
            }
            if self.user.is_ignored(&child) {
                self.skip(&child, IGNORED);
                continue;
            }
            if let Some(pat) = self
                .junk
                .iter()
                .find(|(_, r)| r.is_ignored(&child))
                .map(|(p, _)| *p)
            {
                self.needed.insert(pat.to_string());
                self.skip(&child, IGNORED);
                continue;
            }
            let ft = e.file_type().at(e.path())?;
            if ft.is_dir() && e.path().join("pyvenv.cfg").is_file() {
                self.needed.insert(child.clone());
                self.skip(&child, IGNORED);
                continue;
            }
            // pack only takes what an entry names, so top-level hidden files and symlinks
            // (which pack refuses as entries) are not offered.
            if rel.is_empty() && name.starts_with('.') {
                self.skip(&child, HIDDEN);
                continue;
            }
            if rel.is_empty() && ft.is_symlink() {
                self.skip(&child, SYMLINK);
                continue;
            }
            if ft.is_dir() {
                let children = self.scan_dir(&child)?;
                let size = children.iter().map(|c| c.size).sum();
                out.push(Node {
                    rel: child,
                    name,
                    size,
                    children: Some(children),
                });
            } else if ft.is_file() || ft.is_symlink() {
                let size = fs::metadata(e.path()).map(|m| m.len()).unwrap_or(0);
                out.push(Node {
                    rel: child,
                    name,
                    size,
                    children: None,
                });
            }
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DirKind {
    /// Holds weights: one model part (or the model).
    Weights,
    /// Only model configs (`tokenizer/`, `scheduler/`, `1_Pooling/`): one model part.
    ModelConfig,
    Dataset,
    Code,
    Docs,
    Prompt,
}

fn classify_dir(node: &Node) -> DirKind {
    match node.name.to_ascii_lowercase().as_str() {
        "prompts" | "prompt" => return DirKind::Prompt,
        "docs" | "doc" | "documentation" => return DirKind::Docs,
        "src" | "pkg" | "lib" | "build" | "scripts" | "notebooks" => return DirKind::Code,
        "data" | "dataset" | "datasets" => return DirKind::Dataset,
        _ => {}
    }
    let mut bytes: BTreeMap<Kind, u64> = BTreeMap::new();
    for f in node.files() {
        let k = match classify_file(&f.name) {
            Kind::ModelConfig(_) => Kind::ModelConfig(PartType::Config),
            k => k,
        };
        // Count empty files too, so a directory of them still has a kind.
        *bytes.entry(k).or_default() += f.size.max(1);
    }
    let of = |k: Kind| bytes.get(&k).copied().unwrap_or(0);
    let total: u64 = bytes.values().sum();
    let weights = of(Kind::Weights);
    let config = of(Kind::ModelConfig(PartType::Config));
    let model_related = weights + config + of(Kind::Metadata);
    if weights > 0 && model_related * 2 >= total {
        return DirKind::Weights;
    }
    if weights == 0 && config > 0 && model_related == total {
        return DirKind::ModelConfig;
    }
    // Otherwise the kind holding the most bytes names it.
    match bytes
        .iter()
        .max_by_key(|(_, b)| **b)
        .map(|(k, _)| *k)
        .unwrap_or(Kind::Code)
    {
        Kind::Weights | Kind::ModelConfig(_) => DirKind::Weights,
        Kind::Dataset | Kind::Metadata => DirKind::Dataset,
        Kind::Docs => DirKind::Docs,
        Kind::Prompt => DirKind::Prompt,
        Kind::Code => DirKind::Code,
    }
}

/// A set of weights files that make one model: shards, or a file and its external data,
/// or a directory.
struct Unit {
    key: String,
    /// Paths, the main one first.
    paths: Vec<String>,
    size: u64,
    format: &'static str,
    dir: bool,
}

/// The `.py` files a config's `auto_map` names (`"AutoModel": "modeling_x.XModel"`, or
/// `"repo--modeling_x.XModel"`): `trust_remote_code` loads them from the model folder.
fn auto_map_modules(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for name in ["config.json", "tokenizer_config.json"] {
        let Some(text) = read_head(&root.join(name), 4 << 20) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let Some(map) = v.get("auto_map").and_then(|m| m.as_object()) else {
            continue;
        };
        let mut add = |s: &str| {
            let s = s.rsplit_once("--").map(|(_, m)| m).unwrap_or(s);
            if let Some((module, _class)) = s.rsplit_once('.') {
                out.insert(format!("{}.py", module.replace('.', "/")));
            }
        };
        for val in map.values() {
            match val {
                serde_json::Value::String(s) => add(s),
                serde_json::Value::Array(a) => {
                    a.iter().filter_map(|x| x.as_str()).for_each(&mut add)
                }
                _ => {}
            }
        }
    }
    out
}

/// Reads at most `limit` bytes of a text file; `None` if it cannot be read.
fn read_head(path: &Path, limit: u64) -> Option<String> {
    let f = fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(limit).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Builds the Kitfile for `dir` and says where everything went (writes nothing).
pub fn generate(dir: &Path, opts: &InitOptions) -> Result<InitPlan> {
    let ignore_path = dir.join(IGNORE_FILE);
    let user_text = match fs::read_to_string(&ignore_path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).at(&ignore_path),
    };
    let user = match &user_text {
        Some(t) => IgnoreRules::parse(t)?,
        None => IgnoreRules::default(),
    };
    let junk = DEFAULT_IGNORES
        .iter()
        .map(|p| Ok((*p, IgnoreRules::parse(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut scanner = Scanner {
        root: dir,
        user,
        junk,
        skipped: Vec::new(),
        needed: BTreeSet::new(),
    };
    let top = scanner.scan_dir("")?;
    let remote_code = auto_map_modules(dir);

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
    let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
    let mut groups: BTreeMap<String, Vec<&Node>> = BTreeMap::new();
    let mut units: Vec<Unit> = Vec::new();
    let mut configs: Vec<(String, PartType)> = Vec::new();
    let mut metadata: Vec<String> = Vec::new();
    for node in &top {
        sizes.insert(node.rel.clone(), node.size);
        let kind = if node.children.is_some() {
            match classify_dir(node) {
                DirKind::Weights => {
                    let weights: Vec<&Node> = node
                        .files()
                        .into_iter()
                        .filter(|f| classify_file(&f.name) == Kind::Weights)
                        .collect();
                    // The directory takes the format of the weights holding most bytes.
                    let mut by_format: BTreeMap<&str, u64> = BTreeMap::new();
                    for f in &weights {
                        *by_format.entry(model_format(&f.name)).or_default() += f.size;
                    }
                    units.push(Unit {
                        key: node.name.clone(),
                        paths: vec![node.rel.clone()],
                        size: weights.iter().map(|f| f.size).sum(),
                        format: by_format
                            .iter()
                            .max_by_key(|(_, b)| **b)
                            .map(|(f, _)| *f)
                            .unwrap_or(""),
                        dir: true,
                    });
                    continue;
                }
                DirKind::ModelConfig => Kind::ModelConfig(PartType::Config),
                DirKind::Dataset => Kind::Dataset,
                DirKind::Code => Kind::Code,
                DirKind::Docs => Kind::Docs,
                DirKind::Prompt => Kind::Prompt,
            }
        } else if remote_code.contains(&node.name) {
            Kind::ModelConfig(PartType::Code)
        } else {
            classify_file(&node.name)
        };
        match kind {
            Kind::Weights => groups.entry(group_key(&node.name)).or_default().push(node),
            Kind::ModelConfig(t) => configs.push((node.rel.clone(), t)),
            Kind::Metadata => metadata.push(node.rel.clone()),
            Kind::Dataset => {
                let mut name = if node.children.is_some() {
                    node.name.clone()
                } else {
                    stem_of(&node.name).to_string()
                };
                if kf.datasets.iter().any(|d| d.name == name) {
                    name = node.name.clone();
                }
                kf.datasets.push(Dataset {
                    name,
                    path: node.rel.clone(),
                    ..Default::default()
                });
            }
            Kind::Code => kf.code.push(Code {
                path: node.rel.clone(),
                ..Default::default()
            }),
            Kind::Docs => kf.docs.push(Docs {
                path: node.rel.clone(),
                description: match node.name.to_ascii_lowercase() {
                    n if n.starts_with("readme") => "Readme file".into(),
                    n if n.starts_with("license") || n.starts_with("licence") => {
                        "License file".into()
                    }
                    _ => String::new(),
                },
                ..Default::default()
            }),
            Kind::Prompt => kf.prompts.push(Prompt {
                name: if node.children.is_some() {
                    String::new()
                } else {
                    stem_of(&node.name).to_string()
                },
                path: node.rel.clone(),
                ..Default::default()
            }),
        }
    }
    for (key, mut files) in groups {
        // The file named like the group (`model.onnx` before its `.onnx_data`) leads, then
        // shards in order.
        files.sort_by(|a, b| {
            (a.name != key)
                .cmp(&(b.name != key))
                .then(a.name.cmp(&b.name))
        });
        units.push(Unit {
            format: model_format(&key),
            paths: files.iter().map(|f| f.rel.clone()).collect(),
            size: files.iter().map(|f| f.size).sum(),
            key,
            dir: false,
        });
    }

    if !units.is_empty() || !configs.is_empty() {
        let mut model = Model::default();
        let mut parts = Vec::new();
        if !units.is_empty() {
            // The largest weights are the model; among groups of about that size (the same
            // model in several formats) the preferred format wins.
            let largest = units.iter().map(|u| u.size).max().unwrap_or(0);
            let main_index = units
                .iter()
                .enumerate()
                .filter(|(_, u)| u.size.saturating_mul(2) >= largest)
                .min_by(|(_, a), (_, b)| {
                    format_rank(a.format)
                        .cmp(&format_rank(b.format))
                        .then(b.size.cmp(&a.size))
                        .then(a.key.cmp(&b.key))
                })
                .map(|(i, _)| i)
                .unwrap_or(0);
            let main = units.remove(main_index);
            let mut paths = main.paths.into_iter();
            if let Some(first) = paths.next() {
                model.name = if main.dir {
                    main.key.clone()
                } else {
                    stem_of(&main.key).to_string()
                };
                model.path = first;
                model.format = main.format.to_string();
            }
            let weight_part = |p: String, dir: bool| ModelPart {
                name: if dir {
                    p.clone()
                } else {
                    stem_of(&p).to_string()
                },
                path: p,
                part_type: "weights".into(),
                ..Default::default()
            };
            parts.extend(paths.map(|p| weight_part(p, false)));
            units.sort_by(|a, b| a.key.cmp(&b.key));
            for u in units {
                parts.extend(u.paths.into_iter().map(|p| weight_part(p, u.dir)));
            }
        }
        parts.extend(configs.into_iter().map(|(p, t)| ModelPart {
            path: p,
            part_type: t.as_str().into(),
            ..Default::default()
        }));
        parts.extend(metadata.drain(..).map(|p| ModelPart {
            path: p,
            part_type: PartType::Config.as_str().into(),
            ..Default::default()
        }));
        model.parts = parts;
        kf.model = Some(model);
    } else {
        for p in metadata.drain(..) {
            kf.datasets.push(Dataset {
                name: stem_of(&p).to_string(),
                path: p,
                ..Default::default()
            });
        }
    }

    let license = detect_license(dir, &top);
    if let Some(l) = &license {
        // Where KitOps puts it: on the model, else the only dataset or code entry, else
        // the package.
        let id = l.id.clone();
        if let Some(m) = kf.model.as_mut() {
            m.license = id;
        } else if kf.datasets.len() == 1 {
            kf.datasets[0].license = id;
        } else if kf.code.len() == 1 {
            kf.code[0].license = id;
        } else {
            kf.package.license = id;
        }
    }

    let mut placements: Vec<Placement> = kf
        .layer_entries()
        .into_iter()
        .map(|e| {
            let section = match e.kind {
                LayerKind::Model => "model".to_string(),
                LayerKind::ModelPart => {
                    let t = kf
                        .model
                        .as_ref()
                        .and_then(|m| m.parts.get(e.index))
                        .map(|p| p.part_type.as_str())
                        .unwrap_or("");
                    format!("model part ({t})")
                }
                LayerKind::Code => "code".into(),
                LayerKind::Dataset => "dataset".into(),
                LayerKind::Docs => "docs".into(),
                LayerKind::Prompt => "prompt".into(),
            };
            Placement {
                size: sizes.get(&e.path).copied().unwrap_or(0),
                path: e.path,
                section,
            }
        })
        .collect();
    placements.append(&mut scanner.skipped);

    let kitignore = kitignore_text(user_text.as_deref(), &scanner.needed);
    let warnings = check_shard_indexes(dir, &kf);
    Ok(InitPlan {
        kitfile: kf,
        placements,
        license,
        kitignore,
        warnings,
    })
}

/// A shard index (`model.safetensors.index.json`) whose `weight_map` names a file the
/// model does not hold makes `from_pretrained` fail after the download: say so now (an
/// interrupted `git lfs pull` or download, or a shard left out by `.kitignore`).
fn check_shard_indexes(root: &Path, kf: &Kitfile) -> Vec<String> {
    let Some(m) = &kf.model else {
        return Vec::new();
    };
    let held: BTreeSet<&str> = std::iter::once(m.path.as_str())
        .chain(m.parts.iter().map(|p| p.path.as_str()))
        .collect();
    let mut out = Vec::new();
    for index in held.iter().filter(|p| p.ends_with(".index.json")) {
        let Some(text) = read_head(&root.join(index), 64 << 20) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            out.push(format!("{index} is not valid JSON"));
            continue;
        };
        let Some(map) = v.get("weight_map").and_then(|w| w.as_object()) else {
            continue;
        };
        let dir = index.rsplit_once('/').map(|(d, _)| d);
        let missing: BTreeSet<String> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| match dir {
                Some(d) => format!("{d}/{f}"),
                None => f.to_string(),
            })
            .filter(|f| !held.contains(f.as_str()))
            .collect();
        if !missing.is_empty() {
            let shown: Vec<&str> = missing.iter().take(3).map(String::as_str).collect();
            out.push(format!(
                "{index} maps weights to {} file(s) the model does not hold ({}{}): \
an incomplete download, or left out by .kitignore?",
                missing.len(),
                shown.join(", "),
                if missing.len() > 3 { ", ..." } else { "" }
            ));
        }
    }
    out
}

/// The new `.kitignore`: a fresh one lists every default pattern (so a later
/// `__pycache__` stays out too); an existing one only gets what this tree needs.
fn kitignore_text(existing: Option<&str>, needed: &BTreeSet<String>) -> Option<String> {
    // Defaults first, in their documented order, then virtualenvs found.
    let ordered = |all: bool| -> Vec<String> {
        DEFAULT_IGNORES
            .iter()
            .filter(|p| all || needed.contains(**p))
            .map(|p| p.to_string())
            .chain(
                needed
                    .iter()
                    .filter(|n| !DEFAULT_IGNORES.contains(&n.as_str()))
                    .cloned(),
            )
            .collect()
    };
    match existing {
        None => {
            let mut t = String::from(
                "# Written by `kitsnap init`: caches and environments stay out of the ModelKit.\n",
            );
            for p in ordered(true) {
                t.push_str(&p);
                t.push('\n');
            }
            Some(t)
        }
        Some(_) if needed.is_empty() => None,
        Some(old) => {
            let mut t = old.to_string();
            if !t.is_empty() && !t.ends_with('\n') {
                t.push('\n');
            }
            t.push_str("# Added by `kitsnap init`\n");
            for p in ordered(false) {
                t.push_str(&p);
                t.push('\n');
            }
            Some(t)
        }
    }
}

/// The license, from the README card's `license:` (an explicit declaration), else the
/// text of a LICENSE/LICENCE/COPYING file.
fn detect_license(dir: &Path, top: &[Node]) -> Option<DetectedLicense> {
    let named = |prefixes: &[&str]| -> Vec<&Node> {
        top.iter()
            .filter(|n| {
                let l = n.name.to_ascii_lowercase();
                n.children.is_none() && prefixes.iter().any(|p| l.starts_with(p))
            })
            .collect()
    };
    for readme in named(&["readme"]) {
        if let Some(text) = read_head(&dir.join(&readme.rel), 1 << 20)
            && let Some(id) = license_from_card(&text)
        {
            return Some(DetectedLicense {
                id,
                source: format!("{} card metadata", readme.rel),
            });
        }
    }
    for file in named(&["license", "licence", "copying"]) {
        if let Some(text) = read_head(&dir.join(&file.rel), 1 << 20)
            && let Some(id) = license_from_text(&text)
        {
            return Some(DetectedLicense {
                id,
                source: format!("{} license text", file.rel),
            });
        }
    }
    None
}

/// The `license` of a Hugging Face model or dataset card: the YAML block between `---`
/// lines at the top of README.md.
fn license_from_card(readme: &str) -> Option<String> {
    let body = readme.trim_start_matches('\u{feff}');
    let rest = body
        .strip_prefix("---\n")
        .or_else(|| body.strip_prefix("---\r\n"))?;
    let end = rest
        .find("\n---\n")
        .or_else(|| rest.find("\n---\r\n"))
        .or_else(|| rest.strip_suffix("\n---").map(|r| r.len()))?;
    let meta: serde_yaml_ng::Value = serde_yaml_ng::from_str(&rest[..end]).ok()?;
    let name = meta
        .get("license_name")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let ids: Vec<String> = match meta.get("license")? {
        serde_yaml_ng::Value::String(s) => vec![s.clone()],
        serde_yaml_ng::Value::Sequence(s) => s
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => return None,
    };
    let ids: Vec<String> = ids
        .iter()
        .filter_map(|id| hub_license_to_spdx(id, name.as_deref()))
        .collect();
    // A card that lists several licenses offers a choice.
    (!ids.is_empty()).then(|| ids.join(" OR "))
}

/// A Hugging Face license id (lower-case SPDX-like, or a name such as `llama3.1`) as an
/// SPDX id; `other` takes the card's `license_name`.
pub fn hub_license_to_spdx(id: &str, license_name: Option<&str>) -> Option<String> {
    let id = id.trim();
    let lower = id.to_ascii_lowercase();
    match lower.as_str() {
        "" | "unknown" => return None,
        "other" => return license_name.map(license_ref),
        // The hub's short names for SPDX licenses whose ids carry a version.
        "odbl" => return Some("ODbL-1.0".into()),
        "odc-by" => return Some("ODC-By-1.0".into()),
        "pddl" => return Some("PDDL-1.0".into()),
        "bsd" => return Some("BSD-3-Clause".into()),
        "gpl" => return Some("GPL-3.0-or-later".into()),
        "lgpl" => return Some("LGPL-3.0-or-later".into()),
        "gfdl" => return Some("GFDL-1.3-or-later".into()),
        _ => {}
    }
    spdx_canonical(id).or_else(|| Some(license_ref(id)))
}

/// The SPDX list's spelling of `id` (matched ignoring case); deprecated bare GNU ids
/// (`GPL-3.0`) become their `-only` form.
fn spdx_canonical(id: &str) -> Option<String> {
    let lic = spdx::identifiers::LICENSES
        .iter()
        .find(|l| l.name.eq_ignore_ascii_case(id))?;
    let found = spdx::license_id(lic.name)?;
    if found.is_deprecated()
        && found.is_gnu()
        && let Some(only) = spdx::gnu_license_id(found.name, false)
    {
        return Some(only.name.to_string());
    }
    Some(found.name.to_string())
}

/// `LicenseRef-<name>`: SPDX's form for licenses it does not list (idstring: letters,
/// digits, `.` and `-`).
fn license_ref(name: &str) -> String {
    let clean: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("LicenseRef-{clean}")
}

/// Licenses common on model hubs that SPDX does not list, by the title their text opens
/// with, named as the hub names them.
const NAMED_LICENSES: &[(&str, &str)] = &[
    ("llama 2 community license", "llama2"),
    ("llama 3 community license", "llama3"),
    ("llama 3.1 community license", "llama3.1"),
    ("llama 3.2 community license", "llama3.2"),
    ("llama 3.3 community license", "llama3.3"),
    ("llama 4 community license", "llama4"),
    ("gemma terms of use", "gemma"),
    ("creativeml open rail-m", "creativeml-openrail-m"),
    ("bigscience open rail-m", "bigscience-openrail-m"),
    ("bigcode open rail-m", "bigcode-openrail-m"),
];

/// The license a LICENSE file's text is, by title for the hub licenses above, else by
/// comparing it with every SPDX license text (askalono's algorithm, in the `spdx` crate).
pub fn license_from_text(text: &str) -> Option<String> {
    let head: String = text
        .chars()
        .take(2000)
        .collect::<String>()
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if let Some((_, name)) = NAMED_LICENSES.iter().find(|(t, _)| head.contains(t)) {
        return Some(license_ref(name));
    }
    static STORE: OnceLock<Option<spdx::detection::Store>> = OnceLock::new();
    let store = STORE
        .get_or_init(|| spdx::detection::Store::load_inline().ok())
        .as_ref()?;
    let found = store.analyze(&spdx::detection::TextData::new(text));
    // askalono's own confidence threshold: below it the text is only similar.
    if found.score < 0.8 {
        return None;
    }
    // A GNU license's text cannot tell "only" from "or later" (that is in each source
    // file's notice); askalono names whichever alias it met first. Say `-only`, as the
    // hub's `gpl-3.0` does.
    let base = found
        .name
        .trim_end_matches("-or-later")
        .trim_end_matches("-only");
    spdx_canonical(base)
        .or_else(|| spdx_canonical(found.name))
        .or_else(|| Some(found.name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InitOptions {
        InitOptions {
            name: Some("demo".into()),
            description: None,
            author: None,
        }
    }

    fn write(root: &Path, rel: &str, data: impl AsRef<[u8]>) {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(p, data).unwrap();
    }

    fn parts(kf: &Kitfile) -> Vec<(&str, &str)> {
        kf.model
            .as_ref()
            .unwrap()
            .parts
            .iter()
            .map(|p| (p.path.as_str(), p.part_type.as_str()))
            .collect()
    }

    fn paths<T>(v: &[T], f: impl Fn(&T) -> &str) -> Vec<&str> {
        v.iter().map(f).collect()
    }

    /// Checks what every generated Kitfile must satisfy: valid, and round-trips.
    fn sound(kf: &Kitfile) {
        kf.validate().unwrap();
        let y = kf.to_yaml().unwrap();
        assert_eq!(Kitfile::from_yaml(&y, "K").unwrap(), *kf);
    }

    const APACHE_CARD: &str = "---\nlicense: apache-2.0\nlibrary_name: transformers\n\
pipeline_tag: text-generation\n---\n# Tiny LLM\n";

    /// A sharded safetensors checkpoint as `save_pretrained` writes it (4 shards), with
    /// its tokenizer, a remote-code module, training scripts and caches.
    fn sharded_llm(p: &Path) {
        for i in 1..=4 {
            write(
                p,
                &format!("model-0000{i}-of-00004.safetensors"),
                vec![i as u8; 4000],
            );
        }
        write(
            p,
            "model.safetensors.index.json",
            r#"{"metadata":{"total_size":16000},"weight_map":{"a":"model-00001-of-00004.safetensors","b":"model-00004-of-00004.safetensors"}}"#,
        );
        write(
            p,
            "config.json",
            r#"{"architectures":["TinyForCausalLM"],"auto_map":{"AutoConfig":"configuration_tiny.TinyConfig","AutoModelForCausalLM":"modeling_tiny.TinyForCausalLM"}}"#,
        );
        write(p, "configuration_tiny.py", "class TinyConfig: pass\n");
        write(p, "modeling_tiny.py", "class TinyForCausalLM: pass\n");
        write(p, "generation_config.json", "{}");
        write(p, "tokenizer.json", "{}");
        write(p, "tokenizer_config.json", "{}");
        write(p, "tokenizer.model", "spm");
        write(p, "special_tokens_map.json", "{}");
        write(p, "README.md", APACHE_CARD);
        write(p, "LICENSE", "see the card");
        write(p, ".gitattributes", "*.safetensors filter=lfs\n");
        write(p, "train.py", "print('train')\n");
        write(p, "requirements.txt", "torch\ntransformers\n");
        write(p, "__pycache__/train.cpython-312.pyc", "x");
        write(p, "prompts/system.md", "You are helpful.");
        write(p, ".git/HEAD", "ref: refs/heads/main\n");
    }

    #[test]
    fn sharded_safetensors_llm_keeps_what_from_pretrained_loads_together() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        sharded_llm(p);
        let plan = generate(p, &opts()).unwrap();
        let kf = &plan.kitfile;
        sound(kf);
        let m = kf.model.as_ref().unwrap();
        assert_eq!(m.path, "model-00001-of-00004.safetensors");
        assert_eq!(m.name, "model");
        assert_eq!(m.format, "safetensors");
        assert_eq!(m.license, "Apache-2.0");
        assert_eq!(
            parts(kf),
            vec![
                ("model-00002-of-00004.safetensors", "weights"),
                ("model-00003-of-00004.safetensors", "weights"),
                ("model-00004-of-00004.safetensors", "weights"),
                ("config.json", "config"),
                ("configuration_tiny.py", "code"),
                ("generation_config.json", "config"),
                ("model.safetensors.index.json", "config"),
                ("modeling_tiny.py", "code"),
                ("special_tokens_map.json", "tokenizer"),
                ("tokenizer.json", "tokenizer"),
                ("tokenizer.model", "tokenizer"),
                ("tokenizer_config.json", "tokenizer"),
            ]
        );
        assert_eq!(
            paths(&kf.code, |c| &c.path),
            vec!["requirements.txt", "train.py"]
        );
        assert_eq!(paths(&kf.docs, |c| &c.path), vec!["LICENSE", "README.md"]);
        assert_eq!(paths(&kf.prompts, |c| &c.path), vec!["prompts"]);
        assert!(kf.datasets.is_empty());
        let lic = plan.license.unwrap();
        assert_eq!(lic.source, "README.md card metadata");
        // Caches are left out and listed in the new .kitignore.
        let skipped: Vec<(&str, &str)> = plan
            .placements
            .iter()
            .filter(|p| p.section.starts_with("ignored") || p.section.starts_with("not"))
            .map(|p| (p.path.as_str(), p.section.as_str()))
            .collect();
        assert_eq!(
            skipped,
            vec![
                (".git", "ignored (.kitignore)"),
                (".gitattributes", "not packed (hidden)"),
                ("__pycache__", "ignored (.kitignore)"),
            ]
        );
        let ki = plan.kitignore.unwrap();
        for pat in DEFAULT_IGNORES {
            assert!(ki.lines().any(|l| l == *pat), "{ki}");
        }
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        // An index naming a shard that is not there is reported.
        fs::remove_file(p.join("model-00004-of-00004.safetensors")).unwrap();
        let warned = generate(p, &opts()).unwrap().warnings;
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0].contains("1 file(s)")
                && warned[0].contains("model-00004-of-00004.safetensors"),
            "{warned:?}"
        );
        // Every entry is in the table with its size, in layer order.
        assert_eq!(plan.placements[0].path, "model-00001-of-00004.safetensors");
        assert_eq!(plan.placements[0].section, "model");
        assert_eq!(plan.placements[0].size, 4000);
        assert_eq!(
            plan.placements.len(),
            kf.layer_entries().len() + skipped.len()
        );
    }

    #[test]
    fn gguf_quantisations_make_one_model_with_the_largest_as_main() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        write(p, "tinyllama-1.1b.Q2_K.gguf", vec![0u8; 300]);
        write(p, "tinyllama-1.1b.Q4_K_M.gguf", vec![0u8; 500]);
        write(p, "tinyllama-1.1b.Q8_0.gguf", vec![0u8; 900]);
        // A split quantisation (llama.cpp's gguf-split naming) is one group.
        write(p, "tinyllama-1.1b.F16-00001-of-00002.gguf", vec![0u8; 800]);
        write(p, "tinyllama-1.1b.F16-00002-of-00002.gguf", vec![0u8; 700]);
        write(
            p,
            "README.md",
            "---\nlicense: llama2\nquantized_by: someone\n---\n",
        );
        let plan = generate(p, &opts()).unwrap();
        let kf = &plan.kitfile;
        sound(kf);
        let m = kf.model.as_ref().unwrap();
        assert_eq!(m.path, "tinyllama-1.1b.F16-00001-of-00002.gguf");
        assert_eq!(m.name, "tinyllama-1.1b.F16");
        assert_eq!(m.format, "gguf");
        assert_eq!(m.license, "LicenseRef-llama2");
        assert_eq!(
            parts(kf),
            vec![
                ("tinyllama-1.1b.F16-00002-of-00002.gguf", "weights"),
                ("tinyllama-1.1b.Q2_K.gguf", "weights"),
                ("tinyllama-1.1b.Q4_K_M.gguf", "weights"),
                ("tinyllama-1.1b.Q8_0.gguf", "weights"),
            ]
        );
        // Quantisations are named, so `--filter model:tinyllama-1.1b.Q4_K_M` picks one.
        assert_eq!(m.parts[2].name, "tinyllama-1.1b.Q4_K_M");
        assert_eq!(paths(&kf.docs, |c| &c.path), vec!["README.md"]);
    }

    #[test]
    fn onnx_with_external_data_and_a_config_only_tokenizer_dir() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        // Xenova/optimum layout: weights under onnx/, configs at the top.
        write(p, "onnx/model.onnx", vec![0u8; 100]);
        write(p, "onnx/model.onnx_data", vec![0u8; 5000]);
        write(p, "onnx/model_quantized.onnx", vec![0u8; 1300]);
        write(p, "config.json", "{}");
        write(p, "tokenizer/vocab.json", "{}");
        write(p, "tokenizer/merges.txt", "a b");
        write(p, "quantize_config.json", "{}");
        write(p, "LICENSE.md", MIT_TEXT);
        let plan = generate(p, &opts()).unwrap();
        let kf = &plan.kitfile;
        sound(kf);
        let m = kf.model.as_ref().unwrap();
        assert_eq!(m.path, "onnx");
        assert_eq!(m.format, "onnx");
        assert_eq!(m.license, "MIT");
        assert_eq!(
            parts(kf),
            vec![
                ("config.json", "config"),
                ("quantize_config.json", "config"),
                ("tokenizer", "config"),
            ]
        );
        assert_eq!(plan.license.unwrap().source, "LICENSE.md license text");

        // The same files at the top: the .onnx file leads its external data.
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        write(p, "model.onnx", vec![0u8; 100]);
        write(p, "model.onnx_data", vec![0u8; 5000]);
        write(p, "model_fp16.onnx", vec![0u8; 2600]);
        write(p, "model_fp16.onnx.data", vec![0u8; 1]);
        let kf = generate(p, &opts()).unwrap().kitfile;
        sound(&kf);
        let m = kf.model.as_ref().unwrap();
        assert_eq!((m.path.as_str(), m.name.as_str()), ("model.onnx", "model"));
        assert_eq!(
            paths(&m.parts, |p| &p.path),
            vec!["model.onnx_data", "model_fp16.onnx", "model_fp16.onnx.data"]
        );
    }

    #[test]
    fn sklearn_pickle_with_requirements_and_a_virtualenv() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        write(p, "model.joblib", vec![0u8; 2000]);
        write(p, "scaler.pkl", vec![0u8; 100]);
        write(p, "requirements.txt", "scikit-learn==1.5\n");
        write(p, "pyproject.toml", "[project]\nname='x'\n");
        write(p, "predict.py", "import joblib\n");
        write(p, "metrics.json", "{}");
        write(p, "train_data.json", "[]");
        write(p, "eval_results.json", "{}");
        write(p, "notebooks/explore.ipynb", "{}");
        write(
            p,
            "notebooks/.ipynb_checkpoints/explore-checkpoint.ipynb",
            "{}",
        );
        write(p, "env/pyvenv.cfg", "home = /usr/bin\n");
        write(p, "env/lib/python3.12/site-packages/x.py", "");
        write(p, "LICENSE", BSD3_TEXT);
        fs::write(p.join(IGNORE_FILE), "*.log").unwrap();
        write(p, "debug.log", "x");
        let plan = generate(p, &opts()).unwrap();
        let kf = &plan.kitfile;
        sound(kf);
        let m = kf.model.as_ref().unwrap();
        assert_eq!(
            (m.path.as_str(), m.format.as_str()),
            ("model.joblib", "pickle")
        );
        assert_eq!(m.license, "BSD-3-Clause");
        // JSON metadata goes with the model, as KitOps does.
        assert_eq!(
            parts(kf),
            vec![
                ("scaler.pkl", "weights"),
                ("eval_results.json", "config"),
                ("metrics.json", "config")
            ]
        );
        assert_eq!(
            paths(&kf.code, |c| &c.path),
            vec![
                "notebooks",
                "predict.py",
                "pyproject.toml",
                "requirements.txt"
            ]
        );
        assert!(kf.docs.iter().any(|d| d.path == "LICENSE"));
        // A JSON split is a dataset even next to a model.
        assert_eq!(paths(&kf.datasets, |d| &d.path), vec!["train_data.json"]);
        // The existing .kitignore keeps its rules and gains only what this tree needs.
        let ki = plan.kitignore.unwrap();
        assert!(ki.starts_with("*.log\n# Added by `kitsnap init`\n"), "{ki}");
        assert!(ki.lines().any(|l| l == "**/.ipynb_checkpoints"), "{ki}");
        assert!(ki.lines().any(|l| l == "env"), "{ki}");
        assert!(!ki.contains("__pycache__"), "{ki}");
        let ignored: Vec<&str> = plan
            .placements
            .iter()
            .filter(|p| p.section == "ignored (.kitignore)")
            .map(|p| p.path.as_str())
            .collect();
        assert_eq!(
            ignored,
            vec!["debug.log", "env", "notebooks/.ipynb_checkpoints"]
        );
        // What init wrote is what pack will honour: the new rules ignore the same paths.
        let rules = IgnoreRules::parse(&ki).unwrap();
        for path in &ignored {
            assert!(rules.is_ignored(path), "{path}");
        }
        // Run again with it in place: nothing more to add.
        fs::write(p.join(IGNORE_FILE), &ki).unwrap();
        assert!(generate(p, &opts()).unwrap().kitignore.is_none());
    }

    #[test]
    fn dataset_repo_with_parquet_shards_and_a_card() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        write(p, "data/train-00000-of-00002.parquet", vec![0u8; 900]);
        write(p, "data/train-00001-of-00002.parquet", vec![0u8; 900]);
        write(p, "data/test-00000-of-00001.parquet", vec![0u8; 200]);
        write(
            p,
            "README.md",
            "---\nlicense: cc-by-sa-4.0\ntask_categories:\n- text-classification\n\
configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n# Data\n",
        );
        write(p, "dataset_infos.json", "{}");
        let plan = generate(p, &opts()).unwrap();
        let kf = &plan.kitfile;
        sound(kf);
        assert!(kf.model.is_none());
        assert_eq!(
            kf.datasets
                .iter()
                .map(|d| (d.name.as_str(), d.path.as_str()))
                .collect::<Vec<_>>(),
            vec![("data", "data"), ("dataset_infos", "dataset_infos.json")]
        );
        // Two datasets: the license belongs to the package.
        assert_eq!(kf.package.license, "CC-BY-SA-4.0");
        assert_eq!(paths(&kf.docs, |c| &c.path), vec!["README.md"]);
        let data = plan.placements.iter().find(|p| p.path == "data").unwrap();
        assert_eq!((data.section.as_str(), data.size), ("dataset", 2000));
    }

    #[test]
    fn diffusers_pipeline_keeps_every_component_with_the_model() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        write(p, "model_index.json", "{}");
        write(p, "unet/config.json", "{}");
        write(
            p,
            "unet/diffusion_pytorch_model.safetensors",
            vec![0u8; 3000],
        );
        write(p, "vae/config.json", "{}");
        write(p, "vae/diffusion_pytorch_model.safetensors", vec![0u8; 300]);
        write(p, "text_encoder/model.safetensors", vec![0u8; 1000]);
        write(p, "scheduler/scheduler_config.json", "{}");
        write(p, "tokenizer/vocab.json", "{}");
        write(p, "tokenizer/tokenizer_config.json", "{}");
        let kf = generate(p, &opts()).unwrap().kitfile;
        sound(&kf);
        let m = kf.model.as_ref().unwrap();
        assert_eq!(
            (m.path.as_str(), m.format.as_str()),
            ("unet", "safetensors")
        );
        assert_eq!(
            parts(&kf),
            vec![
                ("text_encoder", "weights"),
                ("vae", "weights"),
                ("model_index.json", "config"),
                ("scheduler", "config"),
                ("tokenizer", "config"),
            ]
        );
    }

    #[test]
    fn same_model_in_several_formats_prefers_safetensors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        write(p, "pytorch_model.bin", vec![0u8; 1100]);
        write(p, "model.safetensors", vec![0u8; 1000]);
        write(p, "tf_model.h5", vec![0u8; 1200]);
        write(p, "training_args.bin", vec![0u8; 5]);
        let kf = generate(p, &opts()).unwrap().kitfile;
        let m = kf.model.as_ref().unwrap();
        assert_eq!(m.path, "model.safetensors");
        assert_eq!(
            paths(&m.parts, |p| &p.path),
            vec!["pytorch_model.bin", "tf_model.h5", "training_args.bin"]
        );
    }

    #[test]
    fn classifies_a_typical_tree() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        write(p, "model.gguf", vec![0u8; 1000]);
        write(p, "small.safetensors", vec![0u8; 10]);
        write(p, "tokenizer.json", "{}");
        write(p, "README.md", "hi");
        write(p, "train.csv", "a,b");
        write(p, "src/app.py", "print(1)");
        write(p, "system.prompt", "be nice");
        write(p, ".kitignore", "*.log\n");
        write(p, "debug.log", "x");
        std::os::unix::fs::symlink("model.gguf", p.join("latest.gguf")).unwrap();
        let plan = generate(p, &opts()).unwrap();
        assert!(plan.placements.contains(&Placement {
            path: "latest.gguf".into(),
            section: SYMLINK.into(),
            size: 10,
        }));
        let kf = plan.kitfile;
        sound(&kf);
        let m = kf.model.as_ref().unwrap();
        assert_eq!(m.path, "model.gguf");
        assert_eq!(m.format, "gguf");
        assert_eq!(m.parts.len(), 2);
        assert_eq!(kf.datasets[0].path, "train.csv");
        assert_eq!(kf.code[0].path, "src");
        assert_eq!(kf.docs[0].path, "README.md");
        assert_eq!(kf.prompts[0].path, "system.prompt");
    }

    #[test]
    fn shard_names() {
        assert_eq!(shard_base("model-00001-of-00004"), Some("model"));
        assert_eq!(
            shard_base("pytorch_model-00002-of-00002"),
            Some("pytorch_model")
        );
        assert_eq!(shard_base("model-of-x"), None);
        assert_eq!(shard_base("-00001-of-00002"), None);
        assert_eq!(
            group_key("model-00003-of-00004.safetensors"),
            "model.safetensors"
        );
        assert_eq!(group_key("model.onnx_data"), "model.onnx");
        assert_eq!(group_key("model.onnx.data"), "model.onnx");
        assert_eq!(group_key("x.Q4_K_M.gguf"), "x.Q4_K_M.gguf");
    }

    #[test]
    fn hub_licenses_map_to_spdx_ids() {
        let id = |s| hub_license_to_spdx(s, None);
        assert_eq!(id("apache-2.0").as_deref(), Some("Apache-2.0"));
        assert_eq!(id("mit").as_deref(), Some("MIT"));
        assert_eq!(id("bsd-3-clause").as_deref(), Some("BSD-3-Clause"));
        assert_eq!(id("gpl-3.0").as_deref(), Some("GPL-3.0-only"));
        assert_eq!(id("agpl-3.0").as_deref(), Some("AGPL-3.0-only"));
        assert_eq!(id("cc-by-nc-4.0").as_deref(), Some("CC-BY-NC-4.0"));
        assert_eq!(id("odbl").as_deref(), Some("ODbL-1.0"));
        assert_eq!(id("llama3.1").as_deref(), Some("LicenseRef-llama3.1"));
        assert_eq!(id("gemma").as_deref(), Some("LicenseRef-gemma"));
        assert_eq!(id("unknown"), None);
        assert_eq!(id("other"), None);
        assert_eq!(
            hub_license_to_spdx("other", Some("qwen research")).as_deref(),
            Some("LicenseRef-qwen-research")
        );
        assert_eq!(
            license_from_card("---\nlicense:\n- mit\n- apache-2.0\n---\n").as_deref(),
            Some("MIT OR Apache-2.0")
        );
        assert_eq!(license_from_card("# no card\nlicense: mit\n"), None);
    }

    #[test]
    fn license_texts_are_recognised() {
        assert_eq!(license_from_text(MIT_TEXT).as_deref(), Some("MIT"));
        assert_eq!(
            license_from_text(BSD3_TEXT).as_deref(),
            Some("BSD-3-Clause")
        );
        assert_eq!(
            license_from_text(
                "LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\nLlama 3.1 Version Release Date: July 23, 2024\n"
            )
            .as_deref(),
            Some("LicenseRef-llama3.1")
        );
        assert_eq!(license_from_text("All rights reserved. Do not copy."), None);
        // Debian ships full license texts: both GPL versions come out the same way.
        for (file, id) in [
            ("GPL-3", "GPL-3.0-only"),
            ("GPL-2", "GPL-2.0-only"),
            ("Apache-2.0", "Apache-2.0"),
        ] {
            let path = Path::new("/usr/share/common-licenses").join(file);
            if let Ok(text) = fs::read_to_string(&path) {
                assert_eq!(license_from_text(&text).as_deref(), Some(id), "{file}");
            }
        }
    }

    const MIT_TEXT: &str = "MIT License

Copyright (c) 2024 Example Org

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the \"Software\"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
";

    const BSD3_TEXT: &str = "BSD 3-Clause License

Copyright (c) 2024, Example Org

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

3. Neither the name of the copyright holder nor the names of its
   contributors may be used to endorse or promote products derived from
   this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS \"AS IS\"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
";
}
