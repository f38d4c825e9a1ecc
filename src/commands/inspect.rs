//! `kitsnap inspect`: a ModelKit's manifest, or its image view, from the store or a registry.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use kitsnap_core::imageview::{self, ImageView, Kit};
use kitsnap_core::layers;
use kitsnap_registry::transfer;

use crate::cli::RegistryArgs;
use crate::commands::parse_ref;
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
#[command(
    after_help = "The image view (--image-view) is the OCI image kitsnap serves to \
containerd for a ModelKit: the kit's own layer blobs as image layers, an image config with \
rootfs.diff_ids, listed for every common platform. Its digest is the same on every machine; \
pull a kit by that digest through the node mirror (REF@DIGEST), never by the kit's own."
)]
pub struct InspectArgs {
    /// ModelKit reference: NAME[:TAG] or NAME@sha256:DIGEST.
    pub reference: String,
    /// Read the manifest from the registry instead of the local store.
    #[arg(long, short = 'r')]
    pub remote: bool,
    /// Print the kit's image view (index, manifest, config and the index digest) instead of
    /// its manifest. Compressed layers are read once to compute their diff IDs.
    #[arg(long)]
    pub image_view: bool,
    /// With --image-view: the view of just these layers: TYPE[,TYPE...][:NAME_OR_PATH[,...]];
    /// repeatable.
    #[arg(long = "filter", value_name = "FILTER", requires = "image_view")]
    pub filters: Vec<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(a: InspectArgs, ctx: &Ctx) -> Result<()> {
    let r = parse_ref(&a.reference)?;
    let mut out = crate::output::stdout();
    if a.remote {
        transfer::check_remote(&r)?;
        let reg = a.registry.registry(&r.registry)?;
        let rt = runtime()?;
        let (_, m, desc) = rt.block_on(transfer::remote_manifest(&reg, &r))?;
        if !a.image_view {
            serde_json::to_writer_pretty(&mut out, &m)?;
        } else {
            let config = rt.block_on(reg.get_small_blob(&r.repository, &m.config))?;
            let kit = Kit::new(desc, m, config)?;
            let (filters, text) = layers::parse_filters(&a.filters)?;
            let chosen = kit.select(&filters)?;
            let diffs = rt
                .block_on(transfer::diff_ids(&reg, &r.repository, &kit, &chosen))
                .context("computing the diff IDs of the image view")?;
            print_view(
                &mut out,
                &imageview::synthesize(&kit, &chosen, &diffs, &text)?,
            )?;
        }
    } else {
        let store = ctx.open_store()?;
        let d = store.resolve(&r)?;
        let m = store.manifest(&d)?;
        if !a.image_view {
            serde_json::to_writer_pretty(&mut out, &m)?;
        } else {
            let config = store.read_blob(&m.config)?;
            let kit = Kit::new(d, m, config)?;
            let (filters, text) = layers::parse_filters(&a.filters)?;
            let chosen = kit.select(&filters)?;
            let diffs = imageview::diff_ids_with(&kit, &chosen, |d| store.open_blob(d))?;
            print_view(
                &mut out,
                &imageview::synthesize(&kit, &chosen, &diffs, &text)?,
            )?;
        }
    }
    writeln!(out)?;
    Ok(())
}

fn print_view(out: &mut impl Write, v: &ImageView) -> Result<()> {
    let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b);
    let doc = serde_json::json!({
        "digest": v.index.desc.digest,
        "mediaType": v.index.desc.media_type,
        "size": v.index.desc.size,
        "index": json(&v.index.bytes)?,
        "images": v
            .images
            .iter()
            .map(|i| {
                Ok(serde_json::json!({
                    "platform": i.platform,
                    "manifestDigest": i.manifest.desc.digest,
                    "manifest": json(&i.manifest.bytes)?,
                    "config": json(&i.config.bytes)?,
                }))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?,
        "chainIds": v.chain_ids(),
    });
    serde_json::to_writer_pretty(out, &doc)?;
    Ok(())
}
