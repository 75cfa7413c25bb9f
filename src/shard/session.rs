//! One client connection's state inside a shard.

use bytes::BytesMut;
use mio::net::TcpStream;

use super::http;

/// Which protocol a connection speaks: decided by the listener that accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Binary,
    Http,
}

/// Output above this many unsent bytes stops reading from the client until it drains:
/// a client that never reads cannot make the server buffer without bound.
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;
/// Forwarded requests a connection may have awaiting another shard's answer before the
/// server stops reading it.
pub const MAX_IN_FLIGHT: u32 = 4096;
/// Unparsed input above this stops reading. Binary input never holds more than one
/// partial frame after a pass; HTTP input waits unparsed while the request before it is
/// decided on another shard, and this bounds it.
pub const INPUT_HIGH_WATER: usize = 64 * 1024;
/// Smallest read while there is room: a few frames, so a slow reader still progresses.
pub const MIN_READ: usize = 4 * 1024;
/// Most an output buffer is sized for: the high-water mark plus the answers one pass
/// may add past it (deliveries from other shards, bounded by the in-flight limit).
pub const OUTPUT_CAPACITY: usize = OUTPUT_HIGH_WATER + 8 * 1024;
/// Buffers larger than this are released when they empty, so an idle connection that
/// once pipelined heavily goes back to costing almost nothing.
pub const RELEASE_CAPACITY: usize = 16 * 1024;

#[derive(Debug)]
pub struct Session {
    pub stream: TcpStream,
    pub protocol: Protocol,
    pub generation: u32,
    /// Bytes read but not yet a whole frame.
    pub input: BytesMut,
    /// Encoded responses not yet written.
    pub output: BytesMut,
    /// Requests forwarded to other shards and not yet answered.
    pub in_flight: u32,
    /// WRITABLE interest is registered (only while output is pending).
    pub wants_write: bool,
    /// The peer sent EOF; close once everything owed is written.
    pub read_closed: bool,
    /// The stream could not be framed: nothing more is decoded; after the owed output
    /// the write side is shut and input discarded until EOF, so the error reaches the
    /// client instead of being destroyed by a reset.
    pub lingering: bool,
    /// The framing error response is still to be sent: it goes last, once every request
    /// read before the bad frame has been answered.
    pub owes_framing_error: bool,
    /// The write side has been shut (only when lingering).
    pub write_shut: bool,
    /// Queued for a flush at the end of this pass.
    pub dirty: bool,
    /// Queued for another read (unread input may be waiting: edge-triggered).
    pub queued_read: bool,
    /// Reading stopped for back-pressure; resume once the client catches up.
    pub read_stalled: bool,
    /// Over `--max-conns`: its first requests are answered OVERLOADED, then it is
    /// closed like a connection that lost framing.
    pub shedding: bool,
    /// HTTP: the request whose answer another shard is deciding. Later requests wait in
    /// `input`, so answers leave in request order.
    pub http_waiting: Option<http::Head>,
    /// Close once everything owed is written (HTTP without keep-alive, or an HTTP
    /// request that could not be parsed).
    pub close_when_settled: bool,
}

impl Session {
    pub fn new(stream: TcpStream, generation: u32, protocol: Protocol) -> Self {
        Session {
            stream,
            protocol,
            generation,
            input: BytesMut::new(),
            output: BytesMut::new(),
            in_flight: 0,
            wants_write: false,
            read_closed: false,
            lingering: false,
            owes_framing_error: false,
            write_shut: false,
            dirty: false,
            queued_read: false,
            read_stalled: false,
            shedding: false,
            http_waiting: None,
            close_when_settled: false,
        }
    }

    /// Back-pressure: stop reading while the client is behind.
    pub fn is_paused(&self) -> bool {
        self.output.len() >= OUTPUT_HIGH_WATER
            || self.in_flight >= MAX_IN_FLIGHT
            || self.input.len() >= INPUT_HIGH_WATER
    }

    /// Nothing is owed to the client.
    pub fn is_settled(&self) -> bool {
        self.output.is_empty() && self.in_flight == 0 && !self.owes_framing_error
    }

    /// How much the next read may take, at most `chunk`: within the input bound and,
    /// for the binary protocol, about what the output buffer has room to answer. Never
    /// 0 (a read of 0 bytes would look like EOF): only called while not paused.
    pub fn read_room(&self, chunk: usize) -> usize {
        let input_room = INPUT_HIGH_WATER.saturating_sub(self.input.len());
        let answer_room = match self.protocol {
            Protocol::Binary => OUTPUT_HIGH_WATER.saturating_sub(self.output.len()) / 2,
            Protocol::Http => chunk,
        };
        chunk.min(input_room).min(answer_room.max(MIN_READ)).max(1)
    }

    /// Makes room for about `estimate` more bytes of answers in one allocation of the
    /// size needed (at most [`OUTPUT_CAPACITY`]), instead of a chain of doublings whose
    /// freed steps would stay resident: a connection's memory is its buffers' sizes.
    pub fn reserve_output(&mut self, estimate: usize) {
        let want = (self.output.len() + estimate).min(OUTPUT_CAPACITY);
        if self.output.capacity() < want {
            let mut grown = BytesMut::with_capacity(want);
            grown.extend_from_slice(&self.output);
            self.output = grown;
        }
    }

    /// Frees empty buffers larger than [`RELEASE_CAPACITY`]; returns the bytes freed.
    pub fn release_idle_buffers(&mut self) -> usize {
        let mut freed = 0;
        if self.output.is_empty() && self.output.capacity() > RELEASE_CAPACITY {
            freed += self.output.capacity();
            self.output = BytesMut::new();
        }
        if self.input.is_empty() && self.input.capacity() > RELEASE_CAPACITY {
            freed += self.input.capacity();
            self.input = BytesMut::new();
        }
        freed
    }
}
