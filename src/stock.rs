//! Lock-free ticket stock split into per-shard slices.
//!
//! Each shard takes single tickets from its own cache-padded slice with one
//! `fetch_sub` (the hot path: no CAS loop, no cache line shared with other shards),
//! undone with `fetch_add` when it would go negative. Multi-ticket takes use a CAS on
//! the slice, so a slice is only ever negative for a failed single-ticket take, which
//! hides no tickets (the slice held none).
//!
//! When the own slice cannot cover a request the shard *gathers*: first it tries to take
//! the whole quantity from one other slice (atomic, nothing in transit); only a
//! multi-ticket request facing stock fragmented across slices collects from several,
//! and hands everything back if it cannot complete.
//!
//! # Exactness
//! A take answers "sold out" only after a *quiet* sweep: one during which no other
//! gatherer had tickets in its hands and no ticket was returned to any slice. Anything
//! else sweeps again, so a ticket that exists is not refused because another request
//! held it for a moment. Waiting is bounded by time ([`DEFAULT_QUIET_WAIT`]): a
//! gatherer descheduled longer than that mid-gather can make a concurrent request see
//! SOLD_OUT while those tickets are in transit; they are back on sale the moment it
//! runs again. Stock returned (a cancelled or expired hold) after a sweep finished is,
//! of course, for later buyers.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::{Backoff, CachePadded};

/// How long a take may wait for other requests' in-transit tickets to arrive before it
/// answers sold out. Only reached when multi-ticket gathers overlap at the very end of
/// a sale.
pub const DEFAULT_QUIET_WAIT: Duration = Duration::from_millis(5);

/// One event's stock.
#[derive(Debug)]
pub struct Stock {
    total: i64,
    slices: Box<[CachePadded<AtomicI64>]>,
    /// Partial gathers in progress: while non-zero, tickets may be in a gatherer's hands.
    gatherers: CachePadded<AtomicUsize>,
    /// Bumped after every return of tickets to a slice.
    returns: CachePadded<AtomicU64>,
    /// Sweeps that were not quiet (tickets in transit, or returned meanwhile).
    disturbed_sweeps: AtomicU64,
    quiet_wait: Duration,
}

impl Stock {
    /// Splits `total` over `slices` slices as evenly as possible.
    ///
    /// # Panics
    /// If `slices` is 0 or `total` is negative: both come from validated configuration.
    pub fn new(total: i64, slices: usize) -> Self {
        Self::with_quiet_wait(total, slices, DEFAULT_QUIET_WAIT)
    }

    /// Like [`Stock::new`] with a chosen bound on waiting for in-transit tickets.
    pub fn with_quiet_wait(total: i64, slices: usize, quiet_wait: Duration) -> Self {
        Self::partly_taken(total, total, slices, quiet_wait)
    }

    /// An event of `total` tickets of which only `available` are still on sale (the
    /// rest sold or held before a restart), split over `slices` slices.
    ///
    /// # Panics
    /// If `slices` is 0 or `available` is not within `0..=total`: recovery checks both.
    pub fn partly_taken(total: i64, available: i64, slices: usize, quiet_wait: Duration) -> Self {
        assert!(slices > 0, "stock needs at least one slice");
        assert!(total >= 0, "stock total must not be negative");
        assert!(
            (0..=total).contains(&available),
            "available stock out of range"
        );
        let n = slices as i64;
        let slices = (0..n)
            .map(|i| CachePadded::new(AtomicI64::new(available / n + i64::from(i < available % n))))
            .collect();
        Stock {
            total,
            slices,
            gatherers: CachePadded::new(AtomicUsize::new(0)),
            returns: CachePadded::new(AtomicU64::new(0)),
            disturbed_sweeps: AtomicU64::new(0),
            quiet_wait,
        }
    }

