//! The embedded ledger of one shard: the users it owns (by [`crate::routing`]), the
//! holds and orders it created, and hold expiry. Live holds are in [`live`], what is
//! remembered of ended ones in [`ended`]; restoring from and snapshotting to the journal
//! in `persist`.
//!
//! Only the owning shard's thread touches this state, so it needs no locks; other
//! shards reach it by message. Stock itself lives in the shared [`crate::stock::Stock`]
//! slices.

pub mod ended;
mod hold_pages;
pub mod live;
mod order_log;
mod persist;
mod state_pages;
mod user_table;

pub use order_log::{OrderLog, SharedOrders};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ticketd_proto::{Op, OrderList, Response, ResultBody, Status};

use crate::catalog::Catalog;
use crate::clock::WallClock;
use crate::ids::{sequence_of, IdGenerator};
use crate::journal::commit::RecordBuf;
use crate::journal::record::Record;
use crate::journal::recovery::OrderRec;
use ended::{Ended, EndedHolds};
use live::{Hold, LiveHolds};

/// Most entries a shard's user table is sized for at start (2^21 slots, 32 MiB); past it
/// the table grows a few entries per insert ([`user_table`]). The orders need no size: they grow a
/// chunk at a time ([`OrderLog`]).
pub const MAX_PRESIZED_ENTRIES: usize = 1 << 20;

/// Most bytes of user tables made ahead of their growth faulted in per loop pass
/// ([`Ledger::tend_tables`]): at 2–12 µs a page, up to about 1.5 ms.
pub const TEND_PER_PASS: usize = 512 << 10;

pub(crate) type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

use user_table::UserTable;

/// Work for the ledger that owns a user or a hold. `event` is a catalog index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerOp {
    Buy {
        event: usize,
        user: u64,
        qty: u16,
    },
    Reserve {
        event: usize,
        user: u64,
        qty: u16,
    },
    Confirm {
        hold_id: u64,
    },
    Cancel {
        hold_id: u64,
    },
    /// ORDERS: a read, decided by the user's owner like a purchase.
    Orders {
        event: usize,
        user: u64,
    },
}

impl LedgerOp {
    /// The wire op this decides.
    pub fn wire_op(&self) -> Op {
        match self {
            LedgerOp::Buy { .. } => Op::Buy,
            LedgerOp::Reserve { .. } => Op::Reserve,
            LedgerOp::Confirm { .. } => Op::Confirm,
            LedgerOp::Cancel { .. } => Op::Cancel,
            LedgerOp::Orders { .. } => Op::Orders,
        }
    }
}

impl From<Order> for OrderRec {
    fn from(o: Order) -> Self {
        OrderRec {
            order_id: o.order_id,
            event_id: o.event_id,
            user: o.user,
            qty: o.qty,
            unix_ms: o.unix_ms,
        }
    }
}

/// One order: a ticket sale acknowledged to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
pub struct Order {
    pub order_id: u64,
    pub user: u64,
    pub event_id: u32,
    pub qty: u16,
    /// With `hold_low`: see [`Order::confirmed_hold`] (here it fills what was padding).
    hold_high: u16,
    pub unix_ms: u64,
    /// The same user's previous order of this event: index in `orders` plus one (0:
    /// none).
    pub prev: u32,
    hold_low: u32,
}

// 40 bytes: the order log's memory per sale (docs/BENCHMARKS.md, memory).
const _: () = assert!(std::mem::size_of::<Order>() == 40);

impl Order {
    pub fn new(order_id: u64, user: u64, event_id: u32, qty: u16, unix_ms: u64, prev: u32) -> Self {
        Order {
            order_id,
            user,
            event_id,
            qty,
            hold_high: 0,
            unix_ms,
            prev,
            hold_low: 0,
        }
    }

