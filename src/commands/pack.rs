//! `kitsnap pack`: a directory and its Kitfile into a ModelKit in the local store.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use kitsnap_core::human_bytes;
use kitsnap_core::oci::ModelFormat;
use kitsnap_core::pack::{self, PackOptions};

use crate::commands::parse_ref;
use crate::settings::Ctx;

#[derive(Args, Debug)]
pub struct PackArgs {
    /// Context directory: Kitfile paths are relative to it.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Kitfile to use (default: Kitfile, kitfile or .kitfile in DIR).
    #[arg(short = 'f', long = "file")]
    pub kitfile: Option<PathBuf>,
    /// Name for the ModelKit, NAME[:TAG] (tag defaults to latest).
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tag: String,
    /// Layer compression.
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "gzip-fastest", "zstd"])]
    pub compression: String,
    /// Write a CNCF ModelPack (model-spec v1) instead of a KitOps ModelKit.
    #[arg(long)]
    pub use_model_pack: bool,
}

pub fn run(a: PackArgs, ctx: &Ctx) -> Result<()> {
    let store = ctx.open_store()?;
    let reference = parse_ref(&a.tag)?;
    if reference.digest.is_some() {
        bail!("--tag takes NAME[:TAG], not a digest");
    }
    let opts = PackOptions {
        context: a.dir.clone(),
        kitfile: a.kitfile,
        reference: reference.clone(),
        compression: a.compression.parse()?,
        format: if a.use_model_pack {
            ModelFormat::ModelPack
        } else {
            ModelFormat::Kit
        },
        progress: ctx.progress,
    };
    let res = pack::pack(&store, &opts).with_context(|| format!("packing {}", a.dir.display()))?;
    for w in &res.warnings {
        eprintln!("warning: {w}");
    }
    for (kind, path, d) in &res.layers {
        eprintln!(
            "  {:<9} {:<40} {:>10}  {}",
            kind.user_str(),
            path,
            human_bytes(d.size),
            d.digest.short()
        );
    }
    let tag = reference.tag_or_default().unwrap_or("latest");
    eprintln!(
        "Packed {}:{tag} ({} layers, {} already stored)",
        reference.name(),
        res.layers.len(),
        res.reused
    );
    writeln!(crate::output::stdout(), "{}", res.manifest.digest)?;
    Ok(())
}
