//! Results: per-thread counts and histograms, their merge (across threads and worker
//! processes, histograms through hdrhistogram's V2 serialisation), and the final report
//! as a table and as JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use ticketd_proto::Status;

/// Latencies are recorded in nanoseconds, up to a minute, to 3 significant digits.
const LATENCY_MAX_NS: u64 = 60_000_000_000;

pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3) {
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram bounds are valid: {e:?}"),
    }
}

/// What one load thread (or, merged, one process or the whole run) saw.
#[derive(Debug, Clone)]
pub struct ThreadResult {
    pub established: u64,
    pub connect_errors: BTreeMap<String, u64>,
    pub sent: u64,
    pub answered: u64,
    /// Requests never answered (connection broke, or the drain timed out).
    pub lost: u64,
    /// Answers that did not decode or matched no request.
    pub malformed: u64,
    pub broken_conns: u64,
    /// Broken connections opened again (`--reconnect`).
    pub reconnects: u64,
    pub statuses: [u64; Status::ALL.len()],
    pub latency: Histogram<u64>,
    pub latency_uncorrected: Histogram<u64>,
    /// Tickets sold to this run (OK BUY or OK CONFIRM), counted even past the tracking cap.
    pub sold: u64,
    /// (order id, user) of each sale, up to the tracking cap.
    pub orders: Vec<(u64, u64)>,
    pub orders_truncated: bool,
    pub elapsed: Duration,
}

impl ThreadResult {
    pub fn new() -> Self {
        ThreadResult {
            established: 0,
            connect_errors: BTreeMap::new(),
            sent: 0,
            answered: 0,
            lost: 0,
            malformed: 0,
            broken_conns: 0,
            reconnects: 0,
            statuses: [0; Status::ALL.len()],
            latency: new_histogram(),
            latency_uncorrected: new_histogram(),
            sold: 0,
            orders: Vec::new(),
            orders_truncated: false,
            elapsed: Duration::ZERO,
        }
    }

    pub fn track_order(&mut self, order_id: u64, user: u64, cap: usize) {
        self.sold += 1;
        if self.orders.len() < cap {
            self.orders.push((order_id, user));
        } else {
            self.orders_truncated = true;
        }
    }

    pub fn merge(&mut self, other: ThreadResult) {
        self.established += other.established;
        for (why, n) in other.connect_errors {
            *self.connect_errors.entry(why).or_default() += n;
        }
        self.sent += other.sent;
        self.answered += other.answered;
        self.lost += other.lost;
        self.malformed += other.malformed;
        self.broken_conns += other.broken_conns;
        self.reconnects += other.reconnects;
        for (mine, theirs) in self.statuses.iter_mut().zip(other.statuses) {
            *mine += theirs;
        }
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.latency_uncorrected.add(&other.latency_uncorrected);
        self.sold += other.sold;
        self.orders.extend(other.orders);
        self.orders_truncated |= other.orders_truncated;
        self.elapsed = self.elapsed.max(other.elapsed);
    }
}

impl Default for ThreadResult {
    fn default() -> Self {
        Self::new()
    }
}

/// A [`ThreadResult`] as a worker process sends it to the coordinator.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireResult {
    established: u64,
    connect_errors: BTreeMap<String, u64>,
    sent: u64,
    answered: u64,
    lost: u64,
    malformed: u64,
    broken_conns: u64,
    reconnects: u64,
    statuses: Vec<u64>,
    latency: String,
    latency_uncorrected: String,
    sold: u64,
    orders: Vec<(u64, u64)>,
    orders_truncated: bool,
    elapsed_s: f64,
}

/// Why a worker's result could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("histogram is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("histogram does not deserialise: {0:?}")]
    Histogram(hdrhistogram::serialization::DeserializeError),
    #[error("histogram does not serialise: {0:?}")]
    Serialize(hdrhistogram::serialization::V2SerializeError),
}

fn encode_histogram(h: &Histogram<u64>) -> Result<String, WireError> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .map_err(WireError::Serialize)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn decode_histogram(text: &str) -> Result<Histogram<u64>, WireError> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(WireError::Histogram)
}

impl WireResult {
    pub fn from_result(r: &ThreadResult) -> Result<Self, WireError> {
        Ok(WireResult {
            established: r.established,
            connect_errors: r.connect_errors.clone(),
            sent: r.sent,
            answered: r.answered,
            lost: r.lost,
            malformed: r.malformed,
            broken_conns: r.broken_conns,
            reconnects: r.reconnects,
            statuses: r.statuses.to_vec(),
            latency: encode_histogram(&r.latency)?,
            latency_uncorrected: encode_histogram(&r.latency_uncorrected)?,
            sold: r.sold,
            orders: r.orders.clone(),
            orders_truncated: r.orders_truncated,
            elapsed_s: r.elapsed.as_secs_f64(),
        })
    }

    pub fn into_result(self) -> Result<ThreadResult, WireError> {
        let mut statuses = [0; Status::ALL.len()];
        for (slot, n) in statuses.iter_mut().zip(self.statuses) {
            *slot = n;
        }
        let mut latency = new_histogram();
        let _ = latency.add(decode_histogram(&self.latency)?);
        let mut latency_uncorrected = new_histogram();
        let _ = latency_uncorrected.add(decode_histogram(&self.latency_uncorrected)?);
        Ok(ThreadResult {
            established: self.established,
            connect_errors: self.connect_errors,
            sent: self.sent,
            answered: self.answered,
            lost: self.lost,
            malformed: self.malformed,
            broken_conns: self.broken_conns,
            reconnects: self.reconnects,
            statuses,
            latency,
            latency_uncorrected,
            sold: self.sold,
            orders: self.orders,
            orders_truncated: self.orders_truncated,
            elapsed: Duration::from_secs_f64(self.elapsed_s.max(0.0)),
        })
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| (ns as f64 / 1_000.0 * 10.0).round() / 10.0;
        Percentiles {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            p9999: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
        }
    }
}

