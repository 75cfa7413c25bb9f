//! What the fuzz targets (`fuzz/`, `make fuzz`) check on arbitrary input, kept here so
//! the same checks also run over the seed corpus in `cargo test` (tests/fuzz_corpus.rs).
//! Each panics when an invariant breaks: that is how a fuzzer learns of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ticketd_proto::{
    auth_token, decode_request, decode_response, encode_auth, Command, DecodeError, Request,
    Response, Status, FRAMING_ERROR_OP, RESPONSE_BIT,
};

use crate::catalog::Catalog;
use crate::config::EventSpec;
use crate::ledger::Ledger;
use crate::shard::access::Access;
use crate::shard::http::{self, Parsed};
use crate::shard::mailbox::ConnRef;
use crate::shard::output::Output;
use crate::shard::{BinaryEnd, BinaryStream, Dispatcher, ShardSettings};

/// A small frame limit, so arbitrary input reaches the "cannot be framed" path often.
const FUZZ_MAX_FRAME: u32 = 64;

/// The request decoder: never panics; whatever it accepts re-encodes to the same bytes
/// (one encoding per request); what it refuses it refuses with a length inside the input.
pub fn check_request_decoder(data: &[u8]) {
    let mut rest = data;
    loop {
        match decode_request(rest, FUZZ_MAX_FRAME) {
            Ok((request, used)) => {
                assert!(
                    (13..=rest.len()).contains(&used),
                    "used {used} of {}",
                    rest.len()
                );
                let frame = &rest[..used];
                let mut again = BytesMut::new();
                match request.command {
                    Command::Auth { token_len } => encode_auth(
                        request.req_id,
                        auth_token(frame, used, token_len),
                        &mut again,
                    ),
                    _ => request.encode(&mut again),
                }
                assert_eq!(&again[..], frame, "{request:?} re-encodes differently");
                rest = &rest[used..];
            }
            Err(DecodeError::UnknownOp { frame_len, .. })
            | Err(DecodeError::BadArgsLength { frame_len, .. }) => {
                assert!(frame_len <= rest.len() && frame_len >= 13);
                rest = &rest[frame_len..];
            }
            Err(_) => break,
        }
    }
    // The response decoder (clients') on the same bytes: never panics.
    let mut rest = data;
    while let Ok((_, used)) = decode_response(rest, FUZZ_MAX_FRAME) {
        rest = rest.get(used..).unwrap_or_default();
    }
}

