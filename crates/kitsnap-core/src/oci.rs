//! OCI structures (descriptor, manifest, index) and the ModelKit / ModelPack media types.
//!
//! Field order and JSON encoding follow Go's `encoding/json` on the `ocispec` structs,
//! because that is what KitOps writes: identical inputs then give identical digests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const ARTIFACT_TYPE_KIT: &str = "application/vnd.kitops.modelkit.manifest.v1+json";
pub const ARTIFACT_TYPE_MODELPACK: &str = "application/vnd.cncf.model.manifest.v1+json";
pub const KIT_CONFIG_MEDIA_TYPE: &str = "application/vnd.kitops.modelkit.config.v1+json";
pub const MODELPACK_CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.model.config.v1+json";
/// model-spec before it moved to the CNCF (`github.com/dragonflyoss/model-spec` v0.0.6):
/// `vnd.cnai.*` media types and `org.cnai.*` annotations. modctl v0.2.2 still writes these
/// (its `pkg/backend/build/legacy.go`); they are read as ModelPack everywhere.
pub const ARTIFACT_TYPE_MODELPACK_LEGACY: &str = "application/vnd.cnai.model.manifest.v1+json";
pub const MODELPACK_CONFIG_MEDIA_TYPE_LEGACY: &str = "application/vnd.cnai.model.config.v1+json";
const MODELPACK_LAYER_PREFIX: &str = "application/vnd.cncf.model.";
const MODELPACK_LAYER_PREFIX_LEGACY: &str = "application/vnd.cnai.model.";

/// KitOps' manifest annotation naming the tool version that packed it.
pub const ANNOTATION_CLI_VERSION: &str = "ml.kitops.modelkit.cli-version";
/// KitOps keeps the Kitfile (as JSON) in this manifest annotation for ModelPack artifacts.
pub const ANNOTATION_KITFILE: &str = "ml.kitops.modelkit.kitfile";
/// KitOps marks prompt layers (stored as code layers) with this layer annotation.
pub const ANNOTATION_LAYER_SUBTYPE: &str = "ml.kitops.modelkit.layer-subtype";
pub const LAYER_SUBTYPE_PROMPT: &str = "prompt";
/// model-spec: the path a layer holds, relative to the package root.
pub const ANNOTATION_FILEPATH: &str = "org.cncf.model.filepath";
pub const ANNOTATION_FILEPATH_LEGACY: &str = "org.cnai.model.filepath";
/// model-spec: the file's name, mode, uid, gid, size, mtime and typeflag, as JSON
/// ([`crate::modelpack::FileMetadata`]).
pub const ANNOTATION_FILE_METADATA: &str = "org.cncf.model.file.metadata+json";
pub const ANNOTATION_FILE_METADATA_LEGACY: &str = "org.cnai.model.file.metadata+json";
/// OCI image layout: the name a manifest is tagged with.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

// kitsnap's own descriptor, manifest and index types, not oci-spec's: ModelKit manifests
// and configs are content-addressed, and must be written with exactly KitOps' bytes (Go's
// field order and HTML escaping, no `mediaType` where kit omits it, empty fields left out
// as Go's omitempty does), then read back and pushed unchanged. Foreign documents (container
// images, indexes) are read with oci-spec in kitsnap-registry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Only in indexes (image views list one manifest per platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
}

/// An index entry's platform, in Go's field order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Default for Digest {
    fn default() -> Self {
        Digest::of(b"")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
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
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// Serializes like Go's `json.Marshal`: compact, with `<`, `>`, `&`, U+2028 and U+2029
/// escaped. Those characters can only occur inside JSON strings, so a textual pass is exact.
pub fn to_go_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let s = serde_json::to_string(value).map_err(|source| Error::Json {
        what: "serialization".into(),
        source,
    })?;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Ok(out.into_bytes())
}

/// Which packaging format an artifact uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    Kit,
    ModelPack,
}

/// What a layer holds, in Kitfile terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerKind {
    Model,
    ModelPart,
    Dataset,
    Code,
    Docs,
    Prompt,
}

impl LayerKind {
    /// The word used in messages and in `kitsnap unpack --filter`.
    pub fn user_str(self) -> &'static str {
        match self {
            LayerKind::Model => "model",
            LayerKind::ModelPart => "modelpart",
            LayerKind::Dataset => "dataset",
            LayerKind::Code => "code",
            LayerKind::Docs => "docs",
            LayerKind::Prompt => "prompt",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    /// gzip at level 1; same media type as gzip.
    GzipFastest,
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "" | "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "gzip-fastest" => Ok(Compression::GzipFastest),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(Error::Invalid(format!(
                "invalid compression {s:?}: must be one of none, gzip, gzip-fastest, zstd"
            ))),
        }
    }
}

