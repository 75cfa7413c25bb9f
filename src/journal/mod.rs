//! The embedded ledger's journal: what makes an acknowledged sale survive a crash.
//!
//! ```text
//!  shard loop ── records of one pass ──► Commit ── Job ──► writer thread ── write, fdatasync
//!      ▲                                   │                    │
//!      └── answers released once durable ◄─┴──── Progress ◄─────┘ (+ the shard's Waker)
//! ```
//!
//! - [`record`]: the bytes (length-prefixed, CRC32C-checked records; a versioned header).
//! - [`writer`]: one thread per shard: group commit, `--fsync always|batch|off`,
//!   rotation to a new segment, fail-stop on a disk error.
//! - [`commit`]: the shard's one seam: hand over a pass's records, hold answers (and
//!   returned tickets) until the records they depend on are durable.
//! - [`recovery`] and [`snapshot`]: reading a data directory back into a state that
//!   does not depend on the shard count, and writing live state as a snapshot.
//! - [`store`]: the directory itself: lock, MANIFEST, segment names.
//! - [`feed`]: the order feed, read from the files while a server appends to them.
//!
//! The protocol is in `docs/DURABILITY.md`.

pub mod commit;
pub mod feed;
pub mod record;
pub mod recovery;
mod retired;
mod rotation;
pub mod snapshot;
pub mod store;
pub mod writer;
mod zeroed;

use std::fs::File;
use std::path::{Path, PathBuf};

use bytes::BytesMut;

pub use commit::Commit;
use record::FileHeader;
pub use recovery::{EventDef, Recovered};
use store::{DataDir, Manifest};

/// When a write counts as durable (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FsyncMode {
    /// fdatasync every batch before its answers go out: survives power loss.
    #[default]
    Always,
    /// Answers go out after the write; fdatasync at most every few ms: a process crash
    /// loses nothing, a power loss may lose the last few ms.
    Batch,
    /// Never fdatasync: a process crash loses nothing, a power loss may lose whatever
    /// the kernel had not written back yet.
    Off,
}

/// Why a data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {dir} is in use by another ticketd process (its LOCK is held); stop it or give this one its own --data-dir")]
    Locked { dir: PathBuf },
    #[error("{path}: damaged MANIFEST; restore the data dir from a backup")]
    Manifest { path: PathBuf },
    #[error("{path}: {source}; restore the data dir from a backup")]
    Header {
        path: PathBuf,
        source: record::HeaderError,
    },
    #[error("{path} is damaged at byte {offset} ({why}) with journal data after it, so nothing past it can be trusted and ticketd will not start; restore the data dir from a backup (moving the file away would lose the sales in it)")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        why: String,
    },
    #[error("{path}, byte {offset}: {why}; the journal contradicts itself and ticketd will not guess; restore the data dir from a backup")]
    Inconsistent {
        path: PathBuf,
        offset: u64,
        why: String,
    },
    #[error("data dir {dir} has no complete segment for stream {stream} of generation {generation}; restore the data dir from a backup")]
    MissingStream {
        dir: PathBuf,
        generation: u64,
        stream: u16,
    },
    #[error("data dir {dir} belongs to node {journal}, not --node-id {given}; start with --node-id {journal} or use another --data-dir")]
    NodeMismatch {
        dir: PathBuf,
        journal: u16,
        given: u16,
    },
    #[error("event {event}: --event gives {field} {given}, but the journal in {dir} has {journal}. {hint}")]
    EventChanged {
        dir: PathBuf,
        event: u32,
        field: &'static str,
        journal: i64,
        given: i64,
        hint: &'static str,
    },
}

impl JournalError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        JournalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One stream of the new generation, ready for its writer.
#[derive(Debug)]
pub struct StreamStart {
    pub file: File,
    pub header: FileHeader,
    pub len: u64,
}

/// A data directory recovered and switched to this run's generation.
#[derive(Debug)]
pub struct Opened {
    pub dir: DataDir,
    /// The recovered state, brought to now (holds due while down have expired).
    pub state: Recovered,
    /// The events on sale: the journal's, with new `--event`s after them.
    pub events: Vec<EventDef>,
    /// One per shard.
    pub streams: Vec<StreamStart>,
}

