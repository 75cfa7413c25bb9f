use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

use ticketd::config::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    exit_on_any_panic();

    let open_files = raise_open_file_limit();
    let config = match cli.into_config(open_files) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ticketd: {e}");
            return ExitCode::from(2);
        }
    };
    if config.events.is_empty() {
        tracing::warn!("no --event given: every BUY and RESERVE will answer NOT_FOUND");
    }
    // Register before starting so a signal that arrives during start-up is not lost.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("ticketd: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match ticketd::start(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("ticketd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signal = signals.forever().next();
    tracing::info!(
        ?signal,
        "shutting down: no new connections, answering what was read"
    );
    // A second signal while draining means "now".
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            eprintln!("ticketd: second signal, exiting without a summary");
            std::process::exit(130);
        }
    });
    let summary = server.shutdown();
    println!("{summary}");
    if summary.events.iter().all(|e| e.is_balanced()) {
        ExitCode::SUCCESS
    } else {
        tracing::error!("stock does not balance: sold + held + remaining != total");
        ExitCode::FAILURE
    }
}

/// A shard that panicked would leave a server that accepts connections it never
/// answers; exit the whole process instead, after the default report.
fn exit_on_any_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(101);
    }));
}

/// Raises the soft open-file limit to the hard one and returns the limit in force.
fn raise_open_file_limit() -> u64 {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    match rlimit::increase_nofile_limit(hard) {
        Ok(now) => {
            tracing::info!(soft_before = soft, hard, now, "open-file limit");
            now
        }
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "could not raise the open-file limit");
            soft
        }
    }
}
