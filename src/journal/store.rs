//! The data directory: its lock, its MANIFEST, and the names of its segment files.
//!
//! # Layout
//! ```text
//! DIR/LOCK                          held (flock) by the one ticketd using DIR
//! DIR/MANIFEST                      "ticketd-manifest v1 generation=G streams=M node=N crc32c=…"
//! DIR/g0000000003-s001-0000000007.tjl   generation 3, stream (shard) 1, segment 7
//! DIR/g0000000003-s001-0000000008.tjl.partial   segment 8 being built (a rotation)
//! DIR/g0000000003-s001-0000000006.tjl.retired   segment 6, replaced, being deleted
//! ```
//! A generation is one run's set of streams, one per shard. Every start writes the next
//! generation (a snapshot of the recovered state for each new shard, so the shard count
//! may change) and switches MANIFEST to it with an atomic rename; only then are the old
//! generation's files deleted. Within a generation a stream moves to a new segment when
//! it holds more than twice its live state in garbage (see
//! [`super::commit::Commit::wants_rotation`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::record::FileHeader;
use super::JournalError;

const MANIFEST: &str = "MANIFEST";
const LOCK: &str = "LOCK";
const SEGMENT_SUFFIX: &str = ".tjl";
const PARTIAL_SUFFIX: &str = ".partial";
const RETIRED_SUFFIX: &str = ".retired";

/// What MANIFEST says: the generation in force, its stream count, and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    pub generation: u64,
    pub streams: u16,
    pub node: u16,
}

/// An open data directory, locked against a second ticketd for as long as this lives.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed and takes its lock.
    pub fn open(path: &Path) -> Result<DataDir, JournalError> {
        std::fs::create_dir_all(path).map_err(|e| JournalError::io(path, e))?;
        let lock_path = path.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| JournalError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked {
                    dir: path.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(JournalError::io(&lock_path, e)),
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub fn segment_path(dir: &Path, header: &FileHeader) -> PathBuf {
    dir.join(format!(
        "g{:010}-s{:03}-{:010}{SEGMENT_SUFFIX}",
        header.generation, header.stream, header.segment
    ))
}

/// Where a segment is built before it takes over (see [`super::rotation`]): a name
/// that recovery and the feed never read.
pub fn partial_path(segment: &Path) -> PathBuf {
    with_suffix(segment, PARTIAL_SUFFIX)
}

/// Where a segment a rotation replaced waits to be deleted (see [`super::retired`]): a
/// name that recovery and the feed never read either.
pub fn retired_path(segment: &Path) -> PathBuf {
    with_suffix(segment, RETIRED_SUFFIX)
}

/// `segment`'s name with `suffix` after it: no longer a name `parse_segment_name` takes.
fn with_suffix(segment: &Path, suffix: &str) -> PathBuf {
    let mut name = segment.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Deletes segments a crash left half-built during a rotation, or half-deleted after
/// one: they hold nothing that is not also in the newest segment of their stream.
pub fn remove_leftovers(dir: &Path) -> Result<(), JournalError> {
    let entries = std::fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let what = if name.ends_with(PARTIAL_SUFFIX) {
            "removing a segment a crash left half-built"
        } else if name.ends_with(RETIRED_SUFFIX) {
            "removing a replaced segment a crash left half-deleted"
        } else {
            continue;
        };
        let path = entry.path();
        tracing::info!(file = %path.display(), "{what}");
        std::fs::remove_file(&path).map_err(|e| JournalError::io(&path, e))?;
    }
    Ok(())
}

/// A segment file found in a data directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    pub generation: u64,
    pub stream: u16,
    pub segment: u64,
    pub path: PathBuf,
}

fn parse_segment_name(name: &str) -> Option<(u64, u16, u64)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?.strip_prefix('g')?;
    let mut parts = stem.split('-');
    let generation = parts.next()?.parse().ok()?;
    let stream = parts.next()?.strip_prefix('s')?.parse().ok()?;
    let segment = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some((generation, stream, segment))
}

/// Every segment file in `dir`, sorted by generation, stream, segment.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentName>, JournalError> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        let name = entry.file_name();
        if let Some((generation, stream, segment)) = name.to_str().and_then(parse_segment_name) {
            found.push(SegmentName {
                generation,
                stream,
                segment,
                path: entry.path(),
            });
        }
    }
    found.sort();
    Ok(found)
}

impl Manifest {
    fn body(&self) -> String {
        format!(
            "ticketd-manifest v1 generation={} streams={} node={}",
            self.generation, self.streams, self.node
        )
    }

    fn parse(text: &str) -> Option<Manifest> {
        let line = text.trim_end();
        let (body, crc) = line.rsplit_once(" crc32c=")?;
        if u32::from_str_radix(crc, 16).ok()? != crc32c::crc32c(body.as_bytes()) {
            return None;
        }
        let mut fields = body.strip_prefix("ticketd-manifest v1 ")?.split(' ');
        let mut value = |key: &str| fields.next()?.strip_prefix(key)?.parse::<u64>().ok();
        let generation = value("generation=")?;
        let streams = u16::try_from(value("streams=")?).ok()?;
        let node = u16::try_from(value("node=")?).ok()?;
        Some(Manifest {
            generation,
            streams,
            node,
        })
    }
}

/// MANIFEST, or `None` in a directory never used.
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>, JournalError> {
    let path = dir.join(MANIFEST);
    match std::fs::read_to_string(&path) {
        Ok(text) => Manifest::parse(&text)
            .map(Some)
            .ok_or(JournalError::Manifest { path }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(JournalError::io(&path, e)),
    }
}

/// Replaces MANIFEST atomically (write, sync, rename, sync the directory).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), JournalError> {
    let tmp = dir.join("MANIFEST.tmp");
    let body = manifest.body();
    let text = format!("{body} crc32c={:08x}\n", crc32c::crc32c(body.as_bytes()));
    let write = || -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(MANIFEST))?;
        sync_dir(dir)
    };
    write().map_err(|e| JournalError::io(&tmp, e))
}

/// A new, empty segment file, opened for writing from its start (not for appending: a
/// zero-tailed segment is overwritten where it was written ahead with zeros, and
/// `pwrite` on a file opened to append appends wherever it is asked to write).
pub fn create_segment_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create_new(true)
        .write(true)
        .read(true)
        .open(path)
}

/// Makes a directory's entries (new, renamed or removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let header = FileHeader {
            node: 1,
            stream: 2,
            generation: 3,
            segment: 4,
            zero_tailed: false,
        };
        let path = segment_path(Path::new("/d"), &header);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_segment_name(name), Some((3, 2, 4)));
        assert_eq!(parse_segment_name("g1-s1.tjl"), None);
        assert_eq!(parse_segment_name("MANIFEST"), None);
        let partial = partial_path(&path);
        let partial_name = partial.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            parse_segment_name(partial_name),
            None,
            "never read as a segment"
        );
        let retired = retired_path(&path);
        let retired_name = retired.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_segment_name(retired_name), None, "never read either");
    }

    #[test]
    fn manifests_round_trip_and_refuse_edits() {
        let m = Manifest {
            generation: 9,
            streams: 2,
            node: 7,
        };
        let body = m.body();
        let text = format!("{body} crc32c={:08x}\n", crc32c::crc32c(body.as_bytes()));
        assert_eq!(Manifest::parse(&text), Some(m));
        assert_eq!(
            Manifest::parse(&text.replace("streams=2", "streams=3")),
            None
        );
    }
}
