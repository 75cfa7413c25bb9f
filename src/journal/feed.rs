//! The order feed: every order in a data directory, and new ones as a running server
//! makes them, read from the segment files without disturbing the server.
//!
//! Each poll reads what was appended to every stream's current segment since the last
//! poll. A stream that moved to a new segment (rotation) or a new generation (restart)
//! is read again from that segment's snapshot; orders already seen are not repeated. A
//! record cut short at the end of a file is one still being written: the next poll
//! reads it whole. Only orders whose records are in the file are reported, and a
//! record reaches the file before its answer is sent.
//!
//! A zero-tailed segment (`record::tail`) is overwritten in place, so a poll can read a
//! page of a write still zero and a later page of it already written. What follows the
//! last whole record is judged by the same rule recovery uses; what the rule calls
//! damage is reported only if the next poll still finds it (by then a write in
//! progress has landed).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::record::tail::{self, Tail};
use super::record::{read_frame, FileHeader, Frame, Record, HEADER_LEN};
use super::recovery::{snapshot_state, OrderRec, SnapshotState};
use super::store::{self, SegmentName};
use super::JournalError;

#[derive(Debug)]
struct Cursor {
    path: PathBuf,
    offset: u64,
    zero_tailed: bool,
    /// Zero-tailed segments: where the last commit mark (or the snapshot) ends, once
    /// read, and that mark's number.
    base: Option<u64>,
    last_seq: u64,
    /// Where the tail rule saw damage on the last poll (reported if it is still there).
    suspect: Option<u64>,
}

/// A reader of a data directory's orders.
#[derive(Debug)]
pub struct Feed {
    dir: PathBuf,
    seen: HashSet<u64, ahash::RandomState>,
    /// Live holds: what a CONFIRM makes an order of.
    holds: HashMap<u64, (u32, u64, u16), ahash::RandomState>,
    cursors: HashMap<u16, Cursor>,
    generation: u64,
}

impl Feed {
    pub fn new(dir: &Path) -> Self {
        Feed {
            dir: dir.to_path_buf(),
            seen: HashSet::default(),
            holds: HashMap::default(),
            cursors: HashMap::new(),
            generation: 0,
        }
    }

    /// Orders reported so far.
    pub fn seen(&self) -> usize {
        self.seen.len()
    }

    /// Reads what is new and hands every order not reported before to `emit`.
    pub fn poll(&mut self, emit: &mut impl FnMut(OrderRec)) -> Result<(), JournalError> {
        let Some(manifest) = store::read_manifest(&self.dir)? else {
            return Ok(());
        };
        if manifest.generation != self.generation {
            // A restart wrote a new generation: every stream starts from its snapshot.
            self.generation = manifest.generation;
            self.cursors.clear();
            self.holds.clear();
        }
        let segments = store::list_segments(&self.dir)?;
        for stream in 0..manifest.streams {
            let newest = segments
                .iter()
                .filter(|s| s.generation == manifest.generation && s.stream == stream)
                .max_by_key(|s| s.segment);
            if let Some(newest) = newest {
                self.follow(stream, newest)?;
            }
            self.read_new(stream, emit)?;
        }
        Ok(())
    }

    /// Moves a stream's cursor to `newest` once that segment's snapshot is complete.
    fn follow(&mut self, stream: u16, newest: &SegmentName) -> Result<(), JournalError> {
        if self
            .cursors
            .get(&stream)
            .is_some_and(|c| c.path == newest.path)
        {
            return Ok(());
        }
        let bytes = match std::fs::read(&newest.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(JournalError::io(&newest.path, e)),
        };
        if snapshot_state(&bytes) == SnapshotState::Complete {
            self.cursors.insert(
                stream,
                Cursor {
                    path: newest.path.clone(),
                    offset: HEADER_LEN as u64,
                    zero_tailed: FileHeader::decode(&bytes).is_ok_and(|h| h.zero_tailed),
                    base: None,
                    last_seq: 0,
                    suspect: None,
                },
            );
        }
        Ok(())
    }

