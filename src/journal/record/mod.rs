//! The journal's bytes: a file header, then records.
//!
//! # Format
//! A segment file starts with a 36-byte header:
//! `magic "TICKETDJ" | version:u16 | node:u16 | stream:u16 | flags:u16 |
//! generation:u64 | segment:u64 | crc32c(previous 32 bytes):u32`.
//!
//! Each record is `len:u16 | !len:u16 | crc32c(body):u32 | body[len]`, big-endian. The
//! length is stored twice (plain and inverted) so a damaged length is recognised as
//! damage instead of being read as a record cut short by a crash; the body starts with
//! a kind byte. See `docs/DURABILITY.md` for every kind's fields, and [`tail`] for how a
//! zero-tailed segment's end is read.

use bytes::{Buf, BufMut, BytesMut};

mod header;
mod runs;
pub mod tail;
pub use header::{FileHeader, HeaderError, HEADER_LEN, MAGIC, MIN_VERSION, VERSION};
pub use runs::{Entry, Run, RunEncoder, RunKind};

/// Size of a record's frame before its body.
pub const RECORD_HEADER_LEN: usize = 8;

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
    /// Zero-tailed segments only: the end of one write, the writer's `seq`-th (counted
    /// over its life, so marks only grow within a data dir's generation). Recovery uses
    /// the marks to tell a write a crash cut short from damage ([`tail`]); it changes no
    /// state.
    Commit { seq: u64 },
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
    /// A run of orders, each read as a [`super::Record::Sale`] ([`super::runs`]).
    pub const ORDERS: u8 = 13;
    /// A run of holds taken, each read as a [`super::Record::HoldTaken`].
    pub const HOLDS_TAKEN: u8 = 14;
    pub const COMMIT: u8 = 15;
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
        self.encode_body(out);
        frame(out, frame_start);
    }

    /// Decodes a body whose checksum has been verified: one record, or for a run (kinds
    /// 13 and 14) each of its entries as a [`Record::Sale`] or [`Record::HoldTaken`], in
    /// the order written.
    pub fn decode(body: &[u8]) -> Result<Records<'_>, BodyError> {
        if let Some((&code, rest)) = body.split_first() {
            if let Some(kind) = RunKind::of(code) {
                return Run::parse(kind, rest).map(Records::Run).ok_or(BodyError {
                    kind: code,
                    len: body.len(),
                });
            }
        }
        Record::decode_one(body).map(|record| Records::One(Some(record)))
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
            Record::Commit { seq } => {
                out.put_u8(kind::COMMIT);
                out.put_u64(seq);
            }
        }
    }

    /// Decodes the body of a single record (not a run).
    fn decode_one(body: &[u8]) -> Result<Record, BodyError> {
        let error = BodyError {
            kind: body.first().copied().unwrap_or(0),
            len: body.len(),
        };
        let Some((&kind, mut b)) = body.split_first() else {
            return Err(error);
        };
        let need = match kind {
            kind::SNAPSHOT_BEGIN | kind::SNAPSHOT_END | kind::COMMIT => 8,
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
            kind::COMMIT => Record::Commit { seq: b.get_u64() },
            _ => Record::IdMark {
                field: b.get_u16(),
                seq: b.get_u64(),
            },
        };
        Ok(record)
    }
}

/// The records one body holds ([`Record::decode`]).
#[derive(Debug, Clone)]
pub enum Records<'a> {
    One(Option<Record>),
    Run(Run<'a>),
}

impl Iterator for Records<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        match self {
            Records::One(record) => record.take(),
            Records::Run(run) => run.next(),
        }
    }
}

/// Every record in `bytes`, whole frames to the end (runs read entry by entry), or why
/// the reading stopped. For checks and tests: the journal's readers go a frame at a time,
/// with each frame's offset for their messages.
pub fn read_all(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let mut rest = bytes;
    let mut records = Vec::new();
    loop {
        match read_frame(rest) {
            Frame::Record { body, len } => {
                records.extend(Record::decode(body).map_err(|e| e.to_string())?);
                rest = &rest[len..];
            }
            Frame::End => return Ok(records),
            other => return Err(format!("{other:?} after {} records", records.len())),
        }
    }
}

/// Fills in the frame header of the record whose header space starts at `frame_start`
/// and whose body runs to the end of `out`: its length (twice) and checksum.
fn frame(out: &mut BytesMut, frame_start: usize) {
    let body_start = frame_start + RECORD_HEADER_LEN;
    let len = out.len() - body_start;
    // Single records are a few dozen bytes; runs close before they could outgrow this.
    debug_assert!(len <= usize::from(u16::MAX));
    let len16 = len as u16;
    let crc = crc32c::crc32c(&out[body_start..]);
    let header = &mut out[frame_start..body_start];
    header[0..2].copy_from_slice(&len16.to_be_bytes());
    header[2..4].copy_from_slice(&(!len16).to_be_bytes());
    header[4..8].copy_from_slice(&crc.to_be_bytes());
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
mod tests;
