//! A shard's side of the Redis ledger (`--redis`): requests gathered into one call per
//! event while the shard's earlier calls run ([`RemoteLedger::flush`]), the local gate in
//! front of them, and the answers when Redis replies.
//!
//! The gate is the event's [`crate::stock::Stock`], sized to this node's share (total ÷
//! nodes + buffer) instead of the total: while it has tickets, a purchase takes one and
//! goes to Redis in this pass's batch. A dry gate never answers SOLD_OUT by itself: the
//! purchases that find it dry wait for one STOCK call per shard and event, and Redis's
//! answer decides — none left: SOLD_OUT (true at that moment); some left: the gate is
//! refilled and every waiting purchase goes to Redis, which decides each exactly. So
//! tickets that come back (cancelled or expired holds, a dead node's unused share) are
//! sold to the next buyers, and SOLD_OUT always reflects the ledger. A CANCEL gives its
//! tickets back to this node's gate at once. The gate's rules are in [`gate`].
//!
//! Answers follow what the ledger can know: a call that never left the node answers
//! UNAVAILABLE (nothing happened); a call sent whose answer was lost is sent again with
//! the same call id until Redis answers, and Redis replays the first result.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Token;
use redis::{Cmd, Value};
use ticketd_proto::{Op, OrderList, Purchase, Response, ResultBody, Status};

mod answers;
mod gate;

use gate::{Admission, Gate, LedgerView, Parked, Verdict};

use super::mailbox::ConnRef;
use super::ShardSettings;
use crate::catalog::Catalog;
use crate::ids::IdGenerator;
use crate::ledger::EventTally;
use crate::readiness::Readiness;
use crate::redis_ledger::conn::{Completion, ConnSettings, RedisConn};
use crate::redis_ledger::flavor::Flavor;
use crate::redis_ledger::{self, CallIds, Decision, Step};
use crate::stats::ShardMeter;

/// Tag of the FUNCTION LOAD sent after Redis reports the library missing.
const RELOAD_TAG: u64 = u64::MAX;
/// The most steps one call carries. A batch that reaches it is sent at once, even while
/// the shard's calls in flight make the rest wait: a call of 2,048 sales keeps Redis
/// (and so every other node's calls) busy for about 5 ms here, and a longer one would
/// stop them for longer.
pub const MAX_CALL_STEPS: usize = 2048;
/// How a shard reaches the ledger.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub addr: SocketAddr,
    /// AUTH and SELECT, sent first on every (re)connect.
    pub login: crate::config::RedisLogin,
    pub conn: ConnSettings,
    /// Functions or scripts, as set-up found Redis.
    pub flavor: Flavor,
    /// Each shard's reserved id block, by shard index.
    pub id_blocks: Vec<crate::redis_ledger::setup::IdBlock>,
}

/// A client request waiting for the ledger.
#[derive(Debug, Clone, Copy)]
pub struct Waiter {
    pub conn: ConnRef,
    pub req_id: u64,
    pub op: Op,
    /// Tickets it asks for (BUY and RESERVE; 0 otherwise).
    pub qty: u16,
    /// Tickets taken from the gate for it (returned if it is refused).
    pub gate_qty: u16,
}

#[derive(Debug)]
enum CallKind {
    Decide {
        event: usize,
    },
    Settle,
    Stock {
        event: usize,
    },
    /// STOCK asked because the gate ran dry, for the purchases parked on it.
    Refill {
        event: usize,
    },
    /// ORDERS: one user's orders, read from the ledger.
    Orders {
        event: usize,
        user: u64,
    },
}

#[derive(Debug)]
struct Call {
    kind: CallKind,
    steps: Vec<Step>,
    waiters: Vec<Waiter>,
    /// Refill: the purchases that wait for its answer.
    parked: Vec<Parked>,
    cmd: Cmd,
    /// It has been on the wire: its outcome may be unknown, so never answer UNAVAILABLE.
    ever_sent: bool,
    /// When it was first sent (its latency runs to the answer, retries included).
    started: Instant,
}

