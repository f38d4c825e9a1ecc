//! `kitsnap list`: the ModelKits in the local store.

use std::io::Write;

use anyhow::Result;
use kitsnap_core::human_bytes;

use crate::settings::Ctx;

pub fn run(ctx: &Ctx) -> Result<()> {
    let store = ctx.open_store()?;
    let mut out = crate::output::stdout();
    writeln!(
        out,
        "{:<40} {:<16} {:<24} {:>10}  DIGEST",
        "REPOSITORY", "TAG", "NAME", "SIZE"
    )?;
    for e in store.list()? {
        // One manifest read per entry serves both the name and the size.
        let manifest = store.manifest(&e.descriptor).ok();
        let name = manifest
            .as_ref()
            .and_then(|m| store.kitfile(m).ok().flatten())
            .map(|k| k.package.name)
            .unwrap_or_default();
        let size = e.descriptor.size + manifest.as_ref().map_or(0, |m| m.blobs_size());
        writeln!(
            out,
            "{:<40} {:<16} {:<24} {:>10}  {}",
            e.name,
            e.tag.as_deref().unwrap_or("<none>"),
            name,
            human_bytes(size),
            e.descriptor.digest
        )?;
    }
    out.flush()?;
    Ok(())
}
