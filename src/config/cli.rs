//! The `ticketd` command line (clap), and turning it into a validated [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::*;
use crate::journal::FsyncMode;
use crate::limits::Timeouts;

/// The ticketd command line.
#[derive(Debug, Parser)]
#[command(
    name = "ticketd",
    version,
    about = "Lock-free shard-per-core flash-sale ticket server",
    long_about = "Lock-free shard-per-core flash-sale ticket server.\n\n\
        Serves the ticketd wire protocol v1 (see docs/PROTOCOL.md) on --listen, with one \
        pinned event-loop thread per shard, each with its own SO_REUSEPORT listener.\n\n\
        Without a subcommand it serves; `ticketd orders` and `ticketd audit` read a data \
        dir (or, for audit, a Redis ledger); `ticketd create-events` creates events in the \
        Redis ledger for ledger-mode nodes to sell.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub tool: Option<Tool>,

    /// Read settings from this TOML file: each key a flag's long name without `--`
    /// (`listen = "0.0.0.0:7878"`, `event = ["1:10000"]`, `share-port = true`). Flags
    /// given on the command line override the file's (a repeated flag, all its values).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the configuration (flags and --config file), print it as a --config file
    /// with every default filled in, and exit: 0 if valid, 2 if not. Starts nothing.
    #[arg(long)]
    pub check_config: bool,

    /// Address to listen on (every shard binds it with SO_REUSEPORT).
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_LISTEN, value_parser = parse_addr)]
    pub listen: SocketAddr,

    /// Let other processes serve --listen's port too (SO_REUSEPORT across processes, as
    /// the 100,000-connection setup needs; each with its own --node-id). Without it, a
    /// port another process already serves refuses the start.
    #[arg(long)]
    pub share_port: bool,

    /// Put the events' user tables in the kernel's reserved huge pages (set aside with
    /// `sysctl vm.nr_hugepages=N`): fewer TLB misses for a table of millions of buyers.
    /// A table the pool cannot hold uses ordinary pages (logged).
    #[arg(long)]
    pub huge_pages: bool,

    /// An event on sale: its id, its stock, and optionally the per-user limit
    /// (default 1). Repeat for several events, e.g. `--event 1:10000 --event 2:500:4`.
    #[arg(long = "event", value_name = "ID:STOCK[:LIMIT]")]
    pub events: Vec<EventSpec>,

    /// How long RESERVE holds tickets before they return to sale, e.g. `15m`, `90s`,
    /// `500ms`.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_HOLD_TTL, value_parser = parse_duration)]
    pub hold_ttl: Duration,

    /// Event-loop threads, each pinned to one core [default: the cores this process may
    /// run on].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,

    /// Largest request body accepted, in bytes (MAX_FRAME of the protocol); a longer
    /// frame is answered with BAD_REQUEST and the connection closed.
    #[arg(long, value_name = "BYTES", default_value_t = ticketd_proto::DEFAULT_MAX_FRAME)]
    pub max_frame: u32,

    /// Most client connections held at once; more are answered OVERLOADED and closed
    /// [default: the open-file limit minus 64, minus 80 per shard for the server's own
    /// descriptors and the connections it holds only to answer OVERLOADED].
    #[arg(long, value_name = "N")]
    pub max_conns: Option<usize>,

    /// This node's id, stamped into every order and hold id (0..=4095).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub node_id: u16,

    /// Also serve `GET /buy/ticket[?event=E&user=U]` over HTTP/1.x here, answering the
    /// JSON the Go/Java prototypes answer (for `ab` and `wrk`).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_addr)]
    pub http: Option<SocketAddr>,

    /// Serve `GET /metrics` (Prometheus), `GET /healthz`, `GET /readyz` and `GET /stats`
    /// here (plain HTTP, one small thread off the shards); `off` for none. Readiness is
    /// 503 with the reasons while the journal is failed, an event is missing from the
    /// Redis ledger or a shard's Redis connection is down. The default port, if taken,
    /// is skipped with a warning; an address given here must bind
    /// [default: 127.0.0.1:9464].
    #[arg(long, value_name = "HOST:PORT|off", value_parser = parse_admin)]
    pub admin: Option<AdminFlag>,

    /// HTTP: a `GET /buy/ticket` without `user=` buys as a fresh anonymous user (how
    /// `ab` and `wrk` measure the prototypes). Off, such a request gets 400: with it, one
    /// client can buy any number of tickets. Meant for benchmarks only.
    #[arg(long)]
    pub http_anonymous: bool,

    /// Connections one source address may hold; more from it are answered OVERLOADED
    /// and closed [default: no limit].
    #[arg(long, value_name = "N")]
    pub max_conns_per_ip: Option<u32>,

    /// Requests a second one source address may send, in bursts of up to a second's
    /// worth; beyond it, OVERLOADED [default: no limit].
    #[arg(long, value_name = "RATE")]
    pub rate_per_ip: Option<f64>,

    /// A request left half-sent this long is answered (the framing error, or HTTP 408)
    /// and its connection closed; `off` for never [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_limit)]
    pub header_timeout: Option<Limit>,

    /// A binary connection with nothing in flight is closed after this long idle;
    /// `off` for never (gateways keep pools) [default: off].
    #[arg(long, value_name = "DURATION", value_parser = parse_limit)]
    pub idle_timeout: Option<Limit>,

    /// An idle HTTP keep-alive connection is closed after this long [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_limit)]
    pub http_idle_timeout: Option<Limit>,

    /// A client that takes none of its answers for this long is disconnected
    /// [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_limit)]
    pub write_timeout: Option<Limit>,

    /// How long one pass of a shard's event loop may spend reading requests (half of
    /// it) and writing answers (all of it) before leaving the rest to the next pass, so
    /// one burst of pipelined requests cannot stall the loop; `0s` reads and writes one
    /// connection a pass [default: 3ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub pass_budget: Option<Duration>,

    /// HTTP front: sell only to signed links, `/buy/ticket?event=E&user=U&expires=T&sig=S`
    /// with S the hex HMAC-SHA256 of `E:U:T` under the secret in FILE (at least 16
    /// bytes); anything else gets 403. `ticketd sign` prints such links.
    #[arg(long, value_name = "FILE")]
    pub http_secret: Option<PathBuf>,

    /// Binary protocol: a connection's first request must be an AUTH carrying one of the
    /// tokens in FILE (one per line, 1 to 255 bytes; `#` comments). Without it, AUTH is
    /// answered OK whatever it carries and no token is needed.
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Where the embedded ledger keeps its journal (created if missing, locked while
    /// ticketd runs). Every sale is in it before it is acknowledged, and a restart
    /// recovers from it. Not used in ledger mode (`--redis`), where Redis is the ledger.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// When a journal write counts as durable: `always` (fdatasync before answering:
    /// survives power loss), `batch` (answer after the write, fdatasync within ~5 ms:
    /// survives a process crash), `off` (never fdatasync: survives a process crash).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = FsyncMode::Always)]
    pub fsync: FsyncMode,

    /// Allow an `--event` to give a larger total than the journal has (to put more
    /// tickets on sale on purpose). Without it, any different total refuses to start.
    #[arg(long)]
    pub raise_totals: bool,

    /// A journal segment is replaced by a snapshot of live state once it holds this
    /// many bytes of garbage (and twice the live state).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_ROTATE_MIN_BYTES, hide = true)]
    pub segment_bytes: u64,

    /// Ledger mode: Redis (7.0+, Functions) holds the one global stock for every node,
    /// e.g. `redis://127.0.0.1:6379`. Without it, this process is a node of its own.
    #[arg(long, value_name = "URL", value_parser = parse_redis_url)]
    pub redis: Option<RedisUrl>,

    /// Ledger mode: how many ticketd nodes share the events, each an equal share of the
    /// local stock (sizes each node's gate) [default: 1]. For unequal shares, --weight
    /// and --total-weight instead.
    #[arg(long, value_name = "N", conflicts_with_all = ["weight", "total_weight"])]
    pub nodes: Option<u32>,

    /// Ledger mode: this node's weight at the load balancer; its gate holds
    /// weight ÷ total-weight of each event (plus --buffer). Needs --total-weight.
    #[arg(long, value_name = "W", requires = "total_weight")]
    pub weight: Option<u32>,

    /// Ledger mode: the sum of every node's --weight (e.g. 10 for weights 1:2:3:4).
    #[arg(long, value_name = "T", requires = "weight")]
    pub total_weight: Option<u32>,

    /// Ledger mode: tickets a node's gate lets through beyond its share [default: 0].
    #[arg(long, value_name = "N")]
    pub buffer: Option<i64>,

    /// Ledger mode: a Redis call unanswered this long fails (a request that never
    /// reached Redis answers UNAVAILABLE) [default: 500ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub redis_timeout: Option<Duration>,

    /// Ledger mode: Redis calls in flight per shard; while they are, its new requests
    /// gather into its next call [default: 2]. More sends smaller calls sooner.
    #[arg(long, value_name = "N")]
    pub redis_depth: Option<usize>,

    /// Ledger mode: run the ledger as a script (SCRIPT LOAD + EVALSHA) even where Redis
    /// has Functions; chosen by itself when Functions are missing (Redis before 7.0).
    #[arg(long)]
    pub redis_scripts: bool,
}

