//! `kitsnap df`: disk used by ModelKits on this node.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use kitsnap_core::human_bytes;

use crate::cli::DaemonArgs;
use crate::client;
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
pub struct DfArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

pub fn run(a: DfArgs, _ctx: &Ctx) -> Result<()> {
    let r = runtime()?.block_on(client::df(&a.daemon.address))?;
    let mut out = crate::output::stdout();
    writeln!(
        out,
        "{:<44} {:<10} {:>6} {:>11} {:>11} {:>11}",
        "MODELKIT", "NAMESPACE", "LAYERS", "MODEL", "CONTENT", "SNAPSHOTS"
    )?;
    for k in &r.kits {
        writeln!(
            out,
            "{:<44} {:<10} {:>6} {:>11} {:>11} {:>11}",
            k.reference,
            k.namespace,
            k.layers,
            human_bytes(k.model_bytes),
            human_bytes(k.content_bytes),
            human_bytes(k.snapshot_bytes)
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "On this node: {} in containerd's content store (namespaces above), {} in kitsnap snapshots, {} more in ModelKit trees (hardlinks count once); total {}",
        human_bytes(r.content_bytes),
        human_bytes(r.snapshot_bytes),
        human_bytes(r.tree_bytes),
        human_bytes(r.total_bytes)
    )?;
    out.flush()?;
    Ok(())
}
