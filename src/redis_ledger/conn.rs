//! One non-blocking, pipelined connection to Redis, driven by the owner's `mio::Poll`
//! (no thread of its own, no blocking call). Commands are packed by the redis crate and
//! replies parsed by its incremental `Parser`; replies are matched to calls in order.
//!
//! What a call's owner learns, and what it may conclude:
//! - [`Completion::Reply`] / [`Completion::ErrorReply`]: Redis answered.
//! - [`Completion::Unsent`]: the call never left this process before its timeout, so it
//!   certainly did not happen (answer UNAVAILABLE).
//! - [`Completion::Lost`]: it was sent and the connection broke or timed out before the
//!   answer: it may or may not have happened. Retry it with the same call id once
//!   reconnected; the ledger replays the first result rather than apply it twice.
//!
//! Every (re)connect first sends the handshake commands (e.g. `FUNCTION LOAD REPLACE`),
//! so a restarted or flushed Redis is usable again without operator action.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use redis::{Cmd, Value};

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    /// A call unanswered (or unsent) this long fails; a connect this long fails.
    pub timeout: Duration,
    /// Calls sent and not yet answered; more wait unsent.
    pub max_in_flight: usize,
    /// First and largest pause between reconnect attempts (doubling in between).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for ConnSettings {
    fn default() -> Self {
        ConnSettings {
            timeout: Duration::from_millis(500),
            max_in_flight: crate::config::DEFAULT_REDIS_DEPTH,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// How a call ended.
#[derive(Debug)]
pub enum Completion<T> {
    Reply {
        tag: T,
        value: Value,
    },
    ErrorReply {
        tag: T,
        error: String,
    },
    /// Never sent before its timeout: it did not happen.
    Unsent {
        tag: T,
    },
    /// Sent, answer lost: outcome unknown; retry with the same call id.
    Lost {
        tag: T,
    },
}

/// Reads from the socket and notes whether it ran dry, so "no more bytes yet" is told
/// apart from a broken stream without looking inside the parser's error.
struct WouldBlockProbe<'a> {
    stream: &'a mut TcpStream,
    would_block: bool,
}

impl io::Read for WouldBlockProbe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.stream.read(buf);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.would_block = true;
        }
        result
    }
}

enum State {
    Disconnected { retry_at: Instant },
    Connecting { stream: TcpStream, since: Instant },
    Ready { stream: TcpStream },
}

struct Sent<T> {
    /// `None` for handshake commands, whose replies are checked here.
    tag: Option<T>,
    at: Instant,
}

/// A pipelined connection carrying calls tagged `T`.
pub struct RedisConn<T> {
    addr: SocketAddr,
    token: Token,
    settings: ConnSettings,
    handshake: Vec<Vec<u8>>,
    state: State,
    backoff: Duration,
    /// Packed commands written to nothing yet (this connection's output buffer).
    out: Vec<u8>,
    sent: VecDeque<Sent<T>>,
    /// Calls waiting for room in the pipeline or for a connection.
    waiting: VecDeque<(Vec<u8>, T, Instant)>,
    parser: redis::Parser,
    write_failed: bool,
    /// Connections made so far (for tests and metrics).
    pub connects: u64,
}

impl<T> RedisConn<T> {
    /// A connection that will connect at the first [`RedisConn::tick`].
    pub fn new(addr: SocketAddr, token: Token, settings: ConnSettings, handshake: &[Cmd]) -> Self {
        RedisConn {
            addr,
            token,
            settings,
            handshake: handshake.iter().map(Cmd::get_packed_command).collect(),
            state: State::Disconnected {
                retry_at: Instant::now(),
            },
            backoff: settings.backoff_min,
            out: Vec::new(),
            sent: VecDeque::new(),
            waiting: VecDeque::new(),
            parser: redis::Parser::new(),
            write_failed: false,
            connects: 0,
        }
    }

    /// Connected, and Redis has answered the handshake: calls may go out. Until then a
    /// call stays unsent, so a Redis that accepts connections but answers nothing (frozen,
    /// overloaded) costs a truthful UNAVAILABLE, not an unknown outcome.
    /// Calls this connection keeps on the wire at once (`--redis-depth`).
    pub fn depth(&self) -> usize {
        self.settings.max_in_flight
    }

