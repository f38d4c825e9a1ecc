//! `kitsnap inspect`: a ModelKit's manifest, or its image view, from the store or a registry.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use kitsnap_core::imageview::{self, ImageView, Kit};
use kitsnap_core::kitfile::Kitfile;
use kitsnap_core::layers;
use kitsnap_core::oci::{ANNOTATION_CLI_VERSION, Manifest};
use kitsnap_registry::transfer;
use serde::Serialize;

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
            let kf = layers::kitfile_of(&m, || {
                rt.block_on(reg.get_small_blob(&r.repository, &m.config))
                    .map_err(|e| kitsnap_core::Error::Invalid(e.to_string()))
            })?;
            print_kit(&mut out, &desc.digest, kf.as_ref(), &m)?;
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
            print_kit(&mut out, &d.digest, store.kitfile(&m)?.as_ref(), &m)?;
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

/// kit's `inspect` document: the manifest digest, the CLI version that packed it, the
/// Kitfile (with layer digests) and the manifest, indented as Go's encoder does.
fn print_kit(
    out: &mut impl Write,
    digest: &kitsnap_core::digest::Digest,
    kitfile: Option<&Kitfile>,
    manifest: &Manifest,
) -> Result<()> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc<'a> {
        digest: String,
        cli_version: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        kitfile: Option<&'a Kitfile>,
        manifest: &'a Manifest,
    }
    let doc = Doc {
        digest: digest.to_string(),
        cli_version: manifest
            .annotations
            .get(ANNOTATION_CLI_VERSION)
            .map_or("", String::as_str),
        kitfile,
        manifest,
    };
    write!(out, "{}", crate::output::go_json_pretty(&doc)?)?;
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
