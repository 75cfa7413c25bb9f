//! A rotation in progress: the stream's next segment, built a piece at a time while the
//! old segment keeps taking (and syncing) every job.
//!
//! A new segment starts with a snapshot of the shard's state after some job N. With
//! millions of orders that snapshot is hundreds of megabytes; if the writer wrote it in
//! one go, every answer of every job after N would wait for it. So the writer builds the
//! new segment under a name recovery and the feed never read (`….tjl.partial`), one
//! piece after each batch of jobs, while the jobs after N still go to the old segment
//! and are made durable there as usual:
//!
//! 1. the header and the snapshot, a piece at a time;
//! 2. then the bytes the old segment took after N, copied over the same way (read back
//!    from the old file: they are the records of the jobs after N, in order);
//! 3. once everything the old segment holds is copied, in the same turn (no job can
//!    come in between): sync the new file, rename it to its real name, sync the
//!    directory. From the rename on, the new segment is the stream's newest complete one
//!    and holds everything; the old one is deleted.
//!
//! A crash before the rename leaves the old segment, which holds everything, and a
//! `.partial` file that the next start deletes. A failure before the rename abandons the
//! rotation and leaves the old segment in use; a failure of the rename's directory sync
//! cannot tell which segment a restart would read, so the writer fails.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::BytesMut;

use super::record::FileHeader;
use super::snapshot::{SnapshotCursor, SnapshotJob};
use super::store;

/// Bytes of the old segment copied per turn.
const COPY_PER_TURN: usize = 1 << 20;

/// What a turn of work left.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
    /// More pieces to write.
    More,
    /// The new segment holds the snapshot and everything the old one took after it:
    /// [`Rotation::take_over`] now, before any other write to the old segment.
    Caught,
}

/// The next segment, being built.
#[derive(Debug)]
pub struct Rotation {
    snapshot: Box<SnapshotJob>,
    cursor: SnapshotCursor,
    header: FileHeader,
    path: PathBuf,
    partial: PathBuf,
    file: File,
    /// Bytes in `file`.
    len: u64,
    /// The old segment, read back for the records it took after the snapshot.
    old: File,
    /// Bytes of the old segment copied so far (from its length when the rotation began).
    copied: u64,
    buf: BytesMut,
    copy_buf: Vec<u8>,
    copy_per_turn: usize,
    begun: Instant,
}

impl Rotation {
    /// Starts segment `old_header.segment + 1` of the same stream with `snapshot`, the
    /// shard's state after the first `old_len` bytes of the old segment.
    pub fn begin(
        dir: &Path,
        old_header: &FileHeader,
        old_len: u64,
        snapshot: Box<SnapshotJob>,
    ) -> io::Result<Rotation> {
        let old = File::open(store::segment_path(dir, old_header))?;
        let header = FileHeader {
            segment: old_header.segment + 1,
            ..*old_header
        };
        let path = store::segment_path(dir, &header);
        let partial = store::partial_path(&path);
        // One left by an abandoned rotation of this same segment.
        match std::fs::remove_file(&partial) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut file = store::create_segment_file(&partial)?;
        let mut head = BytesMut::new();
        header.encode(&mut head);
        file.write_all(&head)?;
        Ok(Rotation {
            snapshot,
            cursor: SnapshotCursor::default(),
            header,
            path,
            partial,
            file,
            len: head.len() as u64,
            old,
            copied: old_len,
            buf: BytesMut::new(),
            copy_buf: Vec::new(),
            copy_per_turn: COPY_PER_TURN,
            begun: Instant::now(),
        })
    }

    /// Writes one piece: of the snapshot, or of what the old segment (now `old_len`
    /// bytes long) took after it. Returns the bytes written with what is left.
    pub fn turn(&mut self, old_len: u64) -> io::Result<(usize, Turn)> {
        let before = self.len;
        if !self.cursor.is_done() {
            let wrote =
                self.snapshot
                    .write_some(&mut self.cursor, &mut self.buf, &mut self.file)?;
            self.len += wrote as u64;
        } else if self.copied < old_len {
            let want = usize::try_from(old_len - self.copied)
                .unwrap_or(self.copy_per_turn)
                .min(self.copy_per_turn);
            self.copy_buf.resize(want, 0);
            self.old.read_exact_at(&mut self.copy_buf, self.copied)?;
            self.file.write_all(&self.copy_buf)?;
            self.copied += want as u64;
            self.len += want as u64;
        }
        start_writeback(&self.file, before, self.len - before);
        let written = usize::try_from(self.len - before).unwrap_or(usize::MAX);
        let caught = self.cursor.is_done() && self.copied >= old_len;
        Ok((written, if caught { Turn::Caught } else { Turn::More }))
    }

