//! Fair admission per source address over real sockets: `--max-conns-per-ip` and
//! `--rate-per-ip` refuse one address's excess with OVERLOADED while another address
//! is served as before.

mod common;

use std::net::{IpAddr, SocketAddr, TcpStream};

use bytes::BytesMut;
use common::{event, start_with, Client};
use ticketd_proto::{Command, Request, Status};

/// A client whose connection comes from `source` (a loopback address of its own).
fn client_from(source: [u8; 4], server: SocketAddr) -> Client {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(IpAddr::from(source), 0).into())
        .expect("bind the source address");
    socket.connect(&server.into()).expect("connect");
    Client::from_stream(TcpStream::from(socket))
}

#[test]
fn one_address_cannot_hold_more_than_its_connections() {
    let server = start_with(&[event(1, 100, 1)], |c| c.max_conns_per_ip = Some(2));
    let addr = server.local_addr();
    let mut first = client_from([127, 0, 0, 2], addr);
    let mut second = client_from([127, 0, 0, 2], addr);
    assert_eq!(first.call(Command::Ping).status, Status::Ok);
    assert_eq!(second.call(Command::Ping).status, Status::Ok);
    // A third from the same address is shed: OVERLOADED, then closed.
    let mut third = client_from([127, 0, 0, 2], addr);
    assert_eq!(third.call(Command::Ping).status, Status::Overloaded);
    third.expect_eof();
    // Another address is not affected.
    let mut other = client_from([127, 0, 0, 3], addr);
    assert_eq!(other.buy(1, 1, 1).status, Status::Ok);
    // A place given back is free again.
    drop(first);
    common::wait_until(|| {
        let mut again = client_from([127, 0, 0, 2], addr);
        again.call(Command::Ping).status == Status::Ok
    });
}

#[test]
fn one_address_cannot_take_more_than_its_rate() {
    let server = start_with(&[event(1, 1_000_000, 1)], |c| {
        c.shards = 1;
        c.rate_per_ip = Some(50.0);
    });
    let addr = server.local_addr();
    let mut flood = client_from([127, 0, 0, 2], addr);
    let mut wire = BytesMut::new();
    for req_id in 1..=150u64 {
        Request {
            req_id,
            command: Command::Stock { event: 1 },
        }
        .encode(&mut wire);
    }
    flood.send_raw(&wire);
    let statuses: Vec<Status> = (0..150).map(|_| flood.recv().status).collect();
    let ok = statuses.iter().filter(|&&s| s == Status::Ok).count();
    let overloaded = statuses
        .iter()
        .filter(|&&s| s == Status::Overloaded)
        .count();
    assert_eq!(ok + overloaded, 150, "every request answered");
    // A burst of one second's worth (50) at once; past it, the connection is read only
    // as tokens come back, each pause starting with one OVERLOADED.
    assert_eq!(
        statuses[..50],
        [Status::Ok; 50],
        "the burst is served in full"
    );
    assert_eq!(statuses[50], Status::Overloaded);
    assert!(
        ok > 50 && overloaded > 1,
        "{ok} allowed, {overloaded} refused"
    );
    // Meanwhile another address is served in full.
    let mut other = client_from([127, 0, 0, 3], addr);
    for user in 0..20 {
        assert_eq!(other.buy(1, user, 1).status, Status::Ok);
    }
}

#[test]
fn the_http_front_has_the_same_rate_per_address() {
    let server = start_with(&[event(1, 1_000_000, 1)], |c| {
        c.shards = 1;
        c.http = Some("127.0.0.1:0".parse().unwrap());
        c.rate_per_ip = Some(20.0);
    });
    let http = server.http_addr().expect("http");
    // One keep-alive connection from 127.0.0.2 pipelines 60 GETs.
    let mut flood = client_from([127, 0, 0, 2], http);
    let mut wire = String::new();
    for user in 0..60 {
        wire.push_str(&format!(
            "GET /buy/ticket?user={user} HTTP/1.1\r\nHost: t\r\n\r\n"
        ));
    }
    flood.send_raw(wire.as_bytes());
    let mut text = String::new();
    let mut chunk = [0u8; 65536];
    while text.matches("HTTP/1.1 ").count() < 60 {
        let n = std::io::Read::read(&mut flood.stream(), &mut chunk).expect("answers");
        assert!(n > 0, "closed early");
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    let answers: Vec<String> = text
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| text[at + 9..at + 12].to_owned())
        .collect();
    let ok = answers.iter().filter(|c| *c == "200").count();
    let refused = answers.iter().filter(|c| *c == "503").count();
    assert_eq!(ok + refused, 60);
    assert!(ok >= 20 && refused >= 1, "{ok} sold, {refused} refused");
    assert_eq!(answers[20], "503", "the burst, then the rate");
    // Another address buys at once.
    let mut other = client_from([127, 0, 0, 3], http);
    other.send_raw(b"GET /buy/ticket?user=1000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut other.stream(), &mut reply).expect("answer");
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
}
