//! A shard's side of the Redis ledger (`--redis`): this pass's requests gathered into one
//! call per event, the local gate in front of them, and the answers when Redis replies.
//!
//! The gate is the event's [`crate::stock::Stock`], sized to this node's share (total ÷
//! nodes + buffer) instead of the total: a request the gate refuses is answered
//! SOLD_OUT with no Redis traffic, and a gate that runs dry asks Redis how many remain
//! and refills, so tickets a dead or idle node does not use are still sold. Once Redis
//! says an event is sold out, every shard of the node answers SOLD_OUT locally.
//!
//! Answers follow what the ledger can know: a call that never left the node answers
//! UNAVAILABLE (nothing happened); a call sent whose answer was lost is sent again with
//! the same call id until Redis answers, and Redis replays the first result.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::Token;
use redis::{Cmd, Value};
use ticketd_proto::{Op, Purchase, Response, ResultBody, Status};

use super::mailbox::ConnRef;
use crate::catalog::Catalog;
use crate::ids::IdGenerator;
use crate::ledger::EventTally;
use crate::redis_ledger::conn::{Completion, ConnSettings, RedisConn};
use crate::redis_ledger::flavor::Flavor;
use crate::redis_ledger::{self, CallIds, Decision, Step};

/// Tag of the FUNCTION LOAD sent after Redis reports the library missing.
const RELOAD_TAG: u64 = u64::MAX;
/// A closed or empty gate asks Redis again at most this often (per shard and event), so
/// tickets that come back — expired or cancelled holds, a dead node's unused share — are
/// sold, while rejections stay local.
const REFILL_INTERVAL: Duration = Duration::from_millis(50);

/// How a shard reaches the ledger.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub addr: SocketAddr,
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
    /// Tickets taken from the gate for it (returned if it is refused).
    pub gate_qty: u16,
}

#[derive(Debug)]
enum CallKind {
    Decide { event: usize },
    Settle,
    Stock { event: usize },
    Refill { event: usize },
}

