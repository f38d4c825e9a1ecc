//! `kitsnap serve`: the containerd proxy snapshotter daemon on a unix socket, with
//! systemd readiness (`sd_notify`) and graceful shutdown on SIGTERM/SIGINT.

pub mod config;
pub mod systemd;

use std::path::PathBuf;
use std::sync::Arc;

use kitsnap_registry::client::ClientOptions;
use sd_notify::NotifyState;

use crate::api::node::node_server::NodeServer;
use crate::api::snapshots::snapshots_server::SnapshotsServer;
use crate::error::{Error, Result};
use crate::node::{self, Node};
use crate::snapshotter::Snapshotter;
use crate::snapshotter::service::Service;

pub use config::{Config, DEFAULT_CONFIG};

pub const DEFAULT_ROOT: &str = "/var/lib/kitsnap";
pub const DEFAULT_ADDRESS: &str = "/run/kitsnap/kitsnap.sock";
/// How long a stopping daemon waits for cancelled pulls to clean up.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

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
    pub limits: crate::node::pull::PullLimits,
    /// The registry mirror's listen address (None: no mirror).
    pub mirror_addr: Option<std::net::SocketAddr>,
    /// Where `/metrics` is served (None: not served).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve layers with a lazy index through FUSE while they arrive.
    pub lazy: bool,
}

/// Log lines as text (the default; coloured on a terminal) or one JSON object per line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            o => Err(format!("unknown log format {o:?}: use text or json")),
        }
    }
}

/// Fixes glibc's allocator thresholds for the daemon's lifetime. Each lazy layer's FUSE
/// session allocates a 16 MiB request buffer of which it touches a few KiB: above the mmap
/// threshold it stays fresh zero pages; glibc's dynamic threshold (raised by every large
/// buffer freed) would put it on the heap, where calloc writes all of it. The trim
/// threshold is kept as high as the dynamic scheme set it, so that the 1 MiB download
/// pieces freed on other threads are not given back and faulted in again.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// The tracing filter for `level`: the level applies to kitsnap; libraries (h2, tonic)
/// stay at warn unless KITSNAP_LOG says otherwise.
pub fn log_filter(level: &str) -> std::result::Result<tracing_subscriber::EnvFilter, String> {
    if let Ok(f) = tracing_subscriber::EnvFilter::try_from_env("KITSNAP_LOG") {
        return Ok(f);
    }
    let spec = if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        match level {
            "error" | "warn" | "info" | "debug" | "trace" | "off" => {
                format!("warn,kitsnap={level}")
            }
            o => {
                return Err(format!(
                    "unknown log level {o:?}: use error, warn, info, debug, trace or a tracing filter"
                ));
            }
        }
    };
    tracing_subscriber::EnvFilter::try_new(&spec).map_err(|e| format!("log level {level:?}: {e}"))
}

