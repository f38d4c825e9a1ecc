//! `kitsnap mount`: a read-only view of a ModelKit on the host, through `kitsnap serve`;
//! `--list` shows the current mounts.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::{DaemonArgs, RegistryArgs};
use crate::client;
use crate::commands::parse_ref;
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
    #[command(flatten)]
    pub daemon: DaemonArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(a: MountArgs, ctx: &Ctx) -> Result<()> {
    if a.list {
        return list(&a.daemon);
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
                registry: a.registry.node_options(),
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

fn list(daemon: &DaemonArgs) -> Result<()> {
    let r = runtime()?.block_on(client::list_mounts(&daemon.address))?;
    let mut out = crate::output::stdout();
    writeln!(
        out,
        "{:<32} {:<44} {:<8} PATH",
        "NAME", "MODELKIT", "HOLDERS"
    )?;
    for m in r.mounts {
        writeln!(
            out,
            "{:<32} {:<44} {:<8} {}",
            m.name,
            m.reference,
            m.holders.len(),
            m.path
        )?;
    }
    out.flush()?;
    Ok(())
}
