//! One shard's journal writer: a thread that owns the shard's segment file, so the shard
//! loop never waits on the disk.
//!
//! The shard hands over one buffer of records per loop pass ([`Job`]). The writer takes
//! every job that is waiting, writes them with one `write`, syncs as the fsync mode says,
//! then publishes the highest job number now durable and wakes the shard, which releases
//! the answers that waited for it. While a sync runs, the shard keeps deciding and its
//! next jobs queue up, so a slower disk makes batches bigger, not the server slower.
//!
//! A failed write or sync stops the writer for good: the file is cut back to the last
//! length known to be complete, nothing after it is ever reported durable, and the
//! node-wide fail-stop flag is raised so no shard sells again until a restart.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use crossbeam_utils::CachePadded;
use mio::Waker;

use super::record::FileHeader;
use super::snapshot::SnapshotJob;
use super::store;
use super::FsyncMode;
use crate::stats::JournalCounters;

/// With `--fsync batch`, the longest a write waits for its sync.
pub const BATCH_SYNC_INTERVAL: Duration = Duration::from_millis(5);
/// Most jobs gathered into one write.
const MAX_JOBS_PER_WRITE: usize = 4096;

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
    /// A snapshot of the shard's live state: start a new segment with it and retire the
    /// old one. Its orders are encoded here, off the shard's loop.
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
        setup,
        pending: Vec::new(),
        sync_due: None,
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
}

impl Writer {
    fn run(mut self, inbox: Receiver<Job>) {
        loop {
            let first = match self.sync_due {
                Some(due) => match inbox.recv_deadline(due) {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(e) = self.sync_now() {
                            self.fail(&e, self.setup.len);
                            break;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => None,
                },
                None => inbox.recv().ok(),
            };
            let Some(first) = first else {
                // The shard is done: make everything it wrote durable before going.
                if let Err(e) = self.sync_now() {
                    self.fail(&e, self.setup.len);
                }
                return;
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_JOBS_PER_WRITE {
                match inbox.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let good_len = self.setup.len;
            match self.commit(&jobs) {
                Ok(()) => {
                    let last = jobs.last().map_or(0, |j| j.seq);
                    self.progress.durable.store(last, Ordering::Release);
                    let _ = self.setup.waker.wake();
                }
                Err(e) => {
                    self.fail(&e, good_len);
                    break;
                }
            }
        }
        // Failed: jobs still arriving are never written; the shard answers them
        // UNAVAILABLE. Wait for the shard to hang up.
        for _ in inbox {}
    }

    /// Writes the jobs (one write for each run of plain batches), rotating where asked,
    /// then syncs as the mode says.
    fn commit(&mut self, jobs: &[Job]) -> io::Result<()> {
        self.pending.clear();
        for job in jobs {
            match &job.work {
                Work::Rotate(snapshot) => {
                    self.write_pending()?;
                    self.rotate(snapshot)?;
                }
                Work::Append(bytes) => self.pending.extend_from_slice(bytes),
            }
        }
        self.write_pending()?;
        match self.setup.mode {
            FsyncMode::Always => self.sync_now(),
            FsyncMode::Batch => {
                if self.sync_due.is_none() {
                    self.sync_due = Some(Instant::now() + BATCH_SYNC_INTERVAL);
                }
                Ok(())
            }
            FsyncMode::Off => Ok(()),
        }
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.setup.file.write_all(&self.pending)?;
        self.setup
            .counters
            .wrote(self.pending.len(), started.elapsed());
        self.setup.len += self.pending.len() as u64;
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
        self.setup.counters.synced(started.elapsed());
        Ok(())
    }

    /// Starts the next segment with `snapshot` (made durable first, whatever the mode),
    /// then deletes the old one. A crash in between leaves both; recovery takes the
    /// newest segment whose snapshot is complete.
    fn rotate(&mut self, snapshot: &SnapshotJob) -> io::Result<()> {
        let started = Instant::now();
        // Whatever the old segment holds must be on disk before it is retired.
        if self.setup.mode != FsyncMode::Off {
            self.setup.file.sync_data()?;
        }
        let old_path = store::segment_path(&self.setup.dir, &self.setup.header);
        let header = FileHeader {
            segment: self.setup.header.segment + 1,
            ..self.setup.header
        };
        let path = store::segment_path(&self.setup.dir, &header);
        let mut file = store::create_segment_file(&path)?;
        let mut head = BytesMut::new();
        header.encode(&mut head);
        let mut out = io::BufWriter::with_capacity(1 << 20, &mut file);
        out.write_all(&head)?;
        snapshot.write_to(&mut out)?;
        out.flush()?;
        drop(out);
        file.sync_data()?;
        store::sync_dir(&self.setup.dir)?;
        let len = head.len() as u64 + snapshot.len();
        self.setup.counters.wrote(
            usize::try_from(len).unwrap_or(usize::MAX),
            started.elapsed(),
        );
        self.setup.counters.rotated();
        self.setup.file = file;
        self.setup.header = header;
        self.setup.len = len;
        std::fs::remove_file(&old_path)?;
        Ok(())
    }

    fn fail(&mut self, error: &io::Error, good_len: u64) {
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

/// The writer's bytes for a new segment file's header.
pub fn header_bytes(header: &FileHeader) -> BytesMut {
    let mut out = BytesMut::new();
    header.encode(&mut out);
    out
}
