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

/// First line of a hosts.toml that `install` wrote (and `remove` may delete).
const WRITTEN_BY: &str = "# Written by `kitsnap hosts install`";
/// Where `install` keeps the hosts.toml it changed, for `remove` to put back.
const BACKUP: &str = "hosts.toml.kitsnap-backup";

/// What `install` or `remove` did to one registry's hosts.toml.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Written(PathBuf),
    Unchanged(PathBuf),
    Restored(PathBuf),
    Removed(PathBuf),
}

fn default_server(registry: &str, plain_http: bool) -> String {
    if registry == "docker.io" {
        "https://registry-1.docker.io".into()
    } else {
        format!("{}://{registry}", if plain_http { "http" } else { "https" })
    }
}

/// Names `mirror` (e.g. `http://127.0.0.1:5050`) as the first pull/resolve mirror for
/// `registry` in `<dir>/<registry>/hosts.toml`. A file that exists is kept aside
/// (`hosts.toml.kitsnap-backup`) and rewritten with the mirror first and everything else as
/// it was; a new file names the registry as `server` (`http://` with `plain_http`).
pub fn install(dir: &Path, registry: &str, mirror: &str, plain_http: bool) -> Result<Change> {
    let host_dir = dir.join(registry);
    let file = host_dir.join("hosts.toml");
    let bad = |msg: String| Error::Config {
        what: file.display().to_string(),
        msg,
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(kitsnap_core::Error::IoAt {
                path: file,
                source: e,
            }
            .into());
        }
    };
    let mut mirror_table = toml::Table::new();
    mirror_table.insert(
        "capabilities".into(),
        toml::Value::Array(vec!["pull".into(), "resolve".into()]),
    );
    let out = match &text {
        None => {
            let mut doc = toml::Table::new();
            doc.insert("server".into(), default_server(registry, plain_http).into());
            let mut hosts = toml::Table::new();
            hosts.insert(mirror.into(), mirror_table.into());
            doc.insert("host".into(), hosts.into());
            format!(
                "{WRITTEN_BY}: containerd pulls {registry} through the kitsnap node mirror.\n# `kitsnap hosts remove {registry}` deletes this file.\n{}",
                toml::to_string(&doc).map_err(|e| bad(e.to_string()))?
            )
        }
        Some(t) => {
            let mut doc: toml::Table = toml::from_str(t).map_err(|e| bad(e.to_string()))?;
            let old_hosts = match doc.remove("host") {
                Some(toml::Value::Table(h)) => h,
                Some(_) => return Err(bad("`host` is not a table".into())),
                None => toml::Table::new(),
            };
            if old_hosts.contains_key(mirror) {
                return Ok(Change::Unchanged(file));
            }
            // The mirror first: containerd tries hosts in file order.
            let mut hosts = toml::Table::new();
            hosts.insert(mirror.into(), mirror_table.into());
            hosts.extend(old_hosts);
            if !doc.contains_key("server") {
                doc.insert("server".into(), default_server(registry, plain_http).into());
            }
            doc.insert("host".into(), hosts.into());
            if !t.starts_with(WRITTEN_BY) && !host_dir.join(BACKUP).exists() {
                std::fs::write(host_dir.join(BACKUP), t).at(host_dir.join(BACKUP))?;
            }
            toml::to_string(&doc).map_err(|e| bad(e.to_string()))?
        }
    };
    std::fs::create_dir_all(&host_dir).at(&host_dir)?;
    let tmp = host_dir.join(".hosts.toml.tmp");
    std::fs::write(&tmp, out).at(&tmp)?;
    std::fs::rename(&tmp, &file).at(&file)?;
    Ok(Change::Written(file))
}

/// Undoes `install` for `registry`: puts back the file it changed, or deletes the file
/// it wrote. A hosts.toml kitsnap did not touch is left alone.
pub fn remove(dir: &Path, registry: &str) -> Result<Change> {
    let host_dir = dir.join(registry);
    let file = host_dir.join("hosts.toml");
    let backup = host_dir.join(BACKUP);
    if backup.exists() {
        std::fs::rename(&backup, &file).at(&file)?;
        return Ok(Change::Restored(file));
    }
    match std::fs::read_to_string(&file) {
        Ok(t) if t.starts_with(WRITTEN_BY) => {
            std::fs::remove_file(&file).at(&file)?;
            let _ = std::fs::remove_dir(&host_dir); // only if now empty
            Ok(Change::Removed(file))
        }
        Ok(_) => Ok(Change::Unchanged(file)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Change::Unchanged(file)),
        Err(e) => Err(kitsnap_core::Error::IoAt {
            path: file,
            source: e,
        }
        .into()),
    }
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

    #[test]
    fn install_puts_the_mirror_first_and_remove_undoes_it() {
        let d = tempfile::tempdir().unwrap();
        let m = "http://127.0.0.1:5050";
        // A registry with no hosts.toml: a new file, deleted again by remove.
        assert!(matches!(
            install(d.path(), "new:5000", m, true).unwrap(),
            Change::Written(_)
        ));
        let e = endpoints("new:5000", Some(d.path()), false).unwrap();
        assert_eq!(e[0].api, "http://127.0.0.1:5050/v2");
        assert!(e[0].pull && e[0].resolve && !e[0].push);
        assert_eq!(e[1].api, "http://new:5000/v2");
        assert!(matches!(
            install(d.path(), "new:5000", m, true).unwrap(),
            Change::Unchanged(_)
        ));
        assert!(matches!(
            remove(d.path(), "new:5000").unwrap(),
            Change::Removed(_)
        ));
        assert!(!d.path().join("new:5000").exists());
        // A registry with its own hosts.toml (another mirror): kept, restored exactly.
        let h = d.path().join("reg.example.com");
        std::fs::create_dir_all(&h).unwrap();
        let orig = "# mine\nserver = \"https://reg.example.com\"\n[host.\"https://spegel:5000\"]\n  capabilities = [\"pull\"]\n";
        std::fs::write(h.join("hosts.toml"), orig).unwrap();
        install(d.path(), "reg.example.com", m, false).unwrap();
        let e = endpoints("reg.example.com", Some(d.path()), false).unwrap();
        let apis: Vec<&str> = e.iter().map(|e| e.api.as_str()).collect();
        assert_eq!(
            apis,
            [
                "http://127.0.0.1:5050/v2",
                "https://spegel:5000/v2",
                "https://reg.example.com/v2"
            ]
        );
        assert!(matches!(
            remove(d.path(), "reg.example.com").unwrap(),
            Change::Restored(_)
        ));
        assert_eq!(std::fs::read_to_string(h.join("hosts.toml")).unwrap(), orig);
        assert!(matches!(
            remove(d.path(), "reg.example.com").unwrap(),
            Change::Unchanged(_)
        ));
    }
}
