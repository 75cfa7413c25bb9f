//! Ledger mode's start: Redis holds the events and their totals; each shard's stock
//! slices become this node's gate, and each shard gets a block of ids reserved in Redis.

use crate::config::{Config, EventSpec, RedisConfig};
use crate::redis_ledger::conn::ConnSettings;
use crate::redis_ledger::setup;
use crate::shard::remote::RemoteSettings;

use super::StartError;

/// The gates (the catalog this node sells from), the shards' Redis settings, and which
/// events Redis lacks (in catalog order).
pub(super) fn prepare(
    redis: &RedisConfig,
    config: &Config,
) -> Result<(Vec<EventSpec>, RemoteSettings, Vec<bool>), StartError> {
    let (totals, flavor) = setup::prepare(redis, &config.events, config.hold_ttl)?;
    let missing: Vec<bool> = totals.iter().map(Option::is_none).collect();
    let gates = config
        .events
        .iter()
        .zip(totals)
        .map(|(e, total)| EventSpec {
            // An event the ledger lacks gets an empty gate: every purchase asks
            // Redis, which answers NOT_FOUND until the event is created.
            stock: total.map_or(0, |t| setup::gate_size(t, redis.share, redis.buffer)),
            ..*e
        })
        .collect();
    let id_blocks = setup::reserve_id_blocks(redis, config.node_id, config.shards)?;
    let settings = RemoteSettings {
        id_blocks,
        addr: redis.addr,
        login: redis.login.clone(),
        conn: ConnSettings {
            timeout: redis.timeout,
            max_in_flight: redis.depth,
            ..ConnSettings::default()
        },
        flavor,
    };
    Ok((gates, settings, missing))
}
