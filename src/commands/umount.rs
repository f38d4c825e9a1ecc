//! `kitsnap umount`: drops a `kitsnap mount`.

use anyhow::{Context, Result};
use clap::Args;

use crate::cli::DaemonArgs;
use crate::client;
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
pub struct UmountArgs {
    /// Mount name or path.
    pub name: String,
    /// Unmount even if other holders (containers of the Docker plugin) remain.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

pub fn run(a: UmountArgs, _ctx: &Ctx) -> Result<()> {
    let name = &a.name;
    let res = runtime()?
        .block_on(client::umount(&a.daemon.address, name, a.force))
        .with_context(|| format!("unmounting {name}"))?;
    if res.unmounted {
        eprintln!("Unmounted {name}");
    } else {
        eprintln!(
            "{name} stays mounted: {} other holder(s) (use --force)",
            res.holders
        );
    }
    Ok(())
}