/// A parsed layer media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerType {
    pub format: ModelFormat,
    /// `Prompt` never comes out of parsing: prompts are code layers with a subtype annotation.
    pub kind: LayerKind,
    pub compression: Compression,
    /// ModelPack `.raw` layers hold one file's bytes rather than a tar.
    pub raw: bool,
}

impl LayerType {
    pub fn media_type(&self) -> String {
        let suffix = match self.compression {
            Compression::None => "",
            Compression::Gzip | Compression::GzipFastest => "+gzip",
            Compression::Zstd => "+zstd",
        };
        match self.format {
            ModelFormat::Kit => {
                let base = match self.kind {
                    LayerKind::Model => "model",
                    LayerKind::ModelPart => "modelpart",
                    LayerKind::Dataset => "dataset",
                    LayerKind::Code | LayerKind::Prompt => "code",
                    LayerKind::Docs => "docs",
                };
                format!("application/vnd.kitops.modelkit.{base}.v1.tar{suffix}")
            }
            ModelFormat::ModelPack => {
                let base = match self.kind {
                    LayerKind::Model => "weight",
                    LayerKind::ModelPart => "weight.config",
                    LayerKind::Dataset => "dataset",
                    LayerKind::Code | LayerKind::Prompt => "code",
                    LayerKind::Docs => "doc",
                };
                if self.raw {
                    format!("{MODELPACK_LAYER_PREFIX}{base}.v1.raw")
                } else {
                    format!("{MODELPACK_LAYER_PREFIX}{base}.v1.tar{suffix}")
                }
            }
        }
    }

    pub fn parse(media_type: &str) -> Option<LayerType> {
        let (format, rest) =
            if let Some(r) = media_type.strip_prefix("application/vnd.kitops.modelkit.") {
                (ModelFormat::Kit, r)
            } else if let Some(r) = media_type
                .strip_prefix(MODELPACK_LAYER_PREFIX)
                .or_else(|| media_type.strip_prefix(MODELPACK_LAYER_PREFIX_LEGACY))
            {
                (ModelFormat::ModelPack, r)
            } else {
                return None;
            };
        let (base, tail) = rest.split_once(".v1.")?;
        let kind = match (format, base) {
            (ModelFormat::Kit, "model") | (ModelFormat::ModelPack, "weight") => LayerKind::Model,
            (ModelFormat::Kit, "modelpart") | (ModelFormat::ModelPack, "weight.config") => {
                LayerKind::ModelPart
            }
            (_, "dataset") => LayerKind::Dataset,
            (_, "code") => LayerKind::Code,
            (ModelFormat::Kit, "docs") | (ModelFormat::ModelPack, "doc") => LayerKind::Docs,
            _ => return None,
        };
        let (raw, compression) = match tail {
            "tar" => (false, Compression::None),
            "tar+gzip" => (false, Compression::Gzip),
            "tar+zstd" => (false, Compression::Zstd),
            "raw" if format == ModelFormat::ModelPack => (true, Compression::None),
            _ => return None,
        };
        Some(LayerType {
            format,
            kind,
            compression,
            raw,
        })
    }
}

impl Manifest {
    /// Bytes of the config and layers (the manifest itself not included).
    pub fn blobs_size(&self) -> u64 {
        self.config.size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }

    /// The format, recognised by artifactType or by config media type (as KitOps does);
    /// model-spec's legacy `vnd.cnai.*` names are ModelPack too.
    pub fn model_format(&self) -> Option<ModelFormat> {
        let at = self.artifact_type.as_deref();
        if at == Some(ARTIFACT_TYPE_KIT) || self.config.media_type == KIT_CONFIG_MEDIA_TYPE {
            Some(ModelFormat::Kit)
        } else if at.is_some_and(is_modelpack_artifact_type)
            || is_modelpack_config_media_type(&self.config.media_type)
        {
            Some(ModelFormat::ModelPack)
        } else {
            None
        }
    }

    /// The kind of each layer, with prompts told apart from code by their annotation.
    pub fn layer_kind(desc: &Descriptor) -> Option<(LayerType, LayerKind)> {
        let lt = LayerType::parse(&desc.media_type)?;
        let kind = if lt.kind == LayerKind::Code
            && desc
                .annotations
                .get(ANNOTATION_LAYER_SUBTYPE)
                .map(String::as_str)
                == Some(LAYER_SUBTYPE_PROMPT)
        {
            LayerKind::Prompt
        } else {
            lt.kind
        };
        Some((lt, kind))
    }
}

