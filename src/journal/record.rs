//! The journal's bytes: a file header, then records.
//!
//! # Format
//! A segment file starts with a 36-byte header:
//! `magic "TICKETDJ" | version:u16 | node:u16 | stream:u16 | reserved:u16 |
//! generation:u64 | segment:u64 | crc32c(previous 32 bytes):u32`.
//!
//! Each record is `len:u16 | !len:u16 | crc32c(body):u32 | body[len]`, big-endian. The
//! length is stored twice (plain and inverted) so a damaged length is recognised as
//! damage instead of being read as a record cut short by a crash; the body starts with
//! a kind byte. See `docs/DURABILITY.md` for every kind's fields.

use bytes::{Buf, BufMut, BytesMut};

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"TICKETDJ";
/// The format version this build writes. Version 2 added the compact memory of ended
/// holds in snapshots ([`Record::HoldsEnded`], [`Record::HoldConfirmed`]); version 1
/// files are still read.
pub const VERSION: u16 = 2;
/// The oldest format version this build reads.
pub const MIN_VERSION: u16 = 1;
/// Size of the file header, checksum included.
pub const HEADER_LEN: usize = 36;
/// Size of a record's frame before its body.
pub const RECORD_HEADER_LEN: usize = 8;

/// A segment file's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub node: u16,
    pub stream: u16,
    pub generation: u64,
    pub segment: u64,
}

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
        out.put_u16(0);
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
        let _reserved = buf.get_u16();
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
        })
    }
}

/// One order as the journal knows it: the body of a [`Record::Sale`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRec {
    pub order_id: u64,
    pub event_id: u32,
    pub user: u64,
    pub qty: u16,
    pub unix_ms: u64,
}

/// How a finished hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    Confirmed { order_id: u64 },
    Cancelled,
    Expired,
}

/// One journal record. Times are Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A snapshot of live state follows (every segment starts with one).
    SnapshotBegin { unix_ms: u64 },
    /// The snapshot is complete: `records` records since its begin.
    SnapshotEnd { records: u64 },
    /// An event on sale.
    Event {
        event_id: u32,
        total: i64,
        per_user_limit: u16,
    },
    /// A BUY that sold, or (in a snapshot) any order.
    Sale(OrderRec),
    /// A RESERVE that took tickets until `deadline_ms`.
    HoldTaken {
        hold_id: u64,
        event_id: u32,
        user: u64,
        qty: u16,
        deadline_ms: u64,
    },
    /// A live hold became order `order_id`.
    Confirmed {
        hold_id: u64,
        order_id: u64,
        unix_ms: u64,
    },
    /// A live hold was cancelled; its tickets went back on sale.
    Cancelled { hold_id: u64, unix_ms: u64 },
    /// A live hold passed its deadline; its tickets went back on sale.
    Expired { hold_id: u64, unix_ms: u64 },
    /// Snapshot only: a hold that ended and is still remembered (retries get the same
    /// answer). Its order, if any, is a [`Record::Sale`] of its own.
    HoldFinished {
        hold_id: u64,
        event_id: u32,
        user: u64,
        qty: u16,
        end: HoldEnd,
        ended_ms: u64,
    },
    /// Ids with shard field `field` have been issued up to sequence `seq`.
    IdMark { field: u16, seq: u64 },
    /// Snapshot only: holds among ids `first_id .. first_id + 128` that were cancelled
    /// or expired, all by `ended_ms`, remembered for retries (2 bits per id, see
    /// [`crate::ledger::ended::EndedRun`]). Their events, users and quantities are not
    /// kept: a retry needs only how the hold ended.
    HoldsEnded {
        first_id: u64,
        ended_ms: u64,
        states: [u8; 32],
    },
    /// Snapshot only: a hold confirmed as `order_id` by `ended_ms`, remembered for
    /// retries. Its order is a [`Record::Sale`] of its own.
    HoldConfirmed {
        hold_id: u64,
        order_id: u64,
        ended_ms: u64,
    },
}

