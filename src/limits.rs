//! What one connection may make the server hold, in one place: the shard enforces these,
//! and the configuration derives its own bounds from them (`--max-frame`, the file
//! descriptors `--max-conns` leaves spare).

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
