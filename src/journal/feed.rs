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
//! page of a write still zero and a later page of it already written. It is read by the
//! same rules as recovery reads it ([`Marks`]): an order is reported once the commit
//! mark that ends its write is in the file (before that a crash can cut the write
//! short and recovery would drop it), and what follows the last whole record is judged
//! from the last mark; what the rule calls damage is reported only if the next poll
//! still finds it (by then a write in progress has landed).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::record::tail::{Marks, Noted, Tail};
use super::record::{read_frame, FileHeader, Frame, Record, HEADER_LEN};
use super::recovery::{snapshot_state, OrderRec, SnapshotState};
use super::store::{self, SegmentName};
use super::JournalError;

#[derive(Debug)]
struct Cursor {
    path: PathBuf,
    offset: u64,
    /// Zero-tailed segments: the reader's place by the rules of `record::tail`, as of
    /// the last commit mark read (the next poll reads again from its end).
    marks: Option<Marks>,
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
                    marks: FileHeader::decode(&bytes)
                        .is_ok_and(|h| h.zero_tailed)
                        .then(Marks::default),
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
        let (path, start, suspect) = (cursor.path.clone(), cursor.offset, cursor.suspect);
        let mut marks = cursor.marks;
        // From the last mark: records after it were read but wait for the next mark,
        // and the tail rule measures from there.
        let from = marks.and_then(|m| m.base()).map_or(start, |b| b.min(start));
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(JournalError::io(&path, e)),
        };
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(from))
            .and_then(|_| file.read_to_end(&mut bytes))
            .map_err(|e| JournalError::io(&path, e))?;
        let corrupt = |offset: u64, why: String| JournalError::Corrupt {
            path: path.clone(),
            offset,
            why,
        };
        let mut used = usize::try_from(start - from)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        // Records of a write whose mark is not in the file yet: a crash can still cut
        // that write short, and recovery would then drop them, so they are reported
        // only with their mark (read again from the last mark at the next poll).
        let mut waiting = Vec::new();
        let mut seen_damage = None;
        loop {
            let at = from + used as u64;
            let frame = read_frame(&bytes[used..]);
            let judged = match frame {
                Frame::Record { .. } | Frame::End => None,
                _ => marks.and_then(|m| m.judge(&bytes, from, at)),
            };
            let frame = match judged {
                None => frame,
                Some(Tail::End | Tail::Torn) => Frame::End,
                Some(Tail::Damaged(why)) if suspect == Some(at) => Frame::Corrupt { why },
                Some(Tail::Damaged(_)) => {
                    seen_damage = Some(at);
                    Frame::End
                }
            };
            match frame {
                Frame::Record { body, len } => {
                    let records = Record::decode(body).map_err(|e| corrupt(at, e.to_string()))?;
                    for record in records {
                        let noted = match marks.as_mut() {
                            None => Noted::Stands,
                            Some(marks) => marks
                                .note(&record, at + len as u64)
                                .map_err(|e| corrupt(at, e.to_string()))?,
                        };
                        match noted {
                            Noted::Waits => waiting.push(record),
                            Noted::Finishes => {
                                for earlier in waiting.drain(..) {
                                    self.apply(earlier, emit);
                                }
                            }
                            Noted::Stands => self.apply(record, emit),
                        }
                    }
                    used += len;
                }
                Frame::End | Frame::TornTail => break,
                Frame::Corrupt { why } => return Err(corrupt(at, why.to_owned())),
            }
        }
        if let Some(cursor) = self.cursors.get_mut(&stream) {
            // Past what was reported; the records still waiting are read again.
            cursor.offset = match marks.and_then(|m| m.base()) {
                Some(base) if !waiting.is_empty() => base,
                _ => from + used as u64,
            };
            cursor.marks = marks;
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

    #[test]
    fn orders_of_a_write_are_reported_only_once_its_commit_mark_is_in_the_file() {
        // A write whose records landed but whose mark did not may still be cut short by
        // a crash, and recovery then drops its orders: the feed must not have printed
        // them (their tickets would be sold again after the restart).
        let (dir, file, len) = zero_tailed_dir();
        file.write_all_at(&vec![0; 4096], len).unwrap();
        let mut feed = Feed::new(dir.path());
        let write = a_write(20, 1);
        let records = write.len() - crate::journal::record::tail::MARK_LEN;
        file.write_all_at(&write[..records], len).unwrap();
        assert_eq!(poll(&mut feed).unwrap(), Vec::<u64>::new());
        assert_eq!(
            poll(&mut feed).unwrap(),
            Vec::<u64>::new(),
            "not damage either"
        );
        file.write_all_at(&write[records..], len + records as u64)
            .unwrap();
        assert_eq!(poll(&mut feed).unwrap(), vec![20]);
        assert_eq!(poll(&mut feed).unwrap(), Vec::<u64>::new(), "once");
    }

    #[test]
    fn a_commit_mark_numbered_below_the_last_is_reported_as_damage() {
        // The writer only counts its marks up; recovery refuses a segment where one goes
        // back, and so does the feed.
        let (dir, file, len) = zero_tailed_dir();
        file.write_all_at(&vec![0; 4096], len).unwrap();
        let mut feed = Feed::new(dir.path());
        let first = a_write(30, 5);
        file.write_all_at(&first, len).unwrap();
        assert_eq!(poll(&mut feed).unwrap(), vec![30]);
        file.write_all_at(&a_write(31, 5), len + first.len() as u64)
            .unwrap();
        match poll(&mut feed) {
            Err(JournalError::Corrupt { why, .. }) => {
                assert!(why.contains("mark 5 after mark 5"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
}
