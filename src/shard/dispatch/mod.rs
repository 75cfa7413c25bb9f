//! Turning request bytes into answers: decode every whole frame, answer what this shard
//! can answer itself, and forward what another shard owns.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ticketd_proto::{
    auth_token, decode_request, Command, DecodeError, Op, Purchase, Request, Response, ResultBody,
    Status,
};

mod lookahead;

use super::access::Access;
use super::admission::RatePerIp;
use super::mailbox::{ConnRef, Message, Outbox};
use super::output::Output;
pub use super::settings::HoldRoutes;
use super::settings::ShardSettings;
use crate::catalog::Catalog;
use crate::ids;
use crate::journal::Commit;
use crate::ledger::{Ledger, LedgerOp};
use crate::limits::MAX_IN_FLIGHT;
use crate::routing::owner_of_user;
use lookahead::Lookahead;

/// What a shard holds back until the journal has made its records durable.
#[derive(Debug)]
pub enum Held {
    /// An answer, for a connection on this shard or another.
    Answer(ConnRef, Response),
    /// Tickets of an ended hold, back on sale once the end is durable.
    Return { event: usize, qty: i64 },
}

/// How this node decides, chosen once at start: nothing that exists for one mode is
/// built or swept in the other.
#[derive(Debug)]
pub enum Decider {
    /// The embedded ledger of this shard, with its journal when it has one (answers and
    /// returned tickets wait there until durable).
    Embedded {
        ledger: Ledger,
        commit: Option<Commit<Held>>,
    },
    /// `--redis`: the global ledger decides, through this shard's connection.
    Redis(super::remote::RemoteLedger),
}

impl Decider {
    /// The Redis ledger, in ledger mode.
    pub fn remote_mut(&mut self) -> Option<&mut super::remote::RemoteLedger> {
        match self {
            Decider::Redis(remote) => Some(remote),
            Decider::Embedded { .. } => None,
        }
    }

    pub fn remote(&self) -> Option<&super::remote::RemoteLedger> {
        match self {
            Decider::Redis(remote) => Some(remote),
            Decider::Embedded { .. } => None,
        }
    }

    /// Records were made that no journal job carries yet.
    pub fn has_unsubmitted_records(&self) -> bool {
        match self {
            Decider::Embedded {
                ledger,
                commit: Some(_),
            } => ledger.journal.is_pending(),
            _ => false,
        }
    }

    /// When the decider next has timed work (hold expiry, Redis timeouts), if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self {
            Decider::Embedded { ledger, .. } => ledger.next_deadline(),
            Decider::Redis(remote) => remote.conn.next_deadline(),
        }
    }

    /// What this node sold, per event in catalog order.
    pub fn tallies(&self) -> &[crate::ledger::EventTally] {
        match self {
            Decider::Embedded { ledger, .. } => ledger.tallies(),
            Decider::Redis(remote) => &remote.tallies,
        }
    }
}

/// What one shard needs to decide requests: everything but its connections.
#[derive(Debug)]
pub struct Dispatcher {
    pub settings: Arc<ShardSettings>,
    pub catalog: Arc<Catalog>,
    pub decider: Decider,
    pub outbox: Outbox,
    /// Well-framed requests answered BAD_REQUEST, and streams that lost framing.
    pub bad_requests: u64,
    /// Anonymous HTTP buyers created so far.
    anonymous_users: u64,
    /// `--rate-per-ip`: this shard's token buckets.
    rate_per_ip: Option<RatePerIp>,
}

/// The result of handling a buffer of request bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    /// Bytes of whole frames handled; the rest is an incomplete frame to keep.
    pub consumed: usize,
    /// The stream cannot be framed any more: the connection owes the client the framing
    /// error response, after the answers to every request before it.
    pub framing_lost: bool,
    /// An AUTH failed: the connection closes once its answers are out; nothing after the
    /// AUTH was read.
    pub closing: bool,
    /// Over `--rate-per-ip`: one request was answered OVERLOADED; read nothing more from
    /// the connection until then (what is left waits in its input).
    pub throttle_until: Option<Instant>,
}

impl Dispatcher {
    /// A dispatcher deciding with the embedded `ledger` and no journal (tests, benches);
    /// [`Dispatcher::with_decider`] for the others.
    pub fn new(settings: Arc<ShardSettings>, ledger: Ledger) -> Self {
        let catalog = Arc::clone(ledger.catalog());
        let decider = Decider::Embedded {
            ledger,
            commit: None,
        };
        Self::with_decider(settings, catalog, decider)
    }

