//! Where a zero-tailed segment ends, and how a reader tells a write that a crash cut
//! short from damage.
//!
//! With `--fsync always` a segment is written ahead with zeros, synced, and then
//! overwritten: an `fdatasync` after an overwrite has no file size or block allocation
//! to commit, and took a third less time than one after an append on this ext4
//! (docs/BENCHMARKS.md, "overwriting synced zeros"). The price is what a crash can
//! leave. An append cut short leaves a prefix; an overwrite cut short can leave any of
//! its sectors — a sector still zero followed by ones that landed.
//!
//! So the writer of a zero-tailed segment keeps to three rules:
//! 1. every write ends with a commit mark ([`Record::Commit`]) whose sequence number is
//!    higher than every mark before it;
//! 2. a write is at most [`WRITE_MAX`] bytes and begins where the last mark (or the
//!    segment's opening snapshot, synced before any write after it) ends;
//! 3. a write is synced before the next one is made.
//!
//! At most one write is ever unfinished, then, and it starts at the end of the last mark.
//! At the first offset that does not hold a whole record ([`judge`]):
//! - zeros from there to the end of the file: the end — quietly when it is right after a
//!   mark; otherwise records whose mark never landed, a write cut short ([`Tail::Torn`],
//!   which recovery drops whole, from the last mark);
//! - anything else must lie inside that one unfinished write: nothing but zeros from
//!   [`WRITE_MAX`] past the last mark, no more than one write's bytes since it, and no
//!   commit mark anywhere after the bad spot numbered beyond the unfinished write's own
//!   (which may have landed: a crash keeps any of the write's sectors) — the write after
//!   an unfinished one is never begun. Then it is a write cut short; otherwise it is
//!   damage, and recovery refuses to guess.
//!
//! What no rule can tell: damage to the last finished write looks like a write cut short
//! (as damage to an appended segment's last record always did) — a window of one write
//! instead of one record.

use super::{read_frame, Frame, Record, RECORD_HEADER_LEN};

/// The most bytes one write of a zero-tailed segment may hold, its mark included.
pub const WRITE_MAX: usize = 8 << 20;

/// Why more than a write's worth of records without a commit mark is damage (an honest
/// writer marks every write of at most [`WRITE_MAX`] bytes).
pub const UNMARKED: &str = "more than one write's records without a commit mark";

/// Bytes of a commit mark's frame: the frame header and a kind byte and a u64.
pub const MARK_LEN: usize = RECORD_HEADER_LEN + 9;

/// Where the whole frames at the start of `bytes` that fit in `max` bytes end (at least
/// one frame, whatever its size): where a writer cuts a buffer of records into writes.
pub fn frames_within(bytes: &[u8], max: usize) -> usize {
    let mut end = 0;
    while let Some(header) = bytes.get(end..end + RECORD_HEADER_LEN) {
        let len = RECORD_HEADER_LEN + usize::from(u16::from_be_bytes([header[0], header[1]]));
        if end > 0 && end + len > max {
            break;
        }
        end += len;
    }
    end.min(bytes.len())
}

/// What the bytes from the first spot that is not a whole record are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Zeros, right after a mark: where the segment's records end.
    End,
    /// A write a crash cut short: never acknowledged, dropped.
    Torn,
    /// Damage: what follows cannot be trusted.
    Damaged(&'static str),
}

/// Judges `bytes[bad..]`, the rest of a zero-tailed segment from its first spot that is
/// not a whole record. `base`: where the last commit mark (or the opening snapshot)
/// ends, at or before `bad`; `last_seq`: that mark's number (0 for none). Offsets are
/// into `bytes`, which runs to the end of the file.
pub fn judge(bytes: &[u8], bad: usize, base: usize, last_seq: u64) -> Tail {
    if bad.saturating_sub(base) >= WRITE_MAX {
        return Tail::Damaged(UNMARKED);
    }
    let after = bytes.get(bad..).unwrap_or_default();
    if after.iter().all(|&b| b == 0) {
        return if bad == base { Tail::End } else { Tail::Torn };
    }
    let reach = base.saturating_add(WRITE_MAX).min(bytes.len());
    if bytes[reach.max(bad)..].iter().any(|&b| b != 0) {
        return Tail::Damaged("data past the one write a crash can leave unfinished");
    }
    if later_mark(&bytes[bad.min(reach)..reach], last_seq.saturating_add(1)) {
        return Tail::Damaged("a later write's commit mark follows the damage");
    }
    Tail::Torn
}

/// A reader's place in a zero-tailed segment by the rules above: where the last commit
/// mark (or the opening snapshot) ends, once read, and that mark's number. Recovery and
/// the order feed each keep one, so both read a segment by the same rules: a record
/// after the base waits for the mark that finishes its write, marks only count up, and
/// what follows the last whole record is [`judge`]d from the base.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// File offset where the last mark or the snapshot ends; `None` before either.
    base: Option<u64>,
    last_seq: u64,
}

