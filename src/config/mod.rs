//! Command line and the validated configuration built from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

mod cli;
mod file;
mod urls;

pub use cli::{Cli, Tool};
pub use file::{effective, merge_config_file, ConfigFileError, SecretPaths};
pub use urls::{parse_addr, parse_redis_url, RedisLogin, RedisUrl};

use crate::ids::{MAX_NODE_ID, MAX_SHARDS};
use crate::journal::commit::DEFAULT_ROTATE_MIN_BYTES;
use crate::journal::FsyncMode;

/// Default data directory (embedded ledger's journal).
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
/// Default hold TTL: the pre-deduct payment window.
pub const DEFAULT_HOLD_TTL: &str = "15m";
/// Default per-user limit when `--event` gives none.
pub const DEFAULT_PER_USER_LIMIT: u16 = 1;
/// File descriptors kept back from `--max-conns` for the process itself: logs, the data
/// dir's lock and manifest, the admin endpoint, Redis set-up.
pub const RESERVED_FDS: u64 = 64;
/// Descriptors kept back per shard: its listeners, poller and waker, journal files and
/// Redis connection, and the connections it holds open only to answer OVERLOADED.
pub const RESERVED_FDS_PER_SHARD: u64 = 16 + crate::limits::MAX_SHEDDING_CONNECTIONS as u64;
/// Largest stock one event may have; far above any real sale, far below `i64` overflow.
pub const MAX_EVENT_STOCK: i64 = 1 << 40;
/// Longest hold TTL: a week is far beyond any payment window, and keeps every deadline
/// arithmetic (`now + ttl`, twice that for remembering) far from overflow.
pub const MAX_HOLD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// `--pass-budget` at most: beyond it a pass is a stop-the-world pause, not a bound.
pub const MAX_PASS_BUDGET: Duration = Duration::from_secs(1);
/// Largest `--max-frame`: a partial frame must fit under the connection's input bound
/// (the length prefix included), or it could never complete.
pub const MAX_MAX_FRAME: u32 = (crate::limits::INPUT_HIGH_WATER - 4) as u32;
/// Most connections one node may be told to hold (far above any open-file limit).
pub const MAX_MAX_CONNS: usize = 10_000_000;
/// Most ledger nodes `--nodes` may name (the node id's range).
pub const MAX_NODES: u32 = MAX_NODE_ID as u32 + 1;
/// Most Redis calls in flight per shard.
pub const MAX_REDIS_DEPTH: usize = 65_536;
/// `--redis-depth`'s default: a shard's calls in flight; while they are, its next
/// requests gather into one call. Two did the most sales per second here: with one in
/// flight a call gathers ~800 sales but Redis waits between calls, with two ~700 and the
/// next call already queued in Redis, with 64 ~110 (docs/BENCHMARKS.md, "a shard's
/// requests gather while its calls run").
pub const DEFAULT_REDIS_DEPTH: usize = 2;
/// Bounds of `--redis-timeout`.
pub const MIN_REDIS_TIMEOUT: Duration = Duration::from_millis(1);
pub const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bounds of the hidden `--segment-bytes`.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
pub const MAX_SEGMENT_BYTES: u64 = 1 << 40;

/// One `--event ID:STOCK[:LIMIT]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSpec {
    pub id: u32,
    pub stock: i64,
    pub per_user_limit: u16,
}

