//! What a shard remembers of holds that ended, so a retried CONFIRM or CANCEL gets the
//! same answer for at least one hold TTL after the hold ended (the protocol's promise),
//! in memory that a RESERVE+CANCEL flood cannot blow up.
//!
//! # How
//! A shard's ids are one dense sequence (orders and holds share it), and a retry needs
//! only how the hold ended: cancelled, expired, or confirmed as order N. So the ends of
//! holds with this shard's own ids are 2 bits each in a bitmap indexed by sequence,
//! spanning the ids from the oldest remembered to the newest ended; the orders of
//! confirmed holds sit beside it in an ordered map (bounded by the tickets sold).
//!
//! The bitmap is forgotten from its front by marks: `(when, end)` says every id below
//! `end` may be forgotten at `when`. Recording an end below an existing mark's `end`
//! merges those marks and moves `when` out, so no hold is forgotten sooner than one TTL
//! after it ended. A hold ends at most one TTL after its id was issued, so the bitmap
//! spans about the ids issued in two TTLs: 3,000,000 RESERVE+CANCEL pairs take 750 KB.
//! Ends of ids outside the bitmap (other shard fields, recovered after the shard count
//! changed; or a hold that outlived its part of the bitmap) are few, and kept in a map.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state_pages::{SharedStates, StatePages};
use super::FastMap;
use crate::ids::{prefix_of, sequence_of};

/// How a remembered hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Confirmed { order_id: u64 },
    Cancelled,
    Expired,
}

/// Largest bitmap (4G ids): an end further from the oldest remembered one than this (a
/// damaged journal's id, or a sequence that jumped) is kept in the map instead of
/// allocating the gap.
const MAX_BITMAP_BYTES: u64 = 1 << 30;
/// Ends recorded within this much of each other share one forget mark.
const MARK_GRAIN: Duration = Duration::from_millis(100);
/// Ids per snapshot run: [`RUN_BYTES`] bytes of 2-bit states.
pub const RUN_BYTES: usize = 32;
const RUN_IDS: u64 = RUN_BYTES as u64 * 4;

mod code {
    pub const NONE: u8 = 0;
    pub const CANCELLED: u8 = 1;
    pub const EXPIRED: u8 = 2;
    pub const CONFIRMED: u8 = 3;

    /// Where id `index` (counted from the bitmap's start) has its two bits: its byte,
    /// and the shift within it (four ids a byte, low bits first).
    pub fn place(index: u64) -> (u64, u64) {
        (index / 4, (index % 4) * 2)
    }

    /// The code of id `index` in `byte`, the byte [`place`] names.
    pub fn in_byte(byte: u8, index: u64) -> u8 {
        (byte >> place(index).1) & 3
    }
}

/// Where `hold_id` would sit in a bitmap of `prefix`'s ids starting at sequence `base`
/// (counted from there), if it can.
fn bitmap_index(prefix: u64, base: u64, hold_id: u64) -> Option<u64> {
    let seq = sequence_of(hold_id);
    (prefix_of(hold_id) == prefix && seq >= base).then(|| seq - base)
}

/// A stretch of the bitmap for a snapshot: the ends of ids `first_id ..
/// first_id + 128`, 2 bits each (low bits first; 0 none, 1 cancelled, 2 expired, 3
/// confirmed), all ended by `ended_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndedRun {
    pub first_id: u64,
    pub ended_ms: u64,
    pub states: [u8; RUN_BYTES],
}

impl EndedRun {
    /// Every id of the run with a cancelled or expired end. (Confirmed holds are
    /// snapshotted with their order, one by one.)
    pub fn ends(&self) -> impl Iterator<Item = (u64, Ended)> + '_ {
        (0..RUN_IDS).filter_map(move |i| {
            let bits = code::in_byte(self.states[code::place(i).0 as usize], i);
            let ended = match bits {
                code::CANCELLED => Ended::Cancelled,
                code::EXPIRED => Ended::Expired,
                _ => return None,
            };
            Some((self.first_id + i, ended))
        })
    }
}

/// The bitmap of cancelled and expired ends at one moment ([`EndedHolds::snapshot_states`]),
/// for the journal writer to encode as [`EndedRun`]s off the loop.
#[derive(Debug, Clone, Default)]
pub struct EndedStates {
    states: SharedStates,
    /// Sequence of the first state.
    base: u64,
    prefix: u64,
    ended_by: EndedBy,
    /// The confirmed holds recovered from the journal ([`EndedHolds`]' `kept`).
    kept: Arc<[(u64, u64)]>,
}

