//! Giving memory back to the system after connections close.
//!
//! A wave of clients that never read leaves each connection with up to ~140 KiB of
//! buffers; freed, they go back to glibc's per-thread arena, which returns memory to
//! the system only from the top of its heap — so after the wave the process could stay
//! hundreds of MB larger. When a shard has freed enough buffer memory, it asks glibc to
//! return every free page (`malloc_trim`), at most once a second: a few hundred
//! microseconds, never on the hot path of a busy pass.

use std::time::{Duration, Instant};

/// Freed buffer bytes that make a trim worth it.
const TRIM_AFTER_BYTES: usize = 4 * 1024 * 1024;
/// Fewest time between two trims of one shard.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Trimmer {
    freed: usize,
    last: Option<Instant>,
}

impl Trimmer {
    /// Notes `bytes` of buffers freed.
    pub fn freed(&mut self, bytes: usize) {
        self.freed = self.freed.saturating_add(bytes);
    }

    /// When a trim is owed but waits for the interval: the loop wakes up then, even if
    /// nothing else happens (the frees may have been the last activity for a while).
    pub fn next_due(&self) -> Option<Instant> {
        if self.freed < TRIM_AFTER_BYTES {
            return None;
        }
        Some(self.last.map_or_else(Instant::now, |at| at + TRIM_INTERVAL))
    }

    /// Trims if enough was freed and the last trim is old enough.
    pub fn maybe_trim(&mut self, now: Instant) {
        if self.freed < TRIM_AFTER_BYTES
            || self
                .last
                .is_some_and(|at| now.duration_since(at) < TRIM_INTERVAL)
        {
            return;
        }
        self.freed = 0;
        self.last = Some(now);
        trim();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks and releases the allocator's free memory; it takes
    // the allocator's own locks and touches no memory of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
