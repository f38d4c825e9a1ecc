//! `kitsnap serve`: the containerd proxy snapshotter daemon on a unix socket, with
//! systemd readiness (`sd_notify`) and graceful shutdown on SIGTERM/SIGINT.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::node::{self, Node, pb::node_server::NodeServer};
use crate::registry::ClientOptions;
use crate::snapshotter::Snapshotter;
use crate::snapshotter::service::{Service, pb::snapshots_server::SnapshotsServer};

pub const DEFAULT_CONFIG: &str = "/etc/kitsnap/config.toml";
pub const DEFAULT_ROOT: &str = "/var/lib/kitsnap";
pub const DEFAULT_ADDRESS: &str = "/run/kitsnap/kitsnap.sock";

/// `/etc/kitsnap/config.toml`; command-line flags override it.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub root: Option<PathBuf>,
    pub address: Option<PathBuf>,
    pub log_level: Option<String>,
    /// Socket group (numeric gid) for mode-0660 access; default: the daemon's group.
    pub socket_gid: Option<u32>,
    /// containerd's socket, for ModelKit pulls and views.
    pub containerd_address: Option<PathBuf>,
    /// Where ModelKit views are mounted on the host.
    pub mount_root: Option<PathBuf>,
    /// Docker volume plugin socket; "" turns the plugin off.
    pub docker_plugin: Option<PathBuf>,
    /// containerd-style hosts directory (mirrors, CAs) for pulls the daemon makes.
    pub hosts_dir: Option<PathBuf>,
    /// Registries reached over plain HTTP (host[:port]), for pulls the daemon makes.
    #[serde(default)]
    pub plain_http: Vec<String>,
}

/// Everything `serve` needs, resolved from flags, config and defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    pub root: PathBuf,
    pub address: PathBuf,
    pub socket_gid: Option<u32>,
    pub containerd_address: PathBuf,
    pub mount_root: PathBuf,
    pub docker_plugin: Option<PathBuf>,
    pub registry: ClientOptions,
    pub plain_http: Vec<String>,
}

impl Config {
    /// Reads `path`; a missing default config is fine, a missing explicit one is not.
    pub fn load(path: &Path, explicit: bool) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(t) => toml::from_str(&t).with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Config::default())
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Tells systemd (Type=notify) that the socket is ready; a no-op outside systemd.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let res = if let Some(abs) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

pub fn init_logging(level: &str) {
    // The level applies to kitsnap; libraries (h2, tonic) stay at warn unless KITSNAP_LOG says.
    let filter = tracing_subscriber::EnvFilter::try_from_env("KITSNAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,kitsnap={level}")));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn serve(settings: Settings) -> Result<()> {
    let Settings {
        root,
        address,
        socket_gid,
        ..
    } = settings.clone();
    let snap = Arc::new(
        tokio::task::spawn_blocking({
            let root = root.clone();
            move || Snapshotter::open(root)
        })
        .await?
        .with_context(|| format!("opening the snapshotter at {}", root.display()))?,
    );
    tracing::info!(root = %root.display(), "metadata opened");
    let node = Arc::new(
        Node::open(
            snap.clone(),
            settings.containerd_address.clone(),
            settings.mount_root.clone(),
            settings.registry.clone(),
        )
        .context("opening the node state")?,
    );
    let plugin = match &settings.docker_plugin {
        Some(sock) => Some(
            crate::dockerplugin::start(node.clone(), sock, settings.plain_http.clone())
                .with_context(|| {
                    format!("starting the Docker volume plugin at {}", sock.display())
                })?,
        ),
        None => None,
    };
    let (listener, activated) = match activated_listener()? {
        Some(l) => (l, true),
        None => (bind(&address, socket_gid)?, false),
    };
    tracing::info!(socket = %address.display(), activated, "serving containerd.services.snapshots.v1 and kitsnap.v1.Node");
    sd_notify("READY=1\nSTATUS=serving snapshots.v1");

    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("shutting down");
        sd_notify("STOPPING=1");
    };
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(Service { snap }))
        .add_service(NodeServer::new(node::service::Service { node }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await
        .context("gRPC server")?;
    // A socket systemd holds stays for the next start.
    if !activated {
        let _ = std::fs::remove_file(&address);
    }
    if let (Some(p), Some(sock)) = (plugin, &settings.docker_plugin) {
        p.abort();
        let _ = std::fs::remove_file(sock);
    }
    Ok(())
}

fn bind(address: &Path, socket_gid: Option<u32>) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a previous (killed) daemon would make bind fail.
    match std::fs::remove_file(address) {
        Ok(()) => tracing::info!(socket = %address.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", address.display())),
    }
    let listener = tokio::net::UnixListener::bind(address)
        .with_context(|| format!("binding {}", address.display()))?;
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = socket_gid {
        std::os::unix::fs::chown(address, None, Some(gid))?;
    }
    Ok(listener)
}

/// The socket passed by systemd socket activation (`LISTEN_FDS`, fd 3), if any.
fn activated_listener() -> Result<Option<tokio::net::UnixListener>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let fds = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !pid_ok || fds < 1 {
        return Ok(None);
    }
    use std::os::fd::FromRawFd;
    // SAFETY: systemd passes the listening socket as fd 3 and nothing else owns it.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(3) };
    std_listener.set_nonblocking(true)?;
    Ok(Some(
        tokio::net::UnixListener::from_std(std_listener).context("socket from systemd")?,
    ))
}
