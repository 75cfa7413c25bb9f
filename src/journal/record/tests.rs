//! Every record kind round-trips; damage is told from a torn tail; headers and versions.

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
        Record::Commit { seq: 35 },
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
    assert_eq!(read_all(&buf), Ok(every_kind()));
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
        zero_tailed: true,
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
        zero_tailed: false,
    };
    // `header` as a build of `version` would have written it.
    let written_as = |header: FileHeader, version: u16| {
        let mut buf = BytesMut::new();
        header.encode(&mut buf);
        buf[8..10].copy_from_slice(&version.to_be_bytes());
        let crc = crc32c::crc32c(&buf[..HEADER_LEN - 4]);
        buf[HEADER_LEN - 4..].copy_from_slice(&crc.to_be_bytes());
        buf
    };
    let with_version = |version: u16| written_as(header, version);
    assert_eq!(FileHeader::decode(&with_version(1)), Ok(header));
    assert_eq!(FileHeader::decode(&with_version(VERSION)), Ok(header));
    assert_eq!(
        FileHeader::decode(&with_version(VERSION + 1)),
        Err(HeaderError::Version(VERSION + 1))
    );
    // The flags came with version 4: before it the field was reserved, and a set bit
    // there says nothing.
    let tailed = FileHeader {
        zero_tailed: true,
        ..header
    };
    assert_eq!(FileHeader::decode(&written_as(tailed, 3)), Ok(header));
    assert_eq!(FileHeader::decode(&written_as(tailed, 4)), Ok(tailed));
}
