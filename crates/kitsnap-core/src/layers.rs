//! Which manifest layer is which Kitfile entry, and what `--filter` selects. Shared by
//! `unpack`, the registry's selective fetch, and the node (pulls, views, composition).

use crate::error::{Error, Result};
use crate::kitfile::{self, Kitfile};
use crate::oci::{
    self, ANNOTATION_FILEPATH, ANNOTATION_KITFILE, Compression, Descriptor, LayerKind, Manifest,
    ModelFormat,
};

/// What `--filter` can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterType {
    Kitfile,
    Model,
    Datasets,
    Code,
    Docs,
    Prompts,
}

impl FilterType {
    fn parse(s: &str) -> Result<FilterType> {
        Ok(match s {
            "kitfile" => FilterType::Kitfile,
            "model" => FilterType::Model,
            "datasets" => FilterType::Datasets,
            "code" => FilterType::Code,
            "docs" => FilterType::Docs,
            "prompts" => FilterType::Prompts,
            _ => {
                return Err(Error::Invalid(format!(
                    "invalid filter type {s:?} (must be one of kitfile, model, datasets, code, docs, prompts)"
                )));
            }
        })
    }

    /// From [`LayerKind::user_str`] (as stored in node records).
    pub fn from_user_str(kind: &str) -> FilterType {
        match kind {
            "dataset" => FilterType::Datasets,
            "code" => FilterType::Code,
            "docs" => FilterType::Docs,
            "prompt" => FilterType::Prompts,
            _ => FilterType::Model,
        }
    }

    pub fn for_kind(kind: LayerKind) -> FilterType {
        match kind {
            LayerKind::Model | LayerKind::ModelPart => FilterType::Model,
            LayerKind::Dataset => FilterType::Datasets,
            LayerKind::Code => FilterType::Code,
            LayerKind::Docs => FilterType::Docs,
            LayerKind::Prompt => FilterType::Prompts,
        }
    }
}

/// One `--filter` value: `TYPE[,TYPE...][:NAME_OR_PATH[,NAME_OR_PATH...]]`, as in `kit unpack`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub types: Vec<FilterType>,
    pub ids: Vec<String>,
}

impl std::str::FromStr for Filter {
    type Err = Error;
    fn from_str(s: &str) -> Result<Filter> {
        let mut parts = s.split(':');
        let types = parts.next().unwrap_or("");
        let ids = parts.next();
        if parts.next().is_some() {
            return Err(Error::Invalid(format!(
                "invalid filter {s:?}: use <type1>,<type2>[:<name-or-path1>,<name-or-path2>]"
            )));
        }
        Ok(Filter {
            types: types
                .split(',')
                .map(FilterType::parse)
                .collect::<Result<_>>()?,
            ids: ids
                .map(|i| i.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        })
    }
}

/// `--filter` values as given (each may hold several filters separated by spaces), and
/// their canonical text (the filters joined by one space), which names a filtered view.
pub fn parse_filters<S: AsRef<str>>(values: &[S]) -> Result<(Vec<Filter>, String)> {
    let pieces: Vec<&str> = values
        .iter()
        .flat_map(|f| f.as_ref().split(' ').filter(|s| !s.is_empty()))
        .collect();
    let filters = pieces
        .iter()
        .map(|f| f.parse::<Filter>())
        .collect::<Result<Vec<_>>>()?;
    Ok((filters, pieces.join(" ")))
}

/// Whether anything of type `t` can be selected: no filters select everything, else some
/// filter must name the type.
pub fn wants(filters: &[Filter], t: FilterType) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.types.contains(&t))
}

/// No filters selects everything; otherwise an item is selected when any filter names its
/// type and either lists no ids or lists its name or path.
pub fn selected(filters: &[Filter], t: FilterType, name: &str, path: &str) -> bool {
    if filters.is_empty() {
        return true;
    }
    let norm = kitfile::check_relative_path(path).unwrap_or_default();
    filters.iter().any(|f| {
        f.types.contains(&t)
            && (f.ids.is_empty()
                || f.ids.iter().any(|id| {
                    (!name.is_empty() && id == name)
                        || (!path.is_empty()
                            && (id == path
                                || kitfile::check_relative_path(id).ok().as_deref()
                                    == Some(norm.as_str())))
                }))
    })
}

