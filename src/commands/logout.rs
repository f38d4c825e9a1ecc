//! `kitsnap logout`: forgets a registry's credentials.

use anyhow::Result;
use clap::Args;
use kitsnap_registry::credentials::{self, DockerConfig};

use crate::settings::Ctx;

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// Registry host, e.g. registry.example.com:5000.
    pub registry: String,
}

pub fn run(a: LogoutArgs, _ctx: &Ctx) -> Result<()> {
    let mut cfg = DockerConfig::load(credentials::default_path())?;
    if cfg.erase(&a.registry)? {
        eprintln!("Removed the credentials for {}", a.registry);
    } else {
        eprintln!("No credentials were saved for {}", a.registry);
    }
    Ok(())
}
