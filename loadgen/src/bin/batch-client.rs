//! A second, simpler client, to check loadgen's figures: blocking sockets, each
//! connection written a batch of `depth` BUYs (every one a new user) in one write, then
//! its `depth` answers read, and again, for the given time. No event loop, no
//! histograms, no checks beyond counting answers that are not OK — so where its rate
//! agrees with loadgen's, neither client's machinery is what was measured.
//!
//! `batch-client ADDR CONNS DEPTH SECONDS [EVENT] [THREADS]`
//!
//! The connections are split over THREADS blocking threads (default: one per
//! connection). A thread with several connections writes a batch on each of them, then
//! reads each one's answers in turn, so all its batches are in flight at once.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ticketd_proto::{Command, Purchase, Request};

/// Offset of the status byte in an answer frame: length (4), op (1), request id (8).
const STATUS_AT: usize = 13;

/// One connection and what it needs between batches.
struct Conn {
    stream: TcpStream,
    /// The connection's number, the top bits of its users.
    index: u64,
    batch: BytesMut,
    reply: Vec<u8>,
    have: usize,
}

impl Conn {
    fn open(addr: SocketAddr, index: u64, depth: u64) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            index,
            batch: BytesMut::with_capacity(27 * depth as usize),
            // Room for a whole batch of answers (an OK BUY is 22 bytes).
            reply: vec![0u8; 32 * depth as usize + 64],
            have: 0,
        })
    }

    /// Writes `depth` BUYs, each from a new user: connection, round, position.
    fn send_batch(&mut self, event: u32, round: u64, depth: u64) -> io::Result<()> {
        self.batch.clear();
        for i in 0..depth {
            let user = (self.index << 40) | (round << 16) | i;
            Request {
                req_id: i,
                command: Command::Buy(Purchase {
                    event,
                    user,
                    qty: 1,
                }),
            }
            .encode(&mut self.batch);
        }
        self.stream.write_all(&self.batch)
    }

    /// Reads `depth` answers; returns how many were not OK.
    fn read_answers(&mut self, depth: u64) -> io::Result<u64> {
        let (mut got, mut not_ok) = (0u64, 0u64);
        while got < depth {
            let n = self.stream.read(&mut self.reply[self.have..])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.have += n;
            let mut at = 0;
            // Only the bytes received so far: the buffer past them holds old answers.
            while let Some(prefix) = self.reply[..self.have].get(at..at + 4) {
                let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
                if len < STATUS_AT + 1 - 4 {
                    // Shorter than op, request id and status: not an answer.
                    return Err(io::ErrorKind::InvalidData.into());
                }
                if self.have < at + 4 + len {
                    break;
                }
                if self.reply[at + STATUS_AT] != 0 {
                    not_ok += 1;
                }
                got += 1;
                at += 4 + len;
            }
            if at == 0 && self.have == self.reply.len() {
                // A frame larger than the whole buffer is not an answer to a BUY.
                return Err(io::ErrorKind::InvalidData.into());
            }
            self.reply.copy_within(at..self.have, 0);
            self.have -= at;
        }
        Ok(not_ok)
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: batch-client ADDR CONNS DEPTH SECONDS [EVENT] [THREADS]",
        )
    };
    let addr: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let conns: u64 = args.get(2).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let depth: u64 = args.get(3).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let seconds: f64 = args.get(4).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let event: u32 = match args.get(5) {
        Some(a) => a.parse().map_err(|_| usage())?,
        None => 1,
    };
    let threads: u64 = match args.get(6) {
        Some(a) => a.parse().map_err(|_| usage())?,
        None => conns,
    };
    if conns == 0 || depth == 0 || threads == 0 || depth >= 1 << 16 {
        return Err(usage());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let not_ok = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads.min(conns))
        .map(|t| {
            let (stop, answered, not_ok) = (
                Arc::clone(&stop),
                Arc::clone(&answered),
                Arc::clone(&not_ok),
            );
            let mine: Vec<u64> = (0..conns).filter(|c| c % threads == t).collect();
            std::thread::spawn(move || -> io::Result<()> {
                let mut conns = mine
                    .into_iter()
                    .map(|c| Conn::open(addr, c, depth))
                    .collect::<io::Result<Vec<_>>>()?;
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for conn in &mut conns {
                        conn.send_batch(event, round, depth)?;
                    }
                    for conn in &mut conns {
                        let refused = conn.read_answers(depth)?;
                        // Counted together, so the totals read at the end agree.
                        not_ok.fetch_add(refused, Ordering::Relaxed);
                        answered.fetch_add(depth, Ordering::Relaxed);
                    }
                    round += 1;
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let counted = answered.load(Ordering::Relaxed);
    let refused = not_ok.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut failed = false;
    for worker in workers {
        if let Ok(Err(e)) = worker.join() {
            eprintln!("batch-client: a connection failed: {e}");
            failed = true;
        }
    }
    println!(
        "{counted} answered in {elapsed:.2} s: {:.0} requests/s ({refused} not OK)",
        counted as f64 / elapsed,
    );
    if failed {
        return Err(io::Error::other("a connection failed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use ticketd_proto::{Op, Response, ResultBody};

    use super::*;

    /// A server that answers each BUY OK, writing its answers a few bytes at a time, so
    /// the client often holds part of a frame (or of its length) between reads.
    fn trickling_server(depth: u64, rounds: u64, piece: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_nodelay(true).unwrap();
            let mut answers = BytesMut::new();
            for i in 0..depth * rounds {
                let body = ResultBody::Order { order_id: i + 1 };
                Response::ok(Op::Buy, i % depth, body).encode(&mut answers);
            }
            let request_len = answers.len() / (depth * rounds) as usize;
            let mut sink = vec![0u8; 64 << 10];
            for round in 0..rounds as usize {
                // Wait for the round's batch, then trickle its answers.
                let _ = stream.read(&mut sink);
                let start = round * depth as usize * request_len;
                let end = start + depth as usize * request_len;
                for chunk in answers[start..end].chunks(piece) {
                    stream.write_all(chunk).unwrap();
                    stream.flush().unwrap();
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        addr
    }

    #[test]
    fn answers_arriving_in_pieces_are_counted_whole_round_after_round() {
        let (depth, rounds) = (8, 4);
        for piece in [1, 3, 7, 23] {
            let addr = trickling_server(depth, rounds, piece);
            let mut conn = Conn::open(addr, 0, depth).unwrap();
            for round in 0..rounds {
                conn.send_batch(1, round, depth).unwrap();
                assert_eq!(
                    conn.read_answers(depth).unwrap(),
                    0,
                    "piece {piece} round {round}"
                );
            }
        }
    }

    #[test]
    fn a_frame_too_short_to_hold_a_status_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // A length of 2: op and one byte, no request id or status.
            stream.write_all(&[0, 0, 0, 2, 0x81, 0]).unwrap();
            std::thread::sleep(Duration::from_millis(500));
        });
        let mut conn = Conn::open(addr, 0, 1).unwrap();
        let error = conn.read_answers(1).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