/// One outcome check.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// "pass", "fail" or "skipped".
    pub verdict: &'static str,
    pub detail: String,
}

impl Verdict {
    pub fn check(ok: bool, detail: String) -> Self {
        Verdict {
            verdict: if ok { "pass" } else { "fail" },
            detail,
        }
    }

    pub fn skipped(detail: impl Into<String>) -> Self {
        Verdict {
            verdict: "skipped",
            detail: detail.into(),
        }
    }

    pub fn failed(&self) -> bool {
        self.verdict == "fail"
    }
}

/// STOCK of the event, summed over the servers asked.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct StockView {
    pub total: i64,
    pub remaining: i64,
}

/// The final report; its JSON field names are read by other tools: keep them.
#[derive(Debug, Serialize)]
pub struct Report {
    pub conns: u64,
    pub conns_requested: u64,
    pub processes: usize,
    pub threads_per_process: usize,
    pub op: crate::config::OpKind,
    pub mode: &'static str,
    pub requests: u64,
    pub sent: u64,
    pub lost: u64,
    pub malformed: u64,
    /// Connections that broke mid-run, and how many of them were opened again.
    pub broken_conns: u64,
    pub reconnects: u64,
    pub elapsed_s: f64,
    pub throughput_rps: f64,
    pub statuses: BTreeMap<&'static str, u64>,
    pub sold: u64,
    pub latency_us: Percentiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_uncorrected_us: Option<Percentiles>,
    pub connect_errors: BTreeMap<String, u64>,
    pub stock_before: Option<StockView>,
    pub stock_after: Option<StockView>,
    pub invariants: BTreeMap<&'static str, Verdict>,
}

impl Report {
    pub fn statuses(result: &ThreadResult) -> BTreeMap<&'static str, u64> {
        Status::ALL
            .iter()
            .map(|s| (s.name(), result.statuses[usize::from(s.code())]))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn passed(&self) -> bool {
        !self.invariants.values().any(Verdict::failed)
    }

    pub fn print(&self) {
        println!(
            "connections  {} of {} ({} process{} × {} thread{})",
            self.conns,
            self.conns_requested,
            self.processes,
            if self.processes == 1 { "" } else { "es" },
            self.threads_per_process,
            if self.threads_per_process == 1 {
                ""
            } else {
                "s"
            },
        );
        for (why, n) in &self.connect_errors {
            println!("  connect failed ×{n}: {why}");
        }
        println!(
            "requests     {} answered of {} sent ({} lost, {} malformed) in {:.3} s",
            self.requests, self.sent, self.lost, self.malformed, self.elapsed_s
        );
        if self.broken_conns > 0 {
            println!(
                "broken       {} connection{} broke mid-run, {} reopened (their requests in flight count as lost)",
                self.broken_conns,
                if self.broken_conns == 1 { "" } else { "s" },
                self.reconnects,
            );
        }
        println!("throughput   {:.0} requests/s", self.throughput_rps);
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("statuses     {}", statuses.join(", "));
        println!("sold         {}", self.sold);
        let row = |name: &str, p: &Percentiles| {
            println!(
                "{name:<12} p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}  (µs)",
                p.p50, p.p90, p.p99, p.p999, p.p9999, p.max
            )
        };
        match &self.latency_uncorrected_us {
            Some(uncorrected) => {
                row("latency", &self.latency_us);
                row("uncorrected", uncorrected);
            }
            None => row("latency", &self.latency_us),
        }
        if let (Some(before), Some(after)) = (self.stock_before, self.stock_after) {
            println!(
                "stock        total {}, remaining {} before, {} after",
                before.total, before.remaining, after.remaining
            );
        }
        for (name, v) in &self.invariants {
            println!(
                "check        {:<8} {name}: {}",
                v.verdict.to_uppercase(),
                v.detail
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_survive_the_trip_through_a_worker_pipe() {
        let mut r = ThreadResult::new();
        r.sent = 5;
        r.answered = 4;
        r.statuses[1] = 3;
        for ns in [1_000, 2_000, 3_000_000] {
            r.latency.saturating_record(ns);
        }
        r.track_order(7, 9, 10);
        let json = serde_json::to_string(&WireResult::from_result(&r).unwrap()).unwrap();
        let back = serde_json::from_str::<WireResult>(&json)
            .unwrap()
            .into_result()
            .unwrap();
        assert_eq!(back.answered, 4);
        assert_eq!(back.statuses[1], 3);
        assert_eq!(back.latency.len(), 3);
        assert_eq!(back.latency.max(), r.latency.max());
        assert_eq!(back.orders, vec![(7, 9)]);
    }

    #[test]
    fn merging_adds_counts_and_histograms() {
        let mut a = ThreadResult::new();
        let mut b = ThreadResult::new();
        a.latency.saturating_record(10);
        b.latency.saturating_record(20);
        b.connect_errors.insert("x".into(), 2);
        b.elapsed = Duration::from_secs(3);
        a.merge(b);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.connect_errors["x"], 2);
        assert_eq!(a.elapsed, Duration::from_secs(3));
    }
}
