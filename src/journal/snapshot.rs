//! Snapshots: a stream's live state written as records between `SnapshotBegin` and
//! `SnapshotEnd`, at the start of every segment. Recovery needs nothing older than the
//! newest complete snapshot, so disk use and start-up time follow live state, not
//! history.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::record::{Entry, Record, RunEncoder, RunKind};
use super::recovery::{EventDef, HoldRec, OrderRec, Recovered};
use crate::catalog::Catalog;
use crate::clock::WallClock;
use crate::ids::field_of;
use crate::ledger::ended::{EndedRun, EndedStates};
use crate::ledger::live::SharedLiveHolds;
use crate::ledger::SharedOrders;
use crate::routing::owner_of_user;

/// Builds one snapshot: [`SnapshotBuilder::begin`], the state, then
/// [`SnapshotBuilder::finish`].
#[derive(Debug)]
pub struct SnapshotBuilder {
    out: BytesMut,
    records: u64,
    /// Orders in a row, and live holds in a row, share records.
    runs: RunEncoder,
}

impl SnapshotBuilder {
    pub fn begin(unix_ms: u64) -> Self {
        let mut out = BytesMut::new();
        Record::SnapshotBegin { unix_ms }.encode(&mut out);
        SnapshotBuilder {
            out,
            records: 0,
            runs: RunEncoder::default(),
        }
    }

    /// The records after a snapshot's orders ([`SnapshotJob::new`]): no begin record.
    pub fn continuing() -> Self {
        SnapshotBuilder {
            out: BytesMut::new(),
            records: 0,
            runs: RunEncoder::default(),
        }
    }

    fn push(&mut self, record: Record) {
        match Entry::of(&record) {
            Some((kind, entry)) => self.runs.push(&mut self.out, kind, &entry),
            None => {
                self.runs.close(&mut self.out);
                record.encode(&mut self.out);
            }
        }
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
        self.runs.close(&mut self.out);
        Record::SnapshotEnd {
            records: self.records,
        }
        .encode(&mut self.out);
        self.out
    }
}

/// A snapshot whose orders are encoded by the thread that writes it (the journal
/// writer), not by the shard: the shard hands over its orders by reference
/// ([`SharedOrders`]) and the few other records already encoded.
#[derive(Debug)]
pub struct SnapshotJob {
    /// `SnapshotBegin` and the events.
    head: Bytes,
    orders: SharedOrders,
    /// Which orders' confirmed holds are still remembered ([`ConfirmedHolds`]).
    confirmed: Option<ConfirmedHolds>,
    /// The ended-holds bitmap, encoded here as runs of cancelled and expired ends.
    ended: Option<EndedStates>,
    /// The live holds, encoded here as runs of holds taken.
    live: Option<LiveHoldsJob>,
    /// Holds, ended holds, id marks, and `SnapshotEnd` (which counts every record).
    rest: Bytes,
}

/// Orders encoded per write while a snapshot is written (~50 KiB as runs of orders in a
/// rush, at most ~180 KiB).
const ORDERS_PER_WRITE: usize = 4096;
/// Runs of the ended-holds bitmap (128 ids each) looked at per write (~230 KiB at most).
const RUNS_PER_WRITE: usize = 4096;
/// Pages of live holds (at most 64 each) written per write (~100 KiB as runs).
const PAGES_PER_WRITE: usize = 128;

/// The live holds for a snapshot's writer, with what it needs to write them as the loop
/// would have: the catalog (holds keep an event's index, records its id) and the clock
/// (deadlines as Unix time).
#[derive(Debug, Clone)]
pub struct LiveHoldsJob {
    pub holds: SharedLiveHolds,
    pub clock: WallClock,
    pub catalog: Arc<Catalog>,
}
/// What an order typically takes in a run (a rush's: new users with ids below 2^35,
/// consecutive order ids, one event): the estimate [`SnapshotJob::len`] uses.
const TYPICAL_ORDER_BYTES: u64 = 13;

/// About what `orders` orders and `live_holds` live holds take in a snapshot: the bulk
/// of any shard's, and the shard's yardstick of its live state (see
/// [`super::commit::Commit::wants_rotation`]).
pub fn estimated_bulk(orders: usize, live_holds: usize) -> u64 {
    (orders as u64 + live_holds as u64).saturating_mul(TYPICAL_ORDER_BYTES)
}

