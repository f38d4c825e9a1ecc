//! `kitsnap pack`: a directory and its Kitfile into a ModelKit in the local store.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use kitsnap_core::human_bytes;
use kitsnap_core::oci::ModelFormat;
use kitsnap_core::pack::{self, LayerFormat, PackOptions, PackResult};
use kitsnap_core::reference::Reference;
use kitsnap_core::store::Store;

use kitsnap_registry::transfer;

use crate::cli::RegistryArgs;
use crate::commands::parse_ref;
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
pub struct PackArgs {
    /// Context directory: Kitfile paths are relative to it.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Kitfile to use (default: Kitfile, kitfile or .kitfile in DIR; `-` reads it from
    /// standard input).
    #[arg(short = 'f', long = "file")]
    pub kitfile: Option<PathBuf>,
    /// Name for the ModelKit, NAME[:TAG[,TAG...]] (tag defaults to latest; more tags after
    /// commas). Without it the ModelKit is stored untagged, as kit does (listed as <none>).
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG[,TAG...]]")]
    pub tag: Option<String>,
    /// Layer compression. gzip (level 6; gzip-fastest: level 1) runs on two threads and
    /// stores 1 MiB blocks that deflate cannot shrink by 1/128 (quantized weights, archives,
    /// media) instead of spending a core on them; zstd is level 3 on two threads.
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "gzip-fastest", "zstd"])]
    pub compression: String,
    /// Write a CNCF ModelPack (model-spec v1) instead of a KitOps ModelKit.
    #[arg(long)]
    pub use_model_pack: bool,
    /// What each layer holds: `tar` (the entry's files in a tar), or, with --use-model-pack,
    /// `raw`: the entry's one file as it is, with its mode and mtime in the layer's
    /// annotations, as `modctl build` writes it (each entry must name a single file).
    #[arg(long, value_name = "FORMAT", value_parser = ["tar", "raw"])]
    pub layer_format: Option<String>,
    /// Pack straight into the registry named by --tag, with no local copy: each layer is
    /// streamed into a chunked upload while it is hashed (a 100 GB model needs no 100 GB
    /// of disk). The manifest goes last, so a failure leaves nothing tagged.
    #[arg(long)]
    pub push: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(a: PackArgs, ctx: &Ctx) -> Result<()> {
    // kit's `-t name:v1,v2`: the first tag names the pack, the others are added.
    let (first, extra) = match &a.tag {
        Some(t) => {
            let (name, tags) = t
                .rsplit_once(':')
                .filter(|(_, t)| !t.contains('/'))
                .map_or((t.as_str(), ""), |(n, t)| (n, t));
            let mut tags = tags.split(',').filter(|t| !t.is_empty());
            let first = match tags.next() {
                Some(tag) => format!("{name}:{tag}"),
                None => name.to_string(),
            };
            let extra: Vec<String> = tags.map(|t| format!("{name}:{t}")).collect();
            (Some(first), extra)
        }
        None => (None, Vec::new()),
    };
    let untagged = first.is_none();
    // An untagged pack still needs a reference for the code below; nothing is tagged.
    let reference = parse_ref(first.as_deref().unwrap_or("untagged"))?;
    if reference.digest.is_some() {
        bail!("--tag takes NAME[:TAG], not a digest");
    }
    if a.push && (untagged || !extra.is_empty()) {
        bail!(
            "--push needs exactly one REGISTRY/REPO:TAG in --tag (push more tags afterwards with `kitsnap push`)"
        );
    }
    let extra = extra
        .iter()
        .map(|t| parse_ref(t))
        .collect::<Result<Vec<_>>>()?;
    let layer_format: LayerFormat = a.layer_format.as_deref().unwrap_or("tar").parse()?;
    if layer_format == LayerFormat::Raw && !a.use_model_pack {
        bail!(
            "--layer-format raw needs --use-model-pack: raw layers are a ModelPack (CNCF model-spec) format; a KitOps ModelKit's layers are tars (kit v1.7 has no --layer-format)"
        );
    }
    let opts = PackOptions {
        context: a.dir.clone(),
        kitfile: a.kitfile.clone(),
        reference: reference.clone(),
        compression: a.compression.parse()?,
        format: if a.use_model_pack {
            ModelFormat::ModelPack
        } else {
            ModelFormat::Kit
        },
        layer_format,
        progress: ctx.progress,
    };
    if a.push {
        return push(&a, &opts);
    }
    let store = ctx.open_store()?;
    let res = if untagged {
        pack::pack_untagged(&store, &opts)
    } else {
        pack::pack(&store, &opts)
    }
    .with_context(|| format!("packing {}", a.dir.display()))?;
    tag_and_report(&store, &res, &extra)?;
    let tag = reference.tag_or_default().unwrap_or("latest");
    let named = if untagged {
        "an untagged ModelKit".to_string()
    } else {
        let mut n = format!("{}:{tag}", reference.name());
        for r in &extra {
            n.push_str(&format!(", :{}", r.tag_or_default().unwrap_or("latest")));
        }
        n
    };
    eprintln!(
        "Packed {named} ({} layers, {} already stored)",
        res.layers.len(),
        res.reused
    );
    writeln!(crate::output::stdout(), "{}", res.manifest.digest)?;
    Ok(())
}

/// After a pack: the extra tags of `-t NAME:T1,T2`, then the warnings and one line per layer.
pub(crate) fn tag_and_report(store: &Store, res: &PackResult, extra: &[Reference]) -> Result<()> {
    for r in extra {
        store.tag(r, &res.manifest)?;
    }
    for w in &res.warnings {
        eprintln!("warning: {w}");
    }
    for (kind, path, d) in &res.layers {
        eprintln!(
            "  {:<9} {:<40} {:>10}  {}",
            kind.user_str(),
            path,
            human_bytes(d.size),
            d.digest.short()
        );
    }
    Ok(())
}

fn push(a: &PackArgs, opts: &PackOptions) -> Result<()> {
    let r = &opts.reference;
    let reg = a.registry.registry(&r.registry)?;
    let rep = runtime()?
        .block_on(transfer::pack_push(&reg, opts))
        .with_context(|| format!("packing {} into {r}", a.dir.display()))?;
    for w in &rep.warnings {
        eprintln!("warning: {w}");
    }
    let secs = rep.elapsed.as_secs_f64();
    eprintln!(
        "{r}: packed and pushed {} layers, {} in {secs:.1} s ({}/s){}; nothing stored locally",
        rep.layers.len(),
        human_bytes(rep.bytes),
        human_bytes((rep.bytes as f64 / secs.max(1e-9)) as u64),
        if rep.fell_back {
            " (the registry refuses chunked uploads: each layer was hashed first, then sent in one PUT)"
        } else {
            ""
        }
    );
    writeln!(crate::output::stdout(), "{}", rep.manifest.digest)?;
    Ok(())
}