pub fn init_logging(level: &str, format: LogFormat) {
    let filter = log_filter(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kitsnap=info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
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
        .await
        .map_err(|e| Error::Internal(format!("opening the snapshotter: {e}")))??,
    );
    tracing::info!(root = %root.display(), "metadata opened");
    let node = Arc::new(Node::open(
        snap.clone(),
        settings.containerd_address.clone(),
        settings.mount_root.clone(),
        settings.registry.clone(),
        settings.limits,
        settings.lazy,
    )?);
    // Every 30 s: views kept for containers after their last holder left go with their
    // last user, and pull leases nobody holds (containerd was down when their pull
    // failed) are deleted.
    let sweeper = tokio::spawn({
        let node = node.clone();
        async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                node.sweep().await;
                if let Err(e) = node.reap_stale_leases().await {
                    tracing::debug!(error = %crate::error::chain(&e), "lease check");
                }
            }
        }
    });
    // Pulls the previous process of this daemon left (kill -9, crash): drop their leases
    // once containerd answers (it may start after kitsnap).
    let reaper = tokio::spawn({
        let node = node.clone();
        async move {
            let mut wait = std::time::Duration::from_millis(500);
            loop {
                match node.reap_stale_leases().await {
                    Ok(n) => {
                        tracing::info!(leases = n, "checked for interrupted pulls");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %crate::error::chain(&e), "containerd not reachable yet")
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
        }
    });
    // A socket systemd holds (activation) stays for the next start: no BoundSocket.
    let (listener, bound) = match systemd::activated_listener()? {
        Some(l) => (l, None),
        None => {
            let (l, b) = systemd::bind(&address, socket_gid)?;
            (l, Some(b))
        }
    };
    let activated = bound.is_none();
    // Layers of the views the mirror serves, filled by kitsnap when containerd prepares them.
    let filler = Arc::new(crate::node::fill::Filler::new(
        snap.clone(),
        settings.registry.clone(),
        settings.plain_http.clone(),
        settings.limits,
        settings.lazy,
    ));
    {
        // Before containerd is served: the lazy layers of the last run are mounted again.
        let (f, rt) = (filler.clone(), tokio::runtime::Handle::current());
        let n = tokio::task::spawn_blocking(move || f.resume_lazy(&rt))
            .await
            .unwrap_or(0);
        if n > 0 {
            tracing::info!(layers = n, "lazy layers mounted again");
        }
    }
    let lazy_snap = snap.clone();
    let provider: Option<Arc<dyn crate::snapshotter::service::Provider>> =
        settings.mirror_addr.map(|_| filler.clone() as _);
    // The registry mirror: bound before readiness, so containerd's first pull finds it.
    let stop_mirror = tokio_util::sync::CancellationToken::new();
    let mirror = match settings.mirror_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::invalid(format!(
                    "registry mirror: cannot listen on {addr}: {e} (set another --mirror-addr, or `off`)"
                ))
            })?;
            let m = Arc::new(crate::mirror::Mirror::new(
                addr,
                &root,
                settings.registry.clone(),
                settings.plain_http.clone(),
                Some(filler.clone()),
            ));
            tracing::info!(%addr, "serving the registry mirror (OCI distribution, pull only)");
            Some(tokio::spawn(m.serve(listener, stop_mirror.clone())))
        }
        None => None,
    };
    let plugin = match &settings.docker_plugin {
        Some(sock) => Some(crate::dockerplugin::start(
            node.clone(),
            sock,
            settings.plain_http.clone(),
        )?),
        None => None,
    };
    let stop_metrics = tokio_util::sync::CancellationToken::new();
    let metrics_task = match settings.metrics_addr {
        Some(addr) => {
            let listener = crate::metrics::bind(addr).await?;
            let (snap, node) = (snap.clone(), node.clone());
            let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                let m = crate::metrics::metrics();
                if let Ok(held) = snap.list(&[]) {
                    let n = held
                        .iter()
                        .filter(|(_, r)| r.kind == crate::snapshotter::Kind::Committed)
                        .count();
                    m.layers_held.set(n as i64);
                }
                if let Ok(mounts) = node.mounts() {
                    m.mounts.set(mounts.len() as i64);
                }
            });
            tracing::info!(%addr, "serving Prometheus metrics on /metrics");
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                refresh,
                stop_metrics.clone(),
            )))
        }
        None => None,
    };
    tracing::info!(socket = %address.display(), activated, "serving containerd.services.snapshots.v1 and kitsnap.v1.Node");
    systemd::notify(&[
        NotifyState::Ready,
        NotifyState::Status("serving snapshots.v1"),
    ]);

    let drain_node = node.clone();
    let shutdown = async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("shutting down: cancelling pulls, then closing the socket");
        systemd::notify(&[NotifyState::Stopping]);
        // The socket stays open meanwhile: a cancelled pull's cleanup is containerd
        // calling back into the snapshotter.
        drain_node.drain(SHUTDOWN_GRACE).await;
    };
    tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(crate::metrics::timed))
        .add_service(SnapshotsServer::new(Service { snap, provider }))
        .add_service(NodeServer::new(node::service::Service { node }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await
        .map_err(Error::Serve)?;
    reaper.abort();
    sweeper.abort();
    // The FUSE mounts end with this process anyway; unmounted, they leave no dead mounts.
    let _ = tokio::task::spawn_blocking(move || lazy_snap.lazy().release_all()).await;
    stop_mirror.cancel();
    stop_metrics.cancel();
    if let Some(m) = mirror {
        let _ = m.await;
    }
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    if let Some(b) = bound {
        b.remove();
    }
    if let Some((task, sock)) = plugin {
        task.abort();
        sock.remove();
    }
    Ok(())
}
