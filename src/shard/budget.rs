//! `--max-conns` for the whole node: one count of held connections shared by every
//! shard, so the limit is the number the node holds however the kernel spreads
//! connections over the shards' listeners. Touched only on accept and close, never per
//! request.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct ConnBudget {
    max: usize,
    open: AtomicUsize,
}

impl ConnBudget {
    pub fn new(max: usize) -> Self {
        ConnBudget {
            max,
            open: AtomicUsize::new(0),
        }
    }

    /// Takes a place for one more connection, or `false` when the node holds `max`.
    pub fn try_take(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok()
    }

    /// Gives back the place of a connection that closed.
    pub fn give_back(&self) {
        let _ = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                open.checked_sub(1)
            });
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_max_and_gives_back() {
        let budget = ConnBudget::new(2);
        assert!(budget.try_take() && budget.try_take());
        assert!(!budget.try_take(), "a third is over the limit");
        budget.give_back();
        assert_eq!(budget.open(), 1);
        assert!(budget.try_take());
        budget.give_back();
        budget.give_back();
        budget.give_back();
        assert_eq!(budget.open(), 0, "never below zero");
    }
}
