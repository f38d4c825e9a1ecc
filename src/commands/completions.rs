//! `kitsnap completion SHELL` and `kitsnap man`: shell completions and manual pages
//! generated from the clap definition, so they never drift from the real flags.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Subcommand};
use clap_complete::Shell;

use crate::cli::Cli;

#[derive(Subcommand, Debug)]
pub enum DocsCommand {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        long_about = "Prints the completion script for SHELL on standard output.\n\n\
Examples:\n  kitsnap completion bash > /etc/bash_completion.d/kitsnap\n  \
kitsnap completion bash > ~/.local/share/bash-completion/completions/kitsnap\n  \
kitsnap completion zsh > \"${fpath[1]}/_kitsnap\"\n  \
kitsnap completion fish > ~/.config/fish/completions/kitsnap.fish"
    )]
    Completion(CompletionArgs),
    /// Print the manual page (roff), or write one page per verb with --dir.
    #[command(
        long_about = "Prints kitsnap(1) in roff on standard output; with --dir, \
writes kitsnap.1 and a kitsnap-VERB.1 page for every verb into DIR.\n\n\
Examples:\n  kitsnap man | man -l -\n  kitsnap man --dir /usr/local/share/man/man1 && mandb"
    )]
    Man(ManArgs),
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write kitsnap.1 and kitsnap-VERB.1 pages into this directory instead.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn run(c: DocsCommand) -> Result<()> {
    let mut cmd = Cli::command();
    match c {
        DocsCommand::Completion(a) => {
            // clap_complete panics on a failed write: render first, then write to stdout.
            let mut buf = Vec::new();
            clap_complete::generate(a.shell, &mut cmd, "kitsnap", &mut buf);
            let mut out = crate::output::stdout();
            out.write_all(&buf)?;
            out.flush()?;
        }
        DocsCommand::Man(ManArgs { dir: Some(dir) }) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
            eprintln!("Wrote manual pages into {}", dir.display());
        }
        DocsCommand::Man(ManArgs { dir: None }) => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut buf)?;
            let mut out = crate::output::stdout();
            out.write_all(&buf)?;
            out.flush()?;
        }
    }
    Ok(())
}
