//! Flags, environment and config files resolved into the libraries' settings, in one
//! place (as ripgrep turns its low-level args into high-level settings): the store root,
//! registry client options for this process and for pulls `kitsnap serve` makes on our
//! behalf, and the daemon's settings.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kitsnap_core::store::Store;
use kitsnap_node::api::node as pb;
use kitsnap_node::daemon::{self, Config};
use kitsnap_registry::client::{ClientCert, ClientOptions, Registry};
use kitsnap_registry::hosts::DEFAULT_HOSTS_DIR;
use kitsnap_registry::transfer::TransferOptions;

use crate::cli::{Cli, Command, ProgressMode, RegistryArgs};
use crate::commands::serve::ServeArgs;

/// Where KitOps' `kit` keeps its store.
pub fn kit_store_root() -> PathBuf {
    kitsnap_core::store::kit_home().join("storage")
}

/// What every verb may need: where the store is, whether to draw progress.
pub struct Ctx {
    pub store_root: PathBuf,
    pub progress: bool,
}

impl Ctx {
    pub fn new(store: Option<PathBuf>, progress: bool) -> Ctx {
        Ctx {
            store_root: store.unwrap_or_else(Store::default_root),
            progress,
        }
    }

    /// The global flags: the store is --store, kit's store (--kit-store), or kit's
    /// layout under --config DIR (DIR/storage; `serve` reads --config as its file);
    /// bars are off with --no-progress, --progress none or -vvv (as kit's).
    pub fn from_cli(cli: &Cli) -> Ctx {
        let serve = matches!(cli.command, Command::Serve(_));
        let store = match (&cli.config, cli.kit_store) {
            (_, true) => Some(kit_store_root()),
            (Some(dir), false) if !serve => Some(dir.join("storage")),
            _ => cli.store.clone(),
        };
        let progress =
            !(cli.no_progress || cli.progress == Some(ProgressMode::None) || cli.verbose >= 3);
        Ctx::new(store, progress)
    }

    pub fn open_store(&self) -> Result<Store> {
        Store::open(&self.store_root)
            .with_context(|| format!("opening store {}", self.store_root.display()))
    }

    /// The local store, for the daemon to take a ModelKit from, when it exists.
    pub fn existing_store(&self) -> Option<PathBuf> {
        self.store_root.is_dir().then(|| self.store_root.clone())
    }
}

/// kit's log levels.
const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// The diagnostics level the global flags ask for, if any: `-v` debug, `-vv` trace (over
/// --log-level, as kit applies them), else --log-level, which must be one of kit's
/// levels unless `serve` reads it (the daemon also takes tracing filters).
pub fn log_level(cli: &Cli) -> Result<Option<String>> {
    let level = match cli.verbose {
        0 => cli.log_level.clone(),
        1 => Some("debug".to_string()),
        _ => Some("trace".to_string()),
    };
    if let Some(l) = &level
        && !matches!(cli.command, Command::Serve(_))
        && !LEVELS.contains(&l.as_str())
    {
        anyhow::bail!(
            "invalid log level '{l}'. Options are 'trace', 'debug', 'info', 'warn', 'error'"
        );
    }
    Ok(level)
}

/// A small runtime for the CLI's network verbs (two workers: transfers are I/O-bound).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

impl RegistryArgs {
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            plain_http: self.plain_http,
            tls_verify: self.tls_verify,
            ca_files: self.ca_files.clone(),
            hosts_dir: self.hosts_dir.clone(),
            docker_config: None,
            retries: self.retries,
            chunk_size: self.chunk_size_mib.saturating_mul(1 << 20),
            stall_window: std::time::Duration::from_secs(self.stall_timeout),
            proxy: self.proxy.clone(),
            client_cert: match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => Some(ClientCert {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            ..Default::default()
        }
    }

    pub fn registry(&self, host: &str) -> Result<Registry> {
        Registry::new(host, self.client_options())
            .with_context(|| format!("setting up a client for {host}"))
    }

    /// The same settings for a pull that kitsnap serve makes. The daemon's API has no
    /// place for a proxy or a client certificate, so they are refused rather than
    /// silently dropped.
    pub fn node_options(&self) -> Result<pb::RegistryOptions> {
        if self.proxy.is_some() || self.cert.is_some() {
            anyhow::bail!(
                "--proxy, --cert and --key (or KITOPS_CLIENT_CERT/KITOPS_CLIENT_KEY) apply to \
                 this process's own registry connections; kitsnap serve makes this pull with \
                 its own settings (give its environment HTTPS_PROXY, or pull into the local \
                 store first and let serve take the ModelKit from there)"
            );
        }
        Ok(pb::RegistryOptions {
            plain_http: self.plain_http,
            insecure_skip_verify: !self.tls_verify,
            ca_files: self
                .ca_files
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            hosts_dir: self
                .hosts_dir
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            concurrency: u32::from(self.concurrency),
        })
    }

