//! The Kitfile: schema (KitOps `manifestVersion: 1.0.0`), YAML parsing with line-accurate
//! errors, validation, and the JSON form stored as the ModelKit config.
//!
//! Field order mirrors KitOps' Go structs so that the config JSON is byte-identical.

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::oci::LayerKind;
use crate::reference::Reference;

/// File names `pack` looks for in the context directory, in KitOps' order.
pub const DEFAULT_NAMES: [&str; 3] = ["Kitfile", "kitfile", ".kitfile"];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kitfile {
    #[serde(rename = "manifestVersion", default)]
    pub manifest_version: String,
    /// Go's omitempty never omits a struct, so `package` is always written.
    #[serde(default)]
    pub package: Package,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Model>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub code: Vec<Code>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<Dataset>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub docs: Vec<Docs>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<Prompt>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<String>,
}

/// Digest and diffId of the layer built from an entry: present in the stored config,
/// never in a Kitfile a person writes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerInfo {
    pub digest: Option<String>,
    pub diff_id: Option<String>,
}

type Slot<'a> = (&'a mut Option<String>, &'a mut Option<String>);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub framework: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub format: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<ModelPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(rename = "diffId", default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPart {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license: String,
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub part_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(rename = "diffId", default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Code {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(rename = "diffId", default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub license: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(rename = "diffId", default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Docs {
    /// No omitempty in KitOps: `path` is always written for docs.
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(rename = "diffId", default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(rename = "diffId", default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
}

/// The JSON keys of each config object, as the structs above name them.
const TOP_KEYS: &[&str] = &[
    "manifestVersion",
    "package",
    "model",
    "code",
    "datasets",
    "docs",
    "prompts",
];
const PACKAGE_KEYS: &[&str] = &["name", "version", "description", "license", "authors"];
const MODEL_KEYS: &[&str] = &[
    "name",
    "path",
    "license",
    "framework",
    "format",
    "version",
    "description",
    "parts",
    "parameters",
    "digest",
    "diffId",
];
const PART_KEYS: &[&str] = &["name", "path", "license", "type", "digest", "diffId"];
const CODE_KEYS: &[&str] = &["path", "description", "license", "digest", "diffId"];
const DATASET_KEYS: &[&str] = &[
    "name",
    "path",
    "description",
    "license",
    "parameters",
    "digest",
    "diffId",
];
const DOCS_KEYS: &[&str] = &["path", "description", "digest", "diffId"];
const PROMPT_KEYS: &[&str] = &["name", "path", "description", "digest", "diffId"];

/// Removes the keys no Kitfile struct has, as Go's decoder skips them; `parameters` stays
/// whole (free-form). Values of the wrong type are left for serde to report.
fn drop_unknown_config_keys(v: &mut serde_json::Value) {
    use serde_json::{Map, Value};
    fn keep(obj: &mut Map<String, Value>, known: &[&str]) {
        obj.retain(|k, _| known.contains(&k.as_str()));
    }
    fn each(list: Option<&mut Value>, known: &[&str]) {
        if let Some(Value::Array(items)) = list {
            for obj in items.iter_mut().filter_map(Value::as_object_mut) {
                keep(obj, known);
            }
        }
    }
    let Some(top) = v.as_object_mut() else {
        return;
    };
    keep(top, TOP_KEYS);
    if let Some(p) = top.get_mut("package").and_then(Value::as_object_mut) {
        keep(p, PACKAGE_KEYS);
    }
    if let Some(m) = top.get_mut("model").and_then(Value::as_object_mut) {
        keep(m, MODEL_KEYS);
        each(m.get_mut("parts"), PART_KEYS);
    }
    each(top.get_mut("code"), CODE_KEYS);
    each(top.get_mut("datasets"), DATASET_KEYS);
    each(top.get_mut("docs"), DOCS_KEYS);
    each(top.get_mut("prompts"), PROMPT_KEYS);
}

/// One Kitfile entry that becomes a layer, in the order KitOps packs them:
/// model, model parts, code, datasets, docs, prompts.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerEntry {
    pub kind: LayerKind,
    /// Index within its section (parts, code, datasets, ...).
    pub index: usize,
    pub name: String,
    pub path: String,
}

/// The YAML parser's message, with what to do about the common mistakes: a tab (YAML
/// allows only spaces for indentation) and a misspelt field (the nearest name is offered).
fn explain_yaml_error(text: &str, e: &serde_yaml_ng::Error) -> String {
    let msg = e.to_string();
    if let Some(loc) = e.location() {
        let line = text.lines().nth(loc.line().saturating_sub(1)).unwrap_or("");
        let indent = &line[..line.len() - line.trim_start().len()];
        if text.as_bytes().get(loc.index()) == Some(&b'\t') || indent.contains('\t') {
            return format!(
                "line {} column {}: tabs are not allowed in YAML; indent with spaces",
                loc.line(),
                loc.column()
            );
        }
    }
    // serde: "unknown field `modle`, expected one of `a`, `b` at line 4 column 1"
    const UNKNOWN: &str = "unknown field `";
    if let Some(i) = msg.find(UNKNOWN) {
        let (before, rest) = (&msg[..i], &msg[i + UNKNOWN.len()..]);
        let names: Vec<&str> = rest.split('`').step_by(2).collect();
        if let Some((field, known)) = names.split_first() {
            let best = known
                .iter()
                .map(|k| (strsim::jaro_winkler(field, k), *k))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((_, k)) = best {
                let at = msg.rfind(" at line ").map(|i| &msg[i..]).unwrap_or("");
                return format!("{before}unknown field `{field}` (did you mean `{k}`?){at}");
            }
        }
    }
    msg
}

impl Kitfile {
    /// Parses a Kitfile written by a person. `file` names it in error messages.
    pub fn from_yaml(text: &str, file: &str) -> Result<Kitfile> {
        let err = |msg: String| Error::Kitfile {
            file: file.to_string(),
            msg,
        };
        if text.trim().is_empty() {
            return Err(err("file is empty".into()));
        }
        let kf: Kitfile = serde_yaml_ng::from_str(text).map_err(|e| {
            let msg = explain_yaml_error(text, &e);
            // The YAML parser reports a location for most errors; make it lead the message.
            match e.location() {
                Some(loc) if !msg.contains("line") => err(format!(
                    "line {} column {}: {msg}",
                    loc.line(),
                    loc.column()
                )),
                _ => err(msg),
            }
        })?;
        let mut probe = kf.clone();
        if probe
            .layer_slots()
            .iter()
            .any(|(_, _, (d, i))| d.is_some() || i.is_some())
        {
            return Err(err(
                "fields `digest` and `diffId` are written by pack and may not appear in a Kitfile"
                    .into(),
            ));
        }
        kf.validate().map_err(err)?;
        Ok(kf)
    }

    /// Parses the JSON config of a stored ModelKit. Unknown keys are dropped, not refused:
    /// kit reads configs with Go's `json.Unmarshal`, which ignores them, so a ModelKit whose
    /// config carries fields kit does not know (e.g. `mcpServers`) still pulls and unpacks.
    pub fn from_config_json(data: &[u8]) -> Result<Kitfile> {
        let json_err = |source| Error::Json {
            what: "ModelKit config (Kitfile)".into(),
            source,
        };
        let mut v: serde_json::Value = serde_json::from_slice(data).map_err(json_err)?;
        if !v.is_object() {
            // serde would take `[]` for a struct; Go's decoder refuses it.
            return Err(json_err(serde::de::Error::custom(
                "the config is not a JSON object",
            )));
        }
        drop_unknown_config_keys(&mut v);
        serde_json::from_value(v).map_err(json_err)
    }

    /// The config blob: Go-compatible JSON.
    pub fn to_config_json(&self) -> Result<Vec<u8>> {
        crate::oci::to_go_json(self)
    }

    /// YAML for people (`kitsnap info`, `unpack`, `init`), without layer digests, byte for
    /// byte as kit prints it (see [`crate::goyaml`]).
    pub fn to_yaml(&self) -> Result<String> {
        let mut clean = self.clone();
        for (_, _, (d, i)) in clean.layer_slots() {
            *d = None;
            *i = None;
        }
        let v = serde_yaml_ng::to_value(&clean)
            .map_err(|e| Error::Internal(format!("YAML encoding: {e}")))?;
        Ok(crate::goyaml::kitfile_to_string(&v))
    }

    /// The digest/diffId slots of every entry, in layer order (model first).
    fn layer_slots(&mut self) -> Vec<(LayerKind, usize, Slot<'_>)> {
        let mut out: Vec<(LayerKind, usize, Slot<'_>)> = Vec::new();
        if let Some(m) = self.model.as_mut() {
            out.push((LayerKind::Model, 0, (&mut m.digest, &mut m.diff_id)));
            for (i, p) in m.parts.iter_mut().enumerate() {
                out.push((LayerKind::ModelPart, i, (&mut p.digest, &mut p.diff_id)));
            }
        }
        for (i, c) in self.code.iter_mut().enumerate() {
            out.push((LayerKind::Code, i, (&mut c.digest, &mut c.diff_id)));
        }
        for (i, d) in self.datasets.iter_mut().enumerate() {
            out.push((LayerKind::Dataset, i, (&mut d.digest, &mut d.diff_id)));
        }
        for (i, d) in self.docs.iter_mut().enumerate() {
            out.push((LayerKind::Docs, i, (&mut d.digest, &mut d.diff_id)));
        }
        for (i, p) in self.prompts.iter_mut().enumerate() {
            out.push((LayerKind::Prompt, i, (&mut p.digest, &mut p.diff_id)));
        }
        out
    }

    /// The model's parent ModelKit, when `model.path` names one instead of a local path.
    pub fn model_parent(&self) -> Option<Reference> {
        let path = &self.model.as_ref()?.path;
        if is_modelkit_reference(path) {
            path.parse().ok()
        } else {
            None
        }
    }

    /// The entries that become layers, in KitOps' layer order.
    pub fn layer_entries(&self) -> Vec<LayerEntry> {
        let mut out = Vec::new();
        let mut push = |kind, index, name: &str, path: &str| {
            out.push(LayerEntry {
                kind,
                index,
                name: name.to_string(),
                path: path.to_string(),
            })
        };
        if let Some(m) = &self.model {
            if !m.path.is_empty() && !is_modelkit_reference(&m.path) {
                push(LayerKind::Model, 0, &m.name, &m.path);
            }
            for (i, p) in m.parts.iter().enumerate() {
                push(LayerKind::ModelPart, i, &p.name, &p.path);
            }
        }
        for (i, c) in self.code.iter().enumerate() {
            push(LayerKind::Code, i, "", &c.path);
        }
        for (i, d) in self.datasets.iter().enumerate() {
            push(LayerKind::Dataset, i, &d.name, &d.path);
        }
        for (i, d) in self.docs.iter().enumerate() {
            push(LayerKind::Docs, i, "", &d.path);
        }
        for (i, p) in self.prompts.iter().enumerate() {
            push(LayerKind::Prompt, i, &p.name, &p.path);
        }
        out
    }

    /// Records the digests of the layer built for `entry`.
    pub fn set_layer_info(&mut self, entry: &LayerEntry, info: LayerInfo) {
        for (kind, index, (d, i)) in self.layer_slots() {
            if kind == entry.kind && index == entry.index {
                *d = info.digest.clone();
                *i = info.diff_id.clone();
            }
        }
    }

    /// Checks what can be checked without the filesystem.
    pub fn validate(&self) -> std::result::Result<(), String> {
        // A missing manifestVersion is accepted, as kit accepts it; pack warns.
        let mut seen: Vec<(String, String)> = Vec::new();
        for e in self.layer_entries() {
            let what = match e.kind {
                LayerKind::Model => "model.path".to_string(),
                LayerKind::ModelPart => format!("model.parts[{}].path", e.index),
                LayerKind::Code => format!("code[{}].path", e.index),
                LayerKind::Dataset => format!("datasets[{}].path", e.index),
                LayerKind::Docs => format!("docs[{}].path", e.index),
                LayerKind::Prompt => format!("prompts[{}].path", e.index),
            };
            let norm = check_relative_path(&e.path).map_err(|m| format!("{what}: {m}"))?;
            if let Some((_, other)) = seen.iter().find(|(p, _)| *p == norm) {
                return Err(format!(
                    "{what}: path {:?} is already used by {other}; each path may be packed once",
                    e.path
                ));
            }
            seen.push((norm, what));
        }
        // kit's part type rule: `^[\w][\w.-]*$`, at most 64 characters.
        for p in self.model.iter().flat_map(|m| &m.parts) {
            let t = &p.part_type;
            let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
            let valid = t.starts_with(word) && t.chars().all(|c| word(c) || c == '.' || c == '-');
            if !t.is_empty() && !valid {
                return Err(format!(
                    "model part {:?} has an invalid type {t:?} (letters, digits, '_', '.' and '-', starting with a letter, digit or '_')",
                    p.name
                ));
            }
            if t.len() > 64 {
                return Err(format!(
                    "model part {:?}: type is {} characters long (at most 64)",
                    p.name,
                    t.len()
                ));
            }
        }
        // A model with neither path nor parts is metadata only (no layer), as kit allows.
        Ok(())
    }
}

/// True when `s` names a ModelKit rather than a path, by kit's rule (`IsModelKitReference`):
/// it holds `:` or `@` and parses as a reference, the registry defaulting to `localhost`
/// (`demo:v1`, `org/base:v1`, `registry.example.com/org/base@sha256:...`). KitOps accepts
/// this in `model.path` to build on a parent ModelKit. A model file whose name has a colon
/// is packed as `./weights:v2` (kit cannot pack it at all).
pub fn is_modelkit_reference(s: &str) -> bool {
    // `./x:y` and `/x:y` are paths however they parse.
    !s.starts_with(['.', '/'])
        && (s.contains(':') || s.contains('@'))
        && s.parse::<Reference>().is_ok()
}

/// Normalises a Kitfile path and refuses anything that could leave the context directory:
/// absolute paths, `..` that climbs out, URLs, and empty paths.
pub fn check_relative_path(p: &str) -> std::result::Result<String, String> {
    if p.trim().is_empty() {
        return Err("path is empty".into());
    }
    if p.contains("://") {
        return Err(format!("{p:?} is a URL; only local paths can be packed"));
    }
    if p.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    let path = Path::new(p);
    let mut parts: Vec<&str> = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{p:?} is absolute; paths must be relative to the context directory"
                ));
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(format!("{p:?} points outside the context directory"));
                }
            }
            Component::Normal(s) => parts.push(s.to_str().ok_or("path is not UTF-8")?),
        }
    }
    if parts.is_empty() {
        Ok(".".into())
    } else {
        Ok(parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
manifestVersion: 1.0.0
package:
  name: demo
  version: 1.2.3
  authors: [Ada, Grace]
model:
  name: tiny
  path: models/tiny.gguf
  framework: llama.cpp
  parameters:
    b: 2
    a: {z: 1, y: "<x>"}
  parts:
    - name: tok
      path: models/tokenizer.json
      type: tokenizer
code:
  - path: src
datasets:
  - name: train
    path: data/train.csv
docs:
  - path: README.md
prompts:
  - path: prompts/system.md
"#;

    #[test]
    fn parses_full_kitfile_in_layer_order() {
        let kf = Kitfile::from_yaml(FULL, "Kitfile").unwrap();
        let kinds: Vec<_> = kf.layer_entries().iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                LayerKind::Model,
                LayerKind::ModelPart,
                LayerKind::Code,
                LayerKind::Dataset,
                LayerKind::Docs,
                LayerKind::Prompt
            ]
        );
        let json = String::from_utf8(kf.to_config_json().unwrap()).unwrap();
        // Struct field order as in KitOps, parameters sorted, HTML escaped like Go.
        assert!(json.starts_with(r#"{"manifestVersion":"1.0.0","package":{"name":"demo","version":"1.2.3","authors":["Ada","Grace"]},"model":{"name":"tiny","path":"models/tiny.gguf","framework":"llama.cpp","parts":[{"name":"tok","path":"models/tokenizer.json","type":"tokenizer"}],"parameters":{"a":{"y":"\u003cx\u003e","z":1},"b":2}}"#), "{json}");
        let back = Kitfile::from_config_json(json.as_bytes()).unwrap();
        assert_eq!(back, kf);
    }

    /// Every key a full config holds is in the key lists, and every listed key occurs:
    /// the lists cannot drift from the structs.
    #[test]
    fn config_key_lists_match_the_structs() {
        let mut kf = Kitfile::from_yaml(FULL, "Kitfile").unwrap();
        kf.package.description = "d".into();
        kf.package.license = "l".into();
        let m = kf.model.as_mut().unwrap();
        for s in [
            &mut m.license,
            &mut m.format,
            &mut m.version,
            &mut m.description,
        ] {
            *s = "x".into();
        }
        m.parts[0].license = "l".into();
        kf.code[0].description = "d".into();
        kf.code[0].license = "l".into();
        let d = &mut kf.datasets[0];
        d.description = "d".into();
        d.license = "l".into();
        d.parameters = Some(serde_json::json!({"k": 1}));
        kf.docs[0].description = "d".into();
        kf.prompts[0].name = "p".into();
        kf.prompts[0].description = "d".into();
        for (_, _, (dg, di)) in kf.layer_slots() {
            *dg = Some("sha256:00".into());
            *di = Some("sha256:00".into());
        }
        let v: serde_json::Value = serde_json::from_slice(&kf.to_config_json().unwrap()).unwrap();
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        let same = |v: &serde_json::Value, list: &[&str]| {
            let mut a = keys(v);
            let mut b: Vec<String> = list.iter().map(|s| s.to_string()).collect();
            a.sort();
            b.sort();
            assert_eq!(a, b);
        };
        same(&v, TOP_KEYS);
        same(&v["package"], PACKAGE_KEYS);
        same(&v["model"], MODEL_KEYS);
        same(&v["model"]["parts"][0], PART_KEYS);
        same(&v["code"][0], CODE_KEYS);
        same(&v["datasets"][0], DATASET_KEYS);
        same(&v["docs"][0], DOCS_KEYS);
        same(&v["prompts"][0], PROMPT_KEYS);
    }

    /// kit v1.7.0 has no `mcpServers`, `datasets[].remotePath` or `remoteHash`: in a Kitfile
    /// they are refused (kit: "field mcpServers not found in type artifact.KitFile"), in a
    /// stored config they are ignored (kit decodes it with Go's json.Unmarshal).
    #[test]
    fn fields_kit_does_not_know() {
        for (text, field) in [
            ("manifestVersion: 1.0.0\nmcpServers: []\n", "mcpServers"),
            (
                "manifestVersion: 1.0.0\ndatasets:\n  - name: r\n    remotePath: s3://b/k\n",
                "remotePath",
            ),
            (
                "manifestVersion: 1.0.0\ndatasets:\n  - path: d\n    remoteHash: sha256:00\n",
                "remoteHash",
            ),
        ] {
            let e = Kitfile::from_yaml(text, "Kitfile").unwrap_err().to_string();
            assert!(e.contains(&format!("unknown field `{field}`")), "{e}");
        }
        let config = br#"{"manifestVersion":"1.0.0","package":{"name":"p","x":1},"model":{"path":"m","parts":[{"path":"t","y":[]}],"parameters":{"keep":{"z":1}}},"datasets":[{"name":"r","remotePath":"s3://b/k","remoteHash":"sha256:00"},{"path":"d","digest":"sha256:11"}],"mcpServers":[{"name":"s"}]}"#;
        let kf = Kitfile::from_config_json(config).unwrap();
        assert_eq!(kf.package.name, "p");
        assert_eq!(kf.datasets.len(), 2);
        assert_eq!(kf.datasets[0].name, "r");
        assert_eq!(kf.datasets[1].digest.as_deref(), Some("sha256:11"));
        let m = kf.model.as_ref().unwrap();
        assert_eq!(m.parts[0].path, "t");
        assert_eq!(m.parameters, Some(serde_json::json!({"keep": {"z": 1}})));
        let json = String::from_utf8(kf.to_config_json().unwrap()).unwrap();
        assert!(!json.contains("remote") && !json.contains("mcp"), "{json}");
        // Wrong types are still errors.
        assert!(Kitfile::from_config_json(br#"{"package":{"name":3}}"#).is_err());
        assert!(Kitfile::from_config_json(b"[]").is_err());
    }

    #[test]
    fn unknown_field_reports_line() {
        let text = "manifestVersion: 1.0.0\nmodel:\n  path: m.bin\n  weights: 3\n";
        let e = Kitfile::from_yaml(text, "Kitfile").unwrap_err().to_string();
        assert!(e.contains("unknown field `weights`"), "{e}");
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn malformed_yaml_reports_line() {
        let text = "manifestVersion: 1.0.0\npackage:\n  name: [unclosed\n";
        let e = Kitfile::from_yaml(text, "Kitfile").unwrap_err().to_string();
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn refuses_escaping_and_duplicate_paths() {
        for bad in ["../secret", "/etc/passwd", "a/../../b", "http://x/y", ""] {
            let text = format!("manifestVersion: 1.0.0\ncode:\n  - path: \"{bad}\"\n");
            assert!(Kitfile::from_yaml(&text, "K").is_err(), "{bad} accepted");
        }
        let dup = "manifestVersion: 1.0.0\ncode:\n  - path: src\ndocs:\n  - path: ./src/\n";
        let e = Kitfile::from_yaml(dup, "K").unwrap_err().to_string();
        assert!(e.contains("already used"), "{e}");
        assert_eq!(check_relative_path("a/./b/../c").unwrap(), "a/c");
        assert_eq!(check_relative_path(".").unwrap(), ".");
    }

    #[test]
    fn part_types_as_kit_checks_them() {
        let k = |t: &str| {
            Kitfile::from_yaml(
                &format!(
                    "manifestVersion: 1.0.0\nmodel:\n  path: m\n  parts:\n    - path: p\n      type: \"{t}\"\n"
                ),
                "K",
            )
        };
        assert!(k("tokenizer").is_ok() && k("lora_v1.2-x").is_ok() && k("_a").is_ok());
        assert!(k("bad type").is_err() && k("-lead").is_err() && k(".x").is_err());
        assert!(k(&"a".repeat(64)).is_ok() && k(&"a".repeat(65)).is_err());
    }

    #[test]
    fn refuses_layer_info_accepts_a_missing_version() {
        let t = "manifestVersion: 1.0.0\ncode:\n  - path: src\n    digest: sha256:00\n";
        assert!(Kitfile::from_yaml(t, "K").is_err());
        // As kit: no manifestVersion parses (pack warns).
        assert!(Kitfile::from_yaml("package:\n  name: x\n", "K").is_ok());
        assert!(Kitfile::from_yaml("   \n", "K").is_err());
    }

    #[test]
    fn model_parent_reference() {
        let t = "manifestVersion: 1.0.0\nmodel:\n  path: registry.example.com/org/base:v1\n";
        let kf = Kitfile::from_yaml(t, "K").unwrap();
        assert!(kf.model_parent().is_some());
        assert!(kf.layer_entries().is_empty());
        // kit's rule: a `:` or `@` and a reference that parses (registry `localhost`).
        assert!(!is_modelkit_reference("models/a.bin"));
        assert!(is_modelkit_reference("demo:v1"));
        assert!(is_modelkit_reference("org/base:v1"));
        assert!(!is_modelkit_reference("./weights:v2"));
        assert!(!is_modelkit_reference("Models/a:b"));
        let kf =
            Kitfile::from_yaml("manifestVersion: 1.0.0\nmodel:\n  path: demo:v1\n", "K").unwrap();
        assert_eq!(
            kf.model_parent().map(|r| r.to_string()).as_deref(),
            Some("localhost/demo:v1")
        );
    }

    #[test]
    fn mistakes_are_explained() {
        let e = Kitfile::from_yaml("manifestVersion: 1.0.0\npackage:\n\tname: x\n", "Kitfile")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tabs are not allowed"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        let e = Kitfile::from_yaml("manifestVersion: 1.0.0\nmodle:\n  path: m\n", "Kitfile")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `modle` (did you mean `model`?)"),
            "{e}"
        );
        let e = Kitfile::from_yaml(
            "manifestVersion: 1.0.0\npackage:\n  licence: MIT\n",
            "Kitfile",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("package: unknown field `licence` (did you mean `license`?)"),
            "{e}"
        );
        // Nothing near: the parser's list of fields stays.
        let e = Kitfile::from_yaml("manifestVersion: 1.0.0\nzzz: 1\n", "Kitfile")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected one of"), "{e}");
    }
}
