//! Registry endpoints from containerd's `hosts.toml` convention
//! (`<hosts dir>/<host[:port]>/hosts.toml`, default dir `/etc/containerd/certs.d`), so a
//! node pulls through the same pull-through caches and P2P mirrors (Spegel, Dragonfly)
//! as containerd, falling back to the upstream registry.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

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

fn api_url(server: &str, override_path: bool) -> String {
    let s = server.trim_end_matches('/');
    if override_path {
        s.to_string()
    } else {
        format!("{s}/v2")
    }
}

fn strings(v: Option<&toml::Value>) -> Vec<String> {
    match v {
        Some(toml::Value::String(s)) => vec![s.clone()],
        Some(toml::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn endpoint(server: &str, t: Option<&toml::Table>, mirror: bool, base: &Path) -> HostEndpoint {
    let get = |k: &str| t.and_then(|t| t.get(k));
    let caps = strings(get("capabilities"));
    let caps: Vec<&str> = if caps.is_empty() {
        vec!["pull", "resolve", "push"]
    } else {
        caps.iter().map(String::as_str).collect()
    };
    let headers = get("header")
        .and_then(|h| h.as_table())
        .map(|h| {
            h.iter()
                .flat_map(|(k, v)| strings(Some(v)).into_iter().map(move |s| (k.clone(), s)))
                .collect()
        })
        .unwrap_or_default();
    HostEndpoint {
        api: api_url(
            server,
            get("override_path")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        ),
        pull: caps.contains(&"pull"),
        resolve: caps.contains(&"resolve"),
        push: caps.contains(&"push"),
        skip_verify: get("skip_verify")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        ca: strings(get("ca"))
            .into_iter()
            .map(|p| {
                if Path::new(&p).is_absolute() {
                    PathBuf::from(p)
                } else {
                    base.join(p)
                }
            })
            .collect(),
        mirror,
        headers,
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
        return Ok(vec![endpoint(&default_server, None, false, &dir)]);
    };
    let text = std::fs::read_to_string(&file).at(&file)?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?;
    let base = file.parent().unwrap_or(&dir).to_path_buf();
    let mut out = Vec::new();
    if let Some(hosts) = doc.get("host").and_then(|h| h.as_table()) {
        for (url, t) in hosts {
            out.push(endpoint(url, t.as_table(), true, &base));
        }
    }
    let server = doc
        .get("server")
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .unwrap_or(default_server);
    // The upstream's own settings are the top-level keys (containerd allows ca/skip_verify there).
    out.push(endpoint(&server, Some(&doc), false, &base));
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
