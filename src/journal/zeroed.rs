//! The zeros a zero-tailed segment is written ahead with ([`super::record::tail`]).
//!
//! The writer overwrites these instead of appending, so the `fdatasync` after a write
//! has only the data to make durable, not a new file size or newly allocated blocks. A
//! write that would run past them carries the next [`STEP`] of zeros after its records,
//! in the same sync: that one sync commits the larger file (~1.6 ms against ~0.2 ms for
//! an overwrite, measured here with 1 MiB; a separate write and sync of the zeros
//! stopped the next commit for several milliseconds instead). A crash during such a
//! write leaves zeros or nothing past the records, both of which the tail rule reads as
//! the end.

/// Zeros written ahead at a time.
pub const STEP: usize = 1 << 20;

/// How far the current segment is written ahead with zeros.
#[derive(Debug)]
pub struct ZeroedAhead {
    /// The end of the zeros (or of the file, before the first step).
    to: u64,
    /// One step of zeros, made at the first step.
    zeros: Vec<u8>,
    /// Set once writing zeros failed (a full disk, a file-size limit): the data writes
    /// that follow append, and fail on their own if there is no room for them either.
    stopped: bool,
}

impl ZeroedAhead {
    /// For a segment whose file is `file_len` bytes long, all of them data.
    pub fn new(file_len: u64) -> ZeroedAhead {
        ZeroedAhead {
            to: file_len,
            zeros: Vec::new(),
            stopped: false,
        }
    }

    /// For a write whose records end at `end`: the zeros to write right after them when
    /// they run past those already written (none otherwise).
    pub fn past(&mut self, end: u64) -> &[u8] {
        if end <= self.to || self.stopped {
            return &[];
        }
        if self.zeros.is_empty() {
            self.zeros = vec![0; STEP];
        }
        self.to = end + STEP as u64;
        &self.zeros
    }

    /// The zeros [`Self::past`] gave could not be written: the file holds zeros, or
    /// nothing, past `end`; no more are tried. Writing them is only ever a saving, so
    /// their failure is not the write's.
    pub fn failed(&mut self, end: u64) {
        tracing::warn!(
            "could not write a journal segment ahead with zeros; appending to it from here on"
        );
        self.to = end;
        self.stopped = true;
    }

    /// Where the zeros end.
    #[cfg(test)]
    pub fn end(&self) -> u64 {
        self.to
    }
}
