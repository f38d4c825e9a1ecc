//! `/etc/kitsnap/config.toml`: the daemon's settings file. Command-line flags override it
//! (the binary resolves both into [`super::Settings`]).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

pub const DEFAULT_CONFIG: &str = "/etc/kitsnap/config.toml";

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
    /// Most layers one ModelKit may have (default 4096).
    pub max_layers: Option<usize>,
    /// A compressed layer may unpack to at most this many times its size (default 200).
    pub max_expansion: Option<u64>,
    /// Most GiB one ModelKit may unpack to (default 4096).
    pub max_kit_gib: Option<u64>,
    /// Layers one pull downloads and unpacks at once (default 4).
    pub pull_concurrency: Option<usize>,
    /// The registry mirror's address (`IP:PORT`, default 127.0.0.1:5050), or "off".
    pub mirror_addr: Option<crate::mirror::MirrorAddr>,
    /// Where Prometheus scrapes `/metrics` (`IP:PORT`); not served unless set.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `text` (default) or `json` (one object per line).
    pub log_format: Option<super::LogFormat>,
    /// Serve layers that have a lazy index through FUSE while they arrive (default true).
    pub lazy: Option<bool>,
}

impl Config {
    /// The pull limits: these settings over the defaults.
    pub fn pull_limits(&self) -> crate::node::pull::PullLimits {
        let d = crate::node::pull::PullLimits::default();
        crate::node::pull::PullLimits {
            max_layers: self.max_layers.unwrap_or(d.max_layers),
            max_expansion: self.max_expansion.unwrap_or(d.max_expansion),
            max_kit_bytes: self.max_kit_gib.map_or(d.max_kit_bytes, |g| g << 30),
            concurrency: self.pull_concurrency.unwrap_or(d.concurrency).max(1),
        }
    }
}

impl Config {
    /// Reads `path`; a missing default config is fine, a missing explicit one is not.
    pub fn load(path: &Path, explicit: bool) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(t) => toml::from_str(&t).map_err(|e| Error::Config {
                what: path.display().to_string(),
                msg: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Config::default())
            }
            Err(source) => Err(kitsnap_core::Error::IoAt {
                path: path.into(),
                source,
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_default_is_empty_unknown_key_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.toml");
        assert!(Config::load(&p, false).unwrap().root.is_none());
        assert!(Config::load(&p, true).is_err());
        std::fs::write(&p, "root = \"/x\"\nplain_http = [\"r:5000\"]\n").unwrap();
        let c = Config::load(&p, true).unwrap();
        assert_eq!(c.root.as_deref(), Some(Path::new("/x")));
        assert_eq!(c.plain_http, vec!["r:5000"]);
        std::fs::write(&p, "rot = \"/x\"\n").unwrap();
        let e = Config::load(&p, true).unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
    }
}
