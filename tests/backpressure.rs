//! A client that never reads its answers stalls only itself.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{event, frame, start, Client, IO_TIMEOUT};
use ticketd_proto::{Command, Status};

/// Writes until a write blocks for `stall` (every buffer on the way is full).
/// Returns false if that never happens within `limit`.
fn write_until_blocked(stream: &mut TcpStream, batch: &[u8], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if stream.write(batch).is_err() {
            return true;
        }
    }
    false
}

#[test]
fn a_client_that_never_reads_does_not_slow_the_others() {
    let server = start(&[event(1, 1_000_000, 1)], 1);
    let addr = server.local_addr();

    // The hog pipelines STOCK requests (26-byte answers) and never reads. With
    // back-pressure the server stops reading it once its unsent answers pass the
    // high-water mark, so the hog's writes soon block. Without it the server would read
    // and buffer answers without bound, and the hog would never block.
    let (blocked_tx, blocked_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let hog = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let batch = frame(0x06, 1, &1u32.to_be_bytes()).repeat(4_096);
        let blocked = write_until_blocked(&mut stream, &batch, IO_TIMEOUT);
        blocked_tx.send(blocked).unwrap();
        // Keep the connection (and its full buffers) while the others are served.
        let _ = done_rx.recv_timeout(IO_TIMEOUT);
        stream.write(&batch).is_err()
    });
    let blocked = blocked_rx
        .recv_timeout(IO_TIMEOUT + Duration::from_secs(5))
        .unwrap();
    assert!(blocked, "the server kept reading a client that never reads");

    // The shard is the hog's shard too (one shard), and serves everyone else in full.
    let mut others: Vec<Client> = (0..4).map(|_| Client::connect(addr)).collect();
    for round in 0..500u64 {
        for (i, client) in others.iter_mut().enumerate() {
            if round % 100 == 0 {
                let user = round * 10 + i as u64;
                assert_eq!(client.buy(1, user, 1).status, Status::Ok);
            }
            assert_eq!(client.call(Command::Ping).status, Status::Ok);
        }
    }
    done_tx.send(()).unwrap();
    assert!(
        hog.join().unwrap(),
        "the hog was read again without reading its answers"
    );
    // Its connection is gone now; the shard is still healthy.
    assert_eq!(others[0].call(Command::Ping).status, Status::Ok);
}
