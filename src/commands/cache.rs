//! `kitsnap cache info|clear`: kit's verbs for its temporary files. kitsnap's are the
//! partial blobs of interrupted transfers (`STORE/ingest`) and the working directories of
//! `kitsnap import` (`STORE/import`); both are normally empty.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use kitsnap_core::human_bytes;

use crate::settings::Ctx;

#[derive(Args, Debug)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Print the size of the temporary files, per directory.
    Info,
    /// Delete temporary files no running kitsnap command is using.
    Clear,
}

pub fn run(a: CacheArgs, ctx: &Ctx) -> Result<()> {
    let store = ctx.open_store()?;
    match a.command {
        CacheCommand::Info => {
            let mut rows: Vec<(String, u64)> = Vec::new();
            let ingest = store.ingest_bytes()?;
            if ingest > 0 {
                rows.push(("ingest".into(), ingest));
            }
            let import = store.root().join("import");
            if let Ok(entries) = fs::read_dir(&import) {
                for e in entries.flatten() {
                    let name = format!("import/{}", e.file_name().to_string_lossy());
                    rows.push((name, tree_bytes(&e.path())));
                }
            }
            rows.sort();
            let mut out = crate::output::stdout();
            if rows.is_empty() {
                writeln!(out, "Cache is currently empty")?;
                return Ok(());
            }
            let total: u64 = rows.iter().map(|r| r.1).sum();
            writeln!(out, "Total size of cache directory: {}", human_bytes(total))?;
            writeln!(out, "Cache contents:")?;
            let width = rows.iter().map(|r| r.0.len() + 2).max().unwrap_or(0);
            for (name, bytes) in rows {
                writeln!(
                    out,
                    "  {:<width$}    {}",
                    format!("./{name}"),
                    human_bytes(bytes)
                )?;
            }
        }
        CacheCommand::Clear => {
            if store.writers_running() {
                eprintln!("Waiting for running transfers to finish (their files stay)...");
            }
            let mut freed = store.clear_ingest()?;
            let import = store.root().join("import");
            if let Ok(entries) = fs::read_dir(&import) {
                for e in entries.flatten() {
                    freed += clear_import_dir(&e.path())?;
                }
            }
            eprintln!("Cleared {} of temporary files", human_bytes(freed));
        }
    }
    Ok(())
}

/// Removes an import working directory unless a running import holds it, or may be about
/// to (the rule `import` sweeps leftovers by).
fn clear_import_dir(dir: &Path) -> Result<u64> {
    if !crate::commands::import::is_leftover(dir) {
        eprintln!(
            "Skipping {}: an import is using it or starting in it",
            dir.display()
        );
        return Ok(0);
    }
    let bytes = tree_bytes(dir);
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Bytes of the files under `p` (links not followed).
fn tree_bytes(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}
