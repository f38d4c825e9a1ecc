//! `kitsnap inspect`: a ModelKit's manifest, from the store or a registry.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use kitsnap_registry::transfer;

use crate::cli::RegistryArgs;
use crate::commands::parse_ref;
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// ModelKit reference: NAME[:TAG] or NAME@sha256:DIGEST.
    pub reference: String,
    /// Read the manifest from the registry instead of the local store.
    #[arg(long, short = 'r')]
    pub remote: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(a: InspectArgs, ctx: &Ctx) -> Result<()> {
    let r = parse_ref(&a.reference)?;
    let m = if a.remote {
        transfer::check_remote(&r)?;
        let reg = a.registry.registry(&r.registry)?;
        runtime()?.block_on(transfer::remote_manifest(&reg, &r))?.1
    } else {
        let store = ctx.open_store()?;
        let d = store.resolve(&r)?;
        store.manifest(&d)?
    };
    let mut out = crate::output::stdout();
    serde_json::to_writer_pretty(&mut out, &m)?;
    writeln!(out)?;
    Ok(())
}
