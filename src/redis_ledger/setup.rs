//! Blocking set-up and read-back of the Redis ledger, done by `main`'s thread before the
//! shards start and after they stop: never on a shard's loop.

use std::net::SocketAddr;
use std::time::Duration;

use super::flavor::{load_script, Flavor};
use super::{init_event, load_functions, stock, EventKeys};
use crate::config::{EventSpec, RedisConfig};

/// Why the ledger could not be prepared or read.
#[derive(Debug, thiserror::Error)]
#[error("redis at {addr}: {source}")]
pub struct LedgerError {
    addr: SocketAddr,
    source: redis::RedisError,
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<redis::Connection, LedgerError> {
    let fail = |source| LedgerError { addr, source };
    let client = redis::Client::open(format!("redis://{addr}/")).map_err(fail)?;
    client.get_connection_with_timeout(timeout).map_err(fail)
}

/// Installs the ledger code — as a Function library, or as a script where Functions are
/// missing (or `--redis-scripts` asks) — resets events when asked, creates absent
/// events, and returns each event's total as the ledger knows it (a joining node keeps
/// the sales already made, and the total they were made against), with the flavour.
pub fn prepare(
    config: &RedisConfig,
    events: &[EventSpec],
    hold_ttl: Duration,
) -> Result<(Vec<i64>, Flavor), LedgerError> {
    let addr = config.addr;
    let fail = |source| LedgerError { addr, source };
    let mut c = connect(addr, config.timeout.max(Duration::from_secs(2)))?;
    let functions = if config.scripts {
        None
    } else {
        match load_functions().query::<String>(&mut c) {
            Ok(_) => Some(Flavor::Functions),
            // Before Redis 7 (or with FUNCTION denied): fall back to EVALSHA.
            Err(e) if e.to_string().to_lowercase().contains("unknown command") => None,
            Err(e) => return Err(fail(e)),
        }
    };
    let flavor = match functions {
        Some(flavor) => flavor,
        None => Flavor::Scripts {
            sha: load_script().query::<String>(&mut c).map_err(fail)?,
        },
    };
    let ttl_ms = u64::try_from(hold_ttl.as_millis()).unwrap_or(u64::MAX);
    let mut totals = Vec::with_capacity(events.len());
    for e in events {
        if config.reset_events {
            redis::cmd("DEL")
                .arg(&EventKeys::new(e.id).state()[..])
                .query::<i64>(&mut c)
                .map_err(fail)?;
        }
        let reply: Vec<i64> = flavor
            .adapt(init_event(e.id, e.stock, e.per_user_limit, ttl_ms))
            .query(&mut c)
            .map_err(fail)?;
        totals.push(reply.first().copied().unwrap_or(e.stock));
    }
    Ok((totals, flavor))
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
    addr: SocketAddr,
    timeout: Duration,
    node: u16,
    shards: usize,
) -> Result<Vec<IdBlock>, LedgerError> {
    let fail = |source| LedgerError { addr, source };
    let mut c = connect(addr, timeout.max(Duration::from_secs(2)))?;
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
    addr: SocketAddr,
    flavor: &Flavor,
    events: &[u32],
) -> Result<Vec<LedgerView>, LedgerError> {
    let fail = |source| LedgerError { addr, source };
    let mut c = connect(addr, Duration::from_secs(2))?;
    events
        .iter()
        .map(|&id| {
            let [total, remaining]: [i64; 2] = flavor
                .adapt(stock(id))
                .query::<Vec<i64>>(&mut c)
                .map_err(fail)?
                .try_into()
                .unwrap_or([0, 0]);
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

/// A node's gate for an event: its share of the total plus the buffer, never above the
/// total.
pub fn gate_size(total: i64, nodes: u32, buffer: i64) -> i64 {
    let nodes = i64::from(nodes.max(1));
    ((total + nodes - 1) / nodes + buffer).min(total).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_split_the_total_and_add_the_buffer() {
        assert_eq!(gate_size(10_000, 3, 0), 3_334);
        assert_eq!(gate_size(10_000, 3, 100), 3_434);
        assert_eq!(gate_size(10, 1, 100), 10, "never above the total");
        assert_eq!(gate_size(0, 4, 5), 0);
    }
}
