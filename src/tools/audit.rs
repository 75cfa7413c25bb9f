//! `ticketd audit`: checks a ledger end to end — a data directory, or with `--redis` the
//! global ledger — and exits 1 on any violation: every record valid, sold + held never
//! above the total (so sold + held + remaining = total with remaining ≥ 0), nobody
//! above the per-user limit, every order id unique.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::ids::IdText;
use crate::journal::recovery::{self, Recovered};
use crate::journal::JournalError;
use crate::redis_ledger::EventKeys;

#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// The data dir to check (embedded mode).
    #[arg(long, value_name = "DIR", default_value = crate::config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Check the Redis ledger at this address instead (ledger mode), e.g.
    /// `redis://127.0.0.1:6379`.
    #[arg(long, value_name = "URL", value_parser = crate::config::parse_redis_url)]
    pub redis: Option<crate::config::RedisUrl>,
    /// With `--redis`: the events to check [default: every event in the ledger].
    #[arg(long = "event", value_name = "ID")]
    pub events: Vec<u32>,
}

/// One event's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventAudit {
    pub event_id: u32,
    pub total: i64,
    pub sold: i64,
    pub held: i64,
    pub orders: u64,
    pub buyers: u64,
}

/// What an audit found.
#[derive(Debug, Default)]
pub struct Report {
    pub events: Vec<EventAudit>,
    pub violations: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
            "event", "total", "sold", "held", "remaining", "orders", "buyers"
        );
        for e in &self.events {
            let _ = writeln!(
                out,
                "{:>10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
                e.event_id,
                e.total,
                e.sold,
                e.held,
                e.total - e.sold - e.held,
                e.orders,
                e.buyers
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        for violation in &self.violations {
            let _ = writeln!(out, "VIOLATION: {violation}");
        }
        match self.violations.len() {
            0 => out.push_str("audit: OK"),
            n => {
                let _ = write!(out, "audit: {n} violation(s)");
            }
        }
        out
    }
}

/// Audits the data dir or the Redis ledger, as `args` says.
pub fn run(args: &AuditArgs) -> Report {
    match &args.redis {
        Some(url) => audit_redis(url, &args.events),
        None => audit_dir(&args.data_dir),
    }
}

/// Audits a data directory (read-only: a running server may keep writing).
pub fn audit_dir(dir: &std::path::Path) -> Report {
    let mut report = Report::default();
    if !dir.is_dir() {
        report
            .violations
            .push(format!("{}: no such data dir", dir.display()));
        return report;
    }
    // A zero-tailed segment is overwritten in place: one read of a running server's
    // file can find a page of a write still zero and a later write's pages already
    // there, which reads as damage. Such a read is gone a moment later; damage is not.
    let state = match recovery::recover(dir, None).or_else(|first| match first {
        JournalError::Corrupt { .. } => {
            std::thread::sleep(Duration::from_millis(200));
            recovery::recover(dir, None)
        }
        other => Err(other),
    }) {
        Ok(state) => state,
        Err(e) => {
            report.violations.push(e.to_string());
            return report;
        }
    };
    if state.manifest.is_none() {
        report
            .notes
            .push(format!("{} holds no journal yet", dir.display()));
    }
    for torn in &state.torn {
        report.notes.push(format!(
            "{} ends with a record cut short at byte {} (a crash mid-write; never acknowledged)",
            torn.path.display(),
            torn.offset
        ));
    }
    check_state(&state, &mut report);
    report
}

fn check_state(state: &Recovered, report: &mut Report) {
    let mut order_ids = HashSet::new();
    for order in &state.orders {
        if !order_ids.insert(order.order_id) {
            report.violations.push(format!(
                "order id {} is issued twice",
                IdText(order.order_id)
            ));
        }
        if !state.events.iter().any(|e| e.event_id == order.event_id) {
            report.violations.push(format!(
                "order {} is for event {}, which the journal never defined",
                IdText(order.order_id),
                order.event_id
            ));
        }
    }
    for hold_id in state.holds.keys() {
        if order_ids.contains(hold_id) {
            report.violations.push(format!(
                "id {} is both an order and a hold",
                IdText(*hold_id)
            ));
        }
    }
    for def in &state.events {
        // Per user: tickets bought, and tickets in live holds.
        let mut per_user: HashMap<u64, i64> = HashMap::new();
        let mut orders = 0;
        for order in state.orders.iter().filter(|o| o.event_id == def.event_id) {
            *per_user.entry(order.user).or_default() += i64::from(order.qty);
            orders += 1;
        }
        for hold in state.holds.values() {
            if hold.event_id == def.event_id && hold.end.is_none() {
                *per_user.entry(hold.user).or_default() += i64::from(hold.qty);
            }
        }
        let (sold, held) = state.sold_and_held(def.event_id);
        check_event(
            report,
            EventAudit {
                event_id: def.event_id,
                total: def.total,
                sold,
                held,
                orders,
                buyers: per_user.len() as u64,
            },
            i64::from(def.per_user_limit),
            &per_user,
        );
    }
}

