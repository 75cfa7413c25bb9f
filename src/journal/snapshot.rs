//! Snapshots: a stream's live state written as records between `SnapshotBegin` and
//! `SnapshotEnd`, at the start of every segment. Recovery needs nothing older than the
//! newest complete snapshot, so disk use and start-up time follow live state, not
//! history.

use bytes::BytesMut;

use super::record::Record;
use super::recovery::{EventDef, HoldRec, OrderRec, Recovered};
use crate::ids::field_of;
use crate::ledger::ended::EndedRun;
use crate::routing::owner_of_user;

/// Builds one snapshot: [`SnapshotBuilder::begin`], the state, then
/// [`SnapshotBuilder::finish`].
#[derive(Debug)]
pub struct SnapshotBuilder {
    out: BytesMut,
    records: u64,
}

impl SnapshotBuilder {
    pub fn begin(unix_ms: u64) -> Self {
        let mut out = BytesMut::new();
        Record::SnapshotBegin { unix_ms }.encode(&mut out);
        SnapshotBuilder { out, records: 0 }
    }

    fn push(&mut self, record: Record) {
        record.encode(&mut self.out);
        self.records += 1;
    }

    pub fn event(&mut self, def: EventDef) {
        self.push(Record::Event {
            event_id: def.event_id,
            total: def.total,
            per_user_limit: def.per_user_limit,
        });
    }

    pub fn order(&mut self, o: OrderRec) {
        self.push(Record::Sale(o));
    }

    pub fn hold(&mut self, h: HoldRec) {
        self.push(match h.end {
            None => Record::HoldTaken {
                hold_id: h.hold_id,
                event_id: h.event_id,
                user: h.user,
                qty: h.qty,
                deadline_ms: h.deadline_ms,
            },
            Some((end, ended_ms)) => Record::HoldFinished {
                hold_id: h.hold_id,
                event_id: h.event_id,
                user: h.user,
                qty: h.qty,
                end,
                ended_ms,
            },
        });
    }

    pub fn ended_run(&mut self, run: EndedRun) {
        self.push(Record::HoldsEnded {
            first_id: run.first_id,
            ended_ms: run.ended_ms,
            states: run.states,
        });
    }

    pub fn ended_confirmed(&mut self, hold_id: u64, order_id: u64, ended_ms: u64) {
        self.push(Record::HoldConfirmed {
            hold_id,
            order_id,
            ended_ms,
        });
    }

    pub fn id_mark(&mut self, field: u16, seq: u64) {
        self.push(Record::IdMark { field, seq });
    }

    pub fn finish(mut self) -> BytesMut {
        Record::SnapshotEnd {
            records: self.records,
        }
        .encode(&mut self.out);
        self.out
    }
}

/// The snapshot that starts stream `stream` of `streams` in a new generation: every
/// event, the orders and live holds of the users that stream's shard owns, and the
/// ended holds and id marks of the shard fields it answers for
/// (`field % streams == stream`: ended holds are looked up by id alone).
pub fn for_stream(
    state: &Recovered,
    events: &[EventDef],
    stream: usize,
    streams: usize,
    unix_ms: u64,
) -> BytesMut {
    let mut snapshot = SnapshotBuilder::begin(unix_ms);
    for &def in events {
        snapshot.event(def);
    }
    for &order in &state.orders {
        if owner_of_user(order.user, streams) == stream {
            snapshot.order(order);
        }
    }
    let answers_for = |id: u64| usize::from(field_of(id)) % streams == stream;
    for &hold in state.holds.values() {
        let mine = match hold.end {
            None => owner_of_user(hold.user, streams) == stream,
            Some(_) => answers_for(hold.hold_id),
        };
        if mine {
            snapshot.hold(hold);
        }
    }
    for &run in &state.ended_runs {
        if answers_for(run.first_id) {
            snapshot.ended_run(run);
        }
    }
    for &(hold_id, order_id, ended_ms) in &state.ended_confirmed {
        if answers_for(hold_id) {
            snapshot.ended_confirmed(hold_id, order_id, ended_ms);
        }
    }
    for (&field, &seq) in &state.id_marks {
        if usize::from(field) % streams == stream {
            snapshot.id_mark(field, seq);
        }
    }
    snapshot.finish()
}
