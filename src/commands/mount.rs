//! `kitsnap mount`: a read-only view of a ModelKit on the host, through `kitsnap serve`;
//! `--list` shows the current mounts.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;

use serde::Serialize;

use crate::cli::{DaemonArgs, RegistryArgs};
use crate::client;
use crate::commands::parse_ref;
use crate::output::{Format, print_rows, write_table};
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
pub struct MountArgs {
    /// ModelKit: REGISTRY/REPO[:TAG] or @sha256:DIGEST (or a local-store name).
    #[arg(required_unless_present = "list")]
    pub reference: Option<String>,
    /// Select layers, as in unpack (repeatable).
    #[arg(long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// Mount name (default: derived from REF and the filters).
    #[arg(long)]
    pub name: Option<String>,
    /// List the current mounts instead.
    #[arg(long, conflicts_with_all = ["reference", "filters", "name"])]
    pub list: bool,
    /// With --list: table, json, or a Go template run for each mount (.Name .Reference
    /// .Holders .Path).
    #[arg(
        long,
        default_value = "table",
        value_name = "FORMAT",
        requires = "list"
    )]
    pub format: Format,
    /// With --list: print only the mount paths.
    #[arg(long, short = 'q', requires = "list", conflicts_with = "format")]
    pub quiet: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(a: MountArgs, ctx: &Ctx) -> Result<()> {
    if a.list {
        return list(&a);
    }
    let reference = a.reference.clone().unwrap_or_default();
    let r = parse_ref(&reference)?;
    let res = runtime()?
        .block_on(client::mount(
            &a.daemon.address,
            client::MountArgs {
                reference: r.to_string(),
                namespace: a.daemon.namespace.clone(),
                filters: a.filters.clone(),
                name: a.name.clone(),
                store: ctx.existing_store(),
                registry: a.registry.node_options()?,
            },
        ))
        .with_context(|| format!("mounting {r}"))?;
    if res.pulled {
        eprintln!(
            "Pulled {r} into containerd (namespace {})",
            a.daemon.namespace
        );
    }
    eprintln!(
        "Mounted {r} read-only as {} (holder {}; {} holder(s) in all; `kitsnap umount {} --holder {}` releases this one)",
        res.name, res.holder, res.holders, res.name, res.holder
    );
    writeln!(crate::output::stdout(), "{}", res.path)?;
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MountRow {
    name: String,
    reference: String,
    holders: Vec<String>,
    path: String,
}

fn list(a: &MountArgs) -> Result<()> {
    let r = runtime()?.block_on(client::list_mounts(&a.daemon.address))?;
    let rows: Vec<MountRow> = r
        .mounts
        .into_iter()
        .map(|m| MountRow {
            name: m.name,
            reference: m.reference,
            holders: m.holders,
            path: m.path,
        })
        .collect();
    if a.quiet {
        let mut out = crate::output::stdout();
        for m in &rows {
            writeln!(out, "{}", m.path)?;
        }
        out.flush()?;
        return Ok(());
    }
    if a.format != Format::Table {
        return print_rows(&a.format, &rows, &[]);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.reference.clone(),
                m.holders.len().to_string(),
                m.path.clone(),
            ]
        })
        .collect();
    let mut out = crate::output::stdout();
    write_table(
        &mut out,
        &["NAME", "MODELKIT", "HOLDERS", "PATH"].map(String::from),
        &cells,
    )?;
    out.flush()?;
    Ok(())
}
