//! `kitsnap diff`: two ModelKits' configs, annotations and layers side by side, as kit's
//! `diff` prints them.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use kitsnap_core::oci::{Descriptor, LayerType, Manifest};
use kitsnap_core::reference::Reference;
use kitsnap_registry::transfer;

use crate::cli::RegistryArgs;
use crate::commands::parse_ref;
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
#[command(
    after_help = "A reference prefixed with local:// is read from the local store only, one \
prefixed with remote:// from its registry only; without a prefix the store is tried first, \
then the registry.\n\nExamples:\n  kitsnap diff registry.example.com/org/m:v1 \
registry.example.com/org/m:v2\n  kitsnap diff local://registry.example.com/org/m:v1 \
remote://registry.example.com/org/m:v1"
)]
pub struct DiffArgs {
    /// The first ModelKit ([local://|remote://]REF).
    pub first: String,
    /// The second ModelKit ([local://|remote://]REF).
    pub second: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Where to read a ModelKit from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum From {
    Local,
    Remote,
    Either,
}

fn split(arg: &str) -> (From, &str) {
    if let Some(r) = arg.strip_prefix("remote://") {
        (From::Remote, r)
    } else if let Some(r) = arg.strip_prefix("local://") {
        (From::Local, r)
    } else {
        (From::Either, arg)
    }
}

pub fn run(a: DiffArgs, ctx: &Ctx) -> Result<()> {
    let (fa, ra) = split(&a.first);
    let (fb, rb) = split(&a.second);
    let (ra, rb) = (parse_ref(ra)?, parse_ref(rb)?);
    let (da, ma) = manifest(&a, ctx, fa, &ra).context("reading ModelKit1")?;
    let (db, mb) = manifest(&a, ctx, fb, &rb).context("reading ModelKit2")?;
    let mut out = crate::output::stdout();
    if da.digest == db.digest {
        writeln!(out, "ModelKits are identical")?;
        return Ok(());
    }
    write_diff(&mut out, &ra, &rb, &ma, &mb)?;
    Ok(())
}

fn manifest(a: &DiffArgs, ctx: &Ctx, from: From, r: &Reference) -> Result<(Descriptor, Manifest)> {
    if from != From::Remote {
        let local = ctx
            .open_store()
            .and_then(|s| Ok((s.resolve(r)?, s)))
            .and_then(|(d, s)| Ok((s.manifest(&d)?, d)));
        match local {
            Ok((m, d)) => return Ok((d, m)),
            Err(e) if from == From::Local => return Err(e),
            Err(_) => {}
        }
    }
    transfer::check_remote(r)?;
    let reg = a.registry.registry(&r.registry)?;
    let (_, m, d) = runtime()?
        .block_on(transfer::remote_manifest(&reg, r))
        .with_context(|| format!("fetching the manifest of {r}"))?;
    Ok((d, m))
}

/// kit's report, line for line; layers in manifest order within each media type (kit's
/// order among equal media types is Go's unstable sort).
fn write_diff(
    out: &mut impl Write,
    ra: &Reference,
    rb: &Reference,
    ma: &Manifest,
    mb: &Manifest,
) -> Result<()> {
    const RULE: &str = "---------------------------------------";
    let short = |d: &str| d.chars().take(17).collect::<String>();
    writeln!(out, "Comparing:")?;
    writeln!(out, "  ModelKit1: {ra}")?;
    writeln!(out, "  ModelKit2: {rb}\n")?;
    writeln!(out, "Configurations:\n{RULE}")?;
    if ma.config.digest == mb.config.digest {
        writeln!(
            out,
            "  Configs are identical (Digest: {})\n",
            short(ma.config.digest.as_str())
        )?;
    } else {
        writeln!(out, "Configs differ:")?;
        writeln!(
            out,
            "  ModelKit1 Config Digest: {}",
            short(ma.config.digest.as_str())
        )?;
        writeln!(
            out,
            "  ModelKit2 Config Digest: {}\n",
            short(mb.config.digest.as_str())
        )?;
    }
    writeln!(out, "Annotations:\n{RULE}")?;
    if ma.annotations == mb.annotations {
        writeln!(out, "  Annotations are identical \n")?;
    } else {
        writeln!(out, "  Annotations does not match\n")?;
    }
    let mut in_a: HashMap<&str, &Descriptor> =
        ma.layers.iter().map(|l| (l.digest.as_str(), l)).collect();
    let (mut shared, mut only_b) = (Vec::new(), Vec::new());
    for l in &mb.layers {
        if in_a.remove(l.digest.as_str()).is_some() {
            shared.push(l);
        } else {
            only_b.push(l);
        }
    }
    let mut only_a: Vec<&Descriptor> = ma
        .layers
        .iter()
        .filter(|l| in_a.contains_key(l.digest.as_str()))
        .collect();
    for list in [&mut shared, &mut only_a, &mut only_b] {
        list.sort_by(|x, y| x.media_type.cmp(&y.media_type));
    }
    layers(out, "Shared Layers", &shared)?;
    layers(out, &format!("Unique Layers to ModelKit1 ({ra})"), &only_a)?;
    layers(out, &format!("Unique Layers to ModelKit2 ({rb})"), &only_b)?;
    Ok(())
}

fn layers(out: &mut impl Write, title: &str, list: &[&Descriptor]) -> Result<()> {
    writeln!(out, "{title}\n---------------------------------------")?;
    if list.is_empty() {
        writeln!(out, "<none>")?;
    } else {
        writeln!(out, "Type    | Digest             | Size")?;
        for l in list {
            // kit's logger capitalises the first letter of every line it prints.
            let kind = capitalised(
                LayerType::parse(&l.media_type).map_or("unknown", |t| t.kind.user_str()),
            );
            let digest: String = l.digest.as_str().chars().take(17).collect();
            writeln!(out, "{kind:<7} | {digest:<18} | {}", kit_bytes(l.size))?;
        }
    }
    writeln!(out)?;
    Ok(())
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// kit's `FormatBytes`: bytes below 1 KiB, else one decimal, rounded down.
fn kit_bytes(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    let mut size = n as f64 / 1024.0;
    for suffix in ["KiB", "MiB", "GiB", "TiB"] {
        if size < 1024.0 {
            return format!("{:.1} {suffix}", (size * 10.0).floor() / 10.0);
        }
        size /= 1024.0;
    }
    format!("{size:.1} PiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_as_kit_formats_them() {
        assert_eq!(kit_bytes(0), "0 B");
        assert_eq!(kit_bytes(1023), "1023 B");
        assert_eq!(kit_bytes(1024), "1.0 KiB");
        assert_eq!(kit_bytes((1 << 20) - 1), "1023.9 KiB");
        assert_eq!(kit_bytes(3 << 30), "3.0 GiB");
    }
}
