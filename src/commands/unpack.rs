//! `kitsnap unpack`: a ModelKit's files into a directory, from the store or (only the
//! selected layers) from its registry.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use kitsnap_core::human_bytes;
use kitsnap_core::layers::Filter;
use kitsnap_core::reference::DEFAULT_REGISTRY;
use kitsnap_core::unpack::{self, UnpackOptions};
use kitsnap_registry::transfer;

use crate::cli::RegistryArgs;
use crate::commands::{index, parse_ref};
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
pub struct UnpackArgs {
    /// ModelKit reference: NAME[:TAG] or NAME@sha256:DIGEST.
    pub reference: String,
    /// Target directory.
    #[arg(short = 'd', long = "dir", default_value = ".")]
    pub dir: PathBuf,
    /// What to unpack: TYPE[,TYPE...][:NAME_OR_PATH[,...]]; repeatable.
    #[arg(short = 'f', long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// kit's deprecated type flags (`--model`, `--datasets`, ...): used, as kit uses them,
    /// only without --filter.
    #[command(flatten)]
    pub only: DeprecatedTypes,
    /// Replace files that already exist in the target directory.
    #[arg(short = 'o', long, conflicts_with = "ignore_existing")]
    pub overwrite: bool,
    /// Leave files that already exist as they are and write the others (kit's -i).
    #[arg(short = 'i', long)]
    pub ignore_existing: bool,
    /// REF is a ModelKit index: unpack the one ModelKit carrying this label (KEY=VALUE);
    /// repeatable, every label must match.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Used when REF is not in the local store: only the selected layers are downloaded.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// kit's `--kitfile --model --code --datasets --docs` (deprecated there for --filter).
#[derive(Args, Debug, Default)]
pub struct DeprecatedTypes {
    #[arg(long, hide = true)]
    pub kitfile: bool,
    #[arg(long, hide = true)]
    pub model: bool,
    #[arg(long, hide = true)]
    pub code: bool,
    #[arg(long, hide = true)]
    pub datasets: bool,
    #[arg(long, hide = true)]
    pub docs: bool,
}

impl DeprecatedTypes {
    /// The one filter these flags mean (`model,docs`), if any is set.
    fn filter(&self) -> Option<String> {
        let types: Vec<&str> = [
            (self.kitfile, "kitfile"),
            (self.model, "model"),
            (self.code, "code"),
            (self.datasets, "datasets"),
            (self.docs, "docs"),
        ]
        .into_iter()
        .filter_map(|(on, t)| on.then_some(t))
        .collect();
        (!types.is_empty()).then(|| types.join(","))
    }
}

pub fn run(mut a: UnpackArgs, ctx: &Ctx) -> Result<()> {
    let store = ctx.open_store()?;
    if a.filters.is_empty()
        && let Some(f) = a.only.filter()
    {
        a.filters.push(f);
    }
    let filters = a
        .filters
        .iter()
        .flat_map(|f| f.split(' ').filter(|s| !s.is_empty()))
        .map(|f| f.parse::<Filter>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut r = parse_ref(&a.reference)?;
    if !a.labels.is_empty() {
        r = index::select_modelkit(&store, &r, &a.labels, &a.registry, true)?;
    } else if matches!(store.resolve(&r), Err(kitsnap_core::Error::NotFound(_)))
        && store.resolve_index(&r).is_ok()
    {
        return Err(index::needs_label(&r, "unpack", false));
    }
    // A remote index named without labels: kit's message, with this verb.
    let index_or = |e| index::with_label_hint(e, &r, "unpack");
    let d = match store.resolve(&r) {
        Ok(d) => d,
        Err(kitsnap_core::Error::NotFound(_)) if r.registry != DEFAULT_REGISTRY => {
            let reg = a.registry.registry(&r.registry)?;
            // Into an empty directory the layers stream straight from the registry into
            // their files: written once, nothing stored.
            let empty = std::fs::read_dir(&a.dir).map_or(true, |mut d| d.next().is_none());
            if empty && !a.dir.is_file() {
                let streamed = runtime()?
                    .block_on(transfer::unpack_streaming(
                        &reg,
                        &r,
                        &filters,
                        &a.dir,
                        ctx.progress,
                    ))
                    .map_err(index_or)
                    .with_context(|| format!("unpacking {r}"))?;
                if let Some(rep) = streamed {
                    for (k, p) in &rep.layers {
                        eprintln!("  unpacked {:<9} {p}", k.user_str());
                    }
                    let secs = rep.elapsed.as_secs_f64();
                    eprintln!(
                        "Unpacked {} layer(s){} ({} in {secs:.1} s, streamed from {}) to {}",
                        rep.layers.len(),
                        if rep.kitfile_written {
                            " and the Kitfile"
                        } else {
                            ""
                        },
                        human_bytes(rep.bytes),
                        r.registry,
                        a.dir.display()
                    );
                    return Ok(());
                }
            }
            let (d, rep) = runtime()?
                .block_on(transfer::fetch_selected(
                    &store,
                    &reg,
                    &r,
                    &filters,
                    &a.registry.transfer(ctx.progress),
                ))
                .map_err(index_or)
                .with_context(|| format!("fetching {r}"))?;
            eprintln!(
                "Fetched {} blob(s) ({}) from {}",
                rep.transferred,
                human_bytes(rep.bytes),
                r.registry
            );
            d
        }
        Err(e) => return Err(e.into()),
    };
    // Parent ModelKits (model.path naming one) come from their registry when the store
    // lacks them, as kit's unpack fetches them; only when the model is wanted.
    if kitsnap_core::layers::wants(&filters, kitsnap_core::layers::FilterType::Model) {
        crate::commands::pull::parents(&store, &r, &d, &a.registry, ctx)?;
    }
    let rep = unpack::unpack(
        &store,
        &d,
        &UnpackOptions {
            dest: a.dir.clone(),
            filters,
            overwrite: a.overwrite,
            skip_existing: a.ignore_existing,
            progress: ctx.progress,
        },
    )
    .with_context(|| format!("unpacking {}", a.reference))?;
    for (k, p) in &rep.layers {
        eprintln!("  unpacked {:<9} {p}", k.user_str());
    }
    eprintln!(
        "Unpacked {} layer(s){} ({}) to {}",
        rep.layers.len(),
        if rep.kitfile_written {
            " and the Kitfile"
        } else {
            ""
        },
        human_bytes(rep.bytes),
        a.dir.display()
    );
    Ok(())
}
