//! One client connection: its socket, its unread input and unsent answers, and where it
//! stands in its life (reading, stalled for back-pressure, lingering after a framing
//! error, closing). It does its own reads and writes; [`super::connections`] decides
//! when, and keeps the lists (to flush, to read again, to close) it is on. Binary
//! frames are served here, HTTP requests in [`http`].

mod binary;
mod deadlines;
pub mod http;

pub use binary::{BinaryEnd, BinaryStream};

pub use deadlines::Overdue;

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::Instant;

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use ticketd_proto::Response;

use super::access::Access;
use super::mailbox::ConnRef;
use super::output::Output;
use super::Dispatcher;
use crate::limits::RELEASE_CAPACITY;
use crate::limits::{INPUT_HIGH_WATER, MAX_IN_FLIGHT, MIN_READ, OUTPUT_HIGH_WATER};
use crate::stats::ShardMeter;
use http::Head;

/// Which protocol a connection speaks: decided by the listener that accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Binary,
    Http,
}

/// How far one readiness event's read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadDepth {
    /// Stop after a read that did not fill the buffer: the socket was empty then, and
    /// edge-triggered epoll reports any later data as a new event. Saves the read that
    /// would only return `WouldBlock` — a syscall per request at one request per read.
    UntilShortRead,
    /// Read until `WouldBlock` or EOF: the peer closed (its EOF must be seen), or there
    /// is no event in hand (a queued re-read).
    ToEnd,
}

/// How a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// Nothing more to read now (or reading is paused, or the peer closed).
    Idle,
    /// This pass's read budget is spent: unread input may be waiting.
    BudgetSpent,
    /// The socket failed: close it.
    Broken,
    /// Over `--rate-per-ip`: read it again at this time.
    Throttled(Instant),
}

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushEnd {
    /// Still open. `lingering_from_now`: the framing error is out and the write side
    /// shut; close it if the peer has not by the linger deadline. `resume_read`: it
    /// stopped reading for back-pressure and has room again (edge-triggered readiness
    /// will not say so).
    Open {
        lingering_from_now: bool,
        resume_read: bool,
    },
    /// Done (everything owed written after EOF or `Connection: close`), or broken.
    Close,
}

#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    protocol: Protocol,
    generation: u32,
    /// Bytes read but not yet a whole frame (binary) or answered request (HTTP).
    input: BytesMut,
    /// Encoded answers not yet written.
    output: Output,
    /// Requests decided elsewhere (another shard, Redis) and not yet answered.
    in_flight: u32,
    /// WRITABLE interest is registered (only while output is pending).
    wants_write: bool,
    /// The peer sent EOF; close once everything owed is written.
    read_closed: bool,
    /// The stream could not be framed: nothing more is decoded; after the owed output
    /// the write side is shut and input discarded until EOF, so the error reaches the
    /// client instead of being destroyed by a reset.
    lingering: bool,
    /// The framing error is still to be sent: it goes last, once every request read
    /// before the bad frame has been answered.
    owes_framing_error: bool,
    /// The write side has been shut (only when lingering).
    write_shut: bool,
    /// On the list to flush at the end of this pass.
    dirty: bool,
    /// On the list to read again (unread input may be waiting: edge-triggered).
    queued_read: bool,
    /// Reading stopped for back-pressure; resume once the client catches up.
    read_stalled: bool,
    /// Shed (over `--max-conns`), authenticated: what its requests may do.
    access: Access,
    /// HTTP: the request whose answer is being decided elsewhere. Later requests wait
    /// in `input`, so answers leave in request order.
    http_waiting: Option<Head>,
    /// Close once everything owed is written (HTTP without keep-alive, or an HTTP
    /// request that could not be parsed).
    close_when_done: bool,
    /// When bytes last arrived or left: the clock of its time limits.
    last_activity: Instant,
    /// Over `--rate-per-ip`: not read until then (its next token).
    throttled_until: Option<Instant>,
}

