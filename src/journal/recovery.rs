//! Reading a data directory back: every stream of the generation in MANIFEST, replayed
//! into one state that does not depend on how many shards wrote it.
//!
//! For each stream the newest segment whose snapshot is complete is read (a crash while
//! a new segment was being started leaves an older, complete one). Records after the
//! snapshot are replayed in order. A record cut short at the very end of a file is what
//! a crash mid-write leaves: it is dropped with a warning naming the file and offset.
//! Damage anywhere else, or records that contradict each other, stop recovery: nothing
//! after them can be trusted, and guessing could sell a ticket twice.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::record::tail::{MarkError, Marks, Noted, Tail};
use super::record::{read_frame, FileHeader, Frame, HoldEnd, Record, HEADER_LEN};
use super::store::{self, Manifest, SegmentName};
use super::JournalError;
use crate::ids;
use crate::ledger::ended::EndedRun;

pub use super::record::OrderRec;

/// One hold: live (`end` is `None`) or finished and still remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldRec {
    pub hold_id: u64,
    pub event_id: u32,
    pub user: u64,
    pub qty: u16,
    pub deadline_ms: u64,
    pub end: Option<(HoldEnd, u64)>,
}

/// An event as the journal defined it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventDef {
    pub event_id: u32,
    pub total: i64,
    pub per_user_limit: u16,
}

/// A record cut short at the end of a file, dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
}

/// Everything a data directory holds.
#[derive(Debug, Default)]
pub struct Recovered {
    /// What MANIFEST named (`None`: a directory never used).
    pub manifest: Option<Manifest>,
    /// Events in the order first seen.
    pub events: Vec<EventDef>,
    /// Every order, in the order replayed (per stream, oldest first).
    pub orders: Vec<OrderRec>,
    /// Holds live, or ended after the newest snapshot (with all their details).
    pub holds: HashMap<u64, HoldRec, ahash::RandomState>,
    /// Cancelled and expired holds remembered in compact form by a snapshot.
    pub ended_runs: Vec<EndedRun>,
    /// Confirmed holds remembered by a snapshot: (hold id, order id, ended ms).
    pub ended_confirmed: Vec<(u64, u64, u64)>,
    /// Highest sequence issued per id shard field.
    pub id_marks: BTreeMap<u16, u64>,
    pub torn: Vec<TornTail>,
    /// Records replayed, and the bytes of the segments' data they were read from
    /// (headers included; not the zeros a zero-tailed segment is written ahead with,
    /// nor a torn tail).
    pub records: u64,
    pub bytes: u64,
}

/// Reads the generation MANIFEST names. `node` is checked against the journal's, when
/// given (the server's `--node-id`); tools reading a directory pass `None`.
pub fn recover(dir: &Path, node: Option<u16>) -> Result<Recovered, JournalError> {
    let mut state = Recovered::default();
    let Some(manifest) = store::read_manifest(dir)? else {
        return Ok(state);
    };
    if let Some(node) = node.filter(|&n| n != manifest.node) {
        return Err(JournalError::NodeMismatch {
            dir: dir.to_path_buf(),
            journal: manifest.node,
            given: node,
        });
    }
    state.manifest = Some(manifest);
    let segments = store::list_segments(dir)?;
    for stream in 0..manifest.streams {
        let mut candidates: Vec<&SegmentName> = segments
            .iter()
            .filter(|s| s.generation == manifest.generation && s.stream == stream)
            .collect();
        candidates.sort_by_key(|s| std::cmp::Reverse(s.segment));
        let mut chosen = None;
        for candidate in candidates {
            let bytes =
                std::fs::read(&candidate.path).map_err(|e| JournalError::io(&candidate.path, e))?;
            match snapshot_state(&bytes) {
                SnapshotState::Complete => {
                    chosen = Some((candidate, bytes));
                    break;
                }
                SnapshotState::Corrupt { offset, why } => {
                    return Err(JournalError::Corrupt {
                        path: candidate.path.clone(),
                        offset,
                        why,
                    })
                }
                SnapshotState::Incomplete => {}
            }
            tracing::warn!(file = %candidate.path.display(), "segment without a complete snapshot (a crash while it was being started); using the one before it");
        }
        let Some((segment, bytes)) = chosen else {
            return Err(JournalError::MissingStream {
                dir: dir.to_path_buf(),
                generation: manifest.generation,
                stream,
            });
        };
        replay_segment(&mut state, &segment.path, &bytes, manifest)?;
    }
    Ok(state)
}

