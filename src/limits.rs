//! What one connection may make the server hold, in one place: the shard enforces these,
//! and the configuration derives its own bounds from them (`--max-frame`, the file
//! descriptors `--max-conns` leaves spare), and how long a connection may sit in each
//! state.

use std::time::Duration;

/// Output above this many unsent bytes stops reading from the client until it drains:
/// a client that never reads cannot make the server buffer without bound.
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;
/// Most an output buffer is sized for: the high-water mark plus the answers one pass
/// may add past it (deliveries from other shards, bounded by the in-flight limit).
pub const OUTPUT_CAPACITY: usize = OUTPUT_HIGH_WATER + 8 * 1024;
/// Unparsed input above this stops reading. Binary input never holds more than one
/// partial frame after a pass; HTTP input waits unparsed while the request before it is
/// decided on another shard, and this bounds it.
pub const INPUT_HIGH_WATER: usize = 64 * 1024;
/// Forwarded requests a connection may have awaiting another shard's (or Redis's)
/// answer before the server stops reading it.
pub const MAX_IN_FLIGHT: u32 = 4096;
/// Smallest read while there is room: a few frames, so a slow reader still progresses.
pub const MIN_READ: usize = 4 * 1024;
/// Buffers larger than this are released when they empty, so an idle connection that
/// once pipelined heavily goes back to costing almost nothing.
pub const RELEASE_CAPACITY: usize = 16 * 1024;
/// Connections over `--max-conns` that a shard keeps just long enough to answer their
/// first requests OVERLOADED; beyond this they are closed unanswered.
pub const MAX_SHEDDING_CONNECTIONS: usize = 64;

/// How long a connection may sit in each state, each `None` when off (enforced by
/// `shard/connection/deadlines.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A partial frame or HTTP request must be completed within this.
    pub header: Option<Duration>,
    /// A binary connection with nothing in flight and nothing half-sent is closed after
    /// this (off by default: gateways keep pools of idle connections).
    pub idle_binary: Option<Duration>,
    /// The same for HTTP keep-alive connections (on by default, as nginx does).
    pub idle_http: Option<Duration>,
    /// Answers waiting this long without the client taking a byte: the client is gone
    /// or not reading.
    pub write: Option<Duration>,
}

impl Timeouts {
    pub const DEFAULT: Timeouts = Timeouts {
        header: Some(Duration::from_secs(10)),
        idle_binary: None,
        idle_http: Some(Duration::from_secs(60)),
        write: Some(Duration::from_secs(30)),
    };

    /// No limit at all (tests and embedding that want none).
    pub const NONE: Timeouts = Timeouts {
        header: None,
        idle_binary: None,
        idle_http: None,
        write: None,
    };

    /// How often connections are looked over: a quarter of the shortest limit, between
    /// 50 ms and 1 s; `None` when every limit is off.
    pub fn sweep_every(&self) -> Option<Duration> {
        [self.header, self.idle_binary, self.idle_http, self.write]
            .into_iter()
            .flatten()
            .min()
            .map(|d| (d / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)))
    }
}
