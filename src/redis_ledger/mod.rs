//! The global ledger in Redis (ledger mode, `--redis`): the Function library that
//! decides a coalesced batch of requests for one event atomically and exactly once, and
//! the typed commands and replies around it. Each shard drives it through
//! [`crate::shard::remote::RemoteLedger`] on its own pipelined connection ([`conn`]);
//! [`setup`] prepares it before the shards start.
//!
//! The Lua ([`FUNCTION_LIBRARY`]) holds what makes the multi-node ledger correct — limit
//! check, `sold + held + qty <= total`, the order outbox stream, hold expiry on Redis's
//! clock (so a dead node's holds still expire), and replay of a call id's first results.

pub mod conn;
pub mod flavor;
mod reply;
pub mod setup;

use redis::Cmd;
use ticketd_proto::Status;

pub use reply::{parse_buyer, parse_decisions, parse_orders, ReplyError};

/// The Function library, loaded with `FUNCTION LOAD REPLACE`.
pub const FUNCTION_LIBRARY: &str = include_str!("ticketd.lua");

/// A hash every node's handshake makes ([`mark_layout`]): `ticketd_settle` names it
/// first, where an earlier library reads its replay key, so that library fails with
/// WRONGTYPE before changing anything (see "Versions" in `ticketd.lua`).
pub const LAYOUT_KEY: &str = "ticketd:layout";

/// How long Redis remembers a call's results for replay after a lost connection.
pub const DEFAULT_REPLAY_TTL_MS: u64 = 10 * 60 * 1000;

/// Call ids of one shard: `node-boot_ms-shard-seq`. The boot time keeps a restarted
/// node from reusing an id whose results Redis still remembers for replay.
#[derive(Debug)]
pub struct CallIds {
    prefix: String,
    next: u64,
}

impl CallIds {
    pub fn new(node: u16, shard: usize) -> Self {
        let boot_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        CallIds {
            prefix: format!("{node}-{boot_ms}-{shard}-"),
            next: 0,
        }
    }

    pub fn next_id(&mut self) -> String {
        self.next += 1;
        format!("{}{}", self.prefix, self.next)
    }
}

/// The keys of one event; all share the hash tag `{ev:ID}` (one cluster slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventKeys {
    tag: String,
}

impl EventKeys {
    pub fn new(event: u32) -> Self {
        EventKeys {
            tag: format!("{{ev:{event}}}"),
        }
    }

    pub fn meta(&self) -> String {
        format!("{}:meta", self.tag)
    }

    /// The order outbox stream.
    pub fn orders(&self) -> String {
        format!("{}:orders", self.tag)
    }

    /// Each buyer's held tickets and orders (see [`parse_buyer`]).
    pub fn buyers(&self) -> String {
        format!("{}:buyers", self.tag)
    }

    /// Each user's orders as the layout before the buyers hash recorded them (read, and moved into
    /// `buyers` as each user is next touched).
    pub fn user_orders(&self) -> String {
        format!("{}:user-orders", self.tag)
    }

    /// Every key holding the event's state (not the per-call replay keys, which expire),
    /// in the order the Lua's `keys_of` names them. `users` and `user-orders` are the
    /// layout before the buyers hash (see `ticketd.lua`).
    pub fn state(&self) -> [String; 8] {
        [
            "meta",
            "users",
            "holds",
            "deadlines",
            "forget",
            "orders",
            "user-orders",
            "buyers",
        ]
        .map(|k| format!("{}:{k}", self.tag))
    }

    fn call(&self, call_id: &str) -> String {
        format!("{}:call:{call_id}", self.tag)
    }
}

/// One request inside a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Buy { user: u64, qty: u16, order_id: u64 },
    Reserve { user: u64, qty: u16, hold_id: u64 },
    Confirm { hold_id: u64, order_id: u64 },
    Cancel { hold_id: u64 },
}

/// What the ledger decided for one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// BUY or CONFIRM: the order id.
    Ordered { order_id: u64 },
    /// RESERVE: the hold and when it expires (Unix ms, Redis's clock).
    Held { hold_id: u64, expires_unix_ms: u64 },
    /// CANCEL done: `qty` tickets of event `event_id` went back on sale (0 when the
    /// hold was already cancelled: a retry returns nothing twice).
    Cancelled { event_id: u32, qty: u16 },
    /// Refused; nothing changed.
    Refused(Status),
}

/// `FUNCTION LOAD REPLACE`: idempotent, so it is safe on every (re)connect.
pub fn load_functions() -> Cmd {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(FUNCTION_LIBRARY);
    cmd
}