/// How far a segment's opening snapshot got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SnapshotState {
    /// Written to its end record.
    Complete,
    /// Cut short (a crash while the segment was being started), or no valid header.
    Incomplete,
    /// Damaged, with data after the damage.
    Corrupt { offset: u64, why: String },
}

/// Reads a segment's opening snapshot as far as it goes.
pub(super) fn snapshot_state(bytes: &[u8]) -> SnapshotState {
    if FileHeader::decode(bytes).is_err() {
        return SnapshotState::Incomplete;
    }
    let mut offset = HEADER_LEN;
    loop {
        match read_frame(&bytes[offset..]) {
            Frame::Record { body, len } => {
                match Record::decode(body) {
                    Ok(mut records) => {
                        if records.any(|r| matches!(r, Record::SnapshotEnd { .. })) {
                            return SnapshotState::Complete;
                        }
                    }
                    Err(e) => {
                        return SnapshotState::Corrupt {
                            offset: offset as u64,
                            why: e.to_string(),
                        }
                    }
                }
                offset += len;
            }
            Frame::End | Frame::TornTail => return SnapshotState::Incomplete,
            Frame::Corrupt { why } => {
                return SnapshotState::Corrupt {
                    offset: offset as u64,
                    why: why.to_owned(),
                }
            }
        }
    }
}

fn replay_segment(
    state: &mut Recovered,
    path: &Path,
    bytes: &[u8],
    manifest: Manifest,
) -> Result<(), JournalError> {
    let header = FileHeader::decode(bytes).map_err(|source| JournalError::Header {
        path: path.to_path_buf(),
        source,
    })?;
    if header.node != manifest.node || header.generation != manifest.generation {
        return Err(JournalError::Inconsistent {
            path: path.to_path_buf(),
            offset: 0,
            why: "the file header names another node or generation than MANIFEST".into(),
        });
    }
    let mut offset = HEADER_LEN;
    // Zero-tailed segments: the reader's place by the rules of record::tail.
    let mut marks = header.zero_tailed.then(Marks::default);
    // Zero-tailed segments: the records read since the last mark, applied when the next
    // mark shows their write finished, dropped when none does (a write cut short is lost
    // whole, as an append cut short is).
    let mut unmarked: Vec<(usize, Record)> = Vec::new();
    let corrupt = |offset: usize, why: String| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        why,
    };
    loop {
        let frame = read_frame(&bytes[offset..]);
        let judged = match frame {
            Frame::Record { .. } | Frame::End => None,
            _ => marks.and_then(|m| m.judge(bytes, 0, offset as u64)),
        };
        let frame = match judged {
            None => frame,
            Some(Tail::End) => Frame::End,
            Some(Tail::Torn) => Frame::TornTail,
            Some(Tail::Damaged(why)) => Frame::Corrupt { why },
        };
        match frame {
            Frame::Record { body, len } => {
                let records = Record::decode(body).map_err(|e| corrupt(offset, e.to_string()))?;
                for record in records {
                    let noted = match marks.as_mut() {
                        None => Noted::Stands,
                        Some(marks) => match marks.note(&record, (offset + len) as u64) {
                            Ok(noted) => noted,
                            Err(e @ MarkError::OutOfOrder { .. }) => {
                                return Err(JournalError::Inconsistent {
                                    path: path.to_path_buf(),
                                    offset: offset as u64,
                                    why: e.to_string(),
                                })
                            }
                            Err(e @ MarkError::Unmarked) => {
                                return Err(corrupt(offset, e.to_string()))
                            }
                        },
                    };
                    match noted {
                        Noted::Waits => unmarked.push((offset, record)),
                        Noted::Finishes => {
                            for (at, earlier) in unmarked.drain(..) {
                                apply_one(state, earlier, path, at, manifest.node)?;
                            }
                            apply_one(state, record, path, offset, manifest.node)?;
                        }
                        Noted::Stands => apply_one(state, record, path, offset, manifest.node)?,
                    }
                }
                offset += len;
            }
            Frame::End if unmarked.is_empty() => {
                state.bytes += offset as u64;
                return Ok(());
            }
            Frame::End | Frame::TornTail => {
                // A zero-tailed segment's write cut short is dropped from its start.
                let from = match marks.and_then(|m| m.base()) {
                    Some(base) if !unmarked.is_empty() => usize::try_from(base).unwrap_or(offset),
                    _ => offset,
                };
                tracing::warn!(
                    file = %path.display(),
                    offset = from,
                    dropped_bytes = bytes.len() - from,
                    "journal ends with a record cut short (a crash mid-write); it was never acknowledged and is dropped"
                );
                state.torn.push(TornTail {
                    path: path.to_path_buf(),
                    offset: from as u64,
                });
                state.bytes += from as u64;
                return Ok(());
            }
            Frame::Corrupt { why } => return Err(corrupt(offset, why.to_owned())),
        }
    }
}