    /// Makes the new segment durable and gives it its real name: from here on it is
    /// the one a restart reads. Returns its file, header and length for the writer to
    /// append to; the caller deletes the old segment.
    ///
    /// An error before the rename leaves the old segment in force
    /// ([`TakeOverError::NotTaken`]); after it, nobody can say which one a restart
    /// would read ([`TakeOverError::Unknown`]).
    pub fn take_over(self, dir: &Path) -> Result<(File, FileHeader, u64), TakeOverError> {
        let syncing = Instant::now();
        self.file.sync_data().map_err(TakeOverError::NotTaken)?;
        std::fs::rename(&self.partial, &self.path).map_err(TakeOverError::NotTaken)?;
        store::sync_dir(dir).map_err(TakeOverError::Unknown)?;
        tracing::info!(
            stream = self.header.stream,
            segment = self.header.segment,
            bytes = self.len,
            built_ms = self.begun.elapsed().as_millis() as u64,
            final_sync_ms = syncing.elapsed().as_millis() as u64,
            "new journal segment in use"
        );
        Ok((self.file, self.header, self.len))
    }

    /// Gives up: the old segment stays in use; the half-built one is deleted.
    pub fn abandon(self) {
        if let Err(e) = std::fs::remove_file(&self.partial) {
            tracing::warn!(file = %self.partial.display(), error = %e, "could not delete an abandoned segment (the next start will)");
        }
    }
}

#[derive(Debug)]
pub enum TakeOverError {
    NotTaken(io::Error),
    Unknown(io::Error),
}

