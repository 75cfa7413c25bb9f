//! A segment file's 36-byte header: magic, format version, who wrote it, and a checksum
//! (the layout is in the parent module's format section).

use bytes::{Buf, BufMut, BytesMut};

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"TICKETDJ";
/// The format version this build writes. Version 2 added the compact memory of ended
/// holds in snapshots ([`Record::HoldsEnded`], [`Record::HoldConfirmed`]); version 3
/// added runs of orders and of holds taken in one record (kinds 13 and 14,
/// [`super::RunEncoder`]); version 4 the header's flags (zero-tailed segments and their
/// commit marks, kind 15: [`super::tail`]). Versions 1 to 3 are still read.
pub const VERSION: u16 = 4;
/// The oldest format version this build reads.
pub const MIN_VERSION: u16 = 1;
/// Size of the file header, checksum included.
pub const HEADER_LEN: usize = 36;
/// A segment file's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub node: u16,
    pub stream: u16,
    pub generation: u64,
    pub segment: u64,
    /// Written ahead with synced zeros and overwritten, each write closed by a commit
    /// mark ([`super::tail`]); read by that module's rule for what a crash can leave.
    pub zero_tailed: bool,
}

/// The header's flag for [`FileHeader::zero_tailed`] (version 4 on; 0 before).
const ZERO_TAILED: u16 = 1;

/// Why a header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the file is shorter than a journal header")]
    Short,
    #[error("not a ticketd journal (bad magic)")]
    Magic,
    #[error("journal format version {0}, this build reads versions {MIN_VERSION} to {VERSION}")]
    Version(u16),
    #[error("the journal header's checksum does not match")]
    Checksum,
}

impl FileHeader {
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_slice(MAGIC);
        out.put_u16(VERSION);
        out.put_u16(self.node);
        out.put_u16(self.stream);
        out.put_u16(if self.zero_tailed { ZERO_TAILED } else { 0 });
        out.put_u64(self.generation);
        out.put_u64(self.segment);
        let crc = crc32c::crc32c(&out[start..]);
        out.put_u32(crc);
    }

    pub fn decode(bytes: &[u8]) -> Result<FileHeader, HeaderError> {
        let Some(header) = bytes.get(..HEADER_LEN) else {
            return Err(HeaderError::Short);
        };
        let mut buf = header;
        if &buf[..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        buf.advance(8);
        let version = buf.get_u16();
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(HeaderError::Version(version));
        }
        let node = buf.get_u16();
        let stream = buf.get_u16();
        // Reserved, and written as 0, before version 4.
        let flags = buf.get_u16();
        let generation = buf.get_u64();
        let segment = buf.get_u64();
        if crc32c::crc32c(&header[..HEADER_LEN - 4]) != buf.get_u32() {
            return Err(HeaderError::Checksum);
        }
        Ok(FileHeader {
            node,
            stream,
            generation,
            segment,
            zero_tailed: version >= 4 && flags & ZERO_TAILED != 0,
        })
    }
}
