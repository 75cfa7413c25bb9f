//! A small blocking client for the integration tests, written on the `ticketd-proto`
//! crate, plus helpers to start servers on loopback.
#![allow(dead_code)] // each test binary uses a different part

pub mod cluster;
pub mod redis_server;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use ticketd::{Config, EventSpec, ServerHandle};
use ticketd_proto::{
    decode_response, Command, Purchase, Request, Response, ResultBody, Status, DEFAULT_MAX_FRAME,
};

/// Upper bound on any single wait in a test; a hung server fails instead of hanging CI.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub fn event(id: u32, stock: i64, per_user_limit: u16) -> EventSpec {
    EventSpec {
        id,
        stock,
        per_user_limit,
    }
}

/// Starts a node on 127.0.0.1:0 with `shards` shards.
pub fn start(events: &[EventSpec], shards: usize) -> ServerHandle {
    start_with(events, |c| c.shards = shards)
}

pub fn start_with(events: &[EventSpec], tweak: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut config = Config::new(events.to_vec());
    config.shards = 2;
    tweak(&mut config);
    ticketd::start(config).expect("server starts")
}

pub struct Client {
    stream: TcpStream,
    input: BytesMut,
    next_req_id: u64,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            input: BytesMut::new(),
            next_req_id: 1,
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn next_req_id(&mut self) -> u64 {
        let id = self.next_req_id;
        self.next_req_id += 1;
        id
    }

    pub fn send(&mut self, request: Request) {
        let mut buf = BytesMut::new();
        request.encode(&mut buf);
        self.send_raw(&buf);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next response, or `None` if the server closed the connection cleanly.
    pub fn try_recv(&mut self) -> Option<Response> {
        loop {
            match decode_response(&self.input, DEFAULT_MAX_FRAME) {
                Ok((response, used)) => {
                    self.input.advance(used);
                    return Some(response);
                }
                Err(ticketd_proto::DecodeError::Incomplete) => {}
                Err(e) => panic!("server sent a malformed response: {e}"),
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("read (timed out?)");
            if n == 0 {
                assert!(self.input.is_empty(), "connection closed mid-frame");
                return None;
            }
            self.input.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn recv(&mut self) -> Response {
        self.try_recv().expect("a response, not EOF")
    }

    /// Asserts the server closes the connection without sending anything more.
    pub fn expect_eof(&mut self) {
        assert_eq!(self.try_recv(), None, "expected the server to close");
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, command: Command) -> Response {
        let req_id = self.next_req_id();
        self.send(Request { req_id, command });
        let response = self.recv();
        assert_eq!(response.req_id, req_id, "response to another request");
        assert_eq!(response.request_op(), Some(command.op()));
        response
    }

    pub fn buy(&mut self, event: u32, user: u64, qty: u16) -> Response {
        self.call(Command::Buy(Purchase { event, user, qty }))
    }

    pub fn reserve(&mut self, event: u32, user: u64, qty: u16) -> Response {
        self.call(Command::Reserve(Purchase { event, user, qty }))
    }

    pub fn confirm(&mut self, hold_id: u64) -> Response {
        self.call(Command::Confirm { hold_id })
    }

    pub fn cancel(&mut self, hold_id: u64) -> Response {
        self.call(Command::Cancel { hold_id })
    }

    /// ORDERS: `(order_id, qty)` of each of `user`'s orders of `event`, oldest first.
    pub fn orders(&mut self, event: u32, user: u64) -> Vec<(u64, u16)> {
        match self.call(Command::Orders { event, user }) {
            Response {
                status: Status::Ok,
                result: ResultBody::Orders(list),
                ..
            } => list.0,
            other => panic!("ORDERS failed: {other:?}"),
        }
    }

    /// (total, remaining)
    pub fn stock(&mut self, event: u32) -> (i64, i64) {
        match self.call(Command::Stock { event }) {
            Response {
                status: Status::Ok,
                result: ResultBody::Stock { total, remaining },
                ..
            } => (total, remaining),
            other => panic!("STOCK failed: {other:?}"),
        }
    }
}

/// A one-ticket BUY of event 1 for `user`, as request `req_id`.
pub fn buy_request(req_id: u64, user: u64) -> Request {
    Request {
        req_id,
        command: Command::Buy(Purchase {
            event: 1,
            user,
            qty: 1,
        }),
    }
}

pub fn order_id(response: &Response) -> u64 {
    match (response.status, response.result.clone()) {
        (Status::Ok, ResultBody::Order { order_id }) => order_id,
        _ => panic!("expected an order, got {response:?}"),
    }
}

pub fn hold(response: &Response) -> (u64, u64) {
    match (response.status, response.result.clone()) {
        (
            Status::Ok,
            ResultBody::Hold {
                hold_id,
                expires_unix_ms,
            },
        ) => (hold_id, expires_unix_ms),
        _ => panic!("expected a hold, got {response:?}"),
    }
}

/// Frame bytes for a raw request body (op, req_id, args) with the right length prefix.
pub fn frame(op: u8, req_id: u64, args: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(9 + args.len() as u32).to_be_bytes());
    out.push(op);
    out.extend_from_slice(&req_id.to_be_bytes());
    out.extend_from_slice(args);
    out
}

/// Polls `condition` until it holds, failing the test after [`IO_TIMEOUT`]. For things
/// that take real time (hold expiry, a closed slot being noticed), never for start-up.
pub fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "condition never held");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `which` (`-STOP`, `-CONT`, `-TERM`, …) to `pid` with kill(1).
pub fn signal(pid: u32, which: &str) {
    let sent = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill {which} {pid}");
}

/// Freezes `pid` (SIGSTOP) and returns once it is frozen (see [`wait_stopped`]).
pub fn freeze(pid: u32) {
    signal(pid, "-STOP");
    wait_stopped(pid);
}

/// The value of the sample written exactly `series` (name and labels as exposed) in a
/// `/metrics` body.
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until every thread of `pid` is stopped: `kill -STOP` returns once the signal is
/// queued, and on a loaded host a thread may still read what is sent right after.
pub fn wait_stopped(pid: u32) {
    let all_stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                // The state follows the parenthesised name.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
        })
    };
    wait_until(all_stopped);
}

