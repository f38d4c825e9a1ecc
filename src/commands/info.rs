//! `kitsnap info`: a ModelKit's Kitfile, from the store or (--remote) a registry, whole
//! or one node of it (`--filter`, kit's dotted field paths). A ModelPack without a Kitfile
//! gets one generated from its config and layers ([`modelpack::kitfile_from_modelpack`]).

use std::io::Write;

use anyhow::{Context, Result, bail};
use clap::Args;
use kitsnap_core::kitfile::Kitfile;
use kitsnap_core::{layers, modelpack};
use kitsnap_registry::transfer;
use serde_yaml_ng::Value;

use crate::cli::RegistryArgs;
use crate::commands::parse_ref;
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  kitsnap info my-model:v1\n  \
kitsnap info --remote registry.example.com/org/my-model:v1\n  \
kitsnap info my-model:v1 --filter package.name\n  kitsnap info my-model:v1 -f .model")]
pub struct InfoArgs {
    /// ModelKit reference: NAME[:TAG] or NAME@sha256:DIGEST.
    pub reference: String,
    /// Read the Kitfile from the registry (manifest and config only; nothing is pulled).
    #[arg(long, short = 'r')]
    pub remote: bool,
    /// Print one node of the Kitfile, named as kit names it: dot-separated fields, e.g.
    /// `package.name`, `.model.parts`, `manifestVersion` (no `[]` indexing).
    #[arg(long, short = 'f', value_name = "FIELDS")]
    pub filter: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(a: InfoArgs, ctx: &Ctx) -> Result<()> {
    let r = parse_ref(&a.reference)?;
    if let Some(f) = &a.filter {
        check_filter(f)?;
    }
    // A ModelPack without KitOps' Kitfile annotation (modctl's, for one) gets a Kitfile made
    // from its config and layers, said so on stderr.
    let (kf, generated) = if a.remote {
        transfer::check_remote(&r)?;
        let reg = a.registry.registry(&r.registry)?;
        let rt = runtime()?;
        let (_, m, _) = rt
            .block_on(transfer::remote_manifest(&reg, &r))
            .with_context(|| format!("resolving {r}"))?;
        let config = || {
            rt.block_on(reg.get_small_blob(&r.repository, &m.config))
                .map_err(|e| kitsnap_core::Error::Invalid(e.to_string()))
        };
        match layers::kitfile_of(&m, config)? {
            Some(kf) => (kf, false),
            None => (modelpack::kitfile_from_modelpack(&m, &config()?)?, true),
        }
    } else {
        let store = ctx.open_store()?;
        let d = store.resolve(&r)?;
        let m = store.manifest(&d)?;
        match store.kitfile(&m)? {
            Some(kf) => (kf, false),
            None => (
                modelpack::kitfile_from_modelpack(&m, &store.read_blob(&m.config)?)?,
                true,
            ),
        }
    };
    if generated {
        eprintln!(
            "note: {} is a ModelPack without a Kitfile; this one is generated from its config and layers",
            a.reference
        );
    }
    let text = match &a.filter {
        Some(f) => filtered(&kf, f)?,
        None => kf.to_yaml()?,
    };
    write!(crate::output::stdout(), "{text}")?;
    Ok(())
}

/// kit's filter syntax: alphanumerics, `_` and `-`, dot-separated, an optional leading dot.
fn check_filter(f: &str) -> Result<()> {
    if f.contains('[') {
        bail!("invalid filter: array access using '[]' is not currently supported");
    }
    let body = f.strip_prefix('.').unwrap_or(f);
    let ok = !body.is_empty()
        && body.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if !ok {
        bail!("invalid filter: {f}");
    }
    Ok(())
}

/// What a field holds when the Kitfile leaves it out (Go's zero values, as kit prints them).
#[derive(Clone, Copy)]
enum Kind {
    Str,
    List,
    /// A struct: never absent (kit's `package`).
    Struct(&'static [Field]),
    /// A pointer to a struct: `null` when absent, and nothing below it.
    Ptr(&'static [Field]),
    /// Free-form (`parameters`): `null` when absent.
    Any,
}

/// A Go struct field of kit's KitFile: its name (which kit matches) and its YAML key.
type Field = (&'static str, &'static str, Kind);

const PACKAGE: &[Field] = &[
    ("Name", "name", Kind::Str),
    ("Version", "version", Kind::Str),
    ("Description", "description", Kind::Str),
    ("License", "license", Kind::Str),
    ("Authors", "authors", Kind::List),
];

const MODEL: &[Field] = &[
    ("Name", "name", Kind::Str),
    ("Path", "path", Kind::Str),
    ("License", "license", Kind::Str),
    ("Framework", "framework", Kind::Str),
    ("Format", "format", Kind::Str),
    ("Version", "version", Kind::Str),
    ("Description", "description", Kind::Str),
    ("Parts", "parts", Kind::List),
    ("Parameters", "parameters", Kind::Any),
    ("Digest", "digest", Kind::Str),
    ("DiffId", "diffId", Kind::Str),
];

/// kit v1.7.0's KitFile, plus kitsnap's `prompts`.
const KITFILE: &[Field] = &[
    ("ManifestVersion", "manifestVersion", Kind::Str),
    ("Package", "package", Kind::Struct(PACKAGE)),
    ("Model", "model", Kind::Ptr(MODEL)),
    ("Code", "code", Kind::List),
    ("DataSets", "datasets", Kind::List),
    ("Docs", "docs", Kind::List),
    ("Prompts", "prompts", Kind::List),
];

/// kit looks each segment up as a Go field name, title-cased (`datasets` is `Datasets`,
/// which is not kit's `DataSets`: kit does not find it either; `dataSets` it does).
fn title(seg: &str) -> String {
    let mut c = seg.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn filtered(kf: &Kitfile, filter: &str) -> Result<String> {
    let not_found = || anyhow::anyhow!("error filtering output: cannot find required node");
    let mut value = serde_yaml_ng::to_value(kf).context("encoding the Kitfile")?;
    let mut fields = Some(KITFILE);
    let body = filter.strip_prefix('.').unwrap_or(filter);
    for seg in body.split('.') {
        // Below a list, a scalar or an absent model there are no fields to look up.
        let (Some(fs), Value::Mapping(map)) = (fields, &value) else {
            return Err(not_found());
        };
        let name = title(seg);
        let (_, key, kind) = fs.iter().find(|f| f.0 == name).ok_or_else(not_found)?;
        value = match (map.get(*key), kind) {
            (Some(v), _) => v.clone(),
            (None, Kind::Str) => Value::String(String::new()),
            (None, Kind::List) => Value::Sequence(Vec::new()),
            (None, Kind::Struct(_)) => Value::Mapping(Default::default()),
            (None, Kind::Ptr(_) | Kind::Any) => Value::Null,
        };
        fields = match kind {
            Kind::Struct(f) | Kind::Ptr(f) => Some(f),
            _ => None,
        };
    }
    // Layer digests are not part of the Kitfile kit prints (yaml:"-").
    strip_digests(&mut value);
    let in_parameters = body.split('.').any(|s| title(s) == "Parameters");
    let is_package = title(body) == "Package";
    Ok(kitsnap_core::goyaml::node_to_string(
        &value,
        in_parameters,
        is_package,
    ))
}

fn strip_digests(v: &mut Value) {
    match v {
        Value::Mapping(m) => {
            m.remove("digest");
            m.remove("diffId");
            m.values_mut().for_each(strip_digests);
        }
        Value::Sequence(s) => s.iter_mut().for_each(strip_digests),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_as_kit() {
        let kf: Kitfile = serde_yaml_ng::from_str(
            "manifestVersion: v1.0.0\npackage:\n  name: demo\n  authors: [a, b]\n\
             datasets:\n- name: train\n  path: train.csv\n",
        )
        .expect("kitfile");
        assert_eq!(filtered(&kf, "package.name").unwrap(), "demo\n");
        assert_eq!(filtered(&kf, ".package.name").unwrap(), "demo\n");
        assert_eq!(filtered(&kf, "Package.Name").unwrap(), "demo\n");
        assert_eq!(filtered(&kf, "package.license").unwrap(), "\"\"\n");
        assert_eq!(filtered(&kf, "package.authors").unwrap(), "- a\n- b\n");
        assert_eq!(filtered(&kf, "manifestVersion").unwrap(), "v1.0.0\n");
        assert_eq!(filtered(&kf, "model").unwrap(), "null\n");
        assert_eq!(filtered(&kf, "code").unwrap(), "[]\n");
        assert!(filtered(&kf, "dataSets").unwrap().contains("train.csv"));
        for bad in ["datasets", "model.name", "package.nope", "dataSets.name"] {
            assert!(filtered(&kf, bad).is_err(), "{bad}");
        }
        assert!(check_filter("a[0]").is_err());
        assert!(check_filter("a..b").is_err());
        assert!(check_filter("a b").is_err());
        assert!(check_filter(".a.b-c_d").is_ok());
    }
}
