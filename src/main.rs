use clap::Parser;
use kitsnap::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    // Behave like other Unix tools when piped into `head`: exit quietly on a closed pipe.
    // Never for the daemon: a peer closing its connection must not kill `serve`.
    if !matches!(cli.command, Command::Serve(_)) {
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Err(e) = kitsnap::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
