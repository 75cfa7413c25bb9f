//! `ticketd audit --redis`: the ledger mode's checks, read a page at a time.
//!
//! Redis runs one command at a time, so a read of a whole hash of millions of buyers
//! (one HGETALL) stops every node's calls until it is done: 1.0 s for 1.8 M buyers on
//! the bench machine, while other events may still be selling. The audit therefore
//! reads with HSCAN and short XRANGE pages, and judges each buyer as its entry arrives,
//! so its memory is a page plus the order ids it checks for repeats.
//!
//! Pages are not one snapshot: an event that sells while it is audited changes between
//! them, and its sums would race with its sales. The audit reads the event's counters,
//! its hold count and its stream's last entry before and after, and when any moved it
//! reports the event as unsettled instead of judging sums it could not read whole.
//! What holds at every instant (sold + held within the total, each buyer within the
//! limit, order ids unique) is still judged. (Changes that put all four back as they were
//! — a hold taken and cancelled while an old one is forgotten — would pass unseen: the
//! audit's verdict is for an event whose sale is over.)

use std::collections::HashSet;
use std::time::Duration;

use redis::{Connection, FromRedisValue, RedisResult};

use super::audit::{check_counters, EventAudit, Report};
use crate::redis_ledger::{outbox_orders, parse_buyer, EventKeys};

/// Redis's COUNT hint for each HSCAN: about this many fields per call (each call a
/// millisecond or less of Redis's time).
const SCAN_COUNT: usize = 1000;

/// Stream entries per XRANGE. Each entry carries one ledger call's orders, up to
/// hundreds, so a page is a few MB at most.
const STREAM_PAGE: usize = 100;

/// Audits the Redis ledger: each event's counters against its buyers, holds and order
/// stream.
pub fn audit_redis(url: &crate::config::RedisUrl, events: &[u32]) -> Report {
    audit_redis_observed(url, events, &mut |_| {})
}

/// As [`audit_redis`], calling `after_page` with the key of each page read, once it is
/// read (tests change the ledger there, as a sale would).
pub fn audit_redis_observed(
    url: &crate::config::RedisUrl,
    events: &[u32],
    after_page: &mut dyn FnMut(&str),
) -> Report {
    let mut report = Report::default();
    let addr = url.addr;
    if let Err(e) = audit_into(url, events, after_page, &mut report) {
        report.violation(format!("Redis at {addr} could not be read: {e}"));
    }
    report
}

fn audit_into(
    url: &crate::config::RedisUrl,
    events: &[u32],
    after_page: &mut dyn FnMut(&str),
    report: &mut Report,
) -> RedisResult<()> {
    let client = redis::Client::open(url.login.connection_info(url.addr)?)?;
    let mut c = client.get_connection_with_timeout(Duration::from_secs(5))?;
    let ids = if events.is_empty() {
        every_event(&mut c)?
    } else {
        events.to_vec()
    };
    let mut order_ids = HashSet::new();
    for id in ids {
        let mut audit = EventRead {
            c: &mut c,
            keys: Keys::of(id),
            event_id: id,
            after_page: &mut *after_page,
            report: &mut *report,
        };
        audit.run(&mut order_ids)?;
    }
    Ok(())
}

/// The ids of every event with a ledger entry, by SCAN.
fn every_event(c: &mut Connection) -> RedisResult<Vec<u32>> {
    let mut ids = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("{ev:*}:meta")
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query(c)?;
        ids.extend(keys.iter().filter_map(|k| {
            k.strip_prefix("{ev:")?
                .strip_suffix("}:meta")?
                .parse::<u32>()
                .ok()
        }));
        if next == 0 {
            break;
        }
        cursor = next;
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// What moves whenever an event's ledger changes: its counters (a sale, a hold, a
/// release), its hold records (a RESERVE adds one, a forgotten one goes) and its
/// stream's last entry (every call that sells adds one).
#[derive(Debug, PartialEq, Eq)]
struct Mark {
    total: i64,
    sold: i64,
    held: i64,
    limit: i64,
    holds: u64,
    last_entry: Option<String>,
}

/// What the pages of one event add up to.
#[derive(Default)]
struct Sums {
    buyers: u64,
    /// Tickets bought or held, by the buyers' entries.
    in_users: i64,
    /// Tickets of live holds, by the hold records.
    live_held: i64,
    /// Tickets and orders in the stream.
    streamed: i64,
    orders: u64,
}

/// The keys of one event the audit reads.
struct Keys {
    meta: String,
    /// The layout before buyers: user -> tickets.
    users: String,
    holds: String,
    orders: String,
    buyers: String,
}

impl Keys {
    fn of(event: u32) -> Keys {
        let [meta, users, holds, _, _, orders, _, buyers] = EventKeys::new(event).state();
        Keys {
            meta,
            users,
            holds,
            orders,
            buyers,
        }
    }
}

struct EventRead<'a> {
    c: &'a mut Connection,
    keys: Keys,
    event_id: u32,
    after_page: &'a mut dyn FnMut(&str),
    report: &'a mut Report,
}

