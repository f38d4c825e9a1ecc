//! ModelKits as extra lower layers of a container's rootfs.
//!
//! A container asks for a ModelKit with the snapshot label
//! `containerd.io/snapshot/kitsnap.modelkit=REF[:/DEST]` (and optionally
//! `containerd.io/snapshot/kitsnap.filter=model,...`). Overlayfs cannot graft a lower
//! layer at a sub-path, so kitsnap builds a *tree*: `DEST/` holding hardlinks to the files
//! of the ModelKit's layer snapshots. No byte of the weights is copied; a tree is built
//! once per (layers, destination) and shared by every container that asks for it; the
//! last container's snapshot removal deletes it. The hardlinks also keep the files alive
//! for running containers if containerd's GC removes the ModelKit meanwhile.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{Result, SnapError};
use crate::labels as label;

pub const DEFAULT_DEST: &str = "/models";

/// A ModelKit pulled into containerd on this node (written by the pull).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KitRecord {
    pub namespace: String,
    pub reference: String,
    pub manifest_digest: String,
    /// Bottom first; a pull never records a kit without layers.
    pub layers: Vec<KitLayer>,
    pub pulled: i64,
    /// The image view registered under `reference`: index, manifest and config digests
    /// (empty in records written before image views).
    #[serde(default)]
    pub view: Vec<String>,
}

