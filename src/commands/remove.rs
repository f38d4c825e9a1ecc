//! `kitsnap remove`: untags ModelKits and collects the blobs nothing references.

use anyhow::{Context, Result, bail};
use clap::Args;
use kitsnap_core::human_bytes;

use crate::commands::parse_ref;
use crate::settings::Ctx;

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// ModelKits to remove.
    pub references: Vec<String>,
    /// Remove every ModelKit in the store.
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Also remove untagged ModelKits.
    #[arg(long)]
    pub prune: bool,
}

pub fn run(a: RemoveArgs, ctx: &Ctx) -> Result<()> {
    let store = ctx.open_store()?;
    if a.references.is_empty() && !a.all && !a.prune {
        bail!("name the ModelKits to remove, or use --all or --prune");
    }
    let mut removed = 0;
    if a.all {
        removed += store.untag_all()?;
    } else {
        for r in &a.references {
            removed += store
                .untag(&parse_ref(r)?)
                .with_context(|| format!("removing {r}"))?;
        }
        if a.prune {
            removed += store.prune_untagged()?;
        }
    }
    let st = store.gc()?;
    let temps = if st.temp_files_removed > 0 {
        format!(
            " and {} unfinished temporary file(s)",
            st.temp_files_removed
        )
    } else {
        String::new()
    };
    eprintln!(
        "Removed {removed} entr{}; freed {} in {} blob(s){temps}",
        if removed == 1 { "y" } else { "ies" },
        human_bytes(st.bytes_freed),
        st.blobs_removed
    );
    Ok(())
}
