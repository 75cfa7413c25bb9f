//! `ticketd audit`: checks a ledger end to end — a data directory, or with `--redis` the
//! global ledger — and exits 1 on any violation: every record valid, sold + held never
//! above the total (so sold + held + remaining = total with remaining ≥ 0), nobody
//! above the per-user limit, every order id unique. This file holds the data directory's
//! checks and the report; the Redis ledger's are in `audit_redis`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::ids::IdText;
use crate::journal::recovery::{self, Recovered};
use crate::journal::JournalError;

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

/// Violations kept word for word; past these only counted.
pub const LISTED: usize = 1_000;

/// What an audit found.
#[derive(Debug, Default)]
pub struct Report {
    pub events: Vec<EventAudit>,
    /// The first [`LISTED`] violations found (a ledger broken everywhere would
    /// otherwise fill memory with them); `unlisted` counts the rest.
    pub violations: Vec<String>,
    pub unlisted: u64,
    /// Events whose sums could not be judged: they changed while they were read
    /// (`audit --redis` of an event still selling; see `audit_redis`).
    pub unsettled: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    /// No violation, and every event judged whole.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty() && self.unsettled.is_empty()
    }

    /// Records a violation: listed while fewer than [`LISTED`] are, counted after.
    pub fn violation(&mut self, text: String) {
        if self.violations.len() < LISTED {
            self.violations.push(text);
        } else {
            self.unlisted += 1;
        }
    }

    /// Every violation found, listed or not.
    pub fn violation_count(&self) -> u64 {
        self.violations.len() as u64 + self.unlisted
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
        if self.unlisted > 0 {
            let _ = writeln!(
                out,
                "VIOLATION: … and {} more, not listed (the first {LISTED} are)",
                self.unlisted
            );
        }
        for unsettled in &self.unsettled {
            let _ = writeln!(out, "UNSETTLED: {unsettled}");
        }
        match (self.violation_count(), self.unsettled.len()) {
            (0, 0) => out.push_str("audit: OK"),
            (n, 0) => {
                let _ = write!(out, "audit: {n} violation(s)");
            }
            (n, m) => {
                let _ = write!(
                    out,
                    "audit: {n} violation(s), {m} event(s) changed while read and not judged whole"
                );
            }
        }
        out
    }
}

/// Audits the data dir or the Redis ledger, as `args` says.
pub fn run(args: &AuditArgs) -> Report {
    match &args.redis {
        Some(url) => super::audit_redis::audit_redis(url, &args.events),
        None => audit_dir(&args.data_dir),
    }
}

/// How long after a read that found damage the data dir is read again.
const SECOND_READ_AFTER: Duration = Duration::from_millis(200);

/// The data dir's state by `read`, read a second time `pause` later when the first read
/// found damage. A zero-tailed segment is overwritten in place: one read of a running
/// server's file can find a page of a write still zero and a later write's pages
/// already there, which reads as damage. Such a read is gone a moment later; damage is
/// not, and any other error is not a read caught mid-write.
fn read_settled(
    mut read: impl FnMut() -> Result<Recovered, JournalError>,
    pause: Duration,
) -> Result<Recovered, JournalError> {
    match read() {
        Err(JournalError::Corrupt { .. }) => {
            std::thread::sleep(pause);
            read()
        }
        first => first,
    }
}

/// Audits a data directory (read-only: a running server may keep writing).
pub fn audit_dir(dir: &std::path::Path) -> Report {
    let mut report = Report::default();
    if !dir.is_dir() {
        report.violation(format!("{}: no such data dir", dir.display()));
        return report;
    }
    let state = match read_settled(|| recovery::recover(dir, None), SECOND_READ_AFTER) {
        Ok(state) => state,
        Err(e) => {
            report.violation(e.to_string());
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
            report.violation(format!(
                "order id {} is issued twice",
                IdText(order.order_id)
            ));
        }
        if !state.events.iter().any(|e| e.event_id == order.event_id) {
            report.violation(format!(
                "order {} is for event {}, which the journal never defined",
                IdText(order.order_id),
                order.event_id
            ));
        }
    }
    for hold_id in state.holds.keys() {
        if order_ids.contains(hold_id) {
            report.violation(format!(
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
    check_counters(report, &event);
    let mut over: Vec<(u64, i64)> = per_user
        .iter()
        .filter(|&(_, &n)| n > limit)
        .map(|(&u, &n)| (u, n))
        .collect();
    over.sort_unstable();
    for (user, n) in over {
        report.violation(format!(
            "event {}: user {user} has {n} tickets, above the per-user limit {limit}",
            event.event_id
        ));
    }
    report.events.push(event);
}

/// Sold and held never below zero, and never above the total between them (oversold).
pub(super) fn check_counters(report: &mut Report, event: &EventAudit) {
    if event.sold < 0 || event.held < 0 || event.sold + event.held > event.total {
        report.violation(format!(
            "event {}: sold {} + held {} exceed the total {} (oversold)",
            event.event_id, event.sold, event.held, event.total
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corrupt() -> JournalError {
        JournalError::Corrupt {
            path: "seg".into(),
            offset: 8,
            why: "a page of zeros".into(),
        }
    }

    #[test]
    fn damage_is_read_again_once_and_believed_only_if_it_stays() {
        let empty = tempfile::tempdir().unwrap();
        // Damage that is gone a moment later (a write caught half-way): the second read.
        let mut reads = 0;
        let settled = read_settled(
            || {
                reads += 1;
                if reads == 1 {
                    Err(corrupt())
                } else {
                    recovery::recover(empty.path(), None)
                }
            },
            Duration::ZERO,
        );
        assert!(settled.is_ok(), "{:?}", settled.err());
        assert_eq!(reads, 2);
        // Damage that stays: reported after one more read, not read forever.
        let mut reads = 0;
        let damaged = read_settled(
            || {
                reads += 1;
                Err(corrupt())
            },
            Duration::ZERO,
        );
        assert!(matches!(damaged, Err(JournalError::Corrupt { .. })));
        assert_eq!(reads, 2);
        // Anything else is not a read caught mid-write: no second read.
        let mut reads = 0;
        let locked = read_settled(
            || {
                reads += 1;
                Err(JournalError::Locked {
                    dir: empty.path().into(),
                })
            },
            Duration::ZERO,
        );
        assert!(matches!(locked, Err(JournalError::Locked { .. })));
        assert_eq!(reads, 1);
    }
}
