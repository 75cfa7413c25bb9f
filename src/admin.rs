//! The admin endpoint (`--admin HOST:PORT`, on `127.0.0.1:9464` unless told otherwise):
//! `GET /metrics` (Prometheus), `GET /healthz` (the process answers), `GET /readyz` (200
//! when the node can sell everything it was started to, 503 with one reason per line when
//! not) and `GET /stats` (a few counters as `name value` lines, for scripts). One plain
//! thread with blocking sockets, off the shards' loops: scrapes and probes are rare, and
//! a scrape only reads the shards' counters.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::metrics::{NodeMetrics, CONTENT_TYPE};
use crate::readiness::Readiness;
use crate::stats::NodeStats;

/// What the endpoint reads from.
#[derive(Debug)]
pub struct AdminViews {
    pub readiness: Arc<Readiness>,
    pub stats: Arc<NodeStats>,
    pub metrics: NodeMetrics,
    pub node_id: u16,
}

/// Longest a probe may take to send its request or read its answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How often the accept loop looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// A running admin endpoint; dropping it stops the thread.
#[derive(Debug)]
pub struct Admin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    /// Serves on `listener` (already bound, so a bind error is the caller's to report).
    pub fn start(listener: TcpListener, views: AdminViews) -> std::io::Result<Admin> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ticketd-admin".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => answer(stream, &views),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(STOP_POLL)
                        }
                        Err(_) => std::thread::sleep(STOP_POLL),
                    }
                }
            })?;
        Ok(Admin {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(mut stream: TcpStream, views: &AdminViews) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let path = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                break match request.method {
                    Some("GET") => request.path.map(str::to_owned),
                    _ => None,
                }
            }
            Ok(httparse::Status::Partial) if head.len() <= MAX_HEAD => {}
            _ => break None,
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    };
    let mut content_type = "text/plain; charset=utf-8";
    let (status, body) = match path.as_deref() {
        Some("/metrics") => {
            content_type = CONTENT_TYPE;
            ("200 OK", views.metrics.render())
        }
        Some("/healthz") => ("200 OK", "ok\n".to_owned()),
        Some("/readyz") => {
            let problems = views.readiness.problems();
            if problems.is_empty() {
                ("200 OK", "ready\n".to_owned())
            } else {
                ("503 Service Unavailable", problems.join("\n") + "\n")
            }
        }
        Some("/stats") => ("200 OK", views.stats.render(views.node_id)),
        Some(_) => (
            "404 Not Found",
            "try /metrics, /healthz, /readyz or /stats\n".to_owned(),
        ),
        None => (
            "400 Bad Request",
            "GET /metrics, /healthz, /readyz or /stats\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}
