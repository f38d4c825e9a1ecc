//! `kitsnap push`: a stored ModelKit to a registry.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use kitsnap_registry::transfer;

use crate::cli::RegistryArgs;
use crate::commands::parse_ref;
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Local ModelKit.
    pub source: String,
    /// Registry location (default: SOURCE).
    pub destination: Option<String>,
    /// Do not publish a lazy index (the referrer that lets `kitsnap serve` nodes start
    /// containers before the model has arrived; see `kitsnap serve --help`).
    #[arg(long)]
    pub no_lazy_index: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(a: PushArgs, ctx: &Ctx) -> Result<()> {
    let store = ctx.open_store()?;
    let src = parse_ref(&a.source)?;
    let dst = match &a.destination {
        Some(d) => parse_ref(d)?,
        None => src.clone(),
    };
    let reg = a.registry.registry(&dst.registry)?;
    let rt = runtime()?;
    // The index is read from the blobs while they go up: a second core, the same page cache.
    let index = (!a.no_lazy_index).then(|| {
        let (store, src) = (store.clone(), src.clone());
        rt.spawn_blocking(move || -> Result<_> {
            let m = store.manifest(&store.resolve(&src)?)?;
            Ok(transfer::build_lazy_index(&store, &m)?)
        })
    });
    let rep = rt
        .block_on(transfer::push(
            &store,
            &reg,
            &src,
            &dst,
            &a.registry.transfer(ctx.progress),
        ))
        .with_context(|| format!("pushing {src} to {dst}"))?;
    eprintln!("{dst}: {}", rep.summary("pushed", "already there"));
    if let (Some(index), Some(m)) = (index, &rep.manifest) {
        let published = rt.block_on(async {
            match index.await.context("indexing the layers")?? {
                Some(i) => Ok(Some(
                    transfer::publish_lazy_index(&reg, &dst.repository, m, &i).await?,
                )),
                None => Ok::<_, anyhow::Error>(None),
            }
        });
        match published {
            Ok(Some(d)) => {
                eprintln!("{dst}: lazy index {d} (nodes can serve it before it has arrived)")
            }
            Ok(None) => {}
            // The ModelKit itself is pushed and whole: nodes pull it before starting containers.
            Err(e) => eprintln!(
                "warning: {dst}: lazy index not published ({e:#}); nodes will pull the model whole before starting containers"
            ),
        }
    }
    if let Some(d) = rep.manifest {
        writeln!(crate::output::stdout(), "{}", d.digest)?;
    }
    Ok(())
}