/// Marks the ledger as written in the buyers layout (idempotent; every (re)connect).
pub fn mark_layout() -> Cmd {
    let mut cmd = redis::cmd("HSET");
    cmd.arg(LAYOUT_KEY).arg("buyers").arg(1);
    cmd
}

/// The keys `ticketd_decide` (with the call key after them) and `ticketd_stock` get: the
/// event's state, the meta key again in the eighth place as a guard against a library of
/// an earlier version (its replay key), and the buyers last.
fn call_keys(keys: &EventKeys) -> [String; 9] {
    let [meta, users, holds, deadlines, forget, orders, user_orders, buyers] = keys.state();
    let guard = meta.clone();
    [
        meta,
        users,
        holds,
        deadlines,
        forget,
        orders,
        user_orders,
        guard,
        buyers,
    ]
}

/// Defines an event: creates it if absent, or with `update` sets its total, limit and
/// hold TTL keeping its sales (refused if the total would fall below sold + held).
/// Replies `[OK]` or `[ERR, why]`. Only `ticketd create-events` sends it: a node never
/// creates an event.
pub fn define_event(event: u32, def: &setup::Definition, update: bool) -> Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("ticketd_define")
        .arg(1)
        .arg(EventKeys::new(event).meta())
        .arg(def.total)
        .arg(def.per_user_limit)
        .arg(def.hold_ttl_ms)
        .arg(if update { "update" } else { "create" });
    cmd
}

/// One atomic call deciding every step for `event`. `call_id` must never repeat in the
/// cluster (see [`CallIds`]) except to retry this very batch.
///
/// Keys: the event's ([`call_keys`]), the call's replay key, and the meta key once more
/// (the eleventh: this library's guard against callers of the ten-key layout). Arguments
/// (`ticketd_decide` in `ticketd.lua` says what each is for): call id, node, replay TTL,
/// the number of steps, whether the BUY/RESERVE users are [`distinct_buyers`] (`D`, else
/// `-`), a letter per step, the outbox text of the BUYs, the BUY/RESERVE steps' users,
/// then each step's other operands (a one-ticket BUY has one more: its order id).
pub fn decide(event: u32, call_id: &str, node: u16, replay_ttl_ms: u64, steps: &[Step]) -> Cmd {
    let keys = EventKeys::new(event);
    // Sized up front: a BUY is ~60 bytes of arguments, and growing the buffer copied it
    // again and again (the node's profile in ledger mode).
    let mut cmd = Cmd::with_capacity(20 + 3 * steps.len(), 256 + 64 * steps.len());
    cmd.arg("FCALL");
    let state = call_keys(&keys);
    cmd.arg("ticketd_decide").arg(state.len() + 2);
    for key in state {
        cmd.arg(key);
    }
    let (kinds, bought) = kinds_and_bought(steps);
    cmd.arg(keys.call(call_id))
        .arg(keys.meta())
        .arg(call_id)
        .arg(node)
        .arg(replay_ttl_ms)
        .arg(steps.len())
        .arg(if distinct_buyers(steps) { "D" } else { "-" })
        .arg(kinds)
        .arg(bought);
    // The BUY/RESERVE users side by side (the Lua hands them to one HMGET as they are),
    // then every step's other operands.
    for step in steps {
        if let Step::Buy { user, .. } | Step::Reserve { user, .. } = *step {
            cmd.arg(user);
        }
    }
    for step in steps {
        match *step {
            Step::Buy {
                qty: 1, order_id, ..
            } => cmd.arg(order_id),
            Step::Buy { qty, order_id, .. } => cmd.arg(qty).arg(order_id),
            Step::Reserve { qty, hold_id, .. } => cmd.arg(qty).arg(hold_id),
            Step::Confirm { hold_id, order_id } => cmd.arg(hold_id).arg(order_id),
            Step::Cancel { hold_id } => cmd.arg(hold_id),
        };
    }
    cmd
}