    /// The order made by confirming the hold with sequence `seq` of this shard's own ids,
    /// whose end [`ended::EndedHolds`] remembers in its bitmap: the journal writer then
    /// snapshots that memory from the order ([`crate::journal::snapshot`]), so a rotation
    /// does not encode a record per confirmed hold on the loop.
    fn confirming(mut self, seq: u64) -> Self {
        // Sequences are 44 bits (crate::ids), so seq + 1 fits the 48 bits kept.
        let stored = seq + 1;
        self.hold_low = stored as u32;
        self.hold_high = (stored >> 32) as u16;
        self
    }

    /// The sequence of the hold this order confirmed, if it was one of this shard's own
    /// holds remembered in its bitmap (see `confirming`).
    pub fn confirmed_hold(&self) -> Option<u64> {
        let stored = u64::from(self.hold_low) | (u64::from(self.hold_high) << 32);
        stored.checked_sub(1)
    }
}

/// How acquired tickets count against a user.
#[derive(Debug, Clone, Copy)]
enum Acquired {
    Bought,
    Held,
}

/// What one user holds or bought of one event. Removed when both reach zero, so only
/// users who got tickets take memory. 8 bytes, so an entry with its key is 16: at a
/// million sales a second this table's size is what the hot path pays in cache misses.
/// Counts fit in `u16` because they never pass the per-user limit.
#[derive(Debug, Default, Clone, Copy)]
#[repr(C)]
struct UserTally {
    bought: u16,
    held: u16,
    /// The user's newest order of this event, as its index in `orders` plus one (0:
    /// none); each order links to the one before, so ORDERS needs no scan.
    last_order: u32,
}

/// Makes the order with link `link` the user's newest, returning the link to the one
/// before it (0: none). A link of 0 (too many orders) leaves the chain as it is.
fn chain_order(tally: &mut UserTally, link: u32) -> u32 {
    if link == 0 {
        tally.last_order
    } else {
        std::mem::replace(&mut tally.last_order, link)
    }
}

/// Per-event counts of what this shard decided.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventTally {
    /// Tickets in orders.
    pub sold: u64,
    /// Tickets in live holds.
    pub held: u64,
    pub orders: u64,
}

/// One shard's ledger.
#[derive(Debug)]
pub struct Ledger {
    shard: usize,
    catalog: Arc<Catalog>,
    hold_ttl: Duration,
    ids: IdGenerator,
    /// Per event (catalog index), per user: 16-byte entries, since at a million sales a
    /// second this table's size is what the hot path pays for in cache misses.
    users: Vec<UserTable>,
    live: LiveHolds,
    ended: EndedHolds,
    orders: OrderLog,
    tallies: Vec<EventTally>,
    clock: WallClock,
    /// What this pass decided, for the journal (dropped when there is none).
    pub journal: RecordBuf,
    /// With a journal: tickets of ended holds, returned to sale only once the record
    /// that ends the hold is durable (another shard could otherwise sell them in a
    /// record that reaches disk first, and a crash would leave both the hold and the
    /// sale). Without one: returned at once and never collected here.
    returns: Vec<(usize, i64)>,
    /// Id marks of shard fields no shard issues from now (an earlier run had more
    /// shards) that this shard keeps in its snapshots, so they are never forgotten.
    inherited_id_marks: Vec<(u16, u64)>,
}

impl Ledger {
    /// A ledger with no journal: everything lives in memory only (tests, benches).
    pub fn new(shard: usize, node_id: u16, catalog: Arc<Catalog>, hold_ttl: Duration) -> Self {
        let tallies = vec![EventTally::default(); catalog.len()];
        // Buyers and orders per event are bounded by its stock: size the tables for this
        // shard's share up front, so a sale never stalls on a table doubling. (Huge
        // events still grow past the cap.)
        let share = |event: &crate::catalog::Event| {
            let per_shard = event.stock.total() / event.stock.slice_count() as i64;
            // A quarter more for uneven spread of buyers over shards.
            usize::try_from(per_shard + per_shard / 4 + 16)
                .unwrap_or(0)
                .min(MAX_PRESIZED_ENTRIES)
        };
        let users = catalog
            .iter()
            .map(|e| UserTable::with_capacity(share(e)))
            .collect();
        let ids = IdGenerator::new(node_id, shard);
        Ledger {
            shard,
            catalog,
            hold_ttl,
            live: LiveHolds::new(ids.prefix(), ids.last_seq()),
            ended: EndedHolds::new(ids.prefix(), hold_ttl),
            ids,
            users,
            orders: OrderLog::new(),
            tallies,
            clock: WallClock::now(),
            journal: RecordBuf::new(false),
            returns: Vec::new(),
            inherited_id_marks: Vec::new(),
        }
    }

