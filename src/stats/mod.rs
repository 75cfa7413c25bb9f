//! A node's counters for operators: what each shard answered and sold, how its loop,
//! connections, journal and Redis calls fared. The admin endpoint serves them as
//! Prometheus metrics (`/metrics`, [`crate::metrics`]) and as `name value` lines
//! (`/stats`).
//!
//! Every counter has exactly one writing thread — a shard's loop writes its
//! [`ShardCounters`], a shard's journal writer its [`JournalCounters`] — and each block
//! sits on cache lines of its own. So a count is a plain load, add and store (no locked
//! read-modify-write, no line shared between cores on the request path), and readers,
//! which only ever load, see each value whole. The admin thread sums the blocks when it
//! is asked.

pub mod histogram;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use ticketd_proto::{Op, Status};

pub use histogram::{HistogramSnapshot, Log2Histogram};

/// Adds `n` to a counter that only the calling thread writes.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

fn set(gauge: &AtomicU64, value: u64) {
    gauge.store(value, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Request slots by op: 0 is for what never parsed as a request (a broken frame, a
/// malformed HTTP request), then one per op code.
pub const OP_SLOTS: usize = Op::ALL.len() + 1;
/// The label of slot 0.
pub const UNPARSED_OP: &str = "UNPARSED";

const STATUSES: u8 = Status::ALL.len() as u8;

/// An answer's op slot and status in one byte, for tallying runs of alike answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerKind(u8);

impl AnswerKind {
    pub fn of(op: u8, status: Status) -> AnswerKind {
        let slot = Op::from_code(op & !ticketd_proto::RESPONSE_BIT).map_or(0, Op::code);
        AnswerKind(slot * STATUSES + status.code())
    }
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds `--max-conns` already.
    MaxConns,
    /// The peer's address holds `--max-conns-per-ip` already.
    PerIp,
}

/// What a loop pass left to the next one when its time (`--pass-budget`) ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassCut {
    /// Connections with input waiting were not read.
    Reads,
    /// Connections owed answers were not written.
    Writes,
}

/// Why the server closed a connection it had taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimedOut {
    /// A request stayed half-sent past `--header-timeout`.
    Header,
    /// Nothing arrived for `--idle-timeout` / `--http-idle-timeout`.
    Idle,
    /// The client did not read its answers within `--write-timeout`.
    Write,
}

/// One event's tallies on one shard, published once per loop pass.
#[derive(Debug, Default)]
pub struct EventCounters {
    /// Tickets in orders.
    pub sold: AtomicU64,
    /// Tickets in live holds.
    pub held: AtomicU64,
    pub orders: AtomicU64,
}

/// One shard's counters; only that shard's loop thread writes them.
#[derive(Debug)]
pub struct ShardCounters {
    /// Answers sent, by op slot and status code.
    requests: [[AtomicU64; Status::ALL.len()]; OP_SLOTS],
    /// Answers sent before this loop pass began (a pass's batch is the difference; kept
    /// per pass so an answer costs one count, not two).
    answered_before_pass: AtomicU64,
    /// Tickets in orders this shard created (BUY, CONFIRM; in ledger mode decided by
    /// Redis).
    sold: AtomicU64,
    /// Requests answered UNAVAILABLE because the ledger could not be reached.
    unavailable: AtomicU64,
    /// Connections registered with the loop (shed ones too), and closed.
    opened: AtomicU64,
    closed: AtomicU64,
    /// Connections taken to be served.
    accepted: AtomicU64,
    refused_max_conns: AtomicU64,
    refused_per_ip: AtomicU64,
    header_timeouts: AtomicU64,
    idle_closes: AtomicU64,
    write_timeouts: AtomicU64,
    /// Loop pass durations in µs, and answers per pass.
    passes_us: Log2Histogram,
    pass_answers: Log2Histogram,
    longest_pass_us: AtomicU64,
    /// Passes whose time (`--pass-budget`) ran out with connections still to read, or
    /// still to write.
    passes_cut_reads: AtomicU64,
    passes_cut_writes: AtomicU64,
    /// Ledger mode: calls sent to Redis (decisions, settlements, STOCK, ORDERS).
    redis_calls: AtomicU64,
    /// Ledger mode: STOCK asks made because a gate ran dry.
    gate_refills: AtomicU64,
    /// Ledger mode: a call's first send to its answer, in µs (retries included).
    redis_call_us: Log2Histogram,
    /// Ledger mode: purchases and settlements carried per decision call.
    redis_batch: Log2Histogram,
    /// Ledger mode: calls sent whose answer has not come (gauge).
    redis_in_flight: AtomicU64,
    /// Ledger mode: calls sent again (answer lost, or not sent in time after a loss).
    redis_retries: AtomicU64,
    /// Ledger mode: connections made to Redis (the first one included).
    redis_connects: AtomicU64,
    events: Box<[EventCounters]>,
}

impl Default for ShardCounters {
    fn default() -> Self {
        ShardCounters::new(0)
    }
}

impl ShardCounters {
    /// Counters for a shard selling `events` events.
    pub fn new(events: usize) -> Self {
        ShardCounters {
            requests: Default::default(),
            answered_before_pass: AtomicU64::default(),
            sold: AtomicU64::default(),
            unavailable: AtomicU64::default(),
            opened: AtomicU64::default(),
            closed: AtomicU64::default(),
            accepted: AtomicU64::default(),
            refused_max_conns: AtomicU64::default(),
            refused_per_ip: AtomicU64::default(),
            header_timeouts: AtomicU64::default(),
            idle_closes: AtomicU64::default(),
            write_timeouts: AtomicU64::default(),
            passes_us: Log2Histogram::default(),
            pass_answers: Log2Histogram::default(),
            longest_pass_us: AtomicU64::default(),
            passes_cut_reads: AtomicU64::default(),
            passes_cut_writes: AtomicU64::default(),
            redis_calls: AtomicU64::default(),
            gate_refills: AtomicU64::default(),
            redis_call_us: Log2Histogram::default(),
            redis_batch: Log2Histogram::default(),
            redis_in_flight: AtomicU64::default(),
            redis_retries: AtomicU64::default(),
            redis_connects: AtomicU64::default(),
            events: (0..events).map(|_| EventCounters::default()).collect(),
        }
    }

    /// An answer with `status` to a request with op byte `op` (0 when unparsed; a
    /// response op byte counts as its request's).
    pub fn answered(&self, op: u8, status: Status) {
        self.answered_many(AnswerKind::of(op, status), 1);
    }

    /// `n` answers of one kind.
    pub fn answered_many(&self, kind: AnswerKind, n: u64) {
        let (slot, status) = (
            usize::from(kind.0 / STATUSES),
            usize::from(kind.0 % STATUSES),
        );
        if let Some(counter) = self.requests.get(slot).and_then(|row| row.get(status)) {
            bump(counter, n);
        }
    }

    /// Every answer this shard has sent.
    fn answered_total(&self) -> u64 {
        self.requests.iter().flatten().map(read).sum()
    }

    pub fn sold(&self, qty: u16) {
        bump(&self.sold, u64::from(qty));
    }

    pub fn unavailable(&self, requests: u64) {
        bump(&self.unavailable, requests);
    }

    pub fn opened(&self) {
        bump(&self.opened, 1);
    }

    pub fn closed(&self) {
        bump(&self.closed, 1);
    }

    pub fn accepted(&self) {
        bump(&self.accepted, 1);
    }

    pub fn refused(&self, why: Refusal) {
        match why {
            Refusal::MaxConns => bump(&self.refused_max_conns, 1),
            Refusal::PerIp => bump(&self.refused_per_ip, 1),
        }
    }

    pub fn timed_out(&self, why: TimedOut) {
        match why {
            TimedOut::Header => bump(&self.header_timeouts, 1),
            TimedOut::Idle => bump(&self.idle_closes, 1),
            TimedOut::Write => bump(&self.write_timeouts, 1),
        }
    }

    /// A loop pass took `took`; its answers so far are its batch.
    pub fn loop_pass(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.passes_us.record(us);
        if us > read(&self.longest_pass_us) {
            set(&self.longest_pass_us, us);
        }
        let total = self.answered_total();
        let answers = total.wrapping_sub(read(&self.answered_before_pass));
        if answers > 0 {
            self.pass_answers.record(answers);
            set(&self.answered_before_pass, total);
        }
    }

    /// A pass ran out of time with `what` left for the next pass.
    pub fn pass_cut(&self, what: PassCut) {
        let counter = match what {
            PassCut::Reads => &self.passes_cut_reads,
            PassCut::Writes => &self.passes_cut_writes,
        };
        bump(counter, 1);
    }

    pub fn redis_call(&self, steps: usize) {
        bump(&self.redis_calls, 1);
        if steps > 0 {
            self.redis_batch.record(steps as u64);
        }
    }

    pub fn gate_refill(&self) {
        bump(&self.gate_refills, 1);
    }

    pub fn redis_answered(&self, took: Duration) {
        self.redis_call_us
            .record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn redis_retry(&self) {
        bump(&self.redis_retries, 1);
    }

    /// Published once per pass: calls in flight, connections made so far.
    pub fn redis_state(&self, in_flight: usize, connects: u64) {
        set(&self.redis_in_flight, in_flight as u64);
        set(&self.redis_connects, connects);
    }

    /// Published once per pass: this shard's tallies, in catalog order.
    pub fn publish_tallies(&self, tallies: &[crate::ledger::EventTally]) {
        for (counters, tally) in self.events.iter().zip(tallies) {
            set(&counters.sold, tally.sold);
            set(&counters.held, tally.held);
            set(&counters.orders, tally.orders);
        }
    }
}

/// One shard's journal writer's counters; only that writer thread writes them.
#[derive(Debug, Default)]
pub struct JournalCounters {
    /// Bytes written to segments (records and rotation snapshots).
    bytes: AtomicU64,
    /// One `write` of a batch of jobs, in µs.
    write_us: Log2Histogram,
    /// One `fdatasync`, in µs.
    sync_us: Log2Histogram,
    rotations: AtomicU64,
}

impl JournalCounters {
    pub fn wrote(&self, bytes: usize, took: Duration) {
        bump(&self.bytes, bytes as u64);
        self.write_us
            .record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn synced(&self, took: Duration) {
        self.sync_us
            .record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn rotated(&self) {
        bump(&self.rotations, 1);
    }

    /// `fdatasync`s so far.
    pub fn syncs(&self) -> u64 {
        self.sync_us.snapshot().count()
    }
}

/// A shard's counters, as the shard and its connections hold them.
pub type ShardMeter = Arc<CachePadded<ShardCounters>>;

/// Every shard's counters.
#[derive(Debug)]
pub struct NodeStats {
    shards: Box<[Arc<CachePadded<ShardCounters>>]>,
    journals: Box<[Arc<CachePadded<JournalCounters>>]>,
}

impl Default for NodeStats {
    fn default() -> Self {
        NodeStats::new(1, 0)
    }
}

/// Sums of every shard's counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Per op slot and status code.
    pub requests: Vec<[u64; Status::ALL.len()]>,
    /// Answers per shard.
    pub shard_answers: Vec<u64>,
    pub sold: u64,
    pub unavailable: u64,
    pub connections_open: u64,
    pub accepted: u64,
    pub refused_max_conns: u64,
    pub refused_per_ip: u64,
    pub header_timeouts: u64,
    pub idle_closes: u64,
    pub write_timeouts: u64,
    pub passes_us: HistogramSnapshot,
    pub pass_answers: HistogramSnapshot,
    pub longest_pass_us: u64,
    pub passes_cut_reads: u64,
    pub passes_cut_writes: u64,
    pub redis_calls: u64,
    pub gate_refills: u64,
    pub redis_call_us: HistogramSnapshot,
    pub redis_batch: HistogramSnapshot,
    pub redis_in_flight: u64,
    pub redis_retries: u64,
    pub redis_connects: u64,
    /// Connections to Redis after each shard's first.
    pub redis_reconnects: u64,
    /// Per event, in catalog order: sold, held, orders.
    pub events: Vec<(u64, u64, u64)>,
    pub journal_bytes: u64,
    pub journal_write_us: HistogramSnapshot,
    pub journal_sync_us: HistogramSnapshot,
    pub journal_rotations: u64,
}

impl NodeStats {
    /// Counters for `shards` shards selling `events` events.
    pub fn new(shards: usize, events: usize) -> Self {
        let shards = shards.max(1);
        NodeStats {
            shards: (0..shards)
                .map(|_| Arc::new(CachePadded::new(ShardCounters::new(events))))
                .collect(),
            journals: (0..shards)
                .map(|_| Arc::new(CachePadded::new(JournalCounters::default())))
                .collect(),
        }
    }

    /// Shard `shard`'s counters, for that shard's loop (and its connections) to write.
    pub fn shard(&self, shard: usize) -> Arc<CachePadded<ShardCounters>> {
        Arc::clone(&self.shards[shard % self.shards.len()])
    }

    /// Shard `shard`'s journal counters, for its writer thread to write.
    pub fn journal(&self, shard: usize) -> Arc<CachePadded<JournalCounters>> {
        Arc::clone(&self.journals[shard % self.journals.len()])
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Reads every counter once and sums the shards.
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            requests: vec![[0; Status::ALL.len()]; OP_SLOTS],
            ..Totals::default()
        };
        let events = self.shards.first().map_or(0, |s| s.events.len());
        t.events = vec![(0, 0, 0); events];
        for shard in self.shards.iter() {
            let mut answers = 0;
            for (slot, row) in t.requests.iter_mut().zip(&shard.requests) {
                for (sum, counter) in slot.iter_mut().zip(row) {
                    let n = read(counter);
                    *sum += n;
                    answers += n;
                }
            }
            t.shard_answers.push(answers);
            t.sold += read(&shard.sold);
            t.unavailable += read(&shard.unavailable);
            t.connections_open += read(&shard.opened).saturating_sub(read(&shard.closed));
            t.accepted += read(&shard.accepted);
            t.refused_max_conns += read(&shard.refused_max_conns);
            t.refused_per_ip += read(&shard.refused_per_ip);
            t.header_timeouts += read(&shard.header_timeouts);
            t.idle_closes += read(&shard.idle_closes);
            t.write_timeouts += read(&shard.write_timeouts);
            t.passes_us.add(&shard.passes_us.snapshot());
            t.pass_answers.add(&shard.pass_answers.snapshot());
            t.longest_pass_us = t.longest_pass_us.max(read(&shard.longest_pass_us));
            t.passes_cut_reads += read(&shard.passes_cut_reads);
            t.passes_cut_writes += read(&shard.passes_cut_writes);
            t.redis_calls += read(&shard.redis_calls);
            t.gate_refills += read(&shard.gate_refills);
            t.redis_call_us.add(&shard.redis_call_us.snapshot());
            t.redis_batch.add(&shard.redis_batch.snapshot());
            t.redis_in_flight += read(&shard.redis_in_flight);
            t.redis_retries += read(&shard.redis_retries);
            let connects = read(&shard.redis_connects);
            t.redis_connects += connects;
            t.redis_reconnects += connects.saturating_sub(1);
            for (sum, event) in t.events.iter_mut().zip(shard.events.iter()) {
                sum.0 += read(&event.sold);
                sum.1 += read(&event.held);
                sum.2 += read(&event.orders);
            }
        }
        for journal in self.journals.iter() {
            t.journal_bytes += read(&journal.bytes);
            t.journal_write_us.add(&journal.write_us.snapshot());
            t.journal_sync_us.add(&journal.sync_us.snapshot());
            t.journal_rotations += read(&journal.rotations);
        }
        t
    }

    /// The `/stats` body: `name value` lines, kept for scripts that read them.
    pub fn render(&self, node_id: u16) -> String {
        let t = self.totals();
        let mut text = String::new();
        let rows: [(&str, u64); 9] = [
            ("ticketd_node_id", u64::from(node_id)),
            ("ticketd_sold_tickets", t.sold),
            ("ticketd_redis_calls", t.redis_calls),
            ("ticketd_gate_refills", t.gate_refills),
            ("ticketd_unavailable_answers", t.unavailable),
            ("ticketd_header_timeouts", t.header_timeouts),
            ("ticketd_idle_closes", t.idle_closes),
            ("ticketd_write_timeouts", t.write_timeouts),
            ("ticketd_connections_open", t.connections_open),
        ];
        for (name, value) in rows {
            let _ = writeln!(text, "{name} {value}");
        }
        for (name, fraction) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
            let _ = writeln!(
                text,
                "ticketd_loop_pass_{name}_us_at_most {}",
                t.passes_us.quantile_at_most(fraction)
            );
        }
        let _ = writeln!(text, "ticketd_loop_pass_longest_us {}", t.longest_pass_us);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_summed_over_shards() {
        let stats = NodeStats::new(2, 1);
        stats.shard(0).sold(2);
        stats.shard(1).sold(1);
        stats.shard(1).redis_call(3);
        stats.shard(0).gate_refill();
        stats.shard(1).unavailable(4);
        stats.shard(0).opened();
        stats.shard(1).opened();
        stats.shard(1).closed();
        let text = stats.render(3);
        assert!(
            text.starts_with(
                "ticketd_node_id 3\nticketd_sold_tickets 3\nticketd_redis_calls 1\n\
                 ticketd_gate_refills 1\nticketd_unavailable_answers 4\nticketd_header_timeouts 0\n\
                 ticketd_idle_closes 0\nticketd_write_timeouts 0\nticketd_connections_open 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("ticketd_loop_pass_longest_us 0\n"), "{text}");
    }

    #[test]
    fn answers_are_counted_by_op_and_status_and_per_pass() {
        let stats = NodeStats::new(2, 0);
        let shard = stats.shard(1);
        shard.answered(Op::Buy.code(), Status::Ok);
        shard.answered(Op::Buy.response_code(), Status::SoldOut);
        shard.answered(0xEE, Status::BadRequest);
        shard.loop_pass(Duration::from_micros(5));
        shard.loop_pass(Duration::from_micros(5));
        let t = stats.totals();
        let buy = usize::from(Op::Buy.code());
        assert_eq!(t.requests[buy][usize::from(Status::Ok.code())], 1);
        assert_eq!(t.requests[buy][usize::from(Status::SoldOut.code())], 1);
        assert_eq!(t.requests[0][usize::from(Status::BadRequest.code())], 1);
        assert_eq!(t.shard_answers, vec![0, 3]);
        // The second pass answered nothing: only the first one has a batch.
        assert_eq!(t.pass_answers.count(), 1);
        assert_eq!(t.pass_answers.sum, 3);
        assert_eq!(t.passes_us.count(), 2);
    }

    #[test]
    fn loop_passes_are_summed_into_bounded_quantiles() {
        let stats = NodeStats::new(2, 0);
        for _ in 0..980 {
            stats.shard(0).loop_pass(Duration::from_micros(20));
        }
        for _ in 0..18 {
            stats.shard(1).loop_pass(Duration::from_micros(700));
        }
        stats.shard(0).loop_pass(Duration::from_millis(7));
        stats.shard(1).loop_pass(Duration::from_micros(6_500));
        let text = stats.render(1);
        // 20 µs falls in the bucket up to 32, 700 µs up to 1024, 7 ms up to 8192.
        for line in [
            "ticketd_loop_pass_p50_us_at_most 32\n",
            "ticketd_loop_pass_p99_us_at_most 1024\n",
            "ticketd_loop_pass_p999_us_at_most 8192\n",
            "ticketd_loop_pass_longest_us 7000\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