/// The forget marks as Unix times: by when the ids below each mark's end had ended, late
/// enough that a restart forgets them no sooner than this memory would have.
#[derive(Debug, Clone, Default)]
struct EndedBy {
    /// `(end, ended_by_ms)`, both increasing.
    marks: Vec<(u64, u64)>,
}

impl EndedBy {
    fn new(
        marks: &VecDeque<(Instant, u64)>,
        ttl: Duration,
        unix_ms: impl Fn(Instant) -> u64,
    ) -> Self {
        let marks = marks
            .iter()
            .map(|&(when, end)| (end, when.checked_sub(ttl).map_or(0, &unix_ms)))
            .collect();
        EndedBy { marks }
    }

    /// When sequence `seq` had ended by, if anything is remembered.
    fn of(&self, seq: u64) -> Option<u64> {
        // Every recorded id is below the newest mark's end.
        let i = self.marks.partition_point(|&(end, _)| end <= seq);
        self.marks
            .get(i)
            .or(self.marks.last())
            .map(|&(_, ended_by_ms)| ended_by_ms)
    }
}

impl EndedStates {
    /// Confirmed holds recovered from the journal, remembered or not: how far
    /// [`EndedStates::kept_confirmed`] goes.
    pub fn kept_count(&self) -> usize {
        self.kept.len()
    }

    /// Hands `each` `(hold id, order id, ended by ms)` of the recovered confirmed holds
    /// among entries `from .. from + max` that are still remembered (their bits in the
    /// bitmap still say confirmed: forgetting clears them); returns how many entries
    /// were looked at.
    pub fn kept_confirmed(
        &self,
        from: usize,
        max: usize,
        mut each: impl FnMut(u64, u64, u64),
    ) -> usize {
        let end = from.saturating_add(max).min(self.kept.len());
        for &(hold_id, order_id) in self.kept.get(from..end).unwrap_or_default() {
            if !self.says_confirmed(hold_id) {
                continue;
            }
            if let Some(ended_ms) = self.ended_by.of(sequence_of(hold_id)) {
                each(hold_id, order_id, ended_ms);
            }
        }
        end.saturating_sub(from)
    }

    /// Whether the bitmap holds `hold_id` as confirmed.
    fn says_confirmed(&self, hold_id: u64) -> bool {
        let Some(index) = bitmap_index(self.prefix, self.base, hold_id) else {
            return false;
        };
        let mut byte = [0u8; 1];
        let got = usize::try_from(code::place(index).0)
            .map_or(0, |at| self.states.copy_from(at, &mut byte));
        got == 1 && code::in_byte(byte[0], index) == code::CONFIRMED
    }

    /// Runs of [`RUN_IDS`] ids the bitmap spans.
    pub fn run_count(&self) -> usize {
        self.states.len().div_ceil(RUN_BYTES)
    }

    /// Hands `each` the runs with a cancelled or expired end among runs `from ..
    /// from + max` (confirmed ends travel with their orders); returns how many runs
    /// were looked at.
    pub fn runs(&self, from: usize, max: usize, mut each: impl FnMut(EndedRun)) -> usize {
        let mut looked = 0;
        let mut chunk = [0u8; RUN_BYTES];
        while looked < max {
            let index = from + looked;
            let got = self.states.copy_from(index * RUN_BYTES, &mut chunk);
            if got == 0 {
                break;
            }
            let mut states = [0u8; RUN_BYTES];
            states[..got].copy_from_slice(&chunk[..got]);
            for byte in &mut states {
                for shift in [0, 2, 4, 6] {
                    if (*byte >> shift) & 3 == code::CONFIRMED {
                        *byte &= !(3 << shift);
                    }
                }
            }
            let first = self.base + index as u64 * RUN_IDS;
            if states.iter().any(|&b| b != 0) {
                let last = first + got as u64 * 4 - 1;
                if let Some(ended_ms) = self.ended_by.of(last) {
                    each(EndedRun {
                        first_id: self.prefix | first,
                        ended_ms,
                        states,
                    });
                }
            }
            looked += 1;
        }
        looked
    }
}