#[derive(Debug)]
struct Call {
    kind: CallKind,
    steps: Vec<Step>,
    waiters: Vec<Waiter>,
    cmd: Cmd,
    /// It has been on the wire: its outcome may be unknown, so never answer UNAVAILABLE.
    ever_sent: bool,
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
    refilling: Vec<bool>,
    last_refill: Vec<Option<Instant>>,
    /// What this node sold, per event (catalog order).
    pub tallies: Vec<EventTally>,
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
        shard: usize,
        node_id: u16,
        catalog: &Catalog,
        settings: RemoteSettings,
        token: Token,
    ) -> Self {
        let handshake = [settings.flavor.loader()];
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
            refilling: vec![false; events],
            last_refill: vec![None; events],
            tallies: vec![EventTally::default(); events],
        }
    }

    /// BUY or RESERVE: answered now (gate closed), or queued for this pass's call.
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
        let listing = catalog.get(event);
        if listing.sold_out.load(Ordering::Acquire)
            || !listing.stock.take(self.shard, i64::from(qty))
        {
            self.request_refill(event, now);
            return Some(Response::error(op.code(), waiter.1, Status::SoldOut));
        }
        let Some(id) = self.ids.try_next_id() else {
            listing.stock.give_back(self.shard, i64::from(qty));
            tracing::error!(
                shard = self.shard,
                "this run's id block is used up; restart the node to reserve another"
            );
            return Some(Response::error(op.code(), waiter.1, Status::Unavailable));
        };
        let step = match op {
            Op::Reserve => Step::Reserve {
                user,
                qty,
                hold_id: id,
            },
            _ => Step::Buy {
                user,
                qty,
                order_id: id,
            },
        };
        let (steps, waiters) = &mut self.decide_batches[event];
        steps.push(step);
        waiters.push(Waiter {
            conn: waiter.0,
            req_id: waiter.1,
            op,
            gate_qty: qty,
        });
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
            gate_qty: 0,
        });
        None
    }

    /// STOCK, answered from the ledger.
    pub fn stock(&mut self, event: usize, waiter: (ConnRef, u64)) {
        self.stock_batches[event].push(Waiter {
            conn: waiter.0,
            req_id: waiter.1,
            op: Op::Stock,
            gate_qty: 0,
        });
    }

    fn request_refill(&mut self, event: usize, now: Instant) {
        let due =
            self.last_refill[event].is_none_or(|at| now.duration_since(at) >= REFILL_INTERVAL);
        if due && !self.refilling[event] {
            self.refilling[event] = true;
            self.last_refill[event] = Some(now);
            self.start(CallKind::Refill { event }, Vec::new(), Vec::new());
        }
    }

    /// Sends this pass's batches: one call per event with purchases, one for holds, one
    /// STOCK per event asked.
    pub fn flush(&mut self) {
        for event in 0..self.decide_batches.len() {
            if !self.decide_batches[event].0.is_empty() {
                let (steps, waiters) = std::mem::take(&mut self.decide_batches[event]);
                self.start(CallKind::Decide { event }, steps, waiters);
            }
            if !self.stock_batches[event].is_empty() {
                let waiters = std::mem::take(&mut self.stock_batches[event]);
                self.start(CallKind::Stock { event }, Vec::new(), waiters);
            }
        }
        if !self.settle_batch.0.is_empty() {
            let (steps, waiters) = std::mem::take(&mut self.settle_batch);
            self.start(CallKind::Settle, steps, waiters);
        }
    }

    fn start(&mut self, kind: CallKind, steps: Vec<Step>, waiters: Vec<Waiter>) {
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
        };
        let cmd = self.flavor.adapt(cmd);
        self.next_tag += 1;
        let tag = self.next_tag;
        self.conn.send(&cmd, tag, Instant::now());
        self.calls.insert(
            tag,
            Call {
                kind,
                steps,
                waiters,
                cmd,
                ever_sent: false,
            },
        );
    }

    /// Turns one completion into answers for waiting clients, `(connection, response)`.
    pub fn complete(
        &mut self,
        catalog: &Catalog,
        completion: Completion<u64>,
        now: Instant,
        answers: &mut Vec<(ConnRef, Response)>,
    ) {
        match completion {
            Completion::Reply { tag, value } => {
                if let Some(call) = self.calls.remove(&tag) {
                    self.answer(catalog, call, &value, answers);
                }
            }
            Completion::ErrorReply { tag, error } if tag == RELOAD_TAG => {
                tracing::warn!(%error, "reloading the ledger functions failed");
            }
            Completion::ErrorReply { tag, error } => {
                let Some(call) = self.calls.get(&tag) else {
                    return;
                };
                let missing = error.to_lowercase();
                if missing.contains("function not found") || missing.contains("noscript") {
                    // The library was flushed: reload it, then the same call again (it
                    // did not run, so this is its first application).
                    tracing::warn!("ledger code missing in Redis: reloading");
                    self.conn.send(&self.flavor.loader(), RELOAD_TAG, now);
                    let cmd = call.cmd.clone();
                    self.conn.send(&cmd, tag, now);
                } else if call.ever_sent {
                    // An earlier attempt was lost and may have been applied (this reply can
                    // be LOADING after a restart): only the same call id can tell. Retry.
                    let cmd = call.cmd.clone();
                    self.conn.send(&cmd, tag, now);
                } else if let Some(call) = self.calls.remove(&tag) {
                    tracing::error!(%error, "ledger call failed");
                    self.refuse_all(catalog, call, Status::Unavailable, answers);
                }
            }
            Completion::Lost { tag } => {
                // Maybe applied: only the same call id may settle it.
                if let Some(call) = self.calls.get_mut(&tag) {
                    call.ever_sent = true;
                    let cmd = call.cmd.clone();
                    self.conn.send(&cmd, tag, now);
                }
            }
            Completion::Unsent { tag } => {
                let Some(call) = self.calls.get(&tag) else {
                    return;
                };
                if call.ever_sent {
                    let cmd = call.cmd.clone();
                    self.conn.send(&cmd, tag, now);
                } else if let Some(call) = self.calls.remove(&tag) {
                    self.refuse_all(catalog, call, Status::Unavailable, answers);
                }
            }
        }
    }

    fn answer(
        &mut self,
        catalog: &Catalog,
        call: Call,
        value: &Value,
        answers: &mut Vec<(ConnRef, Response)>,
    ) {
        match call.kind {
            CallKind::Decide { .. } | CallKind::Settle => {
                let decisions = match redis_ledger::parse_decisions(value, &call.steps) {
                    Ok(decisions) => decisions,
                    Err(e) => {
                        tracing::error!(error = %e, "malformed ledger reply");
                        return self.refuse_all(catalog, call, Status::Unavailable, answers);
                    }
                };
                let event = match call.kind {
                    CallKind::Decide { event } => Some(event),
                    _ => None,
                };
                for (waiter, decision) in call.waiters.iter().zip(decisions) {
                    let response = match decision {
                        Decision::Ordered { order_id } => {
                            if let Some(event) = event {
                                self.tallies[event].orders += 1;
                                self.tallies[event].sold += u64::from(waiter.gate_qty);
                            }
                            Response::ok(waiter.op, waiter.req_id, ResultBody::Order { order_id })
                        }
                        Decision::Held {
                            hold_id,
                            expires_unix_ms,
                        } => Response::ok(
                            waiter.op,
                            waiter.req_id,
                            ResultBody::Hold {
                                hold_id,
                                expires_unix_ms,
                            },
                        ),
                        Decision::Cancelled => {
                            Response::ok(waiter.op, waiter.req_id, ResultBody::Empty)
                        }
                        Decision::Refused(status) => {
                            if let Some(event) = event {
                                self.refused(catalog, event, waiter.gate_qty, status);
                            }
                            Response::error(waiter.op.code(), waiter.req_id, status)
                        }
                    };
                    answers.push((waiter.conn, response));
                }
            }
            CallKind::Stock { .. } | CallKind::Refill { .. } => {
                let view: Option<(i64, i64)> = redis::from_redis_value::<Vec<i64>>(value.clone())
                    .ok()
                    .and_then(|v| Some((*v.first()?, *v.get(1)?)));
                if let CallKind::Refill { event } = call.kind {
                    self.refilling[event] = false;
                    match view {
                        Some((_, remaining)) if remaining > 0 => {
                            catalog.get(event).sold_out.store(false, Ordering::Release);
                            // At most a gate's worth: the gate's initial size is this
                            // node's share plus buffer.
                            let chunk = remaining.min(catalog.get(event).stock.total().max(1));
                            catalog.get(event).stock.give_back(self.shard, chunk);
                        }
                        Some(_) => catalog.get(event).sold_out.store(true, Ordering::Release),
                        None => {}
                    }
                }
                for waiter in &call.waiters {
                    let response = match view {
                        Some((total, remaining)) if total >= 0 => Response::ok(
                            Op::Stock,
                            waiter.req_id,
                            ResultBody::Stock { total, remaining },
                        ),
                        Some(_) => {
                            Response::error(Op::Stock.code(), waiter.req_id, Status::NotFound)
                        }
                        None => {
                            Response::error(Op::Stock.code(), waiter.req_id, Status::Unavailable)
                        }
                    };
                    answers.push((waiter.conn, response));
                }
            }
        }
    }

    /// A purchase refused by the ledger: its gate tickets go back, and SOLD_OUT closes
    /// every shard's gate for the event at once.
    fn refused(&mut self, catalog: &Catalog, event: usize, gate_qty: u16, status: Status) {
        let listing = catalog.get(event);
        if status == Status::SoldOut {
            listing.sold_out.store(true, Ordering::Release);
        } else if gate_qty > 0 {
            listing.stock.give_back(self.shard, i64::from(gate_qty));
        }
    }

    fn refuse_all(
        &mut self,
        catalog: &Catalog,
        call: Call,
        status: Status,
        answers: &mut Vec<(ConnRef, Response)>,
    ) {
        if let CallKind::Refill { event } = call.kind {
            self.refilling[event] = false;
        }
        for waiter in &call.waiters {
            if let CallKind::Decide { event } = call.kind {
                if waiter.gate_qty > 0 {
                    catalog
                        .get(event)
                        .stock
                        .give_back(self.shard, i64::from(waiter.gate_qty));
                }
            }
            answers.push((
                waiter.conn,
                Response::error(waiter.op.code(), waiter.req_id, status),
            ));
        }
    }
}