/// The remembered ends of holds confirmed in this run, which the shard leaves to the
/// writer: each is carried by its order ([`crate::ledger::Order::confirmed_hold`]), and
/// written as a `HoldConfirmed` after its piece of orders when the hold ended after
/// `ended_after_ms` (the snapshot's time less the hold TTL: anything older may already
/// be forgotten). So a rotation costs the loop nothing per confirmed hold; with a
/// RESERVE+CONFIRM rush it was a record each, millions, encoded in one loop pass.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmedHolds {
    /// Node and shard bits of the shard's own ids: a hold's id is this and its sequence.
    pub prefix: u64,
    pub ended_after_ms: u64,
}

/// How far [`SnapshotJob::write_some`] got.
#[derive(Debug, Default)]
pub struct SnapshotCursor {
    head_done: bool,
    /// Orders written so far.
    orders: usize,
    /// Runs of the ended-holds bitmap looked at so far.
    ended_runs: usize,
    /// Recovered confirmed holds looked at so far.
    kept: usize,
    /// Pages of live holds written so far.
    live_pages: usize,
    done: bool,
}

impl SnapshotCursor {
    /// The snapshot's end is written.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

impl SnapshotJob {
    /// `head` (begun, with the events), then `orders`, then `rest` (a builder from
    /// [`SnapshotBuilder::continuing`]), closed with the count of all of them.
    pub fn new(mut head: SnapshotBuilder, orders: SharedOrders, mut rest: SnapshotBuilder) -> Self {
        rest.records += head.records + orders.len() as u64;
        // A run the head ended on is framed before the orders' own runs follow it.
        head.runs.close(&mut head.out);
        SnapshotJob {
            head: head.out.freeze(),
            orders,
            confirmed: None,
            ended: None,
            live: None,
            rest: rest.finish().freeze(),
        }
    }

    /// Also writes the remembered ends of the holds the orders confirmed (see
    /// [`ConfirmedHolds`]). `SnapshotEnd`'s count, made by the shard, leaves them out.
    pub fn with_confirmed_holds(mut self, confirmed: ConfirmedHolds) -> Self {
        self.confirmed = Some(confirmed);
        self
    }

    /// Also writes the bitmap of cancelled and expired holds as runs (`HoldsEnded`),
    /// after the orders, and the confirmed holds recovered from the journal that are
    /// still remembered (`HoldConfirmed`): the shard hands over its pages and that list
    /// by reference rather than encoding a record per 128 ids, or per hold, on its
    /// loop. `SnapshotEnd`'s count leaves them out.
    pub fn with_ended_states(mut self, ended: EndedStates) -> Self {
        self.ended = Some(ended);
        self
    }

    /// Also writes the live holds (`HoldTaken` runs), after the orders: the shard hands
    /// over its pages of holds by reference rather than encoding a record per hold on
    /// its loop (35 ms for a million). `SnapshotEnd`'s count leaves them out.
    pub fn with_live_holds(mut self, live: LiveHoldsJob) -> Self {
        self.live = Some(live);
        self
    }

