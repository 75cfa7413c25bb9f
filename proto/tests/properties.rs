//! Property tests: the decoders never panic on any bytes, and every well-formed message
//! survives an encode/decode round trip.

use bytes::BytesMut;
use proptest::prelude::*;
use ticketd_proto::{
    check_request, decode_request, decode_response, Command, DecodeError, Op, Purchase, Request,
    Response, ResultBody, Status, DEFAULT_MAX_FRAME, LEN_PREFIX,
};

fn purchase() -> impl Strategy<Value = Purchase> {
    (any::<u32>(), any::<u64>(), any::<u16>()).prop_map(|(event, user, qty)| Purchase {
        event,
        user,
        qty,
    })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Ping),
        purchase().prop_map(Command::Buy),
        purchase().prop_map(Command::Reserve),
        any::<u64>().prop_map(|hold_id| Command::Confirm { hold_id }),
        any::<u64>().prop_map(|hold_id| Command::Cancel { hold_id }),
        any::<u32>().prop_map(|event| Command::Stock { event }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (any::<u64>(), command()).prop_map(|(req_id, command)| Request { req_id, command })
}

fn ok_response() -> impl Strategy<Value = Response> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<i64>(),
        any::<i64>(),
    )
        .prop_flat_map(|(req_id, a, b, total, remaining)| {
            prop_oneof![
                Just(Response::ok(Op::Ping, req_id, ResultBody::Empty)),
                Just(Response::ok(
                    Op::Buy,
                    req_id,
                    ResultBody::Order { order_id: a }
                )),
                Just(Response::ok(
                    Op::Reserve,
                    req_id,
                    ResultBody::Hold {
                        hold_id: a,
                        expires_unix_ms: b
                    }
                )),
                Just(Response::ok(
                    Op::Confirm,
                    req_id,
                    ResultBody::Order { order_id: a }
                )),
                Just(Response::ok(Op::Cancel, req_id, ResultBody::Empty)),
                Just(Response::ok(
                    Op::Stock,
                    req_id,
                    ResultBody::Stock { total, remaining }
                )),
            ]
        })
}

fn error_response() -> impl Strategy<Value = Response> {
    (any::<u8>(), any::<u64>(), 1usize..Status::ALL.len())
        .prop_map(|(op, req_id, s)| Response::error(op, req_id, Status::ALL[s]))
}

fn encode_request(r: &Request) -> Vec<u8> {
    let mut buf = BytesMut::new();
    r.encode(&mut buf);
    buf.to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn requests_round_trip(r in request(), tail in proptest::collection::vec(any::<u8>(), 0..32)) {
        let mut wire = encode_request(&r);
        let len = wire.len();
        wire.extend_from_slice(&tail);
        prop_assert_eq!(decode_request(&wire, DEFAULT_MAX_FRAME), Ok((r, len)));
    }

    #[test]
    fn every_strict_prefix_of_a_request_is_incomplete(r in request()) {
        let wire = encode_request(&r);
        for cut in 0..wire.len() {
            prop_assert_eq!(decode_request(&wire[..cut], DEFAULT_MAX_FRAME), Err(DecodeError::Incomplete));
        }
    }

    #[test]
    fn responses_round_trip(r in prop_oneof![ok_response(), error_response()]) {
        let mut buf = BytesMut::new();
        r.encode(&mut buf);
        prop_assert_eq!(buf.len(), r.encoded_len());
        prop_assert_eq!(decode_response(&buf, DEFAULT_MAX_FRAME), Ok((r, buf.len())));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2_048), max in 0u32..4_096) {
        check_decode_request(&bytes, max)?;
        check_decode_response(&bytes, max)?;
    }

    #[test]
    fn mutated_frames_never_panic(
        r in request(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut wire = encode_request(&r);
        for (at, byte) in flips {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        let cut = cut.index(wire.len() + 1);
        check_decode_request(&wire[..cut], DEFAULT_MAX_FRAME)?;
        check_decode_response(&wire[..cut], DEFAULT_MAX_FRAME)?;
    }
}

/// Decoding either succeeds within the buffer, or says how much to skip within it.
fn check_decode_request(bytes: &[u8], max: u32) -> Result<(), TestCaseError> {
    let decoded = decode_request(bytes, max);
    // Phase one and phase two agree on incomplete and unframeable input.
    if let Err(e) = check_request(bytes, max) {
        prop_assert_eq!(decoded.map(|_| ()), Err(e));
    }
    match decoded {
        Ok((_, used)) => prop_assert!(used >= LEN_PREFIX + 9 && used <= bytes.len()),
        Err(e) => {
            if let Some(skip) = e.frame_len() {
                prop_assert!(skip <= bytes.len());
            }
            prop_assert!(e.to_string().len() > 3);
        }
    }
    Ok(())
}

fn check_decode_response(bytes: &[u8], max: u32) -> Result<(), TestCaseError> {
    match decode_response(bytes, max) {
        Ok((_, used)) => prop_assert!(used >= LEN_PREFIX + 10 && used <= bytes.len()),
        Err(e) => {
            if let Some(skip) = e.frame_len() {
                prop_assert!(skip <= bytes.len());
            }
        }
    }
    Ok(())
}