/// A letter per step (`B` a one-ticket BUY, `b` a BUY of more, `R`, `C`, `X`), and the
/// BUYs' outbox text as the Lua publishes it when they all sell: `order_id:user:qty`
/// joined by commas, in step order.
fn kinds_and_bought(steps: &[Step]) -> (String, String) {
    let mut kinds = String::with_capacity(steps.len());
    let mut bought = String::with_capacity(32 * steps.len());
    // itoa, not `write!`: formatting through core::fmt was a tenth of the node's time.
    let mut digits = itoa::Buffer::new();
    for step in steps {
        kinds.push(match *step {
            Step::Buy { qty: 1, .. } => 'B',
            Step::Buy { .. } => 'b',
            Step::Reserve { .. } => 'R',
            Step::Confirm { .. } => 'C',
            Step::Cancel { .. } => 'X',
        });
        if let Step::Buy {
            user,
            qty,
            order_id,
        } = *step
        {
            if !bought.is_empty() {
                bought.push(',');
            }
            bought.push_str(digits.format(order_id));
            bought.push(':');
            bought.push_str(digits.format(user));
            bought.push(':');
            bought.push_str(digits.format(qty));
        }
    }
    (kinds, bought)
}

/// Whether no user has two BUY/RESERVE steps in `steps`. The ledger's Lua relies on it
/// when told so (a sale then reads its user's entry from the call's one read, by
/// position), so a wrong `true` would let a user past their limit: this checks every
/// pair, through a set.
pub fn distinct_buyers(steps: &[Step]) -> bool {
    let mut seen = ahash::AHashSet::with_capacity(steps.len());
    steps.iter().all(|step| match *step {
        Step::Buy { user, .. } | Step::Reserve { user, .. } => seen.insert(user),
        Step::Confirm { .. } | Step::Cancel { .. } => true,
    })
}

/// One atomic call settling CONFIRM/CANCEL steps by hold id alone: the ledger finds each
/// hold's event in its hold index, so the hold may have been taken through any node.
/// Other steps are skipped by the caller's contract: pass only Confirm and Cancel.
pub fn settle(call_id: &str, node: u16, replay_ttl_ms: u64, steps: &[Step]) -> Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("ticketd_settle")
        .arg(2)
        .arg(LAYOUT_KEY)
        .arg(format!("ticketd:call:{call_id}"))
        .arg(call_id)
        .arg(node)
        .arg(replay_ttl_ms);
    let settling: Vec<&Step> = steps
        .iter()
        .filter(|s| matches!(s, Step::Confirm { .. } | Step::Cancel { .. }))
        .collect();
    cmd.arg(settling.len());
    for step in settling {
        match *step {
            Step::Confirm { hold_id, order_id } => cmd.arg("C").arg(hold_id).arg(order_id),
            Step::Cancel { hold_id } => cmd.arg("X").arg(hold_id).arg(0),
            Step::Buy { .. } | Step::Reserve { .. } => continue,
        };
    }
    cmd
}

/// STOCK from the ledger (expiring due holds first); replies `[total, remaining, held]`
/// (`[-1, -1, -1]` for an event the ledger lacks).
pub fn stock(event: u32) -> Cmd {
    let keys = call_keys(&EventKeys::new(event));
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("ticketd_stock").arg(keys.len());
    for key in &keys {
        cmd.arg(key);
    }
    cmd
}

/// One order in an outbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxOrder {
    pub order_id: u64,
    pub user: u64,
    pub qty: u16,
}

/// The orders of one entry of an event's outbox stream (`{ev:ID}:orders`), given the
/// entry's field-value list: its `orders` field, `order_id:user:qty` joined by commas
/// (one entry per ledger call; docs/DEPLOYMENT.md). `None` when it is not in that form.
pub fn outbox_orders(fields: &[String]) -> Option<Vec<OutboxOrder>> {
    let orders = fields
        .chunks(2)
        .find(|kv| kv.first().map(String::as_str) == Some("orders"))?
        .get(1)?;
    orders
        .split(',')
        .map(|one| {
            let mut parts = one.split(':');
            let order = OutboxOrder {
                order_id: parts.next()?.parse().ok()?,
                user: parts.next()?.parse().ok()?,
                qty: parts.next()?.parse().ok()?,
            };
            parts.next().is_none().then_some(order)
        })
        .collect()
}