/// `GET path` over plain HTTP/1.1 (the admin endpoint): the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// [`http_get`] that reports a failed exchange (refused, reset) instead of panicking.
pub fn try_http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut all = String::new();
    stream
        .read_to_string(&mut all)
        .map_err(|e| format!("read to close: {e}"))?;
    let code = all
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line: {all:?}"))?;
    let body = all.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((code, body))
}

/// The address logged as `name=ADDR` in the start-up line of a process.
pub fn logged_addr(log: &str, name: &str) -> SocketAddr {
    log.split(&format!(" {name}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {name} address in the log:\n{log}"))
}

/// Runs a `ticketd` subcommand (`create-events`, `audit`, …) to completion; its exit
/// status and stdout, or stderr on failure.
pub fn ticketd_tool(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ticketd"))
        .args(args)
        .output()
        .expect("ticketd runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `ticketd create-events --redis <addr> --event <spec>…`, which must succeed.
pub fn create_events(redis: SocketAddr, specs: &[&str], extra: &[&str]) -> String {
    let url = format!("redis://{redis}");
    let mut args = vec!["create-events", "--redis", url.as_str()];
    for spec in specs {
        args.extend(["--event", spec]);
    }
    args.extend(extra);
    ticketd_tool(&args).unwrap_or_else(|e| panic!("create-events {specs:?}: {e}"))
}

/// A ticketd process, killed (SIGKILL) when dropped unless it already exited.
pub struct TicketdProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// Every log line so far (stderr).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The private data dir made for it, when the caller gave none.
    _data_dir: Option<tempfile::TempDir>,
}

impl TicketdProcess {
    /// Starts the binary with `--listen 127.0.0.1:0` and `args`, and reads the address
    /// from its start-up log line (no sleeping). Without `--data-dir` (or `--redis`) in
    /// `args`, it gets a private temporary data dir.
    pub fn spawn(args: &[String]) -> TicketdProcess {
        match Self::try_spawn(args) {
            Ok(process) => process,
            Err(log) => panic!("ticketd exited before starting:\n{log}"),
        }
    }

    /// Starts the binary on data dir `dir`.
    pub fn spawn_in(dir: &std::path::Path, args: &[&str]) -> TicketdProcess {
        let mut all = vec!["--data-dir".to_owned(), dir.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        Self::spawn(&all)
    }

    /// Like [`TicketdProcess::spawn`]; a process that exits before it starts gives its
    /// log instead.
    pub fn try_spawn(args: &[String]) -> Result<TicketdProcess, String> {
        Self::try_spawn_wrapped(&[], args)
    }

    /// Like [`TicketdProcess::try_spawn`], run through `wrapper` (a program that execs
    /// its arguments, such as `prlimit --fsize=N --`, so the PID stays ticketd's).
    pub fn try_spawn_wrapped(wrapper: &[&str], args: &[String]) -> Result<TicketdProcess, String> {
        use std::io::BufRead;
        let needs_dir = !args.iter().any(|a| a == "--data-dir" || a == "--redis");
        let data_dir = needs_dir.then(|| tempfile::tempdir().expect("a temp dir"));
        let bin = env!("CARGO_BIN_EXE_ticketd");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = std::process::Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => std::process::Command::new(bin),
        };
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        // Tests run side by side: none takes the admin endpoint's default port.
        if !args.iter().any(|a| a == "--admin") {
            command.args(["--admin", "off"]);
        }
        if let Some(dir) = &data_dir {
            command.arg("--data-dir").arg(dir.path());
        }
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ticketd starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.wait();
                return Err(log.lock().unwrap().join("\n"));
            };
            log.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("addr=").nth(1) {
                if line.contains("ticketd started") {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    break addr.parse().expect("an address in the start-up line");
                }
            }
        };
        // Keep draining the log so the process never blocks on a full pipe.
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Ok(TicketdProcess {
            child,
            addr,
            log,
            _data_dir: data_dir,
        })
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then the exit status and everything it printed on stdout.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        signal(self.child.id(), "-TERM");
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut stdout).expect("stdout");
        }
        let status = self.child.wait().expect("wait");
        (status, stdout)
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TicketdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