/// What a record, read whole, is to a reader of a zero-tailed segment ([`Marks::note`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// Part of the opening snapshot, or its end: stands as read.
    Stands,
    /// A record of a write whose mark has not been read yet: it stands only once the
    /// mark is read, and is dropped with the write when none is.
    Waits,
    /// A commit mark: the records waiting since the last one stand now.
    Finishes,
}

/// A record that breaks the rules above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkError {
    /// A mark numbered at or below the one before it (the writer only counts up).
    OutOfOrder { seq: u64, last: u64 },
    /// More than one write's bytes since the last mark ([`UNMARKED`]).
    Unmarked,
}

impl std::fmt::Display for MarkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MarkError::OutOfOrder { seq, last } => write!(f, "commit mark {seq} after mark {last}"),
            MarkError::Unmarked => f.write_str(UNMARKED),
        }
    }
}

impl Marks {
    /// Where the last mark or the snapshot ends (a file offset): where the one write
    /// that may be unfinished begins.
    pub fn base(&self) -> Option<u64> {
        self.base
    }

    /// Takes note of `record`, read whole from a frame that ends at file offset `end`.
    pub fn note(&mut self, record: &Record, end: u64) -> Result<Noted, MarkError> {
        match (*record, self.base) {
            (Record::SnapshotEnd { .. }, _) => {
                self.base = Some(end);
                Ok(Noted::Stands)
            }
            (Record::Commit { seq }, _) => {
                if seq <= self.last_seq {
                    return Err(MarkError::OutOfOrder {
                        seq,
                        last: self.last_seq,
                    });
                }
                self.last_seq = seq;
                self.base = Some(end);
                Ok(Noted::Finishes)
            }
            (_, None) => Ok(Noted::Stands),
            (_, Some(base)) if end.saturating_sub(base) > WRITE_MAX as u64 => {
                Err(MarkError::Unmarked)
            }
            (_, Some(_)) => Ok(Noted::Waits),
        }
    }

    /// Judges what follows the last whole record, at file offset `bad`; `bytes` holds
    /// the file from offset `from` (at or before the base) to its end. `None` before the
    /// snapshot has ended: there the plain frame rules hold.
    pub fn judge(&self, bytes: &[u8], from: u64, bad: u64) -> Option<Tail> {
        let base = self.base?;
        let at = |offset: u64| {
            usize::try_from(offset.saturating_sub(from))
                .unwrap_or(usize::MAX)
                .min(bytes.len())
        };
        Some(judge(bytes, at(bad), at(base), self.last_seq))
    }
}

