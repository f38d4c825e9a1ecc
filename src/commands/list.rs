//! `kitsnap list`: the ModelKits in the local store, in kit's shapes: a table with one
//! line per tag, `--format json` with one object per ModelKit, or a Go template.

use anyhow::Result;
use clap::Args;
use kitsnap_core::human_bytes;
use serde::Serialize;
use std::io::Write;

use crate::output::{Format, print_rows};
use crate::settings::Ctx;

#[derive(Args, Debug)]
#[command(
    after_help = "Template fields: .Repo .Digest .Tags .ModelName .Size .Author \
(as kit's). Examples:\n  kitsnap list\n  kitsnap list --format json\n  \
kitsnap list --format '{{.Repo}}@{{.Digest}}'\n  kitsnap list -q"
)]
pub struct ListArgs {
    /// table, json, or a Go template run for each ModelKit.
    #[arg(long, default_value = "table", value_name = "FORMAT")]
    pub format: Format,
    /// Print only the digests, one per ModelKit.
    #[arg(long, short = 'q', conflicts_with = "format")]
    pub quiet: bool,
}

/// kit shows the default registry's repositories without `localhost/`.
fn display_repo(name: &str) -> &str {
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

pub fn run(a: ListArgs, ctx: &Ctx) -> Result<()> {
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
        let size: u64 = manifest
            .as_ref()
            .map_or(0, |m| m.layers.iter().map(|l| l.size).sum());
        let or_none = |s: Option<String>| s.filter(|s| !s.is_empty()).unwrap_or("<none>".into());
        rows.push(Row {
            repo: repo.to_string(),
            digest,
            tags: e.tag.iter().cloned().collect(),
            model_name: or_none(kitfile.as_ref().map(|k| k.package.name.clone())),
            size: human_bytes(size),
            author: or_none(
                kitfile
                    .as_ref()
                    .and_then(|k| k.package.authors.first().cloned()),
            ),
            tag: None,
        });
    }
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