/// Commands that read a ledger instead of serving.
#[derive(Debug, clap::Subcommand)]
pub enum Tool {
    /// Print every order in a data dir (and, with --follow, new ones as they are made).
    Orders(crate::tools::orders::OrdersArgs),
    /// Check a data dir (or a Redis ledger): every record valid, sold + held within the
    /// total, nobody above the limit, order ids unique. Exits 1 on any violation.
    Audit(crate::tools::audit::AuditArgs),
    /// Create events in the Redis ledger (ledger-mode nodes never create one).
    CreateEvents(crate::tools::create_events::CreateEventsArgs),
    /// Print a signed purchase link for the HTTP front (`--http-secret`).
    Sign(crate::tools::sign::SignArgs),
}

impl Cli {
    /// The secret files named, for `--check-config` to print.
    pub fn secret_paths(&self) -> SecretPaths {
        SecretPaths {
            http_secret: self.http_secret.clone(),
            auth_token_file: self.auth_token_file.clone(),
        }
    }

    /// Resolves defaults (`open_files` is the process's open-file limit) and validates.
    pub fn into_config(self, open_files: u64) -> Result<Config, ConfigError> {
        if self.redis.is_none() {
            let given = [
                ("nodes", self.nodes.is_some()),
                ("weight", self.weight.is_some()),
                ("total-weight", self.total_weight.is_some()),
                ("buffer", self.buffer.is_some()),
                ("redis-timeout", self.redis_timeout.is_some()),
                ("redis-depth", self.redis_depth.is_some()),
                ("redis-scripts", self.redis_scripts),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
                return Err(ConfigError::LedgerOnly { flag });
            }
        }
        if let Some(nodes) = self.nodes {
            in_range("nodes", nodes, 1, MAX_NODES)?;
        }
        let shards = self.shards.unwrap_or_else(available_cores);
        let reserved = RESERVED_FDS + RESERVED_FDS_PER_SHARD * shards as u64;
        let default_conns = open_files.saturating_sub(reserved).max(1);
        let config = Config {
            listen: self.listen,
            events: self.events,
            hold_ttl: self.hold_ttl,
            shards,
            max_frame: self.max_frame,
            max_conns: self
                .max_conns
                .unwrap_or(usize::try_from(default_conns).unwrap_or(usize::MAX)),
            node_id: self.node_id,
            http: self.http,
            http_anonymous: self.http_anonymous,
            admin: match self.admin {
                None => AdminAddr::Default(DEFAULT_ADMIN),
                Some(AdminFlag::Off) => AdminAddr::Off,
                Some(AdminFlag::At(addr)) => AdminAddr::Given(addr),
            },
            redis: self.redis.map(|url| {
                let defaults = RedisConfig::new(url.addr);
                RedisConfig {
                    addr: url.addr,
                    login: url.login,
                    share: match (self.weight, self.total_weight, self.nodes) {
                        (Some(weight), Some(total_weight), _) => Share {
                            weight,
                            total_weight,
                        },
                        (_, _, Some(nodes)) => Share::equal(nodes),
                        _ => defaults.share,
                    },
                    buffer: self.buffer.unwrap_or(defaults.buffer),
                    timeout: self.redis_timeout.unwrap_or(defaults.timeout),
                    depth: self.redis_depth.unwrap_or(defaults.depth),
                    scripts: self.redis_scripts,
                }
            }),
            share_port: self.share_port,
            huge_pages: self.huge_pages,
            http_links: self
                .http_secret
                .as_deref()
                .map(crate::signed_links::LinkSigner::load)
                .transpose()
                .map_err(|e| ConfigError::HttpSecret(e.to_string()))?,
            max_conns_per_ip: self.max_conns_per_ip,
            rate_per_ip: self.rate_per_ip,
            timeouts: {
                let d = Timeouts::DEFAULT;
                let pick = |given: Option<Limit>, default| given.map_or(default, |l| l.0);
                Timeouts {
                    header: pick(self.header_timeout, d.header),
                    idle_binary: pick(self.idle_timeout, d.idle_binary),
                    idle_http: pick(self.http_idle_timeout, d.idle_http),
                    write: pick(self.write_timeout, d.write),
                }
            },
            pass_budget: self
                .pass_budget
                .unwrap_or(crate::shard::pass_clock::DEFAULT_PASS_BUDGET),
            auth_tokens: self
                .auth_token_file
                .as_deref()
                .map(crate::auth::TokenSet::load)
                .transpose()
                .map_err(|e| ConfigError::AuthTokens(e.to_string()))?,
            journal: Some(JournalConfig {
                data_dir: self.data_dir,
                fsync: self.fsync,
                raise_totals: self.raise_totals,
                segment_bytes: self.segment_bytes,
            }),
        };
        config.validate()?;
        Ok(config)
    }
}

/// What `--admin` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminFlag {
    Off,
    At(SocketAddr),
}

fn parse_admin(text: &str) -> Result<AdminFlag, String> {
    if text == "off" {
        return Ok(AdminFlag::Off);
    }
    parse_addr(text).map(AdminFlag::At)
}
