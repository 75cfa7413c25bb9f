//! The embedded ledger's start: recover the data dir, work out what is still on sale,
//! route holds recovered onto another shard count, and spawn each shard's journal
//! writer.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use crate::clock::WallClock;
use crate::config::{Config, EventSpec, JournalConfig};
use crate::ids;
use crate::journal::store::DataDir;
use crate::journal::{self, writer, EventDef, Recovered};
use crate::routing::owner_of_user;
use crate::shard::mailbox::Peer;
use crate::shard::{HoldRoutes, ShardJournal};
use crate::stats::NodeStats;

use super::StartError;

/// Each shard's journal writer, started on the stream recovery left open for it; the
/// data dir (held, with its lock, while the node runs) and the recovered holds' routes.
pub(super) fn spawn_writers(
    opened: journal::Opened,
    journal_config: &JournalConfig,
    config: &Config,
    peers: &[Peer],
    fail_stop: &Arc<AtomicBool>,
    clock: WallClock,
    stats: &NodeStats,
) -> Result<(DataDir, Vec<Option<ShardJournal>>, HoldRoutes), StartError> {
    let routes = hold_routes(&opened.state, config.node_id, config.shards);
    let state = Arc::new(opened.state);
    let mut journals = Vec::with_capacity(config.shards);
    for (index, stream) in opened.streams.into_iter().enumerate() {
        let snapshot_len = stream.len;
        let waker = peers
            .get(index)
            .map(|p| Arc::clone(&p.waker))
            .ok_or(StartError::Spawn {
                shard: index,
                source: std::io::Error::other("more journal streams than shards"),
            })?;
        let handle = writer::spawn(writer::WriterSetup {
            dir: opened.dir.path().to_path_buf(),
            file: stream.file,
            header: stream.header,
            len: stream.len,
            mode: journal_config.fsync,
            waker,
            fail_stop: Arc::clone(fail_stop),
            counters: stats.journal(index),
        })
        .map_err(|source| StartError::Spawn {
            shard: index,
            source,
        })?;
        journals.push(Some(ShardJournal {
            writer: handle,
            snapshot_len,
            rotate_min: journal_config.segment_bytes,
            state: Arc::clone(&state),
            clock,
        }));
    }
    Ok((opened.dir, journals, routes))
}

/// Recovers the data dir and starts this run's generation in it.
pub(super) fn open_journal(
    journal_config: &JournalConfig,
    config: &Config,
    clock: WallClock,
) -> Result<journal::Opened, StartError> {
    let started = Instant::now();
    let events: Vec<EventDef> = config
        .events
        .iter()
        .map(|e| EventDef {
            event_id: e.id,
            total: e.stock,
            per_user_limit: e.per_user_limit,
        })
        .collect();
    let opened = journal::open(
        &journal_config.data_dir,
        &journal::OpenOptions {
            node: config.node_id,
            shards: config.shards,
            events: &events,
            raise_totals: journal_config.raise_totals,
            now_unix_ms: clock.unix_ms(started),
            hold_ttl_ms: u64::try_from(config.hold_ttl.as_millis()).unwrap_or(u64::MAX),
            // Only where every write is synced before the next (journal::record::tail).
            zero_tailed: journal_config.fsync == journal::FsyncMode::Always,
        },
    )?;
    let state = &opened.state;
    tracing::info!(
        data_dir = %journal_config.data_dir.display(),
        generation = state.manifest.map_or(0, |m| m.generation),
        records = state.records,
        bytes = state.bytes,
        orders = state.orders.len(),
        live_holds = state.holds.values().filter(|h| h.end.is_none()).count(),
        torn_tails = state.torn.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "journal recovered"
    );
    for event in &opened.events {
        if !config.events.iter().any(|e| e.id == event.event_id) {
            tracing::info!(
                event = event.event_id,
                total = event.total,
                "event on sale from the journal (no --event given for it)"
            );
        }
    }
    Ok(opened)
}

pub(super) fn specs_of(events: &[EventDef]) -> Vec<EventSpec> {
    events
        .iter()
        .map(|e| EventSpec {
            id: e.event_id,
            stock: e.total,
            per_user_limit: e.per_user_limit,
        })
        .collect()
}

/// What is still on sale of each event after what the journal sold and holds.
pub(super) fn available_stock(
    events: &[EventSpec],
    state: &Recovered,
) -> Result<Vec<i64>, StartError> {
    events
        .iter()
        .map(|e| {
            let (sold, held) = state.sold_and_held(e.id);
            let taken = sold + held;
            if taken > e.stock {
                return Err(StartError::Oversold {
                    event: e.id,
                    total: e.stock,
                    taken,
                });
            }
            Ok(e.stock - taken)
        })
        .collect()
}

/// Recovered live holds whose owner (the shard of their user now) is not the shard
/// their id names: only after a restart with another shard count. (Ended holds need no
/// route: they are kept by the shard their id's field maps to.)
fn hold_routes(state: &Recovered, node: u16, shards: usize) -> HoldRoutes {
    state
        .holds
        .values()
        .filter(|hold| hold.end.is_none())
        .filter_map(|hold| {
            let owner = owner_of_user(hold.user, shards);
            (ids::owning_shard(hold.hold_id, node, shards) != Some(owner))
                .then_some((hold.hold_id, owner))
        })
        .collect()
}
