//! Runs: consecutive records of one kind in one record (format version 3) — orders
//! (kind 13) and holds taken (kind 14).
//!
//! Most of what a busy shard writes is orders — a BUY's `Sale`, and every order again in
//! each snapshot a rotation writes — or, in a rush of RESERVEs, holds taken; as single
//! records each takes 39 bytes: an 8-byte frame, a kind byte and 30 bytes of
//! fixed-width fields. Consecutive ones differ little: ids and times climb by small
//! steps, the event and quantity repeat. So a run of them is one record:
//!
//! ```text
//! kind 13 or 14 | count:u16 | count × (user | id Δ | event_id Δ | qty | time Δ)
//! ```
//!
//! (`id` the order's or the hold's, `time` the order's time or the hold's deadline.)
//! Each field is a LEB128 varint; the Δ fields are zigzag-encoded differences from the
//! entry before in the same run (the first from zero). A BUY of a new buyer in a rush
//! takes ~12 bytes instead of 39, and one checksum covers the run instead of one per
//! record. Only consecutive records of the same kind share a run — any other record
//! closes it — so reading a run's entries one by one replays the journal in the order
//! it was written.

use bytes::{BufMut, BytesMut};
use integer_encoding::VarInt;

use super::{frame, kind, OrderRec, Record, RECORD_HEADER_LEN};

/// What a run holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Orders, each read as a [`Record::Sale`] (kind 13).
    Orders,
    /// Holds taken, each read as a [`Record::HoldTaken`] (kind 14).
    HoldsTaken,
}

impl RunKind {
    fn code(self) -> u8 {
        match self {
            RunKind::Orders => kind::ORDERS,
            RunKind::HoldsTaken => kind::HOLDS_TAKEN,
        }
    }

    /// The run kind a record kind byte names, if it names one.
    pub fn of(code: u8) -> Option<RunKind> {
        match code {
            kind::ORDERS => Some(RunKind::Orders),
            kind::HOLDS_TAKEN => Some(RunKind::HoldsTaken),
            _ => None,
        }
    }
}

/// The five fields of a run's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The order's or the hold's id.
    pub id: u64,
    pub event_id: u32,
    pub user: u64,
    pub qty: u16,
    /// The order's time, or the hold's deadline (Unix milliseconds).
    pub at_ms: u64,
}

impl Entry {
    /// The entry a record makes in a run, and the run's kind, if it goes in one.
    pub fn of(record: &Record) -> Option<(RunKind, Entry)> {
        match *record {
            Record::Sale(o) => Some((RunKind::Orders, Entry::from(o))),
            Record::HoldTaken {
                hold_id,
                event_id,
                user,
                qty,
                deadline_ms,
            } => Some((
                RunKind::HoldsTaken,
                Entry {
                    id: hold_id,
                    event_id,
                    user,
                    qty,
                    at_ms: deadline_ms,
                },
            )),
            _ => None,
        }
    }

    fn into_record(self, kind: RunKind) -> Record {
        match kind {
            RunKind::Orders => Record::Sale(OrderRec {
                order_id: self.id,
                event_id: self.event_id,
                user: self.user,
                qty: self.qty,
                unix_ms: self.at_ms,
            }),
            RunKind::HoldsTaken => Record::HoldTaken {
                hold_id: self.id,
                event_id: self.event_id,
                user: self.user,
                qty: self.qty,
                deadline_ms: self.at_ms,
            },
        }
    }
}

impl From<OrderRec> for Entry {
    fn from(o: OrderRec) -> Entry {
        Entry {
            id: o.order_id,
            event_id: o.event_id,
            user: o.user,
            qty: o.qty,
            at_ms: o.unix_ms,
        }
    }
}

/// The most bytes one entry can take in a run (every varint at its longest).
const MAX_ENTRY: usize = 10 + 10 + 10 + 3 + 10;
/// A run is closed before its body could outgrow a record's u16 length.
const MAX_BODY: usize = u16::MAX as usize;

/// What the next entry of a run is told apart from.
#[derive(Debug, Clone, Copy, Default)]
struct Previous {
    id: u64,
    event_id: u32,
    at_ms: u64,
}

impl From<&Entry> for Previous {
    fn from(e: &Entry) -> Previous {
        Previous {
            id: e.id,
            event_id: e.event_id,
            at_ms: e.at_ms,
        }
    }
}

/// Difference `now - before` as the zigzag varint's signed value (wrapping: any two
/// u64s have one).
fn delta(now: u64, before: u64) -> i64 {
    now.wrapping_sub(before) as i64
}

/// Writes runs into a buffer of records: [`RunEncoder::push`] adds an entry to the open
/// run (opening one if none is open or it is of another kind), [`RunEncoder::close`]
/// frames it. Anyone writing another record into the same buffer closes the run first.
#[derive(Debug)]
pub struct RunEncoder {
    /// Where the open run's frame starts in the buffer, while one is open.
    open_at: Option<usize>,
    kind: RunKind,
    count: u16,
    previous: Previous,
}

