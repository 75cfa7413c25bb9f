//! A client that never reads its answers stalls only itself.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{event, frame, start, Client};
use ticketd_proto::{Command, Status};

#[test]
fn a_client_that_never_reads_does_not_slow_the_others() {
    let server = start(&[event(1, 1_000_000, 1)], 1);
    let addr = server.local_addr();

    // The hog pipelines STOCK requests (26-byte answers) as fast as it can and never
    // reads. Its kernel buffers fill, the server's output for it passes the high-water
    // mark, and the server stops reading it.
    let stop = Arc::new(AtomicBool::new(false));
    let hog = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream
                .set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut args = Vec::new();
            args.extend_from_slice(&1u32.to_be_bytes());
            let batch = frame(0x06, 1, &args).repeat(4_096);
            let mut written = 0usize;
            while !stop.load(Ordering::Relaxed) {
                match stream.write(&batch) {
                    Ok(n) => written += n,
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // If the server kept reading (buffering answers without bound), this write
            // would go through; with back-pressure every buffer on the way is full.
            let blocked = stream.write(&batch).is_err();
            (stream, written, blocked)
        })
    };

    // Meanwhile, on the same single shard, other clients are served in full.
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
    stop.store(true, Ordering::Relaxed);
    let (hog_stream, written, blocked) = hog.join().unwrap();
    assert!(
        blocked,
        "the server kept reading a client that never reads ({written} bytes taken)"
    );
    drop(hog_stream);
    // The hog's connection is gone; the shard is still healthy.
    assert_eq!(others[0].call(Command::Ping).status, Status::Ok);
}