/// What [`open`] needs beyond the directory.
#[derive(Debug, Clone)]
pub struct OpenOptions<'a> {
    pub node: u16,
    pub shards: usize,
    pub events: &'a [EventDef],
    /// `--raise-totals`: an `--event` may give a larger total than the journal's.
    pub raise_totals: bool,
    pub now_unix_ms: u64,
    pub hold_ttl_ms: u64,
    /// Write the new segments zero-tailed (`--fsync always`: `record::tail`).
    pub zero_tailed: bool,
}

/// Locks `path`, recovers it, checks the `--event`s against it, and writes the next
/// generation: one segment per shard starting with a snapshot of that shard's share.
/// When this returns, MANIFEST names the new generation and the old one is gone.
pub fn open(path: &Path, options: &OpenOptions<'_>) -> Result<Opened, JournalError> {
    let dir = DataDir::open(path)?;
    let mut state = recovery::recover(path, Some(options.node))?;
    state.advance_to(options.now_unix_ms, options.hold_ttl_ms);
    let events = reconcile_events(path, &state.events, options)?;

    let generation = state.manifest.map_or(1, |m| m.generation + 1);
    store::remove_leftovers(path)?;
    // Leftovers of a start that crashed before switching MANIFEST hold nothing anyone
    // was told; clear them so the new generation's names are free.
    for old in store::list_segments(path)? {
        if old.generation >= generation {
            std::fs::remove_file(&old.path).map_err(|e| JournalError::io(&old.path, e))?;
        }
    }
    let mut streams = Vec::with_capacity(options.shards);
    for stream in 0..options.shards {
        let header = FileHeader {
            node: options.node,
            // The shard count is validated to fit the id layout (at most 256).
            stream: stream as u16,
            generation,
            segment: 0,
            zero_tailed: options.zero_tailed,
        };
        let path = store::segment_path(dir.path(), &header);
        let mut bytes = BytesMut::new();
        header.encode(&mut bytes);
        bytes.extend_from_slice(&snapshot::for_stream(
            &state,
            &events,
            stream,
            options.shards,
            options.now_unix_ms,
        ));
        let write = || -> std::io::Result<File> {
            let mut file = store::create_segment_file(&path)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_data()?;
            Ok(file)
        };
        let file = write().map_err(|e| JournalError::io(&path, e))?;
        streams.push(StreamStart {
            file,
            header,
            len: bytes.len() as u64,
        });
    }
    store::sync_dir(dir.path()).map_err(|e| JournalError::io(dir.path(), e))?;
    store::write_manifest(
        dir.path(),
        &Manifest {
            generation,
            streams: options.shards as u16,
            node: options.node,
        },
    )?;
    for old in store::list_segments(path)? {
        if old.generation < generation {
            std::fs::remove_file(&old.path).map_err(|e| JournalError::io(&old.path, e))?;
        }
    }
    store::sync_dir(dir.path()).map_err(|e| JournalError::io(dir.path(), e))?;
    Ok(Opened {
        dir,
        state,
        events,
        streams,
    })
}

/// The journal's events, each checked against its `--event` if given, then the new
/// ones. A different limit, or a different total without `--raise-totals` (or a lower
/// one with it), is refused.
fn reconcile_events(
    dir: &Path,
    journal: &[EventDef],
    options: &OpenOptions<'_>,
) -> Result<Vec<EventDef>, JournalError> {
    let mut events = journal.to_vec();
    for given in options.events {
        let Some(known) = events.iter_mut().find(|e| e.event_id == given.event_id) else {
            events.push(*given);
            continue;
        };
        let changed = |field, journal: i64, given: i64, hint| JournalError::EventChanged {
            dir: dir.to_path_buf(),
            event: known.event_id,
            field,
            journal,
            given,
            hint,
        };
        if given.per_user_limit != known.per_user_limit {
            return Err(changed(
                "per-user limit",
                i64::from(known.per_user_limit),
                i64::from(given.per_user_limit),
                "A limit cannot change once sales were made under it; give the journal's value, or sell under a new event id.",
            ));
        }
        if given.total < known.total {
            return Err(changed(
                "total",
                known.total,
                given.total,
                "A total cannot be lowered below what the journal put on sale; give the journal's value.",
            ));
        }
        if given.total > known.total {
            if !options.raise_totals {
                return Err(changed(
                    "total",
                    known.total,
                    given.total,
                    "To put more tickets on sale on purpose, add --raise-totals; otherwise give the journal's value.",
                ));
            }
            tracing::warn!(
                event = known.event_id,
                from = known.total,
                to = given.total,
                "--raise-totals: event total raised"
            );
            known.total = given.total;
        }
    }
    Ok(events)
}
