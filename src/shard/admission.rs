//! Fair admission per source address (`--max-conns-per-ip`, `--rate-per-ip`, both off by
//! default): one address cannot hold every connection or take every request, so a flood
//! from one bot farm address leaves room for the others. Beyond either limit the answer
//! is OVERLOADED (nothing done), as for `--max-conns`; and a connection over its rate is
//! not read again until its next token, so a pipelining flood waits in its own kernel
//! buffers instead of costing the shard a refusal per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Connections held per source address, node-wide (touched on accept and close only).
#[derive(Debug)]
pub struct ConnsPerIp {
    max: u32,
    held: Mutex<HashMap<IpAddr, u32>>,
}

impl ConnsPerIp {
    pub fn new(max: u32) -> Self {
        ConnsPerIp {
            max,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a place for one more connection from `ip`, or `false` when it holds `max`.
    pub fn try_take(&self, ip: IpAddr) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(ip).or_insert(0);
        if *count >= self.max {
            return false;
        }
        *count += 1;
        true
    }

    /// Gives back the place of a connection from `ip` that closed.
    pub fn give_back(&self, ip: IpAddr) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&ip);
            }
        }
    }
}

/// Shortest pause of a connection over its rate: many connections of one address must
/// not each wake for every single token.
pub const MIN_THROTTLE: Duration = Duration::from_millis(10);

/// Longest pause: a rate so small that its next token is further off than this still
/// lets the connection be looked at again.
pub const MAX_THROTTLE: Duration = Duration::from_secs(60);

/// `x` seconds, at most [`MAX_THROTTLE`] (a tiny `--rate-per-ip` gives waits no
/// `Duration` holds: they must not panic).
fn seconds(x: f64) -> Duration {
    Duration::try_from_secs_f64(x).map_or(MAX_THROTTLE, |d| d.min(MAX_THROTTLE))
}

/// Addresses a shard remembers buckets for; beyond it, full (idle) buckets are dropped
/// first, so memory stays bounded whatever the number of addresses.
const MAX_BUCKETS: usize = 65_536;

/// A token bucket per source address, per shard: `rate` requests a second, bursts of up
/// to one second's worth. Connections from one address spread over the shards, so each
/// shard allows its share of `--rate-per-ip`.
#[derive(Debug)]
pub struct RatePerIp {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant), ahash::RandomState>,
}

impl RatePerIp {
    /// `rate_per_ip` requests a second for the node, shared by `shards` shards.
    pub fn new(rate_per_ip: f64, shards: usize) -> Self {
        let rate = (rate_per_ip / shards.max(1) as f64).max(f64::MIN_POSITIVE);
        RatePerIp {
            rate,
            burst: rate.max(1.0),
            buckets: HashMap::default(),
        }
    }

    /// Whether a request from `ip` may go on at `now` (taking its token if so); if not,
    /// how long until its next token.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&ip) {
            self.forget_idle(now);
        }
        let (rate, burst) = (self.rate, self.burst);
        let (tokens, at) = self.buckets.entry(ip).or_insert((burst, now));
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(seconds((1.0 - *tokens) / rate).max(MIN_THROTTLE))
        }
    }

    /// Drops the buckets that would be full by now (their addresses were quiet long
    /// enough to have every token back): forgetting them changes nothing.
    fn forget_idle(&mut self, now: Instant) {
        let refill = seconds(self.burst / self.rate);
        self.buckets
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < refill);
        if self.buckets.len() >= MAX_BUCKETS {
            // Every address is busy: start over rather than grow (a burst's grace each).
            self.buckets.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn connections_are_capped_per_address_only() {
        let conns = ConnsPerIp::new(2);
        assert!(conns.try_take(ip(2)) && conns.try_take(ip(2)));
        assert!(!conns.try_take(ip(2)), "a third from the same address");
        assert!(conns.try_take(ip(3)), "another address is not affected");
        conns.give_back(ip(2));
        assert!(conns.try_take(ip(2)));
        for _ in 0..5 {
            conns.give_back(ip(9));
        }
        assert!(conns.held.lock().unwrap().get(&ip(9)).is_none());
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut rate = RatePerIp::new(100.0, 2); // 50/s on this shard, bursts of 50
        let start = Instant::now();
        let allowed = (0..80).filter(|_| rate.allow(ip(2), start).is_ok()).count();
        assert_eq!(allowed, 50, "the burst");
        let wait = rate.allow(ip(2), start).expect_err("empty");
        assert!(
            wait > Duration::from_millis(19) && wait <= Duration::from_millis(20),
            "{wait:?}"
        );
        assert!(
            rate.allow(ip(3), start).is_ok(),
            "another address has its own bucket"
        );
        let later = start + Duration::from_millis(100);
        let allowed = (0..80).filter(|_| rate.allow(ip(2), later).is_ok()).count();
        assert_eq!(allowed, 5, "0.1 s at 50/s");
    }

    #[test]
    fn a_tiny_rate_waits_at_most_the_longest_pause() {
        let mut rate = RatePerIp::new(1e-300, 2);
        let now = Instant::now();
        assert!(rate.allow(ip(2), now).is_ok(), "the burst of one");
        assert_eq!(rate.allow(ip(2), now), Err(MAX_THROTTLE));
        rate.forget_idle(now);
    }

    #[test]
    fn buckets_stay_bounded() {
        let mut rate = RatePerIp::new(10.0, 1);
        let now = Instant::now();
        for i in 0..(MAX_BUCKETS as u32 + 10) {
            let _ = rate.allow(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(rate.buckets.len() <= MAX_BUCKETS);
    }
}
