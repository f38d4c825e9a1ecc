//! `kitsnap init`: writes a Kitfile describing a directory (and a `.kitignore` for caches),
//! then prints where every path went.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use kitsnap_core::human_bytes;
use kitsnap_core::ignore::IGNORE_FILE;
use kitsnap_core::init::{self, InitOptions, Placement};

use crate::settings::Ctx;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory to describe.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Package name (default: the directory name).
    #[arg(long)]
    pub name: Option<String>,
    /// Package description.
    #[arg(long = "desc")]
    pub description: Option<String>,
    /// Package author.
    #[arg(long)]
    pub author: Option<String>,
    /// Replace an existing Kitfile.
    #[arg(short = 'f', long)]
    pub force: bool,
}

pub fn run(a: InitArgs, _ctx: &Ctx) -> Result<()> {
    if !a.dir.is_dir() {
        bail!("{} is not a directory", a.dir.display());
    }
    let target = a.dir.join("Kitfile");
    if target.exists() && !a.force {
        bail!(
            "{} already exists (use --force to replace it)",
            target.display()
        );
    }
    let plan = init::generate(
        &a.dir,
        &InitOptions {
            name: a.name,
            description: a.description,
            author: a.author,
        },
    )
    .with_context(|| format!("scanning {}", a.dir.display()))?;
    if let Some(text) = &plan.kitignore {
        let path = a.dir.join(IGNORE_FILE);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::write(&target, plan.kitfile.to_yaml()?)
        .with_context(|| format!("writing {}", target.display()))?;

    let mut out = crate::output::stdout();
    write_table(&mut out, &plan.placements)?;
    out.flush()?;
    let links = plan
        .placements
        .iter()
        .filter(|p| p.section == init::SYMLINK)
        .count();
    if links > 0 {
        // A Hugging Face cache snapshot is all symlinks into blobs/.
        eprintln!(
            "{links} symlink(s) at the top were left out: pack does not follow them; name their \
targets or copy the files in (e.g. `huggingface-cli download REPO --local-dir DIR`)"
        );
    }
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(l) = &plan.license {
        eprintln!("License: {} (from {})", l.id, l.source);
    }
    if plan.kitignore.is_some() {
        eprintln!(
            "Wrote {} (caches and environments stay out of the ModelKit)",
            a.dir.join(IGNORE_FILE).display()
        );
    }
    eprintln!(
        "Wrote {} ({} layer(s)); review it, then run `kitsnap pack {} -t NAME:TAG`",
        target.display(),
        plan.kitfile.layer_entries().len(),
        a.dir.display()
    );
    Ok(())
}

/// PATH, SECTION and SIZE columns, each as wide as its content.
fn write_table(out: &mut impl Write, rows: &[Placement]) -> Result<()> {
    let pw = rows.iter().map(|r| r.path.len()).max().unwrap_or(0).max(4);
    let sw = rows
        .iter()
        .map(|r| r.section.len())
        .max()
        .unwrap_or(0)
        .max(7);
    writeln!(out, "{:<pw$}  {:<sw$}  {:>10}", "PATH", "SECTION", "SIZE")?;
    for r in rows {
        writeln!(
            out,
            "{:<pw$}  {:<sw$}  {:>10}",
            r.path,
            r.section,
            human_bytes(r.size)
        )?;
    }
    Ok(())
}