impl Default for RunEncoder {
    fn default() -> Self {
        RunEncoder {
            open_at: None,
            kind: RunKind::Orders,
            count: 0,
            previous: Previous::default(),
        }
    }
}

impl RunEncoder {
    /// Appends an order to the open run of orders in `out`, or to a new one.
    pub fn push_order(&mut self, out: &mut BytesMut, order: &OrderRec) {
        self.push(out, RunKind::Orders, &Entry::from(*order));
    }

    /// Appends `entry` to the open run of `kind` in `out`, or to a new one.
    pub fn push(&mut self, out: &mut BytesMut, kind: RunKind, entry: &Entry) {
        match self.open_at {
            Some(start)
                if self.kind == kind
                    && self.count < u16::MAX
                    && out.len() - start - RECORD_HEADER_LEN + MAX_ENTRY <= MAX_BODY => {}
            _ => {
                self.close(out);
                self.open(out, kind);
            }
        }
        let mut bytes = [0u8; MAX_ENTRY];
        let mut n = entry.user.encode_var(&mut bytes);
        n += delta(entry.id, self.previous.id).encode_var(&mut bytes[n..]);
        let event_step = i64::from(entry.event_id) - i64::from(self.previous.event_id);
        n += event_step.encode_var(&mut bytes[n..]);
        n += entry.qty.encode_var(&mut bytes[n..]);
        n += delta(entry.at_ms, self.previous.at_ms).encode_var(&mut bytes[n..]);
        out.put_slice(&bytes[..n]);
        self.count += 1;
        self.previous = Previous::from(entry);
    }

    /// Frames the open run, if any: its count and checksum are written now.
    pub fn close(&mut self, out: &mut BytesMut) {
        let Some(start) = self.open_at.take() else {
            return;
        };
        let count_at = start + RECORD_HEADER_LEN + 1;
        out[count_at..count_at + 2].copy_from_slice(&self.count.to_be_bytes());
        frame(out, start);
    }

    fn open(&mut self, out: &mut BytesMut, kind: RunKind) {
        self.open_at = Some(out.len());
        out.put_bytes(0, RECORD_HEADER_LEN);
        out.put_u8(kind.code());
        out.put_u16(0);
        self.kind = kind;
        self.count = 0;
        self.previous = Previous::default();
    }
}

/// The entries of one run record, read one by one as records. Made only by
/// [`Run::parse`], which has already read every entry, so iterating cannot fail.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    kind: RunKind,
    rest: &'a [u8],
    left: u16,
    previous: Previous,
}

impl<'a> Run<'a> {
    /// The run in a body of `kind` (after its kind byte), if it is well formed: a count
    /// of at least one, that many entries whose fields fit their types, and nothing
    /// after.
    pub fn parse(kind: RunKind, after_kind: &'a [u8]) -> Option<Run<'a>> {
        let (count, rest) = after_kind.split_first_chunk::<2>()?;
        let count = u16::from_be_bytes(*count);
        if count == 0 {
            return None;
        }
        let run = Run {
            kind,
            rest,
            left: count,
            previous: Previous::default(),
        };
        let mut check = run.clone();
        while check.left > 0 {
            check.read_one()?;
        }
        check.rest.is_empty().then_some(run)
    }

    fn read_one(&mut self) -> Option<Entry> {
        let user = self.field::<u64>()?;
        let id_step = self.field::<i64>()?;
        let event_step = self.field::<i64>()?;
        let qty = self.field::<u16>()?;
        let time_step = self.field::<i64>()?;
        let event_id =
            u32::try_from(i64::from(self.previous.event_id).checked_add(event_step)?).ok()?;
        let entry = Entry {
            id: self.previous.id.wrapping_add(id_step as u64),
            event_id,
            user,
            qty,
            at_ms: self.previous.at_ms.wrapping_add(time_step as u64),
        };
        self.left -= 1;
        self.previous = Previous::from(&entry);
        Some(entry)
    }

    /// The next varint (zigzag for the signed steps), if it is whole and fits `T`.
    fn field<T: VarInt>(&mut self) -> Option<T> {
        let (value, used) = T::decode_var(self.rest)?;
        self.rest = &self.rest[used..];
        Some(value)
    }
}

impl Iterator for Run<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.left == 0 {
            return None;
        }
        let kind = self.kind;
        self.read_one().map(|entry| entry.into_record(kind))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{read_frame, Frame, Record};
    use super::*;

    fn order(order_id: u64, event_id: u32, user: u64, qty: u16, unix_ms: u64) -> OrderRec {
        OrderRec {
            order_id,
            event_id,
            user,
            qty,
            unix_ms,
        }
    }

    fn read_all(bytes: &[u8]) -> Vec<Record> {
        super::super::read_all(bytes).unwrap()
    }