    pub fn transfer(&self, progress: bool) -> TransferOptions {
        TransferOptions {
            concurrency: usize::from(self.concurrency),
            progress,
        }
    }
}

/// `kitsnap serve`'s settings: flags over the config file over defaults.
#[derive(Debug)]
pub struct Serve {
    pub log_level: String,
    pub log_format: daemon::LogFormat,
    pub daemon: daemon::Settings,
}

impl ServeArgs {
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(daemon::DEFAULT_CONFIG))
    }

    pub fn load_config(&self) -> Result<Config> {
        let path = self.config_path();
        Config::load(&path, self.config.is_some())
            .with_context(|| format!("reading the configuration {}", path.display()))
    }

    /// Resolves flags over `cfg`; `default_hosts_dir` is used when it is a directory.
    pub fn resolve(self, cfg: Config, default_hosts_dir: &Path) -> Serve {
        let registry = ClientOptions {
            hosts_dir: cfg
                .hosts_dir
                .clone()
                .or_else(|| default_hosts_dir.is_dir().then(|| default_hosts_dir.into())),
            retries: 5,
            ..ClientOptions::default()
        };
        let limits = cfg.pull_limits();
        let or = |flag: Option<PathBuf>, file: Option<PathBuf>, default: &str| {
            flag.or(file).unwrap_or_else(|| PathBuf::from(default))
        };
        Serve {
            log_level: self
                .log_level
                .or(cfg.log_level)
                .unwrap_or_else(|| "info".into()),
            log_format: self.log_format.or(cfg.log_format).unwrap_or_default(),
            daemon: daemon::Settings {
                root: or(self.root, cfg.root, daemon::DEFAULT_ROOT),
                address: or(self.address, cfg.address, daemon::DEFAULT_ADDRESS),
                socket_gid: cfg.socket_gid,
                containerd_address: or(
                    self.containerd_address,
                    cfg.containerd_address,
                    kitsnap_node::containerd::DEFAULT_ADDRESS,
                ),
                mount_root: or(
                    self.mount_root,
                    cfg.mount_root,
                    kitsnap_node::node::DEFAULT_MOUNT_ROOT,
                ),
                docker_plugin: match self.docker_plugin.or(cfg.docker_plugin) {
                    _ if self.no_docker_plugin => None,
                    Some(p) if p.as_os_str().is_empty() => None,
                    Some(p) => Some(p),
                    None => Some(PathBuf::from(kitsnap_node::dockerplugin::DEFAULT_SOCKET)),
                },
                registry,
                limits,
                plain_http: cfg.plain_http,
                mirror_addr: self
                    .mirror_addr
                    .or(cfg.mirror_addr)
                    .map(|m| m.0)
                    .unwrap_or_else(|| kitsnap_node::mirror::DEFAULT_ADDR.parse().ok()),
                metrics_addr: self.metrics_addr.or(cfg.metrics_addr),
                lazy: !self.no_lazy && cfg.lazy.unwrap_or(true),
            },
        }
    }
}

