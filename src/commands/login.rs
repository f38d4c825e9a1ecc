//! `kitsnap login`: checks credentials against a registry and saves them.

use anyhow::{Context, Result, bail};
use clap::Args;
use kitsnap_registry::credentials::{self, Credentials, DockerConfig};

use crate::cli::RegistryArgs;
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Registry host, e.g. registry.example.com:5000.
    pub registry: String,
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (prefer --password-stdin: arguments show in `ps`).
    #[arg(short = 'p', long)]
    pub password: Option<String>,
    /// Read the password from standard input (needs --username).
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    #[command(flatten)]
    pub registry_args: RegistryArgs,
}

fn prompt(label: &str) -> Result<String> {
    eprint!("{label}");
    let mut s = String::new();
    std::io::stdin().read_line(&mut s)?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

pub fn run(a: LoginArgs, _ctx: &Ctx) -> Result<()> {
    let username = match a.username {
        Some(u) => u,
        None => prompt("Username: ")?,
    };
    let password = if a.password_stdin {
        let mut p = String::new();
        std::io::stdin().read_line(&mut p)?;
        p.trim_end_matches(['\n', '\r']).to_string()
    } else if let Some(p) = a.password {
        p
    } else {
        prompt("Password: ")?
    };
    if password.is_empty() {
        bail!("empty password");
    }
    let creds = Credentials {
        username,
        secret: password,
    };
    let reg = a
        .registry_args
        .registry(&a.registry)?
        .with_credentials(Some(creds.clone()));
    match runtime()?.block_on(reg.ping()) {
        Ok(()) => {}
        // Here "run kitsnap login" would be no help: these are the credentials.
        Err(kitsnap_registry::Error::Unauthorized(host)) => bail!(
            "logging in to {}: {host} refused the credentials of {:?} (wrong username or password?)",
            a.registry,
            creds.username
        ),
        Err(e) => return Err(e).with_context(|| format!("logging in to {}", a.registry)),
    }
    let mut cfg = DockerConfig::load(credentials::default_path())?;
    cfg.store(&a.registry, &creds)?;
    eprintln!(
        "Login succeeded; credentials saved in {}",
        cfg.path.display()
    );
    Ok(())
}
