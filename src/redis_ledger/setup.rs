//! Blocking set-up and read-back of the Redis ledger, done by `main`'s thread before the
//! shards start and after they stop: never on a shard's loop.

use std::net::SocketAddr;
use std::time::Duration;

use super::flavor::{load_script, Flavor};
use super::{define_event, load_functions, stock, EventKeys};
use crate::config::{EventSpec, RedisConfig, Share};

/// Why the ledger could not be prepared, read or changed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("redis at {addr}: {source}")]
    Redis {
        addr: SocketAddr,
        source: redis::RedisError,
    },
    #[error(
        "event {event}: the Redis ledger has {what} {ledger}, this node was given {given}; \
         start the node with the ledger's value, or change the event on purpose with \
         `ticketd create-events --update` (keeps its sales)"
    )]
    Mismatch {
        event: u32,
        what: &'static str,
        ledger: String,
        given: String,
    },
    #[error("event {event}: {why}")]
    Refused { event: u32, why: String },
}

/// A blocking connection to the ledger, logged in (AUTH, SELECT) as the URL says, given
/// `--redis-timeout` but at least 2 s (set-up is not the hot path).
fn connect(config: &RedisConfig) -> Result<redis::Connection, LedgerError> {
    let addr = config.addr;
    let fail = |source| LedgerError::Redis { addr, source };
    let info = config.login.connection_info(addr).map_err(fail)?;
    let client = redis::Client::open(info).map_err(fail)?;
    client
        .get_connection_with_timeout(config.timeout.max(Duration::from_secs(2)))
        .map_err(fail)
}

/// An event as the ledger defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Definition {
    pub total: i64,
    pub per_user_limit: u16,
    pub hold_ttl_ms: u64,
}