/// Why an `--event` value or the configuration as a whole was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Why the token file was refused, in words.
    #[error("--auth-token-file: {0}")]
    AuthTokens(String),
    #[error("--rate-per-ip must be a number of requests a second above 0")]
    RatePerIp,
    #[error("--http with --auth-token-file needs --http-secret too: otherwise the HTTP front would let anyone buy as anyone")]
    HttpWithoutAuth,
    #[error(
        "--http-anonymous cannot be combined with --http-secret: a signed link names its user"
    )]
    AnonymousSignedLinks,
    #[error("--http-secret signs links for the HTTP front: it needs --http")]
    SecretWithoutHttp,
    /// Why the secret file was refused, in words.
    #[error("--http-secret: {0}")]
    HttpSecret(String),
    #[error("event `{0}`: expected ID:STOCK[:LIMIT], e.g. 1:10000 or 1:10000:2")]
    EventShape(String),
    #[error("event `{spec}`: {field} `{value}` is not a valid number")]
    EventNumber {
        spec: String,
        field: &'static str,
        value: String,
    },
    #[error("event `{spec}`: stock must be at most {max}")]
    EventStockTooLarge { spec: String, max: i64 },
    #[error("event `{0}`: the per-user limit must be at least 1")]
    ZeroLimit(String),
    #[error("event {0} is given twice")]
    DuplicateEvent(u32),
    #[error("--shards must be between 1 and {max}, got {got}")]
    Shards { got: usize, max: usize },
    #[error("--max-frame must be between {min} (the largest request) and {max}, got {got}")]
    MaxFrame { got: u32, min: u32, max: u32 },
    #[error("--max-conns must be between 1 and {max}, got {got}")]
    MaxConns { got: usize, max: usize },
    #[error("--hold-ttl must be between 1ms and {}, got {}", humantime::format_duration(*max), humantime::format_duration(*got))]
    HoldTtl { got: Duration, max: Duration },
    #[error("--pass-budget must be at most {}, got {}", humantime::format_duration(*max), humantime::format_duration(*got))]
    PassBudget { got: Duration, max: Duration },
    #[error("--{flag} must be between {min} and {max}, got {got}")]
    OutOfRange {
        flag: &'static str,
        got: i128,
        min: i128,
        max: i128,
    },
    #[error("--redis-timeout must be between {} and {}, got {}", humantime::format_duration(*min), humantime::format_duration(*max), humantime::format_duration(*got))]
    RedisTimeout {
        got: Duration,
        min: Duration,
        max: Duration,
    },
    #[error("--{flag} is a ledger-mode flag: it needs --redis (without it, this node keeps its own embedded ledger)")]
    LedgerOnly { flag: &'static str },
    #[error("--{a} and --{b} are the same address ({addr}): each needs a port of its own")]
    SameAddress {
        a: &'static str,
        b: &'static str,
        addr: SocketAddr,
    },
    #[error("event `{0}`: stock must be at least 1")]
    ZeroStock(String),
    #[error("--node-id must be at most {max}, got {got}")]
    NodeId { got: u16, max: u16 },
}

impl FromStr for EventSpec {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (id, stock, limit) = match parts.as_slice() {
            [id, stock] => (*id, *stock, None),
            [id, stock, limit] => (*id, *stock, Some(*limit)),
            _ => return Err(ConfigError::EventShape(spec.to_owned())),
        };
        let number_error = |field: &'static str, value: &str| ConfigError::EventNumber {
            spec: spec.to_owned(),
            field,
            value: value.to_owned(),
        };
        let id = id.parse::<u32>().map_err(|_| number_error("id", id))?;
        let stock = stock
            .parse::<i64>()
            .ok()
            .filter(|s| *s >= 0)
            .ok_or_else(|| number_error("stock", stock))?;
        if stock == 0 {
            return Err(ConfigError::ZeroStock(spec.to_owned()));
        }
        if stock > MAX_EVENT_STOCK {
            return Err(ConfigError::EventStockTooLarge {
                spec: spec.to_owned(),
                max: MAX_EVENT_STOCK,
            });
        }
        let per_user_limit = match limit {
            None => DEFAULT_PER_USER_LIMIT,
            Some(limit) => limit
                .parse::<u16>()
                .map_err(|_| number_error("limit", limit))?,
        };
        if per_user_limit == 0 {
            return Err(ConfigError::ZeroLimit(spec.to_owned()));
        }
        Ok(EventSpec {
            id,
            stock,
            per_user_limit,
        })
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// A time limit flag: a duration, or `off` (or `0`) for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<Duration>);

pub fn parse_limit(text: &str) -> Result<Limit, humantime::DurationError> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Limit(None));
    }
    let duration = humantime::parse_duration(text)?;
    Ok(Limit((!duration.is_zero()).then_some(duration)))
}

/// A validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub events: Vec<EventSpec>,
    pub hold_ttl: Duration,
    pub shards: usize,
    pub max_frame: u32,
    pub max_conns: usize,
    pub node_id: u16,
    pub http: Option<SocketAddr>,
    pub http_anonymous: bool,
    /// `--admin`: metrics, health and readiness endpoint.
    pub admin: AdminAddr,
    /// `--share-port`: other processes may serve `listen`'s port too.
    pub share_port: bool,
    /// `--huge-pages`: user tables in the kernel's reserved huge pages.
    pub huge_pages: bool,
    /// `--auth-token-file`: binary-protocol connections must AUTH with one of these.
    pub auth_tokens: Option<crate::auth::TokenSet>,
    /// `--http-secret`: the HTTP front sells only to links signed with this secret.
    pub http_links: Option<crate::signed_links::LinkSigner>,
    /// `--max-conns-per-ip`: connections one source address may hold.
    pub max_conns_per_ip: Option<u32>,
    /// `--rate-per-ip`: requests a second one source address may send.
    pub rate_per_ip: Option<f64>,
    /// `--header-timeout`, `--idle-timeout`, `--http-idle-timeout`, `--write-timeout`.
    pub timeouts: crate::limits::Timeouts,
    /// `--pass-budget`: a loop pass's time for reading and writing connections.
    pub pass_budget: Duration,
    /// Ledger mode, when set.
    pub redis: Option<RedisConfig>,
    /// The embedded ledger's journal; `None` keeps everything in memory only (tests and
    /// embedding; the binary always has one).
    pub journal: Option<JournalConfig>,
}