#[derive(Debug)]
pub struct EndedHolds {
    ttl: Duration,
    /// Node and shard bits of this shard's own ids.
    prefix: u64,
    /// Sequence of the first entry in `states` (a multiple of 4).
    base: u64,
    /// Four 2-bit ends per byte, from `base`.
    states: StatePages,
    /// Confirmed holds of the bitmap whose orders carry them ([`super::Order`]'s
    /// confirmed hold): hold id -> order id. A snapshot leaves them to the journal
    /// writer, which finds them among the orders it encodes anyway.
    confirmed: BTreeMap<u64, u64>,
    /// Confirmed holds of the bitmap recovered from the journal (their orders carry no
    /// hold): (hold id, order id), sorted by hold id, shared with the journal writer,
    /// which writes those still remembered into a snapshot ([`EndedStates`]). Encoded
    /// on the loop, as they once were, a rotation's snapshot of them stopped it for
    /// ~0.1 s per million (a restart after a big RESERVE+CONFIRM rush leaves
    /// millions). Filled only at recovery ([`EndedHolds::restore`]); cut as it is forgotten, and gone one TTL after
    /// the start at the latest.
    kept: Arc<[(u64, u64)]>,
    /// `(when, end)`: ids below `end` may be forgotten at `when`; both increase.
    marks: VecDeque<(Instant, u64)>,
    others: FastMap<u64, Ended>,
    others_forget: VecDeque<(Instant, u64)>,
}

impl EndedHolds {
    /// The memory of the shard whose ids carry `prefix` (see [`crate::ids`]).
    pub fn new(prefix: u64, ttl: Duration) -> Self {
        EndedHolds {
            ttl,
            prefix,
            base: 0,
            states: StatePages::default(),
            confirmed: BTreeMap::new(),
            kept: Arc::from([]),
            marks: VecDeque::new(),
            others: FastMap::default(),
            others_forget: VecDeque::new(),
        }
    }

    /// Starts the bitmap at sequence `seq` (before the first record): recovery records
    /// ends oldest first, not in id order, and this keeps them all in the bitmap.
    pub fn begin_at(&mut self, seq: u64) {
        if self.states.is_empty() {
            self.base = seq & !3;
            self.states.grow_to(1);
        }
    }

    /// Whether an end of `hold_id` recorded now goes in the bitmap (this shard's own
    /// id, not below the bitmap's start nor too far past it) rather than the map of
    /// others.
    fn keeps_in_bitmap(&self, hold_id: u64) -> bool {
        let base = if self.states.is_empty() {
            sequence_of(hold_id) & !3
        } else {
            self.base
        };
        bitmap_index(self.prefix, base, hold_id)
            .is_some_and(|index| code::place(index).0 < MAX_BITMAP_BYTES)
    }

    /// Remembers that `hold_id` ended at `at`, until at least `at` + TTL. Calls come in
    /// order of `at`. Returns whether the end went in the bitmap: for a confirmed hold
    /// that means its order must carry it ([`super::Order::confirmed_hold`]), because
    /// snapshots leave it to the journal writer.
    pub fn record(&mut self, hold_id: u64, ended: Ended, at: Instant) -> bool {
        self.record_as(hold_id, ended, at, None)
    }

    /// As [`EndedHolds::record`] for each end recovered from the journal (oldest first):
    /// a recovered confirmed hold's order does not carry it, so its order id is kept
    /// here, sorted, for lookups and for the journal writer's snapshots.
    pub fn restore(&mut self, ends: impl IntoIterator<Item = (u64, Ended, Instant)>) {
        let mut kept = Vec::new();
        for (hold_id, ended, at) in ends {
            self.record_as(hold_id, ended, at, Some(&mut kept));
        }
        if kept.is_empty() {
            return;
        }
        kept.extend_from_slice(&self.kept);
        kept.sort_unstable_by_key(|&(hold_id, _)| hold_id);
        kept.dedup_by_key(|&mut (hold_id, _)| hold_id);
        self.kept = Arc::from(kept);
    }

    /// The order a recovered confirmed hold became, if it is one.
    fn kept_order(&self, hold_id: u64) -> Option<u64> {
        let i = self
            .kept
            .binary_search_by_key(&hold_id, |&(id, _)| id)
            .ok()?;
        self.kept.get(i).map(|&(_, order_id)| order_id)
    }

