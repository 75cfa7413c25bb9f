//! The embedded ledger to and from the journal: a shard's ledger restored from what
//! recovery read, and its live state written as the snapshot a new segment starts with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ended::Ended;
use super::live::{Hold, LiveHolds};
use super::{chain_order, Ledger};
use crate::catalog::Catalog;
use crate::clock::WallClock;
use crate::ids::{field_of, prefix_of, sequence_of, IdGenerator};
use crate::journal::commit::RecordBuf;
use crate::journal::record::HoldEnd;
use crate::journal::recovery::{EventDef, Recovered};
use crate::journal::snapshot::{ConfirmedHolds, LiveHoldsJob, SnapshotBuilder, SnapshotJob};
use crate::routing::owner_of_user;

impl Ledger {
    /// The ledger of shard `shard` of `shards`, journaling, with the users it owns (and
    /// their orders and holds) taken from the recovered `state`. The catalog's stock
    /// must already exclude what `state` sold and holds.
    pub fn restore(
        shard: usize,
        shards: usize,
        node_id: u16,
        catalog: Arc<Catalog>,
        hold_ttl: Duration,
        state: &Recovered,
        clock: WallClock,
    ) -> Self {
        let mut ledger = Ledger::new(shard, node_id, catalog, hold_ttl);
        ledger.clock = clock;
        ledger.journal = RecordBuf::new(true);
        let last_seq = state.id_marks.get(&(shard as u16)).copied().unwrap_or(0);
        ledger.ids = IdGenerator::resume(node_id, shard, last_seq);
        ledger.inherited_id_marks = state
            .id_marks
            .iter()
            .filter(|&(&field, _)| {
                usize::from(field) % shards == shard && usize::from(field) != shard
            })
            .map(|(&field, &seq)| (field, seq))
            .collect();
        for order in &state.orders {
            if owner_of_user(order.user, shards) != shard {
                continue;
            }
            let Some(event) = ledger.catalog.index_of(order.event_id) else {
                continue;
            };
            let link = ledger.next_order_link();
            let tally = ledger.users[event].get_or_insert(order.user);
            tally.bought = tally.bought.saturating_add(order.qty);
            let prev = chain_order(tally, link);
            let placed = (event, order.user, order.qty, prev);
            // Restored orders carry no hold: what is remembered of holds confirmed
            // before the restart is snapshotted from the ended holds' own memory.
            ledger.push_order(order.order_id, placed, order.unix_ms, None);
        }
        ledger.live = LiveHolds::new(ledger.ids.prefix(), last_seq);
        let mut live = Vec::new();
        // Ended holds are answered by the shard their id's field maps to.
        let answers_for = |id: u64| usize::from(field_of(id)) % shards == shard;
        let mut ended: Vec<(u64, u64, Ended)> = Vec::new();
        for hold in state.holds.values() {
            match hold.end {
                None => {
                    if owner_of_user(hold.user, shards) != shard {
                        continue;
                    }
                    let Some(event) = ledger.catalog.index_of(hold.event_id) else {
                        continue;
                    };
                    let tally = ledger.users[event].get_or_insert(hold.user);
                    tally.held = tally.held.saturating_add(hold.qty);
                    ledger.tallies[event].held += u64::from(hold.qty);
                    let hold_view = Hold {
                        event,
                        user: hold.user,
                        qty: hold.qty,
                        expires_at: clock.instant(hold.deadline_ms),
                    };
                    live.push((hold.hold_id, hold_view));
                }
                Some((end, ended_ms)) if answers_for(hold.hold_id) => {
                    let end = match end {
                        HoldEnd::Confirmed { order_id } => Ended::Confirmed { order_id },
                        HoldEnd::Cancelled => Ended::Cancelled,
                        HoldEnd::Expired => Ended::Expired,
                    };
                    ended.push((ended_ms, hold.hold_id, end));
                }
                Some(_) => {}
            }
        }
        for run in state.ended_runs.iter().filter(|r| answers_for(r.first_id)) {
            ended.extend(run.ends().map(|(id, end)| (run.ended_ms, id, end)));
        }
        for &(hold_id, order_id, ended_ms) in &state.ended_confirmed {
            if answers_for(hold_id) {
                ended.push((ended_ms, hold_id, Ended::Confirmed { order_id }));
            }
        }
        ledger.live.restore(live);
        // Oldest first, and the bitmap starting at this shard's oldest remembered id.
        ended.sort_unstable_by_key(|&(ms, id, _)| (ms, id));
        let prefix = ledger.ids.prefix();
        if let Some(first) = ended
            .iter()
            .filter(|&&(_, id, _)| prefix_of(id) == prefix)
            .map(|&(_, id, _)| sequence_of(id))
            .min()
        {
            ledger.ended.begin_at(first);
        }
        ledger.ended.restore(
            ended
                .into_iter()
                .map(|(ended_ms, hold_id, end)| (hold_id, end, clock.instant(ended_ms))),
        );
        ledger
    }

    /// About the bytes a snapshot of this shard would take now, counting its orders and
    /// live holds only (the rest is small, or soon forgotten): what the journal weighs
    /// a segment against before rotating it. Costs nothing to ask.
    pub fn live_state_estimate(&self) -> u64 {
        crate::journal::snapshot::estimated_bulk(self.orders.len(), self.live.len())
    }

    /// This shard's live state as a snapshot: events, orders, holds still live or
    /// remembered, and the id mark of its shard field.
    ///
    /// The orders, the bulk of it, go by reference: the writer thread encodes them
    /// ([`SnapshotJob`]), so taking a snapshot costs the loop a copy of the open chunk of
    /// orders and the encoding of the holds, not a pass of its own.
    pub fn snapshot(&self, now: Instant) -> SnapshotJob {
        let mut head = SnapshotBuilder::begin(self.clock.unix_ms(now));
        for event in self.catalog.iter() {
            head.event(EventDef {
                event_id: event.id,
                total: event.stock.total(),
                per_user_limit: event.per_user_limit,
            });
        }
        let orders = self.orders.share();
        let mut snapshot = SnapshotBuilder::continuing();
        // The live holds go by reference too, encoded by the writer.
        let live = LiveHoldsJob {
            holds: self.live.share(),
            clock: self.clock,
            catalog: Arc::clone(&self.catalog),
        };
        // Ended holds with a time they ended by, so a restart forgets them no sooner
        // than this run would have.
        let mut runs = Vec::new();
        let mut confirmed = Vec::new();
        self.ended.snapshot(
            |at| self.clock.unix_ms(at),
            |run| runs.push(run),
            |hold_id, order_id, ended_ms| confirmed.push((hold_id, order_id, ended_ms)),
        );
        for run in runs {
            snapshot.ended_run(run);
        }
        for (hold_id, order_id, ended_ms) in confirmed {
            snapshot.ended_confirmed(hold_id, order_id, ended_ms);
        }
        snapshot.id_mark(self.shard as u16, self.ids.last_seq());
        for &(field, seq) in &self.inherited_id_marks {
            snapshot.id_mark(field, seq);
        }
        let taken_ms = self.clock.unix_ms(now);
        let ttl_ms = u64::try_from(self.hold_ttl.as_millis()).unwrap_or(u64::MAX);
        let bitmap = self.ended.snapshot_states(|at| self.clock.unix_ms(at));
        SnapshotJob::new(head, orders, snapshot)
            .with_confirmed_holds(ConfirmedHolds {
                prefix: self.ids.prefix(),
                ended_after_ms: taken_ms.saturating_sub(ttl_ms),
            })
            .with_ended_states(bitmap)
            .with_live_holds(live)
    }
}