    /// Tickets of holds that ended since the last call, as (event, qty), to go back on
    /// sale once their records are durable.
    pub fn take_returns(&mut self) -> std::vec::Drain<'_, (usize, i64)> {
        self.returns.drain(..)
    }

    /// Decides one operation and builds its response.
    pub fn apply(&mut self, op: LedgerOp, req_id: u64, now: Instant) -> Response {
        let (wire_op, outcome) = match op {
            LedgerOp::Buy { event, user, qty } => (Op::Buy, self.buy(event, user, qty, now)),
            LedgerOp::Reserve { event, user, qty } => {
                (Op::Reserve, self.reserve(event, user, qty, now))
            }
            LedgerOp::Confirm { hold_id } => (Op::Confirm, self.confirm(hold_id, now)),
            LedgerOp::Cancel { hold_id } => (Op::Cancel, self.cancel(hold_id, now)),
            LedgerOp::Orders { event, user } => (Op::Orders, Ok(self.orders_of(event, user))),
        };
        match outcome {
            Ok(result) => Response::ok(wire_op, req_id, result),
            Err(status) => Response::error(wire_op.code(), req_id, status),
        }
    }

    fn buy(
        &mut self,
        event: usize,
        user: u64,
        qty: u16,
        now: Instant,
    ) -> Result<ResultBody, Status> {
        let prev = self.acquire(event, user, qty, Acquired::Bought)?;
        let order_id = self.ids.next_id();
        let unix_ms = self.clock.unix_ms(now);
        self.journal.push(Record::Sale(OrderRec {
            order_id,
            event_id: self.catalog.get(event).id,
            user,
            qty,
            unix_ms,
        }));
        self.push_order(order_id, (event, user, qty, prev), unix_ms, None);
        Ok(ResultBody::Order { order_id })
    }

    fn reserve(
        &mut self,
        event: usize,
        user: u64,
        qty: u16,
        now: Instant,
    ) -> Result<ResultBody, Status> {
        self.acquire(event, user, qty, Acquired::Held)?;
        self.tallies[event].held += u64::from(qty);
        let hold_id = self.ids.next_id();
        let expires_at = now + self.hold_ttl;
        self.live.insert(
            hold_id,
            Hold {
                event,
                user,
                qty,
                expires_at,
            },
        );
        let expires_unix_ms = self.clock.unix_ms(expires_at);
        self.journal.push(Record::HoldTaken {
            hold_id,
            event_id: self.catalog.get(event).id,
            user,
            qty,
            deadline_ms: expires_unix_ms,
        });
        Ok(ResultBody::Hold {
            hold_id,
            expires_unix_ms,
        })
    }

    /// Checks the user's limit, takes the stock and counts it against the user, with
    /// one probe of the user table (the hot path's one likely cache miss). A purchase
    /// also links the order about to be pushed into the user's chain in that same
    /// probe, and returns the link to the user's previous order (0 for holds).
    fn acquire(&mut self, event: usize, user: u64, qty: u16, as_: Acquired) -> Result<u32, Status> {
        let link = self.next_order_link();
        let listing = self.catalog.get(event);
        let limit = u32::from(listing.per_user_limit);
        let qty32 = u32::from(qty);
        let take = |held_and_bought: u32| {
            if held_and_bought + qty32 > limit {
                Err(Status::LimitReached)
            } else if !listing.stock.take(self.shard, i64::from(qty)) {
                Err(Status::SoldOut)
            } else {
                Ok(())
            }
        };
        let users = &mut self.users[event];
        let tally = match users.get_mut(user) {
            Some(tally) => {
                take(u32::from(tally.bought) + u32::from(tally.held))?;
                tally
            }
            None => {
                take(0)?;
                users.insert_new(user, UserTally::default())
            }
        };
        // Within the limit (a u16), so no overflow.
        Ok(match as_ {
            Acquired::Bought => {
                tally.bought += qty;
                chain_order(tally, link)
            }
            Acquired::Held => {
                tally.held += qty;
                0
            }
        })
    }

    /// `user`'s orders of `event`, oldest first.
    fn orders_of(&self, event: usize, user: u64) -> ResultBody {
        let mut list = Vec::new();
        let mut next = self.users[event].get(user).map_or(0, |t| t.last_order);
        while let Some(order) = usize::try_from(next)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| self.orders.get(i))
        {
            list.push((order.order_id, order.qty));
            next = order.prev;
        }
        list.reverse();
        ResultBody::Orders(OrderList(list))
    }

    fn confirm(&mut self, hold_id: u64, now: Instant) -> Result<ResultBody, Status> {
        self.expire_if_due(hold_id, now);
        let Some(hold) = self.live.remove(hold_id) else {
            return match self.ended.get(hold_id) {
                Some(Ended::Confirmed { order_id }) => Ok(ResultBody::Order { order_id }),
                Some(Ended::Expired) => Err(Status::Expired),
                Some(Ended::Cancelled) | None => Err(Status::NotFound),
            };
        };
        let Hold {
            event, user, qty, ..
        } = hold;
        let order_id = self.ids.next_id();
        let link = self.next_order_link();
        let tally = self.users[event].get_or_insert(user);
        tally.held = tally.held.saturating_sub(qty);
        tally.bought = tally.bought.saturating_add(qty);
        let prev = chain_order(tally, link);
        self.tallies[event].held -= u64::from(qty);
        let unix_ms = self.clock.unix_ms(now);
        self.journal.push(Record::Confirmed {
            hold_id,
            order_id,
            unix_ms,
        });
        let ended = Ended::Confirmed { order_id };
        let carried = self.ended.record(hold_id, ended, now);
        let hold_seq = carried.then_some(sequence_of(hold_id));
        self.push_order(order_id, (event, user, qty, prev), unix_ms, hold_seq);
        Ok(ResultBody::Order { order_id })
    }

    fn cancel(&mut self, hold_id: u64, now: Instant) -> Result<ResultBody, Status> {
        self.expire_if_due(hold_id, now);
        if self.live.get(hold_id).is_some() {
            self.release(hold_id, Ended::Cancelled, now);
            return Ok(ResultBody::Empty);
        }
        match self.ended.get(hold_id) {
            Some(Ended::Cancelled) => Ok(ResultBody::Empty),
            Some(Ended::Expired) => Err(Status::Expired),
            Some(Ended::Confirmed { .. }) | None => Err(Status::NotFound),
        }
    }

    /// Expires every hold whose deadline has passed and forgets ended holds whose
    /// memory period ended. Returns how many holds expired.
    pub fn expire_due(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        while let Some((hold_id, hold)) = self.live.pop_due(now) {
            self.end_without_sale(hold_id, hold, Ended::Expired, now);
            expired += 1;
        }
        self.ended.forget_due(now);
        expired
    }

    /// When [`Ledger::expire_due`] next has work, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.live.next_deadline(), self.ended.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Holds live now, and bytes of the ended-hold memory's bitmap.
    pub fn hold_memory(&self) -> (usize, usize) {
        (self.live.len(), self.ended.bitmap_bytes())
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// This shard's per-event counts, in catalog order.
    pub fn tallies(&self) -> &[EventTally] {
        &self.tallies
    }

    /// Every order this shard created.
    pub fn orders(&self) -> &OrderLog {
        &self.orders
    }

    fn expire_if_due(&mut self, hold_id: u64, now: Instant) {
        if self.live.get(hold_id).is_some_and(|h| h.expires_at <= now) {
            self.release(hold_id, Ended::Expired, now);
        }
    }

    /// Ends a live hold without a sale: tickets back to sale, room back to the user.
    fn release(&mut self, hold_id: u64, end: Ended, now: Instant) {
        if let Some(hold) = self.live.remove(hold_id) {
            self.end_without_sale(hold_id, hold, end, now);
        }
    }

    fn end_without_sale(&mut self, hold_id: u64, hold: Hold, end: Ended, now: Instant) {
        let Hold {
            event, user, qty, ..
        } = hold;
        let unix_ms = self.clock.unix_ms(now);
        self.journal.push(match end {
            Ended::Expired => Record::Expired { hold_id, unix_ms },
            _ => Record::Cancelled { hold_id, unix_ms },
        });
        if self.journal.is_enabled() {
            self.returns.push((event, i64::from(qty)));
        } else {
            self.give_back(event, i64::from(qty));
        }
        self.tallies[event].held -= u64::from(qty);
        if let Some(tally) = self.users[event].get_mut(user) {
            tally.held = tally.held.saturating_sub(qty);
            if tally.held == 0 && tally.bought == 0 {
                self.users[event].remove(user);
            }
        }
        self.ended.record(hold_id, end, now);
    }

    /// Starts fetching `user`'s entry of `event` into the cache: the caller is about to
    /// decide a request of theirs, after a few others (see [`user_table`]).
    pub fn prefetch_user(&self, event: usize, user: u64) {
        if let Some(table) = self.users.get(event) {
            table.prefetch(user);
        }
    }

    /// Between loop passes: faults in up to `budget` bytes of the user tables made ahead
    /// of their growth, so the sales that fill them do not stop for page faults.
    pub fn tend_tables(&mut self, budget: usize) {
        let mut left = budget;
        for table in &mut self.users {
            left -= table.tend(left);
            if left == 0 {
                break;
            }
        }
    }

    /// Bytes of user-table slots this shard holds, every event's.
    pub fn user_table_bytes(&self) -> usize {
        self.users.iter().map(UserTable::bytes).sum()
    }

    /// Puts `qty` tickets of `event` back on sale, on this shard's slice.
    pub fn give_back(&self, event: usize, qty: i64) {
        self.catalog.get(event).stock.give_back(self.shard, qty);
    }

    /// The link (index in `orders` plus one) the next order will have; 0 past 2^32 - 1
    /// orders on one shard, where the chains stop growing (ORDERS then shows the older
    /// ones only) — far beyond any sale.
    fn next_order_link(&self) -> u32 {
        u32::try_from(self.orders.len() + 1).unwrap_or(0)
    }

    /// Appends an order: `placed` is (event, user, qty, link to the user's previous
    /// order), the user already counted and linked by the caller's one table probe;
    /// `hold_seq` the sequence of the hold it confirmed when the journal writer is to
    /// snapshot that hold's memory from the order ([`Order::confirming`]).
    fn push_order(
        &mut self,
        order_id: u64,
        placed: (usize, u64, u16, u32),
        unix_ms: u64,
        hold_seq: Option<u64>,
    ) {
        let (event, user, qty, prev) = placed;
        let event_id = self.catalog.get(event).id;
        let order = Order::new(order_id, user, event_id, qty, unix_ms, prev);
        self.orders.push(match hold_seq {
            Some(seq) => order.confirming(seq),
            None => order,
        });
        let tally = &mut self.tallies[event];
        tally.sold += u64::from(qty);
        tally.orders += 1;
    }
}

#[cfg(test)]
mod tests;
