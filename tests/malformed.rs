//! Each malformed-input case of the spec, and peers that misbehave in other ways, never
//! disturb the server or its other clients.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};

use common::{event, frame, start, start_with, Client};
use ticketd_proto::{Command, Op, ResultBody, Status, FRAMING_ERROR_OP};

fn assert_framing_error_then_close(client: &mut Client) {
    let response = client.recv();
    assert_eq!(response.op, FRAMING_ERROR_OP);
    assert_eq!(response.req_id, 0);
    assert_eq!(response.status, Status::BadRequest);
    assert_eq!(response.result, ResultBody::Empty);
    client.expect_eof();
}

#[test]
fn length_below_nine_gets_the_framing_error_and_a_close() {
    let server = start(&[], 2);
    for len in [0u32, 1, 8] {
        let mut client = Client::connect(server.local_addr());
        let mut wire = len.to_be_bytes().to_vec();
        wire.extend_from_slice(&[1; 8]);
        client.send_raw(&wire);
        assert_framing_error_then_close(&mut client);
    }
}

#[test]
fn length_above_max_frame_is_refused_from_the_prefix_alone() {
    let server = start_with(&[], |c| c.max_frame = 100);
    let mut client = Client::connect(server.local_addr());
    // Only the four length bytes: the server must not wait for a body.
    client.send_raw(&101u32.to_be_bytes());
    assert_framing_error_then_close(&mut client);

    let mut huge = Client::connect(server.local_addr());
    huge.send_raw(&u32::MAX.to_be_bytes());
    assert_framing_error_then_close(&mut huge);
}

#[test]
fn a_frame_of_exactly_max_frame_is_framed() {
    let server = start_with(&[], |c| c.max_frame = 100);
    let mut client = Client::connect(server.local_addr());
    // Known op, wrong args length, but within MAX_FRAME: BAD_REQUEST, connection open.
    client.send_raw(&frame(0x01, 9, &[0; 91]));
    let response = client.recv();
    assert_eq!(
        (response.op, response.req_id, response.status),
        (0x81, 9, Status::BadRequest)
    );
    assert_eq!(client.call(Command::Ping).status, Status::Ok);
}

#[test]
fn unknown_op_gets_bad_request_with_its_own_op_and_req_id_and_stays_open() {
    let server = start(&[event(1, 5, 1)], 2);
    let mut client = Client::connect(server.local_addr());
    for op in [0x00u8, 0x07, 0x7F, 0x81, 0xFF] {
        client.send_raw(&frame(op, 0xABCD, &[]));
        let response = client.recv();
        assert_eq!(response.op, op | 0x80);
        assert_eq!(response.req_id, 0xABCD);
        assert_eq!(response.status, Status::BadRequest);
    }
    assert_eq!(
        client.buy(1, 1, 1).status,
        Status::Ok,
        "still open and working"
    );
}

#[test]
fn wrong_args_length_gets_bad_request_for_every_op() {
    let server = start(&[event(1, 5, 1)], 2);
    let mut client = Client::connect(server.local_addr());
    for op in Op::ALL {
        for args_len in [op.args_len() + 1, op.args_len().saturating_sub(1)] {
            if args_len == op.args_len() {
                continue;
            }
            client.send_raw(&frame(op.code(), 77, &vec![0; args_len]));
            let response = client.recv();
            assert_eq!(
                (response.op, response.req_id, response.status),
                (op.response_code(), 77, Status::BadRequest),
                "{} with {args_len} arg bytes",
                op.name()
            );
        }
    }
    assert_eq!(client.stock(1), (5, 5));
}

#[test]
fn requests_before_a_bad_frame_are_answered_first() {
    let server = start(&[event(1, 5, 1)], 2);
    let mut client = Client::connect(server.local_addr());
    let mut wire = frame(0x01, 1, &[]);
    let mut buy = 1u32.to_be_bytes().to_vec();
    buy.extend_from_slice(&9u64.to_be_bytes());
    buy.extend_from_slice(&1u16.to_be_bytes());
    wire.extend_from_slice(&frame(0x02, 2, &buy));
    wire.extend_from_slice(&4u32.to_be_bytes()); // unframeable
    wire.extend_from_slice(&frame(0x01, 3, &[])); // never read
    client.send_raw(&wire);
    let mut answered: Vec<u64> = (0..2).map(|_| client.recv().req_id).collect();
    answered.sort_unstable();
    assert_eq!(answered, vec![1, 2]);
    assert_framing_error_then_close(&mut client);
    assert_eq!(Client::connect(server.local_addr()).stock(1), (5, 4));
}

#[test]
fn half_frames_garbage_and_resets_do_not_disturb_others() {
    let server = start(&[event(1, 1_000, 1)], 2);
    let addr = server.local_addr();
    let mut good = Client::connect(addr);
    assert_eq!(good.buy(1, 1, 1).status, Status::Ok);

    // Half a frame, then the peer goes away.
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(&[0, 0, 0, 23, 2, 0, 0]).unwrap();
    drop(half);
    // Half a frame, then a half-close: nothing to answer, the server closes too.
    let mut half_closed = Client::connect(addr);
    half_closed.send_raw(&[0, 0, 0, 9, 1]);
    half_closed.stream().shutdown(Shutdown::Write).unwrap();
    half_closed.expect_eof();
    // Random garbage from several peers.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..20 {
        let mut peer = TcpStream::connect(addr).unwrap();
        let garbage: Vec<u8> = (0..997)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = peer.write_all(&garbage);
    }
    // A connection reset with unread answers pending.
    let reset = TcpStream::connect(addr).unwrap();
    socket2::SockRef::from(&reset)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    (&reset)
        .write_all(&frame(0x01, 1, &[]).repeat(1_000))
        .unwrap();
    drop(reset);

    assert_eq!(good.buy(1, 2, 1).status, Status::Ok);
    assert_eq!(good.call(Command::Ping).status, Status::Ok);
    let summary = server.shutdown();
    assert!(summary.stats.bad_requests > 0);
    assert!(summary.event(1).unwrap().is_balanced());
}

#[test]
fn a_client_that_sends_then_half_closes_still_gets_every_answer() {
    let server = start(&[event(1, 100, 1)], 4);
    let mut client = Client::connect(server.local_addr());
    let mut wire = Vec::new();
    for user in 0..50u64 {
        let mut args = 1u32.to_be_bytes().to_vec();
        args.extend_from_slice(&user.to_be_bytes());
        args.extend_from_slice(&1u16.to_be_bytes());
        wire.extend_from_slice(&frame(0x02, user + 1, &args));
    }
    client.send_raw(&wire);
    client.stream().shutdown(Shutdown::Write).unwrap();
    for _ in 0..50 {
        assert_eq!(client.recv().status, Status::Ok);
    }
    client.expect_eof();
}
