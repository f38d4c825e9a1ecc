//! `kitsnap remove`: untags ModelKits and collects the blobs nothing references, with
//! kit's semantics: `--all` removes untagged ModelKits only, `--all --force` every tag
//! (ModelKits an index refers to keep their content while it exists).

use anyhow::{Context, Result, bail};
use clap::Args;
use kitsnap_core::human_bytes;
use kitsnap_core::reference::Reference;

use kitsnap_registry::transfer;

use crate::cli::RegistryArgs;
use crate::commands::parse_ref;
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// ModelKits to remove: NAME[:TAG[,TAG...]] or NAME@DIGEST (every tag of it).
    pub references: Vec<String>,
    /// Remove every untagged ModelKit; with --force, every ModelKit in the store.
    #[arg(long, short = 'a')]
    pub all: bool,
    /// With a tag: remove the ModelKit and every other tag that refers to it.
    /// With --all: remove tagged ModelKits too.
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Also remove untagged ModelKits (as --all does without --force).
    #[arg(long)]
    pub prune: bool,
    /// Delete the ModelKits from their registry instead (the manifest, by digest: every
    /// tag of it goes too); the local store is left alone.
    #[arg(long, short = 'r', conflicts_with_all = ["all", "force", "prune"])]
    pub remote: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Splits kit's `repo:tag1,tag2` into one reference per tag.
fn expand(r: &str) -> Result<Vec<Reference>> {
    let (base, tags) = match r.rfind(':') {
        Some(i) if !r[i + 1..].contains('/') && !r.contains('@') && r[i + 1..].contains(',') => {
            (&r[..i], r[i + 1..].split(',').collect::<Vec<_>>())
        }
        _ => return Ok(vec![parse_ref(r)?]),
    };
    tags.iter()
        .map(|t| {
            if t.is_empty() {
                bail!("{r}: empty tag in the list; write NAME:TAG1,TAG2");
            }
            parse_ref(&format!("{base}:{t}"))
        })
        .collect()
}

pub fn run(a: RemoveArgs, ctx: &Ctx) -> Result<()> {
    if a.references.is_empty() && !a.all && !a.prune {
        bail!(
            "name the ModelKits to remove, or use --all (untagged ModelKits) or --all --force (every ModelKit)"
        );
    }
    if a.all && !a.references.is_empty() {
        bail!("--all removes by itself: drop the names, or drop --all");
    }
    let refs = a
        .references
        .iter()
        .map(|r| expand(r))
        .collect::<Result<Vec<_>>>()?;
    if a.remote {
        return remove_remote(&a.registry, refs.iter().flatten());
    }
    let store = ctx.open_store()?;
    let mut removed = 0;
    if a.all && a.force {
        removed += store.untag_all()?;
    } else {
        for r in refs.iter().flatten() {
            let target = if a.force && r.digest.is_none() {
                // Every tag of the same manifest goes with it.
                let desc = store.resolve(r).with_context(|| format!("removing {r}"))?;
                r.at_digest(&desc.digest)
            } else {
                r.clone()
            };
            let n = match store.untag(&target) {
                Err(kitsnap_core::Error::NotFound(_)) if store.resolve_index(r).is_ok() => {
                    anyhow::bail!(
                        "removing {r}: it names a ModelKit index, not a ModelKit; `kitsnap index delete {r}` deletes it"
                    )
                }
                other => other.with_context(|| format!("removing {r}"))?,
            };
            removed += n;
        }
        if a.prune || a.all {
            removed += store.prune_untagged()?;
        }
    }
    let st = store.gc()?;
    let temps = if st.temp_files_removed > 0 {
        format!(
            " and {} unfinished temporary file(s)",
            st.temp_files_removed
        )
    } else {
        String::new()
    };
    eprintln!(
        "Removed {removed} entr{}; freed {} in {} blob(s){temps}",
        if removed == 1 { "y" } else { "ies" },
        human_bytes(st.bytes_freed),
        st.blobs_removed
    );
    Ok(())
}

/// `DELETE`s each manifest from its registry, with kit's messages for what is not there
/// and for registries that do not delete.
fn remove_remote<'a>(args: &RegistryArgs, refs: impl Iterator<Item = &'a Reference>) -> Result<()> {
    let rt = runtime()?;
    for r in refs {
        transfer::check_remote(r)?;
        let reg = args.registry(&r.registry)?;
        let reference = match &r.digest {
            Some(d) => d.to_string(),
            None => r.tag_or_default().unwrap_or_default().to_string(),
        };
        match rt.block_on(reg.delete_manifest(&r.repository, &reference)) {
            Ok(d) => eprintln!("Removed {r} from {} (digest {d})", r.registry),
            Err(kitsnap_registry::Error::Status { status: 404, .. }) => {
                bail!("model {r} not found")
            }
            Err(kitsnap_registry::Error::Status { status: 405, .. }) => {
                bail!("removing models is unsupported by registry {}", r.registry)
            }
            Err(e) => return Err(e).with_context(|| format!("failed to remove remote model {r}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_tags() {
        let v = expand("reg.io:5000/org/m:a,b").expect("parse");
        let tags: Vec<_> = v
            .iter()
            .map(|r| r.tag.clone().unwrap_or_default())
            .collect();
        assert_eq!(tags, ["a", "b"]);
        assert!(v.iter().all(|r| r.registry == "reg.io:5000"));
        assert_eq!(expand("m:v1").expect("parse").len(), 1);
        assert!(expand("m:a,").is_err());
    }
}