/// One shard's Redis ledger client.
pub struct RemoteLedger {
    shard: usize,
    node_id: u16,
    flavor: Flavor,
    /// Wire ids of the events, in catalog order.
    event_ids: Vec<u32>,
    pub conn: RedisConn<u64>,
    calls: HashMap<u64, Call, ahash::RandomState>,
    next_tag: u64,
    call_ids: CallIds,
    ids: IdGenerator,
    decide_batches: Vec<(Vec<Step>, Vec<Waiter>)>,
    settle_batch: (Vec<Step>, Vec<Waiter>),
    stock_batches: Vec<Vec<Waiter>>,
    /// Purchases that found this node's share dry, and what the ledger said of it.
    gate: Gate,
    /// What `/readyz` reports: missing events, the connection up or down.
    readiness: Arc<Readiness>,
    /// This shard's counters.
    stats: ShardMeter,
    /// The connection's state as last reported.
    reported_up: bool,
    /// When the connection was lost, and the UNAVAILABLE count then (for the log line
    /// when it is back).
    lost: Option<(Instant, u64)>,
    /// Requests answered UNAVAILABLE so far.
    unavailable: u64,
    addr: SocketAddr,
    /// What this node sold, per event (catalog order).
    pub tallies: Vec<EventTally>,
    /// Connections waiting on a call whose outcome cannot be known (its reply could not
    /// be read): the shard closes them without an answer ([`Self::take_abandoned`]).
    abandoned: Vec<ConnRef>,
}

impl std::fmt::Debug for RemoteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLedger")
            .field("shard", &self.shard)
            .field("calls", &self.calls.len())
            .field("ready", &self.conn.is_ready())
            .finish()
    }
}

impl RemoteLedger {
    pub fn new(
        shard: &ShardSettings,
        catalog: &Catalog,
        settings: RemoteSettings,
        token: Token,
    ) -> Self {
        let (node_id, readiness) = (shard.node_id, Arc::clone(&shard.readiness));
        let stats = Arc::clone(&shard.counters);
        let shard = shard.index;
        let mut handshake = settings.login.commands();
        handshake.push(settings.flavor.loader());
        handshake.push(redis_ledger::mark_layout());
        let events = catalog.len();
        RemoteLedger {
            shard,
            node_id,
            flavor: settings.flavor.clone(),
            event_ids: catalog.iter().map(|e| e.id).collect(),
            conn: RedisConn::new(settings.addr, token, settings.conn, &handshake),
            calls: HashMap::default(),
            next_tag: 0,
            call_ids: CallIds::new(node_id, shard),
            ids: match settings.id_blocks.get(shard) {
                Some(block) => IdGenerator::block(node_id, shard, block.after, block.last),
                // No block: issue nothing rather than risk an id issued before.
                None => IdGenerator::block(node_id, shard, 0, 0),
            },
            decide_batches: (0..events).map(|_| (Vec::new(), Vec::new())).collect(),
            settle_batch: (Vec::new(), Vec::new()),
            stock_batches: (0..events).map(|_| Vec::new()).collect(),
            gate: Gate::new(shard, events),
            readiness,
            stats,
            reported_up: false,
            lost: None,
            unavailable: 0,
            addr: settings.addr,
            tallies: vec![EventTally::default(); events],
            abandoned: Vec::new(),
        }
    }

    /// The connections to close without an answer since the last call: each waits on a
    /// call whose outcome is unknown here.
    pub fn take_abandoned(&mut self) -> Vec<ConnRef> {
        std::mem::take(&mut self.abandoned)
    }

    /// BUY or RESERVE: queued for this pass's call with a ticket from the gate, or parked
    /// until the ledger says whether any remain. Answered now only when this run's ids
    /// are used up.
    pub fn purchase(
        &mut self,
        catalog: &Catalog,
        event: usize,
        op: Op,
        purchase: Purchase,
        waiter: (ConnRef, u64),
        now: Instant,
    ) -> Option<Response> {
        let Purchase { user, qty, .. } = purchase;
        let parked = Parked {
            op,
            user,
            qty,
            conn: waiter.0,
            req_id: waiter.1,
        };
        match self
            .gate
            .admit(&catalog.get(event).stock, event, parked, now)
        {
            Admission::Taken => self.queue_decide(catalog, event, parked, qty),
            Admission::SoldOut => Some(Response::error(op.code(), waiter.1, Status::SoldOut)),
            Admission::Parked => None,
        }
    }

    /// Adds a purchase to this pass's call for `event`, carrying `gate_qty` tickets of
    /// the gate (0 when it goes to Redis ungated, after an ask said tickets remain).
    fn queue_decide(
        &mut self,
        catalog: &Catalog,
        event: usize,
        p: Parked,
        gate_qty: u16,
    ) -> Option<Response> {
        let Some(id) = self.ids.try_next_id() else {
            if gate_qty > 0 {
                catalog
                    .get(event)
                    .stock
                    .give_back(self.shard, i64::from(gate_qty));
            }
            tracing::error!(
                shard = self.shard,
                "this run's id block is used up; restart the node to reserve another"
            );
            return Some(Response::error(p.op.code(), p.req_id, Status::Unavailable));
        };
        let step = match p.op {
            Op::Reserve => Step::Reserve {
                user: p.user,
                qty: p.qty,
                hold_id: id,
            },
            _ => Step::Buy {
                user: p.user,
                qty: p.qty,
                order_id: id,
            },
        };
        let (steps, waiters) = &mut self.decide_batches[event];
        steps.push(step);
        waiters.push(Waiter {
            conn: p.conn,
            req_id: p.req_id,
            op: p.op,
            qty: p.qty,
            gate_qty,
        });
        if steps.len() >= MAX_CALL_STEPS {
            let (steps, waiters) = std::mem::take(&mut self.decide_batches[event]);
            self.start(CallKind::Decide { event }, steps, waiters);
        }
        None
    }

