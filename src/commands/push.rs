//! `kitsnap push`: a stored ModelKit to a registry.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use kitsnap_registry::transfer;

use crate::cli::RegistryArgs;
use crate::commands::parse_ref;
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Local ModelKit.
    pub source: String,
    /// Registry location (default: SOURCE).
    pub destination: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(a: PushArgs, ctx: &Ctx) -> Result<()> {
    let store = ctx.open_store()?;
    let src = parse_ref(&a.source)?;
    let dst = match &a.destination {
        Some(d) => parse_ref(d)?,
        None => src.clone(),
    };
    let reg = a.registry.registry(&dst.registry)?;
    let rep = runtime()?
        .block_on(transfer::push(
            &store,
            &reg,
            &src,
            &dst,
            &a.registry.transfer(ctx.progress),
        ))
        .with_context(|| format!("pushing {src} to {dst}"))?;
    eprintln!("{dst}: {}", rep.summary("pushed", "already there"));
    if let Some(d) = rep.manifest {
        writeln!(crate::output::stdout(), "{}", d.digest)?;
    }
    Ok(())
}
