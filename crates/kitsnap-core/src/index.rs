//! ModelKit indexes, as KitOps (2026) defines them: an OCI image index with artifactType
//! `application/vnd.kitops.modelkit.index.v1+json` whose entries are ModelKit (or ModelPack)
//! manifests of one repository. Each entry may carry labels (`modelMetadata`, an open map
//! of JSON values that `unpack -l`/`pull -l` select on) and annotations.
//!
//! Label values are kept as raw JSON text, never decoded: `7000000000` must not come back
//! as `7e+09`, and an index read and written again must keep its digest. Serialization
//! follows Go's `encoding/json` on kit's structs (field order, compacted raw values, HTML
//! escaping), so kitsnap and kit give the same bytes for the same index.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::digest::Digest;
use crate::oci::{self, Descriptor, MEDIA_TYPE_INDEX};

/// kit's `mediatype.ArtifactTypeKitIndex`.
pub const ARTIFACT_TYPE_KIT_INDEX: &str = "application/vnd.kitops.modelkit.index.v1+json";
/// The tag an entry was added by (none when added by digest): `index info`'s reference.
pub const ANNOTATION_ORIGINAL_TAG: &str = "ml.kitops.modelkit.original-tag";
/// The ModelKit's layer bytes when it was added, so `index info` knows it without the kit.
pub const ANNOTATION_MODELKIT_SIZE: &str = "ml.kitops.modelkit.size";
/// Annotations kit records itself; `--annotate` may not set them.
pub const RESERVED_ANNOTATION_PREFIX: &str = "ml.kitops.";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("artifact is not a ModelKit index")]
    NotAKitIndex,
    #[error("failed to parse index: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("failed to marshal index: {0}")]
    Marshal(String),
    #[error("invalid {kind} {arg:?}: expected key=value to set, or key- to remove")]
    EditSyntax { kind: &'static str, arg: String },
    #[error("invalid {kind} {arg:?}: key cannot be empty")]
    EmptyKey { kind: &'static str, arg: String },
    #[error("invalid {kind} {arg:?}: each key can be specified only once")]
    RepeatedKey { kind: &'static str, arg: String },
    #[error(
        "invalid label key {0:?}: must be a name of letters, digits, '-', '_', and '.' that starts and ends with a letter or digit, optionally prefixed by a DNS subdomain and '/' (e.g. example.com/gpu)"
    )]
    LabelKey(String),
    #[error("invalid label {key}:={value}: value is not valid JSON")]
    LabelJson { key: String, value: String },
    #[error("invalid annotation {key}:={value}: annotation values are strings; use key=value")]
    AnnotationJson { key: String, value: String },
    #[error(
        "invalid annotation {0:?}: the {RESERVED_ANNOTATION_PREFIX} namespace is reserved for annotations kit records itself"
    )]
    ReservedAnnotation(String),
    #[error("invalid label {0:?}: expected key=value")]
    SelectorSyntax(String),
    #[error(
        "invalid label {arg:?}: {key} is already set to {existing:?}; each label can be specified only once"
    )]
    SelectorRepeated {
        arg: String,
        key: String,
        existing: String,
    },
    #[error("index contains no ModelKits")]
    Empty,
    #[error("no ModelKit in the index has {wanted}. The index contains:\n{entries}")]
    NoMatch { wanted: String, entries: String },
    #[error("{count} ModelKits in the index match; add labels to select one of:\n{entries}")]
    Ambiguous { count: usize, entries: String },
    /// A ModelKit index where one ModelKit is needed, with no labels to choose by.
    #[error(
        "reference {reference} is a ModelKit index; select the ModelKit to {verb} with --label (-l). `kitsnap index info{remote} {reference}` lists its ModelKits and their labels"
    )]
    NeedsLabel {
        reference: String,
        verb: &'static str,
        remote: &'static str,
    },
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// Labels: JSON values by key, sorted (Go sorts map keys when it marshals).
pub type ModelMetadata = BTreeMap<String, Box<RawValue>>;