impl EventRead<'_> {
    fn run(&mut self, order_ids: &mut HashSet<u64>) -> RedisResult<()> {
        let id = self.event_id;
        let Some(before) = self.mark()? else {
            self.report.violation(format!(
                "event {id}: no ledger entry ({} is missing or incomplete)",
                self.keys.meta
            ));
            return Ok(());
        };
        let mut sums = Sums::default();
        self.read_buyers(before.limit, &mut sums)?;
        self.read_legacy_users(before.limit, &mut sums)?;
        self.read_holds(&mut sums)?;
        if let Some(last) = &before.last_entry {
            self.read_stream(last, order_ids, &mut sums)?;
        }
        let after = self.mark()?;
        let event = EventAudit {
            event_id: id,
            total: before.total,
            sold: before.sold,
            held: before.held,
            orders: sums.orders,
            buyers: sums.buyers,
        };
        check_counters(self.report, &event);
        self.report.events.push(event);
        match after {
            Some(after) if after == before => self.judge_sums(&before, &sums),
            Some(after) => self.report.unsettled.push(format!(
                "event {id} changed while it was audited (sold {} -> {}, held {} -> {}, hold \
                 records {} -> {}): its sums were not judged; audit it once its sale is over",
                before.sold, after.sold, before.held, after.held, before.holds, after.holds
            )),
            None => self.report.unsettled.push(format!(
                "event {id}: its ledger entry went while it was audited"
            )),
        }
        Ok(())
    }

    fn mark(&mut self) -> RedisResult<Option<Mark>> {
        let (total, sold, held, limit): (Option<i64>, Option<i64>, Option<i64>, Option<i64>) =
            redis::cmd("HMGET")
                .arg(&self.keys.meta)
                .arg(&["total", "sold", "held", "limit"][..])
                .query(self.c)?;
        let (Some(total), Some(sold), Some(held), Some(limit)) = (total, sold, held, limit) else {
            return Ok(None);
        };
        let holds: u64 = redis::cmd("HLEN").arg(&self.keys.holds).query(self.c)?;
        let last: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
            .arg(&self.keys.orders)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(self.c)?;
        Ok(Some(Mark {
            total,
            sold,
            held,
            limit,
            holds,
            last_entry: last.into_iter().next().map(|(entry, _)| entry),
        }))
    }

    /// Calls `on_page` with each HSCAN page of `key` (field, value, field, value, …).
    fn each_page(
        &mut self,
        key: &str,
        mut on_page: impl FnMut(&mut Self, &[String]) -> RedisResult<()>,
    ) -> RedisResult<()> {
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("HSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query(self.c)?;
            (self.after_page)(key);
            on_page(self, &page)?;
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The values in hash `key` of the fields of an HSCAN `page`, in its order.
    fn values_of<T: FromRedisValue>(&mut self, key: &str, page: &[String]) -> RedisResult<Vec<T>> {
        if page.is_empty() {
            return Ok(Vec::new());
        }
        redis::cmd("HMGET")
            .arg(key)
            .arg(
                page.iter()
                    .step_by(2)
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            )
            .query(self.c)
    }

    /// Every buyers entry: what the user bought plus holds, judged against the limit. A
    /// user an earlier version sold to and nothing has touched since can still have a
    /// count in the layout before buyers (`users`); it is added in.
    fn read_buyers(&mut self, limit: i64, sums: &mut Sums) -> RedisResult<()> {
        let id = self.event_id;
        let (buyers, users) = (self.keys.buyers.clone(), self.keys.users.clone());
        let legacy: bool = redis::cmd("EXISTS").arg(&users).query(self.c)?;
        self.each_page(&buyers, |this, page| {
            let earlier: Vec<Option<i64>> = if legacy {
                this.values_of(&users, page)?
            } else {
                Vec::new()
            };
            for (i, kv) in page.chunks_exact(2).enumerate() {
                let (user, entry) = (&kv[0], &kv[1]);
                let (Ok(user_id), Some((held, orders))) = (user.parse::<u64>(), parse_buyer(entry))
                else {
                    this.report.violation(format!(
                        "event {id}: buyer entry {user:?} = {entry:?} is not in the form [held|]order,…"
                    ));
                    continue;
                };
                let bought: i64 = orders.iter().map(|&(_, qty)| i64::from(qty)).sum();
                let has = held + bought + earlier.get(i).copied().flatten().unwrap_or(0);
                this.count_buyer(user_id, has, limit, sums);
            }
            Ok(())
        })
    }

    /// Users of the layout before buyers who have no buyers entry yet (those who have
    /// were counted with it).
    fn read_legacy_users(&mut self, limit: i64, sums: &mut Sums) -> RedisResult<()> {
        let id = self.event_id;
        let (buyers, users) = (self.keys.buyers.clone(), self.keys.users.clone());
        self.each_page(&users, |this, page| {
            let entries: Vec<Option<String>> = this.values_of(&buyers, page)?;
            for (kv, entry) in page.chunks_exact(2).zip(entries) {
                let (user, count) = (&kv[0], &kv[1]);
                if entry.is_some() {
                    continue;
                }
                match (user.parse::<u64>(), count.parse::<i64>()) {
                    (Ok(user_id), Ok(count)) => this.count_buyer(user_id, count, limit, sums),
                    _ => this.report.violation(format!(
                        "event {id}: user entry {user:?} = {count:?} (the layout before buyers) \
                         is not a user and a count"
                    )),
                }
            }
            Ok(())
        })
    }

    fn count_buyer(&mut self, user: u64, has: i64, limit: i64, sums: &mut Sums) {
        sums.buyers += 1;
        sums.in_users += has;
        if has > limit {
            self.report.violation(format!(
                "event {}: user {user} has {has} tickets, above the per-user limit {limit}",
                self.event_id
            ));
        }
    }

    /// The tickets of live holds ("user qty expires state order", state A).
    fn read_holds(&mut self, sums: &mut Sums) -> RedisResult<()> {
        let holds = self.keys.holds.clone();
        self.each_page(&holds, |_, page| {
            sums.live_held += page
                .chunks_exact(2)
                .filter_map(|kv| {
                    let fields: Vec<&str> = kv[1].split(' ').collect();
                    (fields.get(3) == Some(&"A")).then(|| fields.get(1)?.parse::<i64>().ok())?
                })
                .sum::<i64>();
            Ok(())
        })
    }

    /// The order stream, oldest first, up to `last` (its last entry when the audit began:
    /// a stream a live sale keeps growing faster than it is read would never end): its
    /// tickets and orders, and every order id once.
    fn read_stream(
        &mut self,
        last: &str,
        order_ids: &mut HashSet<u64>,
        sums: &mut Sums,
    ) -> RedisResult<()> {
        let id = self.event_id;
        let stream = self.keys.orders.clone();
        let mut start = "-".to_owned();
        loop {
            let page: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(&stream)
                .arg(&start)
                .arg(last)
                .arg("COUNT")
                .arg(STREAM_PAGE)
                .query(self.c)?;
            (self.after_page)(&stream);
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            start = format!("({last}");
            for (entry, fields) in &page {
                let Some(made) = outbox_orders(fields) else {
                    self.report.violation(format!(
                        "event {id}: order stream entry {entry} is not in the form node, call, orders"
                    ));
                    continue;
                };
                for order in made {
                    sums.orders += 1;
                    sums.streamed += i64::from(order.qty);
                    if !order_ids.insert(order.order_id) {
                        self.report.violation(format!(
                            "order id {} is in the order stream twice",
                            order.order_id
                        ));
                    }
                }
            }
        }
    }

    /// The checks that need every page of a ledger that did not change meanwhile.
    fn judge_sums(&mut self, mark: &Mark, sums: &Sums) {
        let id = self.event_id;
        if sums.streamed != mark.sold {
            self.report.violation(format!(
                "event {id}: the order stream holds {} tickets but the ledger says {} sold",
                sums.streamed, mark.sold
            ));
        }
        if sums.live_held != mark.held {
            self.report.violation(format!(
                "event {id}: live holds add up to {} tickets but the ledger says {} held",
                sums.live_held, mark.held
            ));
        }
        if sums.in_users != mark.sold + mark.held {
            self.report.violation(format!(
                "event {id}: users hold or bought {} tickets but sold + held is {}",
                sums.in_users,
                mark.sold + mark.held
            ));
        }
    }
}
