//! One shard's journal writer: a thread that owns the shard's segment file, so the shard
//! loop never waits on the disk.
//!
//! The shard hands over one buffer of records per loop pass ([`Job`]). The writer takes
//! every job that is waiting, writes them with one `write` (in a zero-tailed segment,
//! `--fsync always`: over zeros written ahead, closed by a commit mark — see
//! [`super::record::tail`] — and synced before any next write), syncs as the fsync mode says,
//! then publishes the highest job number now durable and wakes the shard, which releases
//! the answers that waited for it. While a sync runs, the shard keeps deciding and its
//! next jobs queue up, so a slower disk makes batches bigger, not the server slower.
//!
//! A rotation (a new segment starting with a snapshot) is built a piece at a time, one
//! piece after each batch of jobs ([`super::rotation`]), so jobs after it are not held
//! up by it; the segment it replaces is deleted the same way, a step after each batch
//! ([`super::retired`]). After each such step the writer rests three times as long,
//! committing jobs meanwhile ([`BACKGROUND_REST`]), so the shard sharing its core is
//! not kept off it.
//!
//! A failed write or sync stops the writer for good: the file is cut back to the last
//! length known to be complete, nothing after it is ever reported durable, and the
//! node-wide fail-stop flag is raised so no shard sells again until a restart.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use crossbeam_utils::CachePadded;
use mio::Waker;

use super::record::tail::{self, MARK_LEN, WRITE_MAX};
use super::record::{FileHeader, Record};
use super::retired::Retired;
use super::rotation::{Rotation, TakeOverError, Turn};
use super::snapshot::SnapshotJob;
use super::store;
use super::zeroed::ZeroedAhead;
use super::FsyncMode;
use crate::stats::JournalCounters;

/// With `--fsync batch`, the longest a write waits for its sync.
pub const BATCH_SYNC_INTERVAL: Duration = Duration::from_millis(5);
/// Most jobs gathered into one write.
const MAX_JOBS_PER_WRITE: usize = 4096;
/// After each step of background work (a piece of a rotation, a step of a deletion) the
/// writer rests this many times as long as the step took, committing jobs meanwhile:
/// background work then takes at most a quarter of the core the writer shares with its
/// shard, and never runs piece after piece while the shard waits for that core. Run back
/// to back, a rotation's pieces (~0.8 ms each) kept a busy shard off its core for whole
/// scheduler slices and stretched its loop passes to 9 ms (docs/BENCHMARKS.md, "a
/// rotation's pieces paced").
const BACKGROUND_REST: u32 = 3;

/// Work for the writer.
#[derive(Debug)]
pub struct Job {
    /// Increasing per shard, from 1.
    pub seq: u64,
    pub work: Work,
}

#[derive(Debug)]
pub enum Work {
    /// Records to append to the segment.
    Append(Bytes),
    /// A snapshot of the shard's live state after every earlier job: start a new
    /// segment with it and retire the old one. Its orders are encoded here, off the
    /// shard's loop, between later jobs. Nothing waits for it: it records nothing new.
    Rotate(Box<SnapshotJob>),
}

/// What the writer has made durable, shared with its shard.
#[derive(Debug, Default)]
pub struct Progress {
    durable: AtomicU64,
    failed: AtomicBool,
}

impl Progress {
    /// Every job up to this number is durable (as the fsync mode defines it).
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// A write or sync failed: no later job will ever become durable.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Tests of the shard's side play the writer: jobs up to `job` are durable.
    #[cfg(test)]
    pub(super) fn publish_durable(&self, job: u64) {
        self.durable.store(job, Ordering::Release);
    }

    /// Tests of the shard's side play the writer: it failed.
    #[cfg(test)]
    pub(super) fn publish_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }
}

/// Where and how a writer writes.
#[derive(Debug)]
pub struct WriterSetup {
    pub dir: PathBuf,
    /// The segment to append to, positioned at its end.
    pub file: File,
    pub header: FileHeader,
    /// Bytes already in `file`.
    pub len: u64,
    pub mode: FsyncMode,
    pub waker: Arc<Waker>,
    /// Raised by any writer of the node that fails.
    pub fail_stop: Arc<AtomicBool>,
    /// Bytes written, write and sync times (only this writer writes them).
    pub counters: Arc<CachePadded<JournalCounters>>,
}

/// The shard's end of its writer.
#[derive(Debug)]
pub struct WriterHandle {
    pub jobs: Sender<Job>,
    pub progress: Arc<Progress>,
    pub thread: JoinHandle<()>,
}