mod kind {
    pub const SNAPSHOT_BEGIN: u8 = 1;
    pub const SNAPSHOT_END: u8 = 2;
    pub const EVENT: u8 = 3;
    pub const SALE: u8 = 4;
    pub const HOLD_TAKEN: u8 = 5;
    pub const CONFIRMED: u8 = 6;
    pub const CANCELLED: u8 = 7;
    pub const EXPIRED: u8 = 8;
    pub const HOLD_FINISHED: u8 = 9;
    pub const ID_MARK: u8 = 10;
    pub const HOLDS_ENDED: u8 = 11;
    pub const HOLD_CONFIRMED: u8 = 12;
}

mod end_code {
    pub const CONFIRMED: u8 = 1;
    pub const CANCELLED: u8 = 2;
    pub const EXPIRED: u8 = 3;
}

/// A record body that checksums correctly but cannot be understood: written by a
/// newer build, or damaged in a way the checksum could not see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("record kind {kind} with a body of {len} bytes cannot be decoded")]
pub struct BodyError {
    pub kind: u8,
    pub len: usize,
}

impl Record {
    /// Appends this record, framed and checksummed.
    pub fn encode(&self, out: &mut BytesMut) {
        let frame_start = out.len();
        out.put_bytes(0, RECORD_HEADER_LEN);
        let body_start = out.len();
        self.encode_body(out);
        let len = out.len() - body_start;
        // Bodies are a few dozen bytes by construction.
        debug_assert!(len <= usize::from(u16::MAX));
        let len16 = len as u16;
        let crc = crc32c::crc32c(&out[body_start..]);
        let header = &mut out[frame_start..body_start];
        header[0..2].copy_from_slice(&len16.to_be_bytes());
        header[2..4].copy_from_slice(&(!len16).to_be_bytes());
        header[4..8].copy_from_slice(&crc.to_be_bytes());
    }

    fn encode_body(&self, out: &mut BytesMut) {
        match *self {
            Record::SnapshotBegin { unix_ms } => {
                out.put_u8(kind::SNAPSHOT_BEGIN);
                out.put_u64(unix_ms);
            }
            Record::SnapshotEnd { records } => {
                out.put_u8(kind::SNAPSHOT_END);
                out.put_u64(records);
            }
            Record::Event {
                event_id,
                total,
                per_user_limit,
            } => {
                out.put_u8(kind::EVENT);
                out.put_u32(event_id);
                out.put_i64(total);
                out.put_u16(per_user_limit);
            }
            Record::Sale(o) => {
                out.put_u8(kind::SALE);
                out.put_u64(o.order_id);
                out.put_u32(o.event_id);
                out.put_u64(o.user);
                out.put_u16(o.qty);
                out.put_u64(o.unix_ms);
            }
            Record::HoldTaken {
                hold_id,
                event_id,
                user,
                qty,
                deadline_ms,
            } => {
                out.put_u8(kind::HOLD_TAKEN);
                out.put_u64(hold_id);
                out.put_u32(event_id);
                out.put_u64(user);
                out.put_u16(qty);
                out.put_u64(deadline_ms);
            }
            Record::Confirmed {
                hold_id,
                order_id,
                unix_ms,
            } => {
                out.put_u8(kind::CONFIRMED);
                out.put_u64(hold_id);
                out.put_u64(order_id);
                out.put_u64(unix_ms);
            }
            Record::Cancelled { hold_id, unix_ms } => {
                out.put_u8(kind::CANCELLED);
                out.put_u64(hold_id);
                out.put_u64(unix_ms);
            }
            Record::Expired { hold_id, unix_ms } => {
                out.put_u8(kind::EXPIRED);
                out.put_u64(hold_id);
                out.put_u64(unix_ms);
            }
            Record::HoldFinished {
                hold_id,
                event_id,
                user,
                qty,
                end,
                ended_ms,
            } => {
                out.put_u8(kind::HOLD_FINISHED);
                out.put_u64(hold_id);
                out.put_u32(event_id);
                out.put_u64(user);
                out.put_u16(qty);
                let (code, order_id) = match end {
                    HoldEnd::Confirmed { order_id } => (end_code::CONFIRMED, order_id),
                    HoldEnd::Cancelled => (end_code::CANCELLED, 0),
                    HoldEnd::Expired => (end_code::EXPIRED, 0),
                };
                out.put_u8(code);
                out.put_u64(order_id);
                out.put_u64(ended_ms);
            }
            Record::IdMark { field, seq } => {
                out.put_u8(kind::ID_MARK);
                out.put_u16(field);
                out.put_u64(seq);
            }
            Record::HoldsEnded {
                first_id,
                ended_ms,
                states,
            } => {
                out.put_u8(kind::HOLDS_ENDED);
                out.put_u64(first_id);
                out.put_u64(ended_ms);
                out.put_slice(&states);
            }
            Record::HoldConfirmed {
                hold_id,
                order_id,
                ended_ms,
            } => {
                out.put_u8(kind::HOLD_CONFIRMED);
                out.put_u64(hold_id);
                out.put_u64(order_id);
                out.put_u64(ended_ms);
            }
        }
    }