impl Definition {
    pub fn of(spec: &EventSpec, hold_ttl: Duration) -> Self {
        Definition {
            total: spec.stock,
            per_user_limit: spec.per_user_limit,
            hold_ttl_ms: u64::try_from(hold_ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The first way `given` differs from this (the ledger's) definition.
    fn mismatch(&self, event: u32, given: &Definition) -> Option<LedgerError> {
        let differ = |what, ledger: String, given: String| {
            Some(LedgerError::Mismatch {
                event,
                what,
                ledger,
                given,
            })
        };
        let ttl = |ms: u64| humantime::format_duration(Duration::from_millis(ms)).to_string();
        if self.total != given.total {
            differ("total", self.total.to_string(), given.total.to_string())
        } else if self.per_user_limit != given.per_user_limit {
            differ(
                "per-user limit",
                self.per_user_limit.to_string(),
                given.per_user_limit.to_string(),
            )
        } else if self.hold_ttl_ms != given.hold_ttl_ms {
            differ(
                "hold TTL",
                ttl(self.hold_ttl_ms),
                format!("{} (--hold-ttl)", ttl(given.hold_ttl_ms)),
            )
        } else {
            None
        }
    }
}

/// The ledger's definition of `event`, or `None` if it does not exist.
fn read_definition(
    c: &mut redis::Connection,
    addr: SocketAddr,
    event: u32,
) -> Result<Option<Definition>, LedgerError> {
    let fail = |source| LedgerError::Redis { addr, source };
    let (total, limit, ttl): (Option<i64>, Option<u16>, Option<u64>) = redis::cmd("HMGET")
        .arg(EventKeys::new(event).meta())
        .arg("total")
        .arg("limit")
        .arg("hold_ttl_ms")
        .query(c)
        .map_err(fail)?;
    Ok(match (total, limit, ttl) {
        (Some(total), Some(per_user_limit), Some(hold_ttl_ms)) => Some(Definition {
            total,
            per_user_limit,
            hold_ttl_ms,
        }),
        _ => None,
    })
}

/// Installs the ledger code — as a Function library, or as a script where Functions are
/// missing (or `--redis-scripts` asks) — and returns the flavour.
fn install(c: &mut redis::Connection, config: &RedisConfig) -> Result<Flavor, LedgerError> {
    let addr = config.addr;
    let fail = |source| LedgerError::Redis { addr, source };
    let functions = if config.scripts {
        None
    } else {
        match load_functions().query::<String>(c) {
            Ok(_) => Some(Flavor::Functions),
            // Before Redis 7 (or with FUNCTION denied): fall back to EVALSHA.
            Err(e) if e.to_string().to_lowercase().contains("unknown command") => None,
            Err(e) => return Err(fail(e)),
        }
    };
    Ok(match functions {
        Some(flavor) => flavor,
        None => Flavor::Scripts {
            sha: load_script().query::<String>(c).map_err(fail)?,
        },
    })
}

/// Prepares a node: installs the ledger code and reads each event's total from the
/// ledger. A node never creates an event (that is `ticketd create-events`): an event
/// the ledger lacks is `None`, not sold, and logged as an error; one whose total,
/// limit or hold TTL differs from this node's refuses the start.
pub fn prepare(
    config: &RedisConfig,
    events: &[EventSpec],
    hold_ttl: Duration,
) -> Result<(Vec<Option<i64>>, Flavor), LedgerError> {
    let addr = config.addr;
    let mut c = connect(config)?;
    let flavor = install(&mut c, config)?;
    let mut totals = Vec::with_capacity(events.len());
    for e in events {
        match read_definition(&mut c, addr, e.id)? {
            Some(ledger) => {
                if let Some(mismatch) = ledger.mismatch(e.id, &Definition::of(e, hold_ttl)) {
                    return Err(mismatch);
                }
                totals.push(Some(ledger.total));
            }
            None => {
                tracing::error!(
                    event = e.id,
                    redis = %addr,
                    "event {} does not exist in the Redis ledger: this node will not sell it \
                     (NOT_FOUND) until it is created with `ticketd create-events`",
                    e.id
                );
                totals.push(None);
            }
        }
    }
    Ok((totals, flavor))
}

/// How `ticketd create-events` treats an event the ledger already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Existing {
    /// Leave it as it is if it matches; refuse if it differs.
    Keep,
    /// Set its total, limit and hold TTL, keeping its sales (the total may not fall
    /// below what is sold and held).
    Update,
    /// Delete it with all its sales, holds and orders, and create it afresh.
    Reset,
}

/// What `create_events` did to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    AlreadyThere,
    Updated,
    Reset,
}

/// Creates each event in the ledger — the one step that ever does — treating events
/// that exist as `existing` says.
pub fn create_events(
    config: &RedisConfig,
    events: &[EventSpec],
    hold_ttl: Duration,
    existing: Existing,
) -> Result<Vec<(u32, Created)>, LedgerError> {
    let addr = config.addr;
    let fail = |source| LedgerError::Redis { addr, source };
    let mut c = connect(config)?;
    let flavor = install(&mut c, config)?;
    let mut done = Vec::with_capacity(events.len());
    for e in events {
        let wanted = Definition::of(e, hold_ttl);
        let before = read_definition(&mut c, addr, e.id)?;
        let outcome = match (before, existing) {
            (None, _) => Created::Created,
            (Some(ledger), Existing::Keep) => match ledger.mismatch(e.id, &wanted) {
                None => Created::AlreadyThere,
                Some(LedgerError::Mismatch {
                    what,
                    ledger,
                    given,
                    ..
                }) => {
                    return Err(LedgerError::Refused {
                        event: e.id,
                        why: format!(
                            "it exists with {what} {ledger}, not {given}; \
                             --update changes it keeping its sales, --reset deletes them"
                        ),
                    })
                }
                Some(other) => return Err(other),
            },
            (Some(_), Existing::Update) => Created::Updated,
            (Some(_), Existing::Reset) => Created::Reset,
        };
        if outcome == Created::Reset {
            redis::cmd("DEL")
                .arg(&EventKeys::new(e.id).state()[..])
                .query::<i64>(&mut c)
                .map_err(fail)?;
        }
        let reply: Vec<String> = flavor
            .adapt(define_event(e.id, &wanted, outcome == Created::Updated))
            .query(&mut c)
            .map_err(fail)?;
        if reply.first().map(String::as_str) != Some("OK") {
            return Err(LedgerError::Refused {
                event: e.id,
                why: reply
                    .get(1)
                    .cloned()
                    .unwrap_or_else(|| format!("{reply:?}")),
            });
        }
        done.push((e.id, outcome));
    }
    Ok(done)
}

/// Sequences reserved per start for each shard's ids in ledger mode: 2^28 (268 million
/// ids), so the 44-bit sequence lasts 65,536 starts of one node id.
pub const ID_BLOCK: u64 = 1 << 28;

/// The sequences one shard may use this run: `after + 1 ..= last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdBlock {
    pub after: u64,
    pub last: u64,
}

/// Reserves this run's id block for every shard of node `node` with `INCRBY` on a
/// counter per (node, shard field), so a restarted node never issues an id again (with
/// the AOF settings DEPLOYMENT.md asks for, the counter is as durable as the sales).
pub fn reserve_id_blocks(
    config: &RedisConfig,
    node: u16,
    shards: usize,
) -> Result<Vec<IdBlock>, LedgerError> {
    let addr = config.addr;
    let fail = |source| LedgerError::Redis { addr, source };
    let mut c = connect(config)?;
    (0..shards)
        .map(|shard| {
            let last: u64 = redis::cmd("INCRBY")
                .arg(format!("{{ticketd}}:ids:node:{node}:shard:{shard}"))
                .arg(ID_BLOCK)
                .query(&mut c)
                .map_err(fail)?;
            Ok(IdBlock {
                after: last - ID_BLOCK,
                last,
            })
        })
        .collect()
}

/// One event as the ledger sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerView {
    pub total: i64,
    pub sold: i64,
    pub held: i64,
    pub remaining: i64,
}