    pub fn total(&self) -> i64 {
        self.total
    }

    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }

    /// Sweeps so far that had to look again because tickets were in transit or being
    /// returned: a measure of end-of-sale contention.
    pub fn disturbed_sweeps(&self) -> u64 {
        self.disturbed_sweeps.load(Ordering::Relaxed)
    }

    /// Takes `qty` tickets for a request handled by shard `home`, all or nothing.
    /// Returns false only when the tickets do not exist (see the module docs).
    pub fn take(&self, home: usize, qty: i64) -> bool {
        debug_assert!(qty > 0);
        let home = home % self.slices.len();
        let slice = &self.slices[home];
        if qty == 1 {
            if slice.fetch_sub(1, Ordering::AcqRel) >= 1 {
                return true;
            }
            slice.fetch_add(1, Ordering::AcqRel);
        } else if self.take_whole(home, qty) {
            return true;
        }
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

    /// The slow path, until a quiet sweep or the quiet wait runs out.
    fn gather(&self, home: usize, qty: i64) -> bool {
        let n = self.slices.len();
        let backoff = Backoff::new();
        let mut deadline = None;
        loop {
            let returns_before = self.returns.load(Ordering::SeqCst);
            if (1..n).any(|k| self.take_whole((home + k) % n, qty)) {
                return true;
            }
            let outcome = if qty > 1 && self.remaining() >= qty {
                self.gather_pieces(home, qty, returns_before)
            } else {
                Sweep::Short {
                    quiet: self.gatherers.load(Ordering::SeqCst) == 0
                        && self.returns.load(Ordering::SeqCst) == returns_before,
                }
            };
            match outcome {
                Sweep::Done => return true,
                Sweep::Short { quiet: true } => return false,
                Sweep::Short { quiet: false } => {
                    self.disturbed_sweeps.fetch_add(1, Ordering::Relaxed);
                    let deadline =
                        *deadline.get_or_insert_with(|| Instant::now() + self.quiet_wait);
                    if Instant::now() >= deadline {
                        return false;
                    }
                    backoff.snooze();
                }
            }
        }
    }

    /// Collects `qty` from several slices; hands everything back if it cannot.
    fn gather_pieces(&self, home: usize, qty: i64, returns_before: u64) -> Sweep {
        let n = self.slices.len();
        self.gatherers.fetch_add(1, Ordering::SeqCst);
        let mut got = 0;
        for k in 0..n {
            got += self.take_up_to((home + k) % n, qty - got);
            if got == qty {
                self.gatherers.fetch_sub(1, Ordering::SeqCst);
                return Sweep::Done;
            }
        }
        // Decide before handing back what we hold: our own return must not look like
        // somebody else's.
        let quiet = self.gatherers.load(Ordering::SeqCst) == 1
            && self.returns.load(Ordering::SeqCst) == returns_before;
        if got > 0 {
            self.give_back(home, got);
        }
        self.gatherers.fetch_sub(1, Ordering::SeqCst);
        Sweep::Short { quiet }
    }

    /// Takes all of `qty` from slice `i`, or nothing.
    fn take_whole(&self, i: usize, qty: i64) -> bool {
        self.slices[i]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v >= qty).then_some(v - qty)
            })
            .is_ok()
    }

    /// Takes up to `want` from slice `i`, never driving it negative.
    fn take_up_to(&self, i: usize, want: i64) -> i64 {
        match self.slices[i].fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v > 0).then(|| v - v.min(want))
        }) {
            Ok(before) => before.min(want),
            Err(_) => 0,
        }
    }
}

/// How one sweep ended.
enum Sweep {
    Done,
    /// Not enough found; `quiet` says whether that is the truth or a moment's view.
    Short {
        quiet: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
    fn a_take_waits_for_tickets_in_another_gatherers_hands() {
        // Stage the race deterministically: a gatherer has taken the last ticket into
        // its hands (as gather_pieces does) and not yet handed it back.
        let stock = Arc::new(Stock::with_quiet_wait(1, 2, Duration::from_secs(30)));
        stock.gatherers.fetch_add(1, Ordering::SeqCst);
        assert_eq!(stock.take_up_to(0, 2), 1);

        let buyer = {
            let stock = Arc::clone(&stock);
            std::thread::spawn(move || stock.take(1, 1))
        };
        // The buyer sees every slice empty, but must not call it sold out while the
        // ticket is in transit.
        while stock.disturbed_sweeps() == 0 {
            assert!(
                !buyer.is_finished(),
                "the buyer answered while a ticket was in transit"
            );
            std::thread::yield_now();
        }
        stock.give_back(0, 1);
        stock.gatherers.fetch_sub(1, Ordering::SeqCst);
        assert!(
            buyer.join().unwrap(),
            "the in-transit ticket was sold to the buyer"
        );
        assert_eq!(stock.remaining(), 0);
    }

    #[test]
    fn a_quiet_empty_stock_answers_at_once() {
        let stock = Stock::new(0, 4);
        assert!(!stock.take(2, 1));
        assert!(!stock.take(2, 3));
        assert_eq!(stock.disturbed_sweeps(), 0);
    }

    #[test]
    fn empty_stock_sells_nothing() {
        let stock = Stock::new(0, 2);
        assert!(!stock.take(0, 1));
        assert_eq!(stock.remaining(), 0);
    }
}
