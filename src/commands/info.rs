//! `kitsnap info`: a ModelKit's Kitfile.

use std::io::Write;

use anyhow::{Result, bail};
use clap::Args;

use crate::commands::parse_ref;
use crate::settings::Ctx;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// ModelKit reference: NAME[:TAG] or NAME@sha256:DIGEST.
    pub reference: String,
}

pub fn run(a: InfoArgs, ctx: &Ctx) -> Result<()> {
    let store = ctx.open_store()?;
    let d = store.resolve(&parse_ref(&a.reference)?)?;
    let m = store.manifest(&d)?;
    match store.kitfile(&m)? {
        Some(kf) => write!(crate::output::stdout(), "{}", kf.to_yaml()?)?,
        None => bail!(
            "{} is a ModelPack without a Kitfile annotation; see `kitsnap inspect`",
            a.reference
        ),
    }
    Ok(())
}
