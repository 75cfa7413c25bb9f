//! A second, simpler client, to check loadgen's figures: one blocking thread per
//! connection, each writing a batch of `depth` BUYs (every one a new user) in one write,
//! reading their `depth` answers, and again, for the given time. No event loop, no
//! histograms, no checks beyond counting answers by status — so where its rate agrees
//! with loadgen's, neither client's machinery is what was measured.
//!
//! `batch-client ADDR CONNS DEPTH SECONDS [EVENT]`

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ticketd_proto::{Command, Purchase, Request};

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: batch-client ADDR CONNS DEPTH SECONDS [EVENT]",
        )
    };
    let addr: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let conns: u64 = args.get(2).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let depth: u64 = args.get(3).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let seconds: f64 = args.get(4).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let event: u32 = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(1);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let (stop, answered, ok) = (Arc::clone(&stop), Arc::clone(&answered), Arc::clone(&ok));
            std::thread::spawn(move || -> io::Result<()> {
                let mut stream = TcpStream::connect(addr)?;
                stream.set_nodelay(true)?;
                let mut batch = BytesMut::with_capacity(27 * depth as usize);
                // Room for a whole batch of answers (an OK BUY is 22 bytes).
                let mut reply = vec![0u8; 32 * depth as usize + 64];
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    batch.clear();
                    for i in 0..depth {
                        // A new user for every request: connection, round, position.
                        let user = (c << 40) | (round << 16) | i;
                        Request {
                            req_id: i,
                            command: Command::Buy(Purchase {
                                event,
                                user,
                                qty: 1,
                            }),
                        }
                        .encode(&mut batch);
                    }
                    stream.write_all(&batch)?;
                    let (mut got, mut have) = (0u64, 0usize);
                    while got < depth {
                        let n = stream.read(&mut reply[have..])?;
                        if n == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        have += n;
                        let mut at = 0;
                        while let Some(prefix) = reply.get(at..at + 4) {
                            let len =
                                u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]])
                                    as usize;
                            if have < at + 4 + len {
                                break;
                            }
                            if reply[at + 13] == 0 {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            got += 1;
                            at += 4 + len;
                        }
                        reply.copy_within(at..have, 0);
                        have -= at;
                    }
                    answered.fetch_add(depth, Ordering::Relaxed);
                    round += 1;
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let counted = answered.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        if let Ok(Err(e)) = thread.join() {
            eprintln!("batch-client: a connection failed: {e}");
        }
    }
    println!(
        "{counted} answered in {elapsed:.2} s: {:.0} requests/s ({} OK)",
        counted as f64 / elapsed,
        ok.load(Ordering::Relaxed)
    );
    Ok(())
}