/// `--data-dir` and its companions.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub data_dir: PathBuf,
    pub fsync: FsyncMode,
    pub raise_totals: bool,
    pub segment_bytes: u64,
}

impl JournalConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            data_dir: data_dir.into(),
            fsync: FsyncMode::Always,
            raise_totals: false,
            segment_bytes: DEFAULT_ROTATE_MIN_BYTES,
        }
    }
}

/// A node's part of the local stock: `weight` of `total_weight`, as the load balancer
/// weighs the nodes (`--nodes N` is weight 1 of N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub weight: u32,
    pub total_weight: u32,
}

impl Share {
    /// One of `nodes` equal nodes.
    pub fn equal(nodes: u32) -> Self {
        Share {
            weight: 1,
            total_weight: nodes,
        }
    }
}

/// `--redis` and its companions.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub addr: SocketAddr,
    /// AUTH and SELECT from the URL, sent on every connection.
    pub login: RedisLogin,
    /// This node's part of each event's local stock (`--nodes`, or `--weight` of
    /// `--total-weight`).
    pub share: Share,
    pub buffer: i64,
    pub timeout: Duration,
    pub depth: usize,
    /// Force the EVALSHA flavour.
    pub scripts: bool,
}

impl RedisConfig {
    /// The defaults of every `--redis` companion flag, for Redis at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        RedisConfig {
            addr,
            login: RedisLogin::default(),
            share: Share::equal(1),
            buffer: 0,
            timeout: Duration::from_millis(500),
            depth: DEFAULT_REDIS_DEPTH,
            scripts: false,
        }
    }
}

impl Config {
    /// A configuration for tests and embedding: loopback on an ephemeral port, one shard
    /// per available core, default limits.
    pub fn new(events: Vec<EventSpec>) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            events,
            hold_ttl: Duration::from_secs(15 * 60),
            shards: available_cores(),
            max_frame: ticketd_proto::DEFAULT_MAX_FRAME,
            max_conns: 10_000,
            node_id: 0,
            http: None,
            http_anonymous: false,
            admin: AdminAddr::Off,
            share_port: false,
            huge_pages: false,
            auth_tokens: None,
            http_links: None,
            max_conns_per_ip: None,
            rate_per_ip: None,
            timeouts: crate::limits::Timeouts::DEFAULT,
            pass_budget: crate::shard::pass_clock::DEFAULT_PASS_BUDGET,
            redis: None,
            journal: None,
        }
    }

    /// Checks every limit the server relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(n) = self.max_conns_per_ip {
            in_range("max-conns-per-ip", n, 1, u32::MAX)?;
        }
        if let Some(rate) = self.rate_per_ip {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::RatePerIp);
            }
        }
        if self.auth_tokens.is_some() && self.http.is_some() && self.http_links.is_none() {
            return Err(ConfigError::HttpWithoutAuth);
        }
        if self.http_links.is_some() && self.http_anonymous {
            return Err(ConfigError::AnonymousSignedLinks);
        }
        if self.http_links.is_some() && self.http.is_none() {
            return Err(ConfigError::SecretWithoutHttp);
        }
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(ConfigError::Shards {
                got: self.shards,
                max: MAX_SHARDS,
            });
        }
        let min_frame = ticketd_proto::MIN_BODY_LEN + ticketd_proto::Op::Buy.args_len() as u32;
        if !(min_frame..=MAX_MAX_FRAME).contains(&self.max_frame) {
            return Err(ConfigError::MaxFrame {
                got: self.max_frame,
                min: min_frame,
                max: MAX_MAX_FRAME,
            });
        }
        if !(1..=MAX_MAX_CONNS).contains(&self.max_conns) {
            return Err(ConfigError::MaxConns {
                got: self.max_conns,
                max: MAX_MAX_CONNS,
            });
        }
        if !(Duration::from_millis(1)..=MAX_HOLD_TTL).contains(&self.hold_ttl) {
            return Err(ConfigError::HoldTtl {
                got: self.hold_ttl,
                max: MAX_HOLD_TTL,
            });
        }
        if self.pass_budget > MAX_PASS_BUDGET {
            return Err(ConfigError::PassBudget {
                got: self.pass_budget,
                max: MAX_PASS_BUDGET,
            });
        }
        if self.node_id > MAX_NODE_ID {
            return Err(ConfigError::NodeId {
                got: self.node_id,
                max: MAX_NODE_ID,
            });
        }
        let named = [
            ("listen", Some(self.listen)),
            ("http", self.http),
            ("admin", self.admin.addr()),
        ];
        for (i, &(a, first)) in named.iter().enumerate() {
            for &(b, second) in &named[i + 1..] {
                if let (Some(x), Some(y)) = (first, second) {
                    if x == y && x.port() != 0 {
                        return Err(ConfigError::SameAddress { a, b, addr: x });
                    }
                }
            }
        }
        if let Some(redis) = &self.redis {
            in_range("total-weight", redis.share.total_weight, 1, MAX_NODES)?;
            in_range("weight", redis.share.weight, 1, redis.share.total_weight)?;
            in_range("buffer", redis.buffer, 0, MAX_EVENT_STOCK)?;
            in_range("redis-depth", redis.depth as u64, 1, MAX_REDIS_DEPTH as u64)?;
            if !(MIN_REDIS_TIMEOUT..=MAX_REDIS_TIMEOUT).contains(&redis.timeout) {
                return Err(ConfigError::RedisTimeout {
                    got: redis.timeout,
                    min: MIN_REDIS_TIMEOUT,
                    max: MAX_REDIS_TIMEOUT,
                });
            }
        }
        if let Some(journal) = &self.journal {
            in_range(
                "segment-bytes",
                journal.segment_bytes,
                MIN_SEGMENT_BYTES,
                MAX_SEGMENT_BYTES,
            )?;
        }
        let mut seen = std::collections::HashSet::new();
        for event in &self.events {
            if !seen.insert(event.id) {
                return Err(ConfigError::DuplicateEvent(event.id));
            }
        }
        Ok(())
    }
}