    pub fn with_decider(
        settings: Arc<ShardSettings>,
        catalog: Arc<Catalog>,
        decider: Decider,
    ) -> Self {
        let rate_per_ip = settings
            .rate_per_ip
            .map(|rate| RatePerIp::new(rate, settings.shards));
        Dispatcher {
            outbox: Outbox::new(settings.shards),
            settings,
            catalog,
            decider,
            bad_requests: 0,
            anonymous_users: 0,
            rate_per_ip,
        }
    }

    /// Handles every whole frame at the front of `input`: local answers are encoded into
    /// `output`, requests owned elsewhere are queued in the outbox and counted in
    /// `in_flight`. `access` is the connection's standing: a shed connection (over
    /// `--max-conns`) gets OVERLOADED for every well-formed request, one that has not
    /// presented a required token UNAUTHORIZED for everything but AUTH.
    pub fn handle_frames(
        &mut self,
        conn: ConnRef,
        input: &[u8],
        output: &mut Output,
        in_flight: &mut u32,
        now: Instant,
        access: &mut Access,
    ) -> Handled {
        let mut consumed = 0;
        let mut lookahead = Lookahead::default();
        let reads_ahead = matches!(self.decider, Decider::Embedded { .. });
        loop {
            // A client that does not read its answers gets no more decided than one
            // output buffer's worth: the rest waits in its input, unread input waits in
            // the kernel, and memory per connection stays bounded.
            if output.is_full() || *in_flight >= MAX_IN_FLIGHT {
                break;
            }
            if reads_ahead {
                lookahead.fill(input, self.settings.max_frame, |r| self.prefetch(r));
            }
            let rest = input.get(consumed..).unwrap_or_default();
            match decode_request(rest, self.settings.max_frame) {
                Ok((request, used)) => {
                    consumed += used;
                    lookahead.consumed_one();
                    let op = request.command.op().code();
                    if access.shed {
                        output.refusal(op, request.req_id, Status::Overloaded);
                    } else if let Command::Auth { token_len } = request.command {
                        let token = auth_token(rest, used, token_len);
                        let good = self.settings.auth.as_ref().is_none_or(|t| t.accepts(token));
                        if !good {
                            output.refusal(op, request.req_id, Status::Unauthorized);
                            return Handled {
                                consumed,
                                framing_lost: false,
                                closing: true,
                                throttle_until: None,
                            };
                        }
                        access.authenticated = true;
                        output.frame(&Response::ok(Op::Auth, request.req_id, ResultBody::Empty));
                    } else if !access.authenticated {
                        output.refusal(op, request.req_id, Status::Unauthorized);
                    } else if let Err(wait) = self.admit(access.source, now) {
                        output.refusal(op, request.req_id, Status::Overloaded);
                        return Handled {
                            consumed,
                            framing_lost: false,
                            closing: false,
                            throttle_until: Some(now + wait),
                        };
                    } else if let Some(response) = self.route(conn, request, in_flight, now) {
                        output.frame(&response);
                    }
                }
                Err(DecodeError::Incomplete) => break,
                Err(DecodeError::UnknownOp {
                    op,
                    req_id,
                    frame_len,
                }) => {
                    self.bad_requests += 1;
                    consumed += frame_len;
                    output.refusal(op, req_id, Status::BadRequest);
                }
                Err(DecodeError::BadArgsLength {
                    op,
                    req_id,
                    frame_len,
                }) => {
                    self.bad_requests += 1;
                    consumed += frame_len;
                    output.refusal(op.code(), req_id, Status::BadRequest);
                }
                // The length prefix is out of range; response-side errors cannot come
                // from decode_request but would mean the same: no more frames. The
                // caller sends the framing error once everything before it is answered.
                Err(_) => {
                    self.bad_requests += 1;
                    return Handled {
                        consumed: input.len(),
                        framing_lost: true,
                        closing: false,
                        throttle_until: None,
                    };
                }
            }
        }
        Handled {
            consumed,
            framing_lost: false,
            closing: false,
            throttle_until: None,
        }
    }

    /// Starts fetching the user-table entry a purchase this shard owns will need.
    fn prefetch(&self, request: &Request) {
        let (Command::Buy(purchase) | Command::Reserve(purchase)) = request.command else {
            return;
        };
        let Decider::Embedded { ledger, .. } = &self.decider else {
            return;
        };
        if owner_of_user(purchase.user, self.settings.shards) != self.settings.index {
            return;
        }
        if let Some(event) = self.catalog.index_of(purchase.event) {
            ledger.prefetch_user(event, purchase.user);
        }
    }

    /// `--rate-per-ip`: whether a request from `source` may go on now; if not, how long
    /// until its address has a token again.
    pub fn admit(
        &mut self,
        source: std::net::IpAddr,
        now: Instant,
    ) -> Result<(), std::time::Duration> {
        match self.rate_per_ip.as_mut() {
            Some(rate) => rate.allow(source, now),
            None => Ok(()),
        }
    }