/// `org.cncf.model.*` or, failing that, legacy `org.cnai.model.*` layer annotation (as
/// modctl reads them: the first that is present and not empty).
fn modelpack_annotation<'a>(desc: &'a Descriptor, key: &str, legacy: &str) -> Option<&'a str> {
    [key, legacy]
        .iter()
        .filter_map(|k| desc.annotations.get(*k))
        .map(String::as_str)
        .find(|v| !v.is_empty())
}

/// The path a ModelPack layer holds (`org.cncf.model.filepath`, or its legacy name).
pub fn layer_filepath(desc: &Descriptor) -> Option<&str> {
    modelpack_annotation(desc, ANNOTATION_FILEPATH, ANNOTATION_FILEPATH_LEGACY)
}

/// The file metadata JSON of a ModelPack layer (`org.cncf.model.file.metadata+json`, or
/// its legacy name), and the key it was found under.
pub fn layer_file_metadata(desc: &Descriptor) -> Option<(&'static str, &str)> {
    [ANNOTATION_FILE_METADATA, ANNOTATION_FILE_METADATA_LEGACY]
        .into_iter()
        .filter_map(|k| desc.annotations.get(k).map(|v| (k, v.as_str())))
        .find(|(_, v)| !v.is_empty())
}

/// A ModelPack manifest's artifactType, current or legacy.
pub fn is_modelpack_artifact_type(t: &str) -> bool {
    t == ARTIFACT_TYPE_MODELPACK || t == ARTIFACT_TYPE_MODELPACK_LEGACY
}

/// A ModelPack config media type, current or legacy.
pub fn is_modelpack_config_media_type(t: &str) -> bool {
    t == MODELPACK_CONFIG_MEDIA_TYPE || t == MODELPACK_CONFIG_MEDIA_TYPE_LEGACY
}

