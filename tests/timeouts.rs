//! Time limits per connection state, over real sockets: slowloris clients (half-sent
//! requests) on both fronts are told and closed, so with `--max-conns` small good
//! clients are served again; idle connections and clients that never read are closed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{event, start_with, Client};
use ticketd::limits::Timeouts;
use ticketd_proto::{Status, FRAMING_ERROR_OP};

/// Reads until the server closes; returns what it sent. Panics after `limit`.
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            // A reset after unread input counts as closed too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("not closed within {limit:?}: {e}"),
        }
    }
}

fn limits(header: u64, idle_binary: u64, idle_http: u64, write: u64) -> Timeouts {
    let ms = |n: u64| (n > 0).then(|| Duration::from_millis(n));
    Timeouts {
        header: ms(header),
        idle_binary: ms(idle_binary),
        idle_http: ms(idle_http),
        write: ms(write),
    }
}

#[test]
fn http_slowloris_is_answered_408_and_closed_so_buyers_get_in_again() {
    let server = start_with(&[event(1, 100, 1)], |c| {
        c.http = Some("127.0.0.1:0".parse().unwrap());
        c.max_conns = 6;
        c.timeouts = limits(400, 0, 0, 0);
    });
    let http = server.http_addr().expect("http");
    // Six connections take every slot and never finish their request line.
    let mut slow: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(http).expect("connect");
            s.write_all(b"GET /buy/tick").expect("write");
            s
        })
        .collect();
    for s in &mut slow {
        let answer =
            String::from_utf8_lossy(&read_to_close(s, Duration::from_secs(10))).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout"),
            "{answer}"
        );
    }
    // The slots are free: a buyer is served.
    common::wait_until(|| {
        common::try_http_get(http, "/buy/ticket?user=1").is_ok_and(|(code, _)| code == 200)
    });
}

#[test]
fn a_half_sent_binary_frame_gets_the_framing_error_then_a_close() {
    let server = start_with(&[event(1, 100, 1)], |c| c.timeouts = limits(300, 0, 0, 0));
    let mut stream = TcpStream::connect(server.local_addr()).expect("connect");
    // A whole PING, then three bytes of a length prefix.
    stream
        .write_all(&[0, 0, 0, 9, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0])
        .expect("write");
    let got = read_to_close(&mut stream, Duration::from_secs(10));
    assert_eq!(
        got.len(),
        28,
        "the PING's answer, then the framing error: {got:?}"
    );
    assert_eq!(got[4], 0x81, "PING answered first");
    assert_eq!(got[18], FRAMING_ERROR_OP, "then the framing error");
    assert_eq!(got[27], Status::BadRequest.code());
    // A connection that sends whole frames is not bothered.
    let mut client = Client::connect(server.local_addr());
    for user in 0..3 {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(client.buy(1, user, 1).status, Status::Ok);
    }
}

#[test]
fn idle_connections_close_after_their_limit_and_binary_ones_stay_by_default() {
    let server = start_with(&[event(1, 100, 1)], |c| {
        c.http = Some("127.0.0.1:0".parse().unwrap());
        c.timeouts = limits(0, 300, 300, 0);
    });
    let mut idle = TcpStream::connect(server.local_addr()).expect("connect");
    let started = Instant::now();
    assert!(read_to_close(&mut idle, Duration::from_secs(10)).is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before its limit"
    );
    // HTTP keep-alive: answered, then closed once idle.
    let mut http = TcpStream::connect(server.http_addr().expect("http")).expect("connect");
    http.write_all(b"GET /buy/ticket?user=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let answer =
        String::from_utf8_lossy(&read_to_close(&mut http, Duration::from_secs(10))).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

    // The defaults: binary connections may idle (gateways keep pools).
    let patient = start_with(&[event(1, 100, 1)], |c| c.timeouts = Timeouts::DEFAULT);
    let mut client = Client::connect(patient.local_addr());
    client
        .stream()
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let idle_read = client.stream().read(&mut byte);
    assert!(
        matches!(&idle_read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "still open after 1.5 s idle: {idle_read:?}"
    );
    client
        .stream()
        .set_read_timeout(Some(common::IO_TIMEOUT))
        .expect("timeout");
    assert_eq!(client.buy(1, 1, 1).status, Status::Ok);
}

#[test]
fn a_client_that_never_reads_is_dropped_after_the_write_timeout() {
    let server = start_with(&[event(1, 1_000_000, 1)], |c| {
        c.admin = ticketd::config::AdminAddr::Given("127.0.0.1:0".parse().unwrap());
        c.timeouts = limits(0, 0, 0, 500);
    });
    let mut stream = TcpStream::connect(server.local_addr()).expect("connect");
    // STOCK requests until the server stops taking them (its output full, our receive
    // buffer full): then it waits for us, and we never read.
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let stock: Vec<u8> = [0, 0, 0, 13, 6, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1].to_vec();
    let burst: Vec<u8> = stock
        .iter()
        .copied()
        .cycle()
        .take(stock.len() * 4096)
        .collect();
    while stream.write_all(&burst).is_ok() {}
    let admin = server.admin_addr().expect("admin");
    common::wait_until(|| {
        common::http_get(admin, "/stats")
            .1
            .contains("ticketd_write_timeouts 1\n")
    });
    // The server's end is gone: reading drains what was sent, then ends.
    read_to_close(&mut stream, Duration::from_secs(10));
}

#[test]
fn binary_slowloris_holding_every_slot_is_closed_so_buyers_get_in_again() {
    let server = start_with(&[event(1, 100, 1)], |c| {
        c.max_conns = 4;
        c.timeouts = limits(300, 0, 0, 0);
    });
    let addr = server.local_addr();
    // Four connections take every slot (each answered a PING first, so it holds one),
    // then each sends half a frame and nothing more.
    let mut slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut client = Client::connect(addr);
            assert_eq!(client.call(ticketd_proto::Command::Ping).status, Status::Ok);
            let mut s = client.stream().try_clone().expect("clone");
            s.write_all(&[0, 0, 0, 23, 2, 0]).expect("write");
            s
        })
        .collect();
    // Every slot is held: a buyer is refused.
    assert_eq!(
        Client::connect(addr)
            .call(ticketd_proto::Command::Ping)
            .status,
        Status::Overloaded
    );
    for s in &mut slow {
        let got = read_to_close(s, Duration::from_secs(10));
        assert_eq!(
            got.get(4),
            Some(&FRAMING_ERROR_OP),
            "told, then closed: {got:?}"
        );
    }
    drop(slow);
    common::wait_until(|| {
        let mut buyer = Client::connect(addr);
        buyer.buy(1, 2, 1).status == Status::Ok
    });
}
