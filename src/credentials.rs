//! Registry credentials in the Docker config (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`): `auths`, and the `credsStore` / `credHelpers` helper programs
//! (`docker-credential-<name> get|store|erase`), so that `docker login` and `kitsnap login`
//! share what they know.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::error::{Error, IoContext, Result};

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

pub struct DockerConfig {
    pub path: PathBuf,
    value: Value,
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
        let value = match fs::read(&path) {
            Ok(d) if d.iter().all(u8::is_ascii_whitespace) => json!({}),
            Ok(d) => serde_json::from_slice(&d).map_err(|source| Error::Json {
                what: path.display().to_string(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({}),
            Err(e) => return Err(Error::IoAt { path, source: e }),
        };
        if !value.is_object() {
            return Err(Error::Invalid(format!(
                "{}: not a JSON object",
                path.display()
            )));
        }
        Ok(DockerConfig { path, value })
    }

    fn helper_for(&self, host: &str) -> Option<String> {
        self.value
            .get("credHelpers")
            .and_then(|h| h.get(host))
            .and_then(Value::as_str)
            .or_else(|| self.value.get("credsStore").and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// Credentials for `host`, from its helper or from `auths`.
    pub fn get(&self, host: &str) -> Result<Option<Credentials>> {
        if let Some(h) = self.helper_for(host) {
            return helper_get(&h, host);
        }
        let Some(auths) = self.value.get("auths").and_then(Value::as_object) else {
            return Ok(None);
        };
        for key in keys_for(host) {
            let Some(entry) = auths.get(&key) else {
                continue;
            };
            if let Some(tok) = entry
                .get("identitytoken")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                return Ok(Some(Credentials {
                    username: "<token>".into(),
                    secret: tok.into(),
                }));
            }
            if let Some(a) = entry
                .get("auth")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                let raw = B64.decode(a.trim()).map_err(|_| {
                    Error::Invalid(format!(
                        "{}: auths.{key}.auth is not base64",
                        self.path.display()
                    ))
                })?;
                let s = String::from_utf8(raw).map_err(|_| {
                    Error::Invalid(format!(
                        "{}: auths.{key}.auth is not UTF-8",
                        self.path.display()
                    ))
                })?;
                let (u, p) = s.split_once(':').ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: auths.{key}.auth is not user:password",
                        self.path.display()
                    ))
                })?;
                return Ok(Some(Credentials {
                    username: u.into(),
                    secret: p.into(),
                }));
            }
            if let (Some(u), Some(p)) = (
                entry.get("username").and_then(Value::as_str),
                entry.get("password").and_then(Value::as_str),
            ) {
                return Ok(Some(Credentials {
                    username: u.into(),
                    secret: p.into(),
                }));
            }
        }
        Ok(None)
    }

    /// Saves credentials: through the helper when one is configured, else in `auths`.
    pub fn store(&mut self, host: &str, c: &Credentials) -> Result<()> {
        if let Some(h) = self.helper_for(host) {
            return helper_run(
                &h,
                "store",
                &json!({"ServerURL": host, "Username": c.username, "Secret": c.secret}).to_string(),
            )
            .map(|_| ());
        }
        let obj = self
            .value
            .as_object_mut()
            .ok_or_else(|| Error::Internal("config".into()))?;
        let auths = obj
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        if let Some(a) = auths.as_object_mut() {
            a.insert(
                host.to_string(),
                json!({"auth": B64.encode(format!("{}:{}", c.username, c.secret))}),
            );
        }
        self.save()
    }

    /// Forgets `host`. Returns whether anything was removed.
    pub fn erase(&mut self, host: &str) -> Result<bool> {
        if let Some(h) = self.helper_for(host) {
            helper_run(&h, "erase", host)?;
            return Ok(true);
        }
        let mut removed = false;
        if let Some(a) = self.value.get_mut("auths").and_then(Value::as_object_mut) {
            for k in keys_for(host) {
                removed |= a.remove(&k).is_some();
            }
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
            let data = serde_json::to_vec_pretty(&self.value).map_err(|source| Error::Json {
                what: "docker config".into(),
                source,
            })?;
            f.write_all(&data).at(&tmp)?;
            f.sync_all().at(&tmp)?;
        }
        fs::rename(&tmp, &self.path).at(&self.path)
    }
}

fn helper_run(helper: &str, verb: &str, input: &str) -> Result<String> {
    let prog = format!("docker-credential-{helper}");
    let mut child = Command::new(&prog)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Invalid(format!("credential helper {prog}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "credential helper {prog} {verb} failed: {}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(stdout)
}

fn helper_get(helper: &str, host: &str) -> Result<Option<Credentials>> {
    match helper_run(helper, "get", host) {
        Ok(out) => {
            let v: Value = serde_json::from_str(&out).map_err(|source| Error::Json {
                what: format!("docker-credential-{helper} output"),
                source,
            })?;
            Ok(Some(Credentials {
                username: v
                    .get("Username")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into(),
                secret: v.get("Secret").and_then(Value::as_str).unwrap_or("").into(),
            }))
        }
        // Helpers say "credentials not found in native keychain" for unknown hosts.
        Err(Error::Invalid(m)) if m.contains("not found") => Ok(None),
        Err(e) => Err(e),
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
        assert_eq!(v["proxies"]["x"], 1);
        assert!(v["auths"].get("reg.example.com:5000").is_none());
    }

    #[test]
    fn credential_helper_protocol() {
        let d = tempfile::tempdir().unwrap();
        let helper = d.path().join("docker-credential-fake");
        fs::write(
            &helper,
            "#!/bin/sh\nread host\nif [ \"$1\" = get ] && [ \"$host\" = h.io ]; then echo '{\"Username\":\"bob\",\"Secret\":\"pw\"}'; exit 0; fi\necho 'credentials not found in native keychain'; exit 1\n",
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
