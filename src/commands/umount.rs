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
    /// The holder to release, as `kitsnap mount` printed it (default: one CLI holder).
    #[arg(long, value_name = "ID")]
    pub holder: Option<String>,
    /// Unmount even if other holders (other `kitsnap mount`s, Docker containers) remain.
    /// Containers that bind-mounted the path keep the files until they stop.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

pub fn run(a: UmountArgs, _ctx: &Ctx) -> Result<()> {
    let name = &a.name;
    let res = runtime()?
        .block_on(client::umount(
            &a.daemon.address,
            name,
            a.holder.as_deref().unwrap_or(""),
            a.force,
        ))
        .with_context(|| format!("unmounting {name}"))?;
    if res.unmounted && !res.still_used_by.is_empty() {
        eprintln!(
            "Unmounted {name} from the host; its files stay for the {} container(s) still using them (pids {:?}) and go when they stop",
            res.still_used_by.len(),
            res.still_used_by
        );
    } else if res.unmounted {
        eprintln!("Unmounted {name}");
    } else {
        eprintln!(
            "{name} stays mounted: {} other holder(s) (use --force)",
            res.holders
        );
    }
    Ok(())
}