    /// CONFIRM or CANCEL: queued (the hold may have been taken on any node), or
    /// UNAVAILABLE once this run's ids are used up.
    pub fn settle(&mut self, op: Op, hold_id: u64, waiter: (ConnRef, u64)) -> Option<Response> {
        let step = match op {
            Op::Confirm => {
                let Some(order_id) = self.ids.try_next_id() else {
                    return Some(Response::error(op.code(), waiter.1, Status::Unavailable));
                };
                Step::Confirm { hold_id, order_id }
            }
            _ => Step::Cancel { hold_id },
        };
        self.settle_batch.0.push(step);
        self.settle_batch.1.push(Waiter {
            conn: waiter.0,
            req_id: waiter.1,
            op,
            qty: 0,
            gate_qty: 0,
        });
        if self.settle_batch.0.len() >= MAX_CALL_STEPS {
            let (steps, waiters) = std::mem::take(&mut self.settle_batch);
            self.start(CallKind::Settle, steps, waiters);
        }
        None
    }

    /// ORDERS, answered from the ledger (one call each: a rare request).
    pub fn orders(&mut self, event: usize, user: u64, waiter: (ConnRef, u64)) {
        let waiter = Waiter {
            conn: waiter.0,
            req_id: waiter.1,
            op: Op::Orders,
            qty: 0,
            gate_qty: 0,
        };
        self.start(CallKind::Orders { event, user }, Vec::new(), vec![waiter]);
    }

    /// STOCK, answered from the ledger.
    pub fn stock(&mut self, event: usize, waiter: (ConnRef, u64)) {
        self.stock_batches[event].push(Waiter {
            conn: waiter.0,
            req_id: waiter.1,
            op: Op::Stock,
            qty: 0,
            gate_qty: 0,
        });
    }

    /// Publishes the calls in flight and connections made (once per pass, after its
    /// calls were sent).
    pub fn publish_state(&self) {
        self.stats.redis_state(self.calls.len(), self.conn.connects);
    }

    /// Tells `/readyz` when the Redis connection goes up or down.
    /// Logs it too: once when the connection is lost, once when it is back, with how
    /// many requests were answered UNAVAILABLE meanwhile.
    pub fn report_connection(&mut self, now: Instant) {
        let up = self.conn.is_ready();
        if up == self.reported_up {
            return;
        }
        self.reported_up = up;
        self.readiness.set_redis_up(self.shard, up);
        match (up, self.lost.take()) {
            (false, _) => {
                tracing::warn!(
                    shard = self.shard,
                    redis = %self.addr,
                    "lost the Redis connection; reconnecting (requests that cannot be sent answer UNAVAILABLE: nothing sold)"
                );
                self.lost = Some((now, self.unavailable));
            }
            (true, Some((since, before))) => tracing::warn!(
                shard = self.shard,
                redis = %self.addr,
                down_ms = now.saturating_duration_since(since).as_millis() as u64,
                unavailable = self.unavailable - before,
                "Redis connection back after {} ms; {} requests were answered UNAVAILABLE meanwhile",
                now.saturating_duration_since(since).as_millis(),
                self.unavailable - before
            ),
            (true, None) => {
                tracing::debug!(shard = self.shard, redis = %self.addr, "Redis connection up")
            }
        }
    }