    /// Records an end in the bitmap (or apart); a confirmed one's order id goes to
    /// `restored` when given (recovery), else to `confirmed`.
    fn record_as(
        &mut self,
        hold_id: u64,
        ended: Ended,
        at: Instant,
        restored: Option<&mut Vec<(u64, u64)>>,
    ) -> bool {
        let forget_at = at + self.ttl;
        let seq = sequence_of(hold_id);
        let in_bitmap = self.keeps_in_bitmap(hold_id);
        if self.states.is_empty() {
            self.base = seq & !3;
        }
        if !in_bitmap {
            self.others.insert(hold_id, ended);
            self.others_forget.push_back((forget_at, hold_id));
            return false;
        }
        let index = seq - self.base;
        let (byte, shift) = code::place(index);
        // Below MAX_BITMAP_BYTES, so it fits.
        let byte = byte as usize;
        if byte >= self.states.len() {
            self.states.grow_to(byte + 1);
        }
        let bits = match ended {
            Ended::Cancelled => code::CANCELLED,
            Ended::Expired => code::EXPIRED,
            Ended::Confirmed { order_id } => {
                match restored {
                    Some(kept) => kept.push((hold_id, order_id)),
                    None => {
                        self.confirmed.insert(hold_id, order_id);
                    }
                }
                code::CONFIRMED
            }
        };
        let old = self.states.get(byte).unwrap_or(0);
        self.states
            .set(byte, (old & !(3 << shift)) | (bits << shift));
        // Marks that would forget this id before its time are merged into one that
        // forgets it (and everything below it) at forget_at.
        let mut end = seq + 1;
        while let Some(&(_, mark_end)) = self.marks.back() {
            if mark_end <= seq {
                break;
            }
            end = end.max(mark_end);
            self.marks.pop_back();
        }
        match self.marks.back_mut() {
            Some((when, mark_end)) if forget_at.saturating_duration_since(*when) < MARK_GRAIN => {
                *when = (*when).max(forget_at);
                *mark_end = end;
            }
            _ => self.marks.push_back((forget_at, end)),
        }
        true
    }

    /// How `hold_id` ended, if it is remembered.
    pub fn get(&self, hold_id: u64) -> Option<Ended> {
        if let Some(index) = bitmap_index(self.prefix, self.base, hold_id) {
            let bits = usize::try_from(code::place(index).0)
                .ok()
                .and_then(|byte| self.states.get(byte))
                .map_or(code::NONE, |b| code::in_byte(b, index));
            match bits {
                code::CANCELLED => return Some(Ended::Cancelled),
                code::EXPIRED => return Some(Ended::Expired),
                code::CONFIRMED => {
                    return self
                        .confirmed
                        .get(&hold_id)
                        .copied()
                        .or_else(|| self.kept_order(hold_id))
                        .map(|order_id| Ended::Confirmed { order_id })
                }
                _ => {}
            }
        }
        self.others.get(&hold_id).copied()
    }

    /// Forgets what may be forgotten by `now`.
    pub fn forget_due(&mut self, now: Instant) {
        while let Some(&(when, end)) = self.marks.front() {
            if when > now {
                break;
            }
            self.marks.pop_front();
            if end > self.base {
                let whole = usize::try_from((end - self.base) / 4).unwrap_or(usize::MAX);
                let bytes = whole.min(self.states.len());
                self.states.drop_front(bytes);
                self.base += bytes as u64 * 4;
                // Ids below `end` in the byte it falls in.
                let partial = if whole < usize::MAX {
                    (end - self.base) % 4
                } else {
                    0
                };
                if let (Some(front), true) = (self.states.get(0), bytes == whole) {
                    self.states.set(0, front & !((1u8 << (partial * 2)) - 1));
                }
            }
        }
        if self.marks.is_empty() {
            // Every id recorded is below some mark's end: none is remembered now.
            self.states.clear();
            self.confirmed.clear();
            self.kept = Arc::from([]);
        }
        let first_remembered = self.prefix | self.base;
        // `kept` is shared, so it is cut by copying what is left: once more than half of
        // it is forgotten (lookups and snapshots skip forgotten ids meanwhile).
        let forgotten = self
            .kept
            .partition_point(|&(hold_id, _)| hold_id < first_remembered);
        if forgotten > 0 && forgotten * 2 >= self.kept.len() {
            self.kept = self
                .kept
                .get(forgotten..)
                .map_or_else(|| Arc::from([]), Arc::from);
        }
        if self
            .confirmed
            .first_key_value()
            .is_some_and(|(&id, _)| id < first_remembered)
        {
            self.confirmed = self.confirmed.split_off(&first_remembered);
        }
        while let Some(&(when, hold_id)) = self.others_forget.front() {
            if when > now {
                break;
            }
            self.others_forget.pop_front();
            self.others.remove(&hold_id);
        }
    }