impl Connection {
    pub fn new(
        stream: TcpStream,
        generation: u32,
        protocol: Protocol,
        access: Access,
        counters: ShardMeter,
        now: Instant,
    ) -> Self {
        Connection {
            stream,
            protocol,
            generation,
            input: BytesMut::new(),
            output: Output::counted(counters),
            in_flight: 0,
            wants_write: false,
            read_closed: false,
            lingering: false,
            owes_framing_error: false,
            write_shut: false,
            dirty: false,
            queued_read: false,
            read_stalled: false,
            access,
            http_waiting: None,
            close_when_done: false,
            last_activity: now,
            throttled_until: None,
        }
    }

    /// Tells this connection from an earlier one in the same slot.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn is_shedding(&self) -> bool {
        self.access.shed
    }

    /// The peer's address.
    pub fn source(&self) -> std::net::IpAddr {
        self.access.source
    }

    /// Back-pressure: stop reading while the client is behind.
    pub fn is_paused(&self) -> bool {
        self.output.len() >= OUTPUT_HIGH_WATER
            || self.in_flight >= MAX_IN_FLIGHT
            || self.input.len() >= INPUT_HIGH_WATER
            || self.throttled_until.is_some()
    }

    /// Until when it is paused for `--rate-per-ip`, if it is.
    pub fn throttled_until(&self) -> Option<Instant> {
        self.throttled_until
    }

    /// Its rate pause is over: it may be read (and its waiting input decided) again.
    pub fn end_throttle(&mut self) {
        self.throttled_until = None;
    }

    /// Nothing is owed to the client.
    pub fn owes_nothing(&self) -> bool {
        self.output.is_empty() && self.in_flight == 0 && !self.owes_framing_error
    }

    /// Bytes its buffers hold allocated.
    pub fn buffer_capacity(&self) -> usize {
        self.input.capacity() + self.output.capacity()
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.stream, token, Interest::READABLE)
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }

    /// Puts it on the flush list unless it is there: true if the caller must add it.
    pub fn mark_dirty(&mut self) -> bool {
        !std::mem::replace(&mut self.dirty, true)
    }

    /// Puts it on the read-again list unless it is there: true if the caller must add it.
    pub fn mark_queued(&mut self) -> bool {
        !std::mem::replace(&mut self.queued_read, true)
    }

    /// Taken off the read-again list.
    pub fn unqueue(&mut self) {
        self.queued_read = false;
    }

    /// Reads what the socket has (within `budget` and the input and output bounds),
    /// serving each read as it comes. Input left undecided while the client was behind
    /// is decided first: the client may have nothing more to send to wake us.
    pub fn read(
        &mut self,
        scratch: &mut [u8],
        mut budget: usize,
        depth: ReadDepth,
        dispatcher: &mut Dispatcher,
        conn: ConnRef,
        now: Instant,
    ) -> ReadEnd {
        if !self.input.is_empty() && !self.is_paused() && !self.discards_input() {
            self.serve(&[], dispatcher, conn, now);
        }
        loop {
            if let Some(until) = self.throttled_until {
                return ReadEnd::Throttled(until);
            }
            if self.read_closed {
                return ReadEnd::Idle;
            }
            if self.is_paused() {
                self.read_stalled = true;
                return ReadEnd::Idle;
            }
            if budget == 0 {
                return ReadEnd::BudgetSpent;
            }
            // Never read past the input bound, nor (binary: an answer is at most twice
            // its request) much more than the unsent output left room for: what cannot
            // be decided yet waits in the kernel's buffers, not in ours.
            let room = self.read_room(scratch.len());
            match self.stream.read(&mut scratch[..room]) {
                Ok(0) => self.read_closed = true,
                Ok(n) => {
                    self.touched(now);
                    budget = budget.saturating_sub(n);
                    if !self.discards_input() {
                        self.serve(&scratch[..n], dispatcher, conn, now);
                    }
                    if let Some(until) = self.throttled_until {
                        return ReadEnd::Throttled(until);
                    }
                    if n < room && depth == ReadDepth::UntilShortRead {
                        return ReadEnd::Idle;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Idle,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadEnd::Broken,
            }
        }
    }

    /// After a framing error (or an HTTP request that ends the connection), input is
    /// read only to see EOF.
    fn discards_input(&self) -> bool {
        self.lingering || self.close_when_done
    }

    /// How much the next read may take, at most `chunk`: within the input bound and,
    /// for the binary protocol, about what the output buffer has room to answer. Never
    /// 0 (a read of 0 bytes would look like EOF): only called while not paused.
    fn read_room(&self, chunk: usize) -> usize {
        let input_room = INPUT_HIGH_WATER.saturating_sub(self.input.len());
        let answer_room = match self.protocol {
            Protocol::Binary => OUTPUT_HIGH_WATER.saturating_sub(self.output.len()) / 2,
            Protocol::Http => chunk,
        };
        chunk.min(input_room).min(answer_room.max(MIN_READ)).max(1)
    }

    fn serve(&mut self, bytes: &[u8], dispatcher: &mut Dispatcher, conn: ConnRef, now: Instant) {
        match self.protocol {
            Protocol::Binary => self.serve_binary(bytes, dispatcher, conn, now),
            Protocol::Http => {
                self.input.extend_from_slice(bytes);
                self.serve_http(dispatcher, conn, now);
            }
        }
    }

    /// Feeds freshly read bytes through the dispatcher, keeping any incomplete tail.
    fn serve_binary(
        &mut self,
        bytes: &[u8],
        dispatcher: &mut Dispatcher,
        conn: ConnRef,
        now: Instant,
    ) {
        let mut stream = BinaryStream {
            input: &mut self.input,
            output: &mut self.output,
            in_flight: &mut self.in_flight,
            access: &mut self.access,
        };
        match stream.serve(bytes, dispatcher, conn, now) {
            BinaryEnd::Closing { owes_framing_error } => {
                self.lingering = true;
                self.owes_framing_error = owes_framing_error;
            }
            BinaryEnd::Throttled(until) => self.throttled_until = Some(until),
            BinaryEnd::Open => {}
        }
    }

    /// An answer decided elsewhere (another shard, or Redis) for a request it sent.
    pub fn deliver(
        &mut self,
        response: Response,
        dispatcher: &mut Dispatcher,
        conn: ConnRef,
        now: Instant,
    ) {
        // An answer that waited long (Redis away, say) starts the write clock afresh.
        self.touched(now);
        self.in_flight = self.in_flight.saturating_sub(1);
        match self.http_waiting.take() {
            Some(head) => {
                self.output
                    .http_outcome(&response, head.keep_alive, head.http10);
                // Requests that arrived meanwhile can go now.
                self.serve_http(dispatcher, conn, now);
            }
            None => self.output.frame(&response),
        }
    }

    /// Writes what is owed (one write call unless the socket takes it piecemeal), then
    /// fixes up write interest and says what its life needs next.
    pub fn flush(&mut self, registry: &Registry, token: Token, now: Instant) -> FlushEnd {
        self.dirty = false;
        if self.owes_framing_error && self.in_flight == 0 {
            self.owes_framing_error = false;
            self.output.framing_error();
        }
        while !self.output.is_empty() {
            match self.stream.write(self.output.pending()) {
                Ok(0) => return FlushEnd::Close,
                Ok(n) => {
                    self.output.advance(n);
                    self.touched(now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return FlushEnd::Close,
            }
        }
        let wants_write = !self.output.is_empty();
        if wants_write != self.wants_write {
            let interest = if wants_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if registry
                .reregister(&mut self.stream, token, interest)
                .is_err()
            {
                return FlushEnd::Close;
            }
            self.wants_write = wants_write;
        }
        let mut lingering_from_now = false;
        if self.owes_nothing() {
            if self.read_closed || self.close_when_done {
                return FlushEnd::Close;
            }
            if self.lingering && !self.write_shut {
                // The framing error is out: send FIN, then discard input until the peer
                // closes, so our close does not reset away the error frame.
                let _ = self.stream.shutdown(Shutdown::Write);
                self.write_shut = true;
                lingering_from_now = true;
            }
        }
        let resume_read = self.read_stalled && !self.is_paused();
        if resume_read {
            self.read_stalled = false;
        }
        FlushEnd::Open {
            lingering_from_now,
            resume_read,
        }
    }

    /// Frees empty buffers larger than [`RELEASE_CAPACITY`]; returns the bytes freed.
    pub fn release_idle_buffers(&mut self) -> usize {
        let mut freed = self.output.release_if_idle(RELEASE_CAPACITY);
        if self.input.is_empty() && self.input.capacity() > RELEASE_CAPACITY {
            freed += self.input.capacity();
            self.input = BytesMut::new();
        }
        freed
    }
}
