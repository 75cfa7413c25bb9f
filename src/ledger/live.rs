//! A shard's live holds, in the order they expire, with their memory given back the
//! moment they end.
//!
//! Holds taken in this run expire in the order of their ids: every hold gets the same
//! TTL from a clock that never goes back, and ids only grow. So the holds map, ordered
//! by id, is its own expiry queue, and a cancelled hold leaves nothing behind (a separate
//! deadline queue would keep an entry per RESERVE for a whole TTL, which is how a
//! RESERVE+CANCEL flood grew memory without bound). Holds recovered from the journal
//! keep the deadlines they were given (perhaps under another TTL), so they wait in a
//! queue of their own, sorted once at start and never added to.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::hold_pages::{HoldPages, PackedHold, SharedHoldPages};
use crate::ids::sequence_of;

/// One live hold.
#[derive(Debug, Clone, Copy)]
pub struct Hold {
    /// Catalog index of the event.
    pub event: usize,
    pub user: u64,
    pub qty: u16,
    pub expires_at: Instant,
}

#[derive(Debug)]
pub struct LiveHolds {
    /// Each hold as 24 bytes (the deadline in ns after `epoch` rather than an `Instant`,
    /// the event index in 32 bits), in pages of consecutive ids: a million live holds
    /// cost about 61 bytes each with the buyer's tally (131 as `Hold`s in a B-tree;
    /// docs/BENCHMARKS.md).
    by_id: HoldPages,
    /// What stored deadlines count from.
    epoch: Instant,
    /// The ids this run issues: `first_new ..= last_new`, in deadline order.
    first_new: u64,
    last_new: u64,
    /// Holds recovered from the journal, by deadline.
    restored: VecDeque<(Instant, u64)>,
}

/// A hold as [`HoldPages`] keeps it, with its deadline counted from `epoch`.
fn unpack(epoch: Instant, stored: PackedHold) -> Hold {
    Hold {
        event: stored.event as usize,
        user: stored.user,
        qty: stored.qty,
        expires_at: epoch + Duration::from_nanos(stored.deadline_ns),
    }
}

/// [`LiveHolds`] at one moment ([`LiveHolds::share`]), readable on any thread.
#[derive(Debug, Clone)]
pub struct SharedLiveHolds {
    pages: SharedHoldPages,
    epoch: Instant,
    len: usize,
}

impl SharedLiveHolds {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pages of holds (64 ids each) to go through.
    pub fn page_count(&self) -> usize {
        self.pages.page_count()
    }

    /// The holds of pages `from .. from + max`, in id order.
    pub fn holds(&self, from: usize, max: usize) -> impl Iterator<Item = (u64, Hold)> + '_ {
        self.pages
            .holds(from, max)
            .map(|(id, stored)| (id, unpack(self.epoch, stored)))
    }
}

impl LiveHolds {
    /// Live holds of a shard whose ids this run are `prefix | seq` for `seq` after
    /// `last_seq`.
    pub fn new(prefix: u64, last_seq: u64) -> Self {
        LiveHolds {
            by_id: HoldPages::default(),
            epoch: Instant::now(),
            first_new: prefix | (last_seq + 1),
            last_new: prefix | sequence_of(u64::MAX),
            restored: VecDeque::new(),
        }
    }

    fn store(&self, hold: Hold) -> PackedHold {
        // Exact to the nanosecond (584 years of them fit). A deadline before the epoch (a
        // recovered hold already due) counts as the epoch: due at once.
        let after = hold.expires_at.saturating_duration_since(self.epoch);
        let deadline_ns = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
        // The catalog's index: events are few (given as flags or created one by one),
        // far below 2^32.
        PackedHold::new(hold.user, deadline_ns, hold.event as u32, hold.qty)
    }

    fn load(&self, stored: PackedHold) -> Hold {
        unpack(self.epoch, stored)
    }

    /// A hold taken in this run (its id is newer than every other's).
    pub fn insert(&mut self, hold_id: u64, hold: Hold) {
        debug_assert!((self.first_new..=self.last_new).contains(&hold_id));
        let stored = self.store(hold);
        self.by_id.insert(hold_id, stored);
    }

    /// Holds recovered from the journal, before any new one is taken.
    pub fn restore(&mut self, mut holds: Vec<(u64, Hold)>) {
        holds.sort_unstable_by_key(|&(id, hold)| (hold.expires_at, id));
        for (hold_id, hold) in holds {
            self.restored.push_back((hold.expires_at, hold_id));
            let stored = self.store(hold);
            self.by_id.insert(hold_id, stored);
        }
    }

    pub fn get(&self, hold_id: u64) -> Option<Hold> {
        self.by_id.get(hold_id).map(|s| self.load(s))
    }

    pub fn remove(&mut self, hold_id: u64) -> Option<Hold> {
        let hold = self.by_id.remove(hold_id).map(|s| self.load(s));
        self.drop_ended_restored();
        hold
    }

    /// Keeps the front of `restored` a live hold, so its deadline is the next one.
    fn drop_ended_restored(&mut self) {
        while let Some(&(_, id)) = self.restored.front() {
            if self.by_id.contains(id) {
                break;
            }
            self.restored.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every live hold as it is now, for the journal writer to encode off the loop.
    pub fn share(&self) -> SharedLiveHolds {
        SharedLiveHolds {
            pages: self.by_id.share(),
            epoch: self.epoch,
            len: self.by_id.len(),
        }
    }

    /// Removes and returns a hold whose deadline is at or before `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<(u64, Hold)> {
        if let Some(&(deadline, hold_id)) = self.restored.front() {
            if deadline <= now {
                self.restored.pop_front();
                let hold = self.by_id.remove(hold_id).map(|s| self.load(s));
                self.drop_ended_restored();
                return hold.map(|hold| (hold_id, hold));
            }
        }
        let (hold_id, stored) = self.by_id.first_in(self.first_new, self.last_new)?;
        if self.load(stored).expires_at > now {
            return None;
        }
        self.by_id.remove(hold_id).map(|s| (hold_id, self.load(s)))
    }

    /// The earliest deadline of a live hold, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let restored = self.restored.front().map(|&(at, _)| at);
        let new = self
            .by_id
            .first_in(self.first_new, self.last_new)
            .map(|(_, s)| self.load(s).expires_at);
        match (restored, new) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
