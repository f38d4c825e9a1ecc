//! `kitsnap`: the packaging CLI (a drop-in for KitOps' `kit`) and the node daemon
//! (`kitsnap serve`). Argument parsing in `cli`, flags resolved in `settings`, one file
//! per verb in `commands/`, the daemon's gRPC client in `client`.

mod cli;
mod client;
mod commands;
mod front;
mod output;
mod settings;

use crate::cli::{Cli, Command};

fn main() {
    // Installed as `nerdctl` (`kitsnap front install`): the nerdctl front.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new(front::NAME)) {
        init_diagnostics(None);
        front::main(std::env::args_os().collect());
    }
    let mut cli = Cli::parse_args();
    let level = match settings::log_level(&cli) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let ctx = settings::Ctx::from_cli(&cli);
    // SIGPIPE stays ignored (Rust's default): a daemon closing its socket must be an
    // error, not a silent death. A closed stdout ends the command quietly instead
    // (`output::stdout`).
    if let Command::Serve(a) = &mut cli.command {
        // The global --config and --log-level are serve's file and level.
        a.config = cli.config.take();
        a.log_level = level;
    } else {
        init_diagnostics(level.as_deref());
        clean_up_on_interrupt();
    }
    if let Err(e) = commands::run(cli.command, &ctx) {
        if output::is_stdout_closed(&e) {
            return;
        }
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// An error and its causes on one line, each said once: a cause whose text the line
/// already holds (an I/O error shown by the error that wraps it) is left out, so no
/// message repeats its `(os error N)`.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Ctrl-C (SIGINT) or SIGTERM: the temporary files being written (store ingests, files
/// being unpacked) are removed, then the signal takes its default course, so the shell
/// still sees the command killed by it. A daemon RPC in flight (`pull --containerd`) is
/// cancelled by the daemon when this process's connection goes away.
fn clean_up_on_interrupt() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            kitsnap_core::cleanup::remove_all_and_freeze();
            let _ = signal_hook::low_level::emulate_default_handler(sig);
            std::process::exit(128 + sig);
        }
    });
}

/// Diagnostics (retries, credential helpers, ...) go to stderr through `tracing`: quiet
/// by default, `--log-level`/`-v` or `KITSNAP_LOG=info` (or any tracing filter) shows
/// them; `KITSNAP_DEBUG` is the older switch for info.
fn init_diagnostics(level: Option<&str>) {
    let default = match level {
        // kitsnap's own messages at that level; the libraries under it (hyper, rustls,
        // ...) stay at warn, as kit's -v shows kit's messages, not its HTTP stack's.
        Some(l) => {
            let others = if l == "error" { "error" } else { "warn" };
            format!("{others},kitsnap={l},kitsnap_core={l},kitsnap_registry={l},kitsnap_node={l}")
        }
        None if std::env::var_os("KITSNAP_DEBUG").is_some() => "info".to_string(),
        None => "warn".to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KITSNAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs and pipes get no control characters.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .try_init();
}
