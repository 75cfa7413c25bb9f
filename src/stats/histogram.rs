//! A histogram with power-of-two buckets, written by one thread and read by any.
//!
//! Bucket `b` counts values `v` with `2^(b-1) < v <= 2^b` (bucket 0 counts 0 and 1), so
//! a value lands in its bucket with one count of leading zeros, and the bucket's upper
//! bound is exact for Prometheus's cumulative `le` buckets. The last bucket takes every
//! larger value.

use std::sync::atomic::{AtomicU64, Ordering};

use super::bump;

/// Buckets: the last one starts above 2^25 (µs: ~34 s; requests: ~34 M).
pub const BUCKETS: usize = 27;

#[derive(Debug, Default)]
pub struct Log2Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum: AtomicU64,
}

/// A copy of a histogram's counts, taken at one moment (each count is read once; counts
/// written meanwhile may or may not be in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per bucket (not cumulative).
    pub counts: [u64; BUCKETS],
    pub sum: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        HistogramSnapshot {
            counts: [0; BUCKETS],
            sum: 0,
        }
    }
}

/// The bucket a value falls in.
pub fn bucket_of(value: u64) -> usize {
    if value <= 1 {
        return 0;
    }
    (64 - (value - 1).leading_zeros() as usize).min(BUCKETS - 1)
}

/// The largest value bucket `b` counts (the last bucket's is unbounded).
pub fn upper_bound(bucket: usize) -> u64 {
    1u64 << bucket.min(63)
}

impl Log2Histogram {
    /// Records one value. Only the histogram's one writing thread may call this.
    pub fn record(&self, value: u64) {
        bump(&self.buckets[bucket_of(value)], 1);
        bump(&self.sum, value);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut snapshot = HistogramSnapshot {
            sum: self.sum.load(Ordering::Relaxed),
            ..HistogramSnapshot::default()
        };
        for (count, bucket) in snapshot.counts.iter_mut().zip(&self.buckets) {
            *count = bucket.load(Ordering::Relaxed);
        }
        snapshot
    }
}

impl HistogramSnapshot {
    /// Adds another histogram's counts (shards are summed at scrape time).
    pub fn add(&mut self, other: &HistogramSnapshot) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound of the bucket below which `fraction` of the values fell (0 when
    /// empty).
    pub fn quantile_at_most(&self, fraction: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let wanted = ((total as f64 * fraction).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return upper_bound(bucket);
            }
        }
        upper_bound(BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_bucket_whose_bound_covers_them() {
        for (value, bucket) in [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (1024, 10)] {
            assert_eq!(bucket_of(value), bucket, "value {value}");
            assert!(value <= upper_bound(bucket_of(value)));
        }
        assert_eq!(bucket_of(1025), 11);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn snapshots_sum_and_give_bounded_quantiles() {
        let a = Log2Histogram::default();
        let b = Log2Histogram::default();
        for _ in 0..99 {
            a.record(20);
        }
        b.record(700);
        let mut total = a.snapshot();
        total.add(&b.snapshot());
        assert_eq!(total.count(), 100);
        assert_eq!(total.sum, 99 * 20 + 700);
        assert_eq!(total.quantile_at_most(0.5), 32);
        assert_eq!(total.quantile_at_most(0.99), 32);
        assert_eq!(total.quantile_at_most(0.999), 1024);
        assert_eq!(HistogramSnapshot::default().quantile_at_most(0.5), 0);
    }
}