/// `--flag` within `min..=max`, or the error that names it and its bounds.
fn in_range<T: Into<i128> + Copy>(
    flag: &'static str,
    got: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    let (got, min, max) = (got.into(), min.into(), max.into());
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            flag,
            got,
            min,
            max,
        })
    }
}

/// Cores this process may run on (its affinity mask), at least 1.
pub fn available_cores() -> usize {
    core_affinity::get_core_ids()
        .map(|ids| ids.len())
        .unwrap_or(1)
        .clamp(1, MAX_SHARDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_specs_parse_with_and_without_limit() {
        assert_eq!(
            "1:10000".parse(),
            Ok(EventSpec {
                id: 1,
                stock: 10_000,
                per_user_limit: 1
            })
        );
        assert_eq!(
            "7:5:3".parse(),
            Ok(EventSpec {
                id: 7,
                stock: 5,
                per_user_limit: 3
            })
        );
    }

    #[test]
    fn malformed_event_specs_say_what_is_wrong() {
        assert!(matches!(
            "1".parse::<EventSpec>(),
            Err(ConfigError::EventShape(_))
        ));
        assert!(matches!(
            "1:2:3:4".parse::<EventSpec>(),
            Err(ConfigError::EventShape(_))
        ));
        assert!(matches!(
            "x:2".parse::<EventSpec>(),
            Err(ConfigError::EventNumber { field: "id", .. })
        ));
        assert!(matches!(
            "1:-2".parse::<EventSpec>(),
            Err(ConfigError::EventNumber { field: "stock", .. })
        ));
        assert!(matches!(
            "1:2:0".parse::<EventSpec>(),
            Err(ConfigError::ZeroLimit(_))
        ));
        assert!(matches!(
            "1:2:70000".parse::<EventSpec>(),
            Err(ConfigError::EventNumber { field: "limit", .. })
        ));
    }

    #[test]
    fn validation_rejects_duplicates_and_tiny_frames() {
        let spec = EventSpec {
            id: 1,
            stock: 1,
            per_user_limit: 1,
        };
        let mut config = Config::new(vec![spec, spec]);
        assert_eq!(config.validate(), Err(ConfigError::DuplicateEvent(1)));
        config.events.pop();
        config.max_frame = 22;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::MaxFrame { .. })
        ));
        config.max_frame = 23;
        assert_eq!(config.validate(), Ok(()));
    }
}

/// The admin endpoint's port when `--admin` is not given (Prometheus's range for
/// exporters; 9464 is the one OpenTelemetry's Prometheus exporter uses).
pub const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// Where the admin endpoint listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAddr {
    /// `--admin off` (and the default of [`Config::new`], for tests and embedding).
    Off,
    /// Not given: the default address, skipped with a warning if another process has it
    /// (a second node on one machine still starts).
    Default(SocketAddr),
    /// Given: a start that cannot bind it fails.
    Given(SocketAddr),
}

impl AdminAddr {
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            AdminAddr::Off => None,
            AdminAddr::Default(addr) | AdminAddr::Given(addr) => Some(addr),
        }
    }
}