/// Starts the writer thread of `setup.header.stream`.
pub fn spawn(setup: WriterSetup) -> io::Result<WriterHandle> {
    let (jobs, inbox) = crossbeam_channel::unbounded();
    let progress = Arc::new(Progress::default());
    let writer = Writer {
        progress: Arc::clone(&progress),
        ahead: ZeroedAhead::new(setup.len),
        next_mark: 1,
        mark: BytesMut::with_capacity(MARK_LEN),
        unsynced: false,
        rest_until: None,
        setup,
        pending: Vec::new(),
        sync_due: None,
        rotation: None,
        retired: None,
    };
    let thread = std::thread::Builder::new()
        .name(format!("ticketd-journal-{}", writer.setup.header.stream))
        .spawn(move || writer.run(inbox))?;
    Ok(WriterHandle {
        jobs,
        progress,
        thread,
    })
}

struct Writer {
    setup: WriterSetup,
    progress: Arc<Progress>,
    /// Reused buffer for gathering several jobs into one write.
    pending: Vec<u8>,
    /// `--fsync batch`: writes not yet synced must be by then.
    sync_due: Option<Instant>,
    /// The next segment, while it is being built.
    rotation: Option<Rotation>,
    /// The segment the last rotation replaced, while it is being deleted.
    retired: Option<Retired>,
    /// Zero-tailed segments: the zeros written ahead of the data, and the number of the
    /// next write's commit mark (over the writer's life, so it only grows).
    ahead: ZeroedAhead,
    next_mark: u64,
    /// The commit mark being written (reused: a write per commit needs one).
    mark: BytesMut,
    /// Bytes went into the segment since its last sync. With `--fsync always` no job is
    /// published durable while this is set (`take_jobs`): the one place that releases
    /// answers checks the rule itself instead of trusting every write path to keep it.
    unsynced: bool,
    /// Until when background work rests ([`BACKGROUND_REST`]).
    rest_until: Option<Instant>,
}

