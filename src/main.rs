use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

use ticketd::config::{effective, merge_config_file, Cli, Tool};
use ticketd::tools;

/// The system's allocator, with the large blocks (the user tables) faulted in when a
/// shard makes them at start and given back a step per loop pass (`ticketd::memory`).
#[global_allocator]
static ALLOCATOR: ticketd::memory::LargeBlockAlloc = ticketd::memory::LargeBlockAlloc;

fn main() -> ExitCode {
    let given: Vec<_> = std::env::args_os().collect();
    let argv = match merge_config_file(given.clone()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("ticketd: {e}");
            return ExitCode::from(2);
        }
    };
    let from_file = argv.len() != given.len();
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if from_file && e.use_stderr() {
                eprintln!("(the --config file's settings are read as the flags of the same names)");
            }
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    exit_on_any_panic();
    if let Some(tool) = &cli.tool {
        return run_tool(tool);
    }
    // A journal write past the file-size limit must fail with EFBIG (and stop sales
    // cleanly), not kill the process with SIGXFSZ.
    ignore_sigxfsz();

    let open_files = raise_open_file_limit();
    let (check_only, secrets) = (cli.check_config, cli.secret_paths());
    let config = match cli.into_config(open_files) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ticketd: {e}; see --help");
            return ExitCode::from(2);
        }
    };
    if check_only {
        print!("{}", effective(&secrets, &config));
        return ExitCode::SUCCESS;
    }
    let cores = ticketd::config::available_cores();
    if config.shards > cores {
        tracing::warn!(
            shards = config.shards,
            cores,
            "more shards than cores: shards will share cores and wait on each other"
        );
    }
    if config.events.is_empty() && config.journal.is_none() {
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
            eprintln!("ticketd: {e}; see --help");
            return ExitCode::FAILURE;
        }
    };
    let signal = match signals.forever().next() {
        Some(SIGINT) => "SIGINT",
        Some(SIGTERM) => "SIGTERM",
        _ => "a signal",
    };
    tracing::info!("{signal}: shutting down: no new connections, answering what was read");
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

fn run_tool(tool: &Tool) -> ExitCode {
    match tool {
        Tool::Orders(args) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match tools::orders::run(args, &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ticketd orders: {e}; see ticketd orders --help");
                    ExitCode::FAILURE
                }
            }
        }
        Tool::CreateEvents(args) => match tools::create_events::run(args) {
            Ok(lines) => {
                for line in lines {
                    println!("{line}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ticketd create-events: {e}; see ticketd create-events --help");
                ExitCode::FAILURE
            }
        },
        Tool::Sign(args) => match tools::sign::run(args) {
            Ok(link) => {
                println!("{link}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ticketd sign: {e}; see ticketd sign --help");
                ExitCode::FAILURE
            }
        },
        Tool::Audit(args) => {
            let report = tools::audit::run(args);
            println!("{}", report.render());
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn ignore_sigxfsz() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
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