    fn arb_order() -> impl Strategy<Value = OrderRec> {
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u16>(),
            any::<u64>(),
        )
            .prop_map(|(id, event, user, qty, ms)| order(id, event, user, qty, ms))
    }

    proptest! {
        #[test]
        fn any_orders_round_trip(orders in prop::collection::vec(arb_order(), 1..300)) {
            let mut out = BytesMut::new();
            let mut run = RunEncoder::default();
            for o in &orders {
                run.push_order(&mut out, o);
            }
            run.close(&mut out);
            let back: Vec<Record> = read_all(&out);
            let sent: Vec<Record> = orders.iter().copied().map(Record::Sale).collect();
            prop_assert_eq!(back, sent);
        }

        #[test]
        fn any_body_is_read_or_refused_without_panicking(body in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut with_kind = vec![kind::ORDERS];
            with_kind.extend_from_slice(&body);
            if let Ok(records) = Record::decode(&with_kind) {
                // Whatever parses yields exactly its count of sales.
                let count = u16::from_be_bytes([body[0], body[1]]);
                prop_assert_eq!(records.count(), usize::from(count));
            }
        }
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        prop_oneof![
            arb_order().prop_map(Record::Sale),
            arb_order().prop_map(|o| Record::HoldTaken {
                hold_id: o.order_id,
                event_id: o.event_id,
                user: o.user,
                qty: o.qty,
                deadline_ms: o.unix_ms,
            }),
            any::<u64>().prop_map(|hold_id| Record::Cancelled {
                hold_id,
                unix_ms: 7
            }),
        ]
    }

    proptest! {
        #[test]
        fn mixed_runs_and_records_read_back_in_the_order_written(
            records in prop::collection::vec(arb_record(), 1..300)
        ) {
            let mut out = BytesMut::new();
            let mut run = RunEncoder::default();
            for record in &records {
                match Entry::of(record) {
                    Some((kind, entry)) => run.push(&mut out, kind, &entry),
                    None => {
                        run.close(&mut out);
                        record.encode(&mut out);
                    }
                }
            }
            run.close(&mut out);
            prop_assert_eq!(read_all(&out), records);
        }
    }

    #[test]
    fn a_rush_of_sales_takes_a_third_of_the_plain_records_bytes() {
        let mut compact = BytesMut::new();
        let mut plain = BytesMut::new();
        let mut run = RunEncoder::default();
        for i in 0..10_000u64 {
            let o = order(
                (3 << 44) + i,
                1,
                1_000_000 + i * 7919,
                1,
                1_765_000_000_000 + i / 50,
            );
            run.push_order(&mut compact, &o);
            Record::Sale(o).encode(&mut plain);
        }
        run.close(&mut compact);
        assert!(
            compact.len() * 3 <= plain.len(),
            "{} bytes compact against {} plain",
            compact.len(),
            plain.len()
        );
    }

    #[test]
    fn a_long_run_is_split_into_records_that_fit_their_length_field() {
        let mut out = BytesMut::new();
        let mut run = RunEncoder::default();
        // Orders that take the most bytes: every field far from the one before.
        let orders: Vec<OrderRec> = (0..5_000u64)
            .map(|i| {
                let far = if i % 2 == 0 { 0 } else { u64::MAX };
                order(
                    far,
                    if i % 2 == 0 { 0 } else { u32::MAX },
                    u64::MAX,
                    u16::MAX,
                    far,
                )
            })
            .collect();
        for o in &orders {
            run.push_order(&mut out, o);
        }
        run.close(&mut out);
        let mut rest = &out[..];
        let mut records = 0;
        while let Frame::Record { len, .. } = read_frame(rest) {
            rest = &rest[len..];
            records += 1;
        }
        assert!(rest.is_empty());
        assert!(records > 1, "{records} record(s) for 5,000 long orders");
        assert_eq!(
            read_all(&out),
            orders.into_iter().map(Record::Sale).collect::<Vec<_>>()
        );
    }

    #[test]
    fn damaged_runs_are_refused() {
        let mut out = BytesMut::new();
        let mut run = RunEncoder::default();
        run.push_order(&mut out, &order(1, 2, 3, 4, 5));
        run.push_order(&mut out, &order(2, 2, 9, 1, 5));
        run.close(&mut out);
        let body = &out[RECORD_HEADER_LEN..];
        assert_eq!(Record::decode(body).unwrap().count(), 2);
        // A count that says more, or fewer, orders than follow.
        for count in [0u16, 1, 3] {
            let mut bad = body.to_vec();
            bad[1..3].copy_from_slice(&count.to_be_bytes());
            assert!(Record::decode(&bad).is_err(), "count {count}");
        }
        // Cut short, or with a byte after the last order.
        assert!(Record::decode(&body[..body.len() - 1]).is_err());
        let mut longer = body.to_vec();
        longer.push(0);
        assert!(Record::decode(&longer).is_err());
        // A quantity that does not fit a u16 (varint of 70,000).
        let mut wide = BytesMut::new();
        wide.put_u8(kind::ORDERS);
        wide.put_u16(1);
        wide.put_slice(&[3, 2, 2]);
        wide.put_slice(&[0xf0, 0xa2, 0x04]);
        wide.put_slice(&[2]);
        assert!(Record::decode(&wide).is_err());
    }
}