/// Applies one replayed record, naming the file and offset of its frame on a
/// contradiction.
fn apply_one(
    state: &mut Recovered,
    record: Record,
    path: &Path,
    offset: usize,
    node: u16,
) -> Result<(), JournalError> {
    state
        .apply(record, node)
        .map_err(|why| JournalError::Inconsistent {
            path: path.to_path_buf(),
            offset: offset as u64,
            why,
        })?;
    state.records += 1;
    Ok(())
}

impl Recovered {
    fn note_id(&mut self, id: u64, node: u16) {
        if let Some((field, seq)) = ids::split(id, node) {
            let mark = self.id_marks.entry(field).or_insert(0);
            *mark = (*mark).max(seq);
        }
    }

    /// Applies one record; the error says what contradicts what came before.
    pub fn apply(&mut self, record: Record, node: u16) -> Result<(), String> {
        match record {
            Record::SnapshotBegin { .. } | Record::SnapshotEnd { .. } => {}
            Record::Event {
                event_id,
                total,
                per_user_limit,
            } => {
                let def = EventDef {
                    event_id,
                    total,
                    per_user_limit,
                };
                match self.events.iter_mut().find(|e| e.event_id == event_id) {
                    // A later definition (a total raised on purpose) replaces it.
                    Some(known) => *known = def,
                    None => self.events.push(def),
                }
            }
            Record::Sale(order) => {
                self.note_id(order.order_id, node);
                self.orders.push(order);
            }
            Record::HoldTaken {
                hold_id,
                event_id,
                user,
                qty,
                deadline_ms,
            } => {
                self.note_id(hold_id, node);
                self.insert_hold(HoldRec {
                    hold_id,
                    event_id,
                    user,
                    qty,
                    deadline_ms,
                    end: None,
                })?;
            }
            Record::HoldFinished {
                hold_id,
                event_id,
                user,
                qty,
                end,
                ended_ms,
            } => {
                self.note_id(hold_id, node);
                if let HoldEnd::Confirmed { order_id } = end {
                    self.note_id(order_id, node);
                }
                self.insert_hold(HoldRec {
                    hold_id,
                    event_id,
                    user,
                    qty,
                    deadline_ms: ended_ms,
                    end: Some((end, ended_ms)),
                })?;
            }
            Record::Confirmed {
                hold_id,
                order_id,
                unix_ms,
            } => {
                self.note_id(order_id, node);
                let hold = self.end_hold(hold_id, HoldEnd::Confirmed { order_id }, unix_ms)?;
                self.orders.push(OrderRec {
                    order_id,
                    event_id: hold.event_id,
                    user: hold.user,
                    qty: hold.qty,
                    unix_ms,
                });
            }
            Record::Cancelled { hold_id, unix_ms } => {
                self.end_hold(hold_id, HoldEnd::Cancelled, unix_ms)?;
            }
            Record::Expired { hold_id, unix_ms } => {
                self.end_hold(hold_id, HoldEnd::Expired, unix_ms)?;
            }
            Record::IdMark { field, seq } => {
                let mark = self.id_marks.entry(field).or_insert(0);
                *mark = (*mark).max(seq);
            }
            // Where a write ended (read by `replay_segment`'s tail rule): no state.
            Record::Commit { .. } => {}
            Record::HoldsEnded {
                first_id,
                ended_ms,
                states,
            } => self.ended_runs.push(EndedRun {
                first_id,
                ended_ms,
                states,
            }),
            Record::HoldConfirmed {
                hold_id,
                order_id,
                ended_ms,
            } => {
                self.note_id(order_id, node);
                self.ended_confirmed.push((hold_id, order_id, ended_ms));
            }
        }
        Ok(())
    }