    /// Decodes a body whose checksum has been verified.
    pub fn decode_body(body: &[u8]) -> Result<Record, BodyError> {
        let error = BodyError {
            kind: body.first().copied().unwrap_or(0),
            len: body.len(),
        };
        let Some((&kind, mut b)) = body.split_first() else {
            return Err(error);
        };
        let need = match kind {
            kind::SNAPSHOT_BEGIN | kind::SNAPSHOT_END => 8,
            kind::EVENT => 4 + 8 + 2,
            kind::SALE | kind::HOLD_TAKEN => 8 + 4 + 8 + 2 + 8,
            kind::CONFIRMED => 24,
            kind::CANCELLED | kind::EXPIRED => 16,
            kind::HOLD_FINISHED => 8 + 4 + 8 + 2 + 1 + 8 + 8,
            kind::ID_MARK => 10,
            kind::HOLDS_ENDED => 8 + 8 + 32,
            kind::HOLD_CONFIRMED => 24,
            _ => return Err(error),
        };
        if b.len() != need {
            return Err(error);
        }
        let record = match kind {
            kind::SNAPSHOT_BEGIN => Record::SnapshotBegin {
                unix_ms: b.get_u64(),
            },
            kind::SNAPSHOT_END => Record::SnapshotEnd {
                records: b.get_u64(),
            },
            kind::EVENT => Record::Event {
                event_id: b.get_u32(),
                total: b.get_i64(),
                per_user_limit: b.get_u16(),
            },
            kind::SALE => Record::Sale(OrderRec {
                order_id: b.get_u64(),
                event_id: b.get_u32(),
                user: b.get_u64(),
                qty: b.get_u16(),
                unix_ms: b.get_u64(),
            }),
            kind::HOLD_TAKEN => Record::HoldTaken {
                hold_id: b.get_u64(),
                event_id: b.get_u32(),
                user: b.get_u64(),
                qty: b.get_u16(),
                deadline_ms: b.get_u64(),
            },
            kind::CONFIRMED => Record::Confirmed {
                hold_id: b.get_u64(),
                order_id: b.get_u64(),
                unix_ms: b.get_u64(),
            },
            kind::CANCELLED => Record::Cancelled {
                hold_id: b.get_u64(),
                unix_ms: b.get_u64(),
            },
            kind::EXPIRED => Record::Expired {
                hold_id: b.get_u64(),
                unix_ms: b.get_u64(),
            },
            kind::HOLD_FINISHED => {
                let hold_id = b.get_u64();
                let event_id = b.get_u32();
                let user = b.get_u64();
                let qty = b.get_u16();
                let code = b.get_u8();
                let order_id = b.get_u64();
                let ended_ms = b.get_u64();
                let end = match code {
                    end_code::CONFIRMED => HoldEnd::Confirmed { order_id },
                    end_code::CANCELLED => HoldEnd::Cancelled,
                    end_code::EXPIRED => HoldEnd::Expired,
                    _ => return Err(error),
                };
                Record::HoldFinished {
                    hold_id,
                    event_id,
                    user,
                    qty,
                    end,
                    ended_ms,
                }
            }
            kind::HOLDS_ENDED => {
                let first_id = b.get_u64();
                let ended_ms = b.get_u64();
                let mut states = [0u8; 32];
                b.copy_to_slice(&mut states);
                Record::HoldsEnded {
                    first_id,
                    ended_ms,
                    states,
                }
            }
            kind::HOLD_CONFIRMED => Record::HoldConfirmed {
                hold_id: b.get_u64(),
                order_id: b.get_u64(),
                ended_ms: b.get_u64(),
            },
            _ => Record::IdMark {
                field: b.get_u16(),
                seq: b.get_u64(),
            },
        };
        Ok(record)
    }
}