    fn read_new(
        &mut self,
        stream: u16,
        emit: &mut impl FnMut(OrderRec),
    ) -> Result<(), JournalError> {
        let Some(cursor) = self.cursors.get(&stream) else {
            return Ok(());
        };
        let (path, start, zero_tailed) = (cursor.path.clone(), cursor.offset, cursor.zero_tailed);
        let (mut base, mut last_seq, suspect) = (cursor.base, cursor.last_seq, cursor.suspect);
        // From the last mark when records after it were read already: the tail rule
        // measures from there.
        let from = base.map_or(start, |b| b.min(start));
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(JournalError::io(&path, e)),
        };
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(from))
            .and_then(|_| file.read_to_end(&mut bytes))
            .map_err(|e| JournalError::io(&path, e))?;
        let mut used = usize::try_from(start - from)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let mut seen_damage = None;
        loop {
            let frame = read_frame(&bytes[used..]);
            let frame = match (frame, base) {
                (Frame::Record { .. } | Frame::End, _) => frame,
                (_, Some(b)) if zero_tailed => {
                    let b = usize::try_from(b - from).unwrap_or(usize::MAX);
                    match tail::judge(&bytes, used, b, last_seq) {
                        Tail::End | Tail::Torn => Frame::End,
                        Tail::Damaged(why) if suspect == Some(from + used as u64) => {
                            Frame::Corrupt { why }
                        }
                        Tail::Damaged(_) => {
                            seen_damage = Some(from + used as u64);
                            Frame::End
                        }
                    }
                }
                _ => frame,
            };
            match frame {
                Frame::Record { body, len } => {
                    let records = Record::decode(body).map_err(|e| JournalError::Corrupt {
                        path: path.clone(),
                        offset: from + used as u64,
                        why: e.to_string(),
                    })?;
                    for record in records {
                        match record {
                            Record::SnapshotEnd { .. } => base = Some(from + (used + len) as u64),
                            Record::Commit { seq } => {
                                last_seq = seq;
                                base = Some(from + (used + len) as u64);
                            }
                            _ => {}
                        }
                        self.apply(record, emit);
                    }
                    used += len;
                }
                Frame::End | Frame::TornTail => break,
                Frame::Corrupt { why } => {
                    return Err(JournalError::Corrupt {
                        path,
                        offset: from + used as u64,
                        why: why.to_owned(),
                    })
                }
            }
        }
        if let Some(cursor) = self.cursors.get_mut(&stream) {
            cursor.offset = from + used as u64;
            cursor.base = base;
            cursor.last_seq = last_seq;
            cursor.suspect = seen_damage;
        }
        Ok(())
    }

    fn apply(&mut self, record: Record, emit: &mut impl FnMut(OrderRec)) {
        let mut report = |seen: &mut HashSet<u64, ahash::RandomState>, order: OrderRec| {
            if seen.insert(order.order_id) {
                emit(order);
            }
        };
        match record {
            Record::Sale(order) => report(&mut self.seen, order),
            Record::HoldTaken {
                hold_id,
                event_id,
                user,
                qty,
                ..
            } => {
                self.holds.insert(hold_id, (event_id, user, qty));
            }
            Record::Confirmed {
                hold_id,
                order_id,
                unix_ms,
            } => {
                if let Some((event_id, user, qty)) = self.holds.remove(&hold_id) {
                    report(
                        &mut self.seen,
                        OrderRec {
                            order_id,
                            event_id,
                            user,
                            qty,
                            unix_ms,
                        },
                    );
                }
            }
            Record::Cancelled { hold_id, .. } | Record::Expired { hold_id, .. } => {
                self.holds.remove(&hold_id);
            }
            // A finished hold's order is a Sale record of its own in the snapshot.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use bytes::BytesMut;

    use super::*;
    use crate::journal::{open, EventDef, OpenOptions};

    /// A data dir with one zero-tailed segment (its snapshot only): the dir, the file
    /// and where its records end.
    fn zero_tailed_dir() -> (tempfile::TempDir, std::fs::File, u64) {
        let dir = tempfile::tempdir().unwrap();
        let options = OpenOptions {
            node: 1,
            shards: 1,
            events: &[EventDef {
                event_id: 1,
                total: 100,
                per_user_limit: 1,
            }],
            raise_totals: false,
            now_unix_ms: 1,
            hold_ttl_ms: 60_000,
            zero_tailed: true,
        };
        let stream = open(dir.path(), &options).unwrap().streams.remove(0);
        (dir, stream.file, stream.len)
    }

    /// A write as the writer makes it: a sale of order `id`, closed by mark `seq`.
    fn a_write(id: u64, seq: u64) -> BytesMut {
        let mut out = BytesMut::new();
        Record::Sale(OrderRec {
            order_id: id,
            event_id: 1,
            user: id,
            qty: 1,
            unix_ms: 1,
        })
        .encode(&mut out);
        Record::Commit { seq }.encode(&mut out);
        out
    }

    fn poll(feed: &mut Feed) -> Result<Vec<u64>, JournalError> {
        let mut ids = Vec::new();
        feed.poll(&mut |order| ids.push(order.order_id))?;
        Ok(ids)
    }

    #[test]
    fn a_write_seen_half_landed_is_waited_for_and_damage_reported_when_it_stays() {
        let (dir, file, len) = zero_tailed_dir();
        file.write_all_at(&vec![0; 4096], len).unwrap();
        let mut feed = Feed::new(dir.path());
        let first = a_write(10, 1);
        file.write_all_at(&first, len).unwrap();
        assert_eq!(poll(&mut feed).unwrap(), vec![10]);

        // The next write read while its first page is still zeros and the rest landed:
        // a write in progress, read again at the next poll.
        let at = len + first.len() as u64;
        let second = a_write(11, 2);
        file.write_all_at(&second[12..], at + 12).unwrap();
        assert_eq!(poll(&mut feed).unwrap(), Vec::<u64>::new());
        file.write_all_at(&second[..12], at).unwrap();
        assert_eq!(poll(&mut feed).unwrap(), vec![11]);

        // Damage in a write with a later write after it: reported, but only when the
        // next poll still finds it (a single read can catch writes half landed).
        let at = at + second.len() as u64;
        let mut third = a_write(12, 3);
        third[9] ^= 0xFF;
        file.write_all_at(&third, at).unwrap();
        file.write_all_at(&a_write(13, 4), at + third.len() as u64)
            .unwrap();
        assert_eq!(poll(&mut feed).unwrap(), Vec::<u64>::new());
        match poll(&mut feed) {
            Err(JournalError::Corrupt { why, .. }) => assert!(why.contains("later write"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
