//! Registers kitsnap with containerd as a drop-in file (`conf.d/kitsnap.toml`, pulled in
//! by the main config's `imports`), instead of appending to `config.toml`: installing
//! twice changes nothing, and removing is deleting one file.

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Value};

use crate::error::{Error, Result};

pub const DEFAULT_CONFIG: &str = "/etc/containerd/config.toml";
pub const DEFAULT_CONF_DIR: &str = "/etc/containerd/conf.d";
pub const DROPIN_NAME: &str = "kitsnap.toml";
const WRITTEN_BY: &str =
    "# Written by `kitsnap containerd install`; `kitsnap containerd remove` deletes it.";

/// What `install` or `remove` did, for the user.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Wrote(PathBuf),
    Unchanged(PathBuf),
    AddedImport { config: PathBuf, glob: String },
    Removed(PathBuf),
}

pub struct Registration<'a> {
    pub config: &'a Path,
    pub conf_dir: &'a Path,
    /// kitsnap serve's socket.
    pub address: &'a Path,
    /// containerd 2.x: also let the transfer service unpack this platform onto kitsnap.
    pub unpack_platform: Option<&'a str>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| {
        kitsnap_core::Error::IoAt {
            path: path.into(),
            source,
        }
        .into()
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("toml.kitsnap-tmp");
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn read_config(path: &Path) -> Result<(String, DocumentMut)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(path)(e)),
    };
    let doc = text.parse::<DocumentMut>().map_err(|e| {
        Error::invalid(format!(
            "{} is not valid TOML: {e}; fix it before registering kitsnap",
            path.display()
        ))
    })?;
    Ok((text, doc))
}

/// The drop-in's text: the main config's version (imports are read with the same rules).
pub fn dropin(version: i64, r: &Registration) -> String {
    let mut s = format!(
        "{WRITTEN_BY}\nversion = {version}\n\n[proxy_plugins.kitsnap]\n  type = \"snapshot\"\n  address = \"{}\"\n",
        r.address.display()
    );
    if let Some(p) = r.unpack_platform {
        s.push_str(&format!(
            "\n# containerd 2.x: ctr/nerdctl pulls through the transfer service unpack onto kitsnap.\n[plugins.\"io.containerd.transfer.v1.local\"]\n  unpack_config = [{{ platform = \"{p}\", snapshotter = \"kitsnap\" }}]\n"
        ));
    }
    s
}

/// Writes the drop-in and makes sure the main config imports it. Idempotent.
pub fn install(r: &Registration) -> Result<Vec<Change>> {
    let (text, mut doc) = read_config(r.config)?;
    if doc
        .get("proxy_plugins")
        .and_then(|p| p.get("kitsnap"))
        .is_some()
    {
        return Err(Error::invalid(format!(
            "{} already has [proxy_plugins.kitsnap] (an older `cat >>` install): delete that table, then run this again",
            r.config.display()
        )));
    }
    let version = doc.get("version").and_then(Item::as_integer).unwrap_or(2);
    let mut changes = Vec::new();
    let glob = format!("{}/*.toml", r.conf_dir.display());
    let dropin_path = r.conf_dir.join(DROPIN_NAME);
    let imported = doc
        .get("imports")
        .and_then(Item::as_array)
        .is_some_and(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|s| s == glob || Path::new(s) == dropin_path)
        });
    if !imported {
        if doc.get("version").is_none() {
            doc.insert("version", toml_edit::value(version));
        }
        match doc.get_mut("imports").and_then(Item::as_array_mut) {
            Some(a) => a.push(glob.as_str()),
            None => {
                if doc.get("imports").is_some() {
                    return Err(Error::invalid(format!(
                        "{}: `imports` is not an array of paths",
                        r.config.display()
                    )));
                }
                let mut a = Array::new();
                a.push(glob.as_str());
                doc.insert("imports", toml_edit::value(a));
            }
        }
        if !text.is_empty() {
            let backup = r.config.with_extension("toml.before-kitsnap");
            if !backup.exists() {
                std::fs::write(&backup, &text).map_err(io(&backup))?;
            }
        }
        write_atomic(r.config, &doc.to_string())?;
        changes.push(Change::AddedImport {
            config: r.config.to_path_buf(),
            glob,
        });
    }
    let want = dropin(version, r);
    match std::fs::read_to_string(&dropin_path) {
        Ok(have) if have == want => changes.push(Change::Unchanged(dropin_path)),
        _ => {
            write_atomic(&dropin_path, &want)?;
            changes.push(Change::Wrote(dropin_path));
        }
    }
    Ok(changes)
}

/// Deletes the drop-in (only one this module wrote). The `imports` glob stays: it is
/// harmless, and other drop-ins may use it.
pub fn remove(conf_dir: &Path) -> Result<Vec<Change>> {
    let p = conf_dir.join(DROPIN_NAME);
    match std::fs::read_to_string(&p) {
        Ok(t) if t.starts_with(WRITTEN_BY) => {
            std::fs::remove_file(&p).map_err(io(&p))?;
            Ok(vec![Change::Removed(p)])
        }
        Ok(_) => Err(Error::invalid(format!(
            "{} was not written by kitsnap; delete it yourself if you mean to",
            p.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![Change::Unchanged(p)]),
        Err(e) => Err(io(&p)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_keeps_the_rest() {
        let d = tempfile::tempdir().expect("tempdir");
        let config = d.path().join("config.toml");
        let conf_dir = d.path().join("conf.d");
        let original = "# my containerd\nversion = 2\nroot = \"/var/lib/containerd\"\n\n[grpc]\n  address = \"/run/c.sock\" # keep me\n";
        std::fs::write(&config, original).expect("write");
        let r = Registration {
            config: &config,
            conf_dir: &conf_dir,
            address: Path::new("/run/kitsnap/kitsnap.sock"),
            unpack_platform: None,
        };
        let first = install(&r).expect("install");
        assert_eq!(first.len(), 2, "{first:?}");
        let after = std::fs::read_to_string(&config).expect("read");
        assert!(
            after.contains("# keep me") && after.contains("# my containerd"),
            "{after}"
        );
        assert!(
            after.contains(&format!("imports = [\"{}/*.toml\"]", conf_dir.display())),
            "{after}"
        );
        let second = install(&r).expect("install again");
        assert_eq!(second, vec![Change::Unchanged(conf_dir.join(DROPIN_NAME))]);
        assert_eq!(std::fs::read_to_string(&config).expect("read"), after);
        assert_eq!(
            std::fs::read_to_string(config.with_extension("toml.before-kitsnap")).expect("backup"),
            original
        );
        assert_eq!(remove(&conf_dir).expect("remove").len(), 1);
        assert!(!conf_dir.join(DROPIN_NAME).exists());
    }

    #[test]
    fn refuses_an_appended_registration() {
        let d = tempfile::tempdir().expect("tempdir");
        let config = d.path().join("config.toml");
        std::fs::write(
            &config,
            "version = 2\n[proxy_plugins.kitsnap]\n  type = \"snapshot\"\n",
        )
        .expect("write");
        let r = Registration {
            config: &config,
            conf_dir: d.path(),
            address: Path::new("/s"),
            unpack_platform: None,
        };
        let e = install(&r).expect_err("refused").to_string();
        assert!(e.contains("delete that table"), "{e}");
    }
}