/// What the bytes at one offset of a segment hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole record whose checksum matches; `len` bytes of frame in all.
    Record { body: &'a [u8], len: usize },
    /// Nothing more.
    End,
    /// What a crash mid-write leaves: a record cut short, or zeros, up to the end of
    /// the file. Everything before it is good.
    TornTail,
    /// Damage with more data after it: the journal cannot be trusted past this point.
    Corrupt { why: &'static str },
}

/// Reads the record frame at the start of `rest` (the bytes from one offset to the end
/// of the file).
pub fn read_frame(rest: &[u8]) -> Frame<'_> {
    if rest.is_empty() {
        return Frame::End;
    }
    let all_zero = |bytes: &[u8]| bytes.iter().all(|&b| b == 0);
    let Some(header) = rest.get(..RECORD_HEADER_LEN) else {
        return Frame::TornTail;
    };
    let len = u16::from_be_bytes([header[0], header[1]]);
    let inverted = u16::from_be_bytes([header[2], header[3]]);
    if len != !inverted {
        // A crash can leave zeros where the header would be; anything else is damage.
        return if all_zero(rest) {
            Frame::TornTail
        } else {
            Frame::Corrupt {
                why: "a record's length fields disagree",
            }
        };
    }
    let end = RECORD_HEADER_LEN + usize::from(len);
    let Some(body) = rest.get(RECORD_HEADER_LEN..end) else {
        return Frame::TornTail;
    };
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if crc32c::crc32c(body) != crc {
        // The last record of the file may have been half written; a bad record with
        // good data after it is damage.
        return if end == rest.len() || all_zero(&rest[RECORD_HEADER_LEN..]) {
            Frame::TornTail
        } else {
            Frame::Corrupt {
                why: "a record's checksum does not match",
            }
        };
    }
    Frame::Record { body, len: end }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Record> {
        vec![
            Record::SnapshotBegin { unix_ms: 1 },
            Record::SnapshotEnd { records: 2 },
            Record::Event {
                event_id: 3,
                total: 10_000,
                per_user_limit: 4,
            },
            Record::Sale(OrderRec {
                order_id: 5,
                event_id: 6,
                user: 7,
                qty: 8,
                unix_ms: 9,
            }),
            Record::HoldTaken {
                hold_id: 10,
                event_id: 11,
                user: 12,
                qty: 13,
                deadline_ms: 14,
            },
            Record::Confirmed {
                hold_id: 15,
                order_id: 16,
                unix_ms: 17,
            },
            Record::Cancelled {
                hold_id: 18,
                unix_ms: 19,
            },
            Record::Expired {
                hold_id: 20,
                unix_ms: 21,
            },
            Record::HoldFinished {
                hold_id: 22,
                event_id: 23,
                user: 24,
                qty: 25,
                end: HoldEnd::Confirmed { order_id: 26 },
                ended_ms: 27,
            },
            Record::HoldFinished {
                hold_id: 28,
                event_id: 29,
                user: 30,
                qty: 31,
                end: HoldEnd::Expired,
                ended_ms: 32,
            },
            Record::IdMark { field: 33, seq: 34 },
            Record::HoldsEnded {
                first_id: 35,
                ended_ms: 36,
                states: [0b1001; 32],
            },
            Record::HoldConfirmed {
                hold_id: 37,
                order_id: 38,
                ended_ms: 39,
            },
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        let mut buf = BytesMut::new();
        for record in every_kind() {
            record.encode(&mut buf);
        }
        let mut rest = &buf[..];
        let mut decoded = Vec::new();
        loop {
            match read_frame(rest) {
                Frame::Record { body, len } => {
                    decoded.push(Record::decode_body(body).unwrap());
                    rest = &rest[len..];
                }
                Frame::End => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(decoded, every_kind());
    }

    #[test]
    fn a_cut_last_record_is_a_torn_tail_and_damage_before_data_is_corruption() {
        let mut buf = BytesMut::new();
        for record in every_kind() {
            record.encode(&mut buf);
        }
        let whole = buf.to_vec();
        // The last record (an IdMark) is 19 bytes: every shorter cut leaves part of it.
        for cut in 1..19 {
            let cut_file = &whole[..whole.len() - cut];
            let mut rest = cut_file;
            let verdict = loop {
                match read_frame(rest) {
                    Frame::Record { len, .. } => rest = &rest[len..],
                    other => break other,
                }
            };
            assert_eq!(verdict, Frame::TornTail, "cut {cut}");
        }
        // A flipped byte in the first record's body, with records after it.
        let mut flipped = whole.clone();
        flipped[RECORD_HEADER_LEN + 3] ^= 0x40;
        assert!(matches!(read_frame(&flipped), Frame::Corrupt { .. }));
        // A flipped byte in a length field.
        let mut flipped = whole.clone();
        flipped[1] ^= 0x01;
        assert!(matches!(read_frame(&flipped), Frame::Corrupt { .. }));
        // Zeros after the good records (a crash after the file grew).
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0; 100]);
        let first = match read_frame(&zeros) {
            Frame::Record { len, .. } => len,
            other => panic!("{other:?}"),
        };
        assert_ne!(first, 0);
        assert_eq!(read_frame(&[0u8; 100]), Frame::TornTail);
    }

    #[test]
    fn headers_round_trip_and_refuse_damage() {
        let header = FileHeader {
            node: 7,
            stream: 1,
            generation: 3,
            segment: 9,
        };
        let mut buf = BytesMut::new();
        header.encode(&mut buf);
        assert_eq!(buf.len(), HEADER_LEN);
        assert_eq!(FileHeader::decode(&buf), Ok(header));
        let mut bad = buf.to_vec();
        bad[20] ^= 1;
        assert_eq!(FileHeader::decode(&bad), Err(HeaderError::Checksum));
        assert_eq!(FileHeader::decode(&bad[..10]), Err(HeaderError::Short));
        bad[0] = b'X';
        assert_eq!(FileHeader::decode(&bad), Err(HeaderError::Magic));
    }

    /// Version 2 only added record kinds: files a version 1 build wrote are still read,
    /// and a newer version is refused with a message rather than misread.
    #[test]
    fn version_1_files_are_read_and_newer_ones_refused() {
        let header = FileHeader {
            node: 1,
            stream: 0,
            generation: 1,
            segment: 0,
        };
        let with_version = |version: u16| {
            let mut buf = BytesMut::new();
            header.encode(&mut buf);
            buf[8..10].copy_from_slice(&version.to_be_bytes());
            let crc = crc32c::crc32c(&buf[..HEADER_LEN - 4]);
            buf[HEADER_LEN - 4..].copy_from_slice(&crc.to_be_bytes());
            buf
        };
        assert_eq!(FileHeader::decode(&with_version(1)), Ok(header));
        assert_eq!(FileHeader::decode(&with_version(VERSION)), Ok(header));
        assert_eq!(
            FileHeader::decode(&with_version(VERSION + 1)),
            Err(HeaderError::Version(VERSION + 1))
        );
    }
}