/// ModelPack config (`application/vnd.cncf.model.config.v1+json`), model-spec v1 field order.
/// Every field is optional when read (an empty `{}` config parses); the fields kitsnap
/// never sets are left out when written, so its configs keep their bytes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ModelPackConfig {
    #[serde(default)]
    pub descriptor: ModelPackDescriptor,
    #[serde(default)]
    pub modelfs: ModelFs,
    #[serde(default)]
    pub config: ModelPackExec,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ModelPackDescriptor {
    #[serde(rename = "createdAt", default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub family: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "docURL", default, skip_serializing_if = "String::is_empty")]
    pub doc_url: String,
    #[serde(
        rename = "sourceURL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub source_url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vendor: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub licenses: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ModelFs {
    #[serde(rename = "type", default)]
    pub fs_type: String,
    #[serde(rename = "diffIds", default)]
    pub diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ModelPackExec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub format: String,
    #[serde(
        rename = "paramSize",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub param_size: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub precision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub quantization: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_round_trip() {
        for format in [ModelFormat::Kit, ModelFormat::ModelPack] {
            for kind in [
                LayerKind::Model,
                LayerKind::ModelPart,
                LayerKind::Dataset,
                LayerKind::Code,
                LayerKind::Docs,
            ] {
                for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
                    let lt = LayerType {
                        format,
                        kind,
                        compression,
                        raw: false,
                    };
                    assert_eq!(LayerType::parse(&lt.media_type()), Some(lt));
                }
            }
        }
        assert_eq!(
            LayerType {
                format: ModelFormat::Kit,
                kind: LayerKind::Model,
                compression: Compression::GzipFastest,
                raw: false
            }
            .media_type(),
            "application/vnd.kitops.modelkit.model.v1.tar+gzip"
        );
        assert_eq!(
            LayerType {
                format: ModelFormat::ModelPack,
                kind: LayerKind::ModelPart,
                compression: Compression::Zstd,
                raw: false
            }
            .media_type(),
            "application/vnd.cncf.model.weight.config.v1.tar+zstd"
        );
        let raw = LayerType::parse("application/vnd.cncf.model.weight.v1.raw");
        assert!(raw.is_some_and(|r| r.raw && r.kind == LayerKind::Model));
        assert!(LayerType::parse("application/vnd.kitops.modelkit.model.v1.raw").is_none());
        assert!(LayerType::parse("application/vnd.cnai.model.weight.v1.zip").is_none());
        assert!(LayerType::parse("application/vnd.oci.image.layer.v1.tar").is_none());
    }

    /// model-spec v0.0.6's `vnd.cnai.*` names (what modctl v0.2.2 writes) are ModelPack.
    #[test]
    fn legacy_names_are_modelpack() {
        for (legacy, kind, raw, compression) in [
            (
                "application/vnd.cnai.model.weight.v1.raw",
                LayerKind::Model,
                true,
                Compression::None,
            ),
            (
                "application/vnd.cnai.model.weight.config.v1.tar",
                LayerKind::ModelPart,
                false,
                Compression::None,
            ),
            (
                "application/vnd.cnai.model.dataset.v1.tar+gzip",
                LayerKind::Dataset,
                false,
                Compression::Gzip,
            ),
            (
                "application/vnd.cnai.model.code.v1.tar+zstd",
                LayerKind::Code,
                false,
                Compression::Zstd,
            ),
            (
                "application/vnd.cnai.model.doc.v1.raw",
                LayerKind::Docs,
                true,
                Compression::None,
            ),
        ] {
            assert_eq!(
                LayerType::parse(legacy),
                Some(LayerType {
                    format: ModelFormat::ModelPack,
                    kind,
                    compression,
                    raw
                }),
                "{legacy}"
            );
        }
        let manifest = |artifact: Option<&str>, config: &str| Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_MANIFEST.into()),
            artifact_type: artifact.map(str::to_string),
            config: Descriptor {
                media_type: config.into(),
                ..Default::default()
            },
            layers: vec![],
            subject: None,
            annotations: BTreeMap::new(),
        };
        let empty = "application/vnd.oci.empty.v1+json";
        for m in [
            manifest(Some(ARTIFACT_TYPE_MODELPACK_LEGACY), empty),
            manifest(None, MODELPACK_CONFIG_MEDIA_TYPE_LEGACY),
            manifest(Some(ARTIFACT_TYPE_MODELPACK), empty),
            manifest(None, MODELPACK_CONFIG_MEDIA_TYPE),
        ] {
            assert_eq!(m.model_format(), Some(ModelFormat::ModelPack), "{m:?}");
        }
        assert_eq!(manifest(None, empty).model_format(), None);
        // The current annotation wins; an empty one is absent (as modctl reads them).
        let mut d = Descriptor::default();
        d.annotations
            .insert(ANNOTATION_FILEPATH_LEGACY.into(), "old/path".into());
        assert_eq!(layer_filepath(&d), Some("old/path"));
        d.annotations.insert(ANNOTATION_FILEPATH.into(), "".into());
        assert_eq!(layer_filepath(&d), Some("old/path"));
        d.annotations
            .insert(ANNOTATION_FILEPATH.into(), "new/path".into());
        assert_eq!(layer_filepath(&d), Some("new/path"));
        assert_eq!(layer_file_metadata(&d), None);
        d.annotations
            .insert(ANNOTATION_FILE_METADATA_LEGACY.into(), "{}".into());
        assert_eq!(
            layer_file_metadata(&d),
            Some((ANNOTATION_FILE_METADATA_LEGACY, "{}"))
        );
        // A config with none of model-spec's fields still parses.
        let c: ModelPackConfig = serde_json::from_str("{}").unwrap();
        assert!(c.modelfs.diff_ids.is_empty());
    }

    #[test]
    fn go_json_escapes_html() {
        let v = serde_json::json!({"b": "<a&b>", "a": 1});
        assert_eq!(
            String::from_utf8(to_go_json(&v).unwrap()).unwrap(),
            r#"{"a":1,"b":"\u003ca\u0026b\u003e"}"#
        );
    }

    #[test]
    fn manifest_field_order_matches_ocispec() {
        let m = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_MANIFEST.into()),
            artifact_type: Some(ARTIFACT_TYPE_KIT.into()),
            config: Descriptor {
                media_type: KIT_CONFIG_MEDIA_TYPE.into(),
                digest: Digest::of(b"{}"),
                size: 2,
                ..Default::default()
            },
            layers: vec![],
            subject: None,
            annotations: BTreeMap::new(),
        };
        let s = String::from_utf8(to_go_json(&m).unwrap()).unwrap();
        assert!(s.starts_with(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.kitops.modelkit.manifest.v1+json","config":{"mediaType":"#
        ));
        assert_eq!(m.model_format(), Some(ModelFormat::Kit));
    }
}
