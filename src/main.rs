use clap::Parser;

fn main() {
    // Behave like other Unix tools when piped into `head`: exit quietly on a closed pipe.
    // SAFETY: setting a signal disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = kitsnap::cli::Cli::parse();
    if let Err(e) = kitsnap::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
