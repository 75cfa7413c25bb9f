//! A segment a rotation replaced, deleted a step at a time.
//!
//! Unlinking a segment of a few hundred megabytes took ~50 ms here (ext4 frees its
//! extents in the call, and with the `discard` mount option trims them too), and the
//! writer that waits for it holds every answer behind it: in the all-selling benchmark
//! those waits were the slowest answers of the run (80–95 ms, against 9–14 ms with no
//! rotation). So the writer renames the segment out of the way — to a name recovery and
//! the feed never read, which the next start deletes if a crash comes first — and cuts
//! [`STEP`] bytes off its end after each batch of jobs (about a millisecond each), then
//! unlinks what is left, by then nothing.
//!
//! Nothing here is needed for durability: by the time a segment is retired, its
//! successor holds everything and is durably named ([`super::rotation`]).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::store;

/// Bytes cut off a retired segment per step.
pub const STEP: u64 = 4 << 20;

/// A replaced segment on its way out.
#[derive(Debug)]
pub struct Retired {
    /// A writable handle (the writer's own, from when the segment was in use).
    file: File,
    /// Its retired name.
    path: PathBuf,
    /// Bytes still in it.
    len: u64,
    /// Bytes cut per step: [`STEP`] (smaller in tests, for many steps).
    pub(super) step: u64,
}

impl Retired {
    /// Moves the segment at `segment` (whose writable handle is `file`) to its retired
    /// name, from where [`Retired::shrink_some`] deletes it.
    pub fn retire(file: File, segment: &Path) -> io::Result<Retired> {
        // Its length first: once renamed, a failure here would leave the caller
        // deleting a name that is gone.
        let len = file.metadata()?.len();
        let path = store::retired_path(segment);
        std::fs::rename(segment, &path)?;
        Ok(Retired {
            file,
            path,
            len,
            step: STEP,
        })
    }

    /// Cuts one step off the end, or unlinks the file once nothing is left. Returns
    /// whether there is more to do.
    pub fn shrink_some(&mut self) -> io::Result<bool> {
        if self.len == 0 {
            std::fs::remove_file(&self.path)?;
            return Ok(false);
        }
        self.len = self.len.saturating_sub(self.step);
        self.file.set_len(self.len)?;
        Ok(true)
    }

    /// Deletes what is left in one go: at shutdown, or when a newer segment retires
    /// before this one is gone.
    pub fn finish(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(file = %self.path.display(), error = %e, "could not delete a retired journal segment (the next start will)");
        }
    }

    /// Where it is, for the warning when a step fails.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_retired_segment_leaves_its_name_at_once_and_shrinks_a_step_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join("g0000000001-s000-0000000001.tjl");
        let mut file = store::create_segment_file(&segment).unwrap();
        let size = 2 * STEP + 100;
        let chunk = vec![7u8; 1 << 20];
        let mut written = 0;
        while written < size {
            let n = chunk.len().min((size - written) as usize);
            file.write_all(&chunk[..n]).unwrap();
            written += n as u64;
        }
        let mut retired = Retired::retire(file, &segment).unwrap();
        assert!(!segment.exists(), "the segment's own name is free at once");
        let path = retired.path().to_path_buf();
        assert_eq!(store::list_segments(dir.path()).unwrap(), vec![]);
        let mut sizes = vec![std::fs::metadata(&path).unwrap().len()];
        while retired.shrink_some().unwrap() {
            sizes.push(std::fs::metadata(&path).map_or(0, |m| m.len()));
        }
        assert_eq!(sizes, vec![size, STEP + 100, 100, 0]);
        assert!(!path.exists(), "gone once empty");
    }

    #[test]
    fn finishing_at_once_deletes_it() {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join("g0000000001-s000-0000000001.tjl");
        let file = store::create_segment_file(&segment).unwrap();
        let retired = Retired::retire(file, &segment).unwrap();
        let path = retired.path().to_path_buf();
        assert!(path.exists());
        retired.finish();
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