/// One connection's binary state machine, on a stream split at arbitrary points (the
/// first byte seeds the split): every whole request is answered exactly once, with its
/// own op and `req_id`, in order (one shard decides everything here); a framing error
/// comes last and nothing after it is answered; nothing panics; the stock stays within
/// its total.
pub fn check_binary_stream(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let spec = EventSpec {
        id: 1,
        stock: 5,
        per_user_limit: 2,
    };
    let catalog = Arc::new(Catalog::new(&[spec], 1));
    let ledger = Ledger::new(0, 1, Arc::clone(&catalog), Duration::from_secs(60));
    let settings = Arc::new(ShardSettings::standalone(0, 1, 1, FUZZ_MAX_FRAME));
    let mut dispatcher = Dispatcher::new(settings, ledger);
    let conn = ConnRef {
        shard: 0,
        slot: 0,
        generation: 1,
    };
    let (mut input, mut output, mut in_flight) = (BytesMut::new(), Output::new(), 0u32);
    let mut access = Access::local();
    let mut answers = BytesMut::new();
    let mut closing = None;
    let mut pos = 0;
    let mut split = u32::from(seed);
    let now = Instant::now();
    while pos < stream.len() && closing.is_none() {
        split = split.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let len = 1 + (split >> 16) as usize % 40;
        let chunk = &stream[pos..(pos + len).min(stream.len())];
        pos += chunk.len();
        let mut bytes = chunk;
        loop {
            let mut connection = BinaryStream {
                input: &mut input,
                output: &mut output,
                in_flight: &mut in_flight,
                access: &mut access,
            };
            let kept_before = connection.input.len();
            let end = connection.serve(bytes, &mut dispatcher, conn, now);
            // The client reads everything it was sent.
            answers.extend_from_slice(output.pending());
            let n = output.len();
            output.advance(n);
            if let BinaryEnd::Closing { owes_framing_error } = end {
                closing = Some(owes_framing_error);
                break;
            }
            assert!(
                !matches!(end, BinaryEnd::Throttled(_)),
                "no rate limit here"
            );
            // Input held back while the output was full is decided once it drains.
            let stalled = bytes.is_empty() && input.len() == kept_before;
            if input.is_empty() || stalled {
                break;
            }
            bytes = &[];
        }
        assert_eq!(
            in_flight, 0,
            "one shard, no journal: everything answered at once"
        );
    }
    if closing == Some(true) {
        Response::framing_error().encode(&mut answers);
    }
    // What the answers must be: the requests a reference decode finds, in order.
    let mut expected = Vec::new();
    let mut rest = stream;
    let mut framing_lost = false;
    loop {
        match decode_request(rest, FUZZ_MAX_FRAME) {
            Ok((Request { req_id, command }, used)) => {
                expected.push((command.op().response_code(), req_id));
                rest = &rest[used..];
            }
            Err(DecodeError::UnknownOp {
                op,
                req_id,
                frame_len,
            }) => {
                expected.push((op | RESPONSE_BIT, req_id));
                rest = &rest[frame_len..];
            }
            Err(DecodeError::BadArgsLength {
                op,
                req_id,
                frame_len,
            }) => {
                expected.push((op.response_code(), req_id));
                rest = &rest[frame_len..];
            }
            Err(DecodeError::Incomplete) => break,
            Err(_) => {
                framing_lost = true;
                break;
            }
        }
    }
    let mut got = Vec::new();
    let mut rest = &answers[..];
    while !rest.is_empty() {
        let (response, used) = decode_response(rest, u32::MAX)
            .unwrap_or_else(|e| panic!("the server sent a malformed answer: {e}"));
        got.push(response);
        rest = &rest[used..];
    }
    if framing_lost {
        let last = got.pop().expect("a framing error");
        assert_eq!(
            (last.op, last.req_id, last.status),
            (FRAMING_ERROR_OP, 0, Status::BadRequest)
        );
    }
    // (An unknown op 0x7F or 0xFF is answered with op 0xFF too, as the spec says: op |
    // 0x80; only its place tells it from the framing error.)
    let answered: Vec<(u8, u64)> = got.iter().map(|r| (r.op, r.req_id)).collect();
    assert_eq!(
        answered, expected,
        "every whole request answered once, in order"
    );
    let stock = &catalog.get(0).stock;
    assert!((0..=stock.total()).contains(&stock.remaining()));
}

/// The HTTP request parser: never panics; a request it accepts lies inside the input; a
/// refusal is one of the statuses the front sends.
pub fn check_http_parser(data: &[u8]) {
    match http::parse(data) {
        Parsed::Request(head) => assert!(head.consumed > 0 && head.consumed <= data.len()),
        Parsed::Invalid(code) => assert!([400, 413, 431].contains(&code), "{code}"),
        Parsed::Incomplete => {}
    }
}

/// A journal record's body (what follows a frame whose checksum matched): decoding never
/// panics, and whatever decodes — one record, or a run of orders or holds taken —
/// written again the way the shard writes it (into runs) reads back as the same records.
pub fn check_journal_record_body(data: &[u8]) {
    use crate::journal::commit::RecordBuf;
    use crate::journal::record::{read_all, Record};

    let Ok(records) = Record::decode(data) else {
        return;
    };
    let records: Vec<Record> = records.collect();
    let mut buf = RecordBuf::new(true);
    for &record in &records {
        buf.push(record);
    }
    let again = read_all(&buf.take());
    assert_eq!(
        again,
        Ok(records),
        "records written again read back otherwise"
    );
}