/// ORDERS from the ledger: `user`'s orders of `event`.
pub fn orders(event: u32, user: u64) -> Cmd {
    let keys = EventKeys::new(event);
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("ticketd_orders")
        .arg(3)
        .arg(keys.meta())
        .arg(keys.buyers())
        .arg(keys.user_orders())
        .arg(user);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key layout is written once here; the Lua names the same keys in the same
    /// order (its `keys_of`, and the tag-built table of `ticketd_settle`).
    #[test]
    fn the_lua_uses_the_key_layout_written_here() {
        let lua = FUNCTION_LIBRARY;
        let keys_of = lua
            .split("local function keys_of(keys)")
            .nth(1)
            .and_then(|rest| rest.split("end").next())
            .expect("keys_of in the Lua");
        let sent = call_keys(&EventKeys::new(1));
        let lua_name = |i: usize, suffix: &str| match (i, suffix) {
            (7, "meta") => "guard".to_owned(),
            (_, "user-orders") => "uorders".to_owned(),
            (_, other) => other.to_owned(),
        };
        for (i, key) in sent.iter().enumerate() {
            let suffix = key.trim_start_matches("{ev:1}:");
            let entry = format!("{} = keys[{}]", lua_name(i, suffix), i + 1);
            assert!(
                keys_of.contains(&entry),
                "keys_of lacks `{entry}`: {keys_of}"
            );
        }
        // ticketd_settle builds the same keys from an event's tag.
        for key in EventKeys::new(1).state() {
            let settle = format!("tag .. ':{}'", key.trim_start_matches("{ev:1}:"));
            assert!(lua.contains(&settle), "ticketd_settle lacks {settle}");
        }
        // The call key follows the others, as `decide` sends them.
        assert!(keys_of.contains(&format!("call = keys[{}]", sent.len() + 1)));
        assert!(keys_of.contains(&format!("guard_distinct = keys[{}]", sent.len() + 2)));
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = EventKeys::new(7);
        assert_eq!(keys.meta(), "{ev:7}:meta");
        assert!(keys.state().iter().all(|k| k.starts_with("{ev:7}:")));
        assert_eq!(keys.call("9"), "{ev:7}:call:9");
    }

    #[test]
    fn outbox_entries_carry_a_calls_orders_and_anything_else_is_refused() {
        let fields = |orders: &str| -> Vec<String> {
            ["node", "3", "call", "c1", "orders", orders]
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        assert_eq!(
            outbox_orders(&fields("7:42:1,9:43:2")),
            Some(vec![
                OutboxOrder {
                    order_id: 7,
                    user: 42,
                    qty: 1
                },
                OutboxOrder {
                    order_id: 9,
                    user: 43,
                    qty: 2
                },
            ])
        );
        for bad in ["7:42", "7:42:1:5", "x:1:1", ""] {
            assert_eq!(outbox_orders(&fields(bad)), None, "{bad:?}");
        }
        assert_eq!(outbox_orders(&["order_id".into(), "7".into()]), None);
    }

    #[test]
    fn decide_packs_every_step() {
        let steps = [
            Step::Buy {
                user: 1,
                qty: 2,
                order_id: 3,
            },
            Step::Cancel { hold_id: 4 },
            Step::Reserve {
                user: 9,
                qty: 1,
                hold_id: 10,
            },
        ];
        let packed =
            String::from_utf8_lossy(&decide(5, "6", 7, 8, &steps).get_packed_command()).to_string();
        // Eleven keys, the meta key last; then call, node, TTL, count, distinct, kinds
        // (a two-ticket BUY is `b`), the BUYs' outbox text, the users, the other operands.
        assert!(
            packed.contains("$14\r\nticketd_decide\r\n$2\r\n11\r\n"),
            "{packed}"
        );
        let args = [
            "{ev:5}:call:6",
            "{ev:5}:meta",
            "6",
            "7",
            "8",
            "3",
            "D",
            "bXR",
            "3:1:2",
            "1",
            "9",
            "2",
            "3",
            "4",
            "1",
            "10",
        ];
        let tail: String = args
            .iter()
            .map(|a| format!("${}\r\n{a}\r\n", a.len()))
            .collect();
        assert!(packed.ends_with(&tail), "{packed}");
    }

    #[test]
    fn buyers_are_distinct_only_when_no_user_buys_or_reserves_twice() {
        let buy = |user| Step::Buy {
            user,
            qty: 1,
            order_id: user + 100,
        };
        let reserve = |user| Step::Reserve {
            user,
            qty: 1,
            hold_id: user + 200,
        };
        assert!(distinct_buyers(&[]));
        assert!(distinct_buyers(&[buy(1), buy(2), reserve(3)]));
        assert!(!distinct_buyers(&[buy(1), buy(2), buy(1)]));
        assert!(!distinct_buyers(&[buy(1), reserve(1)]));
        // A settle step names a hold, not a user: hold 1 beside user 1 is no repeat.
        assert!(distinct_buyers(&[
            buy(1),
            Step::Confirm {
                hold_id: 1,
                order_id: 9
            },
            Step::Cancel { hold_id: 1 },
        ]));
    }
}
