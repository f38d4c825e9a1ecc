//! `kitsnap tag`: another name for a stored ModelKit.

use anyhow::{Result, bail};
use clap::Args;

use crate::commands::parse_ref;
use crate::settings::Ctx;

#[derive(Args, Debug)]
pub struct TagArgs {
    /// Existing ModelKit.
    pub source: String,
    /// New NAME[:TAG].
    pub target: String,
}

pub fn run(a: TagArgs, ctx: &Ctx) -> Result<()> {
    let store = ctx.open_store()?;
    let d = store.resolve(&parse_ref(&a.source)?)?;
    let t = parse_ref(&a.target)?;
    if t.digest.is_some() {
        bail!("the new name must be NAME[:TAG], not a digest");
    }
    store.tag(&t, &d)?;
    eprintln!(
        "Tagged {} as {}:{}",
        d.digest,
        t.name(),
        t.tag_or_default().unwrap_or("latest")
    );
    Ok(())
}