    /// About its length once written, in bytes: the orders' and live holds' share is
    /// estimated (their runs' varints depend on the values), so the shard need not
    /// encode them to decide when the next rotation is due; the remembered ends the
    /// writer adds are left out.
    pub fn len(&self) -> u64 {
        let live = self.live.as_ref().map_or(0, |l| l.holds.len());
        (self.head.len() + self.rest.len()) as u64 + estimated_bulk(self.orders.len(), live)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the next piece (the head, or up to [`ORDERS_PER_WRITE`] orders encoded
    /// into `buf`, or the rest) and returns its length: a writer with other work between
    /// pieces never waits for a whole snapshot. Nothing once `cursor` is done.
    pub fn write_some(
        &self,
        cursor: &mut SnapshotCursor,
        buf: &mut BytesMut,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<usize> {
        if cursor.done {
            return Ok(0);
        }
        if !cursor.head_done {
            out.write_all(&self.head)?;
            cursor.head_done = true;
            return Ok(self.head.len());
        }
        buf.clear();
        if self.orders_piece(cursor, buf)
            || self.live_holds_piece(cursor, buf)
            || self.ended_piece(cursor, buf)
        {
            out.write_all(buf)?;
            return Ok(buf.len());
        }
        out.write_all(&self.rest)?;
        cursor.done = true;
        Ok(self.rest.len())
    }

    /// The next [`ORDERS_PER_WRITE`] orders as a run, and after it the remembered ends
    /// of the holds they confirmed; false once every order is written.
    fn orders_piece(&self, cursor: &mut SnapshotCursor, buf: &mut BytesMut) -> bool {
        let run = self.orders.run_from(cursor.orders, ORDERS_PER_WRITE);
        if run.is_empty() {
            return false;
        }
        let mut encoder = RunEncoder::default();
        for order in run {
            encoder.push_order(buf, &OrderRec::from(*order));
        }
        encoder.close(buf);
        if let Some(confirmed) = self.confirmed {
            // After the piece's run, so the orders stay one record.
            for order in run {
                let Some(seq) = order.confirmed_hold() else {
                    continue;
                };
                if order.unix_ms > confirmed.ended_after_ms {
                    Record::HoldConfirmed {
                        hold_id: confirmed.prefix | seq,
                        order_id: order.order_id,
                        ended_ms: order.unix_ms,
                    }
                    .encode(buf);
                }
            }
        }
        cursor.orders += run.len();
        true
    }

    /// The next [`PAGES_PER_WRITE`] pages of live holds as a run of holds taken; false
    /// once every page is written (or there are none).
    fn live_holds_piece(&self, cursor: &mut SnapshotCursor, buf: &mut BytesMut) -> bool {
        let Some(live) = self.live.as_ref() else {
            return false;
        };
        if cursor.live_pages >= live.holds.page_count() {
            return false;
        }
        let mut encoder = RunEncoder::default();
        for (hold_id, hold) in live.holds.holds(cursor.live_pages, PAGES_PER_WRITE) {
            let entry = Entry {
                id: hold_id,
                event_id: live.catalog.get(hold.event).id,
                user: hold.user,
                qty: hold.qty,
                at_ms: live.clock.unix_ms(hold.expires_at),
            };
            encoder.push(buf, RunKind::HoldsTaken, &entry);
        }
        encoder.close(buf);
        cursor.live_pages += PAGES_PER_WRITE;
        true
    }

    /// The next [`RUNS_PER_WRITE`] runs of the ended-holds bitmap, then the recovered
    /// confirmed holds still remembered, [`RUNS_PER_WRITE`] at a time; false once all
    /// are looked at (or there are none).
    fn ended_piece(&self, cursor: &mut SnapshotCursor, buf: &mut BytesMut) -> bool {
        let Some(ended) = self.ended.as_ref() else {
            return false;
        };
        if cursor.ended_runs < ended.run_count() {
            cursor.ended_runs += ended.runs(cursor.ended_runs, RUNS_PER_WRITE, |run| {
                Record::HoldsEnded {
                    first_id: run.first_id,
                    ended_ms: run.ended_ms,
                    states: run.states,
                }
                .encode(buf)
            });
            return true;
        }
        if cursor.kept < ended.kept_count() {
            cursor.kept += ended.kept_confirmed(
                cursor.kept,
                RUNS_PER_WRITE,
                |hold_id, order_id, ended_ms| {
                    Record::HoldConfirmed {
                        hold_id,
                        order_id,
                        ended_ms,
                    }
                    .encode(buf)
                },
            );
            return true;
        }
        false
    }

    /// Writes it whole.
    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut cursor = SnapshotCursor::default();
        let mut buf = BytesMut::new();
        while !cursor.is_done() {
            self.write_some(&mut cursor, &mut buf, out)?;
        }
        Ok(())
    }

    /// The whole snapshot as bytes (tests, and small snapshots).
    pub fn to_bytes(&self) -> BytesMut {
        let mut out = Vec::with_capacity(usize::try_from(self.len()).unwrap_or(0));
        // Writing into a Vec cannot fail.
        let _ = self.write_to(&mut out);
        BytesMut::from(out.as_slice())
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