/// Whether a whole, checksummed commit mark numbered above `own` (the unfinished write's
/// number) starts anywhere in `bytes` (at any offset: the damage may have shifted
/// nothing, or everything).
fn later_mark(bytes: &[u8], own: u64) -> bool {
    // Each window read as a frame of its own (a mark's size: reading the rest of the
    // file from every offset would look through it all each time).
    bytes
        .windows(MARK_LEN)
        .any(|window| match read_frame(window) {
            Frame::Record { body, len } if len == MARK_LEN => matches!(
                Record::decode(body).map(|mut r| r.next()),
                Ok(Some(Record::Commit { seq })) if seq > own
            ),
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    fn mark(seq: u64) -> BytesMut {
        let mut out = BytesMut::new();
        Record::Commit { seq }.encode(&mut out);
        out
    }

    fn sale(n: u64, out: &mut BytesMut) {
        Record::IdMark { field: 1, seq: n }.encode(out);
    }

    /// A segment body: `writes` writes of three records and a mark each, then `zeros`.
    fn written(writes: u64, zeros: usize) -> (Vec<u8>, Vec<usize>) {
        let mut out = BytesMut::new();
        let mut ends = vec![0];
        for w in 1..=writes {
            for n in 0..3 {
                sale(w * 10 + n, &mut out);
            }
            out.extend_from_slice(&mark(w));
            ends.push(out.len());
        }
        let mut bytes = out.to_vec();
        bytes.resize(bytes.len() + zeros, 0);
        (bytes, ends)
    }

    #[test]
    fn buffers_are_cut_into_writes_between_frames() {
        let (bytes, ends) = written(3, 0);
        assert_eq!(frames_within(&bytes, bytes.len()), bytes.len());
        assert_eq!(frames_within(&bytes, ends[2] + 5), ends[2]);
        assert_eq!(frames_within(&bytes, ends[2]), ends[2]);
        // One frame larger than the most a write may take still goes, alone.
        assert_eq!(frames_within(&bytes, 3), 19);
    }

    #[test]
    fn a_mark_is_the_length_the_rule_scans_for() {
        assert_eq!(mark(7).len(), MARK_LEN);
    }

    #[test]
    fn zeros_after_a_mark_are_the_end_and_after_records_a_torn_write() {
        let (bytes, ends) = written(2, 4096);
        assert_eq!(judge(&bytes, ends[2], ends[2], 2), Tail::End);
        // The second write's mark did not land: its records are there, then zeros.
        let mut cut = bytes.clone();
        cut[ends[2] - MARK_LEN..ends[2]].fill(0);
        assert_eq!(judge(&cut, ends[2] - MARK_LEN, ends[1], 1), Tail::Torn);
    }

    #[test]
    fn a_hole_in_the_unfinished_write_with_its_later_sectors_landed_is_a_torn_write() {
        let (mut bytes, ends) = written(3, 4096);
        // The third write lost its first bytes; the rest of it, its own mark included,
        // landed.
        bytes[ends[2]..ends[2] + 20].fill(0);
        assert_eq!(judge(&bytes, ends[2], ends[2], 2), Tail::Torn);
        // The same bytes read as if the second write were the one cut short: the third
        // write's mark says the second had finished, so this is damage.
        bytes[ends[1] + 2] ^= 0xFF;
        assert!(matches!(
            judge(&bytes, ends[1], ends[1], 1),
            Tail::Damaged(_)
        ));
    }

    #[test]
    fn damage_followed_by_a_later_writes_mark_is_refused() {
        let (mut bytes, ends) = written(3, 4096);
        // The second write is damaged, and the third (begun only after the second was
        // synced, so the second had been acknowledged) follows it.
        bytes[ends[1] + 3] ^= 0xFF;
        assert!(matches!(
            judge(&bytes, ends[1], ends[1], 1),
            Tail::Damaged(why) if why.contains("later write")
        ));
    }

    #[test]
    fn data_beyond_one_writes_reach_is_refused() {
        let (mut bytes, ends) = written(1, 2 * WRITE_MAX);
        bytes[ends[1]] = 9;
        assert_eq!(judge(&bytes, ends[1], ends[1], 1), Tail::Torn);
        bytes[ends[1] + WRITE_MAX + 1] = 9;
        assert!(matches!(
            judge(&bytes, ends[1], ends[1], 1),
            Tail::Damaged(why) if why.contains("past the one write")
        ));
    }

    #[test]
    fn more_than_a_writes_records_without_a_mark_is_refused() {
        // (The offsets are what the rule reads; the bytes there are zeros.)
        let (bytes, ends) = written(1, WRITE_MAX + 64);
        assert!(matches!(
            judge(&bytes, ends[1] + WRITE_MAX, ends[1], 1),
            Tail::Damaged(_)
        ));
    }

    #[test]
    fn a_reader_holds_records_after_the_snapshot_until_their_mark_and_refuses_marks_that_go_back() {
        let mut marks = Marks::default();
        let sale = Record::IdMark { field: 1, seq: 9 };
        assert_eq!(marks.note(&sale, 40), Ok(Noted::Stands), "in the snapshot");
        assert_eq!(
            marks.note(&Record::SnapshotEnd { records: 1 }, 60),
            Ok(Noted::Stands)
        );
        assert_eq!(marks.base(), Some(60));
        assert_eq!(marks.note(&sale, 80), Ok(Noted::Waits));
        assert_eq!(
            marks.note(&Record::Commit { seq: 3 }, 97),
            Ok(Noted::Finishes)
        );
        assert_eq!(marks.base(), Some(97));
        assert_eq!(
            marks.note(&Record::Commit { seq: 3 }, 114),
            Err(MarkError::OutOfOrder { seq: 3, last: 3 })
        );
        assert_eq!(
            marks.note(&sale, 97 + WRITE_MAX as u64 + 1),
            Err(MarkError::Unmarked)
        );
    }

    #[test]
    fn a_reader_judges_from_its_base_in_a_buffer_that_starts_anywhere_before_it() {
        let (bytes, ends) = written(2, 4096);
        let mut marks = Marks::default();
        assert_eq!(
            marks.judge(&bytes, 0, 0),
            None,
            "no snapshot read: plain frames"
        );
        // The buffer starts 1000 bytes into the file, at the first write.
        let from = 1000;
        marks
            .note(&Record::Commit { seq: 1 }, from + ends[1] as u64)
            .unwrap();
        let mut cut = bytes.clone();
        cut[ends[2] - MARK_LEN..ends[2]].fill(0);
        let bad = from + (ends[2] - MARK_LEN) as u64;
        assert_eq!(marks.judge(&cut, from, bad), Some(Tail::Torn));
        marks
            .note(&Record::Commit { seq: 2 }, from + ends[2] as u64)
            .unwrap();
        assert_eq!(
            marks.judge(&bytes, from, from + ends[2] as u64),
            Some(Tail::End)
        );
    }
}