/// Starts writing a piece to the disk without waiting for it, so the sync before the
/// take-over finds little left to write: that sync holds up the writer's jobs, and a
/// snapshot of hundreds of megabytes left all dirty took ~90 ms to sync here.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: sync_file_range only reads the descriptor, which `file` keeps open for the
    // call; it touches no memory of ours. Failure only means the final sync does the work.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::ids::IdGenerator;
    use crate::journal::record::Record;
    use crate::journal::recovery::{recover, OrderRec};
    use crate::journal::retired::Retired;
    use crate::journal::snapshot::SnapshotBuilder;
    use crate::journal::{open, EventDef, OpenOptions};
    use crate::ledger::{Order, OrderLog};

    const NODE: u16 = 3;
    const EVENT: EventDef = EventDef {
        event_id: 1,
        total: 1_000_000,
        per_user_limit: 1,
    };

    fn options(now_unix_ms: u64) -> OpenOptions<'static> {
        OpenOptions {
            node: NODE,
            shards: 1,
            events: &[EVENT],
            raise_totals: false,
            now_unix_ms,
            hold_ttl_ms: 60_000,
            // These tests append sales by hand, as a writer of an appended segment does.
            zero_tailed: false,
        }
    }

    /// A data dir just opened: its one stream's segment (file, header, length), and no
    /// sales yet.
    fn opened() -> (tempfile::TempDir, File, FileHeader, u64, Sales) {
        let dir = tempfile::tempdir().unwrap();
        let opened = open(dir.path(), &options(1)).unwrap();
        let stream = opened.streams.into_iter().next().unwrap();
        let sales = Sales {
            ids: IdGenerator::new(NODE, 0),
            log: OrderLog::new(),
            written: BTreeSet::new(),
        };
        (dir, stream.file, stream.header, stream.len, sales)
    }

    /// What a shard's jobs would append: `n` sales of new users.
    struct Sales {
        ids: IdGenerator,
        log: OrderLog,
        written: BTreeSet<u64>,
    }

    impl Sales {
        fn append(&mut self, file: &mut File, len: &mut u64, n: usize) {
            let mut bytes = BytesMut::new();
            for _ in 0..n {
                let user = self.log.len() as u64 + 1;
                let order = Order::new(self.ids.next_id(), user, EVENT.event_id, 1, 5, 0);
                self.log.push(order);
                self.written.insert(order.order_id);
                Record::Sale(OrderRec::from(order)).encode(&mut bytes);
            }
            file.write_all(&bytes).unwrap();
            *len += bytes.len() as u64;
        }
    }

    /// What a restart would find if the machine stopped now: the directory's files as
    /// they are, read by recovery; then a start on that copy, which must not keep a
    /// half-built segment.
    fn crash_here(dir: &Path, written: &BTreeSet<u64>, moment: &str) {
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
        let state = recover(copy.path(), Some(NODE)).unwrap();
        let found: BTreeSet<u64> = state.orders.iter().map(|o| o.order_id).collect();
        assert_eq!(found.len(), state.orders.len(), "{moment}: an order twice");
        assert!(
            found == *written,
            "{moment}: {} orders written, {} recovered",
            written.len(),
            found.len()
        );
        drop(open(copy.path(), &options(10)).unwrap());
        let leftovers = std::fs::read_dir(copy.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.ends_with(".partial") || name.ends_with(".retired")
            })
            .count();
        assert_eq!(
            leftovers, 0,
            "{moment}: a start keeps a half-built or half-deleted segment"
        );
    }

    #[test]
    fn a_crash_at_any_moment_of_a_rotation_recovers_every_record_written() {
        let (dir, mut file, header, mut len, mut sales) = opened();
        // More than one of the order log's chunks, so the snapshot takes many pieces.
        sales.append(&mut file, &mut len, 20_000);
        let mut head = SnapshotBuilder::begin(1);
        head.event(EVENT);
        let mut rest = SnapshotBuilder::continuing();
        rest.id_mark(0, sales.ids.last_seq());
        let snapshot = SnapshotJob::new(head, sales.log.share(), rest);
        let mut rotation = Rotation::begin(dir.path(), &header, len, Box::new(snapshot)).unwrap();
        rotation.copy_per_turn = 4096;
        crash_here(dir.path(), &sales.written, "begun");
        let mut turns = 0;
        loop {
            // Jobs keep coming between the pieces, into the old segment (fewer bytes
            // than a piece copies, as the writer's turns after every commit make sure).
            sales.append(&mut file, &mut len, 40);
            crash_here(dir.path(), &sales.written, &format!("turn {turns}"));
            turns += 1;
            if rotation.turn(len).unwrap().1 == Turn::Caught {
                break;
            }
        }
        assert!(turns > 10, "a rotation of pieces: {turns} turns");
        crash_here(dir.path(), &sales.written, "caught up");
        let old = store::segment_path(dir.path(), &header);
        let (mut new_file, new_header, mut len) = rotation.take_over(dir.path()).unwrap();
        assert_eq!(new_header.segment, header.segment + 1);
        crash_here(
            dir.path(),
            &sales.written,
            "renamed, old segment not deleted",
        );
        // The old segment is retired as the writer does it: renamed aside, then cut a
        // step at a time. Its rename is not synced, so a crash may find it cut short
        // under its own name: recovery must still read the new segment, whole.
        let mut retired = Retired::retire(file, &old).unwrap();
        retired.step = 64 << 10;
        let mut steps = 0;
        loop {
            sales.append(&mut new_file, &mut len, 40);
            let moment = format!("retire step {steps}");
            crash_here(dir.path(), &sales.written, &moment);
            if retired.path().exists() {
                let lost = tempfile::tempdir().unwrap();
                for entry in std::fs::read_dir(dir.path()).unwrap() {
                    let entry = entry.unwrap();
                    let to = if entry.path() == retired.path() {
                        lost.path().join(old.file_name().unwrap())
                    } else {
                        lost.path().join(entry.file_name())
                    };
                    std::fs::copy(entry.path(), to).unwrap();
                }
                crash_here(
                    lost.path(),
                    &sales.written,
                    &format!("{moment}, its rename lost"),
                );
            }
            steps += 1;
            if !retired.shrink_some().unwrap() {
                break;
            }
        }
        assert!(steps > 5, "a deletion of steps: {steps}");
        assert!(!retired.path().exists() && !old.exists());
        sales.append(&mut new_file, &mut len, 500);
        crash_here(dir.path(), &sales.written, "after the switch");
        assert_eq!(len, new_file.metadata().unwrap().len());
    }

    #[test]
    fn an_abandoned_rotation_leaves_the_old_segment_in_force() {
        let (dir, mut file, header, mut len, mut sales) = opened();
        sales.append(&mut file, &mut len, 100);
        let snapshot = SnapshotJob::new(
            SnapshotBuilder::begin(1),
            sales.log.share(),
            SnapshotBuilder::continuing(),
        );
        let mut rotation = Rotation::begin(dir.path(), &header, len, Box::new(snapshot)).unwrap();
        rotation.turn(len).unwrap();
        rotation.abandon();
        sales.append(&mut file, &mut len, 100);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".partial")), "{names:?}");
        crash_here(dir.path(), &sales.written, "abandoned");
    }
}
