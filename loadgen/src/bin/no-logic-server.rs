//! The bench's ceiling: a server with no logic at all. One thread, one `mio` loop,
//! edge-triggered reads into one buffer, and for every whole request frame a fixed
//! answer of the size ticketd's cheapest answers have — SOLD_OUT for BUY and RESERVE
//! (what a sold-out ticketd answers, byte for byte), OK for PING, CANCEL and AUTH,
//! NOT_FOUND for the rest (so every answer is valid for its op). Under the
//! same client it shows what the kernel and the client allow, so ticketd's figures can
//! be read as a fraction of that.
//!
//! `no-logic-server [HOST:PORT]` (default 127.0.0.1:17990); stops on SIGINT/SIGTERM.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(0);
const MAX_FRAME: usize = 1024;

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
}

fn main() -> io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:17990".into())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("address: {e}")))?;
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("no-logic-server listening on {}", listener.local_addr()?);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 1usize;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    let _ = stream.set_nodelay(true);
                    poll.registry().register(
                        &mut stream,
                        Token(next),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    conns.insert(
                        next,
                        Conn {
                            stream,
                            input: Vec::new(),
                            output: Vec::new(),
                        },
                    );
                    next += 1;
                }
                continue;
            }
            let key = event.token().0;
            let Some(conn) = conns.get_mut(&key) else {
                continue;
            };
            if !serve(conn, &mut scratch) {
                if let Some(mut gone) = conns.remove(&key) {
                    let _ = poll.registry().deregister(&mut gone.stream);
                }
            }
        }
    }
}

/// Reads what is there, answers every whole frame, writes; false once the peer is gone.
fn serve(conn: &mut Conn, scratch: &mut [u8]) -> bool {
    loop {
        match conn.stream.read(scratch) {
            Ok(0) => return false,
            Ok(n) => conn.input.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    let mut at = 0;
    while let Some(prefix) = conn.input.get(at..at + 4) {
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if !(9..=MAX_FRAME).contains(&len) {
            return false;
        }
        let Some(body) = conn.input.get(at + 4..at + 4 + len) else {
            break;
        };
        let op = body[0];
        // A valid answer without result bytes for every op: SOLD_OUT for BUY and
        // RESERVE, OK where OK carries nothing (PING, CANCEL, AUTH), NOT_FOUND otherwise.
        let status = match op {
            0x02 | 0x03 => 1,
            0x01 | 0x05 | 0x07 => 0,
            _ => 3,
        };
        conn.output.extend_from_slice(&10u32.to_be_bytes());
        conn.output.push(op | 0x80);
        conn.output.extend_from_slice(&body[1..9]);
        conn.output.push(status);
        at += 4 + len;
    }
    conn.input.drain(..at);
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(0) => return false,
            Ok(n) => {
                conn.output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