/// containerd's default hosts directory.
pub fn default_hosts_dir() -> PathBuf {
    PathBuf::from(DEFAULT_HOSTS_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Cli {
        Cli::parse_from(crate::cli::join_tls_verify(
            args.iter().map(std::ffi::OsString::from),
        ))
    }

    fn serve_args(args: &[&str]) -> ServeArgs {
        let cli = parse(&[&["kitsnap", "serve"], args].concat());
        match cli.command {
            Command::Serve(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn serve_flags_override_the_file_and_defaults_fill_the_rest() {
        let cfg = Config {
            root: Some("/file/root".into()),
            address: Some("/file/sock".into()),
            log_level: Some("debug".into()),
            docker_plugin: Some("".into()),
            plain_http: vec!["r:5000".into()],
            ..Config::default()
        };
        let s = serve_args(&["--root", "/flag/root"]).resolve(cfg, Path::new("/nonexistent"));
        assert_eq!(s.daemon.root, PathBuf::from("/flag/root"));
        assert_eq!(s.daemon.address, PathBuf::from("/file/sock"));
        assert_eq!(s.log_level, "debug");
        assert_eq!(s.daemon.docker_plugin, None, "\"\" turns the plugin off");
        assert_eq!(s.daemon.plain_http, vec!["r:5000"]);
        assert_eq!(
            s.daemon.containerd_address,
            PathBuf::from(kitsnap_node::containerd::DEFAULT_ADDRESS)
        );
        assert_eq!(s.daemon.registry.hosts_dir, None);

        let d = tempfile::tempdir().unwrap();
        let s = serve_args(&[]).resolve(Config::default(), d.path());
        assert_eq!(s.daemon.root, PathBuf::from(daemon::DEFAULT_ROOT));
        assert_eq!(s.log_level, "info");
        assert_eq!(
            s.daemon.docker_plugin.as_deref(),
            Some(Path::new(kitsnap_node::dockerplugin::DEFAULT_SOCKET))
        );
        assert_eq!(s.daemon.registry.hosts_dir.as_deref(), Some(d.path()));
        assert!(
            serve_args(&["--no-docker-plugin"])
                .resolve(Config::default(), d.path())
                .daemon
                .docker_plugin
                .is_none()
        );
    }

    #[test]
    fn registry_flags() {
        let cli = parse(&[
            "kitsnap",
            "push",
            "a:1",
            "--plain-http",
            "--tls-verify",
            "false",
            "--ca-file",
            "/a.pem",
            "--ca-file",
            "/b.pem",
            "--chunk-size-mib",
            "16",
            "--stall-timeout",
            "5",
            "--retries",
            "2",
        ]);
        let Command::Push(p) = cli.command else {
            unreachable!()
        };
        let o = p.registry.client_options();
        assert!(o.plain_http && !o.tls_verify);
        assert_eq!(o.ca_files.len(), 2);
        assert_eq!(o.chunk_size, 16 << 20);
        assert_eq!(o.stall_window, std::time::Duration::from_secs(5));
        assert_eq!(o.retries, 2);
        let n = p.registry.node_options().expect("no proxy or certificate");
        assert!(n.plain_http && n.insecure_skip_verify);
        assert_eq!(
            n.ca_files,
            vec!["/a.pem", "/b.pem"],
            "every CA file reaches the daemon"
        );
    }

    #[test]
    fn store_root_from_flag() {
        let c = Ctx::new(Some("/s".into()), false);
        assert_eq!(c.store_root, PathBuf::from("/s"));
        assert!(!c.progress);
    }

    #[test]
    fn tls_verify_as_kit_and_as_before() {
        let verify = |args: &[&str]| {
            let Command::Pull(p) = parse(&[&["kitsnap", "pull"], args].concat()).command else {
                unreachable!()
            };
            (p.registry.tls_verify, p.reference)
        };
        assert_eq!(verify(&["r/m:1"]), (true, "r/m:1".into()));
        assert_eq!(verify(&["--tls-verify", "r/m:1"]), (true, "r/m:1".into()));
        assert_eq!(
            verify(&["--tls-verify=false", "r/m:1"]),
            (false, "r/m:1".into())
        );
        assert_eq!(
            verify(&["r/m:1", "--tls-verify", "false"]),
            (false, "r/m:1".into())
        );
        assert_eq!(
            verify(&["r/m:1", "--tls-verify", "true"]),
            (true, "r/m:1".into())
        );
    }

    #[test]
    fn global_flags_as_kit() {
        // Before or after the verb.
        for args in [
            &[
                "kitsnap",
                "--config",
                "/k",
                "-vv",
                "--progress",
                "none",
                "list",
            ][..],
            &[
                "kitsnap",
                "list",
                "--config",
                "/k",
                "-v",
                "-v",
                "--progress=none",
            ][..],
        ] {
            let cli = parse(args);
            let ctx = Ctx::from_cli(&cli);
            assert_eq!(ctx.store_root, PathBuf::from("/k/storage"));
            assert!(!ctx.progress);
            assert_eq!(log_level(&cli).unwrap().as_deref(), Some("trace"));
        }
        let cli = parse(&[
            "kitsnap",
            "list",
            "--log-level",
            "error",
            "--progress",
            "fancy",
        ]);
        assert_eq!(log_level(&cli).unwrap().as_deref(), Some("error"));
        assert!(Ctx::from_cli(&cli).progress);
        assert!(!Ctx::from_cli(&parse(&["kitsnap", "-vvv", "list"])).progress);
        assert!(log_level(&parse(&["kitsnap", "list", "--log-level", "loud"])).is_err());
        // serve: --config is its file, --log-level may be a tracing filter.
        let cli = parse(&[
            "kitsnap",
            "serve",
            "--config",
            "/etc/k.toml",
            "--log-level",
            "kitsnap=debug",
        ]);
        assert_eq!(log_level(&cli).unwrap().as_deref(), Some("kitsnap=debug"));
        assert_ne!(
            Ctx::from_cli(&cli).store_root,
            PathBuf::from("/etc/k.toml/storage")
        );
        assert_eq!(cli.config.as_deref(), Some(Path::new("/etc/k.toml")));
    }
}
