//! The hex test vectors of `docs/PROTOCOL.md`: each must decode to the value beside it,
//! encode back to the same bytes, and appear verbatim in the document, so the document
//! and the code cannot drift apart.

use bytes::BytesMut;
use ticketd_proto::{
    auth_token, decode_request, decode_response, encode_auth, Command, DecodeError, Op, OrderList,
    Purchase, Request, Response, ResultBody, Status, DEFAULT_MAX_FRAME,
};

const EXPIRES: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn bytes(hex: &str) -> Vec<u8> {
    hex.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("vector is hex"))
        .collect()
}

fn protocol_doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    std::fs::read_to_string(path).expect("docs/PROTOCOL.md is readable")
}

fn request_vectors() -> Vec<(&'static str, Request)> {
    let purchase = |user, qty| Purchase {
        event: 1,
        user,
        qty,
    };
    vec![
        (
            "00 00 00 09 01 00 00 00 00 00 00 00 07",
            Request {
                req_id: 7,
                command: Command::Ping,
            },
        ),
        (
            "00 00 00 17 02 00 00 00 00 00 00 00 01 00 00 00 01 00 00 00 00 00 00 00 2A 00 01",
            Request {
                req_id: 1,
                command: Command::Buy(purchase(42, 1)),
            },
        ),
        (
            "00 00 00 17 03 00 00 00 00 00 00 00 02 00 00 00 01 00 00 00 00 00 00 00 2B 00 02",
            Request {
                req_id: 2,
                command: Command::Reserve(purchase(43, 2)),
            },
        ),
        (
            "00 00 00 11 04 00 00 00 00 00 00 00 03 00 00 00 00 00 00 01 02",
            Request {
                req_id: 3,
                command: Command::Confirm { hold_id: 0x102 },
            },
        ),
        (
            "00 00 00 11 05 00 00 00 00 00 00 00 04 00 00 00 00 00 00 01 02",
            Request {
                req_id: 4,
                command: Command::Cancel { hold_id: 0x102 },
            },
        ),
        (
            "00 00 00 0D 06 00 00 00 00 00 00 00 05 00 00 00 01",
            Request {
                req_id: 5,
                command: Command::Stock { event: 1 },
            },
        ),
        (
            "00 00 00 11 07 00 00 00 00 00 00 00 09 00 06 73 33 63 72 65 74",
            Request {
                req_id: 9,
                command: Command::Auth { token_len: 6 },
            },
        ),
        (
            "00 00 00 15 08 00 00 00 00 00 00 00 06 00 00 00 01 00 00 00 00 00 00 00 2A",
            Request {
                req_id: 6,
                command: Command::Orders { event: 1, user: 42 },
            },
        ),
    ]
}

fn response_vectors() -> Vec<(&'static str, Response)> {
    vec![
        (
            "00 00 00 16 88 00 00 00 00 00 00 00 06 00 00 01 00 00 00 00 00 00 01 01 00 01",
            Response::ok(Op::Orders, 6, ResultBody::Orders(OrderList(vec![(0x101, 1)]))),
        ),
        (
            "00 00 00 0A 81 00 00 00 00 00 00 00 07 00",
            Response::ok(Op::Ping, 7, ResultBody::Empty),
        ),
        (
            "00 00 00 12 82 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 01 01",
            Response::ok(Op::Buy, 1, ResultBody::Order { order_id: 0x101 }),
        ),
        (
            "00 00 00 1A 83 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 01 02 00 00 01 9B 76 DA A8 00",
            Response::ok(
                Op::Reserve,
                2,
                ResultBody::Hold {
                    hold_id: 0x102,
                    expires_unix_ms: EXPIRES,
                },
            ),
        ),
        (
            "00 00 00 12 84 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 01 03",
            Response::ok(Op::Confirm, 3, ResultBody::Order { order_id: 0x103 }),
        ),
        (
            "00 00 00 0A 85 00 00 00 00 00 00 00 04 00",
            Response::ok(Op::Cancel, 4, ResultBody::Empty),
        ),
        (
            "00 00 00 1A 86 00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 27 10 00 00 00 00 00 00 27 0D",
            Response::ok(
                Op::Stock,
                5,
                ResultBody::Stock {
                    total: 10_000,
                    remaining: 9_997,
                },
            ),
        ),
        // Every non-OK status, each on an op that can produce it.
        (
            "00 00 00 0A 82 00 00 00 00 00 00 00 01 01",
            Response::error(Op::Buy.code(), 1, Status::SoldOut),
        ),
        (
            "00 00 00 0A 82 00 00 00 00 00 00 00 01 02",
            Response::error(Op::Buy.code(), 1, Status::LimitReached),
        ),
        (
            "00 00 00 0A 84 00 00 00 00 00 00 00 03 03",
            Response::error(Op::Confirm.code(), 3, Status::NotFound),
        ),
        (
            "00 00 00 0A 84 00 00 00 00 00 00 00 03 04",
            Response::error(Op::Confirm.code(), 3, Status::Expired),
        ),
        (
            "00 00 00 0A 89 00 00 00 00 00 00 00 06 05",
            Response::error(0x09, 6, Status::BadRequest),
        ),
        (
            "00 00 00 0A 82 00 00 00 00 00 00 00 01 06",
            Response::error(Op::Buy.code(), 1, Status::Unavailable),
        ),
        (
            "00 00 00 0A 82 00 00 00 00 00 00 00 01 07",
            Response::error(Op::Buy.code(), 1, Status::Overloaded),
        ),
        (
            "00 00 00 0A 82 00 00 00 00 00 00 00 01 08",
            Response::error(Op::Buy.code(), 1, Status::Unauthorized),
        ),
        (
            "00 00 00 0A 87 00 00 00 00 00 00 00 09 00",
            Response::ok(Op::Auth, 9, ResultBody::Empty),
        ),
        (
            "00 00 00 0A FF 00 00 00 00 00 00 00 00 05",
            Response::framing_error(),
        ),
    ]
}

