//! `kitsnap serve`: the node daemon.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use kitsnap_node::daemon;

use crate::settings::{Ctx, default_hosts_dir};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory (metadata and snapshot contents).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Unix socket to serve on.
    #[arg(long, value_name = "SOCKET")]
    pub address: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (or a tracing filter; KITSNAP_LOG overrides).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// containerd's socket (for ModelKit pulls and views) [default: /run/containerd/containerd.sock]
    #[arg(long, value_name = "SOCKET")]
    pub containerd_address: Option<PathBuf>,
    /// Where ModelKit views are mounted [default: /run/kitsnap/mounts]
    #[arg(long, value_name = "DIR")]
    pub mount_root: Option<PathBuf>,
    /// Docker volume plugin socket [default: /run/docker/plugins/kitsnap.sock]
    #[arg(long, value_name = "SOCKET")]
    pub docker_plugin: Option<PathBuf>,
    /// Do not serve the Docker volume plugin.
    #[arg(long, conflicts_with = "docker_plugin")]
    pub no_docker_plugin: bool,
    /// The node-local registry mirror (OCI distribution, pull only) that containerd's
    /// hosts.toml names (see `kitsnap hosts install`): IP:PORT, or `off` [default: 127.0.0.1:5050]
    #[arg(long, value_name = "ADDR")]
    pub mirror_addr: Option<kitsnap_node::mirror::MirrorAddr>,
}

pub fn run(a: ServeArgs, _ctx: &Ctx) -> Result<()> {
    let cfg = a.load_config()?;
    let s = a.resolve(cfg, &default_hosts_dir());
    daemon::init_logging(&s.log_level);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(daemon::serve(s.daemon))?;
    Ok(())
}