    fn insert_hold(&mut self, hold: HoldRec) -> Result<(), String> {
        match self.holds.entry(hold.hold_id) {
            Entry::Occupied(_) => Err(format!("hold {} is taken twice", ids::IdText(hold.hold_id))),
            Entry::Vacant(slot) => {
                slot.insert(hold);
                Ok(())
            }
        }
    }

    fn end_hold(&mut self, hold_id: u64, end: HoldEnd, unix_ms: u64) -> Result<HoldRec, String> {
        let hold = self
            .holds
            .get_mut(&hold_id)
            .ok_or_else(|| format!("hold {} ends but was never taken", ids::IdText(hold_id)))?;
        if hold.end.is_some() {
            return Err(format!("hold {} ends twice", ids::IdText(hold_id)));
        }
        hold.end = Some((end, unix_ms));
        Ok(*hold)
    }

    /// Brings the state to `now_ms`: live holds whose deadline passed while the node
    /// was down expire (at their deadline), and finished holds remembered longer than
    /// `ttl_ms` are forgotten.
    pub fn advance_to(&mut self, now_ms: u64, ttl_ms: u64) {
        self.holds.retain(|_, hold| {
            if hold.end.is_none() && hold.deadline_ms <= now_ms {
                hold.end = Some((HoldEnd::Expired, hold.deadline_ms));
            }
            match hold.end {
                Some((_, ended_ms)) => ended_ms.saturating_add(ttl_ms) > now_ms,
                None => true,
            }
        });
        let remembered = |ended_ms: u64| ended_ms.saturating_add(ttl_ms) > now_ms;
        self.ended_runs.retain(|run| remembered(run.ended_ms));
        self.ended_confirmed
            .retain(|&(_, _, ended_ms)| remembered(ended_ms));
    }

    /// Per event: tickets sold and tickets in live holds.
    pub fn sold_and_held(&self, event_id: u32) -> (i64, i64) {
        let sold = self
            .orders
            .iter()
            .filter(|o| o.event_id == event_id)
            .map(|o| i64::from(o.qty))
            .sum();
        let held = self
            .holds
            .values()
            .filter(|h| h.event_id == event_id && h.end.is_none())
            .map(|h| i64::from(h.qty))
            .sum();
        (sold, held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_make_orders_and_contradictions_are_refused() {
        let mut s = Recovered::default();
        let hold = Record::HoldTaken {
            hold_id: 5,
            event_id: 1,
            user: 9,
            qty: 2,
            deadline_ms: 100,
        };
        s.apply(hold, 0).unwrap();
        assert!(s.apply(hold, 0).is_err(), "taken twice");
        let confirm = Record::Confirmed {
            hold_id: 5,
            order_id: 6,
            unix_ms: 50,
        };
        s.apply(confirm, 0).unwrap();
        assert!(s.apply(confirm, 0).is_err(), "ended twice");
        assert!(s
            .apply(
                Record::Cancelled {
                    hold_id: 77,
                    unix_ms: 1
                },
                0
            )
            .is_err());
        assert_eq!(s.orders.len(), 1);
        assert_eq!(s.orders[0].qty, 2);
        assert_eq!(s.id_marks.get(&0), Some(&6));
    }

    #[test]
    fn holds_past_their_deadline_expire_and_old_ones_are_forgotten() {
        let mut s = Recovered::default();
        for (hold_id, deadline_ms) in [(1, 100), (2, 1_000)] {
            s.apply(
                Record::HoldTaken {
                    hold_id,
                    event_id: 1,
                    user: hold_id,
                    qty: 1,
                    deadline_ms,
                },
                0,
            )
            .unwrap();
        }
        s.advance_to(300, 300);
        assert_eq!(s.holds[&1].end, Some((HoldEnd::Expired, 100)));
        assert_eq!(s.holds[&2].end, None);
        assert_eq!(s.sold_and_held(1), (0, 1));
        s.advance_to(900, 300);
        assert!(
            !s.holds.contains_key(&1),
            "forgotten one TTL after it ended"
        );
    }
}
