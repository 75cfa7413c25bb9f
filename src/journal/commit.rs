//! The shard's one seam to its journal: "append these, tell me when they are durable".
//!
//! A shard's ledger encodes what it decides into a [`RecordBuf`]. At the end of each
//! loop pass the shard [`Commit::submit`]s the buffer as one job. An answer decided
//! while records are pending is [`Commit::hold`]en behind the job that carries them (or
//! behind the last job submitted, if that is not durable yet: a LIMIT_REACHED or
//! SOLD_OUT may depend on it), and [`Commit::release`] hands it back once the writer
//! reports that job durable. So no answer is sent before what it says is on disk, and
//! answers that depend on nothing pending (the rush after a sell-out) go out at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Sender;

use super::record::{Entry, Record, RunEncoder};
use super::snapshot::SnapshotJob;
use super::writer::{Job, Progress, Work, WriterHandle};

/// A segment is not rotated before it holds this much beyond its snapshot.
pub const DEFAULT_ROTATE_MIN_BYTES: u64 = 64 << 20;

/// Records decided in this pass, not yet handed to the writer. Consecutive sales, and
/// consecutive holds taken, share one record ([`RunEncoder`]): a pass of a rush is mostly
/// one or the other.
#[derive(Debug, Default)]
pub struct RecordBuf {
    buf: BytesMut,
    runs: RunEncoder,
    enabled: bool,
}

impl RecordBuf {
    /// A buffer that keeps what is pushed (`enabled`) or drops it (no journal).
    pub fn new(enabled: bool) -> Self {
        RecordBuf {
            buf: BytesMut::new(),
            runs: RunEncoder::default(),
            enabled,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn push(&mut self, record: Record) {
        if !self.enabled {
            return;
        }
        match Entry::of(&record) {
            Some((kind, entry)) => self.runs.push(&mut self.buf, kind, &entry),
            None => {
                // Anything else ends the run, so the journal keeps the order decided.
                self.runs.close(&mut self.buf);
                record.encode(&mut self.buf);
            }
        }
    }

    /// Records are waiting for the next submit.
    pub fn is_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Everything pushed since the last take.
    pub fn take(&mut self) -> Bytes {
        self.runs.close(&mut self.buf);
        self.buf.split().freeze()
    }
}

/// The rule of [`Commit::wants_rotation`]: a segment that began with a snapshot of
/// `snapshot` bytes and took `since` more, of which about `live` are live state now, holds
/// more than `max(rotate_min, 2 × live)` of garbage. What the snapshot wrote counts as
/// live (`live` is at least `snapshot`): it was live state when written, and it holds
/// more than the estimate counts — after a restart, the holds confirmed within one
/// TTL, tens of megabytes in a big rush — which a rotation would only write again.
fn rotation_due(snapshot: u64, since: u64, live: u64, rotate_min: u64) -> bool {
    let live = live.max(snapshot);
    (snapshot + since).saturating_sub(live) > rotate_min.max(live.saturating_mul(2))
}

/// How a held item comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The records it waited for are durable.
    Durable,
    /// The writer failed: they never will be.
    Failed,
}

/// One shard's commit pipeline, holding items of type `T` (answers, returned tickets)
/// until the jobs they wait for are durable.
#[derive(Debug)]
pub struct Commit<T> {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
    submitted: u64,
    held: VecDeque<(u64, T)>,
    /// Bytes in the current segment after its snapshot, and the snapshot's size.
    since_snapshot: u64,
    snapshot_len: u64,
    rotate_min: u64,
}

impl<T> Commit<T> {
    /// `snapshot_len`: size of the segment the writer starts on.
    pub fn new(writer: WriterHandle, snapshot_len: u64, rotate_min: u64) -> Self {
        Commit {
            jobs: Some(writer.jobs),
            thread: Some(writer.thread),
            progress: writer.progress,
            submitted: 0,
            held: VecDeque::new(),
            since_snapshot: 0,
            snapshot_len,
            rotate_min,
        }
    }

    /// The job an answer decided now must wait for, or `None` when nothing it could
    /// depend on is still on its way to disk.
    pub fn barrier(&self, records_pending: bool) -> Option<u64> {
        if records_pending {
            Some(self.submitted + 1)
        } else if self.progress.durable() < self.submitted {
            Some(self.submitted)
        } else {
            None
        }
    }

    pub fn hold(&mut self, job: u64, item: T) {
        self.held.push_back((job, item));
    }