    /// When [`EndedHolds::forget_due`] next has work, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mark = self.marks.front().map(|&(at, _)| at);
        let other = self.others_forget.front().map(|&(at, _)| at);
        match (mark, other) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes of the bitmap (for reports and tests of the memory bound).
    pub fn bitmap_bytes(&self) -> usize {
        self.states.len()
    }

    /// The bitmap as it is now, for the journal writer to encode as runs of cancelled
    /// and expired ends ([`EndedStates`]): its pages by reference and the forget marks
    /// as times, so a snapshot costs the loop nothing per id. `unix_ms` converts.
    pub fn snapshot_states(&self, unix_ms: impl Fn(Instant) -> u64) -> EndedStates {
        EndedStates {
            states: self.states.share(),
            base: self.base,
            prefix: self.prefix,
            ended_by: EndedBy::new(&self.marks, self.ttl, unix_ms),
            kept: Arc::clone(&self.kept),
        }
    }

    /// What neither the bitmap nor the orders carry, for a snapshot: the ends kept apart
    /// (confirmed holds recovered from the journal go with the bitmap's pages,
    /// [`EndedStates::kept_confirmed`]; those confirmed in this run travel with their
    /// orders), each with a time it ended by, late enough that a restart forgets it no
    /// sooner than this memory would have. `unix_ms` converts.
    pub fn snapshot(
        &self,
        unix_ms: impl Fn(Instant) -> u64,
        mut run: impl FnMut(EndedRun),
        mut confirmed: impl FnMut(u64, u64, u64),
    ) {
        let ttl = self.ttl;
        // Ends kept apart are written as runs of one.
        let forgets: FastMap<u64, Instant> = self
            .others_forget
            .iter()
            .map(|&(at, id)| (id, at))
            .collect();
        for (&hold_id, &ended) in &self.others {
            let ended_ms = forgets
                .get(&hold_id)
                .and_then(|&at| at.checked_sub(ttl))
                .map_or(0, &unix_ms);
            match ended {
                Ended::Confirmed { order_id } => confirmed(hold_id, order_id, ended_ms),
                Ended::Cancelled | Ended::Expired => {
                    let mut states = [0u8; RUN_BYTES];
                    states[0] = if ended == Ended::Cancelled {
                        code::CANCELLED
                    } else {
                        code::EXPIRED
                    };
                    run(EndedRun {
                        first_id: hold_id,
                        ended_ms,
                        states,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: u64 = 3 << 44;
    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn ends_are_remembered_for_a_ttl_and_then_forgotten() {
        let t0 = Instant::now();
        let mut ended = EndedHolds::new(PREFIX, TTL);
        ended.record(PREFIX | 5, Ended::Cancelled, t0);
        ended.record(PREFIX | 6, Ended::Confirmed { order_id: 99 }, t0);
        ended.record(PREFIX | 9, Ended::Expired, t0);
        assert_eq!(ended.get(PREFIX | 5), Some(Ended::Cancelled));
        assert_eq!(
            ended.get(PREFIX | 6),
            Some(Ended::Confirmed { order_id: 99 })
        );
        assert_eq!(ended.get(PREFIX | 9), Some(Ended::Expired));
        assert_eq!(ended.get(PREFIX | 7), None, "an id that is no ended hold");
        assert_eq!(ended.get(5), None, "another shard's id");
        ended.forget_due(t0 + TTL - Duration::from_millis(1));
        assert_eq!(
            ended.get(PREFIX | 6),
            Some(Ended::Confirmed { order_id: 99 })
        );
        ended.forget_due(t0 + TTL);
        assert_eq!(ended.get(PREFIX | 5), None);
        assert_eq!(ended.get(PREFIX | 6), None);
        assert_eq!(ended.bitmap_bytes(), 0);
    }

    #[test]
    fn a_late_end_of_an_old_hold_keeps_it_a_full_ttl() {
        let t0 = Instant::now();
        let mut ended = EndedHolds::new(PREFIX, TTL);
        ended.record(PREFIX | 100, Ended::Cancelled, t0);
        // Hold 10 (issued earlier) ends 30 s later: it must outlive the first mark.
        let later = t0 + Duration::from_secs(30);
        ended.record(PREFIX | 10, Ended::Cancelled, later);
        ended.forget_due(t0 + TTL);
        assert_eq!(ended.get(PREFIX | 10), Some(Ended::Cancelled));
        ended.forget_due(later + TTL);
        assert_eq!(ended.get(PREFIX | 10), None);
    }

    #[test]
    fn a_flood_of_ends_costs_two_bits_each() {
        let t0 = Instant::now();
        let mut ended = EndedHolds::new(PREFIX, TTL);
        for seq in 1..=3_000_000u64 {
            let at = t0 + Duration::from_micros(seq * 10);
            ended.record(PREFIX | seq, Ended::Cancelled, at);
        }
        assert!(ended.bitmap_bytes() <= 750_001, "{}", ended.bitmap_bytes());
        assert!(ended.marks.len() <= 400, "{}", ended.marks.len());
        assert_eq!(ended.get(PREFIX | 1), Some(Ended::Cancelled));
    }

    #[test]
    fn ends_outside_the_bitmap_are_kept_apart_and_forgotten_too() {
        let t0 = Instant::now();
        let mut ended = EndedHolds::new(PREFIX, TTL);
        ended.record(PREFIX | 50, Ended::Cancelled, t0);
        ended.record(PREFIX | 2, Ended::Expired, t0); // below the bitmap's base
        let other = (1 << 44) | 7;
        ended.record(other, Ended::Confirmed { order_id: 8 }, t0);
        assert_eq!(ended.get(PREFIX | 2), Some(Ended::Expired));
        assert_eq!(ended.get(other), Some(Ended::Confirmed { order_id: 8 }));
        ended.forget_due(t0 + TTL);
        assert_eq!(ended.get(other), None);
        assert_eq!(ended.get(PREFIX | 2), None);
    }

    #[test]
    fn an_end_far_beyond_the_bitmap_is_kept_apart_not_allocated() {
        let t0 = Instant::now();
        let mut ended = EndedHolds::new(PREFIX, TTL);
        ended.record(PREFIX | 8, Ended::Cancelled, t0);
        let far = PREFIX | ((1 << 44) - 1);
        ended.record(far, Ended::Expired, t0);
        assert_eq!(ended.get(far), Some(Ended::Expired));
        assert!(ended.bitmap_bytes() < 16, "{}", ended.bitmap_bytes());
    }

    #[test]
    fn a_snapshot_holds_every_end_but_those_the_orders_carry() {
        let t0 = Instant::now();
        let mut ended = EndedHolds::new(PREFIX, TTL);
        ended.record(PREFIX | 1, Ended::Cancelled, t0);
        ended.record(PREFIX | 300, Ended::Expired, t0);
        ended.restore([
            (PREFIX | 301, Ended::Confirmed { order_id: 5 }, t0),
            (PREFIX | 303, Ended::Confirmed { order_id: 7 }, t0),
        ]);
        // Confirmed in this run: its order carries it into the snapshot.
        ended.record(PREFIX | 302, Ended::Confirmed { order_id: 6 }, t0);
        assert_eq!(
            ended.get(PREFIX | 302),
            Some(Ended::Confirmed { order_id: 6 })
        );
        assert_eq!(
            ended.get(PREFIX | 301),
            Some(Ended::Confirmed { order_id: 5 })
        );
        let (mut ends, mut confirmed) = (Vec::new(), Vec::new());
        ended.snapshot(
            |_| 1_000,
            |run| ends.extend(run.ends()),
            |hold, order, _| confirmed.push((hold, order)),
        );
        assert_eq!(
            confirmed,
            vec![],
            "the loop's part encodes no confirmed hold"
        );
        // The bitmap's cancelled and expired ends come from its shared pages, and the
        // recovered confirmed holds from the shared list (the journal writer's part),
        // a few at a time.
        let states = ended.snapshot_states(|_| 1_000);
        let mut from = 0;
        while from < states.run_count() {
            from += states.runs(from, 1, |run| ends.extend(run.ends()));
        }
        assert_eq!(
            ends,
            vec![
                (PREFIX | 1, Ended::Cancelled),
                (PREFIX | 300, Ended::Expired)
            ]
        );
        let mut from = 0;
        while from < states.kept_count() {
            from += states.kept_confirmed(from, 1, |hold, order, _| confirmed.push((hold, order)));
        }
        assert_eq!(confirmed, vec![(PREFIX | 301, 5), (PREFIX | 303, 7)]);
    }

    #[test]
    fn recovered_confirmed_holds_are_forgotten_with_the_bitmap() {
        let t0 = Instant::now();
        let mut ended = EndedHolds::new(PREFIX, TTL);
        let later = t0 + Duration::from_secs(30);
        ended.restore([
            (PREFIX | 10, Ended::Confirmed { order_id: 1 }, t0),
            (PREFIX | 500, Ended::Confirmed { order_id: 2 }, later),
        ]);
        ended.forget_due(t0 + TTL);
        // Hold 10 is forgotten (below the bitmap's start now); hold 500 is not.
        assert_eq!(ended.get(PREFIX | 10), None);
        assert_eq!(
            ended.get(PREFIX | 500),
            Some(Ended::Confirmed { order_id: 2 })
        );
        let states = ended.snapshot_states(|_| 1_000);
        let mut kept = Vec::new();
        states.kept_confirmed(0, usize::MAX, |hold, order, _| kept.push((hold, order)));
        assert_eq!(
            kept,
            vec![(PREFIX | 500, 2)],
            "a snapshot skips what is forgotten"
        );
        ended.forget_due(later + TTL);
        assert_eq!(ended.get(PREFIX | 500), None);
        assert_eq!(ended.snapshot_states(|_| 1_000).kept_count(), 0);
    }

    #[test]
    fn recovered_confirmed_holds_are_let_go_while_new_ends_keep_coming() {
        // A shard whose holds keep ending always has something to remember; the list
        // recovered at the start must still go as it is forgotten.
        let t0 = Instant::now();
        let mut ended = EndedHolds::new(PREFIX, TTL);
        // Ids 1..=99: forgetting them moves the bitmap's start to 100, past them all.
        ended.restore((1..=99).map(|seq| (PREFIX | seq, Ended::Confirmed { order_id: seq }, t0)));
        let later = t0 + Duration::from_secs(30);
        ended.record(PREFIX | 1_000, Ended::Cancelled, later);
        ended.forget_due(t0 + TTL);
        assert_eq!(ended.get(PREFIX | 1_000), Some(Ended::Cancelled));
        assert_eq!(ended.snapshot_states(|_| 1_000).kept_count(), 0);
    }
}

/// What a snapshot costs the loop with a bitmap of millions of ended holds (printed, not
/// asserted: `cargo test --release --lib loop_share -- --ignored --nocapture`).
#[cfg(test)]
mod loop_share {
    use super::*;

    #[test]
    #[ignore = "a measurement, run by hand"]
    fn the_loops_share_of_a_snapshot_of_many_ended_holds() {
        let t0 = Instant::now();
        let mut ended = EndedHolds::new(7 << 44, Duration::from_secs(900));
        let holds = 40_000_000u64;
        let started = Instant::now();
        let mut longest_record = Duration::ZERO;
        for seq in 1..=holds {
            let at = Instant::now();
            ended.record((7 << 44) | seq, Ended::Cancelled, t0);
            longest_record = longest_record.max(at.elapsed());
        }
        let recording = started.elapsed();
        let started = Instant::now();
        let states = ended.snapshot_states(|_| 1);
        let mut runs = 0;
        ended.snapshot(|_| 1, |_| runs += 1, |_, _, _| {});
        let loop_part = started.elapsed();
        let started = Instant::now();
        let mut from = 0;
        while from < states.run_count() {
            from += states.runs(from, 4096, |_| runs += 1);
        }
        println!(
            "{holds} cancelled holds recorded in {recording:?} (longest record {longest_record:?}); \
             the loop's part of a snapshot {loop_part:?}; the writer's {:?} for {runs} runs",
            started.elapsed()
        );
    }
}