    /// Routes a request: answered here (PING, STOCK, refusals, or decided by this
    /// shard's ledger when it owns the user or hold), sent to Redis in ledger mode, or
    /// forwarded to the shard that owns its user or hold (counted in `in_flight`; the
    /// answer comes back as a [`Message::Reply`]).
    pub fn route(
        &mut self,
        conn: ConnRef,
        request: Request,
        in_flight: &mut u32,
        now: Instant,
    ) -> Option<Response> {
        let req_id = request.req_id;
        if matches!(self.decider, Decider::Redis(_)) {
            return self.route_to_redis(conn, request, in_flight, now);
        }
        let routed = match request.command {
            Command::Ping => Err(Response::ok(Op::Ping, req_id, ResultBody::Empty)),
            // Answered by `handle_frames`, which sees the token; nothing to decide.
            Command::Auth { .. } => Err(Response::ok(Op::Auth, req_id, ResultBody::Empty)),
            Command::Stock { event } => Err(self.stock(event, req_id)),
            Command::Buy(purchase) => self.validate(Op::Buy, purchase, req_id).map(|event| {
                let op = LedgerOp::Buy {
                    event,
                    user: purchase.user,
                    qty: purchase.qty,
                };
                (owner_of_user(purchase.user, self.settings.shards), op)
            }),
            Command::Reserve(purchase) => {
                self.validate(Op::Reserve, purchase, req_id).map(|event| {
                    let op = LedgerOp::Reserve {
                        event,
                        user: purchase.user,
                        qty: purchase.qty,
                    };
                    (owner_of_user(purchase.user, self.settings.shards), op)
                })
            }
            Command::Orders { event, user } => match self.catalog.index_of(event) {
                Some(event) => Ok((
                    owner_of_user(user, self.settings.shards),
                    LedgerOp::Orders { event, user },
                )),
                None => Err(Response::error(Op::Orders.code(), req_id, Status::NotFound)),
            },
            Command::Confirm { hold_id } => self
                .hold_owner(Op::Confirm, hold_id, req_id)
                .map(|owner| (owner, LedgerOp::Confirm { hold_id })),
            Command::Cancel { hold_id } => self
                .hold_owner(Op::Cancel, hold_id, req_id)
                .map(|owner| (owner, LedgerOp::Cancel { hold_id })),
        };
        match routed {
            Err(answer) => Some(answer),
            Ok((owner, op)) if owner == self.settings.index => {
                let answer = self.apply_owned(conn, req_id, op, now);
                if answer.is_none() {
                    *in_flight += 1;
                }
                answer
            }
            Ok((owner, op)) => {
                *in_flight += 1;
                self.outbox.push(
                    owner,
                    Message::Decide {
                        reply_to: conn,
                        req_id,
                        op,
                    },
                );
                None
            }
        }
    }

    /// Decides `op`, which this shard owns, for `reply_to`. The answer is returned only
    /// if it may go out now to a connection of this shard; otherwise it is sent to the
    /// connection's shard, or held until the journal has made durable every record it
    /// depends on.
    pub fn apply_owned(
        &mut self,
        reply_to: ConnRef,
        req_id: u64,
        op: LedgerOp,
        now: Instant,
    ) -> Option<Response> {
        let Decider::Embedded { ledger, commit } = &mut self.decider else {
            // Ledger mode forwards nothing between shards; answer safely all the same.
            return Some(Response::error(
                op.wire_op().code(),
                req_id,
                Status::Unavailable,
            ));
        };
        let response = if self.settings.fail_stop.load(Ordering::Acquire) {
            Response::error(op.wire_op().code(), req_id, Status::Unavailable)
        } else {
            ledger.apply(op, req_id, now)
        };
        if let (LedgerOp::Buy { qty, .. }, Status::Ok) = (op, response.status) {
            self.settings.counters.sold(qty);
        }
        let pending = ledger.journal.is_pending();
        match commit
            .as_mut()
            .and_then(|c| c.barrier(pending).map(|job| (c, job)))
        {
            Some((commit, job)) => {
                commit.hold(job, Held::Answer(reply_to, response));
                None
            }
            None if reply_to.shard == self.settings.index => Some(response),
            None => {
                self.outbox.push(
                    reply_to.shard,
                    Message::Reply {
                        conn: reply_to,
                        response,
                    },
                );
                None
            }
        }
    }