/// Reads each event's figures (expiring due holds first).
pub fn snapshot(
    config: &RedisConfig,
    flavor: &Flavor,
    events: &[u32],
) -> Result<Vec<LedgerView>, LedgerError> {
    let addr = config.addr;
    let fail = |source| LedgerError::Redis { addr, source };
    let mut c = connect(config)?;
    events
        .iter()
        .map(|&id| {
            let reply = flavor
                .adapt(stock(id))
                .query::<Vec<i64>>(&mut c)
                .map_err(fail)?;
            let (total, remaining) = match reply[..] {
                [total, remaining, ..] => (total, remaining),
                _ => (0, 0),
            };
            let (sold, held): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
                .arg(EventKeys::new(id).meta())
                .arg("sold")
                .arg("held")
                .query(&mut c)
                .map_err(fail)?;
            Ok(LedgerView {
                total,
                sold: sold.unwrap_or(0),
                held: held.unwrap_or(0),
                remaining,
            })
        })
        .collect()
}

/// A node's gate for an event: its share of the total (rounded up), plus the buffer,
/// never above the total.
pub fn gate_size(total: i64, share: Share, buffer: i64) -> i64 {
    let of = i128::from(share.total_weight.max(1));
    let part = (i128::from(total.max(0)) * i128::from(share.weight) + of - 1) / of;
    let part = i64::try_from(part).unwrap_or(i64::MAX);
    part.saturating_add(buffer).min(total).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_split_the_total_and_add_the_buffer() {
        assert_eq!(gate_size(10_000, Share::equal(3), 0), 3_334);
        assert_eq!(gate_size(10_000, Share::equal(3), 100), 3_434);
        assert_eq!(
            gate_size(10, Share::equal(1), 100),
            10,
            "never above the total"
        );
        assert_eq!(gate_size(0, Share::equal(4), 5), 0);
    }

    #[test]
    fn weighted_gates_follow_the_weights() {
        let share = |weight| Share {
            weight,
            total_weight: 10,
        };
        let gates: Vec<i64> = (1..=4).map(|w| gate_size(10_000, share(w), 0)).collect();
        assert_eq!(gates, [1_000, 2_000, 3_000, 4_000]);
        assert_eq!(
            gate_size(10_001, share(1), 50),
            1_051,
            "rounded up, plus the buffer"
        );
        assert_eq!(
            gate_size(i64::MAX / 2, share(9), 0),
            4_150_517_416_584_649_113
        );
    }
}
