//! AUTH (protocol 1.1) over real sockets: with `--auth-token-file` a connection must
//! present a token before anything else; without it, AUTH is a no-op and v1 clients work.

mod common;

use bytes::BytesMut;
use common::{event, start_with, Client, TicketdProcess};
use ticketd::auth::TokenSet;
use ticketd_proto::{encode_auth, Command, Op, Status};

const TOKENS: &str = "# gateways\ngateway-one-7f3a\ngateway-two-91bc\n";

fn tokens() -> (tempfile::NamedTempFile, TokenSet) {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(TOKENS.as_bytes()).expect("write");
    let set = TokenSet::load(file.path()).expect("tokens load");
    (file, set)
}

fn auth_frame(req_id: u64, token: &[u8]) -> BytesMut {
    let mut wire = BytesMut::new();
    encode_auth(req_id, token, &mut wire);
    wire
}

fn buy_frame(req_id: u64, user: u64) -> BytesMut {
    let mut wire = BytesMut::new();
    common::buy_request(req_id, user).encode(&mut wire);
    wire
}

#[test]
fn without_tokens_auth_is_ok_whatever_it_carries_and_v1_clients_need_none() {
    let server = start_with(&[event(1, 10, 1)], |_| {});
    let mut client = Client::connect(server.local_addr());
    assert_eq!(client.buy(1, 1, 1).status, Status::Ok, "a v1 client");
    client.send_raw(&auth_frame(50, b"anything at all"));
    let answer = client.recv();
    assert_eq!((answer.req_id, answer.status), (50, Status::Ok));
    assert_eq!(answer.request_op(), Some(Op::Auth));
    assert_eq!(client.buy(1, 2, 1).status, Status::Ok);
}

#[test]
fn with_tokens_nothing_happens_before_a_good_auth() {
    let (_file, set) = tokens();
    let server = start_with(&[event(1, 10, 1)], |c| c.auth_tokens = Some(set));
    let mut client = Client::connect(server.local_addr());
    // Before AUTH: every request is refused and does nothing; the connection stays.
    assert_eq!(client.buy(1, 1, 1).status, Status::Unauthorized);
    assert_eq!(
        client.call(Command::Stock { event: 1 }).status,
        Status::Unauthorized
    );
    assert_eq!(client.call(Command::Ping).status, Status::Unauthorized);
    assert_eq!(server.stock(1), Some((10, 10)), "nothing was sold");
    // A good token, then the same connection may buy.
    client.send_raw(&auth_frame(60, b"gateway-two-91bc"));
    assert_eq!(client.recv().status, Status::Ok);
    assert_eq!(client.buy(1, 1, 1).status, Status::Ok);
    assert_eq!(server.stock(1), Some((10, 9)));
}

#[test]
fn auth_and_requests_may_be_pipelined_in_one_write() {
    let (_file, set) = tokens();
    let server = start_with(&[event(1, 10, 1)], |c| c.auth_tokens = Some(set));
    let mut client = Client::connect(server.local_addr());
    let mut wire = auth_frame(1, b"gateway-one-7f3a");
    wire.extend_from_slice(&buy_frame(2, 7));
    wire.extend_from_slice(&buy_frame(3, 8));
    client.send_raw(&wire);
    let mut answers: Vec<(u64, Status)> = (0..3)
        .map(|_| client.recv())
        .map(|r| (r.req_id, r.status))
        .collect();
    answers.sort_unstable_by_key(|a| a.0);
    assert_eq!(
        answers,
        vec![(1, Status::Ok), (2, Status::Ok), (3, Status::Ok)]
    );
}

#[test]
fn a_wrong_token_is_refused_and_the_connection_closed_after_the_answer() {
    let (_file, set) = tokens();
    let server = start_with(&[event(1, 10, 1)], |c| c.auth_tokens = Some(set));
    for wrong in [
        &b"gateway-one-7f3"[..], // a prefix
        b"gateway-one-7f3a ",    // one byte more
        b"GATEWAY-ONE-7F3A",     // case
        b"# gateways",           // a comment line of the file
    ] {
        let mut client = Client::connect(server.local_addr());
        // A BUY pipelined after the failed AUTH is never read.
        let mut wire = auth_frame(1, wrong);
        wire.extend_from_slice(&buy_frame(2, 9));
        client.send_raw(&wire);
        let answer = client.recv();
        assert_eq!(
            (answer.req_id, answer.status),
            (1, Status::Unauthorized),
            "{wrong:?}"
        );
        client.expect_eof();
    }
    assert_eq!(server.stock(1), Some((10, 10)), "nothing was sold");
    // A well-framed AUTH with an impossible token length is a bad request, as for any op.
    let mut client = Client::connect(server.local_addr());
    client.send_raw(&[0, 0, 0, 11, 0x07, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0]);
    let answer = client.recv();
    assert_eq!((answer.req_id, answer.status), (5, Status::BadRequest));
}

#[test]
fn the_token_file_flag_is_checked_at_start() {
    let (file, _) = tokens();
    let path = file.path().display().to_string();
    let node = TicketdProcess::spawn(&[
        "--event".into(),
        "1:10".into(),
        "--auth-token-file".into(),
        path.clone(),
    ]);
    let mut client = Client::connect(node.addr);
    assert_eq!(client.buy(1, 1, 1).status, Status::Unauthorized);
    client.send_raw(&auth_frame(9, b"gateway-one-7f3a"));
    assert_eq!(client.recv().status, Status::Ok);
    assert_eq!(client.buy(1, 1, 1).status, Status::Ok);
    node.terminate();
    // The HTTP front takes no tokens: with them it needs signed links (--http-secret).
    let refused = TicketdProcess::try_spawn(&[
        "--http".into(),
        "127.0.0.1:0".into(),
        "--auth-token-file".into(),
        path,
    ])
    .err()
    .expect("refused");
    assert!(
        refused.contains("--http with --auth-token-file needs --http-secret"),
        "{refused}"
    );
    let missing =
        TicketdProcess::try_spawn(&["--auth-token-file".into(), "/nonexistent/tokens".into()])
            .err()
            .expect("refused");
    assert!(
        missing.contains("cannot read the token file /nonexistent/tokens"),
        "{missing}"
    );
}