impl KitRecord {
    /// The containerd name of the top layer snapshot.
    pub fn top(&self) -> &str {
        self.layers
            .last()
            .map(|l| l.chain.as_str())
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KitLayer {
    pub digest: String,
    pub media_type: String,
    /// `model`, `dataset`, ... (`LayerKind::user_str`).
    pub kind: String,
    pub name: String,
    pub path: String,
    pub size: u64,
    /// containerd name of the snapshot ending at this layer: the image view's chain ID.
    pub chain: String,
    /// The digest of the layer's uncompressed tar (empty in records written before).
    #[serde(default)]
    pub diff_id: String,
}

pub fn kit_key(namespace: &str, reference: &str) -> String {
    format!("{namespace}\n{reference}")
}

/// `REF[:/DEST]` -> (REF, DEST); references contain `:` but never `:/`.
pub fn parse_modelkit_label(v: &str) -> Result<(String, String)> {
    let (r, dest) = match v.rsplit_once(":/") {
        Some((r, d)) => (r.to_string(), format!("/{d}")),
        None => {
            // `REF:models` is a relative directory after a reference, not a reference.
            use kitsnap_core::reference::Reference;
            if let Some((r, d)) = v.rsplit_once(':')
                && v.parse::<Reference>().is_err()
                && r.parse::<Reference>().is_ok()
                && !d.is_empty()
            {
                return Err(SnapError::InvalidArgument(format!(
                    "{}={v:?}: the directory {d:?} must be absolute: {r}:/{d}",
                    label::MODELKIT
                )));
            }
            (v.to_string(), DEFAULT_DEST.to_string())
        }
    };
    let rel = dest.trim_start_matches('/');
    if r.is_empty()
        || rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(SnapError::InvalidArgument(format!(
            "{}={v:?}: want REF or REF:/absolute/dir (no `..`, not `/`)",
            label::MODELKIT
        )));
    }
    Ok((r, dest))
}

/// Parses `0,2,3` (layer indices from the bottom).
pub fn parse_layers_label(v: &str) -> Result<Vec<usize>> {
    v.split(',')
        .map(|s| {
            s.trim().parse::<usize>().map_err(|_| {
                SnapError::InvalidArgument(format!(
                    "{}={v:?}: want indices like 0,2",
                    label::LAYERS
                ))
            })
        })
        .collect()
}

/// The name of the tree for `layers` (fs dirs, bottom first) under `dest`: lowercase
/// hex, so `.tmp-<name>-<suffix>` and `rm-<name>-<suffix>` parse back.
pub fn tree_name(layers: &[PathBuf], dest: &str) -> String {
    let mut h = Sha256::new();
    h.update(dest.as_bytes());
    for l in layers {
        h.update(b"\0");
        h.update(l.as_os_str().as_encoded_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// The tree for `layers` (fs dirs, bottom first) under `dest`, built if missing.
/// Returns its name under `trees_dir`. The caller keeps concurrent builds of one tree
/// apart (the snapshotter claims the name first).
pub fn ensure_tree(trees_dir: &Path, layers: &[PathBuf], dest: &str) -> Result<String> {
    let name = tree_name(layers, dest);
    let path = trees_dir.join(&name);
    if path.exists() {
        return Ok(name);
    }
    fs::create_dir_all(trees_dir)?;
    // Built aside and renamed in: a crash leaves only a `.tmp-` dir that cleanup removes.
    let tmp = trees_dir.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let res = (|| -> Result<()> {
        let top = tmp.join(dest.trim_start_matches('/'));
        fs::create_dir_all(&top)?;
        for l in layers {
            link_tree(l, &top)?;
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match fs::rename(&tmp, &path) {
        Ok(()) => {}
        // Someone built the same tree meanwhile: theirs is as good.
        Err(_) if path.exists() => {
            let _ = fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e.into());
        }
    }
    Ok(name)
}

/// Mirrors `src` into `dst`: directories are made (with their modes), everything else is
/// hardlinked; an upper layer's entry replaces a lower one's.
fn link_tree(src: &Path, dst: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((s, d)) = stack.pop() {
        for e in fs::read_dir(&s)? {
            let e = e?;
            let from = e.path();
            let to = d.join(e.file_name());
            let ft = e.file_type()?;
            if ft.is_dir() {
                match fs::symlink_metadata(&to) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&to)?;
                        fs::create_dir(&to)?;
                    }
                    Err(_) => fs::create_dir(&to)?,
                }
                let mode = e.metadata()?.permissions().mode();
                fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
                stack.push((from, to));
            } else {
                match fs::symlink_metadata(&to) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(&to)?,
                    Ok(_) => fs::remove_file(&to)?,
                    Err(_) => {}
                }
                match fs::hard_link(&from, &to) {
                    Ok(()) => {}
                    // A lazy layer (FUSE) cannot be linked from: its files are copied,
                    // each byte verified as it is read.
                    Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
                        if ft.is_symlink() {
                            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
                        } else {
                            fs::copy(&from, &to)?;
                        }
                        // As a hard link would: the same owner (the mode came with the copy).
                        let m = fs::symlink_metadata(&from)?;
                        std::os::unix::fs::lchown(&to, Some(m.uid()), Some(m.gid()))?;
                    }
                    Err(err) => {
                        return Err(SnapError::Internal(format!(
                            "hardlinking {} into a ModelKit tree: {err}",
                            from.display()
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn labels_parse() {
        assert_eq!(
            parse_modelkit_label("localhost:5000/kits/m:v1:/models/llm").unwrap(),
            ("localhost:5000/kits/m:v1".into(), "/models/llm".into())
        );
        assert_eq!(
            parse_modelkit_label("reg.io/m@sha256:ab").unwrap(),
            ("reg.io/m@sha256:ab".into(), "/models".into())
        );
        for bad in ["r:/", "r:/../x", ":/models", "r:/a//b"] {
            assert!(parse_modelkit_label(bad).is_err(), "{bad}");
        }
        let e = parse_modelkit_label("localhost:5000/m:v1:models")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("must be absolute") && e.contains("localhost:5000/m:v1:/models"),
            "{e}"
        );
        assert_eq!(parse_layers_label("0, 2").unwrap(), vec![0, 2]);
        assert!(parse_layers_label("x").is_err());
    }

    #[test]
    fn tree_hardlinks_upper_wins_and_is_shared() {
        let d = tempfile::tempdir().unwrap();
        let (l1, l2) = (d.path().join("l1"), d.path().join("l2"));
        fs::create_dir_all(l1.join("sub")).unwrap();
        fs::create_dir_all(l2.join("sub")).unwrap();
        fs::write(l1.join("sub/w.bin"), b"weights").unwrap();
        fs::write(l1.join("same"), b"lower").unwrap();
        fs::write(l2.join("same"), b"upper").unwrap();
        std::os::unix::fs::symlink("sub/w.bin", l2.join("link")).unwrap();
        let trees = d.path().join("trees");
        let n = ensure_tree(&trees, &[l1.clone(), l2.clone()], "/models/x").unwrap();
        let root = trees.join(&n).join("models/x");
        assert_eq!(fs::read(root.join("same")).unwrap(), b"upper");
        assert_eq!(
            fs::metadata(root.join("sub/w.bin")).unwrap().ino(),
            fs::metadata(l1.join("sub/w.bin")).unwrap().ino(),
            "hardlinked, not copied"
        );
        assert_eq!(
            fs::read_link(root.join("link")).unwrap(),
            Path::new("sub/w.bin")
        );
        assert_eq!(ensure_tree(&trees, &[l1, l2], "/models/x").unwrap(), n);
        assert_eq!(fs::read_dir(&trees).unwrap().count(), 1);
    }
}
