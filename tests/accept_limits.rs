//! More connections than a node may hold, against a real process with a small
//! open-file limit (`prlimit --nofile`): the ones it holds keep being served, the
//! rest are answered OVERLOADED or closed, and the log does not fill with retries.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{frame, TicketdProcess};

/// What became of a connection that sent one PING.
#[derive(Debug, Default)]
struct Outcomes {
    ok: usize,
    overloaded: usize,
    closed: usize,
    silent: usize,
}

/// Opens `n` connections, sends a PING on each, and sorts them by what came back
/// within `wait`. Returns the outcomes and the connections answered OK (still held).
fn storm(addr: std::net::SocketAddr, n: usize, wait: Duration) -> (Outcomes, Vec<TcpStream>) {
    let ping = frame(0x01, 1, &[]);
    let mut streams: Vec<Option<TcpStream>> = (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect (the kernel's backlog)");
            s.write_all(&ping).unwrap();
            s.set_nonblocking(true).unwrap();
            Some(s)
        })
        .collect();
    let mut outcomes = Outcomes::default();
    let mut held = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline && streams.iter().any(Option::is_some) {
        for slot in streams.iter_mut() {
            let Some(stream) = slot else { continue };
            match stream.read(&mut buf) {
                // A whole PING answer is 14 bytes; status is the last.
                Ok(n) if n >= 14 => {
                    match buf[13] {
                        0 => outcomes.ok += 1,
                        7 => outcomes.overloaded += 1,
                        other => panic!("status {other}"),
                    }
                    let stream = slot.take().unwrap();
                    if buf[13] == 0 {
                        held.push(stream);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // Closed (EOF or reset) without an answer.
                Ok(0) | Err(_) => {
                    outcomes.closed += 1;
                    *slot = None;
                }
                // Part of an answer: the rest comes on a later sweep.
                Ok(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    outcomes.silent = streams.iter().filter(|s| s.is_some()).count();
    eprintln!("{n} connections: {outcomes:?}");
    (outcomes, held)
}

fn spawn_with_nofile(nofile: u32, args: &[&str]) -> TicketdProcess {
    let limit = format!("--nofile={nofile}");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    TicketdProcess::try_spawn_wrapped(&["prlimit", &limit, "--"], &args)
        .expect("ticketd starts under prlimit")
}

#[test]
fn by_default_the_node_never_runs_out_of_descriptors_and_stays_quiet() {
    // 300 descriptors, two shards: --max-conns defaults to 300 - 64 - 2 x 80 = 76.
    let server = spawn_with_nofile(300, &["--shards", "2", "--event", "1:10"]);
    assert!(
        server.log_text().contains("max_conns=76"),
        "{}",
        server.log_text()
    );
    let (outcomes, mut held) = storm(server.addr, 400, Duration::from_secs(5));
    assert_eq!(outcomes.ok, 76, "{outcomes:?}");
    assert_eq!(
        outcomes.silent, 0,
        "every connection is answered or closed: {outcomes:?}"
    );
    assert!(outcomes.overloaded >= 1, "{outcomes:?}");
    // The held ones are still served.
    for stream in held.iter_mut().take(5) {
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
        stream.write_all(&frame(0x01, 2, &[])).unwrap();
        let mut answer = [0u8; 14];
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(answer[13], 0);
    }
    let log = server.log_text();
    assert!(!log.contains("cannot accept"), "{log}");
}

#[test]
fn a_max_conns_above_the_descriptors_logs_once_per_episode_and_keeps_serving() {
    let server = spawn_with_nofile(
        200,
        &["--shards", "1", "--event", "1:10", "--max-conns", "1000"],
    );
    let (first, mut held) = storm(server.addr, 300, Duration::from_secs(2));
    assert!(first.ok > 50 && first.silent > 0, "{first:?}");
    let stream = held.first_mut().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
    stream.write_all(&frame(0x01, 2, &[])).unwrap();
    let mut answer = [0u8; 14];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(answer[13], 0, "a held connection is still served");
    let warnings = server.log_text().matches("cannot accept").count();
    assert_eq!(
        warnings,
        1,
        "one warning for the episode:\n{}",
        server.log_text()
    );
    // Freeing connections ends the episode; the backlog is accepted.
    drop(held);
    common::wait_until(|| server.log_text().contains("accepting connections again"));
}
