//! `kitsnap containerd install|remove`: registers kitsnap's snapshotter with containerd as
//! a drop-in (`conf.d/kitsnap.toml` + the main config's `imports`), and takes it out.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use kitsnap_node::registration::{self, Change, Registration};

use crate::settings::Ctx;

#[derive(Args, Debug)]
pub struct ContainerdArgs {
    #[command(subcommand)]
    pub action: ContainerdAction,
}

#[derive(Subcommand, Debug)]
pub enum ContainerdAction {
    /// Write CONF_DIR/kitsnap.toml ([proxy_plugins.kitsnap]) and add CONF_DIR/*.toml to the
    /// main config's `imports` (comments and layout kept; the first change keeps a copy as
    /// config.toml.before-kitsnap). Running it again changes nothing. Restart containerd
    /// afterwards.
    Install(InstallArgs),
    /// Delete the drop-in (the `imports` line stays; it is harmless). Restart containerd
    /// afterwards.
    Remove(DirArgs),
}

#[derive(Args, Debug)]
pub struct DirArgs {
    /// Directory of containerd config drop-ins.
    #[arg(long, value_name = "DIR", default_value = registration::DEFAULT_CONF_DIR)]
    pub conf_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// containerd's main configuration file (created if absent).
    #[arg(long, value_name = "FILE", default_value = registration::DEFAULT_CONFIG)]
    pub config: PathBuf,
    #[command(flatten)]
    pub dir: DirArgs,
    /// kitsnap serve's socket.
    #[arg(long, value_name = "SOCKET", default_value = kitsnap_node::daemon::DEFAULT_ADDRESS)]
    pub address: PathBuf,
    /// containerd 2.x: let the transfer service (ctr/nerdctl pull) unpack this platform
    /// onto kitsnap, e.g. linux/amd64.
    #[arg(long, value_name = "PLATFORM")]
    pub unpack_platform: Option<String>,
}

fn report(out: &mut impl Write, changes: &[Change]) -> Result<()> {
    for c in changes {
        match c {
            Change::Wrote(p) => writeln!(out, "wrote {}", p.display())?,
            Change::Unchanged(p) => writeln!(out, "{} is already as it should be", p.display())?,
            Change::AddedImport { config, glob } => {
                writeln!(out, "{}: imports {glob}", config.display())?
            }
            Change::Removed(p) => writeln!(out, "removed {}", p.display())?,
        }
    }
    Ok(())
}

pub fn run(a: ContainerdArgs, _ctx: &Ctx) -> Result<()> {
    let mut out = crate::output::stdout();
    let changes = match &a.action {
        ContainerdAction::Install(i) => registration::install(&Registration {
            config: &i.config,
            conf_dir: &i.dir.conf_dir,
            address: &i.address,
            unpack_platform: i.unpack_platform.as_deref(),
        })
        .context("registering kitsnap with containerd")?,
        ContainerdAction::Remove(d) => {
            registration::remove(&d.conf_dir).context("removing kitsnap's containerd drop-in")?
        }
    };
    report(&mut out, &changes)?;
    if changes.iter().any(|c| !matches!(c, Change::Unchanged(_))) {
        writeln!(
            out,
            "restart containerd to apply: systemctl restart containerd"
        )?;
    }
    Ok(())
}
