//! Registry credentials in the Docker config (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`): `auths`, and the `credsStore` / `credHelpers` helper programs
//! (`docker-credential-<name> get|store|erase`), so that `docker login` and `kitsnap login`
//! share what they know.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kitsnap_core::IoContext;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CoreError, Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
}

impl Credentials {
    /// Helpers report an identity (refresh) token with the user name `<token>`.
    pub fn is_identity_token(&self) -> bool {
        self.username == "<token>"
    }
}

/// The parts of Docker's config.json kitsnap reads and writes; every other field is kept
/// as it was (`other`), so that saving never loses what Docker or another tool wrote.
#[derive(Debug, Default, Deserialize, Serialize)]
struct ConfigFile {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(
        rename = "credsStore",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    creds_store: Option<String>,
    #[serde(
        rename = "credHelpers",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    cred_helpers: BTreeMap<String, String>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct AuthEntry {
    /// base64 of `user:password`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    auth: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    password: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    identitytoken: String,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// What a credential helper's `get` prints.
#[derive(Deserialize)]
struct HelperCredentials {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

pub struct DockerConfig {
    pub path: PathBuf,
    file: ConfigFile,
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_path() -> PathBuf {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("config.json");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".docker/config.json")
}

/// Keys a host may be filed under (Docker Hub has its historical URL).
fn keys_for(host: &str) -> Vec<String> {
    let mut k = vec![
        host.to_string(),
        format!("https://{host}"),
        format!("http://{host}"),
    ];
    if host == "docker.io" || host == "registry-1.docker.io" || host == "index.docker.io" {
        k.push("https://index.docker.io/v1/".into());
    }
    k
}

impl DockerConfig {
    pub fn load(path: PathBuf) -> Result<DockerConfig> {
        let file = match fs::read(&path) {
            Ok(d) if d.iter().all(u8::is_ascii_whitespace) => ConfigFile::default(),
            Ok(d) => serde_json::from_slice(&d).map_err(|source| CoreError::Json {
                what: path.display().to_string(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ConfigFile::default(),
            Err(source) => return Err(CoreError::IoAt { path, source }.into()),
        };
        Ok(DockerConfig { path, file })
    }

    fn helper_for(&self, host: &str) -> Option<String> {
        self.file
            .cred_helpers
            .get(host)
            .or(self.file.creds_store.as_ref())
            .filter(|s| !s.is_empty())
            .cloned()
    }

    /// Credentials for `host`, from its helper or from `auths`.
    pub fn get(&self, host: &str) -> Result<Option<Credentials>> {
        if let Some(h) = self.helper_for(host) {
            return helper_get(&h, host);
        }
        for key in keys_for(host) {
            let Some(entry) = self.file.auths.get(&key) else {
                continue;
            };
            if !entry.identitytoken.is_empty() {
                return Ok(Some(Credentials {
                    username: "<token>".into(),
                    secret: entry.identitytoken.clone(),
                }));
            }
            if !entry.auth.is_empty() {
                let bad = |what: &str| Error::Config {
                    what: self.path.display().to_string(),
                    msg: format!("auths.{key}.auth is not {what}"),
                };
                let raw = B64.decode(entry.auth.trim()).map_err(|_| bad("base64"))?;
                let s = String::from_utf8(raw).map_err(|_| bad("UTF-8"))?;
                let (u, p) = s.split_once(':').ok_or_else(|| bad("user:password"))?;
                return Ok(Some(Credentials {
                    username: u.into(),
                    secret: p.into(),
                }));
            }
            if !entry.username.is_empty() && !entry.password.is_empty() {
                return Ok(Some(Credentials {
                    username: entry.username.clone(),
                    secret: entry.password.clone(),
                }));
            }
        }
        Ok(None)
    }

    /// Saves credentials: through the helper when one is configured, else in `auths`.
    pub fn store(&mut self, host: &str, c: &Credentials) -> Result<()> {
        if let Some(h) = self.helper_for(host) {
            let input =
                serde_json::json!({"ServerURL": host, "Username": c.username, "Secret": c.secret});
            return helper_run(&h, "store", &input.to_string()).map(|_| ());
        }
        self.file.auths.insert(
            host.to_string(),
            AuthEntry {
                auth: B64.encode(format!("{}:{}", c.username, c.secret)),
                ..AuthEntry::default()
            },
        );
        self.save()
    }

    /// Forgets `host`. Returns whether anything was removed.
    pub fn erase(&mut self, host: &str) -> Result<bool> {
        if let Some(h) = self.helper_for(host) {
            helper_run(&h, "erase", host)?;
            return Ok(true);
        }
        let mut removed = false;
        for k in keys_for(host) {
            removed |= self.file.auths.remove(&k).is_some();
        }
        if removed {
            self.save()?;
        }
        Ok(removed)
    }

    /// Atomic replace, mode 0600: the file holds secrets.
    fn save(&self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        fs::create_dir_all(dir).at(dir)?;
        let tmp = self
            .path
            .with_extension(format!("json.tmp-{}", std::process::id()));
        {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .at(&tmp)?;
            let data = serde_json::to_vec_pretty(&self.file).map_err(|source| CoreError::Json {
                what: "docker config".into(),
                source,
            })?;
            f.write_all(&data).at(&tmp)?;
            f.sync_all().at(&tmp)?;
        }
        Ok(fs::rename(&tmp, &self.path).at(&self.path)?)
    }
}

/// How a helper run ended.
enum HelperOutcome {
    Ok(String),
    /// It ran and exited non-zero (for `get`: it has nothing for this host).
    Failed {
        code: Option<i32>,
        output: String,
    },
}

fn helper_exec(helper: &str, verb: &str, input: &str) -> Result<HelperOutcome> {
    let err = |msg: String, source: Option<std::io::Error>| Error::CredentialHelper {
        helper: helper.into(),
        verb: verb.into(),
        msg,
        source,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            err(
                "cannot run it (install it, or remove it from credsStore/credHelpers in the Docker config)".into(),
                Some(e),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| err("writing its input".into(), Some(e)))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err("waiting for it".into(), Some(e)))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(HelperOutcome::Ok(stdout));
    }
    let output = format!(
        "{} {}",
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(HelperOutcome::Failed {
        code: out.status.code(),
        output: output.trim().to_string(),
    })
}

fn helper_run(helper: &str, verb: &str, input: &str) -> Result<String> {
    match helper_exec(helper, verb, input)? {
        HelperOutcome::Ok(out) => Ok(out),
        HelperOutcome::Failed { code, output } => Err(Error::CredentialHelper {
            helper: helper.into(),
            verb: verb.into(),
            msg: format!(
                "exited with {}: {output}",
                code.map_or("a signal".to_string(), |c| format!("status {c}"))
            ),
            source: None,
        }),
    }
}

/// A helper's `get` exits non-zero when it holds nothing for the host (the protocol's
/// "credentials not found"): the host is then used anonymously.
fn helper_get(helper: &str, host: &str) -> Result<Option<Credentials>> {
    match helper_exec(helper, "get", host)? {
        HelperOutcome::Ok(out) => {
            let c: HelperCredentials =
                serde_json::from_str(&out).map_err(|source| CoreError::Json {
                    what: format!("docker-credential-{helper} output"),
                    source,
                })?;
            Ok(Some(Credentials {
                username: c.username,
                secret: c.secret,
            }))
        }
        HelperOutcome::Failed { code, output } => {
            tracing::debug!(
                "docker-credential-{helper} get {host}: exit {code:?}: {output}; no credentials"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn store_get_erase_keeps_other_fields_and_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        fs::write(
            &p,
            r#"{"auths":{"other.io":{"auth":"dTpw"}},"proxies":{"x":1}}"#,
        )
        .unwrap();
        let mut c = DockerConfig::load(p.clone()).unwrap();
        let cred = Credentials {
            username: "alice".into(),
            secret: "s3:cret".into(),
        };
        c.store("reg.example.com:5000", &cred).unwrap();
        let c = DockerConfig::load(p.clone()).unwrap();
        assert_eq!(c.get("reg.example.com:5000").unwrap(), Some(cred));
        assert_eq!(c.get("other.io").unwrap().unwrap().username, "u");
        assert!(c.get("nope.io").unwrap().is_none());
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut c = c;
        assert!(c.erase("reg.example.com:5000").unwrap());
        let v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["auths"]["other.io"]["auth"], "dTpw");
        assert_eq!(v["proxies"]["x"], 1);
        assert!(v["auths"].get("reg.example.com:5000").is_none());
    }

    #[test]
    fn credential_helper_protocol() {
        let d = tempfile::tempdir().unwrap();
        let helper = d.path().join("docker-credential-fake");
        fs::write(
            &helper,
            "#!/bin/sh\nread host\nif [ \"$1\" = get ] && [ \"$host\" = h.io ]; then echo '{\"Username\":\"bob\",\"Secret\":\"pw\"}'; exit 0; fi\necho 'no entry for this host' >&2; exit 3\n",
        )
        .unwrap();
        fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
        let p = d.path().join("config.json");
        fs::write(&p, r#"{"credHelpers":{"h.io":"fake"}}"#).unwrap();
        let path = std::env::var("PATH").unwrap_or_default();
        // SAFETY: tests in this module do not read PATH concurrently.
        unsafe { std::env::set_var("PATH", format!("{}:{path}", d.path().display())) };
        let c = DockerConfig::load(p).unwrap();
        assert_eq!(c.get("h.io").unwrap().unwrap().username, "bob");
        assert!(c.get("other.io").unwrap().is_none());
    }
}
