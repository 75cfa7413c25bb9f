//! Lock-free ticket stock split into per-shard slices.
//!
//! Each shard decrements its own cache-padded slice with one `fetch_sub` (the hot path:
//! no CAS loop, no shared line with other shards). When the slice cannot cover a request
//! the `fetch_sub` is undone with `fetch_add` and the shard *gathers* from every slice
//! with CAS takes that never drive a slice negative.
//!
//! # Exactness
//! A take answers "sold out" only after a *settled* sweep: one that saw no slice in a
//! transient negative state (a failed `fetch_sub` not yet undone), no other gatherer
//! holding tickets in transit, and no ticket returned while it swept. Anything else
//! retries, so a ticket that exists is never refused because another request had it in
//! hand for a moment. Stock that is returned (a cancelled or expired hold) after a sweep
//! finished is, of course, for later buyers.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::{Backoff, CachePadded};

/// Sweeps a gather may make before it gives up and answers sold out. Reaching it needs
/// other gatherers to overlap every sweep; it is a bound, not an expected path.
const MAX_GATHER_SWEEPS: usize = 256;

/// One event's stock.
#[derive(Debug)]
pub struct Stock {
    total: i64,
    slices: Box<[CachePadded<AtomicI64>]>,
    /// Gathers in progress; while non-zero, tickets may be in transit between slices
    /// and a gatherer's hands.
    gatherers: CachePadded<AtomicUsize>,
    /// Bumped after every return of tickets to a slice.
    returns: CachePadded<AtomicU64>,
}

impl Stock {
    /// Splits `total` over `slices` slices as evenly as possible.
    ///
    /// # Panics
    /// If `slices` is 0 or `total` is negative: both come from validated configuration.
    pub fn new(total: i64, slices: usize) -> Self {
        assert!(slices > 0, "stock needs at least one slice");
        assert!(total >= 0, "stock total must not be negative");
        let n = slices as i64;
        let slices = (0..n)
            .map(|i| CachePadded::new(AtomicI64::new(total / n + i64::from(i < total % n))))
            .collect();
        Stock {
            total,
            slices,
            gatherers: CachePadded::new(AtomicUsize::new(0)),
            returns: CachePadded::new(AtomicU64::new(0)),
        }
    }

    pub fn total(&self) -> i64 {
        self.total
    }

    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }

    /// Takes `qty` tickets for a request handled by shard `home`, all or nothing.
    /// Returns false only when the tickets do not exist (see the module docs).
    pub fn take(&self, home: usize, qty: i64) -> bool {
        debug_assert!(qty > 0);
        let slice = &self.slices[home % self.slices.len()];
        if slice.fetch_sub(qty, Ordering::AcqRel) >= qty {
            return true;
        }
        slice.fetch_add(qty, Ordering::AcqRel);
        self.gather(home, qty)
    }

    /// Returns `qty` tickets (a cancelled or expired hold) to shard `home`'s slice.
    pub fn give_back(&self, home: usize, qty: i64) {
        debug_assert!(qty > 0);
        self.slices[home % self.slices.len()].fetch_add(qty, Ordering::AcqRel);
        self.returns.fetch_add(1, Ordering::SeqCst);
    }

    /// Tickets neither sold nor held. Exact when no take is in flight.
    pub fn remaining(&self) -> i64 {
        self.slices
            .iter()
            .map(|s| s.load(Ordering::Acquire).max(0))
            .sum()
    }

    /// The slow path: collect `qty` from all slices, starting with `home`.
    fn gather(&self, home: usize, qty: i64) -> bool {
        let n = self.slices.len();
        let backoff = Backoff::new();
        for _ in 0..MAX_GATHER_SWEEPS {
            let returns_before = self.returns.load(Ordering::SeqCst);
            self.gatherers.fetch_add(1, Ordering::SeqCst);
            let mut got = 0;
            let mut unsettled = false;
            for k in 0..n {
                got += self.take_up_to((home + k) % n, qty - got, &mut unsettled);
                if got == qty {
                    self.gatherers.fetch_sub(1, Ordering::SeqCst);
                    return true;
                }
            }
            // Decide before handing back what we hold: our own return must not look
            // like somebody else's.
            let settled = !unsettled
                && self.gatherers.load(Ordering::SeqCst) == 1
                && self.returns.load(Ordering::SeqCst) == returns_before;
            if got > 0 {
                self.give_back(home, got);
            }
            self.gatherers.fetch_sub(1, Ordering::SeqCst);
            if settled {
                return false;
            }
            backoff.snooze();
        }
        false
    }

    /// Takes up to `want` from slice `i` without ever driving it negative.
    fn take_up_to(&self, i: usize, want: i64, unsettled: &mut bool) -> i64 {
        let slice = &self.slices[i];
        let mut current = slice.load(Ordering::Acquire);
        loop {
            if current < 0 {
                // A failed fetch_sub is about to be undone: tickets may be hiding here.
                *unsettled = true;
                return 0;
            }
            if current == 0 {
                return 0;
            }
            let take = current.min(want);
            match slice.compare_exchange_weak(
                current,
                current - take,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return take,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_spreads_the_remainder_over_the_first_slices() {
        let stock = Stock::new(10, 3);
        let loads: Vec<i64> = stock
            .slices
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect();
        assert_eq!(loads, vec![4, 3, 3]);
        assert_eq!(stock.remaining(), 10);
    }

    #[test]
    fn a_shard_steals_when_its_own_slice_is_empty() {
        let stock = Stock::new(3, 3);
        assert!(stock.take(0, 1));
        assert!(stock.take(0, 1), "slice 0 is empty; must steal from 1 or 2");
        assert!(stock.take(0, 1));
        assert!(!stock.take(0, 1));
        assert_eq!(stock.remaining(), 0);
    }

    #[test]
    fn a_multi_ticket_take_gathers_across_slices_or_takes_nothing() {
        let stock = Stock::new(4, 4);
        assert!(!stock.take(1, 5), "only 4 exist");
        assert_eq!(
            stock.remaining(),
            4,
            "a failed gather hands everything back"
        );
        assert!(stock.take(1, 3));
        assert_eq!(stock.remaining(), 1);
    }

    #[test]
    fn returned_tickets_are_sold_again() {
        let stock = Stock::new(1, 2);
        assert!(stock.take(1, 1));
        assert!(!stock.take(0, 1));
        stock.give_back(1, 1);
        assert!(stock.take(0, 1));
    }

    #[test]
    fn empty_stock_sells_nothing() {
        let stock = Stock::new(0, 2);
        assert!(!stock.take(0, 1));
        assert_eq!(stock.remaining(), 0);
    }
}
