//! The HTTP compatibility endpoint over real sockets: HTTP/1.0 and keep-alive HTTP/1.1,
//! the prototypes' JSON, answers in request order, errors.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{event, start_with, IO_TIMEOUT};

/// A server with `--http-anonymous`, as the benchmarks run it: a BUY without `user=`
/// is a fresh buyer.
fn http_server(stock: i64) -> ticketd::ServerHandle {
    start_with(&[event(1, stock, 1), event(2, 5, 1)], |c| {
        c.shards = 4;
        c.http = Some("127.0.0.1:0".parse().unwrap());
        c.http_anonymous = true;
    })
}

/// Sends `request` on a fresh connection and reads until the server closes it.
fn exchange_until_close(server: &ticketd::ServerHandle, request: &[u8]) -> String {
    let mut stream = connect(server);
    stream.write_all(request).unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

fn connect(server: &ticketd::ServerHandle) -> TcpStream {
    let stream = TcpStream::connect(server.http_addr().expect("http enabled")).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Reads one response: head and exactly Content-Length body bytes.
fn read_response(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> (String, String) {
    loop {
        if let Some(end) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buffered[..end].to_vec()).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("Content-Length")
                .parse()
                .unwrap();
            if buffered.len() >= end + 4 + len {
                let body = String::from_utf8(buffered[end + 4..end + 4 + len].to_vec()).unwrap();
                buffered.drain(..end + 4 + len);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a whole response");
        buffered.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn http10_answers_once_and_closes() {
    let server = http_server(10);
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /buy/ticket HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.0 200 OK\r\n"), "{all}");
    assert!(all.contains("Content-Type: application/json\r\n"));
    assert!(all.ends_with(",\"data\":null}"), "{all}");
    assert!(all.contains("{\"code\":1,\"msg\":\"order "), "{all}");
}

#[test]
fn keep_alive_pipelined_requests_are_answered_in_order_until_sold_out() {
    let server = http_server(3);
    let mut stream = connect(&server);
    // Anonymous users spread over every shard, so some answers are decided elsewhere;
    // they must still come back in request order.
    let mut wire = String::new();
    for _ in 0..5 {
        wire.push_str("GET /buy/ticket HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    wire.push_str("GET /buy/ticket?event=2&user=7 HTTP/1.1\r\n\r\n");
    wire.push_str("GET /buy/ticket?event=2&user=7 HTTP/1.1\r\n\r\n");
    wire.push_str("GET /nowhere HTTP/1.1\r\n\r\n");
    wire.push_str("GET /buy/ticket?event=9 HTTP/1.1\r\n\r\n");
    wire.push_str("GET /buy/ticket?user=abc HTTP/1.1\r\nConnection: close\r\n\r\n");
    stream.write_all(wire.as_bytes()).unwrap();
    let mut buffered = Vec::new();
    let codes: Vec<String> = (0..10)
        .map(|_| {
            let (head, body) = read_response(&mut stream, &mut buffered);
            let status = head.split(' ').nth(1).unwrap().to_string();
            let code = body
                .split(',')
                .next()
                .unwrap()
                .trim_start_matches("{\"code\":")
                .to_string();
            format!("{status} {code}")
        })
        .collect();
    assert_eq!(
        codes,
        [
            "200 1", "200 1", "200 1", "200 -1",
            "200 -1", // event 1: 3 tickets, then sold out
            "200 1", "200 -2", // user 7 on event 2: one ticket, then the limit
            "404 -5", "404 -3", "400 -5",
        ]
    );
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after Connection: close");
    let summary = server.shutdown();
    assert_eq!(summary.event(1).unwrap().sold, 3);
    assert_eq!(summary.event(2).unwrap().sold, 1);
}

#[test]
fn garbage_gets_400_and_a_close_and_binary_port_is_unaffected() {
    let server = http_server(10);
    let mut stream = connect(&server);
    stream
        .write_all(b"\x00\x00\x00\x09\x01garbage\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{all}");
    let mut client = common::Client::connect(server.local_addr());
    assert_eq!(client.stock(1), (10, 10));
}

#[test]
fn http_connections_over_max_conns_get_503_and_a_close() {
    let server = start_with(&[event(1, 10, 1)], |c| {
        c.shards = 1;
        c.max_conns = 1;
        c.http = Some("127.0.0.1:0".parse().unwrap());
        c.http_anonymous = true;
    });
    let mut held = connect(&server);
    held.write_all(b"GET /buy/ticket HTTP/1.1\r\n\r\n").unwrap();
    let mut buffered = Vec::new();
    let (head, _) = read_response(&mut held, &mut buffered);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let mut extra = connect(&server);
    extra
        .write_all(b"GET /buy/ticket HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    extra.read_to_string(&mut all).unwrap();
    assert!(
        all.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{all}"
    );
    assert!(all.ends_with("{\"code\":-7,\"msg\":\"overloaded; retry later\",\"data\":null}"));
    let summary = server.shutdown();
    assert_eq!(summary.event(1).unwrap().sold, 1, "shed before any work");
}

#[test]
fn a_long_keep_alive_pipeline_is_answered_in_full_and_in_order() {
    // 3,000 pipelined requests (~120 KB) for anonymous users spread over four shards:
    // requests queue unparsed behind ones decided elsewhere, past the input high-water
    // mark, so reading pauses and resumes. Every one must be answered, in order.
    let server = http_server(1_000);
    let mut stream = connect(&server);
    let requests = 3_000;
    let wire = "GET /buy/ticket HTTP/1.1\r\nHost: t\r\n\r\n".repeat(requests);
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || stream.write_all(wire.as_bytes()).unwrap())
    };
    let mut buffered = Vec::new();
    let mut codes = Vec::new();
    for _ in 0..requests {
        let (_, body) = read_response(&mut stream, &mut buffered);
        codes.push(body.split(',').next().unwrap().to_string());
    }
    writer.join().unwrap();
    // Orders are decided in request order: the first 1,000 sell, the rest are sold out.
    assert!(codes[..1_000].iter().all(|c| c == "{\"code\":1"));
    assert!(codes[1_000..].iter().all(|c| c == "{\"code\":-1"));
    assert_eq!(server.shutdown().event(1).unwrap().sold, 1_000);
}

#[test]
fn without_http_anonymous_a_buy_must_name_its_user() {
    let server = start_with(&[event(1, 10, 1)], |c| {
        c.shards = 2;
        c.http = Some("127.0.0.1:0".parse().unwrap());
    });
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /buy/ticket HTTP/1.1\r\n\r\nGET /buy/ticket?user=5 HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut buffered = Vec::new();
    let (head, body) = read_response(&mut stream, &mut buffered);
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert!(body.contains("user= is required"), "{body}");
    let (head, body) = read_response(&mut stream, &mut buffered);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(body.starts_with("{\"code\":1,"), "{body}");
    assert_eq!(server.shutdown().event(1).unwrap().sold, 1);
}

#[test]
fn oversized_heads_get_431_and_smuggling_shapes_400_then_a_close() {
    let server = http_server(10);
    // A whole head of ~60 KB, arriving at once: over the 8 KiB limit all the same.
    let big = format!(
        "GET /buy/ticket?user=1 HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(60_000)
    );
    let answer = exchange_until_close(&server, big.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
    for request in [
        "GET /buy/ticket?user=2 HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        "GET /buy/ticket?user=3 HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let answer = exchange_until_close(&server, request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    }
    assert_eq!(
        server.shutdown().event(1).unwrap().sold,
        0,
        "none was served"
    );
}

#[test]
fn pipelined_requests_on_a_journaled_server_are_answered_without_waiting_for_a_timer() {
    // Each answer waits for its journal record; the next request's record must then be
    // written at once (it once waited for the next wake-up, about a second each).
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::start_with(&[common::event(1, 1_000, 1)], |c| {
        c.http = Some("127.0.0.1:0".parse().unwrap());
        c.journal = Some(ticketd::config::JournalConfig::new(dir.path()));
    });
    let mut stream = std::net::TcpStream::connect(server.http_addr().expect("http")).unwrap();
    let wire: String = (0..100)
        .map(|u| format!("GET /buy/ticket?user={u} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    std::io::Write::write_all(&mut stream, wire.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut got = String::new();
    let mut chunk = [0u8; 65536];
    let started = std::time::Instant::now();
    while got.matches("HTTP/1.1 200 OK").count() < 100 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "100 answers take milliseconds; waiting for a timer each took ~20 s"
        );
        let n = std::io::Read::read(&mut stream, &mut chunk)
            .expect("all 100 answered within 5 s (waiting for a timer each took ~20 s)");
        assert!(n > 0, "closed early");
        got.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
}
