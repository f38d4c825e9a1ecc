//! `kitsnap front`: installs or removes the `nerdctl` front (see `front.rs`), and the
//! hidden `release` step the front leaves behind to drop its mounts' holders.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::front::NAME;
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
pub struct FrontArgs {
    #[command(subcommand)]
    pub command: FrontCommand,
}

#[derive(Subcommand, Debug)]
pub enum FrontCommand {
    /// Put a `nerdctl` symlink to kitsnap in DIR (which must come before the real nerdctl
    /// in PATH), so that `nerdctl run --mount type=modelkit,...` works.
    Install {
        #[arg(long, default_value = "/usr/local/sbin")]
        dir: PathBuf,
    },
    /// Remove the symlink again (nerdctl is plain nerdctl).
    Remove {
        #[arg(long, default_value = "/usr/local/sbin")]
        dir: PathBuf,
    },
    /// Releases mount holders once process PID exits (run by the front itself).
    #[command(hide = true)]
    Release {
        #[arg(long)]
        pid: i32,
        #[arg(long)]
        address: PathBuf,
        /// NAME=HOLDER
        #[arg(long = "holder")]
        holders: Vec<String>,
    },
}

pub fn run(a: FrontArgs, _ctx: &Ctx) -> Result<()> {
    match a.command {
        FrontCommand::Install { dir } => install(&dir),
        FrontCommand::Remove { dir } => remove(&dir),
        FrontCommand::Release {
            pid,
            address,
            holders,
        } => release(pid, &address, &holders),
    }
}

/// Whether `link` is a symlink to a program named kitsnap (this one or another build).
fn is_front(link: &Path) -> bool {
    std::fs::read_link(link).is_ok_and(|t| t.file_name().is_some_and(|n| n == "kitsnap"))
}

fn install(dir: &Path) -> Result<()> {
    let me = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("finding this program")?;
    let link = dir.join(NAME);
    if is_front(&link) {
        std::fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
    } else if link.symlink_metadata().is_ok() {
        bail!(
            "{} exists and is not kitsnap's front: choose another --dir that comes earlier in PATH than the real nerdctl",
            link.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::os::unix::fs::symlink(&me, &link)
        .with_context(|| format!("linking {} to {}", link.display(), me.display()))?;
    eprintln!(
        "Installed the nerdctl front: {} -> {}",
        link.display(),
        me.display()
    );
    // Said, not enforced: PATH differs between shells, sudo and services.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let front_at = dirs.iter().position(|d| d == dir);
    let real_at = dirs.iter().position(|d| {
        let c = d.join(NAME);
        d != dir && c.is_file() && !is_front(&c)
    });
    match (front_at, real_at) {
        (None, _) => eprintln!(
            "warning: {} is not in this PATH: `nerdctl` still runs the real one here",
            dir.display()
        ),
        (Some(f), Some(r)) if r < f => eprintln!(
            "warning: {} comes after the real nerdctl ({}) in this PATH: put it first",
            dir.display(),
            dirs[r].display()
        ),
        _ => {}
    }
    Ok(())
}

fn remove(dir: &Path) -> Result<()> {
    let link = dir.join(NAME);
    if !is_front(&link) {
        if link.symlink_metadata().is_ok() {
            bail!("{} is not kitsnap's front; left alone", link.display());
        }
        eprintln!("No nerdctl front in {}", dir.display());
        return Ok(());
    }
    std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
    eprintln!("Removed the nerdctl front {}", link.display());
    Ok(())
}

fn release(pid: i32, address: &Path, holders: &[String]) -> Result<()> {
    let pid = rustix::process::Pid::from_raw(pid).context("--pid must be positive")?;
    // Polled, not waited for: the process is not our child.
    while rustix::process::test_kill_process(pid).is_ok() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let held: Vec<(String, String)> = holders
        .iter()
        .filter_map(|h| h.split_once('='))
        .map(|(n, h)| (n.to_string(), h.to_string()))
        .collect();
    crate::front::release(&runtime()?, address, &held);
    Ok(())
}