impl Writer {
    fn run(mut self, inbox: Receiver<Job>) {
        loop {
            let background = self.rotation.is_some() || self.retired.is_some();
            // Wait for a job until a `--fsync batch` sync is due and, with background
            // work pending, until its rest is over — or not at all once it is: jobs
            // first, then one piece of the rotation and one step of the deletion, so a
            // busy shard whose next job is always ready does not starve them, and a
            // piece (~200 KiB, or 1 MiB copied) or a step (~1 ms) delays the next
            // commit only a little.
            let wake_at = match (background, self.rest_until, self.sync_due) {
                (true, Some(rest), due) => Some(due.map_or(rest, |due| rest.min(due))),
                (true, None, _) => None,
                (false, _, due) => due,
            };
            let next = match wake_at {
                Some(at) => inbox.recv_deadline(at),
                None if background => inbox.try_recv().map_err(|e| match e {
                    TryRecvError::Empty => RecvTimeoutError::Timeout,
                    TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                }),
                None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match next {
                Ok(job) => {
                    if !self.take_jobs(job, &inbox) {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.sync_due.is_some_and(|due| Instant::now() >= due) {
                        if let Err(e) = self.sync_now() {
                            self.fail(&e, self.setup.len);
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // The shard is done: what is left in the background is not needed;
                    // everything it wrote is made durable before going.
                    self.drop_background_work();
                    if let Err(e) = self.sync_now() {
                        self.fail(&e, self.setup.len);
                    }
                    return;
                }
            }
            if background && self.rest_until.is_none_or(|rest| Instant::now() >= rest) {
                self.rest_until = None;
                if !self.background_step() {
                    break;
                }
            }
        }
        // Failed: jobs still arriving are never written; the shard answers them
        // UNAVAILABLE. Wait for the shard to hang up.
        for _ in inbox {}
    }

    /// Commits `first` and every job waiting behind it; false once the writer failed.
    fn take_jobs(&mut self, first: Job, inbox: &Receiver<Job>) -> bool {
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_WRITE {
            match inbox.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let good_len = self.setup.len;
        let last = jobs.last().map_or(0, |j| j.seq);
        match self.commit(jobs).and_then(|()| self.synced_if_always()) {
            Ok(()) => {
                self.progress.durable.store(last, Ordering::Release);
                let _ = self.setup.waker.wake();
                true
            }
            Err(e) => {
                self.fail(&e, good_len);
                false
            }
        }
    }

    /// Writes the jobs (one write for each run of plain batches), rotating where asked,
    /// then syncs as the mode says.
    fn commit(&mut self, jobs: Vec<Job>) -> io::Result<()> {
        self.pending.clear();
        for job in jobs {
            match job.work {
                Work::Rotate(snapshot) => {
                    self.write_pending()?;
                    self.begin_rotation(snapshot);
                }
                Work::Append(bytes) => self.pending.extend_from_slice(&bytes),
            }
        }
        self.write_pending()?;
        match self.setup.mode {
            // Each of its writes was synced before the next (`write_pending`).
            FsyncMode::Always if self.setup.header.zero_tailed => Ok(()),
            FsyncMode::Always => self.sync_now(),
            FsyncMode::Batch => match self.sync_due {
                // Under steady load a job is always waiting, so the wait for one never
                // times out: the sync that is due happens here.
                Some(due) if Instant::now() >= due => self.sync_now(),
                Some(_) => Ok(()),
                None => {
                    self.sync_due = Some(Instant::now() + BATCH_SYNC_INTERVAL);
                    Ok(())
                }
            },
            FsyncMode::Off => Ok(()),
        }
    }

    /// With `--fsync always`, makes sure nothing written is left unsynced before the
    /// jobs are published. Every path syncs already (a debug build stops here if one
    /// does not); a release build syncs rather than answer OK before the disk has it.
    fn synced_if_always(&mut self) -> io::Result<()> {
        if self.setup.mode != FsyncMode::Always || !self.unsynced {
            return Ok(());
        }
        debug_assert!(false, "a commit was about to be published before its sync");
        tracing::error!("journal: a commit was not synced before its answers; syncing now");
        self.sync_now()
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if !self.setup.header.zero_tailed {
            let started = Instant::now();
            self.unsynced = true;
            self.setup
                .file
                .write_all_at(&self.pending, self.setup.len)?;
            self.setup
                .counters
                .wrote(self.pending.len(), started.elapsed());
            self.setup.len += self.pending.len() as u64;
            self.pending.clear();
            return Ok(());
        }
        // A zero-tailed segment: writes of at most WRITE_MAX bytes, each closed by a
        // commit mark and synced before the next (the rules of record::tail).
        let mut from = 0;
        while from < self.pending.len() {
            let mut to = from + tail::frames_within(&self.pending[from..], WRITE_MAX - MARK_LEN);
            if to == from {
                to = self.pending.len();
            }
            self.mark.clear();
            Record::Commit {
                seq: self.next_mark,
            }
            .encode(&mut self.mark);
            self.next_mark += 1;
            let started = Instant::now();
            let at = self.setup.len;
            let records = &self.pending[from..to];
            debug_assert!(
                !self.unsynced,
                "a zero-tailed write began before the last was synced"
            );
            self.unsynced = true;
            self.setup.file.write_all_at(records, at)?;
            self.setup
                .file
                .write_all_at(&self.mark, at + records.len() as u64)?;
            let wrote = records.len() + self.mark.len();
            let end = at + wrote as u64;
            let zeros = self.ahead.past(end);
            if !zeros.is_empty() && self.setup.file.write_all_at(zeros, end).is_err() {
                self.ahead.failed(end);
            }
            self.setup.counters.wrote(wrote, started.elapsed());
            self.setup.len += wrote as u64;
            self.sync_now()?;
            from = to;
        }
        self.pending.clear();
        Ok(())
    }

    fn sync_now(&mut self) -> io::Result<()> {
        self.sync_due = None;
        if self.setup.mode == FsyncMode::Off {
            return Ok(());
        }
        let started = Instant::now();
        self.setup.file.sync_data()?;
        self.unsynced = false;
        self.setup.counters.synced(started.elapsed());
        Ok(())
    }

    /// The shard is gone: a rotation still being built is not worth finishing (the old
    /// segment holds everything, and the next start writes a new generation anyway),
    /// and what is left of a replaced segment goes at once.
    fn drop_background_work(&mut self) {
        if let Some(rotation) = self.rotation.take() {
            rotation.abandon();
        }
        if let Some(retired) = self.retired.take() {
            retired.finish();
        }
        self.rest_until = None;
    }

    /// One piece of the rotation and one step of the deletion, then a rest of
    /// [`BACKGROUND_REST`] times as long as they took. False once the writer failed.
    fn background_step(&mut self) -> bool {
        let started = Instant::now();
        if !self.rotation_turn() {
            return false;
        }
        self.retire_step();
        if self.rotation.is_some() || self.retired.is_some() {
            self.rest_until = Some(Instant::now() + started.elapsed() * BACKGROUND_REST);
        }
        true
    }

    /// Hands the replaced segment to [`Retired`], to be deleted a step per batch. A
    /// segment left behind is harmless for recovery (it reads the newest complete
    /// segment): only disk space until the next start.
    fn retire(&mut self, file: File, path: &Path) {
        if let Some(earlier) = self.retired.take() {
            // Rotations are seconds apart and a deletion takes tens of steps, so this
            // is rare: the rest of the earlier one goes at once.
            earlier.finish();
        }
        match Retired::retire(file, path) {
            Ok(retired) => self.retired = Some(retired),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not move a replaced journal segment aside; deleting it at once");
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(file = %path.display(), error = %e, "could not delete a replaced journal segment");
                }
            }
        }
    }

    /// One step of deleting the replaced segment, if there is one.
    fn retire_step(&mut self) {
        let Some(retired) = self.retired.as_mut() else {
            return;
        };
        match retired.shrink_some() {
            Ok(true) => {}
            Ok(false) => self.retired = None,
            Err(e) => {
                tracing::warn!(file = %retired.path().display(), error = %e, "could not shrink a replaced journal segment; deleting it at once");
                if let Some(retired) = self.retired.take() {
                    retired.finish();
                }
            }
        }
    }

    /// Starts building the next segment with `snapshot`, the state after everything
    /// written so far. One still being built is dropped: the new snapshot supersedes it,
    /// and finishing it here would switch files in the middle of a commit, whose failure
    /// must cut back the file it started on.
    fn begin_rotation(&mut self, snapshot: Box<SnapshotJob>) {
        if let Some(superseded) = self.rotation.take() {
            superseded.abandon();
        }
        match Rotation::begin(
            &self.setup.dir,
            &self.setup.header,
            self.setup.len,
            snapshot,
        ) {
            Ok(rotation) => self.rotation = Some(rotation),
            Err(e) => tracing::warn!(
                stream = self.setup.header.stream,
                error = %e,
                "could not start a new journal segment; the current one stays in use"
            ),
        }
    }

    /// One piece of the rotation in progress, and the switch once it has caught up.
    /// False if the writer failed (the switch could not be made durable).
    fn rotation_turn(&mut self) -> bool {
        let Some(rotation) = self.rotation.as_mut() else {
            return true;
        };
        let started = Instant::now();
        let turn = rotation.turn(self.setup.len);
        let caught = match turn {
            Ok((written, turn)) => {
                self.setup.counters.wrote(written, started.elapsed());
                turn == Turn::Caught
            }
            Err(e) => {
                self.give_up_rotation(&e);
                return true;
            }
        };
        if !caught {
            return true;
        }
        let Some(rotation) = self.rotation.take() else {
            return true;
        };
        let old_path = store::segment_path(&self.setup.dir, &self.setup.header);
        match rotation.take_over(&self.setup.dir) {
            Ok((file, header, len)) => {
                self.setup.counters.rotated();
                let old_file = std::mem::replace(&mut self.setup.file, file);
                self.setup.header = header;
                self.setup.len = len;
                self.ahead = ZeroedAhead::new(len);
                self.retire(old_file, &old_path);
                true
            }
            Err(TakeOverError::NotTaken(e)) => {
                tracing::warn!(stream = self.setup.header.stream, error = %e, "could not finish a new journal segment; the current one stays in use");
                true
            }
            Err(TakeOverError::Unknown(e)) => {
                // Which segment a restart reads is unknown, so neither may take more.
                self.fail(&e, self.setup.len);
                false
            }
        }
    }

    fn give_up_rotation(&mut self, error: &io::Error) {
        tracing::warn!(
            stream = self.setup.header.stream,
            error = %error,
            "could not build a new journal segment; the current one stays in use"
        );
        if let Some(rotation) = self.rotation.take() {
            rotation.abandon();
        }
    }

    fn fail(&mut self, error: &io::Error, good_len: u64) {
        if let Some(rotation) = self.rotation.take() {
            rotation.abandon();
        }
        tracing::error!(
            stream = self.setup.header.stream,
            error = %error,
            "journal write failed: this node answers UNAVAILABLE to every sale until it is restarted"
        );
        // Cut off a partly written batch so a restart does not find sales that were
        // answered UNAVAILABLE. (If even this fails, recovery sees a torn tail at worst.)
        if let Err(e) = self
            .setup
            .file
            .set_len(good_len)
            .and_then(|()| self.setup.file.sync_data())
        {
            tracing::error!(error = %e, "could not cut the journal back to its last complete batch");
        }
        self.setup.len = good_len;
        self.progress.failed.store(true, Ordering::Release);
        self.setup.fail_stop.store(true, Ordering::Release);
        let _ = self.setup.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::super::zeroed;
    use super::*;

    #[test]
    fn batch_mode_syncs_within_its_interval_even_when_a_job_is_always_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, progress, _poll) = test_writer(dir.path(), 0, FsyncMode::Batch, false);
        let counters = Arc::clone(&writer.setup.counters);
        // A queue that is never empty until its end (a shard deciding faster than the
        // disk): 40 writes of 4 MiB, together far longer than the 5 ms interval.
        let (jobs, inbox) = crossbeam_channel::unbounded();
        let record = Bytes::from(vec![7u8; 1024]);
        let count = 40 * MAX_JOBS_PER_WRITE as u64;
        for seq in 1..=count {
            let work = Work::Append(record.clone());
            jobs.send(Job { seq, work }).unwrap();
        }
        let thread = std::thread::spawn(move || writer.run(inbox));
        let started = Instant::now();
        while progress.durable() < count {
            // A writer that died or stalled fails the test instead of hanging it.
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the writer made {} of {count} jobs durable in 60 s",
                progress.durable()
            );
            std::hint::spin_loop();
        }
        let busy = started.elapsed();
        let syncs_while_busy = counters.syncs();
        drop(jobs);
        thread.join().unwrap();
        // About one per 5 ms of `busy`; a writer that syncs only when idle makes none.
        assert!(
            busy >= Duration::from_millis(20),
            "too fast to tell: {busy:?}"
        );
        assert!(
            syncs_while_busy >= 3,
            "{syncs_while_busy} syncs in {busy:?} of jobs always waiting"
        );
    }

    #[test]
    fn background_work_waits_out_its_rest_and_jobs_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, progress, _poll) = test_writer(dir.path(), 0, FsyncMode::Always, true);
        // A replaced segment to delete (a step at a time), and a rest after the last
        // background step that lasts far longer than the test.
        let old = dir.path().join("old.tjl");
        let old_file = std::fs::File::create(&old).unwrap();
        old_file.set_len(3 * super::super::retired::STEP).unwrap();
        writer.retire(old_file, &old);
        let retired_path = writer.retired.as_ref().unwrap().path().to_path_buf();
        writer.rest_until = Some(Instant::now() + Duration::from_secs(3600));
        let (jobs, inbox) = crossbeam_channel::unbounded();
        let thread = std::thread::spawn(move || writer.run(inbox));
        for seq in 1..=3 {
            jobs.send(Job {
                seq,
                work: Work::Append(job_of(seq, 1)),
            })
            .unwrap();
            let started = Instant::now();
            while progress.durable() < seq {
                // A rest that held jobs back would keep them for the hour.
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "job {seq} not durable after 60 s of the writer's rest"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // The deletion has not taken a step: it waits for the rest to end.
        let len = std::fs::metadata(&retired_path).map(|m| m.len()).ok();
        assert_eq!(
            len,
            Some(3 * super::super::retired::STEP),
            "a background step ran during the rest"
        );
        drop(jobs);
        thread.join().unwrap();
    }

    /// A writer of a new segment file holding `len` bytes of data so far.
    fn test_writer(
        dir: &Path,
        len: u64,
        mode: FsyncMode,
        zero_tailed: bool,
    ) -> (Writer, Arc<Progress>, mio::Poll) {
        let header = FileHeader {
            node: 1,
            stream: 0,
            generation: 1,
            segment: 0,
            zero_tailed,
        };
        let file = store::create_segment_file(&store::segment_path(dir, &header)).unwrap();
        file.set_len(len).unwrap();
        let poll = mio::Poll::new().unwrap();
        let progress = Arc::new(Progress::default());
        let writer = Writer {
            setup: WriterSetup {
                dir: dir.to_path_buf(),
                file,
                header,
                len,
                mode,
                waker: Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap()),
                fail_stop: Arc::new(AtomicBool::new(false)),
                counters: Arc::new(CachePadded::new(JournalCounters::default())),
            },
            ahead: ZeroedAhead::new(len),
            next_mark: 1,
            mark: BytesMut::with_capacity(MARK_LEN),
            unsynced: false,
            rest_until: None,
            progress: Arc::clone(&progress),
            pending: Vec::new(),
            sync_due: None,
            rotation: None,
            retired: None,
        };
        (writer, progress, poll)
    }