/// kit's `ModelKitIndex`, field for field in Go's order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelKitIndex {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// Never `null` on output: kit marshals a nil list as `[]`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub manifests: Vec<IndexEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// kit's `ModelKitIndexDescriptor`: an OCI descriptor (Go's field order, `data` and
/// `platform` kept as they came) plus `modelMetadata`. Written out field by field rather than
/// with `#[serde(flatten)]`, which cannot carry raw JSON values.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IndexEntry {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "compact_raw_opt"
    )]
    pub platform: Option<Box<RawValue>>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    #[serde(
        rename = "modelMetadata",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "compact_metadata"
    )]
    pub model_metadata: ModelMetadata,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IndexEntry>, D::Error> {
    Ok(Option::<Vec<IndexEntry>>::deserialize(d)?.unwrap_or_default())
}

// Go keeps a RawMessage as read and compacts it when it marshals; compacting on read gives
// the same bytes out.
fn compact_raw_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Option::<Box<RawValue>>::deserialize(d)?
        .map(|v| compact_raw(v.get()).map_err(serde::de::Error::custom))
        .transpose()
}

fn compact_metadata<'de, D: Deserializer<'de>>(d: D) -> Result<ModelMetadata, D::Error> {
    // `"modelMetadata": null` is an absent map for Go.
    let raw = Option::<BTreeMap<String, Box<RawValue>>>::deserialize(d)?.unwrap_or_default();
    raw.into_iter()
        .map(|(k, v)| Ok((k, compact_raw(v.get()).map_err(serde::de::Error::custom)?)))
        .collect()
}

/// Valid JSON text without the whitespace between tokens; strings and numbers untouched.
fn compact_raw(text: &str) -> Result<Box<RawValue>, serde_json::Error> {
    RawValue::from_string(JsonChars::new(text).map(|(c, _)| c).collect())
}

/// The characters of JSON text without the whitespace between tokens, each with whether
/// it is inside a string (quotes included): what compacting and indenting walk.
struct JsonChars<'a> {
    chars: std::str::Chars<'a>,
    in_string: bool,
    escaped: bool,
}

impl<'a> JsonChars<'a> {
    fn new(text: &'a str) -> Self {
        JsonChars {
            chars: text.chars(),
            in_string: false,
            escaped: false,
        }
    }
}

impl Iterator for JsonChars<'_> {
    type Item = (char, bool);

    fn next(&mut self) -> Option<(char, bool)> {
        loop {
            let c = self.chars.next()?;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if c == '\\' {
                    self.escaped = true;
                } else if c == '"' {
                    self.in_string = false;
                }
                return Some((c, true));
            }
            match c {
                ' ' | '\t' | '\n' | '\r' => continue,
                '"' => {
                    self.in_string = true;
                    return Some((c, true));
                }
                _ => return Some((c, false)),
            }
        }
    }
}

impl IndexEntry {
    /// An entry for a manifest, with no labels or annotations yet.
    pub fn for_manifest(desc: &Descriptor, artifact_type: Option<String>) -> IndexEntry {
        IndexEntry {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size,
            urls: None,
            annotations: BTreeMap::new(),
            data: None,
            platform: None,
            artifact_type,
            model_metadata: ModelMetadata::new(),
        }
    }

    /// The manifest's descriptor (without the entry's annotations).
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            ..Default::default()
        }
    }

    /// The size recorded when the entry was added, if any.
    pub fn recorded_size(&self) -> Option<u64> {
        self.annotations
            .get(ANNOTATION_MODELKIT_SIZE)
            .and_then(|s| s.parse().ok())
    }

    /// The entry's annotations without the two kit records itself (they have columns).
    pub fn user_annotations(&self) -> BTreeMap<String, String> {
        let mut a = self.annotations.clone();
        a.remove(ANNOTATION_ORIGINAL_TAG);
        a.remove(ANNOTATION_MODELKIT_SIZE);
        a
    }

    /// The reference the entry was added by, in the index's repository (`repo:tag`,
    /// without `localhost/`), or None for an entry added by digest.
    pub fn reference(&self, index_repository: &str) -> Option<String> {
        self.annotations
            .get(ANNOTATION_ORIGINAL_TAG)
            .map(|t| format!("{index_repository}:{t}"))
    }

    fn has_labels(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, want)| {
            self.model_metadata
                .get(k)
                .is_some_and(|v| format_label_value(v) == *want)
        })
    }
}

