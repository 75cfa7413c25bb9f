//! Command line of `loadgen`, and the validated plan built from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum OpKind {
    /// BUY one ticket.
    Buy,
    /// RESERVE one ticket, then CONFIRM the hold as soon as it is granted.
    ReserveConfirm,
    /// PING: measures the server and network, no ticket logic.
    Ping,
    /// STOCK of the event.
    Stock,
}

/// The `loadgen` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for ticketd: many connections, honest latency, outcome checks",
    long_about = "Load generator for ticketd.\n\n\
        Closed loop by default (--depth requests in flight per connection); with --rate, \
        open loop at a constant total rate with latency measured from each request's \
        intended send time (coordinated-omission corrected, as wrk2 does). Before and \
        after the run it asks each server for STOCK and checks the outcome: never sold \
        above stock, exact sell-out when demand exceeded stock, unique order ids, nobody \
        above the per-user limit. Exits 1 if any check fails."
)]
pub struct Cli {
    /// Server address; repeat to spread connections over several servers.
    #[arg(
        long = "addr",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:7878"
    )]
    pub addrs: Vec<SocketAddr>,

    /// Connections to hold open (more than one process can hold are spread over worker
    /// processes automatically).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub conns: u64,

    /// Distinct user ids; drawn without repetition while they last [default: one per
    /// request].
    #[arg(long, value_name = "U")]
    pub users: Option<u64>,

    /// Event to buy.
    #[arg(long, value_name = "ID", default_value_t = 1)]
    pub event: u32,

    /// The event's per-user limit, for the "nobody above the limit" check.
    #[arg(long, value_name = "L", default_value_t = 1)]
    pub limit: u32,

    /// What each request does.
    #[arg(long, value_enum, default_value_t = OpKind::Buy)]
    pub op: OpKind,

    /// Total requests to send (RESERVE+CONFIRM counts as one); conflicts with --duration.
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    pub requests: Option<u64>,

    /// Run for this long instead of a request count, e.g. `10s`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Requests in flight per connection (closed loop).
    #[arg(long, value_name = "D", default_value_t = 1)]
    pub depth: u32,

    /// Open loop: this many requests per second in total, each scheduled ahead; latency
    /// is measured from the intended send time.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,

    /// New connections per second while ramping up.
    #[arg(long, value_name = "R", default_value_t = 20_000.0)]
    pub connect_rate: f64,

    /// Load threads per process, each pinned to a core [default: cores this process may
    /// use].
    #[arg(long, value_name = "T")]
    pub threads: Option<usize>,

    /// Seed of the user-id permutation; the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Give up (exit 1, saying how far the run got) if it has not finished after this
    /// long [default: --duration plus 60s, or 120s for a --requests run].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Skip the STOCK checks: for several independent nodes behind one address, where a
    /// STOCK answer describes only the node it happened to reach.
    #[arg(long)]
    pub no_stock_check: bool,

    /// The servers share one ledger (ticketd --redis): read STOCK through the first
    /// --addr only, since every node reports the same global figures.
    #[arg(long, conflicts_with = "no_stock_check")]
    pub shared_ledger: bool,

    /// Most orders remembered for the uniqueness and limit checks; beyond it those checks
    /// are reported as skipped rather than run on part of the data.
    #[arg(long, value_name = "N", default_value_t = 20_000_000)]
    pub max_tracked_orders: usize,

    /// Loopback source addresses to spread connections over (127.0.0.2 upwards), so the
    /// ephemeral port range is no limit [default: one per 4,000 connections].
    #[arg(long, value_name = "K")]
    pub source_addrs: Option<u32>,

    /// Open every connection from this one source address (e.g. 127.0.0.3), so a
    /// server's per-address limits see one client; overrides --source-addrs.
    #[arg(long, value_name = "IP", conflicts_with = "source_addrs")]
    pub source_ip: Option<std::net::IpAddr>,

    /// After the run, keep every connection open (idle) this long before closing, e.g.
    /// so the server's memory per idle connection can be measured.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub hold: Option<Duration>,

    /// Write every order the clients were told of to PATH, one `ORDER_ID USER` line each
    /// (ids in hex, as the server prints them), to compare with the server's own record.
    #[arg(long, value_name = "PATH")]
    pub orders_file: Option<PathBuf>,

    /// Present the token in FILE (its first line) with AUTH (protocol 1.1) first on
    /// every connection, for a server started with `--auth-token-file`.
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// When a connection breaks mid-run (a node died behind a balancer), open it again
    /// (retrying with backoff for up to 10 s) and go on; its requests in flight are
    /// counted lost, never hidden. Without it, a broken connection stays closed.
    #[arg(long)]
    pub reconnect: bool,

    /// Internal: run as worker process for global connections START..END.
    #[arg(long, hide = true, value_name = "START:END")]
    pub worker: Option<String>,
}

