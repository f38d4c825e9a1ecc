//! `kitsnap pull`: a ModelKit from a registry into the local store, or (`--containerd`)
//! into containerd through `kitsnap serve`.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use kitsnap_core::human_bytes;
use kitsnap_registry::transfer;

use crate::cli::{DaemonArgs, RegistryArgs};
use crate::client;
use crate::commands::{index, parse_ref};
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
pub struct PullArgs {
    /// ModelKit to pull: REGISTRY/REPO[:TAG] or REGISTRY/REPO@sha256:DIGEST.
    pub reference: String,
    /// Pull into containerd instead (through kitsnap serve): content store, image record,
    /// one kitsnap snapshot per layer. A REF in the local store is taken from there.
    #[arg(long)]
    pub containerd: bool,
    /// With --containerd: also keep every layer blob in containerd's content store, so
    /// that a snapshotter other than kitsnap (e.g. the CRI's overlayfs) can unpack the
    /// image view. Costs one more copy of each uncompressed layer.
    #[arg(long, requires = "containerd")]
    pub keep_blobs: bool,
    /// With --containerd: commit layers that have a lazy index (`kitsnap push` publishes
    /// one) at once and let the daemon fill them as they are read, each 4 MiB chunk
    /// verified before it is served; the pull returns before the model has arrived.
    /// Without it the pull returns when every byte is on the node and verified.
    #[arg(long, requires = "containerd")]
    pub lazy: bool,
    /// REF is a ModelKit index: pull the one ModelKit carrying this label (KEY=VALUE;
    /// repeatable, every label must match); it takes REF's tag in the store.
    #[arg(
        short = 'l',
        long = "label",
        value_name = "KEY=VALUE",
        conflicts_with = "containerd"
    )]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(a: PullArgs, ctx: &Ctx) -> Result<()> {
    if a.containerd {
        into_containerd(a, ctx)
    } else {
        into_store(a, ctx)
    }
}

fn into_store(a: PullArgs, ctx: &Ctx) -> Result<()> {
    let store = ctx.open_store()?;
    let r = parse_ref(&a.reference)?;
    let reg = a.registry.registry(&r.registry)?;
    if !a.labels.is_empty() {
        return from_index(&store, &reg, &r, &a, ctx);
    }
    let rep = runtime()?
        .block_on(transfer::pull(
            &store,
            &reg,
            &r,
            &a.registry.transfer(ctx.progress),
        ))
        .map_err(|e| index::with_label_hint(e, &r, "pull"))
        .with_context(|| format!("pulling {r}"))?;
    eprintln!("{r}: {}", rep.summary("pulled", "already stored"));
    // As kit does: the parent ModelKits its model.path names come too.
    let Some(d) = rep.manifest else {
        return Ok(());
    };
    parents(&store, &r, &d, &a.registry, ctx)?;
    writeln!(crate::output::stdout(), "{}", d.digest)?;
    Ok(())
}

/// `pull -l`: the ModelKit the labels select from the index `r`, which takes `r`'s tag in
/// the store, as a multi-platform image's manifest takes its index's tag. Labels on a
/// ModelKit are ignored with a warning, as kit does.
fn from_index(
    store: &kitsnap_core::store::Store,
    reg: &kitsnap_registry::Registry,
    r: &kitsnap_core::reference::Reference,
    a: &PullArgs,
    ctx: &Ctx,
) -> Result<()> {
    let rt = runtime()?;
    let target = match rt.block_on(transfer::remote_kit_or_index(reg, r))? {
        transfer::Remote::Kit(..) => {
            eprintln!(
                "warning: Labels are ignored: {} is a ModelKit, not a ModelKit index",
                index::display(r)
            );
            r.clone()
        }
        // The registry's index, just fetched (a local copy may be older).
        transfer::Remote::Index(_, idx, _) => {
            let selector = kitsnap_core::index::parse_label_selector(&a.labels)
                .context("Invalid arguments")?;
            index::select_from(&idx, r, &selector)?
        }
    };
    let _w = store.writer_lock()?;
    let rep = rt
        .block_on(transfer::pull_content(
            store,
            reg,
            &target,
            &a.registry.transfer(ctx.progress),
        ))
        .with_context(|| format!("pulling {target}"))?;
    let Some(d) = rep.manifest.clone() else {
        return Ok(());
    };
    store.name_pulled(r, &d)?;
    eprintln!("{r}: {}", rep.summary("pulled", "already stored"));
    parents(store, r, &d, &a.registry, ctx)?;
    writeln!(crate::output::stdout(), "{}", d.digest)?;
    Ok(())
}

/// The parent ModelKits of `r` (stored as `d`) into the store, as kit fetches them on pull
/// and unpack; each one pulled is reported.
pub(crate) fn parents(
    store: &kitsnap_core::store::Store,
    r: &kitsnap_core::reference::Reference,
    d: &kitsnap_core::oci::Descriptor,
    registry: &RegistryArgs,
    ctx: &Ctx,
) -> Result<()> {
    let pulled = runtime()?
        .block_on(transfer::pull_parents(
            store,
            r,
            d,
            &registry.client_options(),
            &registry.transfer(ctx.progress),
        ))
        .with_context(|| format!("pulling the parent ModelKits of {r}"))?;
    for p in pulled {
        eprintln!("{p}: pulled (parent ModelKit)");
    }
    Ok(())
}

fn into_containerd(a: PullArgs, ctx: &Ctx) -> Result<()> {
    let r = parse_ref(&a.reference)?;
    let res = runtime()?
        .block_on(client::pull(
            &a.daemon.address,
            client::PullArgs {
                reference: r.to_string(),
                namespace: a.daemon.namespace.clone(),
                store: ctx.existing_store(),
                registry: a.registry.node_options()?,
                keep_blobs: a.keep_blobs,
                lazy: a.lazy,
                progress: ctx.progress,
            },
        ))
        .with_context(|| format!("pulling {r} into containerd"))?;
    eprintln!(
        "Pulled {} into containerd (namespace {}, from the {}): {} layer(s) unpacked ({}{}), {} already on this node; image view {}, top snapshot {}",
        res.image,
        a.daemon.namespace,
        res.source,
        res.layers_unpacked,
        human_bytes(res.bytes_fetched),
        if res.layers_lazy > 0 {
            format!(
                "; {} served lazily, filling in the background",
                res.layers_lazy
            )
        } else {
            String::new()
        },
        res.layers_reused,
        res.view_digest,
        res.top_snapshot
    );
    writeln!(crate::output::stdout(), "{}", res.manifest_digest)?;
    Ok(())
}
