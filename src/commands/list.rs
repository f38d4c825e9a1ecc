//! `kitsnap list`: the ModelKits in the local store, in kit's shapes: a table with one
//! line per tag, `--format json` with one object per ModelKit, or a Go template.

use anyhow::{Context, Result, bail};
use clap::Args;
use kitsnap_core::human_bytes;
use kitsnap_core::kitfile::Kitfile;
use kitsnap_core::layers;
use kitsnap_core::oci::Manifest;
use kitsnap_core::reference::Reference;
use kitsnap_registry::transfer;
use serde::Serialize;
use std::io::Write;

use crate::cli::RegistryArgs;
use crate::commands::parse_ref;
use crate::output::{Format, print_rows};
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
#[command(
    after_help = "Template fields: .Repo .Digest .Tags .ModelName .Size .Author \
(as kit's). Examples:\n  kitsnap list\n  kitsnap list --format json\n  \
kitsnap list --format '{{.Repo}}@{{.Digest}}'\n  kitsnap list -q\n  \
kitsnap list registry.example.com/org/my-model"
)]
pub struct ListArgs {
    /// List the ModelKits of this registry repository (REGISTRY/REPO, every tag; or
    /// REGISTRY/REPO:TAG) instead of the local store: each tag's manifest and config are
    /// read, nothing is pulled.
    #[arg(value_name = "REPOSITORY")]
    pub repository: Option<String>,
    /// table, json, or a Go template run for each ModelKit.
    #[arg(long, default_value = "table", value_name = "FORMAT")]
    pub format: Format,
    /// Print only the digests, one per ModelKit.
    #[arg(long, short = 'q', conflicts_with = "format")]
    pub quiet: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// kit shows the default registry's repositories without `localhost/`.
pub(crate) fn display_repo(name: &str) -> &str {
    // An untagged pack (no --tag) has no repository at all.
    if name.is_empty() {
        return "<none>";
    }
    name.strip_prefix("localhost/").unwrap_or(name)
}

/// One ModelKit (a repository and a manifest) with all its tags: kit's `list` JSON.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    repo: String,
    digest: String,
    tags: Vec<String>,
    model_name: String,
    size: String,
    author: String,
    /// The table's TAG column (one line per tag); not in kit's JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
}

/// `<none>` for what the Kitfile leaves empty, as kit prints it.
fn or_none(s: Option<String>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("<none>".into())
}

fn row(
    repo: &str,
    digest: String,
    tags: Vec<String>,
    m: Option<&Manifest>,
    kf: Option<&Kitfile>,
) -> Row {
    Row {
        repo: repo.to_string(),
        digest,
        tags,
        model_name: or_none(kf.map(|k| k.package.name.clone())),
        size: human_bytes(m.map_or(0, |m| m.layers.iter().map(|l| l.size).sum())),
        author: or_none(kf.and_then(|k| k.package.authors.first().cloned())),
        tag: None,
    }
}

pub fn run(a: ListArgs, ctx: &Ctx) -> Result<()> {
    let rows = match &a.repository {
        Some(repo) => remote_rows(&a.registry, &parse_ref(repo)?)?,
        None => local_rows(ctx)?,
    };
    print(&a, rows)
}

/// A registry repository, as kit lists it: one ModelKit per tag (the same manifest under
/// two tags is two entries), REPOSITORY without the registry; tags that are not ModelKits
/// (images, indexes) are left out.
fn remote_rows(args: &RegistryArgs, r: &Reference) -> Result<Vec<Row>> {
    if r.repository.contains(',') || r.tag.as_deref().is_some_and(|t| t.contains(',')) {
        bail!("repository cannot reference multiple tags");
    }
    transfer::check_remote(r)?;
    let reg = args.registry(&r.registry)?;
    let rt = runtime()?;
    let tags = match (&r.tag, &r.digest) {
        (None, None) => rt.block_on(reg.list_tags(&r.repository)).with_context(|| {
            format!(
                "failed to list tags on repository {}/{}",
                r.registry, r.repository
            )
        })?,
        _ => vec![String::new()],
    };
    let mut rows = Vec::new();
    for tag in tags {
        let mut one = r.clone();
        if !tag.is_empty() {
            one.tag = Some(tag);
        }
        let (_, m, desc) = match rt.block_on(transfer::remote_manifest(&reg, &one)) {
            Ok(v) => v,
            // Other artifacts, and ModelKit indexes (`kitsnap index list` shows those).
            Err(kitsnap_registry::Error::Core(
                kitsnap_core::Error::NotAModelKit(_) | kitsnap_core::Error::Index(_),
            )) => continue,
            Err(e) => return Err(e).with_context(|| format!("failed to resolve reference {one}")),
        };
        let kf = match layers::kitfile_of(&m, || {
            rt.block_on(reg.get_small_blob(&one.repository, &m.config))
                .map_err(|e| kitsnap_core::Error::Invalid(e.to_string()))
        }) {
            Ok(kf) => kf,
            Err(kitsnap_core::Error::NotAModelKit(_)) => continue,
            Err(e) => return Err(e).with_context(|| format!("failed to read modelkit {one}")),
        };
        let tags = one.tag.iter().cloned().collect();
        rows.push(row(
            &one.repository,
            desc.digest.to_string(),
            tags,
            Some(&m),
            kf.as_ref(),
        ));
    }
    Ok(rows)
}

fn local_rows(ctx: &Ctx) -> Result<Vec<Row>> {
    let store = ctx.open_store()?;
    let mut rows: Vec<Row> = Vec::new();
    for e in store.list()? {
        let repo = display_repo(&e.name);
        let digest = e.descriptor.digest.to_string();
        if let Some(row) = rows
            .iter_mut()
            .find(|r| r.repo == repo && r.digest == digest)
        {
            row.tags.extend(e.tag.clone());
            continue;
        }
        // One manifest read per ModelKit serves the names and the size.
        let manifest = store.manifest(&e.descriptor).ok();
        let kitfile = manifest
            .as_ref()
            .and_then(|m| store.kitfile(m).ok().flatten());
        rows.push(row(
            repo,
            digest,
            e.tag.iter().cloned().collect(),
            manifest.as_ref(),
            kitfile.as_ref(),
        ));
    }
    Ok(rows)
}

fn print(a: &ListArgs, rows: Vec<Row>) -> Result<()> {
    if a.quiet {
        let mut out = crate::output::stdout();
        for r in &rows {
            writeln!(out, "{}", r.digest)?;
        }
        return Ok(());
    }
    if a.format != Format::Table {
        return print_rows(&a.format, &rows, &[]);
    }
    // The table has a line per tag (`<none>` for an untagged kit), as kit prints it.
    let mut lines = Vec::new();
    for r in &rows {
        let tags = if r.tags.is_empty() {
            vec!["<none>".to_string()]
        } else {
            r.tags.clone()
        };
        for t in tags {
            lines.push(Row {
                tag: Some(t),
                ..r.clone()
            });
        }
    }
    print_rows(
        &Format::Table,
        &lines,
        &[
            ("REPOSITORY", "repo"),
            ("TAG", "tag"),
            ("MAINTAINER", "author"),
            ("NAME", "modelName"),
            ("SIZE", "size"),
            ("DIGEST", "digest"),
        ],
    )
}