fn check_event(report: &mut Report, event: EventAudit, limit: i64, per_user: &HashMap<u64, i64>) {
    if event.sold < 0 || event.held < 0 || event.sold + event.held > event.total {
        report.violations.push(format!(
            "event {}: sold {} + held {} exceed the total {} (oversold)",
            event.event_id, event.sold, event.held, event.total
        ));
    }
    let mut over: Vec<(u64, i64)> = per_user
        .iter()
        .filter(|&(_, &n)| n > limit)
        .map(|(&u, &n)| (u, n))
        .collect();
    over.sort_unstable();
    for (user, n) in over {
        report.violations.push(format!(
            "event {}: user {user} has {n} tickets, above the per-user limit {limit}",
            event.event_id
        ));
    }
    report.events.push(event);
}

/// Audits the Redis ledger: each event's counters against its users, holds and order
/// stream.
pub fn audit_redis(url: &crate::config::RedisUrl, events: &[u32]) -> Report {
    let mut report = Report::default();
    let addr = url.addr;
    if let Err(e) = audit_redis_into(url, events, &mut report) {
        report
            .violations
            .push(format!("Redis at {addr} could not be read: {e}"));
    }
    report
}

fn audit_redis_into(
    url: &crate::config::RedisUrl,
    events: &[u32],
    report: &mut Report,
) -> redis::RedisResult<()> {
    let client = redis::Client::open(url.login.connection_info(url.addr)?)?;
    let mut c = client.get_connection_with_timeout(Duration::from_secs(5))?;
    let mut ids = events.to_vec();
    if ids.is_empty() {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("{ev:*}:meta")
                .arg("COUNT")
                .arg(1000)
                .query(&mut c)?;
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
    }
    let mut order_ids = HashSet::new();
    for id in ids {
        let keys = EventKeys::new(id);
        let [meta, users, holds, _, _, _, _, buyers] = keys.state();
        let (total, sold, held, limit): (Option<i64>, Option<i64>, Option<i64>, Option<i64>) =
            redis::cmd("HMGET")
                .arg(&meta)
                .arg(&["total", "sold", "held", "limit"][..])
                .query(&mut c)?;
        let (Some(total), Some(sold), Some(held), Some(limit)) = (total, sold, held, limit) else {
            report.violations.push(format!(
                "event {id}: no ledger entry ({meta} is missing or incomplete)"
            ));
            continue;
        };
        // What each user has, bought plus held: from their entry in buyers, or for users
        // an earlier version sold and nothing has touched since, its count in users.
        let mut per_user: HashMap<u64, i64> = HashMap::new();
        for (user, entry) in redis::cmd("HGETALL")
            .arg(&buyers)
            .query::<HashMap<String, String>>(&mut c)?
        {
            match (user.parse(), crate::redis_ledger::parse_buyer(&entry)) {
                (Ok(user), Some((held, orders))) => {
                    let bought: i64 = orders.iter().map(|&(_, qty)| i64::from(qty)).sum();
                    *per_user.entry(user).or_default() += held + bought;
                }
                _ => report.violations.push(format!(
                    "event {id}: buyer entry {user:?} = {entry:?} is not in the form [held|]order,…"
                )),
            }
        }
        for (user, count) in redis::cmd("HGETALL")
            .arg(&users)
            .query::<HashMap<String, i64>>(&mut c)?
        {
            if let Ok(user) = user.parse::<u64>() {
                *per_user.entry(user).or_default() += count;
            }
        }
        let live_held: i64 = redis::cmd("HVALS")
            .arg(&holds)
            .query::<Vec<String>>(&mut c)?
            .iter()
            .filter_map(|h| {
                let fields: Vec<&str> = h.split(' ').collect();
                (fields.get(3) == Some(&"A")).then(|| fields.get(1)?.parse::<i64>().ok())?
            })
            .sum();
        // The order stream, in pages.
        let mut streamed = 0i64;
        let mut orders = 0u64;
        let mut start = "-".to_owned();
        loop {
            let page: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(keys.orders())
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(10_000)
                .query(&mut c)?;
            let Some((last, _)) = page.last() else { break };
            start = format!("({last}");
            for (entry, fields) in &page {
                let Some(made) = crate::redis_ledger::outbox_orders(fields) else {
                    report.violations.push(format!(
                        "event {id}: order stream entry {entry} is not in the form node, call, orders"
                    ));
                    continue;
                };
                for order in made {
                    orders += 1;
                    streamed += i64::from(order.qty);
                    if !order_ids.insert(order.order_id.to_string()) {
                        report.violations.push(format!(
                            "order id {} is in the order stream twice",
                            order.order_id
                        ));
                    }
                }
            }
        }
        if streamed != sold {
            report.violations.push(format!(
                "event {id}: the order stream holds {streamed} tickets but the ledger says {sold} sold"
            ));
        }
        if live_held != held {
            report.violations.push(format!(
                "event {id}: live holds add up to {live_held} tickets but the ledger says {held} held"
            ));
        }
        let in_users: i64 = per_user.values().sum();
        if in_users != sold + held {
            report.violations.push(format!(
                "event {id}: users hold or bought {in_users} tickets but sold + held is {}",
                sold + held
            ));
        }
        check_event(
            report,
            EventAudit {
                event_id: id,
                total,
                sold,
                held,
                orders,
                buyers: per_user.len() as u64,
            },
            limit,
            &per_user,
        );
    }
    Ok(())
}