/// A manifest layer matched with its Kitfile entry.
#[derive(Clone, Debug)]
pub struct LayerPlan {
    pub kind: LayerKind,
    pub name: String,
    pub path: String,
    pub desc: Descriptor,
    pub compression: Compression,
    pub raw: bool,
}

/// The Kitfile of a ModelKit: its config (read through `config` only for a KitOps
/// ModelKit), or, for a ModelPack, KitOps' manifest annotation (None without one).
pub fn kitfile_of(
    manifest: &Manifest,
    config: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Option<Kitfile>> {
    match manifest.model_format() {
        Some(ModelFormat::Kit) => Ok(Some(Kitfile::from_config_json(&config()?)?)),
        Some(ModelFormat::ModelPack) => match manifest.annotations.get(ANNOTATION_KITFILE) {
            Some(j) => Ok(Some(Kitfile::from_config_json(j.as_bytes())?)),
            None => Ok(None),
        },
        None => Err(not_a_modelkit(manifest)),
    }
}

pub fn not_a_modelkit(manifest: &Manifest) -> Error {
    Error::NotAModelKit(format!(
        "not a ModelKit or ModelPack: artifactType is {:?} and config media type is {:?}",
        manifest.artifact_type.as_deref().unwrap_or(""),
        manifest.config.media_type
    ))
}

/// Pairs each manifest layer with the Kitfile entry it was built from (in order per kind,
/// as KitOps does).
pub fn plan_layers(manifest: &Manifest, kf: Option<&Kitfile>) -> Result<Vec<LayerPlan>> {
    let entries = kf.map(Kitfile::layer_entries).unwrap_or_default();
    let mut used = vec![false; entries.len()];
    let mut out = Vec::new();
    for desc in &manifest.layers {
        let (lt, kind) = Manifest::layer_kind(desc).ok_or_else(|| {
            Error::NotAModelKit(format!(
                "layer {} has media type {:?}, which is not a ModelKit or ModelPack layer",
                desc.digest, desc.media_type
            ))
        })?;
        let annotated = oci::layer_filepath(desc).map(str::to_string);
        let slot = entries
            .iter()
            .enumerate()
            .find(|(i, e)| !used[*i] && e.kind == kind);
        let (name, path) = match slot {
            Some((i, e)) => {
                used[i] = true;
                (e.name.clone(), e.path.clone())
            }
            None => (String::new(), annotated.clone().unwrap_or_default()),
        };
        if lt.raw && annotated.is_none() {
            return Err(Error::NotAModelKit(format!(
                "raw layer {} has no {ANNOTATION_FILEPATH} annotation",
                desc.digest
            )));
        }
        out.push(LayerPlan {
            kind,
            name,
            path: if lt.raw {
                annotated.unwrap_or_default()
            } else {
                path
            },
            desc: desc.clone(),
            compression: lt.compression,
            raw: lt.raw,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_syntax() {
        let f: Filter = "model,datasets:train,data/x.csv".parse().unwrap();
        assert_eq!(f.types, vec![FilterType::Model, FilterType::Datasets]);
        assert_eq!(f.ids, vec!["train", "data/x.csv"]);
        assert!("weights".parse::<Filter>().is_err());
        assert!("model:a:b".parse::<Filter>().is_err());
        let fs = vec![f];
        assert!(selected(&fs, FilterType::Datasets, "train", "data/t.csv"));
        assert!(selected(&fs, FilterType::Datasets, "", "./data/x.csv"));
        assert!(!selected(&fs, FilterType::Datasets, "val", "data/v.csv"));
        assert!(!selected(&fs, FilterType::Code, "", "src"));
        assert!(selected(&[], FilterType::Code, "", "src"));
    }
}