    /// Items are waiting for a job.
    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Hands this pass's records to the writer as the next job.
    pub fn submit(&mut self, records: Bytes) {
        self.since_snapshot += records.len() as u64;
        self.send(Work::Append(records));
    }

    /// The segment holds enough garbage to be worth starting a new one: more than twice
    /// the live state (`live`, about what a snapshot of it would take now) and at least
    /// `rotate_min` bytes of what a snapshot would not write again — records of holds
    /// that ended, and records written bigger than a snapshot writes them. A new
    /// segment then starts at about a third of the old one's size or less, so a segment never
    /// holds more than about three times the live state plus `rotate_min`.
    ///
    /// A segment of orders alone (a BUY rush) never qualifies: its orders are live
    /// state for good, and a snapshot would write every one of them again to save
    /// nothing. (Before, a segment rotated at twice its snapshot whatever it held, so an
    /// endless rush rewrote every order it had sold at each rotation — tens or hundreds of
    /// megabytes of writes from the server's own core.)
    pub fn wants_rotation(&self, live: u64) -> bool {
        rotation_due(
            self.snapshot_len,
            self.since_snapshot,
            live,
            self.rotate_min,
        )
    }

    /// Starts a new segment with `snapshot` (the shard's live state after every job so
    /// far) and retires the old one.
    pub fn rotate(&mut self, snapshot: SnapshotJob) {
        self.since_snapshot = 0;
        self.snapshot_len = snapshot.len();
        self.send(Work::Rotate(Box::new(snapshot)));
    }