    /// Ledger mode: everything but PING goes to Redis (after the local gate), decided on
    /// this shard's own connection, so nothing is forwarded between shards.
    fn route_to_redis(
        &mut self,
        conn: ConnRef,
        request: Request,
        in_flight: &mut u32,
        now: Instant,
    ) -> Option<Response> {
        let req_id = request.req_id;
        let waiter = (conn, req_id);
        let queued = match request.command {
            Command::Ping => return Some(Response::ok(Op::Ping, req_id, ResultBody::Empty)),
            Command::Auth { .. } => return Some(Response::ok(Op::Auth, req_id, ResultBody::Empty)),
            Command::Stock { event } => match self.catalog.index_of(event) {
                Some(index) => {
                    self.decider.remote_mut()?.stock(index, waiter);
                    true
                }
                None => return Some(Response::error(Op::Stock.code(), req_id, Status::NotFound)),
            },
            Command::Buy(p) | Command::Reserve(p) => {
                let op = request.command.op();
                let index = match self.validate(op, p, req_id) {
                    Ok(index) => index,
                    Err(refusal) => return Some(refusal),
                };
                let remote = self.decider.remote_mut()?;
                if let Some(answer) = remote.purchase(&self.catalog, index, op, p, waiter, now) {
                    return Some(answer);
                }
                true
            }
            Command::Orders { event, user } => match self.catalog.index_of(event) {
                Some(index) => {
                    self.decider.remote_mut()?.orders(index, user, waiter);
                    true
                }
                None => return Some(Response::error(Op::Orders.code(), req_id, Status::NotFound)),
            },
            Command::Confirm { hold_id } | Command::Cancel { hold_id } => {
                if let Some(refusal) =
                    self.decider
                        .remote_mut()?
                        .settle(request.command.op(), hold_id, waiter)
                {
                    return Some(refusal);
                }
                true
            }
        };
        if queued {
            *in_flight += 1;
        }
        None
    }

    /// The HTTP endpoint's BUY of one ticket: the first event unless the query named
    /// one, and a fresh anonymous user when the query named none (callers refuse that
    /// unless `http_anonymous`).
    pub fn http_buy(
        &mut self,
        conn: ConnRef,
        event: Option<u32>,
        user: Option<u64>,
        in_flight: &mut u32,
        now: Instant,
    ) -> Option<Response> {
        let Some(event) = event.or_else(|| self.catalog.iter().next().map(|e| e.id)) else {
            return Some(Response::error(Op::Buy.code(), 0, Status::NotFound));
        };
        let user = user.unwrap_or_else(|| self.next_anonymous_user());
        let command = Command::Buy(Purchase {
            event,
            user,
            qty: 1,
        });
        self.route(conn, Request { req_id: 0, command }, in_flight, now)
    }

    /// Anonymous HTTP buyers get ids with the top bit set, then node, shard and a
    /// counter: unique, and apart from any id a binary client is likely to use.
    fn next_anonymous_user(&mut self) -> u64 {
        self.anonymous_users += 1;
        (1 << 63)
            | (u64::from(self.settings.node_id) << 51)
            | ((self.settings.index as u64) << 43)
            | (self.anonymous_users & ((1 << 43) - 1))
    }

    fn stock(&self, event: u32, req_id: u64) -> Response {
        match self.catalog.index_of(event) {
            Some(index) => {
                let stock = &self.catalog.get(index).stock;
                Response::ok(
                    Op::Stock,
                    req_id,
                    ResultBody::Stock {
                        total: stock.total(),
                        remaining: stock.remaining(),
                    },
                )
            }
            None => Response::error(Op::Stock.code(), req_id, Status::NotFound),
        }
    }

    /// The event's catalog index, or the answer refusing the purchase: qty 0 or over the
    /// limit is BAD_REQUEST, an unknown event NOT_FOUND.
    fn validate(&self, op: Op, purchase: Purchase, req_id: u64) -> Result<usize, Response> {
        let refuse = |status| Response::error(op.code(), req_id, status);
        if purchase.qty == 0 {
            return Err(refuse(Status::BadRequest));
        }
        let index = self
            .catalog
            .index_of(purchase.event)
            .ok_or_else(|| refuse(Status::NotFound))?;
        if purchase.qty > self.catalog.get(index).per_user_limit {
            return Err(refuse(Status::BadRequest));
        }
        Ok(index)
    }

    /// The shard that owns a hold, or NOT_FOUND for an id this node never issued. A
    /// live hold recovered across a change of shard count is routed to its user's shard
    /// (`hold_routes`); every other id to the shard its field names, or that field
    /// modulo the shard count (where recovery put the ended holds of fields no shard
    /// issues any more).
    fn hold_owner(&self, op: Op, hold_id: u64, req_id: u64) -> Result<usize, Response> {
        if let Some(&owner) = self.settings.hold_routes.get(&hold_id) {
            return Ok(owner);
        }
        ids::split(hold_id, self.settings.node_id)
            .map(|(field, _)| usize::from(field) % self.settings.shards)
            .ok_or_else(|| Response::error(op.code(), req_id, Status::NotFound))
    }
}

#[cfg(test)]
mod tests;