/// Why the command line was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--conns must be at least 1")]
    NoConns,
    #[error("--depth must be between 1 and {max}")]
    Depth { max: u32 },
    #[error("--rate must be a positive number of requests per second")]
    Rate,
    #[error("--connect-rate must be positive")]
    ConnectRate,
    #[error("--users must be at least 1")]
    Users,
    #[error("give --requests N or --duration S")]
    NoStop,
    #[error(
        "--requests ({requests}) is below --conns ({conns}): some connections would send nothing"
    )]
    FewRequests { requests: u64, conns: u64 },
    #[error("--worker must be START:END")]
    Worker,
}

/// Largest --depth: the size of each connection's table of requests in flight.
pub const MAX_DEPTH: u32 = 4096;

/// When to stop sending.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum StopRule {
    Requests(u64),
    Duration(Duration),
}

impl Cli {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.conns == 0 {
            return Err(ConfigError::NoConns);
        }
        if self.depth == 0 || self.depth > MAX_DEPTH {
            return Err(ConfigError::Depth { max: MAX_DEPTH });
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err(ConfigError::Rate);
        }
        if !(self.connect_rate > 0.0 && self.connect_rate.is_finite()) {
            return Err(ConfigError::ConnectRate);
        }
        if self.users == Some(0) {
            return Err(ConfigError::Users);
        }
        match self.stop_rule()? {
            StopRule::Requests(n) if n < self.conns => Err(ConfigError::FewRequests {
                requests: n,
                conns: self.conns,
            }),
            _ => Ok(()),
        }
    }

    pub fn stop_rule(&self) -> Result<StopRule, ConfigError> {
        match (self.requests, self.duration) {
            (Some(n), _) => Ok(StopRule::Requests(n)),
            (None, Some(d)) => Ok(StopRule::Duration(d)),
            (None, None) => Err(ConfigError::NoStop),
        }
    }

    /// The overall time limit: `--timeout`, or a default that only a stuck run reaches.
    pub fn time_limit(&self) -> Duration {
        self.timeout.unwrap_or(match self.duration {
            Some(d) => d + Duration::from_secs(60),
            None => Duration::from_secs(120),
        })
    }

    /// Distinct users: `--users`, or one per request, or (duration runs) effectively
    /// unbounded.
    pub fn user_count(&self) -> u64 {
        self.users.or(self.requests).unwrap_or(u64::MAX / 2).max(1)
    }

    /// The global connection range of a worker process.
    pub fn worker_range(&self) -> Result<Option<(u64, u64)>, ConfigError> {
        let Some(spec) = &self.worker else {
            return Ok(None);
        };
        let (a, b) = spec.split_once(':').ok_or(ConfigError::Worker)?;
        let start = a.parse().map_err(|_| ConfigError::Worker)?;
        let end = b.parse().map_err(|_| ConfigError::Worker)?;
        if start >= end || end > self.conns {
            return Err(ConfigError::Worker);
        }
        Ok(Some((start, end)))
    }
}
