//! `kitsnap init`: writes a Kitfile describing a directory.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use kitsnap_core::init::{self, InitOptions};

use crate::settings::Ctx;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory to describe.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Package name (default: the directory name).
    #[arg(long)]
    pub name: Option<String>,
    /// Package description.
    #[arg(long = "desc")]
    pub description: Option<String>,
    /// Package author.
    #[arg(long)]
    pub author: Option<String>,
    /// Replace an existing Kitfile.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: InitArgs, _ctx: &Ctx) -> Result<()> {
    let target = a.dir.join("Kitfile");
    if target.exists() && !a.force {
        bail!(
            "{} already exists (use --force to replace it)",
            target.display()
        );
    }
    let kf = init::generate(
        &a.dir,
        &InitOptions {
            name: a.name,
            description: a.description,
            author: a.author,
        },
    )
    .with_context(|| format!("scanning {}", a.dir.display()))?;
    std::fs::write(&target, kf.to_yaml()?)
        .with_context(|| format!("writing {}", target.display()))?;
    eprintln!(
        "Wrote {} ({} layer(s)); review it, then run `kitsnap pack {} -t NAME:TAG`",
        target.display(),
        kf.layer_entries().len(),
        a.dir.display()
    );
    Ok(())
}