#[test]
fn request_vectors_decode_encode_and_are_documented() {
    let doc = protocol_doc();
    for (hex, expected) in request_vectors() {
        let wire = bytes(hex);
        assert_eq!(
            decode_request(&wire, DEFAULT_MAX_FRAME),
            Ok((expected, wire.len())),
            "{hex}"
        );
        let mut encoded = BytesMut::new();
        match expected.command {
            // The token stays in the frame: encode it from there.
            Command::Auth { token_len } => {
                let token = auth_token(&wire, wire.len(), token_len);
                assert_eq!(token, b"s3cret");
                encode_auth(expected.req_id, token, &mut encoded);
            }
            _ => expected.encode(&mut encoded),
        }
        assert_eq!(&encoded[..], &wire[..], "{hex}");
        assert_eq!(expected.encoded_len(), wire.len());
        assert!(
            doc.contains(hex),
            "docs/PROTOCOL.md lacks request vector {hex}"
        );
    }
}

#[test]
fn response_vectors_decode_encode_and_are_documented() {
    let doc = protocol_doc();
    for (hex, expected) in response_vectors() {
        let wire = bytes(hex);
        assert_eq!(
            decode_response(&wire, DEFAULT_MAX_FRAME),
            Ok((expected.clone(), wire.len())),
            "{hex}"
        );
        let mut encoded = BytesMut::new();
        expected.encode(&mut encoded);
        assert_eq!(&encoded[..], &wire[..], "{hex}");
        assert!(
            doc.contains(hex),
            "docs/PROTOCOL.md lacks response vector {hex}"
        );
    }
}

#[test]
fn vectors_cover_every_op_and_every_status() {
    let ops: Vec<Op> = request_vectors()
        .iter()
        .map(|(_, r)| r.command.op())
        .collect();
    assert_eq!(ops, Op::ALL.to_vec());
    for status in Status::ALL {
        assert!(
            response_vectors().iter().any(|(_, r)| r.status == status),
            "no vector for {status}"
        );
    }
    for op in Op::ALL {
        assert!(
            response_vectors()
                .iter()
                .any(|(_, r)| r.status == Status::Ok && r.request_op() == Some(op)),
            "no OK response vector for {}",
            op.name()
        );
    }
}

#[test]
fn malformed_vectors_are_told_apart() {
    let doc = protocol_doc();
    let cases = [
        // Length 8: below the 9-byte minimum; the stream cannot be framed.
        (
            "00 00 00 08 01 00 00 00 00 00 00 00",
            DecodeError::FrameTooShort { len: 8 },
        ),
        // Length 1025: above the default MAX_FRAME; rejected from the prefix alone.
        (
            "00 00 04 01",
            DecodeError::FrameTooLarge {
                len: 1025,
                max: DEFAULT_MAX_FRAME,
            },
        ),
        // Op 0x09 does not exist.
        (
            "00 00 00 09 09 00 00 00 00 00 00 00 06",
            DecodeError::UnknownOp {
                op: 0x09,
                req_id: 6,
                frame_len: 13,
            },
        ),
        // A BUY without its qty: args are 12 bytes, not 14.
        (
            "00 00 00 15 02 00 00 00 00 00 00 00 08 00 00 00 01 00 00 00 00 00 00 00 2A",
            DecodeError::BadArgsLength {
                op: Op::Buy,
                req_id: 8,
                frame_len: 25,
            },
        ),
        // AUTH with an empty token, and one whose token_len promises more than follows.
        (
            "00 00 00 0B 07 00 00 00 00 00 00 00 0A 00 00",
            DecodeError::BadArgsLength {
                op: Op::Auth,
                req_id: 10,
                frame_len: 15,
            },
        ),
        (
            "00 00 00 10 07 00 00 00 00 00 00 00 0B 00 06 73 33 63 72 65",
            DecodeError::BadArgsLength {
                op: Op::Auth,
                req_id: 11,
                frame_len: 20,
            },
        ),
    ];
    for (hex, expected) in cases {
        assert_eq!(
            decode_request(&bytes(hex), DEFAULT_MAX_FRAME),
            Err(expected),
            "{hex}"
        );
        assert!(
            doc.contains(hex),
            "docs/PROTOCOL.md lacks malformed vector {hex}"
        );
    }
}