    /// Sends the batches gathered so far: one call per event with purchases, one for
    /// holds, one STOCK per event asked, and one ask per event whose gate ran dry — once
    /// fewer than `--redis-depth` of this shard's calls are in flight. Until then they
    /// keep gathering, pass after pass (group commit, as the journal's writer does): a
    /// call's fixed cost in Redis (the replay record, the outbox entry, the event's counts
    /// read and written: tens of µs) is shared by every sale it carries. Sent every pass,
    /// calls carried ~110 sales at 64 × 64; gathered behind two in flight, ~700
    /// (docs/BENCHMARKS.md, "a shard's requests gather while its calls run"). See
    /// [`batches_wait`] for when they do not wait.
    pub fn flush(&mut self, now: Instant) {
        let calls = &self.calls;
        let oldest = || {
            let started = calls.values().map(|call| call.started).min()?;
            Some(now.saturating_duration_since(started))
        };
        if batches_wait(
            self.conn.is_ready(),
            self.calls.len(),
            self.conn.depth(),
            oldest,
            self.conn.timeout(),
        ) {
            return;
        }
        // Decisions and settlements first: on the one pipelined connection Redis runs
        // calls in order, so the STOCK asks sent after them see their outcome.
        for event in 0..self.decide_batches.len() {
            if !self.decide_batches[event].0.is_empty() {
                let (steps, waiters) = std::mem::take(&mut self.decide_batches[event]);
                self.start(CallKind::Decide { event }, steps, waiters);
            }
        }
        if !self.settle_batch.0.is_empty() {
            let (steps, waiters) = std::mem::take(&mut self.settle_batch);
            self.start(CallKind::Settle, steps, waiters);
        }
        for event in 0..self.decide_batches.len() {
            if !self.stock_batches[event].is_empty() {
                let waiters = std::mem::take(&mut self.stock_batches[event]);
                self.start(CallKind::Stock { event }, Vec::new(), waiters);
            }
            if let Some(parked) = self.gate.take_ask(event) {
                self.start_call(CallKind::Refill { event }, Vec::new(), Vec::new(), parked);
            }
        }
    }

    fn start(&mut self, kind: CallKind, steps: Vec<Step>, waiters: Vec<Waiter>) {
        self.start_call(kind, steps, waiters, Vec::new());
    }

    fn start_call(
        &mut self,
        kind: CallKind,
        steps: Vec<Step>,
        waiters: Vec<Waiter>,
        parked: Vec<Parked>,
    ) {
        let call_id = self.call_ids.next_id();
        let ttl = redis_ledger::DEFAULT_REPLAY_TTL_MS;
        let cmd = match kind {
            CallKind::Decide { event } => {
                redis_ledger::decide(self.event_ids[event], &call_id, self.node_id, ttl, &steps)
            }
            CallKind::Settle => redis_ledger::settle(&call_id, self.node_id, ttl, &steps),
            CallKind::Stock { event } | CallKind::Refill { event } => {
                redis_ledger::stock(self.event_ids[event])
            }
            CallKind::Orders { event, user } => redis_ledger::orders(self.event_ids[event], user),
        };
        let cmd = self.flavor.adapt(cmd);
        tracing::debug!(
            shard = self.shard,
            ?kind,
            steps = steps.len(),
            waiters = waiters.len() + parked.len(),
            "redis call"
        );
        self.stats.redis_call(steps.len());
        if let CallKind::Refill { .. } = kind {
            self.stats.gate_refill();
        }
        self.next_tag += 1;
        let tag = self.next_tag;
        let started = Instant::now();
        self.conn.send(&cmd, tag, started);
        self.calls.insert(
            tag,
            Call {
                kind,
                steps,
                waiters,
                parked,
                cmd,
                ever_sent: false,
                started,
            },
        );
    }
}

/// Whether a shard's batches keep gathering instead of going out: while `depth` of its
/// calls are in flight on a connection that is up. Not while the connection is down or
/// still in its handshake (those calls answer UNAVAILABLE at once, as they always did),
/// and not behind a call older than the call timeout: one being sent again until Redis
/// answers it (an answer lost with the connection) may wait out an error Redis keeps
/// giving; the purchases behind it go out and learn that error for themselves.
/// (`oldest`, the age of the oldest call in flight, is only asked for then: it walks the
/// calls, and `flush` runs every pass.)
fn batches_wait(
    ready: bool,
    in_flight: usize,
    depth: usize,
    oldest: impl FnOnce() -> Option<Duration>,
    timeout: Duration,
) -> bool {
    ready && in_flight >= depth && oldest().is_some_and(|age| age < timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(500);
    fn young() -> Option<Duration> {
        Some(Duration::from_millis(10))
    }

    fn as_old_as_the_timeout() -> Option<Duration> {
        Some(TIMEOUT)
    }

    fn unasked() -> Option<Duration> {
        panic!("the oldest call's age is asked for only when the pipeline is full")
    }

    #[test]
    fn batches_wait_only_behind_a_full_pipeline_of_young_calls_on_a_ready_connection() {
        assert!(batches_wait(true, 2, 2, young, TIMEOUT));
        assert!(batches_wait(true, 3, 2, young, TIMEOUT));
        assert!(
            !batches_wait(true, 1, 2, unasked, TIMEOUT),
            "room in the pipeline"
        );
        assert!(
            !batches_wait(true, 0, 2, unasked, TIMEOUT),
            "nothing in flight"
        );
        assert!(
            !batches_wait(false, 2, 2, unasked, TIMEOUT),
            "connection down"
        );
        assert!(
            !batches_wait(true, 2, 2, as_old_as_the_timeout, TIMEOUT),
            "a call as old as the timeout"
        );
    }
}
