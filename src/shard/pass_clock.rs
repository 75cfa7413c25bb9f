//! How much of one loop pass reading requests and writing answers may take
//! (`--pass-budget`). Unbounded, a pass that finds a whole window of pipelined requests
//! waiting (64 connections × 64 in flight) reads, decides and answers all of them before
//! it looks at anything else: 4–7 ms on a slow VM, during which the journal's committed
//! answers, timers and new connections wait. Bounded, the pass stops reading once half
//! of the budget has gone and stops writing once all of it has, and the next pass (the
//! poll does not sleep while connections wait their turn) takes up the rest, the ones
//! left waiting first. Every pass reads and writes at least one connection, so even a
//! budget of zero makes progress.

use std::time::{Duration, Instant};

use crate::stats::PassCut;

/// `--pass-budget`'s default: with reading stopped at half of it, the decisions, the
/// journal's released answers and the table upkeep that follow leave a pass well under
/// 5 ms on the slowest VM measured (docs/BENCHMARKS.md).
pub const DEFAULT_PASS_BUDGET: Duration = Duration::from_millis(3);

#[derive(Debug)]
pub struct PassClock {
    budget: Duration,
    reads_until: Instant,
    writes_until: Instant,
    read_one: bool,
    wrote_one: bool,
    /// A connection was refused its read, or its write, this pass.
    read_cut: bool,
    write_cut: bool,
}

impl PassClock {
    pub fn new(budget: Duration, now: Instant) -> Self {
        let mut clock = PassClock {
            budget,
            reads_until: now,
            writes_until: now,
            read_one: false,
            wrote_one: false,
            read_cut: false,
            write_cut: false,
        };
        clock.begin(now);
        clock
    }

    /// A pass begins at `now` (when its poll returned).
    pub fn begin(&mut self, now: Instant) {
        self.reads_until = now + self.budget / 2;
        self.writes_until = now + self.budget;
        self.read_one = false;
        self.wrote_one = false;
        self.read_cut = false;
        self.write_cut = false;
    }

    /// Whether this pass may read one more connection (counted as read when true).
    pub fn may_read(&mut self) -> bool {
        let may = !self.read_one || Instant::now() < self.reads_until;
        self.read_one |= may;
        self.read_cut |= !may;
        may
    }

    /// Whether this pass may write one more connection (counted as written when true).
    pub fn may_write(&mut self) -> bool {
        let may = !self.wrote_one || Instant::now() < self.writes_until;
        self.wrote_one |= may;
        self.write_cut |= !may;
        may
    }

    /// What this pass has left for the next one so far (each kind once).
    pub fn cuts(&self) -> impl Iterator<Item = PassCut> {
        [
            (self.read_cut, PassCut::Reads),
            (self.write_cut, PassCut::Writes),
        ]
        .into_iter()
        .filter_map(|(cut, what)| cut.then_some(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_budget_still_reads_and_writes_one_connection_a_pass() {
        let mut clock = PassClock::new(Duration::ZERO, Instant::now());
        assert!(clock.may_read() && clock.may_write(), "the first of each");
        assert_eq!(clock.cuts().count(), 0, "nothing refused yet");
        assert!(!clock.may_read() && !clock.may_write(), "then nothing more");
        assert!(!clock.may_read(), "refused twice, counted once");
        let cuts: Vec<PassCut> = clock.cuts().collect();
        assert_eq!(cuts, [PassCut::Reads, PassCut::Writes]);
        clock.begin(Instant::now());
        assert_eq!(clock.cuts().count(), 0, "a new pass starts uncut");
        assert!(
            clock.may_read() && !clock.may_read(),
            "a new pass: one again"
        );
        assert!(clock.may_write() && !clock.may_write());
    }

    #[test]
    fn reading_stops_at_half_the_budget_and_writing_at_all_of_it() {
        let budget = Duration::from_millis(40);
        let mut clock = PassClock::new(budget, Instant::now());
        assert!(clock.may_read() && clock.may_read() && clock.may_write());
        // A pass that began 25 ms ago: past the reading half, within the writing whole.
        clock.begin(Instant::now() - Duration::from_millis(25));
        assert!(clock.may_read(), "the pass's first read");
        assert!(!clock.may_read(), "past half the budget");
        assert!(
            clock.may_write() && clock.may_write(),
            "still within the budget"
        );
        let cuts: Vec<PassCut> = clock.cuts().collect();
        assert_eq!(cuts, [PassCut::Reads], "reads cut, writes not");
        clock.begin(Instant::now() - Duration::from_millis(41));
        assert!(
            clock.may_write() && !clock.may_write(),
            "past the budget: one only"
        );
    }
}