    fn send(&mut self, work: Work) {
        self.submitted += 1;
        let job = Job {
            seq: self.submitted,
            work,
        };
        // A writer that is gone has failed, and says so in its progress.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }

    /// The writer failed: nothing more will be durable.
    pub fn failed(&self) -> bool {
        self.progress.failed()
    }

    /// Hands back every item whose job is durable, in order; once the writer has failed,
    /// every item still held comes back [`Outcome::Failed`].
    pub fn release(&mut self, mut each: impl FnMut(T, Outcome)) {
        let durable = self.progress.durable();
        while self.held.front().is_some_and(|(job, _)| *job <= durable) {
            if let Some((_, item)) = self.held.pop_front() {
                each(item, Outcome::Durable);
            }
        }
        if self.progress.failed() {
            for (_, item) in self.held.drain(..) {
                each(item, Outcome::Failed);
            }
        }
    }

    /// Stops the writer after it has written (and synced) every job, then releases
    /// what is left.
    pub fn finish(&mut self, each: impl FnMut(T, Outcome)) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.release(each);
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{read_all, read_frame, Frame, OrderRec};
    use super::*;

    fn sale(order_id: u64) -> Record {
        Record::Sale(OrderRec {
            order_id,
            event_id: 1,
            user: 100 + order_id,
            qty: 1,
            unix_ms: 1_765_000_000_000,
        })
    }

    /// A commit pipeline whose writer the test plays: jobs go nowhere, and the test says
    /// what is durable (or failed) through the progress it keeps.
    fn commit_with_a_played_writer() -> (Commit<&'static str>, Arc<Progress>) {
        let (jobs, inbox) = crossbeam_channel::unbounded();
        let progress = Arc::new(Progress::default());
        let writer = WriterHandle {
            jobs,
            progress: Arc::clone(&progress),
            // Takes the jobs and drops them, until the commit hangs up.
            thread: std::thread::spawn(move || for _ in inbox {}),
        };
        (Commit::new(writer, 0, DEFAULT_ROTATE_MIN_BYTES), progress)
    }

    /// A sale decided in a pass: its answer held on the job that carries its records,
    /// and that job submitted. Returns the job.
    fn hold_a_sale(commit: &mut Commit<&'static str>, answer: &'static str) -> u64 {
        let job = commit
            .barrier(true)
            .expect("a pending record is waited for");
        commit.hold(job, answer);
        commit.submit(Bytes::from_static(b"records"));
        job
    }

    fn released(commit: &mut Commit<&'static str>) -> Vec<(&'static str, Outcome)> {
        let mut out = Vec::new();
        commit.release(|item, outcome| out.push((item, outcome)));
        out
    }

    #[test]
    fn an_answer_comes_back_only_once_its_job_is_durable_and_as_failed_if_it_never_is() {
        let (mut commit, progress) = commit_with_a_played_writer();
        // Nothing on its way to disk: an answer needs no job.
        assert_eq!(commit.barrier(false), None);

        // A sale decided this pass waits for the job that will carry it.
        let job = hold_a_sale(&mut commit, "sold");
        assert!(
            released(&mut commit).is_empty(),
            "released before its job was durable"
        );
        assert!(commit.is_holding());
        progress.publish_durable(job - 1);
        assert!(
            released(&mut commit).is_empty(),
            "released on an earlier job's sync"
        );

        // An answer decided now depends on that job too (a SOLD_OUT may rest on it).
        assert_eq!(commit.barrier(false), Some(job));
        commit.hold(job, "sold out");
        progress.publish_durable(job);
        assert_eq!(
            released(&mut commit),
            [("sold", Outcome::Durable), ("sold out", Outcome::Durable)],
            "in the order held, once durable"
        );
        assert!(!commit.is_holding());
        assert_eq!(commit.barrier(false), None);

        // A writer that fails hands everything still held back as failed, never durable.
        hold_a_sale(&mut commit, "sold, then the disk failed");
        progress.publish_failed();
        assert_eq!(
            released(&mut commit),
            [("sold, then the disk failed", Outcome::Failed)]
        );
        assert!(!commit.is_holding(), "nothing is held after a failure");
    }

    #[test]
    fn a_segment_rotates_for_its_garbage_never_for_its_orders() {
        const MB: u64 = 1 << 20;
        let min = 64 * MB;
        // Orders alone, even written at (almost) three times a snapshot's size: never.
        assert!(!rotation_due(0, 300 * MB, 100 * MB, min));
        assert!(!rotation_due(10 * MB, 29 << 30, 10 << 30, min));
        // Garbage over twice the live state, and over the minimum: due.
        assert!(rotation_due(0, 300 * MB + 1, 100 * MB, min));
        // Churn with little live state: once the garbage passes the minimum.
        assert!(!rotation_due(0, min, 0, min));
        assert!(rotation_due(0, min + 1, 0, min));
        assert!(rotation_due(MB, min + MB + 1, MB, min));
        // A live estimate above the segment (orders packed tighter than the estimate).
        assert!(!rotation_due(0, MB, 2 * MB, min));
    }

    #[test]
    fn a_snapshot_bigger_than_the_estimate_is_not_garbage() {
        const MB: u64 = 1 << 20;
        // After a restart: 111 MB of snapshot (orders and the holds they confirmed within
        // one TTL) against 31 MB of orders estimated. Rotating would write it all again,
        // and again at the next pass: not due until the segment takes twice the snapshot.
        assert!(!rotation_due(111 * MB, 0, 31 * MB, MB));
        assert!(!rotation_due(111 * MB, 222 * MB, 31 * MB, MB));
        assert!(rotation_due(111 * MB, 222 * MB + 1, 31 * MB, MB));
    }

    #[test]
    fn sales_and_holds_taken_share_records_and_the_journal_keeps_the_order_decided() {
        let cancel = Record::Cancelled {
            hold_id: 9,
            unix_ms: 1_765_000_000_001,
        };
        let taken = |hold_id: u64| Record::HoldTaken {
            hold_id,
            event_id: 1,
            user: 200 + hold_id,
            qty: 2,
            deadline_ms: 1_765_000_900_000,
        };
        let pushed = vec![
            sale(1),
            sale(2),
            sale(3),
            cancel,
            sale(4),
            taken(5),
            taken(6),
            sale(7),
        ];
        let mut buf = RecordBuf::new(true);
        for record in &pushed {
            buf.push(*record);
        }
        let first = buf.take();
        buf.push(sale(5));
        let second = buf.take();
        let count_frames = |bytes: &[u8]| {
            let mut rest = bytes;
            let mut n = 0;
            while let Frame::Record { len, .. } = read_frame(rest) {
                rest = &rest[len..];
                n += 1;
            }
            n
        };
        let mut read = read_all(&first).unwrap();
        read.extend(read_all(&second).unwrap());
        let frames = count_frames(&first) + count_frames(&second);
        let mut expected = pushed;
        expected.push(sale(5));
        assert_eq!(read, expected);
        // Three sales, the cancel, a sale, two holds taken, a sale; then a take's own run.
        assert_eq!(frames, 6);
        assert!(!RecordBuf::new(false).is_pending());
    }
}
