//! Turning the ledger's replies into answers: decisions, the STOCK asks for parked
//! purchases, ORDERS, missing events, and the refusals when a call cannot be made.

use super::*;

impl RemoteLedger {
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
                    self.stats
                        .redis_answered(now.saturating_duration_since(call.started));
                    self.answer(catalog, call, &value, now, answers);
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
                    self.stats.redis_retry();
                    self.conn.send(&cmd, tag, now);
                } else if call.ever_sent {
                    // An earlier attempt was lost and may have been applied (this reply can
                    // be LOADING after a restart): only the same call id can tell. Retry.
                    let cmd = call.cmd.clone();
                    self.stats.redis_retry();
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
                    self.stats.redis_retry();
                    self.conn.send(&cmd, tag, now);
                }
            }
            Completion::Unsent { tag } => {
                let Some(call) = self.calls.get(&tag) else {
                    return;
                };
                if call.ever_sent {
                    let cmd = call.cmd.clone();
                    self.stats.redis_retry();
                    self.conn.send(&cmd, tag, now);
                } else if let Some(call) = self.calls.remove(&tag) {
                    self.refuse_all(catalog, call, Status::Unavailable, answers);
                }
            }
        }
    }

    pub(super) fn answer(
        &mut self,
        catalog: &Catalog,
        call: Call,
        value: &Value,
        now: Instant,
        answers: &mut Vec<(ConnRef, Response)>,
    ) {
        match call.kind {
            CallKind::Decide { .. } | CallKind::Settle => {
                let decisions = match redis_ledger::parse_decisions(value, &call.steps) {
                    Ok(decisions) => decisions,
                    Err(e) => {
                        // Redis ran the call, so its steps may have sold, held or
                        // settled: UNAVAILABLE ("nothing happened") could be false, and
                        // no other status is true either. Its clients get what a lost
                        // connection gives them, and ORDERS tells them the outcome.
                        tracing::error!(
                            error = %e,
                            requests = call.waiters.len(),
                            "ledger reply without decisions: its outcome is unknown here, so \
                             its requests get no answer and their connections are closed"
                        );
                        self.abandoned
                            .extend(call.waiters.iter().map(|waiter| waiter.conn));
                        return;
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
                                self.tallies[event].sold += u64::from(waiter.qty);
                                self.stats.sold(waiter.qty);
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
                        Decision::Cancelled { event_id, qty } => {
                            // The hold's tickets are back in the ledger: let this node's
                            // gate sell them at once.
                            if let Some(index) = catalog.index_of(event_id) {
                                if qty > 0 {
                                    catalog
                                        .get(index)
                                        .stock
                                        .give_back(self.shard, i64::from(qty));
                                }
                            }
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
            CallKind::Orders { event, .. } => {
                let response = |waiter: &Waiter| match redis_ledger::parse_orders(value) {
                    Ok(Some(list)) => Response::ok(
                        Op::Orders,
                        waiter.req_id,
                        ResultBody::Orders(OrderList(list)),
                    ),
                    Ok(None) => Response::error(Op::Orders.code(), waiter.req_id, Status::NotFound),
                    Err(e) => {
                        tracing::error!(error = %e, "malformed ledger reply to ORDERS");
                        Response::error(Op::Orders.code(), waiter.req_id, Status::Unavailable)
                    }
                };
                if let Ok(None) = redis_ledger::parse_orders(value) {
                    self.note_missing(event, true);
                }
                for waiter in &call.waiters {
                    answers.push((waiter.conn, response(waiter)));
                }
            }
            CallKind::Stock { .. } | CallKind::Refill { .. } => {
                let reply = redis::from_redis_value::<Vec<i64>>(value.clone()).ok();
                let ledger_view = reply.as_ref().and_then(|v| {
                    Some(LedgerView {
                        total: *v.first()?,
                        remaining: *v.get(1)?,
                        held: v.get(2).copied(),
                    })
                });
                let view = ledger_view.map(|v| (v.total, v.remaining));
                if let CallKind::Stock { event } | CallKind::Refill { event } = call.kind {
                    if let Some(v) = ledger_view {
                        self.note_missing(event, v.total < 0);
                        self.gate.learned(event, v, now);
                    }
                }
                if let CallKind::Refill { event } = call.kind {
                    let stock = &catalog.get(event).stock;
                    for (p, verdict) in self.gate.answered(stock, event, ledger_view, call.parked) {
                        let answer = match verdict {
                            Verdict::Refuse(status) => {
                                Some(Response::error(p.op.code(), p.req_id, status))
                            }
                            Verdict::Decide { gate_qty } => {
                                self.queue_decide(catalog, event, p, gate_qty)
                            }
                        };
                        if let Some(answer) = answer {
                            answers.push((p.conn, answer));
                        }
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

    /// Logs when the ledger stops or starts knowing an event: a node never creates one,
    /// so a missing event (Redis lost its data, or it was never created) is an error the
    /// operator must see, not a stream of silent NOT_FOUNDs.
    pub(super) fn note_missing(&mut self, event: usize, missing: bool) {
        // The readiness flags are the one record of it (logged once per change).
        if self.readiness.is_missing(event, self.shard) == missing {
            return;
        }
        self.readiness.set_missing(event, self.shard, missing);
        let id = self.event_ids[event];
        if missing {
            tracing::error!(
                event = id,
                shard = self.shard,
                "event {id} does not exist in the Redis ledger: not selling it (NOT_FOUND) \
                 until it is created with `ticketd create-events`"
            );
        } else {
            tracing::info!(
                event = id,
                shard = self.shard,
                "event {id} is in the Redis ledger again"
            );
        }
    }

    /// A purchase refused by the ledger. SOLD_OUT keeps its gate tickets out, so the
    /// gate shrinks toward what the ledger has and the next buyers ask; any other
    /// refusal gives them back. NOT_FOUND means the event is gone from the ledger.
    pub(super) fn refused(
        &mut self,
        catalog: &Catalog,
        event: usize,
        gate_qty: u16,
        status: Status,
    ) {
        if status == Status::NotFound {
            self.note_missing(event, true);
        }
        if status != Status::SoldOut && gate_qty > 0 {
            catalog
                .get(event)
                .stock
                .give_back(self.shard, i64::from(gate_qty));
        }
    }

    pub(super) fn refuse_all(
        &mut self,
        catalog: &Catalog,
        call: Call,
        status: Status,
        answers: &mut Vec<(ConnRef, Response)>,
    ) {
        if let CallKind::Refill { event } = call.kind {
            self.gate.ask_failed(event);
        }
        if status == Status::Unavailable {
            let requests = (call.parked.len() + call.waiters.len()) as u64;
            self.unavailable += requests;
            self.stats.unavailable(requests);
        }
        for p in &call.parked {
            answers.push((p.conn, Response::error(p.op.code(), p.req_id, status)));
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
