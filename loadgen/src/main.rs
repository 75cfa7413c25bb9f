//! `loadgen`: plays a flash-sale crowd against ticketd and judges the outcome.

mod check;
mod config;
mod connect;
mod control;
mod driver;
mod live;
mod report;
mod run;
mod watchdog;
mod workload;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use config::{Cli, OpKind, StopRule};
use driver::RunSettings;
use report::{Percentiles, Report, ThreadResult};
use run::{LocalRun, ProcessPlan, WorkerSet};
use workload::UserSequence;

/// Buyers whose orders are read back with ORDERS after a run.
const ORDERS_SAMPLE: usize = 1_000;

/// Files kept back from each process's limit for pollers, pipes and the side connection.
const RESERVED_FDS: u64 = 100;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.validate() {
        eprintln!("loadgen: {e}");
        return ExitCode::from(2);
    }
    if cli.auth_token_file.is_some() && auth_token(&cli).is_none() {
        eprintln!("loadgen: --auth-token-file holds no token (one per line; # comments)");
        return ExitCode::from(2);
    }
    let open_files = raise_open_file_limit();
    let threads = cli
        .threads
        .unwrap_or_else(|| core_affinity::get_core_ids().map_or(1, |c| c.len().max(1)));
    let per_process = open_files.saturating_sub(RESERVED_FDS).max(1);
    let processes = cli.conns.div_ceil(per_process) as usize;
    let plan = |range| ProcessPlan {
        range,
        threads,
        addrs: cli.addrs.clone(),
        source_addrs: cli
            .source_addrs
            .unwrap_or_else(|| cli.conns.div_ceil(connect::CONNS_PER_SOURCE) as u32),
        source_ip: cli.source_ip,
        settings: Arc::new(settings(&cli, processes * threads)),
    };
    match cli.worker_range() {
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
        Ok(Some(range)) => {
            watchdog::die_with_parent();
            match run::worker_main(&plan(range)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loadgen worker: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok(None) => coordinate(&cli, processes, threads, per_process, plan),
    }
}

/// The first line of `--auth-token-file`, trimmed (an unreadable file is reported and
/// the run goes on without a token: the server then answers UNAUTHORIZED, which the
/// checks report).
fn auth_token(cli: &Cli) -> Option<Vec<u8>> {
    let path = cli.auth_token_file.as_ref()?;
    match std::fs::read(path) {
        Ok(bytes) => bytes
            .split(|&b| b == b'\n')
            .map(|line| line.trim_ascii().to_vec())
            .find(|line| !line.is_empty() && !line.starts_with(b"#")),
        Err(e) => {
            eprintln!("loadgen: cannot read {}: {e}", path.display());
            None
        }
    }
}

fn settings(cli: &Cli, all_threads: usize) -> RunSettings {
    RunSettings {
        op: cli.op,
        event: cli.event,
        users: UserSequence::new(cli.user_count(), cli.seed),
        total_conns: cli.conns,
        depth: cli.depth,
        rate_per_conn: cli.rate.map(|r| r / cli.conns as f64),
        stop: cli
            .stop_rule()
            .unwrap_or(StopRule::Duration(Duration::from_secs(10))),
        connect_interval: Duration::from_secs_f64(all_threads as f64 / cli.connect_rate),
        max_tracked_orders: cli.max_tracked_orders,
        hold: cli.hold.unwrap_or(Duration::ZERO),
        reconnect: cli.reconnect,
        auth_token: auth_token(cli),
    }
}

fn coordinate(
    cli: &Cli,
    processes: usize,
    threads: usize,
    per_process: u64,
    plan: impl Fn((u64, u64)) -> ProcessPlan,
) -> ExitCode {
    let selling = matches!(cli.op, OpKind::Buy | OpKind::ReserveConfirm);
    let stock_skipped = if cli.no_stock_check {
        Some("--no-stock-check: several independent nodes behind one address".to_string())
    } else if !selling {
        Some("the op sells nothing".to_string())
    } else {
        None
    };
    let before = match stock_skipped {
        Some(_) => None,
        None => match control::stock(stock_addrs(cli), cli.event, auth_token(cli).as_deref()) {
            Ok(view) => Some(view),
            Err(e) => {
                eprintln!("loadgen: cannot read STOCK before the run: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    if processes > 1 {
        eprintln!(
            "loadgen: {} connections exceed one process's {} usable files: running {processes} worker processes",
            cli.conns, per_process
        );
    }
    let watch = Arc::new(watchdog::Watch::default());
    watchdog::start(cli.time_limit(), cli.conns, Arc::clone(&watch));
    let bar = ProgressBar::new(cli.conns);
    bar.set_style(
        ProgressStyle::with_template("connecting {bar:40} {pos}/{len} ({per_sec}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = if processes == 1 {
        let local = match LocalRun::spawn(&plan((0, cli.conns))) {
            Ok(local) => local,
            Err(e) => {
                eprintln!("loadgen: cannot spawn load threads: {e}");
                return ExitCode::FAILURE;
            }
        };
        local.wait_ready(|p| {
            let failed = p.failed.load(std::sync::atomic::Ordering::Relaxed);
            let established = p.established.load(std::sync::atomic::Ordering::Relaxed);
            connect_progress(&bar, &watch, established, failed);
        });
        bar.finish_and_clear();
        watch.running();
        local.start();
        let mut line = live::LiveLine::start();
        let result = local.join_watching(|p| line.update(&p.statuses()));
        line.finish();
        result
    } else {
        match run_workers(cli, processes, &bar, &watch) {
            Ok(result) => result,
            Err(e) => {
                bar.abandon();
                eprintln!("loadgen: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let after = match before {
        Some(_) => match control::stock(stock_addrs(cli), cli.event, auth_token(cli).as_deref()) {
            Ok(view) => Some(view),
            Err(e) => {
                eprintln!("loadgen: cannot read STOCK after the run: {e}");
                None
            }
        },
        None => None,
    };
    // Read a sample of buyers' orders back: the ledger must list what clients were told.
    let listed = match (&stock_skipped, result.orders_truncated) {
        (Some(why), _) => Err(why.clone()),
        (None, true) => Err("orders not tracked".to_string()),
        (None, false) => {
            let mut users: Vec<u64> = result.orders.iter().map(|&(_, user)| user).collect();
            users.sort_unstable();
            users.dedup();
            users.truncate(ORDERS_SAMPLE);
            control::orders(
                stock_addrs(cli)[0],
                cli.event,
                &users,
                auth_token(cli).as_deref(),
            )
            .map_err(|e| e.to_string())
        }
    };
    let server = ServerSide {
        before,
        after,
        stock_skipped,
        listed,
    };
    let report = build_report(cli, processes, threads, &result, server);
    report.print();
    if let Some(path) = &cli.orders_file {
        let lines: String = result
            .orders
            .iter()
            .map(|&(order_id, user)| format!("0x{order_id:016x} {user}\n"))
            .collect();
        if let Err(e) = std::fs::write(path, lines) {
            eprintln!("loadgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        if result.orders_truncated {
            eprintln!(
                "loadgen: {} lists only the first {} orders (--max-tracked-orders)",
                path.display(),
                result.orders.len()
            );
        }
    }
    if let Some(path) = &cli.json {
        let written = serde_json::to_string_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|json| std::fs::write(path, json + "\n").map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("loadgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        eprintln!("loadgen: a check failed");
        ExitCode::FAILURE
    }
}

/// Where STOCK is read: every node's own stock, or (a shared ledger) one node's view.
fn stock_addrs(cli: &Cli) -> &[std::net::SocketAddr] {
    if cli.shared_ledger {
        &cli.addrs[..1]
    } else {
        &cli.addrs
    }
}

/// Connecting progress, on the bar and for the watchdog.
fn connect_progress(bar: &ProgressBar, watch: &watchdog::Watch, established: u64, failed: u64) {
    watch.connecting(established, failed);
    bar.set_position(established + failed);
    if failed > 0 {
        bar.set_message(format!("{failed} failed (refused or timed out)"));
    }
}

fn run_workers(
    cli: &Cli,
    processes: usize,
    bar: &ProgressBar,
    watch: &watchdog::Watch,
) -> Result<ThreadResult, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = processes as u64;
    let ranges: Vec<(u64, u64)> = (0..n)
        .map(|i| (cli.conns * i / n, cli.conns * (i + 1) / n))
        .collect();
    let mut workers = WorkerSet::spawn(&args, &ranges)?;
    workers.wait_ready(|established, failed| connect_progress(bar, watch, established, failed))?;
    bar.finish_and_clear();
    watch.running();
    workers.start()?;
    let mut line = live::LiveLine::start();
    let result = workers.join(|statuses| line.update(statuses));
    line.finish();
    result
}

/// What was read from the server around the run.
struct ServerSide {
    before: Option<report::StockView>,
    after: Option<report::StockView>,
    /// Why STOCK was not read, if it was not.
    stock_skipped: Option<String>,
    /// ORDERS of a sample of buyers, or why they were not read.
    listed: Result<std::collections::HashMap<u64, Vec<u64>>, String>,
}

fn build_report(
    cli: &Cli,
    processes: usize,
    threads: usize,
    result: &ThreadResult,
    server: ServerSide,
) -> Report {
    let ServerSide {
        before,
        after,
        stock_skipped,
        listed,
    } = server;
    let elapsed_s = result.elapsed.as_secs_f64();
    let invariants = check::run_checks(check::CheckInput {
        result,
        op: cli.op,
        limit: cli.limit,
        conns_requested: cli.conns,
        before,
        after,
        stock_skipped_because: stock_skipped,
        listed,
    });
    Report {
        conns: result.established,
        conns_requested: cli.conns,
        processes,
        threads_per_process: threads,
        op: cli.op,
        mode: if cli.rate.is_some() {
            "open-loop"
        } else {
            "closed-loop"
        },
        requests: result.answered,
        sent: result.sent,
        lost: result.lost,
        broken_conns: result.broken_conns,
        reconnects: result.reconnects,
        malformed: result.malformed,
        elapsed_s,
        throughput_rps: if elapsed_s > 0.0 {
            result.answered as f64 / elapsed_s
        } else {
            0.0
        },
        statuses: Report::statuses(result),
        sold: result.sold,
        latency_us: Percentiles::of(&result.latency),
        latency_uncorrected_us: cli
            .rate
            .map(|_| Percentiles::of(&result.latency_uncorrected)),
        connect_errors: result.connect_errors.clone(),
        stock_before: before,
        stock_after: after,
        invariants,
    }
}

/// Raises the soft open-file limit to the hard one; returns the limit in force.
fn raise_open_file_limit() -> u64 {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    rlimit::increase_nofile_limit(hard).unwrap_or(soft)
}
