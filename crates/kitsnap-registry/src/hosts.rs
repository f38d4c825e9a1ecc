//! Registry endpoints from containerd's `hosts.toml` convention
//! (`<hosts dir>/<host[:port]>/hosts.toml`, default dir `/etc/containerd/certs.d`), so a
//! node pulls through the same pull-through caches and P2P mirrors (Spegel, Dragonfly)
//! as containerd, falling back to the upstream registry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kitsnap_core::IoContext;
use serde::Deserialize;

use crate::error::{Error, Result};

pub const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEndpoint {
    /// Base URL up to and including `/v2` (e.g. `https://mirror.local:5000/v2`).
    pub api: String,
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
    pub skip_verify: bool,
    pub ca: Vec<PathBuf>,
    pub mirror: bool,
    pub headers: Vec<(String, String)>,
}

/// A `hosts.toml` as containerd reads it: the upstream's settings at the top level, and
/// `[host."URL"]` tables for mirrors, tried in file order.
#[derive(Debug, Default, Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(flatten)]
    upstream: HostConfig,
    /// Kept as a table (which preserves file order) and read entry by entry.
    #[serde(default)]
    host: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
struct HostConfig {
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    skip_verify: bool,
    ca: Option<OneOrMany>,
    #[serde(default)]
    header: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    override_path: bool,
}

/// containerd accepts a string or a list for `ca` and header values.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

impl HostConfig {
    fn endpoint(self, server: &str, mirror: bool, base: &Path) -> HostEndpoint {
        let caps = self
            .capabilities
            .unwrap_or_else(|| vec!["pull".into(), "resolve".into(), "push".into()]);
        let has = |c: &str| caps.iter().any(|x| x == c);
        let s = server.trim_end_matches('/');
        HostEndpoint {
            api: if self.override_path {
                s.to_string()
            } else {
                format!("{s}/v2")
            },
            pull: has("pull"),
            resolve: has("resolve"),
            push: has("push"),
            skip_verify: self.skip_verify,
            ca: self
                .ca
                .map(OneOrMany::into_vec)
                .unwrap_or_default()
                .into_iter()
                .map(|p| base.join(p)) // join keeps an absolute path as it is
                .collect(),
            mirror,
            headers: self
                .header
                .into_iter()
                .flat_map(|(k, v)| v.into_vec().into_iter().map(move |s| (k.clone(), s)))
                .collect(),
        }
    }
}

/// The endpoints for `host`, mirrors first, then the upstream. `plain_http` makes the
/// default upstream `http://` when no hosts.toml names a server.
pub fn endpoints(
    host: &str,
    hosts_dir: Option<&Path>,
    plain_http: bool,
) -> Result<Vec<HostEndpoint>> {
    let scheme = if plain_http { "http" } else { "https" };
    let default_server = if host == "docker.io" {
        "https://registry-1.docker.io".to_string()
    } else {
        format!("{scheme}://{host}")
    };
    let dir = hosts_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HOSTS_DIR));
    let file = [
        dir.join(host).join("hosts.toml"),
        dir.join("_default").join("hosts.toml"),
    ]
    .into_iter()
    .find(|p| p.is_file());
    let Some(file) = file else {
        return Ok(vec![HostConfig::default().endpoint(
            &default_server,
            false,
            &dir,
        )]);
    };
    let bad = |msg: String| Error::Config {
        what: file.display().to_string(),
        msg,
    };
    let text = std::fs::read_to_string(&file).at(&file)?;
    let doc: HostsFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let base = file.parent().unwrap_or(&dir).to_path_buf();
    let mut out = Vec::new();
    for (url, t) in doc.host {
        let cfg = HostConfig::deserialize(t).map_err(|e| bad(format!("host {url:?}: {e}")))?;
        out.push(cfg.endpoint(&url, true, &base));
    }
    let server = doc.server.unwrap_or(default_server);
    out.push(doc.upstream.endpoint(&server, false, &base));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_then_upstream() {
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("reg.example.com:5000");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::write(
            h.join("hosts.toml"),
            r#"server = "https://reg.example.com:5000"
[host."http://127.0.0.1:30020"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
[host."https://cache.local/v2/proxy"]
  capabilities = ["pull"]
  override_path = true
  ca = "ca.pem"
  [host."https://cache.local/v2/proxy".header]
    x-custom = "1"
"#,
        )
        .unwrap();
        let e = endpoints("reg.example.com:5000", Some(d.path()), false).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].api, "http://127.0.0.1:30020/v2");
        assert!(e[0].mirror && e[0].pull && e[0].resolve && !e[0].push && e[0].skip_verify);
        assert_eq!(e[1].api, "https://cache.local/v2/proxy");
        assert!(!e[1].resolve);
        assert_eq!(e[1].ca, vec![h.join("ca.pem")]);
        assert_eq!(
            e[1].headers,
            vec![("x-custom".to_string(), "1".to_string())]
        );
        assert_eq!(e[2].api, "https://reg.example.com:5000/v2");
        assert!(!e[2].mirror && e[2].push);
        let plain = endpoints("other:5000", Some(d.path()), true).unwrap();
        assert_eq!(plain[0].api, "http://other:5000/v2");
    }
}
