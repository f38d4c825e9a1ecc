//! `kitsnap serve`: the node daemon.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use kitsnap_node::daemon;

use crate::settings::{Ctx, default_hosts_dir};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Configuration file (TOML): the global `--config`, which is kit's config
    /// directory for the other verbs.
    #[arg(skip)]
    pub config: Option<PathBuf>,
    /// State directory (metadata and snapshot contents).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Unix socket to serve on.
    #[arg(long, value_name = "SOCKET")]
    pub address: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace, or a tracing filter (KITSNAP_LOG
    /// overrides): the global `--log-level` (or `-v`).
    #[arg(skip)]
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
    /// Serve Prometheus metrics on http://ADDR/metrics (IP:PORT, e.g. 127.0.0.1:9450)
    /// [default: not served]
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Pull every layer whole before containerd may use it, even when the ModelKit has a
    /// lazy index (config: `lazy = false`). By default a layer with one (`kitsnap push`
    /// publishes it) is mounted at once through FUSE and filled as containers read it,
    /// each 4 MiB chunk verified before it is served; its reads need this daemon running.
    #[arg(long)]
    pub no_lazy: bool,
    /// Log lines as `text` or `json` (one object per line) [default: text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<daemon::LogFormat>,
    /// Check the configuration (file and flags), print the settings in effect, and exit:
    /// 0 when serve would start with them.
    #[arg(long)]
    pub check_config: bool,
}

pub fn run(a: ServeArgs, _ctx: &Ctx) -> Result<()> {
    let check = a.check_config;
    let path = a.config_path();
    let cfg = a.load_config()?;
    let s = a.resolve(cfg, &default_hosts_dir());
    if check {
        return check_config(&path, &s);
    }
    daemon::log_filter(&s.log_level).map_err(anyhow::Error::msg)?;
    daemon::tune_allocator();
    daemon::init_logging(&s.log_level, s.log_format);
    let d = &s.daemon;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = env!("KITSNAP_COMMIT"),
        config = %path.display(),
        root = %d.root.display(),
        socket = %d.address.display(),
        containerd = %d.containerd_address.display(),
        mirror = %d.mirror_addr.map_or("off".to_string(), |a| a.to_string()),
        metrics = %d.metrics_addr.map_or("off".to_string(), |a| a.to_string()),
        docker_plugin = %d.docker_plugin.as_ref().map_or("off".to_string(), |p| p.display().to_string()),
        hosts_dir = %d.registry.hosts_dir.as_ref().map_or("none".to_string(), |p| p.display().to_string()),
        plain_http = ?d.plain_http,
        lazy = d.lazy,
        "kitsnap serve starting"
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(daemon::serve(s.daemon))?;
    Ok(())
}

/// `serve --check-config`: every problem serve would stop at before serving, found without
/// binding anything, then the settings in effect.
fn check_config(path: &std::path::Path, s: &crate::settings::Serve) -> Result<()> {
    let d = &s.daemon;
    let mut problems = Vec::new();
    if let Err(e) = daemon::log_filter(&s.log_level) {
        problems.push(e);
    }
    for (what, p) in [
        ("root", &d.root),
        ("address", &d.address),
        ("containerd_address", &d.containerd_address),
        ("mount_root", &d.mount_root),
    ] {
        if !p.is_absolute() {
            problems.push(format!("{what} {} is not an absolute path", p.display()));
        }
    }
    if let Some(h) = &d.registry.hosts_dir
        && !h.is_dir()
    {
        problems.push(format!("hosts_dir {} is not a directory", h.display()));
    }
    if let (Some(m), Some(x)) = (d.mirror_addr, d.metrics_addr)
        && m == x
    {
        problems.push(format!(
            "the mirror and the metrics both listen on {m}: set another --metrics-addr"
        ));
    }
    if !std::path::Path::new(&d.containerd_address).exists() {
        // Not fatal: serve waits for containerd.
        eprintln!(
            "note: containerd's socket {} does not exist yet (serve waits for it)",
            d.containerd_address.display()
        );
    }
    let mut out = crate::output::stdout();
    use std::io::Write;
    writeln!(
        out,
        "config file:        {}",
        if path.exists() {
            path.display().to_string()
        } else {
            format!("{} (absent: defaults)", path.display())
        }
    )?;
    writeln!(out, "root:               {}", d.root.display())?;
    writeln!(out, "socket:             {}", d.address.display())?;
    writeln!(
        out,
        "containerd:         {}",
        d.containerd_address.display()
    )?;
    writeln!(out, "mount root:         {}", d.mount_root.display())?;
    writeln!(
        out,
        "mirror:             {}",
        d.mirror_addr.map_or("off".into(), |a| a.to_string())
    )?;
    writeln!(
        out,
        "metrics:            {}",
        d.metrics_addr
            .map_or("off".into(), |a| format!("http://{a}/metrics"))
    )?;
    writeln!(
        out,
        "docker plugin:      {}",
        d.docker_plugin
            .as_ref()
            .map_or("off".into(), |p| p.display().to_string())
    )?;
    writeln!(
        out,
        "hosts dir:          {}",
        d.registry
            .hosts_dir
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    )?;
    writeln!(
        out,
        "plain-HTTP hosts:   {}",
        if d.plain_http.is_empty() {
            "none".into()
        } else {
            d.plain_http.join(", ")
        }
    )?;
    writeln!(
        out,
        "lazy layers:        {}",
        if d.lazy { "on (FUSE)" } else { "off" }
    )?;
    writeln!(
        out,
        "log:                {} ({:?})",
        s.log_level, s.log_format
    )?;
    writeln!(
        out,
        "pull limits:        {} layers, {}x expansion, {} per kit, {} layer(s) at once",
        d.limits.max_layers,
        d.limits.max_expansion,
        kitsnap_core::human_bytes(d.limits.max_kit_bytes),
        d.limits.concurrency
    )?;
    out.flush()?;
    if problems.is_empty() {
        eprintln!("configuration OK");
        Ok(())
    } else {
        anyhow::bail!(
            "the configuration has {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        )
    }
}