impl Default for ModelKitIndex {
    fn default() -> Self {
        ModelKitIndex {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_INDEX.to_string()),
            artifact_type: Some(ARTIFACT_TYPE_KIT_INDEX.to_string()),
            manifests: Vec::new(),
            subject: None,
            annotations: BTreeMap::new(),
        }
    }
}

impl ModelKitIndex {
    /// Reads an index, refusing anything that is not a ModelKit index.
    pub fn parse(bytes: &[u8]) -> Result<ModelKitIndex> {
        let idx: ModelKitIndex = serde_json::from_slice(bytes).map_err(IndexError::Parse)?;
        let media_ok = idx
            .media_type
            .as_deref()
            .is_none_or(|m| m == MEDIA_TYPE_INDEX);
        if !media_ok || idx.artifact_type.as_deref() != Some(ARTIFACT_TYPE_KIT_INDEX) {
            return Err(IndexError::NotAKitIndex);
        }
        Ok(idx)
    }

    /// The index's bytes (as Go's json.Marshal writes them) and their descriptor.
    pub fn marshal(&self) -> Result<(Descriptor, Vec<u8>)> {
        let bytes = oci::to_go_json(self).map_err(|e| IndexError::Marshal(e.to_string()))?;
        let desc = Descriptor {
            media_type: MEDIA_TYPE_INDEX.to_string(),
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
            ..Default::default()
        };
        Ok((desc, bytes))
    }

    pub fn entry(&self, digest: &Digest) -> Option<&IndexEntry> {
        self.manifests.iter().find(|e| &e.digest == digest)
    }

    /// Adds an entry, replacing the one with the same digest in place.
    pub fn add_entry(&mut self, entry: IndexEntry) {
        match self.manifests.iter_mut().find(|e| e.digest == entry.digest) {
            Some(e) => *e = entry,
            None => self.manifests.push(entry),
        }
    }

    /// Removes the entry with this digest; false when there was none.
    pub fn remove_entry(&mut self, digest: &Digest) -> bool {
        let before = self.manifests.len();
        self.manifests.retain(|e| &e.digest != digest);
        self.manifests.len() != before
    }

    /// The one entry carrying every label of `selector`; when none or several do, the
    /// error lists what the index holds. `index_repository` names entries by their tag.
    pub fn select(
        &self,
        selector: &BTreeMap<String, String>,
        index_repository: &str,
    ) -> Result<&IndexEntry> {
        let matches: Vec<&IndexEntry> = self
            .manifests
            .iter()
            .filter(|e| e.has_labels(selector))
            .collect();
        match matches.len() {
            1 => Ok(matches[0]),
            0 if self.manifests.is_empty() => Err(IndexError::Empty),
            0 => Err(IndexError::NoMatch {
                wanted: if selector.is_empty() {
                    "no labels".into()
                } else {
                    key_value_pairs(selector).join(", ")
                },
                entries: describe_entries(self.manifests.iter(), index_repository),
            }),
            n => Err(IndexError::Ambiguous {
                count: n,
                entries: describe_entries(matches.into_iter(), index_repository),
            }),
        }
    }
}

