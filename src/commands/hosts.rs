//! `kitsnap hosts`: names the node mirror in containerd's hosts.toml, and takes it out again.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use kitsnap_registry::hosts::{self, Change};

use crate::settings::Ctx;

#[derive(Args, Debug)]
pub struct HostsArgs {
    #[command(subcommand)]
    pub action: HostsAction,
}

#[derive(Subcommand, Debug)]
pub enum HostsAction {
    /// Pull REGISTRY's images and ModelKits through the kitsnap node mirror: writes
    /// <hosts-dir>/<REGISTRY>/hosts.toml with the mirror first (an existing file is kept
    /// aside and restored by `remove`).
    Install(InstallArgs),
    /// Undo `install`: restore the hosts.toml it changed, delete the one it wrote.
    Remove(RemoveArgs),
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Registries (host[:port], e.g. ghcr.io, registry.example.com:5000, docker.io).
    #[arg(required = true)]
    pub registries: Vec<String>,
    #[command(flatten)]
    pub dir: HostsDir,
    /// The mirror's URL (kitsnap serve --mirror-addr).
    #[arg(long, default_value = "http://127.0.0.1:5050", value_name = "URL")]
    pub mirror: String,
    /// The registries speak plain HTTP (in a new hosts.toml's `server`).
    #[arg(long)]
    pub plain_http: bool,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    #[arg(required = true)]
    pub registries: Vec<String>,
    #[command(flatten)]
    pub dir: HostsDir,
}

#[derive(Args, Debug)]
pub struct HostsDir {
    /// containerd's hosts directory (its `config_path`; ctr's --hosts-dir).
    #[arg(long, value_name = "DIR", default_value = hosts::DEFAULT_HOSTS_DIR)]
    pub hosts_dir: PathBuf,
}

pub fn run(a: HostsArgs, _ctx: &Ctx) -> Result<()> {
    let mut out = crate::output::stdout();
    match a.action {
        HostsAction::Install(i) => {
            if !i.mirror.starts_with("http://") && !i.mirror.starts_with("https://") {
                anyhow::bail!(
                    "--mirror {:?} must be a URL such as http://127.0.0.1:5050",
                    i.mirror
                );
            }
            for r in &i.registries {
                let c = hosts::install(&i.dir.hosts_dir, r, &i.mirror, i.plain_http)
                    .with_context(|| format!("naming the mirror for {r}"))?;
                match c {
                    Change::Unchanged(f) => {
                        writeln!(out, "{r}: {} already names {}", f.display(), i.mirror)?
                    }
                    Change::Written(f) => writeln!(out, "{r}: {} -> {}", i.mirror, f.display())?,
                    _ => {}
                }
            }
        }
        HostsAction::Remove(rm) => {
            for r in &rm.registries {
                let c = hosts::remove(&rm.dir.hosts_dir, r)
                    .with_context(|| format!("removing the mirror for {r}"))?;
                match c {
                    Change::Restored(f) => writeln!(out, "{r}: restored {}", f.display())?,
                    Change::Removed(f) => writeln!(out, "{r}: removed {}", f.display())?,
                    Change::Unchanged(f) => writeln!(
                        out,
                        "{r}: {} was not written by kitsnap; left as it is",
                        f.display()
                    )?,
                    Change::Written(_) => {}
                }
            }
        }
    }
    Ok(())
}
