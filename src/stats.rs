//! A node's counters for operators, served as text on the admin endpoint's `/stats`
//! (`name value` lines): what this node sold and, in ledger mode, how it used Redis.
//! Each shard adds to its own cache line (no contention between shards) per sale or per
//! Redis call, never per refused request, with relaxed atomics: nothing is decided from
//! them. `/stats` sums the shards.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

#[derive(Debug, Default)]
struct ShardCounters {
    /// Tickets in orders this shard created (BUY; in ledger mode, decided by Redis).
    sold: AtomicU64,
    /// Ledger mode: calls sent to Redis (decisions, settlements, STOCK, ORDERS).
    redis_calls: AtomicU64,
    /// Ledger mode: STOCK asks made because a gate ran dry.
    gate_refills: AtomicU64,
    /// Requests answered UNAVAILABLE because the ledger could not be reached.
    unavailable: AtomicU64,
    /// Connections closed for a half-sent request, for idling, for not reading.
    header_timeouts: AtomicU64,
    idle_closes: AtomicU64,
    write_timeouts: AtomicU64,
    /// Loop passes by duration: bucket `i` counts passes of `2^i - 1` to `2^(i+1) - 2`
    /// µs (a pass that stops the world shows here).
    passes: [AtomicU64; PASS_BUCKETS],
    longest_pass_us: AtomicU64,
}

/// Power-of-two buckets of pass durations in µs: the last holds everything from ~34 s.
const PASS_BUCKETS: usize = 26;

/// Picks one counter of a shard's.
type Pick = fn(&ShardCounters) -> &AtomicU64;

#[derive(Debug)]
pub struct NodeStats {
    shards: Box<[CachePadded<ShardCounters>]>,
}

impl Default for NodeStats {
    fn default() -> Self {
        NodeStats::new(1)
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl NodeStats {
    pub fn new(shards: usize) -> Self {
        NodeStats {
            shards: (0..shards.max(1)).map(|_| CachePadded::default()).collect(),
        }
    }

    fn shard(&self, shard: usize) -> &ShardCounters {
        &self.shards[shard % self.shards.len()]
    }

    pub fn sold(&self, shard: usize, qty: u16) {
        add(&self.shard(shard).sold, u64::from(qty));
    }

    pub fn redis_call(&self, shard: usize) {
        add(&self.shard(shard).redis_calls, 1);
    }

    pub fn gate_refill(&self, shard: usize) {
        add(&self.shard(shard).gate_refills, 1);
    }

    pub fn unavailable(&self, shard: usize, requests: u64) {
        add(&self.shard(shard).unavailable, requests);
    }

    pub fn header_timeout(&self, shard: usize) {
        add(&self.shard(shard).header_timeouts, 1);
    }

    pub fn idle_close(&self, shard: usize) {
        add(&self.shard(shard).idle_closes, 1);
    }

    pub fn write_timeout(&self, shard: usize) {
        add(&self.shard(shard).write_timeouts, 1);
    }

    /// One loop pass of `shard` took `took`.
    pub fn loop_pass(&self, shard: usize, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = (64 - us.saturating_add(1).leading_zeros() as usize - 1).min(PASS_BUCKETS - 1);
        let counters = self.shard(shard);
        add(&counters.passes[bucket], 1);
        counters.longest_pass_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The upper bound, in µs, of the pass duration below which `fraction` of all
    /// passes (every shard's) fell.
    fn pass_quantile_us(&self, fraction: f64) -> u64 {
        let counts: Vec<u64> = (0..PASS_BUCKETS)
            .map(|b| {
                self.shards
                    .iter()
                    .map(|s| s.passes[b].load(Ordering::Relaxed))
                    .sum()
            })
            .collect();
        let total: u64 = counts.iter().sum();
        let wanted = (total as f64 * fraction).ceil() as u64;
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= wanted && total > 0 {
                return (1u64 << (bucket + 1)) - 2;
            }
        }
        0
    }

    /// The `/stats` body.
    pub fn render(&self, node_id: u16) -> String {
        let sum = |pick: fn(&ShardCounters) -> &AtomicU64| -> u64 {
            self.shards
                .iter()
                .map(|s| pick(s).load(Ordering::Relaxed))
                .sum()
        };
        let mut text = String::new();
        let _ = writeln!(text, "ticketd_node_id {node_id}");
        let rows: [(&str, Pick); 7] = [
            ("ticketd_sold_tickets", |s| &s.sold),
            ("ticketd_redis_calls", |s| &s.redis_calls),
            ("ticketd_gate_refills", |s| &s.gate_refills),
            ("ticketd_unavailable_answers", |s| &s.unavailable),
            ("ticketd_header_timeouts", |s| &s.header_timeouts),
            ("ticketd_idle_closes", |s| &s.idle_closes),
            ("ticketd_write_timeouts", |s| &s.write_timeouts),
        ];
        for (name, pick) in rows {
            let _ = writeln!(text, "{name} {}", sum(pick));
        }
        let longest = self
            .shards
            .iter()
            .map(|s| s.longest_pass_us.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        for (name, fraction) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
            let _ = writeln!(
                text,
                "ticketd_loop_pass_{name}_us_at_most {}",
                self.pass_quantile_us(fraction)
            );
        }
        let _ = writeln!(text, "ticketd_loop_pass_longest_us {longest}");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_summed_over_shards() {
        let stats = NodeStats::new(2);
        stats.sold(0, 2);
        stats.sold(1, 1);
        stats.redis_call(1);
        stats.gate_refill(0);
        stats.unavailable(1, 4);
        let text = stats.render(3);
        assert!(
            text.starts_with(
                "ticketd_node_id 3\nticketd_sold_tickets 3\nticketd_redis_calls 1\n\
                 ticketd_gate_refills 1\nticketd_unavailable_answers 4\nticketd_header_timeouts 0\n\
                 ticketd_idle_closes 0\nticketd_write_timeouts 0\n"
            ),
            "{text}"
        );
        assert!(text.contains("ticketd_loop_pass_longest_us 0\n"), "{text}");
    }

    #[test]
    fn loop_passes_are_summed_into_bounded_quantiles() {
        use std::time::Duration;
        let stats = NodeStats::new(2);
        for _ in 0..980 {
            stats.loop_pass(0, Duration::from_micros(20));
        }
        for _ in 0..18 {
            stats.loop_pass(1, Duration::from_micros(700));
        }
        stats.loop_pass(0, Duration::from_millis(7));
        stats.loop_pass(1, Duration::from_micros(6_500));
        let text = stats.render(1);
        // 20 µs falls in the bucket 15..=30, 700 µs in 511..=1022, 7 ms in 4095..=8190.
        assert!(
            text.contains("ticketd_loop_pass_p50_us_at_most 30\n"),
            "{text}"
        );
        assert!(
            text.contains("ticketd_loop_pass_p99_us_at_most 1022\n"),
            "{text}"
        );
        assert!(
            text.contains("ticketd_loop_pass_p999_us_at_most 8190\n"),
            "{text}"
        );
        assert!(
            text.contains("ticketd_loop_pass_longest_us 7000\n"),
            "{text}"
        );
    }
}