/// `  repo:tag  (k=v, k2=v2)` per entry; the digest for an entry added by digest.
pub fn describe_entries<'a>(
    entries: impl Iterator<Item = &'a IndexEntry>,
    index_repository: &str,
) -> String {
    entries
        .map(|e| {
            let labels = if e.model_metadata.is_empty() {
                "no labels".to_string()
            } else {
                label_pairs(&e.model_metadata).join(", ")
            };
            let who = e
                .reference(index_repository)
                .unwrap_or_else(|| e.digest.to_string());
            format!("  {who}  ({labels})")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A label value for people and selectors: a JSON string without its quotes, any other
/// value as its JSON text.
pub fn format_label_value(v: &RawValue) -> String {
    match serde_json::from_str::<String>(v.get()) {
        Ok(s) => s,
        Err(_) => v.get().to_string(),
    }
}

/// `key=value` for each label, sorted by key.
pub fn label_pairs(m: &ModelMetadata) -> Vec<String> {
    m.iter()
        .map(|(k, v)| format!("{k}={}", format_label_value(v)))
        .collect()
}

/// `key=value` for each entry, sorted by key.
pub fn key_value_pairs(m: &BTreeMap<String, String>) -> Vec<String> {
    m.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Values to set and keys to remove on an entry's labels or annotations.
#[derive(Clone, Debug, Default)]
pub struct Edits<V> {
    pub set: BTreeMap<String, V>,
    pub remove: Vec<String>,
}

impl<V: Clone> Edits<V> {
    /// `current` with the edits applied.
    pub fn apply(&self, current: &BTreeMap<String, V>) -> BTreeMap<String, V> {
        let mut merged = current.clone();
        merged.extend(self.set.iter().map(|(k, v)| (k.clone(), v.clone())));
        for k in &self.remove {
            merged.remove(k);
        }
        merged
    }
}

enum EditArg<'a> {
    Set(&'a str, &'a str),
    SetJson(&'a str, &'a str),
    Remove(&'a str),
}

fn parse_edit_args<'a>(args: &'a [String], kind: &'static str) -> Result<Vec<EditArg<'a>>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for arg in args {
        let parsed = match arg.split_once('=') {
            Some((k, v)) => match k.strip_suffix(':') {
                Some(k) => EditArg::SetJson(k, v),
                None => EditArg::Set(k, v),
            },
            None => match arg.strip_suffix('-') {
                Some(k) => EditArg::Remove(k),
                None => {
                    return Err(IndexError::EditSyntax {
                        kind,
                        arg: arg.clone(),
                    });
                }
            },
        };
        let key = match parsed {
            EditArg::Set(k, _) | EditArg::SetJson(k, _) | EditArg::Remove(k) => k,
        };
        if key.is_empty() {
            return Err(IndexError::EmptyKey {
                kind,
                arg: arg.clone(),
            });
        }
        if !seen.insert(key) {
            return Err(IndexError::RepeatedKey {
                kind,
                arg: arg.clone(),
            });
        }
        out.push(parsed);
    }
    Ok(out)
}

/// A Kubernetes-style qualified name without its length limits: an optional DNS subdomain
/// and `/`, then letters, digits, `-`, `_`, `.`, starting and ending alphanumeric.
fn valid_label_key(key: &str) -> bool {
    let name_ok = |n: &str| {
        let b = n.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
    };
    let dns_label_ok = |l: &str| {
        let b = l.as_bytes();
        let lower = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty()
            && lower(b[0])
            && lower(b[b.len() - 1])
            && b.iter().all(|&c| lower(c) || c == b'-')
    };
    match key.split_once('/') {
        Some((prefix, name)) => prefix.split('.').all(dns_label_ok) && name_ok(name),
        None => name_ok(key),
    }
}

/// `-l` of `index add`: `key=value` (a string), `key:=<json>` (any JSON value, compacted)
/// and `key-` (remove).
pub fn parse_label_edits(args: &[String]) -> Result<Edits<Box<RawValue>>> {
    let mut edits = Edits::default();
    for a in parse_edit_args(args, "label")? {
        let (key, value) = match a {
            EditArg::Remove(k) => {
                edits.remove.push(k.to_string());
                continue;
            }
            EditArg::Set(k, v) => {
                check_label_key(k)?;
                let json =
                    serde_json::to_string(v).map_err(|e| IndexError::Marshal(e.to_string()))?;
                (
                    k,
                    RawValue::from_string(json).map_err(|e| IndexError::Marshal(e.to_string()))?,
                )
            }
            EditArg::SetJson(k, v) => {
                check_label_key(k)?;
                let bad = || IndexError::LabelJson {
                    key: k.to_string(),
                    value: v.to_string(),
                };
                // One JSON value and nothing after it, as json.Compact requires.
                serde_json::from_str::<&RawValue>(v).map_err(|_| bad())?;
                (k, compact_raw(v).map_err(|_| bad())?)
            }
        };
        edits.set.insert(key.to_string(), value);
    }
    Ok(edits)
}

fn check_label_key(k: &str) -> Result<()> {
    if valid_label_key(k) {
        Ok(())
    } else {
        Err(IndexError::LabelKey(k.to_string()))
    }
}

/// `--annotate` of `index add`: `key=value` and `key-`; values are strings, and kit's own
/// `ml.kitops.` keys are refused.
pub fn parse_annotation_edits(args: &[String]) -> Result<Edits<String>> {
    let mut edits = Edits::default();
    for a in parse_edit_args(args, "annotation")? {
        match a {
            EditArg::Set(k, _) | EditArg::SetJson(k, _) | EditArg::Remove(k)
                if k.starts_with(RESERVED_ANNOTATION_PREFIX) =>
            {
                return Err(IndexError::ReservedAnnotation(k.to_string()));
            }
            EditArg::Remove(k) => edits.remove.push(k.to_string()),
            EditArg::SetJson(k, v) => {
                return Err(IndexError::AnnotationJson {
                    key: k.to_string(),
                    value: v.to_string(),
                });
            }
            EditArg::Set(k, v) => {
                edits.set.insert(k.to_string(), v.to_string());
            }
        }
    }
    Ok(edits)
}

/// `-l` of `unpack` and `pull`: `key=value` pairs that must all match.
pub fn parse_label_selector(args: &[String]) -> Result<BTreeMap<String, String>> {
    let mut sel = BTreeMap::new();
    for arg in args {
        let Some((k, v)) = arg.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(IndexError::SelectorSyntax(arg.clone()));
        };
        if let Some(existing) = sel.get(k) {
            return Err(IndexError::SelectorRepeated {
                arg: arg.clone(),
                key: k.to_string(),
                existing: String::clone(existing),
            });
        }
        sel.insert(k.to_string(), v.to_string());
    }
    Ok(sel)
}

/// Compact JSON indented by two spaces, as Go's `json.Indent` does it: tokens (numbers,
/// strings) are copied as they are, empty objects and arrays stay `{}` and `[]`.
pub fn indent_json(compact: &[u8]) -> String {
    let text = String::from_utf8_lossy(compact);
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut chars = JsonChars::new(&text).peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    while let Some((c, in_string)) = chars.next() {
        if in_string {
            out.push(c);
            continue;
        }
        match c {
            '{' | '[' => {
                out.push(c);
                let close = if c == '{' { '}' } else { ']' };
                if chars.peek() == Some(&(close, false)) {
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(d: &[u8]) -> IndexEntry {
        IndexEntry::for_manifest(
            &Descriptor {
                media_type: oci::MEDIA_TYPE_MANIFEST.into(),
                digest: Digest::of(d),
                size: 649,
                ..Default::default()
            },
            None,
        )
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn empty_index_has_empty_manifests_and_kit_types() {
        let (desc, bytes) = ModelKitIndex::default().marshal().unwrap();
        let s = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(
            s,
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","artifactType":"application/vnd.kitops.modelkit.index.v1+json","manifests":[]}"#
        );
        assert_eq!(desc.media_type, MEDIA_TYPE_INDEX);
        assert_eq!(desc.digest, Digest::of(&bytes));
        // A null list reads as empty and is written back as [].
        let null = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","artifactType":"application/vnd.kitops.modelkit.index.v1+json","manifests":null}"#;
        let (_, again) = ModelKitIndex::parse(null).unwrap().marshal().unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn entries_dedupe_by_digest_and_remove() {
        let mut idx = ModelKitIndex::default();
        idx.add_entry(entry(b"a"));
        idx.add_entry(entry(b"b"));
        let mut a = entry(b"a");
        a.model_metadata
            .insert("quantization".into(), raw(r#""q4_0""#));
        idx.add_entry(a);
        assert_eq!(idx.manifests.len(), 2);
        assert_eq!(
            idx.manifests[0].model_metadata.len(),
            1,
            "replaced in place"
        );
        assert!(idx.remove_entry(&Digest::of(b"a")));
        assert!(!idx.remove_entry(&Digest::of(b"a")));
        assert_eq!(idx.manifests[0].digest, Digest::of(b"b"));
    }

    #[test]
    fn round_trip_keeps_raw_values_and_digest() {
        let mut e = entry(b"a");
        for (k, v) in [
            ("quantization", r#""q4_0""#),
            ("totalParameters", "7000000000"),
            ("big", "123456789012345678901234567890.000"),
            ("vram", r#"{"bytes":6442450944}"#),
            ("accel", r#"["cuda","metal"]"#),
        ] {
            e.model_metadata.insert(k.into(), raw(v));
        }
        let mut idx = ModelKitIndex::default();
        idx.add_entry(e);
        let (d1, b1) = idx.marshal().unwrap();
        let (d2, b2) = ModelKitIndex::parse(&b1).unwrap().marshal().unwrap();
        assert_eq!(d1.digest, d2.digest, "re-marshalling is digest-stable");
        let s = String::from_utf8(b2).unwrap();
        assert!(s.contains("7000000000") && s.contains("123456789012345678901234567890.000"));
        // Whitespace inside raw values (another writer's) is compacted, as Go does.
        let spaced = s.replace(r#"["cuda","metal"]"#, "[ \"cuda\" ,\n \"metal\" ]");
        let (d3, _) = ModelKitIndex::parse(spaced.as_bytes())
            .unwrap()
            .marshal()
            .unwrap();
        assert_eq!(d3.digest, d1.digest);
    }

    #[test]
    fn parse_refuses_other_artifacts() {
        let kit = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.kitops.modelkit.manifest.v1+json","layers":[]}"#;
        assert!(matches!(
            ModelKitIndex::parse(kit),
            Err(IndexError::NotAKitIndex)
        ));
        let plain = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert!(matches!(
            ModelKitIndex::parse(plain),
            Err(IndexError::NotAKitIndex)
        ));
        assert!(matches!(
            ModelKitIndex::parse(b"{\"schemaVersion\":"),
            Err(IndexError::Parse(_))
        ));
    }

    #[test]
    fn label_edits() {
        let args: Vec<String> = [
            "quantization=q4_0",
            "source=https://example.com/?a=b",
            "empty=",
            "activeParameters:=7000000000",
            r#"gpuArchs:=[ "sm_80", "sm_90" ]"#,
            "html=<b>",
            "stale-",
        ]
        .map(String::from)
        .to_vec();
        let e = parse_label_edits(&args).unwrap();
        let got: BTreeMap<&str, &str> = e.set.iter().map(|(k, v)| (k.as_str(), v.get())).collect();
        assert_eq!(got["quantization"], r#""q4_0""#);
        assert_eq!(got["source"], r#""https://example.com/?a=b""#);
        assert_eq!(got["empty"], r#""""#);
        assert_eq!(got["activeParameters"], "7000000000");
        assert_eq!(got["gpuArchs"], r#"["sm_80","sm_90"]"#);
        assert_eq!(e.remove, ["stale"]);
        for (arg, msg) in [
            (
                "quantization",
                "expected key=value to set, or key- to remove",
            ),
            ("=value", "key cannot be empty"),
            ("-", "key cannot be empty"),
            ("has space=x", "invalid label key"),
            ("gpuArchs:=[", "value is not valid JSON"),
            ("two:=1 2", "value is not valid JSON"),
        ] {
            let err = parse_label_edits(&[arg.to_string()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(msg), "{arg}: {err}");
        }
        let twice = parse_label_edits(&["a=1".into(), "a-".into()]).unwrap_err();
        assert!(
            twice
                .to_string()
                .contains("each key can be specified only once")
        );
        assert!(valid_label_key("example.com/gpu") && valid_label_key("a.b_c-d"));
        assert!(!valid_label_key("Example.com/gpu") && !valid_label_key("a/b/c"));
    }

    #[test]
    fn annotation_edits() {
        let e = parse_annotation_edits(&["org.example.tested=true".into(), "old-".into()]).unwrap();
        assert_eq!(e.set["org.example.tested"], "true");
        assert_eq!(e.remove, ["old"]);
        let err = parse_annotation_edits(&["a:=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("annotation values are strings"), "{err}");
        let err = parse_annotation_edits(&["ml.kitops.modelkit.size=1".into()]).unwrap_err();
        assert!(err.to_string().contains("reserved"));
        let cur = BTreeMap::from([("old".to_string(), "x".to_string())]);
        assert_eq!(e.apply(&cur).len(), 1);
    }

    #[test]
    fn label_pairs_and_selection() {
        let mut a = entry(b"a");
        a.model_metadata
            .insert("quantization".into(), raw(r#""q4_0""#));
        a.model_metadata.insert("vram".into(), raw(r#""6GB""#));
        a.model_metadata.insert("params".into(), raw("7000000000"));
        a.annotations
            .insert(ANNOTATION_ORIGINAL_TAG.into(), "q4_0".into());
        let mut b = entry(b"b");
        b.model_metadata
            .insert("quantization".into(), raw(r#""q8_0""#));
        assert_eq!(
            label_pairs(&a.model_metadata),
            ["params=7000000000", "quantization=q4_0", "vram=6GB"]
        );
        let mut idx = ModelKitIndex::default();
        idx.add_entry(a);
        idx.add_entry(b);
        let sel = |args: &[&str]| {
            parse_label_selector(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
        };
        let repo = "reg.example.com/org/m";
        assert_eq!(
            idx.select(&sel(&["quantization=q8_0"]), repo)
                .unwrap()
                .digest,
            Digest::of(b"b")
        );
        assert_eq!(
            idx.select(&sel(&["quantization=q4_0", "params=7000000000"]), repo)
                .unwrap()
                .digest,
            Digest::of(b"a")
        );
        let none = idx
            .select(&sel(&["quantization=q4_0", "vram=24GB"]), repo)
            .unwrap_err();
        let s = none.to_string();
        assert!(
            s.contains("no ModelKit in the index has quantization=q4_0, vram=24GB"),
            "{s}"
        );
        assert!(
            s.contains(&format!(
                "{repo}:q4_0  (params=7000000000, quantization=q4_0, vram=6GB)"
            )),
            "{s}"
        );
        assert!(
            s.contains(&format!("{}  (quantization=q8_0)", Digest::of(b"b"))),
            "{s}"
        );
        let both = idx.select(&BTreeMap::new(), repo).unwrap_err().to_string();
        assert!(both.starts_with("2 ModelKits in the index match"), "{both}");
        assert!(matches!(
            ModelKitIndex::default().select(&BTreeMap::new(), repo),
            Err(IndexError::Empty)
        ));
        assert!(
            parse_label_selector(&["q-".into()])
                .unwrap_err()
                .to_string()
                .contains("expected key=value")
        );
        let dup = parse_label_selector(&["a=1".into(), "a=2".into()]).unwrap_err();
        assert!(dup.to_string().contains("a is already set to \"1\""));
    }

    #[test]
    fn indents_as_go_does() {
        let s = indent_json(br#"{"a":[],"b":{"c":7000000000,"d":"x:,{"},"e":{}}"#);
        assert_eq!(
            s,
            "{\n  \"a\": [],\n  \"b\": {\n    \"c\": 7000000000,\n    \"d\": \"x:,{\"\n  },\n  \"e\": {}\n}"
        );
        // Whitespace another tool left in is dropped, as json.Indent drops it.
        assert_eq!(
            indent_json(b"{ \"a\" : [ ] , \"b\":{ } }"),
            "{\n  \"a\": [],\n  \"b\": {}\n}"
        );
    }
}