    /// Records `first..first + n` as one job's bytes.
    fn job_of(first: u64, n: u64) -> Bytes {
        let mut out = BytesMut::new();
        for seq in first..first + n {
            Record::IdMark { field: 2, seq }.encode(&mut out);
        }
        out.freeze()
    }

    /// The records and commit marks from `offset` on, and where the whole frames end.
    fn frames_from(bytes: &[u8], offset: usize) -> (Vec<Record>, usize) {
        let mut at = offset;
        let mut records = Vec::new();
        while let super::super::record::Frame::Record { body, len } =
            super::super::record::read_frame(&bytes[at..])
        {
            records.extend(Record::decode(body).unwrap());
            at += len;
        }
        (records, at)
    }

    #[test]
    fn with_fsync_always_a_commit_is_published_only_after_its_sync() {
        for zero_tailed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (mut writer, progress, _poll) =
                test_writer(dir.path(), 0, FsyncMode::Always, zero_tailed);
            for seq in 1..=3 {
                let (_tx, rx) = crossbeam_channel::unbounded();
                let job = Job {
                    seq,
                    work: Work::Append(job_of(seq * 10, 3)),
                };
                assert!(writer.take_jobs(job, &rx));
                // Published, and synced: one sync per commit (one write each), none
                // left owing. (A path that skipped its sync would stop a debug build in
                // `synced_if_always` before publishing.)
                assert_eq!(progress.durable(), seq, "zero_tailed {zero_tailed}");
                assert_eq!(
                    writer.setup.counters.syncs(),
                    seq,
                    "zero_tailed {zero_tailed}"
                );
                assert!(!writer.unsynced);
            }
        }
    }

    #[test]
    fn a_zero_tailed_segment_is_overwritten_in_marked_synced_writes_with_zeros_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let start = 100;
        let (mut writer, progress, _poll) = test_writer(dir.path(), start, FsyncMode::Always, true);
        // Three commits: one job, two jobs, and one job too big for a single write.
        let big = (WRITE_MAX / 19) as u64 + 1000;
        let commits = [vec![(1, 10)], vec![(11, 5), (16, 5)], vec![(21, big)]];
        let mut seq = 0;
        for commit in &commits {
            let first = seq + 1;
            seq += commit.len() as u64;
            let mut jobs = commit.iter().enumerate().map(|(i, &(from, n))| Job {
                seq: first + i as u64,
                work: Work::Append(job_of(from, n)),
            });
            let head = jobs.next().unwrap();
            let (tx, rx) = crossbeam_channel::unbounded();
            jobs.for_each(|job| tx.send(job).unwrap());
            assert!(writer.take_jobs(head, &rx));
            assert_eq!(progress.durable(), seq);
        }
        let len = writer.setup.len as usize;
        let bytes = std::fs::read(store::segment_path(dir.path(), &writer.setup.header)).unwrap();
        // Zeros, synced with the write that made them, lie ahead of the data.
        assert!(
            bytes.len() > len && bytes.len() <= len + zeroed::STEP,
            "{} of {len}",
            bytes.len()
        );
        assert!(bytes[len..].iter().all(|&b| b == 0));
        assert_eq!(writer.ahead.end() as usize, bytes.len());
        // The data: every record in order, each write closed by the next mark, the big
        // commit cut into two writes.
        let (records, end) = frames_from(&bytes, start as usize);
        assert_eq!(end, len);
        let marks: Vec<u64> = records
            .iter()
            .filter_map(|r| match r {
                Record::Commit { seq } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(marks, vec![1, 2, 3, 4]);
        assert!(matches!(records.last(), Some(Record::Commit { seq: 4 })));
        let ids: Vec<u64> = records
            .iter()
            .filter_map(|r| match r {
                Record::IdMark { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(ids, (1..21 + big).collect::<Vec<_>>());
        // Four writes, four syncs: each before the next write.
        assert_eq!(writer.setup.counters.syncs(), 4);
        assert_eq!(
            tail::judge(&bytes, len, len, 4),
            tail::Tail::End,
            "the reader's rule sees the end right after the last mark"
        );
    }
}
