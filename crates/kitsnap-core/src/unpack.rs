//! `unpack`: writes a ModelKit's files into a directory, selectively (`--filter`), with
//! every layer checked by [`crate::extract`].

use std::fs;
use std::io::BufReader;
use std::path::PathBuf;

use crate::digest::HashingReader;
use crate::error::{Error, IoContext, Result};
use crate::extract::{self, IO_BUF};
use crate::kitfile::Kitfile;
use crate::layers::{self, Filter, FilterType, LayerPlan};
use crate::oci::{Descriptor, LayerKind};
use crate::progress::{self, ProgressReader};
use crate::store::Store;

/// KitOps' limit on chained parent ModelKits (`model.path` naming another ModelKit).
pub const MAX_PARENT_CHAIN: usize = 10;

#[derive(Clone, Debug)]
pub struct UnpackOptions {
    pub dest: PathBuf,
    pub filters: Vec<Filter>,
    pub overwrite: bool,
    /// Leave files that already exist (kit's `-i`).
    pub skip_existing: bool,
    pub progress: bool,
}

#[derive(Debug, Default)]
pub struct UnpackReport {
    /// (kind, path) of each layer written.
    pub layers: Vec<(LayerKind, String)>,
    pub kitfile_written: bool,
    pub bytes: u64,
}

/// Unpacks the ModelKit `manifest_desc` from the store into `opts.dest`.
pub fn unpack(
    store: &Store,
    manifest_desc: &Descriptor,
    opts: &UnpackOptions,
) -> Result<UnpackReport> {
    // A file where the target (or one of its parents) should be is said plainly, once.
    if let Some(file) = opts
        .dest
        .ancestors()
        .find(|a| fs::metadata(a).is_ok_and(|m| !m.is_dir()))
    {
        return Err(Error::Invalid(format!(
            "{} is a file, not a directory (-d names the directory to unpack into)",
            file.display()
        )));
    }
    fs::create_dir_all(&opts.dest).at(&opts.dest)?;
    let dest = fs::canonicalize(&opts.dest).at(&opts.dest)?;
    let mut report = UnpackReport::default();
    let manifest = store.manifest(manifest_desc)?;
    let kf = store.kitfile(&manifest)?;

    let want_kitfile = layers::wants(&opts.filters, FilterType::Kitfile);
    // Checked now, written last: a failed unpack leaves no Kitfile describing files
    // that are not there.
    let kitfile = match (want_kitfile, &kf) {
        (true, Some(kf)) => {
            let p = dest.join("Kitfile");
            let exists = fs::symlink_metadata(&p).is_ok();
            if exists && opts.skip_existing {
                None
            } else if exists && !opts.overwrite {
                return Err(Error::Exists(p));
            } else {
                Some((p, kf.to_yaml()?))
            }
        }
        _ => None,
    };

    // Parent chain: the model comes from the ModelKit that model.path names.
    let mut chain = Vec::new();
    if let Some(kf) = &kf {
        let mut parent = kf.model_parent();
        let model_wanted = layers::wants(&opts.filters, FilterType::Model);
        while let (Some(r), true) = (parent.take(), model_wanted) {
            if chain.len() >= MAX_PARENT_CHAIN {
                return Err(Error::Invalid(format!(
                    "more than {MAX_PARENT_CHAIN} chained parent ModelKits"
                )));
            }
            let pd = store.resolve(&r).map_err(|_| {
                Error::NotFound(format!(
                    "parent ModelKit {r} (named by model.path; pull it first)"
                ))
            })?;
            let pm = store.manifest(&pd)?;
            let pkf = store.kitfile(&pm)?;
            parent = pkf.as_ref().and_then(Kitfile::model_parent);
            chain.push((pm, pkf));
        }
    }

    let mut work: Vec<LayerPlan> = Vec::new();
    for (pm, pkf) in &chain {
        work.extend(
            layers::plan_layers(pm, pkf.as_ref())?
                .into_iter()
                .filter(|l| matches!(l.kind, LayerKind::Model | LayerKind::ModelPart)),
        );
    }
    work.extend(layers::plan_layers(&manifest, kf.as_ref())?);
    let all = work.clone();
    work.retain(|l| {
        layers::selected(
            &opts.filters,
            FilterType::for_kind(l.kind),
            &l.name,
            &l.path,
        )
    });

    if !opts.filters.is_empty() && work.is_empty() && kitfile.is_none() {
        let held = all
            .iter()
            .map(|l| {
                if l.name.is_empty() || l.name == l.path {
                    format!("{} {}", l.kind.user_str(), l.path)
                } else {
                    format!("{} {} ({})", l.kind.user_str(), l.path, l.name)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::Invalid(format!(
            "no layer matches the filter; the ModelKit holds: {}",
            if held.is_empty() { "no layers" } else { &held }
        )));
    }

    // Every conflict in the target is found before the first byte is written: a run that
    // would stop half-way on an existing file never starts. An empty target has none.
    let target_empty = fs::read_dir(&dest).at(&dest)?.next().is_none();
    if !opts.overwrite && !opts.skip_existing && !target_empty {
        let mut found = Vec::new();
        for l in &work {
            for p in extract::conflicts(store.open_blob(&l.desc.digest)?, l, &dest)? {
                if !found.contains(&p) {
                    found.push(p);
                }
            }
        }
        if !found.is_empty() {
            return Err(Error::Conflicts(found));
        }
    }

    let total = work.iter().map(|l| l.desc.size).sum();
    let bar = progress::bytes(total, "unpacking", opts.progress);
    for l in &work {
        bar.set_message(format!("{} {}", l.kind.user_str(), l.path));
        let file = store.open_blob(&l.desc.digest)?;
        let reader = ProgressReader::new(BufReader::with_capacity(IO_BUF, file), bar.clone());
        extract::extract(
            HashingReader::new(reader),
            l,
            &dest,
            extract::ExtractOptions {
                overwrite: opts.overwrite,
                skip_existing: opts.skip_existing,
                max_bytes: None,
            },
        )?;
        report.layers.push((l.kind, l.path.clone()));
        report.bytes += l.desc.size;
    }
    bar.finish_and_clear();
    if let Some((p, yaml)) = kitfile {
        let _ = fs::remove_file(&p);
        fs::write(&p, yaml).at(&p)?;
        report.kitfile_written = true;
    }
    Ok(report)
}