    /// How long a call may go unanswered (`--redis-timeout`).
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. }) && !self.handshaking()
    }

    /// Handshake commands are still unanswered (they go first on each connection).
    fn handshaking(&self) -> bool {
        self.sent.front().is_some_and(|s| s.tag.is_none())
    }

    /// Calls sent or waiting.
    pub fn pending(&self) -> usize {
        self.sent.iter().filter(|s| s.tag.is_some()).count() + self.waiting.len()
    }

    /// Queues a call; it is written as soon as the pipeline has room and a connection.
    pub fn send(&mut self, cmd: &Cmd, tag: T, now: Instant) {
        self.waiting.push_back((cmd.get_packed_command(), tag, now));
        self.pump(now);
    }

    /// Handles a readiness event for this connection's token.
    pub fn on_event(
        &mut self,
        registry: &Registry,
        event: &mio::event::Event,
        now: Instant,
        done: &mut Vec<Completion<T>>,
    ) {
        if let State::Connecting { stream, .. } = &self.state {
            if !event.is_writable() && !event.is_error() && !event.is_write_closed() {
                return;
            }
            match stream.take_error() {
                Ok(None) => match stream.peer_addr() {
                    Ok(_) => self.connected(now),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(_) => return self.broken(registry, now, done),
                },
                _ => return self.broken(registry, now, done),
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read(registry, now, done);
        }
        self.pump(now);
    }

    /// Timeouts and reconnects; call once per loop pass.
    pub fn tick(&mut self, registry: &Registry, now: Instant, done: &mut Vec<Completion<T>>) {
        if std::mem::take(&mut self.write_failed) {
            self.broken(registry, now, done);
        }
        match &self.state {
            State::Disconnected { retry_at } if *retry_at <= now => {
                self.connect(registry, now, done)
            }
            State::Connecting { since, .. }
                if now.duration_since(*since) > self.settings.timeout =>
            {
                self.broken(registry, now, done)
            }
            // Redis stopped answering: the connection is no use any more.
            State::Ready { .. }
                if self
                    .sent
                    .front()
                    .is_some_and(|s| now.duration_since(s.at) > self.settings.timeout) =>
            {
                self.broken(registry, now, done)
            }
            _ => {}
        }
        while self
            .waiting
            .front()
            .is_some_and(|(_, _, at)| now.duration_since(*at) > self.settings.timeout)
        {
            if let Some((_, tag, _)) = self.waiting.pop_front() {
                done.push(Completion::Unsent { tag });
            }
        }
    }

    /// When [`RedisConn::tick`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.settings.timeout;
        let state = match &self.state {
            State::Disconnected { retry_at } => Some(*retry_at),
            State::Connecting { since, .. } => Some(*since + timeout),
            State::Ready { .. } => self.sent.front().map(|s| s.at + timeout),
        };
        let waiting = self.waiting.front().map(|(_, _, at)| *at + timeout);
        state.into_iter().chain(waiting).min()
    }

    fn connect(&mut self, registry: &Registry, now: Instant, done: &mut Vec<Completion<T>>) {
        match TcpStream::connect(self.addr) {
            Ok(mut stream) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                if registry
                    .register(&mut stream, self.token, interest)
                    .is_err()
                {
                    return self.broken(registry, now, done);
                }
                let _ = stream.set_nodelay(true);
                self.state = State::Connecting { stream, since: now };
            }
            Err(_) => self.broken(registry, now, done),
        }
    }

    fn connected(&mut self, now: Instant) {
        let old = std::mem::replace(&mut self.state, State::Disconnected { retry_at: now });
        if let State::Connecting { stream, .. } = old {
            self.state = State::Ready { stream };
            self.connects += 1;
            self.backoff = self.settings.backoff_min;
            self.parser = redis::Parser::new();
            for command in &self.handshake {
                self.out.extend_from_slice(command);
                self.sent.push_back(Sent { tag: None, at: now });
            }
        }
    }

    /// Moves waiting calls into the pipeline while there is room (once the handshake is
    /// answered), and writes.
    fn pump(&mut self, now: Instant) {
        if !matches!(self.state, State::Ready { .. }) {
            return;
        }
        while !self.handshaking() && self.sent.len() < self.settings.max_in_flight {
            let Some((command, tag, _)) = self.waiting.pop_front() else {
                break;
            };
            self.out.extend_from_slice(&command);
            self.sent.push_back(Sent {
                tag: Some(tag),
                at: now,
            });
        }
        let State::Ready { stream } = &mut self.state else {
            return;
        };
        let mut written = 0;
        let mut failed = false;
        while written < self.out.len() {
            match stream.write(&self.out[written..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        self.out.drain(..written);
        // Dealt with at the next tick, where completions can be reported.
        self.write_failed |= failed;
    }

    fn read(&mut self, registry: &Registry, now: Instant, done: &mut Vec<Completion<T>>) {
        loop {
            let State::Ready { stream } = &mut self.state else {
                return;
            };
            let mut socket = WouldBlockProbe {
                stream,
                would_block: false,
            };
            let parsed = self.parser.parse_value(&mut socket);
            let drained = socket.would_block;
            match parsed {
                Ok(value) => {
                    let Some(sent) = self.sent.pop_front() else {
                        // An answer to nothing: the stream is out of step.
                        return self.broken(registry, now, done);
                    };
                    match (sent.tag, value) {
                        (None, Value::ServerError(e)) => {
                            // A handshake that fails (e.g. no FUNCTION support) leaves the
                            // connection unusable for ledger calls.
                            tracing::warn!(error = ?e, "redis handshake command failed");
                            return self.broken(registry, now, done);
                        }
                        (None, _) => {}
                        (Some(tag), Value::ServerError(e)) => done.push(Completion::ErrorReply {
                            tag,
                            error: format!("{e:?}"),
                        }),
                        (Some(tag), value) => done.push(Completion::Reply { tag, value }),
                    }
                }
                // The socket has no more bytes for now; the parser keeps what it has.
                Err(_) if drained => return,
                Err(_) => return self.broken(registry, now, done),
            }
        }
    }

    /// Drops the connection: every call sent is Lost (outcome unknown), the rest wait
    /// for the next connection; reconnect after the backoff.
    fn broken(&mut self, registry: &Registry, now: Instant, done: &mut Vec<Completion<T>>) {
        let old = std::mem::replace(
            &mut self.state,
            State::Disconnected {
                retry_at: now + self.backoff,
            },
        );
        match old {
            State::Connecting { mut stream, .. } | State::Ready { mut stream } => {
                let _ = registry.deregister(&mut stream);
            }
            State::Disconnected { .. } => {}
        }
        self.backoff = (self.backoff * 2).min(self.settings.backoff_max);
        self.out.clear();
        for sent in self.sent.drain(..) {
            if let Some(tag) = sent.tag {
                done.push(Completion::Lost { tag });
            }
        }
    }
}
