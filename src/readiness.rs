//! What `/readyz` reports: whether this node can sell, and if not, why. Shards write
//! it when something changes (an event missing from the Redis ledger, the Redis
//! connection up or down), never per request; the admin endpoint reads it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Readiness {
    /// Event ids, in catalog order.
    events: Vec<u32>,
    /// Per event, per shard: the Redis ledger said the event does not exist.
    missing: Vec<Vec<AtomicBool>>,
    /// Ledger mode, per shard: its Redis connection is up (always true otherwise).
    redis_up: Vec<AtomicBool>,
    /// The node-wide fail-stop flag a failed journal write raises.
    journal_failed: Option<Arc<AtomicBool>>,
}

impl Readiness {
    pub fn new(events: Vec<u32>, shards: usize, ledger_mode: bool) -> Self {
        Readiness {
            missing: events
                .iter()
                .map(|_| (0..shards).map(|_| AtomicBool::new(false)).collect())
                .collect(),
            events,
            redis_up: (0..shards).map(|_| AtomicBool::new(!ledger_mode)).collect(),
            journal_failed: None,
        }
    }

    /// Not ready once `flag` is raised (a journal write or sync failed: nothing is sold
    /// until a restart).
    pub fn with_fail_stop(mut self, flag: Arc<AtomicBool>) -> Self {
        self.journal_failed = Some(flag);
        self
    }

    /// Shard `shard` learned whether event `event` (catalog index) is in the ledger.
    pub fn set_missing(&self, event: usize, shard: usize, missing: bool) {
        if let Some(flag) = self.missing.get(event).and_then(|m| m.get(shard)) {
            flag.store(missing, Ordering::Release);
        }
    }

    /// Whether shard `shard` last said event `event` is missing.
    pub fn is_missing(&self, event: usize, shard: usize) -> bool {
        self.missing
            .get(event)
            .and_then(|m| m.get(shard))
            .is_some_and(|f| f.load(Ordering::Acquire))
    }

    /// Shard `shard`'s Redis connection went up or down.
    pub fn set_redis_up(&self, shard: usize, up: bool) {
        if let Some(flag) = self.redis_up.get(shard) {
            flag.store(up, Ordering::Release);
        }
    }

    /// Why the node cannot sell everything it was started to, one reason per line;
    /// empty when it can.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self
            .journal_failed
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Acquire))
        {
            problems.push(
                "journal: a write or sync failed; nothing is sold until a restart".to_owned(),
            );
        }
        let down = self
            .redis_up
            .iter()
            .filter(|up| !up.load(Ordering::Acquire))
            .count();
        if down > 0 {
            problems.push(format!(
                "redis: {down} of {} shard connections down",
                self.redis_up.len()
            ));
        }
        for (id, flags) in self.events.iter().zip(&self.missing) {
            if flags.iter().any(|f| f.load(Ordering::Acquire)) {
                problems.push(format!(
                    "event {id}: missing from the Redis ledger (create it with `ticketd create-events`)"
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_each_cause() {
        let r = Readiness::new(vec![7, 9], 2, true);
        assert_eq!(r.problems(), vec!["redis: 2 of 2 shard connections down"]);
        r.set_redis_up(0, true);
        r.set_redis_up(1, true);
        assert!(r.problems().is_empty());
        r.set_missing(1, 1, true);
        assert_eq!(r.problems().len(), 1);
        assert!(r.problems()[0].starts_with("event 9: missing"));
    }
}
